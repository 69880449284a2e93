"""Evaluation metrics: NumPy functions for the evaluator, a Keras metric for training.

NumPy functions take integer labels [N] and scores [N, C]. Functions that only rank (accuracy,
balanced and shot accuracy) accept logits or probabilities alike; calibration metrics (ECE, NLL,
Brier) need probabilities and reject anything else.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from lade_tf.checks import check_labels, check_logits, check_probabilities


def _labels_and_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    # Ranking metrics take any scores, so infinite logits (log 0) are allowed here.
    scores = check_logits(scores, name="scores", finite=False)
    return check_labels(labels, scores.shape[1], scores.shape[0], rows_of="scores"), scores


def _probabilities(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = check_probabilities(probs)
    return check_labels(labels, probs.shape[1], probs.shape[0], rows_of="probs"), probs


def accuracy(labels: Any, probs_or_logits: Any) -> float:
    """Top-1 accuracy: fraction of rows whose argmax is the label."""
    labels, scores = _labels_and_scores(labels, probs_or_logits)
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def _per_class_accuracy(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Recall of each class [C]; NaN for classes absent from labels."""
    num_classes = scores.shape[1]
    correct = np.bincount(
        labels, weights=np.argmax(scores, axis=1) == labels, minlength=num_classes
    )
    totals = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, correct / totals, np.nan)


def balanced_accuracy(labels: Any, scores: Any) -> float:
    """Mean per-class accuracy (recall) over the classes present in `labels`.

    Formula:
        (1/|K|) * sum_{c in K} #{i: y_i = c, argmax s_i = c} / #{i: y_i = c},  K = classes in labels
        (equal to sklearn.metrics.balanced_accuracy_score).
    """
    labels, scores = _labels_and_scores(labels, scores)
    return float(np.nanmean(_per_class_accuracy(labels, scores)))


def shot_accuracy(
    labels: Any,
    scores: Any,
    train_counts: Sequence[float],
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, float]:
    """Mean per-class accuracy of the many-, medium- and few-shot class groups.

    Formula:
        many: classes with n_c > many_threshold training images; few: n_c < few_threshold;
        medium: the rest. Each group's value is the mean accuracy of its classes present in
        `labels` (the authors' `shot_acc`); NaN when the group has no such class.

    Args:
        labels: integer labels [N].
        scores: logits or probabilities [N, C].
        train_counts: training images per class [C].
        many_threshold: a class is many-shot above this count (default 100).
        few_threshold: a class is few-shot below this count (default 20).

    Returns:
        {"many": float, "medium": float, "few": float}.
    """
    labels, scores = _labels_and_scores(labels, scores)
    counts = np.asarray(train_counts, dtype=np.float64)
    if counts.shape != (scores.shape[1],):
        raise ValueError(f"train_counts has shape {counts.shape}: expected [{scores.shape[1]}]")
    if few_threshold > many_threshold:
        raise ValueError(
            f"few_threshold = {few_threshold} exceeds many_threshold = "
            f"{many_threshold}: expected few_threshold <= many_threshold"
        )
    per_class = _per_class_accuracy(labels, scores)
    groups = {"many": counts > many_threshold, "few": counts < few_threshold}
    groups["medium"] = ~(groups["many"] | groups["few"])
    result = {}
    for name in ("many", "medium", "few"):
        values = per_class[groups[name] & ~np.isnan(per_class)]
        result[name] = float(values.mean()) if values.size else float("nan")
    return result


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    Formula:
        ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|, confidence = max_c p_ic, bin b holds
        confidences in ((b-1)/n_bins, b/n_bins] (the first bin also holds 0).
    """
    labels, probs = _probabilities(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins = {n_bins!r}: expected an integer >= 1")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gaps = np.abs(
        np.bincount(bins, weights=correct, minlength=n_bins)
        - np.bincount(bins, weights=confidence, minlength=n_bins)
    )
    return float(gaps.sum() / labels.size)


def negative_log_likelihood(labels: Any, probs: Any) -> float:
    """Mean negative log-probability of the true class.

    Formula:
        NLL = -(1/N) * sum_i log max(p_i[y_i], eps), eps = float64 machine epsilon (as
        sklearn.metrics.log_loss clips), so a zero probability gives a large finite value.
    """
    labels, probs = _probabilities(labels, probs)
    true_class = probs[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.clip(true_class, np.finfo(np.float64).eps, None))))


def brier_score(labels: Any, probs: Any) -> float:
    """Multi-class Brier score (Brier 1950), between 0 (perfect) and 2.

    Formula:
        BS = (1/N) * sum_i sum_c (p_ic - 1[y_i = c])^2
    """
    labels, probs = _probabilities(labels, probs)
    one_hot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


@keras.saving.register_keras_serializable(package="lade_tf")
class BalancedAccuracy(keras.metrics.Metric):
    """Balanced (mean per-class) accuracy accumulated over batches, for `model.compile`.

    Formula:
        mean over classes c with total_c > 0 of correct_c / total_c, where total_c sums the sample
        weights of examples labelled c and correct_c those whose argmax prediction is c.

    Labels may be integers [batch] / [batch, 1] or one-hot [batch, C]; predictions are logits or
    probabilities [batch, C]. State: two [C] float32 counters, summed across replicas.

    Args:
        num_classes: C.
        name: metric name (default "balanced_accuracy").
        dtype: result dtype.

    Examples:
        >>> metric = BalancedAccuracy(2)
        >>> metric.update_state([0, 0, 0, 1], [[1, 0], [1, 0], [0, 1], [0, 1]])
        >>> round(float(metric.result()), 4)  # (2/3 + 1) / 2
        0.8333
    """

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes = {num_classes!r}: expected an integer >= 2")
        self.num_classes = int(num_classes)
        self.correct = self.add_variable(
            shape=(self.num_classes,), initializer="zeros", dtype="float32", name="correct"
        )
        self.total = self.add_variable(
            shape=(self.num_classes,), initializer="zeros", dtype="float32", name="total"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes:
            y_true = ops.argmax(y_true, axis=-1)
        elif len(y_true.shape) == 2 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        labels = ops.cast(y_true, "int32")
        members = ops.one_hot(labels, self.num_classes, dtype="float32")
        hits = ops.cast(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels), "float32"
        )
        if sample_weight is not None:
            members = members * ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
        self.total.assign_add(ops.sum(members, axis=0))
        self.correct.assign_add(ops.sum(members * ops.expand_dims(hits, -1), axis=0))

    def result(self) -> Any:
        correct, total = ops.convert_to_tensor(self.correct), ops.convert_to_tensor(self.total)
        present = total > 0
        recall = ops.where(present, correct / ops.where(present, total, 1.0), 0.0)
        num_present = ops.sum(ops.cast(present, "float32"))
        return ops.cast(ops.divide_no_nan(ops.sum(recall), num_present), self.dtype)

    def reset_state(self) -> None:
        self.correct.assign(ops.zeros((self.num_classes,), "float32"))
        self.total.assign(ops.zeros((self.num_classes,), "float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}
