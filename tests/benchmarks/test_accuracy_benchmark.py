"""benchmarks/accuracy.py: its scoring rules against NumPy, its merge, and a real smoke run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import CIFAR10_TARBALL, REPO_ROOT, require_or_skip

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import accuracy as bench  # noqa: E402  (a script folder, not a package)


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
    assert "logit_adjusted" not in bench.TRAININGS


def test_posthoc_rule_subtracts_the_log_source_prior_and_ignores_the_target():
    counts = [500, 50, 5]
    logits = np.array([[2.0, 1.0, 0.5], [0.1, 0.3, -0.2]], np.float32)
    adjusted, loss, corrected = bench.method_logits(bench.METHODS["posthoc_la"], logits, counts)
    expected = logits - np.log(np.array(counts) / 555.0)
    np.testing.assert_allclose(adjusted, expected, rtol=1e-6)
    assert (loss, corrected) == ("ce", False)
    assert bench.method_logits(bench.METHODS["softmax"], logits, counts)[2] is False
    assert bench.method_logits(bench.METHODS["pc_softmax"], logits, counts)[1:] == ("ce", True)
    assert bench.method_logits(bench.METHODS["lade_class"], logits, counts)[1:] == ("lade", True)


def test_logit_statistics_are_the_means_of_true_class_and_other_logits():
    logits = np.array([[3.0, 1.0, -1.0], [0.0, 2.0, 4.0]])
    labels = np.array([0, 2])
    stats = bench.logit_statistics(logits, labels)
    assert stats["positive"] == pytest.approx((3.0 + 4.0) / 2)
    assert stats["negative"] == pytest.approx(((1.0 - 1.0) / 2 + (0.0 + 2.0) / 2) / 2)


def _part(seed: int, shift_value: float, std: float = 0.01) -> dict:
    shift = {d: {"mean": shift_value, "std": std} for d in bench.SHIFTS}
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
        "config": {"epochs": 3},
        "train_seconds": 10.0,
        "train_images_per_s": 100.0,
        "methods": {"lade_sample": {"shift": shift, "uniform": uniform}},
    }


def test_merge_takes_the_std_over_training_seeds_when_there_are_several():
    merged = bench.merge_accuracy([_part(0, 0.80), _part(1, 0.84), _part(2, 0.82)])
    row = merged["fmnist_lt_ir100"]["lade_sample"]
    assert row["seeds"] == [0, 1, 2]
    assert row["shift"]["U"]["mean"] == pytest.approx(0.82)
    assert row["shift"]["U"]["std"] == pytest.approx(np.std([0.80, 0.84, 0.82]))
    assert row["shift"]["U"]["subsampling_std"] == pytest.approx(0.01)
    assert row["mean_of_11"] == pytest.approx(0.82)
    single = bench.merge_accuracy([_part(0, 0.80, std=0.03)])["fmnist_lt_ir100"]["lade_sample"]
    assert single["shift"]["B50"]["std"] == pytest.approx(0.03)


def test_importance_verdict_names_the_better_variant():
    methods = {"lade_sample": {"mean_of_11": 0.70}, "lade_class": {"mean_of_11": 0.75}}
    assert "`class` is better here by 5.0 points" in bench.importance_verdict(methods)
    assert bench.importance_verdict({"lade_sample": {"mean_of_11": 0.7}}) is None


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
    assert set(rows) == set(bench.METHODS)
    for row in rows.values():
        assert set(row["shift"]) == set(bench.SHIFTS)
        assert all(0.0 <= v["mean"] <= 1.0 for v in row["shift"].values())
    # Softmax and PC Softmax share one CE model; post-hoc adjustment is PC Softmax at U.
    assert rows["posthoc_la"]["shift"]["U"]["mean"] == rows["pc_softmax"]["shift"]["U"]["mean"]
    assert (output / "accuracy_smoke.png").stat().st_size > 10_000
    assert "| Softmax (CE) |" in (output / "accuracy_smoke.md").read_text()
    fig2 = json.loads((output / "figure2_smoke.json").read_text())
    assert [row["alpha"] for row in fig2["rows"]] == list(bench.SMOKE_FIGURE2_ALPHAS)
    assert fig2["log_C"] == pytest.approx(math.log(10))
    assert (output / "figure2_smoke.png").exists()
    # A second run finds every part done and only merges.
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "done before, skipped" in again.stderr
