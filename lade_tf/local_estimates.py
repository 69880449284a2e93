"""Per-batch ("local") estimates of the target prior, the input of FLH-FTL, ROGD and UOGD
(`lade_tf.prior_tracking`): soft BBSE, the authors' default (acmi-lab/OnlineLabelShift: BBSE with
the soft confusion matrix of the reference data), and the library's Dirichlet-MAP EM on the batch
alone. NumPy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lade_tf.checks import check_non_negative, check_prior, check_probabilities
from lade_tf.label_shift import (
    DEFAULT_PRIOR_STRENGTH,
    EM_MAX_ITERATIONS,
    EM_TOLERANCE,
    check_prior_strength,
    estimate_target_prior,
)
from lade_tf.tracking_checks import (
    STATE_FORMAT,
    check_state,
    checked_posteriors,
    em_options,
    label_distribution,
    reference_data,
    state_array,
)

#: The local estimator of `make_local_estimator`: soft BBSE measured better than MAP-EM as the
#: per-batch estimate of FLH-FTL on every model of benchmarks/online_prior.py.
DEFAULT_LOCAL_ESTIMATOR = "soft_bbse"
#: The authors' ridge of BBSE's normal equations (`lsu.BBSE(lamb=1e-8)`).
BBSE_RIDGE = 1e-8


class SoftBBSE:
    """Per-batch prior by BBSE with the soft confusion matrix (the authors' default local
    estimator: `BlackBoxShiftEstimator` with `get_soft_confusion_matrix`).

    Formula (reference data: posteriors P [M, C], labels y [M]; batch posteriors q [n, C]):
        A[i, j] = (1 / M) sum_{k: y_k = j} P[k, i]       (joint soft confusion, C x C)
        mu      = (1 / n) sum_i q_i                       (the batch's mean posterior)
        w       = (A^T A + ridge I)^-1 A^T mu,  w <- max(w, 0)
        p_t     = w * p_r / sum(w * p_r)
    A w = mu holds with w = p_t / p_r under label shift, p_r the reference labels' distribution.
    The authors multiply by their training prior, which is their reference split's label
    distribution; pass `reference_prior=p_s` to reproduce that literally when they differ.

    Args:
        reference_posteriors: calibrated posteriors [M, C] of labelled reference (validation)
            images, for the same reference prior as the stream's posteriors.
        reference_labels: their labels [M]; every class must occur.
        reference_prior: the prior w multiplies; default the labels' distribution.
        ridge: the authors' ridge lambda (1e-8).
    """

    kind = "soft_bbse"

    def __init__(
        self,
        reference_posteriors: Any,
        reference_labels: Any,
        *,
        reference_prior: Sequence[float] | None = None,
        ridge: float = BBSE_RIDGE,
    ):
        probs, labels = reference_data(reference_posteriors, reference_labels, None, "reference")
        num_classes = probs.shape[1]
        confusion = probs.T @ np.eye(num_classes)[labels] / len(probs)
        if reference_prior is None:
            reference_prior = label_distribution(labels, num_classes)
        self._set(confusion, reference_prior, ridge)

    def _set(self, confusion: np.ndarray, reference_prior: Any, ridge: float) -> None:
        self.confusion = confusion
        self.reference_prior = check_prior(
            reference_prior, "reference_prior", num_classes=confusion.shape[0]
        )
        self.ridge = check_non_negative("ridge", ridge, "a ridge >= 0")

    @property
    def num_classes(self) -> int:
        """C."""
        return self.confusion.shape[0]

    def estimate(self, posteriors: Any) -> np.ndarray:
        """p_t [C] of one batch of calibrated posteriors [n >= 1, C]."""
        return self.estimate_from_marginal(
            checked_posteriors(posteriors, self.num_classes).mean(axis=0)
        )

    def estimate_from_marginal(self, mean_posterior: np.ndarray) -> np.ndarray:
        """p_t [C] for a predicted-label marginal mu [C] (the authors' `lsu.BBSE`)."""
        confusion = self.confusion
        weights = np.linalg.solve(
            confusion.T @ confusion + self.ridge * np.eye(self.num_classes),
            confusion.T @ mean_posterior,
        )
        weights[weights < 0.0] = 0.0
        estimate = weights * self.reference_prior
        total = estimate.sum()
        # Only a degenerate confusion matrix clips every weight; the reference prior is then
        # the one estimate with any support.
        return estimate / total if total > 0 else self.reference_prior.copy()

    def state(self) -> dict[str, Any]:
        """JSON-safe description (the confusion matrix, the prior w multiplies, the ridge)."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "confusion": self.confusion.tolist(),
            "reference_prior": self.reference_prior.tolist(),
            "ridge": self.ridge,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "SoftBBSE":
        """The estimator a `state()` document describes."""
        check_state(state, cls.kind)
        confusion = state_array(state["confusion"], "confusion")
        if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
            raise ValueError(f"confusion has shape {confusion.shape}: expected [C, C]")
        estimator = cls.__new__(cls)
        estimator._set(confusion, state["reference_prior"], state["ridge"])
        return estimator


class BatchEM:
    """Per-batch prior by the library's Dirichlet-MAP EM on the batch alone
    (`lade_tf.label_shift.estimate_target_prior`, what the served `estimate_prior` runs).

    Formula: pi <- (sum_i r_i(pi) + lambda m) / (n + lambda), r_i(pi) ∝ q_i * pi / p_r, from
    pi = p_r until the largest change is below tol.

    Args:
        reference_prior: p_r [C], the prior the posteriors are calibrated for.
        prior_strength: lambda >= 0, the Dirichlet pseudo-count (0 = plain EM).
        prior_centre: m [C], the Dirichlet prior's mean; default `reference_prior` (pass p_s as
            `TargetPriorEstimator` does).
        tol, max_iter: EM stopping rule.
    """

    kind = "batch_em"

    def __init__(
        self,
        reference_prior: Sequence[float],
        *,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
        prior_centre: Sequence[float] | None = None,
        tol: float = EM_TOLERANCE,
        max_iter: int = EM_MAX_ITERATIONS,
    ):
        self.reference_prior = check_prior(reference_prior, "reference_prior", zeros=False)
        self.prior_centre = check_prior(
            self.reference_prior if prior_centre is None else prior_centre,
            "prior_centre",
            num_classes=self.num_classes,
            zeros=False,
        )
        self.prior_strength = check_prior_strength(prior_strength)
        self.tol, self.max_iter = em_options(tol, max_iter)

    @property
    def num_classes(self) -> int:
        """C."""
        return self.reference_prior.size

    def estimate(self, posteriors: Any) -> np.ndarray:
        """p_t [C] of one batch of calibrated posteriors [n >= 1, C]."""
        return estimate_target_prior(  # which renormalises the rows itself
            check_probabilities(posteriors, self.num_classes, "posteriors"),
            self.reference_prior,
            "em",
            prior_strength=self.prior_strength,
            prior_centre=self.prior_centre,
            tol=self.tol,
            max_iter=self.max_iter,
        )

    def state(self) -> dict[str, Any]:
        """JSON-safe description of the options."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "reference_prior": self.reference_prior.tolist(),
            "prior_centre": self.prior_centre.tolist(),
            "prior_strength": self.prior_strength,
            "tolerance": self.tol,
            "max_iterations": self.max_iter,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "BatchEM":
        """The estimator a `state()` document describes."""
        check_state(state, cls.kind)
        return cls(
            state["reference_prior"],
            prior_strength=state["prior_strength"],
            prior_centre=state["prior_centre"],
            tol=state["tolerance"],
            max_iter=state["max_iterations"],
        )


LocalEstimator = SoftBBSE | BatchEM
LOCAL_ESTIMATORS = {"soft_bbse": SoftBBSE, "batch_em": BatchEM}


def local_estimator_from_state(state: Mapping[str, Any]) -> LocalEstimator:
    """The local estimator a `SoftBBSE.state()` or `BatchEM.state()` document describes."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind not in LOCAL_ESTIMATORS:
        raise ValueError(
            f"local estimator kind {kind!r}: expected one of {tuple(LOCAL_ESTIMATORS)}"
        )
    return LOCAL_ESTIMATORS[kind].from_state(state)


def make_local_estimator(
    reference_posteriors: Any,
    reference_labels: Any,
    source_prior: Sequence[float],
    kind: str = DEFAULT_LOCAL_ESTIMATOR,
    *,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> LocalEstimator:
    """The local estimator of one kind from the labelled reference data.

    Args:
        reference_posteriors: calibrated posteriors [M, C] of the reference (validation)
            images, for the prior p_r the stream's posteriors are calibrated for.
        reference_labels: their labels [M]; every class must occur (p_r = their distribution).
        source_prior: p_s [C], the centre of `BatchEM`'s Dirichlet prior.
        kind: "soft_bbse" (the default: as a local estimate it is unbiased, where MAP-EM's pull
            toward p_s biases every average of local estimates; see
            benchmarks/results/online_prior.md) or "batch_em".
        prior_strength: `BatchEM`'s lambda.
    """
    if kind == "soft_bbse":
        return SoftBBSE(reference_posteriors, reference_labels)
    if kind == "batch_em":
        probs, labels = reference_data(reference_posteriors, reference_labels, None, "reference")
        return BatchEM(
            label_distribution(labels, probs.shape[1]),
            prior_strength=prior_strength,
            prior_centre=source_prior,
        )
    raise ValueError(f"kind = {kind!r}: expected one of {tuple(LOCAL_ESTIMATORS)}")
