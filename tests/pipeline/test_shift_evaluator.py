"""The ShiftEvaluator component's serving check and baseline scoring on a real export of a
logistic-regression model (tests/pipeline/shift_support.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lade_tf.export import served_raw_logits
from pipeline import shift_evaluator, shift_scoring
from tests.pipeline.shift_support import TRAIN_COUNTS, read_idx


def test_serving_check_covers_the_rule_and_estimate_prior(
    real_data, fashion_mnist_dir, tmp_path: Path
):
    """The blessing's serving check on a real export of the logistic-regression CE model (as a
    Keras model on 14x14 pooled images): the exported rule and the BCTS-calibrated
    estimate_prior pass, a model checked as another loss or tau does not."""
    import keras

    from lade_tf.export import export_serving_model
    from lade_tf.prior_estimation import TargetPriorEstimator

    images = (
        read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", 16)
        .reshape(-1, 14, 2, 14, 2)
        .mean(axis=(2, 4))[..., None]
        .astype(np.float32)[:256]
    )
    coef, intercept = real_data["weights"]["ce"]
    inputs = keras.Input((14, 14, 1))
    dense = keras.layers.Dense(10)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    # The model's features are pixels / 255: decision_function = pixels @ (W / 255)^T + b.
    dense.set_weights([(coef.T / 255.0).astype(np.float32), intercept.astype(np.float32)])
    model_logits = np.asarray(model(images), np.float64)
    np.testing.assert_allclose(model_logits, real_data["logits"]["ce"][:256], atol=1e-3)
    estimator = TargetPriorEstimator(TRAIN_COUNTS, "ce").fit(
        real_data["val_logits"]["ce"], real_data["val_labels"]
    )
    export_serving_model(
        model,
        tmp_path / "Format-Serving",
        class_counts=TRAIN_COUNTS,
        train_loss="ce",
        prior_estimator=estimator,
    )

    class Artifact:
        uri = str(tmp_path)

    assert (
        shift_evaluator._check_serving_model(Artifact(), images, model_logits, TRAIN_COUNTS, "ce")
        == ""
    )
    assert "served logits differ" in shift_evaluator._check_serving_model(
        Artifact(), images, model_logits, TRAIN_COUNTS, "logit_adjusted", 2.0
    )
    assert "served logits differ" in shift_evaluator._check_serving_model(
        Artifact(), images, model_logits, TRAIN_COUNTS, "balanced_softmax"
    )

    # A baseline is scored through its SavedModel: predict_uniform's logits minus the CE rule's
    # offset (-log p_s) and log(1/C) give back the raw logits, hence the same report rows.
    raw, metadata = served_raw_logits(str(tmp_path / "Format-Serving"), images)
    assert metadata["train_loss"] == "ce"
    np.testing.assert_allclose(raw, model_logits, atol=1e-4)
    labels = real_data["labels"][:256]
    baseline_artifact = type("Baseline", (), {"uri": str(tmp_path), "id": 7})()
    candidate_artifact = type("Candidate", (), {"uri": str(tmp_path / "other"), "id": 8})()
    class_info = {
        "height": 14,
        "width": 14,
        "channels": 1,
        "class_names": [str(c) for c in range(10)],
    }
    baseline, note = shift_evaluator._score_baseline(
        baseline_artifact, candidate_artifact, images, labels, 3, class_info
    )
    expected = shift_scoring.method_scores(
        shift_scoring.compute_shift_report({"ce": model_logits}, labels, {"ce": TRAIN_COUNTS}),
        "PC Softmax",
    )
    assert (baseline["method"], baseline["model_id"]) == ("PC Softmax", 7) and "id 7" in note
    for key in ("mean", "uniform", "ece"):
        assert baseline[key] == pytest.approx(expected[key], abs=1e-6), key
    # The candidate itself, or a model of other classes, is no baseline.
    assert (
        shift_evaluator._score_baseline(
            baseline_artifact, baseline_artifact, images, labels, 3, class_info
        )[0]
        is None
    )
    other = {**class_info, "class_names": ["a", "b"]}
    none, why = shift_evaluator._score_baseline(
        baseline_artifact, candidate_artifact, images, labels, 3, other
    )
    assert none is None and "not comparable" in why
