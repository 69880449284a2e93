"""The rows of the shift report and their scores (docs/design.md section 5).

Every trained model gives rows: `ce` gives Softmax (no correction) and PC Softmax; `lade`,
`balanced_softmax` and `logit_adjusted` give their NAME; each NAME is evaluated with the known p_t
and with p_t estimated on the unlabeled shifted test set (docs/design.md section 7) by EM on the
uncalibrated posteriors ("NAME + EM"), by EM after calibration on the validation split
("NAME + calibrated EM") and by BBSE ("NAME + BBSE"); the last two need a validation split.
`compute_shift_report` scores them all with `lade_tf.shift_eval`, the one implementation of the
protocol. NumPy only: no TensorFlow or TFX import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from lade_tf.calibration import DEFAULT_CALIBRATION
from lade_tf.priors import SHIFT_NAMES
from lade_tf.shift_eval import ESTIMATION_ERROR_KEYS, evaluate_under_shift, uniform_summary

UNIFORM_KEYS = ("many", "medium", "few", "ece", "nll")
#: Display name of the model trained with each loss.
LOSS_DISPLAY_NAMES = {
    "ce": "PC Softmax",
    "lade": "LADE",
    "balanced_softmax": "Balanced Softmax",
    "logit_adjusted": "Logit Adjusted",
}
#: How each estimated-prior variant is evaluated: row-name suffix, estimation method, calibration.
ESTIMATED_PRIORS = {
    "em": (" + EM", "em", "none"),
    "calibrated_em": (" + calibrated EM", "em", DEFAULT_CALIBRATION),
    "bbse": (" + BBSE", "bbse", "none"),
}
#: Estimated-prior variants that need the validation split.
NEEDS_VALIDATION = ("calibrated_em", "bbse")


@dataclass(frozen=True)
class Method:
    """One row of the report: a trained model and how its logits meet the target prior.

    Attributes:
        name: row name in the report ("Softmax", "PC Softmax", "LADE + calibrated EM", ...).
        loss: the loss the model was trained with.
        prior: "none" (plain model output), "known" (true p_t), or an estimated p_t: "em"
            (uncalibrated EM), "calibrated_em" (the default calibration on val, then EM) or
            "bbse".
    """

    name: str
    loss: str
    prior: str

    @property
    def estimated(self) -> bool:
        """True for rows whose target prior is estimated."""
        return self.prior in ESTIMATED_PRIORS

    def options(self) -> dict[str, Any]:
        """The `lade_tf.shift_eval` keyword arguments of this row (besides data and tau)."""
        if self.prior == "none":
            return {"corrected": False}
        if self.prior == "known":
            return {}
        _, estimate, calibration = ESTIMATED_PRIORS[self.prior]
        return {"estimate": estimate, "calibration": calibration}


def methods_for(losses: Sequence[str], with_validation: bool = True) -> list[Method]:
    """The report rows for the trained losses, in a stable order (Softmax first).

    Args:
        losses: the trained losses.
        with_validation: include the rows that need the validation split (calibrated EM, BBSE).

    Raises:
        ValueError: for a loss without a display name.
    """
    rows: list[Method] = []
    for loss in losses:
        if loss not in LOSS_DISPLAY_NAMES:
            raise ValueError(f"loss {loss!r}: expected one of {', '.join(LOSS_DISPLAY_NAMES)}")
        name = LOSS_DISPLAY_NAMES[loss]
        if loss == "ce":
            rows.append(Method("Softmax", loss, "none"))
        rows.append(Method(name, loss, "known"))
        for prior, (suffix, _, _) in ESTIMATED_PRIORS.items():
            if with_validation or prior not in NEEDS_VALIDATION:
                rows.append(Method(f"{name}{suffix}", loss, prior))
    return rows


def compute_shift_report(
    logits_by_loss: Mapping[str, np.ndarray],
    labels: np.ndarray,
    train_counts_by_loss: Mapping[str, Sequence[int]],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    val_logits_by_loss: Mapping[str, np.ndarray] | None = None,
    val_labels: np.ndarray | None = None,
    tau_by_loss: Mapping[str, float] | None = None,
) -> dict:
    """The shift report of every trained model, as the report's JSON holds it.

    Args:
        logits_by_loss: raw logits [N, C] of each model on the balanced test split, keyed by the
            loss it was trained with.
        labels: test labels [N].
        train_counts_by_loss: the class counts [C] each model was trained on (its source prior).
        seeds: subsampling seeds of the shifted test sets (at least 3 for a reported std).
        val_logits_by_loss: raw logits [M, C] of each model on the validation split; with
            `val_labels` they add the calibrated-EM and BBSE rows. None: those rows are left out.
        val_labels: validation labels [M].
        tau_by_loss: tau of each model's inference rule (logit-adjusted loss); default 1.0.

    Returns:
        {"distributions": [11 names],
         "methods": {name: {dist: {"mean", "std"} (+ "prior_l1", "prior_js" for estimated
                    priors: L1 and Jensen-Shannon divergence of the estimate to the true p_t)}},
         "uniform": {name: {"many", "medium", "few", "ece", "nll"}}}; accuracies in 0..1, a shot
        group without classes is NaN (written as null in JSON).

    Raises:
        ValueError: if a loss has no train counts (or no val logits while val labels are given),
            or no seeds are given.
    """
    if not seeds:
        raise ValueError("seeds is empty: expected at least one subsampling seed (3 or more)")
    missing = sorted(set(logits_by_loss) - set(train_counts_by_loss))
    if missing:
        raise ValueError(f"no train counts for the models trained with {missing}")
    with_validation = val_labels is not None
    if with_validation:
        missing = sorted(set(logits_by_loss) - set(val_logits_by_loss or {}))
        if missing:
            raise ValueError(
                f"no validation logits for the models trained with {missing}: "
                "expected one [M, C] array per model with val_labels"
            )
    labels = np.asarray(labels, dtype=np.int64)
    taus = dict(tau_by_loss or {})
    report: dict[str, Any] = {"distributions": list(SHIFT_NAMES), "methods": {}, "uniform": {}}
    for method in methods_for(list(logits_by_loss), with_validation):
        logits = np.asarray(logits_by_loss[method.loss], dtype=np.float64)
        counts = [int(n) for n in train_counts_by_loss[method.loss]]
        options = {"tau": float(taus.get(method.loss, 1.0)), **method.options()}
        if method.estimated and with_validation:
            options.update(
                val_logits=np.asarray(val_logits_by_loss[method.loss], np.float64),
                val_labels=np.asarray(val_labels, np.int64),
            )
        by_dist = evaluate_under_shift(
            logits, labels, counts, method.loss, seeds=tuple(seeds), **options
        )
        keys = ("mean", "std") + (ESTIMATION_ERROR_KEYS if method.estimated else ())
        report["methods"][method.name] = {
            name: {key: float(by_dist[name][key]) for key in keys} for name in SHIFT_NAMES
        }
        uniform = uniform_summary(logits, labels, counts, method.loss, **options)
        report["uniform"][method.name] = {key: float(uniform[key]) for key in UNIFORM_KEYS}
    return report


def method_scores(report: Mapping[str, Any], method: str) -> dict[str, float]:
    """The numbers blessing compares for one report row: `mean` (mean accuracy over the 11
    distributions), `uniform` (accuracy on the uniform test set) and `ece` (its ECE).

    Raises:
        ValueError: if the report has no row of that name.
    """
    if method not in report["methods"]:
        raise ValueError(f"method {method!r} not in the report; rows: {list(report['methods'])}")
    by_dist = report["methods"][method]
    return {
        "mean": float(np.mean([by_dist[name]["mean"] for name in report["distributions"]])),
        "uniform": float(by_dist["U"]["mean"]),
        "ece": float(report["uniform"][method]["ece"]),
    }


def baseline_scores(
    logits: np.ndarray,
    labels: np.ndarray,
    metadata: Mapping[str, Any],
    seeds: Sequence[int],
) -> dict[str, Any]:
    """The known-prior scores of the latest blessed model, from its raw logits on the same test
    images and its serving metadata (`lade_tf.export`): the numbers blessing compares, and the
    accuracy per distribution."""
    loss = metadata["train_loss"]
    tau = float(metadata.get("tau") or 1.0)
    counts = metadata["class_counts"]
    by_dist = evaluate_under_shift(logits, labels, counts, loss, seeds=tuple(seeds), tau=tau)
    uniform = uniform_summary(logits, labels, counts, loss, tau=tau)
    means = {name: float(by_dist[name]["mean"]) for name in SHIFT_NAMES}
    return {
        "method": LOSS_DISPLAY_NAMES.get(loss, loss),
        "loss": loss,
        "alpha": metadata.get("alpha"),
        "mean": float(np.mean(list(means.values()))),
        "uniform": means["U"],
        "ece": float(uniform["ece"]),
        "by_distribution": means,
    }
