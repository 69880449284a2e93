"""benchmarks/online_prior.py: its streams against the authors' definitions, and a real smoke
run on the logits of a digits classifier (with features, so UOGD runs too)."""

from __future__ import annotations

import json
import math

import numpy as np
import online_prior as bench
import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def digits_logits(digits, tmp_path_factory):
    """A logistic regression trained on a long-tailed part of digits (class c keeps 0.7^c of 60
    images), saved as the benchmark reads models: logits, labels, counts, and the features and
    last layer UOGD adapts."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    images, labels = digits
    features = images.reshape(len(images), -1) / 255.0
    order = np.random.default_rng(0).permutation(len(labels))
    train, val, test = [], [], []
    for c in range(10):
        members = order[labels[order] == c]
        val += list(members[:15])
        test += list(members[15:95])
        train += list(members[95 : 95 + max(6, int(60 * 0.7**c))])
    train, val, test = (np.sort(np.asarray(s)) for s in (train, val, test))
    with threadpool_limits(1):
        model = LogisticRegression(max_iter=500).fit(features[train], labels[train])
    path = tmp_path_factory.mktemp("online_prior") / "digits_lt-ce-s0.npz"
    np.savez(
        path,
        counts=np.bincount(labels[train], minlength=10),
        val_logits=model.decision_function(features[val]).astype(np.float32),
        val_labels=labels[val],
        test_logits=model.decision_function(features[test]).astype(np.float32),
        test_labels=labels[test],
        val_features=features[val],
        test_features=features[test],
        kernel=model.coef_.T,
        bias=model.intercept_,
    )
    return path


def test_processes_are_the_authors_definitions():
    first, second = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.1, 0.8])
    rng = np.random.default_rng(0)
    steps, period = 100, 10
    monotone = bench.process_priors("monotone", first, second, steps, rng)
    square = bench.process_priors("square", first, second, steps, rng)
    sinusoidal = bench.process_priors("sinusoidal", first, second, steps, rng)
    for t in (0, 9, 10, 37, 99):
        np.testing.assert_allclose(monotone[t], (1 - t / steps) * first + t / steps * second)
        np.testing.assert_array_equal(square[t], first if (t // period) % 2 == 0 else second)
        s = math.sin((t % period) * math.pi / period)
        np.testing.assert_allclose(sinusoidal[t], (1 - s) * first + s * second)
    bernoulli = bench.process_priors("bernoulli", first, second, 10_000, rng)
    np.testing.assert_array_equal(bernoulli[0], first)
    is_first = (bernoulli == first).all(axis=1)
    assert (is_first | (bernoulli == second).all(axis=1)).all()
    switches = int((is_first[1:] != is_first[:-1]).sum())
    assert 60 < switches < 140  # Binomial(9999, 1 / 100): mean 100, sd 10
    with pytest.raises(ValueError, match="process = 'saw'"):
        bench.process_priors("saw", first, second, steps, rng)


def test_each_step_samples_by_its_prior_without_replacement():
    labels = np.repeat(np.arange(3), 50)
    priors = np.tile([0.6, 0.4, 0.0], (400, 1))
    indices = bench.sample_steps(labels, priors, 20, np.random.default_rng(1))
    assert indices.shape == (400, 20)
    assert all(len(set(step)) == 20 for step in indices)
    counts = np.bincount(labels[indices].reshape(-1), minlength=3) / indices.size
    np.testing.assert_allclose(counts, [0.6, 0.4, 0.0], atol=0.01)


def test_loss_is_read_from_the_file_name(tmp_path):
    assert bench.loss_of(tmp_path / "cifar10_lt_ir100-lade_class-s0.npz") == "lade"
    assert bench.loss_of(tmp_path / "fmnist_v500_ce_s0.npz") == "ce"
    with pytest.raises(SystemExit, match="cannot tell the loss"):
        bench.loss_of(tmp_path / "model.npz")


def test_smoke_run_writes_every_row_and_the_targets(digits_logits, tmp_path, capsys):
    # BCTS: the served Dirichlet calibration's L2 search takes seconds more on this machine.
    arguments = ["--smoke", "--calibration", "bcts", "--logits", str(digits_logits)]
    assert bench.main([*arguments, "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "online_prior.json").read_text())
    assert (tmp_path / "online_prior.png").stat().st_size > 10_000
    markdown = (tmp_path / "online_prior.md").read_text()
    assert markdown in capsys.readouterr().out.replace("\r", "") + "\n"
    model = report["models"]["digits_lt-ce-s0"]
    assert (
        model["loss"] == "ce" and model["uogd"] and report["config"]["steps"] == bench.SMOKE_STEPS
    )
    by_pair = model["results"]["10"]
    assert list(by_pair) == list(bench.PAIRS)
    for pair, by_process in by_pair.items():
        assert list(by_process) == list(bench.PROCESSES)
        for rows in by_process.values():
            assert {bench.ORACLE, bench.LATE_ORACLE, bench.PER_BATCH, *bench.FIXED} <= set(rows)
            assert {f"{bench.LABELLED}{h:g}" for h in bench.LABELLED_HALF_LIVES} <= set(rows)
            assert {"UOGD (soft BBSE)", "FLH-FTL (soft BBSE)", "ROGD (MAP-EM)"} <= set(rows)
            assert {f"{n}{bench.WITH_BATCH}" for n in bench.COMBINED} <= set(rows)
            assert all(0 <= r["accuracy"] <= 1 for r in rows.values())
            assert rows[bench.ORACLE]["l1"] == 0 and rows["UOGD (MAP-EM)"]["l1"] is None
            assert all(0 <= r["l1"] <= 2 for r in rows.values() if r["l1"] is not None)
        targets = model["targets"]["10"]
        assert targets["past labels"][pair]["best_half_life"] in by_process["square"]
        for kind in ("online tracker", "online tracker + batch MAP-EM"):
            best = targets[kind][pair]["best_online"]
            assert best in by_process["square"] and best.endswith(bench.WITH_BATCH) == (
                kind == "online tracker + batch MAP-EM"
            )
            assert set(targets[kind][pair]["margin_over_better_fixed"]) == set(bench.PROCESSES)
    # The oracle knows the prior: on F50 <-> B50 it is not below p_s on average.
    means = {
        name: np.mean([rows[name]["accuracy"] for rows in by_pair["F50 <-> B50"].values()])
        for name in (bench.ORACLE, bench.FIXED[0])
    }
    assert means[bench.ORACLE] >= means[bench.FIXED[0]]
    assert "## digits_lt-ce-s0 (ce), 10 images per step" in markdown
