"""The label-shift evaluation protocol (DESIGN section 5), written once.

The evaluator component, the benchmark and the tuner objective all call `evaluate_under_shift`
with a model's raw logits on a balanced split: each of the 11 test distributions of
`lade_tf.priors.SHIFT_NAMES` is subsampled with several seeds, the logits are adjusted to the
target prior by the inference rule (`lade_tf.layers.adjust_logits_numpy`) and scored. The target
prior is the known one, none (plain model output), or estimated from the unlabeled subsample
(section 7). NumPy only; results are plain Python floats.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lade_tf.layers import adjust_logits_numpy
from lade_tf.metrics import (accuracy, balanced_accuracy, brier_score, expected_calibration_error,
                             negative_log_likelihood, shot_accuracy)
from lade_tf.priors import (SHIFT_NAMES, calibrate_logits, estimate_target_prior, fit_bcts,
                            fit_temperature, shifted_test_counts, source_prior,
                            subsample_by_counts)

CALIBRATIONS = ("temperature", "bcts")


def evaluate_under_shift(logits: np.ndarray, labels: Sequence[int], train_counts: Sequence[float],
                         train_loss: str, *, per_class: int | None = None,
                         seeds: Sequence[int] = (0, 1, 2), corrected: bool = True,
                         estimate: str | None = None, val_logits: np.ndarray | None = None,
                         val_labels: Sequence[int] | None = None,
                         calibration: str | None = None) -> dict[str, dict[str, float]]:
    """Top-1 accuracy on the 11 shifted versions of a balanced split, mean and std over seeds.

    For every distribution d in SHIFT_NAMES and seed s: keep `shifted_test_counts(train_counts,
    per_class, d)` examples per class (`subsample_by_counts(labels, counts, s)`), adjust their
    logits to a target prior with `adjust_logits_numpy`, and take the accuracy. The target prior is
        corrected=True, estimate=None:   the known p_t (the normalised counts);
        corrected=False:                 none, the plain model output (Softmax for a CE model);
        estimate="em" or "bbse":         `estimate_target_prior` on the unlabeled subsample.

    Estimation uses the model's posteriors for a reference prior p_r: the label distribution of
    the validation split when `val_labels` is given (so a calibration fitted there is valid),
    otherwise the training prior p_s. Calibration only serves the estimate; predictions use the
    model's raw logits adjusted to the estimated prior, as a served model would.

    Args:
        logits: raw model logits [N, C] on a balanced split (the test split, or val for tuning).
        labels: its integer labels [N].
        train_counts: training images per class [C] (source prior and frequency ranks).
        train_loss: the loss the model was trained with ("ce", "lade", ...): the inference rule.
        per_class: m of the protocol; default the smallest class size in `labels` (all images of
            a balanced split).
        seeds: subsampling seeds (at least one; three or more for a meaningful std).
        corrected: False evaluates the uncorrected model output.
        estimate: None, "em" (Saerens et al. 2002) or "bbse" (Lipton et al. 2018).
        val_logits, val_labels: labelled validation logits [M, C] and labels [M]; needed by
            "bbse" and by calibration; every class must occur.
        calibration: None, "temperature" or "bcts" (Alexandari et al. 2020), fitted on val, before
            EM or BBSE.

    Returns:
        {name: {"mean": float, "std": float}} for the 11 names in order; std over seeds with
        ddof=0 (0.0 for a single seed or for "U", which keeps every image).

    Raises:
        ValueError: for inconsistent shapes or options, a class with fewer than `per_class`
            examples, or anything the priors, layers and metrics modules reject.
    """
    logits, labels = _checked_logits_labels(logits, labels, train_counts)
    if not len(seeds):
        raise ValueError("seeds is empty: expected at least one subsampling seed")
    available = np.bincount(labels, minlength=logits.shape[1])
    if per_class is None:
        per_class = int(available.min())
    if not isinstance(per_class, (int, np.integer)) or not 1 <= per_class <= available.min():
        scarce = int(available.argmin())
        raise ValueError(f"per_class = {per_class!r}: expected an integer from 1 to "
                         f"{available.min()} (class {scarce} has {available[scarce]} examples)")
    predict = _target_logits_rule(logits, train_counts, train_loss, corrected, estimate,
                                  val_logits, val_labels, calibration)
    results = {}
    for name in SHIFT_NAMES:
        counts = shifted_test_counts(train_counts, int(per_class), name)
        known_prior = counts / counts.sum()
        scores = []
        for seed in seeds:
            kept = subsample_by_counts(labels, counts, seed)
            scores.append(accuracy(labels[kept], predict(kept, known_prior)))
        results[name] = {"mean": float(np.mean(scores)), "std": float(np.std(scores))}
    return results


def uniform_summary(logits: np.ndarray, labels: Sequence[int], train_counts: Sequence[float],
                    train_loss: str, *, corrected: bool = True, estimate: str | None = None,
                    val_logits: np.ndarray | None = None, val_labels: Sequence[int] | None = None,
                    calibration: str | None = None, many_threshold: int = 100,
                    few_threshold: int = 20) -> dict[str, float]:
    """Accuracy, shot-group accuracy and calibration of one method on the whole balanced split.

    The known target prior is uniform (the split is balanced); `corrected`, `estimate`, val data
    and `calibration` choose the prediction exactly as in `evaluate_under_shift`, so each report
    row's uniform metrics belong to the same method as its accuracy curve.

    Args:
        logits, labels, train_counts, train_loss: as in `evaluate_under_shift`.
        corrected, estimate, val_logits, val_labels, calibration: as in `evaluate_under_shift`.
        many_threshold, few_threshold: shot groups (> many: many-shot, < few: few-shot training
            images), as `lade_tf.metrics.shot_accuracy`.

    Returns:
        {"accuracy", "balanced_accuracy", "many", "medium", "few", "ece", "nll", "brier"} as
        Python floats; a shot group without classes is NaN.
    """
    logits, labels = _checked_logits_labels(logits, labels, train_counts)
    num_classes = logits.shape[1]
    predict = _target_logits_rule(logits, train_counts, train_loss, corrected, estimate,
                                  val_logits, val_labels, calibration)
    adjusted = predict(np.arange(len(labels)), np.full(num_classes, 1.0 / num_classes))
    probs = _softmax(adjusted)
    shots = shot_accuracy(labels, adjusted, train_counts, many_threshold, few_threshold)
    return {"accuracy": accuracy(labels, adjusted),
            "balanced_accuracy": balanced_accuracy(labels, adjusted),
            **{group: float(value) for group, value in shots.items()},
            "ece": expected_calibration_error(labels, probs),
            "nll": negative_log_likelihood(labels, probs),
            "brier": brier_score(labels, probs)}


def _target_logits_rule(logits: np.ndarray, train_counts: Sequence[float], train_loss: str,
                        corrected: bool, estimate: str | None, val_logits: np.ndarray | None,
                        val_labels: Sequence[int] | None, calibration: str | None):
    """Returns predict(rows, known_prior) -> adjusted logits of those rows, for one method."""
    if estimate is None:
        if calibration is not None:
            raise ValueError(f"calibration = {calibration!r} only serves a prior estimate: "
                             "pass estimate='em' or 'bbse' too")
        if not corrected:
            return lambda rows, known_prior: adjust_logits_numpy(
                logits[rows], train_counts, train_loss, None)
        return lambda rows, known_prior: adjust_logits_numpy(
            logits[rows], train_counts, train_loss, known_prior)
    if not corrected:
        raise ValueError(f"estimate = {estimate!r} with corrected=False: an estimated prior is a "
                         "correction; use corrected=True")
    if calibration not in (None, *CALIBRATIONS):
        raise ValueError(f"calibration = {calibration!r}: expected None or one of {CALIBRATIONS}")
    needs_val = estimate == "bbse" or calibration is not None
    if (val_logits is None) != (val_labels is None) or (needs_val and val_logits is None):
        raise ValueError(f"estimate = {estimate!r}, calibration = {calibration!r}: pass both "
                         "val_logits and val_labels" + (" (required here)" if needs_val else ""))

    reference = source_prior(train_counts)
    val_scores = None
    if val_logits is not None:
        val_logits, val_labels = _checked_logits_labels(val_logits, val_labels, train_counts)
        val_counts = np.bincount(val_labels, minlength=logits.shape[1])
        if (val_counts == 0).any():
            raise ValueError(f"val_labels have no example of class(es) "
                             f"{np.flatnonzero(val_counts == 0).tolist()}: expected every class")
        reference = val_counts / val_counts.sum()
        val_scores = adjust_logits_numpy(val_logits, train_counts, train_loss, reference)
    scores = adjust_logits_numpy(logits, train_counts, train_loss, reference)
    if calibration == "temperature":
        temperature = fit_temperature(val_scores, val_labels)
        scores, val_scores = (calibrate_logits(s, temperature) for s in (scores, val_scores))
    elif calibration == "bcts":
        temperature, bias = fit_bcts(val_scores, val_labels)
        scores, val_scores = (calibrate_logits(s, temperature, bias) for s in (scores, val_scores))
    probs = _softmax(scores)
    val_probs = None if val_scores is None else _softmax(val_scores)

    def predict(rows: np.ndarray, known_prior: np.ndarray) -> np.ndarray:
        estimated = estimate_target_prior(probs[rows], reference, method=estimate,
                                          val_probs=val_probs, val_labels=val_labels)
        return adjust_logits_numpy(logits[rows], train_counts, train_loss, estimated)

    return predict


def _checked_logits_labels(logits: np.ndarray, labels: Sequence[int],
                           train_counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes = len(train_counts)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits have shape {logits.shape}: expected [N, {num_classes}] "
                         "(one column per training class)")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    if labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected {logits.shape[0]} integer labels, got {labels.dtype} "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span {labels.min()}..{labels.max()}: expected "
                         f"0..{num_classes - 1}")
    return logits, labels.astype(np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)
