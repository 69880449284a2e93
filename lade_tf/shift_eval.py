"""The label-shift evaluation protocol (docs/design.md section 5), written once.

The evaluator component, the benchmark and the tuner objective all call `evaluate_under_shift`
with a model's raw logits on a balanced split: each of the 11 test distributions of
`lade_tf.priors.SHIFT_NAMES` is subsampled with several seeds, the logits are adjusted to the
target prior by the inference rule (`lade_tf.layers.adjust_logits_numpy`) and scored. The target
prior is the known one, none (plain model output), or estimated from the unlabeled subsample by
`lade_tf.prior_estimation.TargetPriorEstimator` (section 7: calibration on the validation split,
then EM or BBSE), in which case the estimation error is reported too. NumPy only; results are
plain Python floats.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from lade_tf.calibration import CALIBRATIONS, DEFAULT_CALIBRATION, softmax
from lade_tf.checks import check_logits_labels
from lade_tf.label_shift import prior_estimation_error
from lade_tf.layers import adjust_logits_numpy
from lade_tf.metrics import (
    accuracy,
    balanced_accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    shot_accuracy,
)
from lade_tf.prior_estimation import TargetPriorEstimator
from lade_tf.priors import SHIFT_NAMES, shifted_test_counts, subsample_by_counts

#: Keys of the estimation error added to every distribution's result when the prior is estimated.
ESTIMATION_ERROR_KEYS = ("prior_l1", "prior_js")


def evaluate_under_shift(
    logits: np.ndarray,
    labels: Sequence[int],
    train_counts: Sequence[float],
    train_loss: str,
    *,
    tau: float = 1.0,
    per_class: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    corrected: bool = True,
    estimate: str | None = None,
    val_logits: np.ndarray | None = None,
    val_labels: Sequence[int] | None = None,
    calibration: str | None = None,
    prior_strength: float | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1 accuracy on the 11 shifted versions of a balanced split, mean and std over seeds.

    For every distribution d in SHIFT_NAMES and seed s: keep `shifted_test_counts(train_counts,
    per_class, d)` examples per class (`subsample_by_counts(labels, counts, s)`), adjust their
    logits to a target prior with `adjust_logits_numpy`, and take the accuracy. The target prior is
        corrected=True, estimate=None:   the known p_t (the normalised counts);
        corrected=False:                 none, the plain model output (Softmax for a CE model);
        estimate="em" or "bbse":         `TargetPriorEstimator.estimate` on the unlabeled
                                         subsample, with the calibration fitted on val.
    Calibration only serves the estimate; predictions use the model's raw logits adjusted to the
    estimated prior, as a served model would.

    Args:
        logits: raw model logits [N, C] on a balanced split (the test split, or val for tuning).
        labels: its integer labels [N].
        train_counts: training images per class [C] (source prior and frequency ranks).
        train_loss: the loss the model was trained with ("ce", "lade", ...): the inference rule.
        tau: the logit-adjusted loss's temperature (1.0 for every other loss).
        per_class: m of the protocol; default the smallest class size in `labels` (all images of
            a balanced split).
        seeds: subsampling seeds (at least one; three or more for a meaningful std).
        corrected: False evaluates the uncorrected model output.
        estimate: None, "em" (Saerens et al. 2002, Dirichlet-MAP) or "bbse" (Lipton et al. 2018).
        val_logits, val_labels: labelled validation logits [M, C] and labels [M]; needed by
            "bbse" and by calibration; every class must occur.
        calibration: "dirichlet" (Kull et al. 2019), "bcts" (Alexandari et al. 2020),
            "temperature" or "none", fitted on val before EM or BBSE; None means
            `lade_tf.calibration.DEFAULT_CALIBRATION` when estimating.
        prior_strength: EM's Dirichlet pseudo-count (None: the estimator's default,
            DEFAULT_PRIOR_STRENGTH; 0: plain maximum-likelihood EM).

    Returns:
        {name: {"mean": float, "std": float}} for the 11 names in order; std over seeds with
        ddof=0 (0.0 for a single seed or for "U", which keeps every image). With an estimate,
        every entry also has "prior_l1" and "prior_js": the mean over seeds of the L1 distance
        and Jensen-Shannon divergence (nats) from the estimated to the true p_t.

    Raises:
        ValueError: for inconsistent shapes or options, a class with fewer than `per_class`
            examples, or anything the priors, layers and metrics modules reject.
    """
    logits, labels = check_logits_labels(logits, labels, len(train_counts))
    if not len(seeds):
        raise ValueError("seeds is empty: expected at least one subsampling seed")
    available = np.bincount(labels, minlength=logits.shape[1])
    if per_class is None:
        per_class = int(available.min())
    if not isinstance(per_class, (int, np.integer)) or not 1 <= per_class <= available.min():
        scarce = int(available.argmin())
        raise ValueError(
            f"per_class = {per_class!r}: expected an integer from 1 to "
            f"{available.min()} (class {scarce} has {available[scarce]} examples)"
        )
    rule = _prediction_rule(
        logits,
        train_counts,
        train_loss,
        tau,
        corrected,
        estimate,
        val_logits,
        val_labels,
        calibration,
        prior_strength,
    )
    results = {}
    for name in SHIFT_NAMES:
        counts = shifted_test_counts(train_counts, int(per_class), name)
        known_prior = counts / counts.sum()
        scores, errors = [], []
        for seed in seeds:
            kept = subsample_by_counts(labels, counts, seed)
            adjusted, estimated = rule(kept, known_prior)
            scores.append(accuracy(labels[kept], adjusted))
            if estimated is not None:
                errors.append(prior_estimation_error(estimated, known_prior))
        results[name] = {"mean": float(np.mean(scores)), "std": float(np.std(scores))}
        if errors:
            results[name].update(
                {
                    "prior_l1": float(np.mean([e["l1"] for e in errors])),
                    "prior_js": float(np.mean([e["js"] for e in errors])),
                }
            )
    return results


def uniform_summary(
    logits: np.ndarray,
    labels: Sequence[int],
    train_counts: Sequence[float],
    train_loss: str,
    *,
    tau: float = 1.0,
    corrected: bool = True,
    estimate: str | None = None,
    val_logits: np.ndarray | None = None,
    val_labels: Sequence[int] | None = None,
    calibration: str | None = None,
    prior_strength: float | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, float]:
    """Accuracy, shot-group accuracy and calibration of one method on the whole balanced split.

    The known target prior is uniform (the split is balanced); `corrected`, `estimate`, val data,
    `calibration` and `prior_strength` choose the prediction exactly as in
    `evaluate_under_shift`, so each report row's uniform metrics belong to the same method as its
    accuracy curve.

    Args:
        logits, labels, train_counts, train_loss, tau: as in `evaluate_under_shift`.
        corrected, estimate, val_logits, val_labels, calibration, prior_strength: as in
            `evaluate_under_shift`.
        many_threshold, few_threshold: shot groups (> many: many-shot, < few: few-shot training
            images), as `lade_tf.metrics.shot_accuracy`.

    Returns:
        {"accuracy", "balanced_accuracy", "many", "medium", "few", "ece", "nll", "brier"} as
        Python floats; a shot group without classes is NaN.
    """
    logits, labels = check_logits_labels(logits, labels, len(train_counts))
    num_classes = logits.shape[1]
    rule = _prediction_rule(
        logits,
        train_counts,
        train_loss,
        tau,
        corrected,
        estimate,
        val_logits,
        val_labels,
        calibration,
        prior_strength,
    )
    adjusted, _ = rule(np.arange(len(labels)), np.full(num_classes, 1.0 / num_classes))
    probs = softmax(adjusted)
    shots = shot_accuracy(labels, adjusted, train_counts, many_threshold, few_threshold)
    return {
        "accuracy": accuracy(labels, adjusted),
        "balanced_accuracy": balanced_accuracy(labels, adjusted),
        **{group: float(value) for group, value in shots.items()},
        "ece": expected_calibration_error(labels, probs),
        "nll": negative_log_likelihood(labels, probs),
        "brier": brier_score(labels, probs),
    }


def _prediction_rule(
    logits: np.ndarray,
    train_counts: Sequence[float],
    train_loss: str,
    tau: float,
    corrected: bool,
    estimate: str | None,
    val_logits: np.ndarray | None,
    val_labels: Sequence[int] | None,
    calibration: str | None,
    prior_strength: float | None,
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """predict(rows, known_prior) -> (adjusted logits of those rows, estimated prior or None)."""
    if estimate is None:
        if calibration is not None or prior_strength is not None:
            raise ValueError(
                f"calibration = {calibration!r}, prior_strength = "
                f"{prior_strength!r} only serve a prior estimate: pass "
                "estimate='em' or 'bbse' too"
            )
        if not corrected:
            return lambda rows, known_prior: (
                adjust_logits_numpy(logits[rows], train_counts, train_loss, None, tau=tau),
                None,
            )
        return lambda rows, known_prior: (
            adjust_logits_numpy(logits[rows], train_counts, train_loss, known_prior, tau=tau),
            None,
        )
    if not corrected:
        raise ValueError(
            f"estimate = {estimate!r} with corrected=False: an estimated prior is a "
            "correction; use corrected=True"
        )
    calibration = DEFAULT_CALIBRATION if calibration is None else calibration
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration = {calibration!r}: expected None or one of {CALIBRATIONS}")
    estimator = TargetPriorEstimator(
        train_counts,
        train_loss,
        tau=tau,
        method=estimate,
        calibration=calibration,
        prior_strength=prior_strength,
    )
    if (val_logits is None) != (val_labels is None) or (
        estimator.needs_validation and val_logits is None
    ):
        raise ValueError(
            f"estimate = {estimate!r}, calibration = {calibration!r}: pass both val_logits and "
            "val_labels"
            + (
                " (the calibration or BBSE is fitted on them; calibration='none' "
                "with EM needs none)"
                if estimator.needs_validation
                else ""
            )
        )
    if val_logits is not None:
        estimator.fit(val_logits, val_labels)

    def predict(rows: np.ndarray, known_prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        estimated = estimator.estimate(logits[rows])
        return adjust_logits_numpy(
            logits[rows], train_counts, train_loss, estimated, tau=tau
        ), estimated

    return predict


def mean_shift_accuracy(
    logits: np.ndarray,
    labels: Sequence[int],
    train_counts: Sequence[float],
    train_loss: str,
    *,
    tau: float = 1.0,
    seeds: Sequence[int] = (0, 1, 2),
    resamples: int = 200,
    resample_seed: int = 0,
) -> tuple[float, float]:
    """The mean accuracy over the 11 distributions with the known prior, and its standard error.

    The standard error is the spread a different draw of the balanced split would give: the
    standard deviation of the same mean over `resamples` stratified bootstrap resamples of the
    split (each class's examples drawn with replacement, class sizes kept). It tells a real
    difference between two models scored on the split from the split's own noise.

    Args:
        logits, labels, train_counts, train_loss, tau, seeds: as in `evaluate_under_shift`
            (known prior, corrected).
        resamples: bootstrap resamples (0: no standard error, returned as NaN).
        resample_seed: seed of the resampling.

    Returns:
        (mean over the 11 distributions, its standard error), accuracies in 0..1.
    """
    logits, labels = check_logits_labels(logits, labels, len(train_counts))

    def mean_of_11(rows: np.ndarray) -> float:
        by_dist = evaluate_under_shift(
            logits[rows], labels[rows], train_counts, train_loss, tau=tau, seeds=seeds
        )
        return float(np.mean([by_dist[name]["mean"] for name in SHIFT_NAMES]))

    mean = mean_of_11(np.arange(len(labels)))
    if resamples < 1:
        return mean, float("nan")
    rng = np.random.default_rng(resample_seed)
    members = [np.flatnonzero(labels == c) for c in range(logits.shape[1])]
    draws = [
        mean_of_11(np.concatenate([rng.choice(rows, size=rows.size) for rows in members]))
        for _ in range(resamples)
    ]
    return mean, float(np.std(draws, ddof=1))
