"""benchmarks/throughput.py: a --quick run, the network's size, batched augmentation.

No test here needs PyTorch: the PyTorch comparison is the benchmark's own (`.venv-torch`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

TORCH_PYTHON = REPO_ROOT / ".venv-torch" / "bin" / "python"
# The official network: hyperconnect/LADE, models/ResNet32Feature.py (BBN_ResNet_Cifar with
# blocks [5, 5, 5], the last stage's final block replaced by the two 64-channel branches cb_block
# and rb_block, concatenated to 128 features) under models/DotProductClassifier.py (a
# Linear(128, classes) head). Counted from its layers: 537,488 in the trunk, 12,900 in a
# 100-class head; 1,264 batch-norm channels with a running mean and variance each.
OFFICIAL_TRAINABLE_100_CLASSES = 550_388
OFFICIAL_BATCH_NORM_STATISTICS = 2_528


def _rows_with_stats(results: dict) -> dict[str, dict]:
    rows = {}
    for name, entry in results["training"]["variants"].items():
        for key in ("train_ce", "train_lade", "infer"):
            rows[f"{name}/{key}"] = entry[key]
    torch = results["training"]["torch"]
    for key in ("train_ce", "infer"):
        if key in torch:
            rows[f"torch/{key}"] = torch[key]
    for key in ("alone", "fit_pipeline", "fit_synthetic"):
        rows[f"pipeline/{key}"] = results["pipeline"][key]
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_reports_every_row_with_ordered_positive_statistics(tmp_path):
    output = tmp_path / "results"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "throughput.py"),
            "--quick",
            "--variants",
            "default",
            "--output-dir",
            str(output),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((output / "throughput.json").read_text())
    rows = _rows_with_stats(results)
    expected = {"default/train_ce", "default/train_lade", "default/infer", "pipeline/alone"}
    assert expected <= set(rows)
    if TORCH_PYTHON.exists():
        assert {"torch/train_ce", "torch/infer"} <= set(rows)
        parameters = results["training"]["torch"]["parameters"]
        assert parameters == results["training"]["variants"]["default"]["parameters"]
    else:
        assert "scripts/setup.sh --torch" in results["training"]["torch"]["status"]
    for name, row in rows.items():
        assert 0 < row["min"] <= row["median"] <= row["max"], (name, row)
        assert np.isfinite([row["min"], row["max"]]).all(), name
    assert np.isfinite(results["training"]["variants"]["default"]["lade_overhead_pct"])
    assert results["pipeline"]["first_epoch_images_per_s"] > 0
    assert results["training"]["variants"]["default"]["parameters"] == {
        "trainable": OFFICIAL_TRAINABLE_100_CLASSES,
        "non_trainable": OFFICIAL_BATCH_NORM_STATISTICS,
    }
    assert results["training"]["variants"]["default"]["peak_rss_mb"] > 100
    assert results["pipeline"]["peak_rss_mb"] > 100
    for suffix in ("md", "png"):
        assert (output / f"throughput.{suffix}").stat().st_size > 0
    assert "TF default CE" in (output / "throughput.md").read_text()


@pytest.mark.timeout(120)
def test_bbn_resnet32_has_the_official_networks_parameter_counts():
    """Our BBN ResNet-32 is the LADE authors' network, counted as throughput.py counts it."""
    from throughput_worker import parameter_counts

    from lade_tf.models import build_model

    model = build_model("resnet32_bbn", 100, (32, 32, 3))
    assert parameter_counts(model) == {
        "trainable": OFFICIAL_TRAINABLE_100_CLASSES,
        "non_trainable": OFFICIAL_BATCH_NORM_STATISTICS,
    }
    assert model.count_params() == OFFICIAL_TRAINABLE_100_CLASSES + OFFICIAL_BATCH_NORM_STATISTICS


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (8, 8, 1)])
def test_batched_augmentation_equals_per_image_augmentation(shape):
    """The pipeline's batched crop + flip gives exactly `augment_image` of every image."""
    import tensorflow as tf

    from lade_tf.input_pipeline import augment_batch, augment_image, augment_parameters

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, *shape)).astype(np.float32)
    seeds = rng.integers(-(2**62), 2**62, (16, 2))
    expected = np.stack(
        [augment_image(tf.constant(i), tf.constant(s)) for i, s in zip(images, seeds)]
    )
    drawn = [augment_parameters(tf.constant(s), shape) for s in seeds]
    offsets = tf.stack([d[0] for d in drawn])
    flips = tf.stack([d[1] for d in drawn])
    assert 0 < int(tf.reduce_sum(tf.cast(flips, tf.int32))) < 16
    np.testing.assert_array_equal(augment_batch(tf.constant(images), offsets, flips), expected)
