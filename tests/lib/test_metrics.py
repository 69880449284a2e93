"""Metrics against scikit-learn and NumPy references written here."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn import metrics as skm

from lade_tf import metrics

NUM_CLASSES = 6


def sample(seed=0, size=200, missing=()):
    """(labels [size], logits [size, C], probs [size, C]) with some classes absent if asked."""
    rng = np.random.default_rng(seed)
    choices = [c for c in range(NUM_CLASSES) if c not in missing]
    labels = rng.choice(choices, size=size)
    logits = rng.normal(0, 2, size=(size, NUM_CLASSES))
    logits[np.arange(size), labels] += rng.uniform(0, 3, size)  # better than chance
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return labels, logits, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.backend_agnostic
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("missing", [(), (2, 5)])
def test_accuracies_match_sklearn(missing):
    labels, logits, probs = sample(seed=1, missing=missing)
    predictions = logits.argmax(axis=1)
    for scores in (logits, probs):
        assert metrics.accuracy(labels, scores) == pytest.approx(
            skm.accuracy_score(labels, predictions)
        )
        assert metrics.balanced_accuracy(labels, scores) == pytest.approx(
            skm.balanced_accuracy_score(labels, predictions)
        )


@pytest.mark.backend_agnostic
def test_shot_accuracy_groups_by_training_count():
    labels, logits, _ = sample(seed=2, missing=(4,))
    train_counts = [500, 101, 100, 20, 19, 3]  # many: 0, 1; medium: 2, 3; few: 4 (absent), 5
    predictions = logits.argmax(axis=1)
    per_class = {c: np.mean(predictions[labels == c] == c) for c in np.unique(labels)}
    result = metrics.shot_accuracy(labels, logits, train_counts)
    assert result["many"] == pytest.approx((per_class[0] + per_class[1]) / 2)
    assert result["medium"] == pytest.approx((per_class[2] + per_class[3]) / 2)
    assert result["few"] == pytest.approx(per_class[5])
    custom = metrics.shot_accuracy(
        labels, logits, train_counts, many_threshold=400, few_threshold=4
    )
    assert custom["many"] == pytest.approx(per_class[0])
    assert custom["few"] == pytest.approx(per_class[5])
    assert custom["medium"] == pytest.approx(np.mean([per_class[c] for c in (1, 2, 3)]))
    empty = metrics.shot_accuracy(labels, logits, [500] * NUM_CLASSES)
    assert np.isnan(empty["medium"]) and np.isnan(empty["few"])


@pytest.mark.backend_agnostic
def test_ece_matches_loop_reference():
    labels, _, probs = sample(seed=3, size=500)
    for n_bins in (1, 10, 15):
        confidence, predictions = probs.max(axis=1), probs.argmax(axis=1)
        expected = 0.0
        for low, high in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
            in_bin = (confidence > low) & (confidence <= high)
            if in_bin.any():
                expected += in_bin.mean() * abs(
                    np.mean(predictions[in_bin] == labels[in_bin]) - confidence[in_bin].mean()
                )
        assert metrics.expected_calibration_error(labels, probs, n_bins) == pytest.approx(expected)
    one_hot = np.eye(NUM_CLASSES)[labels]
    assert metrics.expected_calibration_error(labels, one_hot) == pytest.approx(0.0)


@pytest.mark.backend_agnostic
def test_nll_and_brier_match_references():
    labels, _, probs = sample(seed=4)
    assert metrics.negative_log_likelihood(labels, probs) == pytest.approx(
        skm.log_loss(labels, probs, labels=np.arange(NUM_CLASSES))
    )
    expected_brier = np.mean(
        [np.sum((p - np.eye(NUM_CLASSES)[y]) ** 2) for p, y in zip(probs, labels)]
    )
    assert metrics.brier_score(labels, probs) == pytest.approx(expected_brier)
    zero_true_class = np.eye(NUM_CLASSES)[(labels + 1) % NUM_CLASSES]
    assert np.isfinite(metrics.negative_log_likelihood(labels, zero_true_class))
    assert metrics.brier_score(labels, zero_true_class) == pytest.approx(2.0)


@pytest.mark.backend_agnostic
def test_bad_inputs_are_rejected():
    labels, logits, probs = sample(seed=5, size=10)
    with pytest.raises(ValueError, match="apply softmax"):
        metrics.expected_calibration_error(labels, logits)
    with pytest.raises(ValueError, match="apply softmax"):
        metrics.negative_log_likelihood(labels, logits)
    with pytest.raises(ValueError, match=r"labels have shape \(9,\)"):
        metrics.accuracy(labels[:9], probs)
    with pytest.raises(ValueError, match=r"integers in \[0, 6\)"):
        metrics.balanced_accuracy(labels + 6, probs)
    with pytest.raises(ValueError, match=r"train_counts has shape \(3,\)"):
        metrics.shot_accuracy(labels, probs, [1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy(np.zeros(0, int), np.zeros((0, NUM_CLASSES)))


# ---- Keras metric ----


@pytest.mark.backend_agnostic
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_keras_balanced_accuracy_accumulates_like_sklearn():
    labels, logits, _ = sample(seed=6, missing=(3,))
    metric = metrics.BalancedAccuracy(NUM_CLASSES)
    for start in range(0, len(labels), 64):  # batches, label formats mixed
        chunk = labels[start : start + 64]
        y_true = np.eye(NUM_CLASSES)[chunk] if start == 64 else chunk[:, None]
        metric.update_state(y_true, logits[start : start + 64])
    expected = skm.balanced_accuracy_score(labels, logits.argmax(axis=1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    weights = np.random.default_rng(6).uniform(0, 2, len(labels))
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(labels, logits, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(
        skm.balanced_accuracy_score(labels, logits.argmax(axis=1), sample_weight=weights), abs=1e-6
    )


@pytest.mark.backend_agnostic
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # never trained
def test_keras_balanced_accuracy_in_compile_and_save(tmp_path):
    labels, logits, _ = sample(seed=7, size=96)
    features = logits.astype(np.float32)  # identity model: predictions are these logits
    model = keras.Sequential(
        [
            keras.Input((NUM_CLASSES,)),
            keras.layers.Dense(NUM_CLASSES, kernel_initializer="identity", use_bias=False),
        ]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metrics.BalancedAccuracy(NUM_CLASSES)],
    )
    result = model.evaluate(features, labels, batch_size=32, return_dict=True, verbose=0)
    expected = skm.balanced_accuracy_score(labels, logits.argmax(axis=1))
    assert result["balanced_accuracy"] == pytest.approx(expected, abs=1e-6)
    path = tmp_path / "metric.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    reloaded = loaded.evaluate(features, labels, batch_size=32, return_dict=True, verbose=0)
    assert reloaded["balanced_accuracy"] == pytest.approx(expected, abs=1e-6)
    config = metrics.BalancedAccuracy(4, name="ba").get_config()
    clone = metrics.BalancedAccuracy.from_config(config)
    assert (clone.num_classes, clone.name) == (4, "ba")
    with pytest.raises(ValueError, match="num_classes = 1"):
        metrics.BalancedAccuracy(1)
