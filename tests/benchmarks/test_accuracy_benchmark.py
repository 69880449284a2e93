"""benchmarks/accuracy.py: its scoring rules against NumPy, its merge, and a real smoke run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import accuracy as bench
import accuracy_plan as plan
import accuracy_report
import numpy as np
import pytest
from harness import SHIFT_NAMES, read_logits

from tests.conftest import CIFAR10_TARBALL, REPO_ROOT, require_or_skip

pytestmark = pytest.mark.timeout(120)


def test_logit_adjusted_loss_at_tau_1_is_the_balanced_softmax_loss_it_stands_in_for():
    """The benchmark trains Balanced Softmax once for both rows: same values, same gradients."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from lade_tf.losses import balanced_softmax_loss, logit_adjusted_loss

    images, labels = load_digits(return_X_y=True)
    counts = np.bincount(labels, minlength=10) * np.geomspace(1.0, 0.01, 10)
    weights = np.random.default_rng(0).normal(0, 0.05, (64, 10)).astype(np.float32)
    logits = tf.Variable(images.astype(np.float32) @ weights)
    with tf.GradientTape(persistent=True) as tape:
        balanced = balanced_softmax_loss(labels, logits, counts)
        adjusted = logit_adjusted_loss(labels, logits, counts, tau=1.0)
    np.testing.assert_array_equal(balanced.numpy(), adjusted.numpy())
    np.testing.assert_array_equal(
        tape.gradient(balanced, logits).numpy(), tape.gradient(adjusted, logits).numpy()
    )
    # Independent reference: CE(f + log p_s).
    shifted = logits.numpy() + np.log(counts / counts.sum())
    shifted -= shifted.max(axis=1, keepdims=True)
    reference = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(labels)), labels]
    np.testing.assert_allclose(adjusted.numpy(), reference, rtol=1e-5, atol=1e-6)
    assert "logit_adjusted" not in plan.TRAININGS


def test_posthoc_rule_subtracts_the_log_source_prior_and_ignores_the_target():
    counts = [500, 50, 5]
    logits = np.array([[2.0, 1.0, 0.5], [0.1, 0.3, -0.2]], np.float32)
    adjusted, loss, corrected = bench.method_logits(plan.METHODS["posthoc_la"], logits, counts)
    expected = logits - np.log(np.array(counts) / 555.0)
    np.testing.assert_allclose(adjusted, expected, rtol=1e-6)
    assert (loss, corrected) == ("ce", False)
    assert bench.method_logits(plan.METHODS["softmax"], logits, counts)[2] is False
    assert bench.method_logits(plan.METHODS["pc_softmax"], logits, counts)[1:] == ("ce", True)
    assert bench.method_logits(plan.METHODS["lade_class"], logits, counts)[1:] == ("lade", True)


def test_logit_statistics_are_the_means_of_true_class_and_other_logits():
    logits = np.array([[3.0, 1.0, -1.0], [0.0, 2.0, 4.0]])
    labels = np.array([0, 2])
    stats = bench.logit_statistics(logits, labels)
    assert stats["positive"] == pytest.approx((3.0 + 4.0) / 2)
    assert stats["negative"] == pytest.approx(((1.0 - 1.0) / 2 + (0.0 + 2.0) / 2) / 2)


def _part(seed: int, shift_value: float, std: float = 0.01, val_per_class: int = 20) -> dict:
    shift = {d: {"mean": shift_value, "std": std} for d in SHIFT_NAMES}
    uniform = {
        "accuracy": shift_value,
        "many": 0.9,
        "medium": 0.5,
        "few": float("nan"),
        "ece": 0.1,
        "nll": 1.0,
        "balanced_accuracy": shift_value,
        "brier": 0.2,
    }
    return {
        "dataset": "fmnist_lt_ir100",
        "seed": seed,
        "val_per_class": val_per_class,
        "config": {"epochs": 3},
        "train_seconds": 10.0,
        "train_images_per_s": 100.0,
        "methods": {"lade_sample": {"shift": shift, "uniform": uniform}},
    }


def test_merge_takes_the_std_over_training_seeds_when_there_are_several():
    merged = accuracy_report.merge_accuracy([_part(0, 0.80), _part(1, 0.84), _part(2, 0.82)])
    row = merged["fmnist_lt_ir100"]["lade_sample"]
    assert row["seeds"] == [0, 1, 2]
    assert row["shift"]["U"]["mean"] == pytest.approx(0.82)
    assert row["shift"]["U"]["std"] == pytest.approx(np.std([0.80, 0.84, 0.82]))
    assert row["shift"]["U"]["subsampling_std"] == pytest.approx(0.01)
    assert row["mean_of_11"] == pytest.approx(0.82)
    single = accuracy_report.merge_accuracy([_part(0, 0.80, std=0.03)])["fmnist_lt_ir100"][
        "lade_sample"
    ]
    assert single["shift"]["B50"]["std"] == pytest.approx(0.03)


def test_importance_verdict_names_the_better_variant():
    methods = {"lade_sample": {"mean_of_11": 0.70}, "lade_class": {"mean_of_11": 0.75}}
    assert "`class` is better here by 5.0 points" in accuracy_report.importance_verdict(methods)
    assert accuracy_report.importance_verdict({"lade_sample": {"mean_of_11": 0.7}}) is None


def test_val_per_class_defaults_to_prepare_configs_and_must_be_positive(capsys):
    from pipeline.split_plan import PrepareConfig

    parser = bench.build_parser()
    assert parser.parse_args([]).val_per_class == PrepareConfig().val_per_class
    assert parser.parse_args(["--val-per-class", "200"]).val_per_class == 200
    with pytest.raises(SystemExit):
        parser.parse_args(["--val-per-class", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


def _write_parts(output, budget: str, parts: dict[str, dict]) -> None:
    for name, part in parts.items():
        kind = "figure2" if "alpha" in part else "accuracy"
        bench.write_json(bench.part_path(output, budget, kind, name), part)


def test_parts_of_different_validation_splits_are_never_merged(tmp_path):
    _write_parts(tmp_path, "cpu", {"a-ce-s0": _part(0, 0.8), "a-ce-s1": _part(1, 0.8)})
    assert accuracy_report.check_val_per_class(tmp_path, "cpu") == 20
    assert accuracy_report.check_val_per_class(tmp_path, "cpu", requested=20) == 20
    with pytest.raises(SystemExit, match="mix validation splits.*20 per class.*this run"):
        accuracy_report.check_val_per_class(tmp_path, "cpu", requested=50)
    figure2 = {"alpha": 0.0, "dataset": "a", "val_per_class": 50}
    _write_parts(tmp_path, "cpu", {"a-alpha0": figure2})
    with pytest.raises(SystemExit, match="accuracy/a-ce-s0.json.*figure2/a-alpha0.json"):
        accuracy_report.write_reports(tmp_path, "cpu")
    assert not (tmp_path / "accuracy_cpu.json").exists()
    assert accuracy_report.check_val_per_class(tmp_path, "gpu", requested=7) == 7


def test_one_validation_split_is_recorded_in_the_merged_report(tmp_path):
    _write_parts(tmp_path, "cpu", {"s0": _part(0, 0.8, val_per_class=50)})
    accuracy_report.write_reports(tmp_path, "cpu")
    merged = json.loads((tmp_path / "accuracy_cpu.json").read_text())
    assert merged["val_per_class"] == 50
    text = (tmp_path / "accuracy_cpu.md").read_text()
    assert "--budget cpu --val-per-class 50`" in text and "50 balanced images per class" in text


def _fake_run(seed: int = 0) -> dict:
    """Logits that favour the true class, on a long-tailed train split of 10 classes."""
    from lade_tf.priors import long_tail_counts

    rng = np.random.default_rng(seed)
    test_labels = np.repeat(np.arange(10), 60)
    val_labels = np.repeat(np.arange(10), 5)
    return {
        "counts": [int(n) for n in long_tail_counts(500, 10, 100)],
        "test_labels": test_labels,
        "test_logits": rng.normal(0, 1, (600, 10)) + 2.0 * np.eye(10)[test_labels],
        "val_labels": val_labels,
        "val_logits": rng.normal(0, 1, (50, 10)) + 2.0 * np.eye(10)[val_labels],
    }


def test_saved_logits_are_float32_and_ints_and_rescore_without_training(tmp_path):
    run = _fake_run()
    name = "cifar10_lt_ir100-ce-s0"
    saved = bench.logits_path(tmp_path, "smoke", "accuracy", name)
    bench.save_logits(saved, run, val_per_class=5)
    assert [p.name for p in saved.parent.iterdir()] == [f"{name}.npz"]  # no temporary left
    loaded = read_logits(saved)
    assert loaded["test_logits"].dtype == np.float32 and loaded["val_logits"].shape == (50, 10)
    assert loaded["test_labels"].dtype == np.int64 and loaded["counts"] == run["counts"]
    assert loaded["val_per_class"] == 5
    softmax = bench.score_method(plan.METHODS["softmax"], loaded)
    part = {**_part(0, 0.5), "methods": {"softmax": {"shift": {}, "uniform": {}}}}
    path = bench.part_path(tmp_path, "smoke", "accuracy", name)
    bench.write_json(path, part)

    bench.rescore_parts(tmp_path, "smoke")
    assert json.loads(path.read_text())["methods"] == json.loads(json.dumps({"softmax": softmax}))

    # A finished part that lacks a method is scored from the logits; nothing is trained (the
    # work directory and tarball do not exist).
    args = argparse.Namespace(
        output=tmp_path, work_dir=tmp_path / "none", tarball=tmp_path / "none", val_per_class=5
    )
    bench.run_accuracy_part("smoke", "cifar10_lt_ir100", "ce", ["pc_softmax"], 0, args)
    methods = json.loads(path.read_text())["methods"]
    assert list(methods) == ["softmax", "pc_softmax"]
    assert set(methods["pc_softmax"]["shift"]) == set(SHIFT_NAMES)


def test_unknown_selection_is_a_clear_error(capsys):
    done = subprocess.run(
        [sys.executable, "benchmarks/accuracy.py", "--methods", "lade,ce"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "--methods 'lade,ce': expected a comma-separated subset of softmax" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_budget_writes_every_method_and_the_figure2_check(tmp_path):
    if not CIFAR10_TARBALL.exists():
        require_or_skip(f"{CIFAR10_TARBALL} not found (set LADE_SHARED_DATA)")
    output = tmp_path / "results"
    command = [
        sys.executable,
        "benchmarks/accuracy.py",
        "--budget",
        "smoke",
        "--output",
        str(output),
        "--work-dir",
        str(tmp_path / "work"),
        "--tarball",
        str(CIFAR10_TARBALL),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1450)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((output / "accuracy_smoke.json").read_text())
    rows = report["datasets"]["cifar10_lt_ir100"]
    assert set(rows) == set(plan.METHODS)
    for row in rows.values():
        assert set(row["shift"]) == set(SHIFT_NAMES)
        assert all(0.0 <= v["mean"] <= 1.0 for v in row["shift"].values())
    # Softmax and PC Softmax share one CE model; post-hoc adjustment is PC Softmax at U.
    assert rows["posthoc_la"]["shift"]["U"]["mean"] == rows["pc_softmax"]["shift"]["U"]["mean"]
    assert (output / "accuracy_smoke.png").stat().st_size > 10_000
    assert "| Softmax (CE) |" in (output / "accuracy_smoke.md").read_text()
    fig2 = json.loads((output / "figure2_smoke.json").read_text())
    assert [row["alpha"] for row in fig2["rows"]] == list(plan.SMOKE_FIGURE2_ALPHAS)
    assert fig2["log_C"] == pytest.approx(math.log(10))
    assert (output / "figure2_smoke.png").exists()
    # Every trained model's logits are kept beside the results, with the validation size.
    val_per_class = report["val_per_class"]
    assert val_per_class == plan.default_val_per_class() == fig2["val_per_class"]
    for training in plan.TRAININGS:
        part = json.loads(
            (output / "parts/smoke/accuracy" / f"cifar10_lt_ir100-{training}-s0.json").read_text()
        )
        assert part["val_per_class"] == val_per_class
        logits = read_logits(output / "logits/smoke" / f"cifar10_lt_ir100-{training}-s0.npz")
        assert logits["test_logits"].shape == (plan.BUDGETS["smoke"].max_test_examples, 10)
        assert logits["val_logits"].shape == (10 * val_per_class, 10)
    assert len(list((output / "logits/smoke/figure2").glob("*.npz"))) == len(fig2["rows"])
    # A second run finds every part done and only merges.
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "done before, skipped" in again.stderr
    # Parts of another validation size would not share these tables: refused before training.
    other = [*command, "--val-per-class", str(val_per_class + 1)]
    refused = subprocess.run(other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "would mix validation splits" in refused.stderr
    assert "Traceback" not in refused.stderr and "training ce on" not in refused.stderr
