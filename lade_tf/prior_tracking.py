"""Online label shift: follow a drifting target prior p_t over a stream of unlabeled batches.

Every tracker takes the stream one batch at a time (any size, down to one image) as calibrated
source posteriors q_i = p_r(y|x_i) [n, C] for the reference prior p_r, exactly what
`lade_tf.prior_estimation.TargetPriorEstimator.posteriors(raw_logits)` returns, and
`update(posteriors)` returns the prior to predict the NEXT batch with (batch t is predicted with
the estimate from batches < t, the authors' default `use_current_marginal_estimate=False`);
predictions then use the inference rule f + b + log p_t (`lade_tf.layers.adjust_logits_numpy`).
Before any update `prior` is the training prior p_s, where the authors start.

    HistoryTracker      follow the history: Dirichlet-MAP EM over every image so far (bounded state)
    WindowTracker       MAP-EM over the last W images
    ForgettingTracker   follow the history with exponential forgetting (a half-life in images)
    FLHFTLTracker       FLH-FTL of Baby et al. 2023 on per-batch local estimates
    ROGDTracker         ROGD of Wu et al. 2021 on per-batch local estimates
    UOGDClassifier      UOGD of Baby et al. 2023: adapts the last linear layer, not the prior

Local (per-batch) estimates for the last three: `SoftBBSE` (the authors' default: BBSE with the
soft confusion matrix of the reference data) or `BatchEM` (the library's Dirichlet-MAP EM on the
batch alone). FLH-FTL, ROGD and UOGD follow the authors' code (acmi-lab/OnlineLabelShift,
`utils/model_utils.py`, `utils/label_shift_utils.py`, `utils/misc_utils.py`) operation for
operation; where it departs from the papers the docstrings say so.

Each object's `state()` is plain JSON-safe data (a kind tag and the format version) and
`from_state` / `tracker_from_state` rebuild it so that it continues exactly as the original
would. No global random state: the only randomness (the Lipschitz estimates of the default
learning rates) comes from a seeded `numpy.random.default_rng`. NumPy only: importable without
Keras or TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lade_tf.checks import check_labels, check_non_negative, check_prior, check_probabilities
from lade_tf.label_shift import (
    DEFAULT_PRIOR_STRENGTH,
    EM_MAX_ITERATIONS,
    EM_TOLERANCE,
    check_prior_strength,
    estimate_target_prior,
)

#: Version tag of every `state()` document.
STATE_FORMAT = "lade_tf.prior_tracking/1"
#: Default window of `WindowTracker` and half-life of `ForgettingTracker`, in images. Measured
#: on the streams of `benchmarks/online_prior.py` (Fashion-MNIST-LT, 10 images a step): see the
#: sensitivity table of `benchmarks/results/online_prior.md`.
DEFAULT_WINDOW = 200
DEFAULT_HALF_LIFE = 100.0
#: The authors' ridge of BBSE's normal equations (`lsu.BBSE(lamb=1e-8)`).
BBSE_RIDGE = 1e-8
#: ROGD: the authors' bound on the analytic gradient's norm above which they fall back to
#: central finite differences (step 1e-2, order 3), and their Lipschitz sampling (100 random
#: priors in `run_ols.py`).
ROGD_GRADIENT_LIMIT = 10.0
ROGD_LIPSCHITZ_TRIES = 100
#: UOGD: tries of the Lipschitz sampling of the linear layer's gradient (the authors' 500).
UOGD_LIPSCHITZ_TRIES = 500

_TINY = np.finfo(np.float64).tiny


# --------------------------------------------------------------------------- shared checks


def _posteriors(posteriors: Any, num_classes: int) -> np.ndarray:
    """Checked posteriors [n >= 1, C] with every row renormalised to sum to 1 exactly."""
    probs = check_probabilities(posteriors, num_classes, "posteriors")
    return probs / probs.sum(axis=1, keepdims=True)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r}: expected an integer >= 1")
    return int(value)


def _positive(name: str, value: Any, expected: str) -> float:
    value = check_non_negative(name, value, expected)
    if value <= 0:
        raise ValueError(f"{name} = {value!r}: expected {expected}")
    return value


def _em_options(tol: float, max_iter: int) -> tuple[float, int]:
    tol = _positive("tol", tol, "an EM tolerance > 0")
    return tol, _positive_int("max_iter", max_iter)


def _reference_data(
    posteriors: Any, labels: Any, num_classes: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Checked labelled reference posteriors ([M, C] rows summing to 1, int64 [M]); every class
    must occur."""
    probs = check_probabilities(posteriors, num_classes, f"{what}_posteriors")
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = check_labels(
        labels, probs.shape[1], len(probs), f"{what}_labels", rows_of=f"{what}_posteriors"
    )
    _require_every_class(labels, probs.shape[1], f"{what}_labels")
    return probs, labels


def _require_every_class(labels: np.ndarray, num_classes: int, name: str) -> None:
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(
            f"{name} have no example of class(es) {missing.tolist()}: expected every class in "
            "the reference data"
        )


def _label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes) / labels.size


def _check_state(state: Mapping[str, Any], kind: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"state = {state!r}: expected a mapping from state()")
    if state.get("format") != STATE_FORMAT or state.get("kind") != kind:
        raise ValueError(
            f"state format {state.get('format')!r}, kind {state.get('kind')!r}: expected "
            f"format {STATE_FORMAT!r} and kind {kind!r}"
        )


def _array(values: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if (shape is not None and array.shape != shape) or not np.isfinite(array).all():
        raise ValueError(f"{name} has shape {array.shape}: expected finite values of shape {shape}")
    return array


# --------------------------------------------------------------------------- local estimates


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
        probs, labels = _reference_data(reference_posteriors, reference_labels, None, "reference")
        num_classes = probs.shape[1]
        confusion = probs.T @ np.eye(num_classes)[labels] / len(probs)
        if reference_prior is None:
            reference_prior = _label_distribution(labels, num_classes)
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
        return self.estimate_from_marginal(_posteriors(posteriors, self.num_classes).mean(axis=0))

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
        _check_state(state, cls.kind)
        confusion = _array(state["confusion"], "confusion")
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
        self.tol, self.max_iter = _em_options(tol, max_iter)

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
        _check_state(state, cls.kind)
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


# --------------------------------------------------------------------------- MAP-EM trackers


def running_map_em(
    probs: np.ndarray,
    reference_prior: np.ndarray,
    counts: np.ndarray,
    count: float,
    strength: float,
    centre: np.ndarray,
    tol: float = EM_TOLERANCE,
    max_iter: int = EM_MAX_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Dirichlet-MAP EM over a batch and earlier images whose responsibilities are frozen.

    Formula (batch posteriors q_i [n, C] for p_r; S [C] the frozen responsibilities' sum over
    N earlier images): from pi = p_r, until the largest change is below tol,
        r_i(pi) = q_i * pi / p_r / sum_c (q_i * pi / p_r)(c)
        pi      <- (S + sum_i r_i(pi) + lambda m) / (N + n + lambda)
    With S = 0 and N = 0 this is `estimate_target_prior(q, p_r, prior_strength=lambda,
    prior_centre=m)`, operation for operation.

    Returns:
        (pi [C] normalised, sum_i r_i(pi) [C] at the returned pi).
    """
    pi = reference_prior.copy()
    pseudo_counts = strength * centre
    for _ in range(max_iter):
        weighted = probs * (pi / reference_prior)
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), _TINY)
        new_pi = (counts + weighted.sum(axis=0) + pseudo_counts) / (count + len(probs) + strength)
        change = np.abs(new_pi - pi).max()
        pi = new_pi
        if change < tol:
            break
    pi = pi / pi.sum()
    responsibilities = probs * (pi / reference_prior)
    responsibilities /= np.maximum(responsibilities.sum(axis=1, keepdims=True), _TINY)
    return pi, responsibilities.sum(axis=0)


class _MAPEMTracker:
    """What the three MAP-EM trackers share: p_s, p_r, the Dirichlet prior and EM's options."""

    kind = ""

    def __init__(
        self,
        source_prior: Sequence[float],
        reference_prior: Sequence[float] | None,
        prior_strength: float,
        prior_centre: Sequence[float] | None,
        tol: float,
        max_iter: int,
    ):
        self.source_prior = check_prior(source_prior, "source_prior", zeros=False)
        num_classes = self.source_prior.size
        self.reference_prior = check_prior(
            self.source_prior if reference_prior is None else reference_prior,
            "reference_prior",
            num_classes=num_classes,
            zeros=False,
        )
        self.prior_centre = check_prior(
            self.source_prior if prior_centre is None else prior_centre,
            "prior_centre",
            num_classes=num_classes,
            zeros=False,
        )
        self.prior_strength = check_prior_strength(prior_strength)
        self.tol, self.max_iter = _em_options(tol, max_iter)
        self._prior = self.source_prior.copy()

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @property
    def prior(self) -> np.ndarray:
        """The current estimate [C] (the prior for the next batch); p_s before any update."""
        return self._prior.copy()

    def _options_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "source_prior": self.source_prior.tolist(),
            "reference_prior": self.reference_prior.tolist(),
            "prior_centre": self.prior_centre.tolist(),
            "prior_strength": self.prior_strength,
            "tolerance": self.tol,
            "max_iterations": self.max_iter,
            "prior": self._prior.tolist(),
        }

    @staticmethod
    def _options(state: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            source_prior=state["source_prior"],
            reference_prior=state["reference_prior"],
            prior_strength=state["prior_strength"],
            prior_centre=state["prior_centre"],
            tol=state["tolerance"],
            max_iter=state["max_iterations"],
        )

    def _restore_prior(self, state: Mapping[str, Any]) -> None:
        self._prior = _array(state["prior"], "prior", (self.num_classes,))


class ForgettingTracker(_MAPEMTracker):
    """Follows the history with exponential forgetting: running Dirichlet-MAP EM in which an
    image's weight halves every `half_life` images that arrive after it.

    Formula (batch t of n images, posteriors q_i for p_r; state N, S [C], pi):
        beta = 2^(-1 / half_life);  N <- beta^n N,  S <- beta^n S
        pi   <- (S + sum_i r_i(pi) + lambda m) / (N + n + lambda),  r_i(pi) ∝ q_i * pi / p_r
             (EM from pi = p_r to convergence; earlier images keep the responsibilities
              computed when they arrived, summed in S)
        S    <- S + sum_i r_i(pi),  N <- N + n
    `update` returns pi, the prior for batch t + 1. The state is bounded (N, S, pi), whatever
    the stream's length. half_life = inf is `HistoryTracker`.

    Args:
        source_prior: p_s [C], the training prior: the estimate before any update, and the
            Dirichlet centre by default.
        reference_prior: p_r [C], the prior the posteriors are calibrated for (the validation
            labels' distribution of `TargetPriorEstimator`); default p_s.
        half_life: images after which an image counts half (> 0; inf = never forgets).
        prior_strength: lambda >= 0, the Dirichlet pseudo-count (the served default 10).
        prior_centre: m [C]; default p_s.
        tol, max_iter: EM stopping rule.
    """

    kind = "forgetting"

    def __init__(
        self,
        source_prior: Sequence[float],
        reference_prior: Sequence[float] | None = None,
        *,
        half_life: float = DEFAULT_HALF_LIFE,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
        prior_centre: Sequence[float] | None = None,
        tol: float = EM_TOLERANCE,
        max_iter: int = EM_MAX_ITERATIONS,
    ):
        super().__init__(source_prior, reference_prior, prior_strength, prior_centre, tol, max_iter)
        if isinstance(half_life, bool) or not (
            isinstance(half_life, (int, float, np.number)) and half_life > 0
        ):
            raise ValueError(f"half_life = {half_life!r}: expected a number of images > 0 (or inf)")
        self.half_life = float(half_life)
        self.count = 0.0
        self.counts = np.zeros(self.num_classes)

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        probs = _posteriors(posteriors, self.num_classes)
        decay = 0.5 ** (len(probs) / self.half_life)
        counts, count = self.counts * decay, self.count * decay
        self._prior, responsibilities = running_map_em(
            probs,
            self.reference_prior,
            counts,
            count,
            self.prior_strength,
            self.prior_centre,
            self.tol,
            self.max_iter,
        )
        self.counts, self.count = counts + responsibilities, count + len(probs)
        return self.prior

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the options, N (`count`), S (`counts`) and the estimate."""
        state = self._options_state()
        state.update(half_life=self.half_life, count=self.count, counts=self.counts.tolist())
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ForgettingTracker":
        """The tracker a `state()` document describes, continuing where it stopped."""
        _check_state(state, cls.kind)
        tracker = cls(**cls._options(state), **cls._extra_options(state))
        tracker._restore_prior(state)
        tracker.count = check_non_negative("count", state["count"], "an image count >= 0")
        tracker.counts = _array(state["counts"], "counts", (tracker.num_classes,))
        return tracker

    @staticmethod
    def _extra_options(state: Mapping[str, Any]) -> dict[str, Any]:
        return {"half_life": state["half_life"]}


class HistoryTracker(ForgettingTracker):
    """Follows the history: running Dirichlet-MAP EM over every image so far, with bounded
    state (N, S [C], pi).

    Formula (batch t of n images, posteriors q_i for p_r):
        pi <- (S + sum_i r_i(pi) + lambda m) / (N + n + lambda),  r_i(pi) ∝ q_i * pi / p_r
              (EM from pi = p_r to convergence; earlier images keep the responsibilities
               computed when they arrived)
        S  <- S + sum_i r_i(pi),  N <- N + n
    On the first batch this is `estimate_target_prior(q, p_r, prior_strength=lambda,
    prior_centre=m)`. `ForgettingTracker` with an infinite half-life; arguments as there.
    """

    kind = "history"

    def __init__(
        self,
        source_prior: Sequence[float],
        reference_prior: Sequence[float] | None = None,
        *,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
        prior_centre: Sequence[float] | None = None,
        tol: float = EM_TOLERANCE,
        max_iter: int = EM_MAX_ITERATIONS,
    ):
        super().__init__(
            source_prior,
            reference_prior,
            half_life=math.inf,
            prior_strength=prior_strength,
            prior_centre=prior_centre,
            tol=tol,
            max_iter=max_iter,
        )

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the options, N (`count`), S (`counts`) and the estimate."""
        state = super().state()
        del state["half_life"]
        return state

    @staticmethod
    def _extra_options(state: Mapping[str, Any]) -> dict[str, Any]:
        return {}


class WindowTracker(_MAPEMTracker):
    """Dirichlet-MAP EM over the last `window` images (their posteriors are kept).

    Formula: after each batch, the last W images' posteriors Q [min(W, seen), C] give
        pi = estimate_target_prior(Q, p_r, prior_strength=lambda, prior_centre=m)
    (EM from p_r), the prior for the next batch.

    Args:
        window: W >= 1 images.
        source_prior, reference_prior, prior_strength, prior_centre, tol, max_iter: as
            `ForgettingTracker`.
    """

    kind = "window"

    def __init__(
        self,
        source_prior: Sequence[float],
        reference_prior: Sequence[float] | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        prior_strength: float = DEFAULT_PRIOR_STRENGTH,
        prior_centre: Sequence[float] | None = None,
        tol: float = EM_TOLERANCE,
        max_iter: int = EM_MAX_ITERATIONS,
    ):
        super().__init__(source_prior, reference_prior, prior_strength, prior_centre, tol, max_iter)
        self.window = _positive_int("window", window)
        self.recent = np.zeros((0, self.num_classes))

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        probs = _posteriors(posteriors, self.num_classes)
        self.recent = np.concatenate([self.recent, probs])[-self.window :]
        self._prior = estimate_target_prior(
            self.recent,
            self.reference_prior,
            "em",
            prior_strength=self.prior_strength,
            prior_centre=self.prior_centre,
            tol=self.tol,
            max_iter=self.max_iter,
        )
        return self.prior

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the options, the window's posteriors and the estimate."""
        state = self._options_state()
        state.update(window=self.window, recent=self.recent.tolist())
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "WindowTracker":
        """The tracker a `state()` document describes, continuing where it stopped."""
        _check_state(state, cls.kind)
        tracker = cls(**cls._options(state), window=state["window"])
        tracker._restore_prior(state)
        recent = np.asarray(state["recent"], dtype=np.float64).reshape(-1, tracker.num_classes)
        if len(recent):  # checked, not renormalised: the rows are kept bit for bit
            check_probabilities(recent, tracker.num_classes, "recent")
        tracker.recent = recent
        if len(recent) > tracker.window:
            raise ValueError(f"recent has {len(recent)} rows: expected at most {tracker.window}")
        return tracker


# --------------------------------------------------------------------------- FLH-FTL


class FLHFTLTracker:
    """FLH-FTL (Baby et al. 2023): follow the leading history over follow-the-leader experts,
    as the authors' `FollowLeadingHistoryFollowTheLeaderEstimator`, on per-batch local
    estimates e_t (`SoftBBSE` or `BatchEM`).

    Formula (the authors' code, step t = 0, 1, ... with local estimate e_t; before the step the
    history is e_0 .. e_{t-1}, expert i = mean(e_{t-1-i} .. e_{t-1}) for i < t, the mean of
    the last i + 1 estimates, with weight c_i; alpha the meta learning rate, default 1 / C):
        hat_t = sum_i c_i expert_i                            (t > 0; hat_0 = p_s)
        c_i  <- c_i exp(-alpha ||expert_i - e_t||^2)          for i < t - 1 (the newest
                                                               weight is not decayed)
        c    <- [c t / (t + 1) / sum(c), 1 / (t + 1)]         (t > 0; c = [1] at t = 0)
    With `authors_delay` (default), `update(batch t)` returns hat_t, the weighting of experts
    that had seen e_0 .. e_{t-1}: the authors compute it at the start of step t and return it
    at step t + 1 (`use_current_marginal_estimate=False`), so batch t + 1 is predicted without
    e_t, two steps after its newest evidence. `authors_delay=False` returns hat_{t+1} = sum_i
    c_i expert_i over e_0 .. e_t at once, the paper's prediction one step earlier.

    The experts of the code are sliding windows (expert i always averages the latest i + 1
    estimates), and the state (all estimates, one weight per step) grows with the stream.
    `max_experts=K` bounds it for long-lived streams, departing from the authors once K
    estimates are held: then only the last K estimates are kept (experts = windows of 1..K),
    every weight decays (none is new) and no weight is added: exponential weights over K
    sliding windows.

    Args:
        local_estimator: `SoftBBSE` or `BatchEM`, the per-batch estimate e_t.
        source_prior: p_s [C], the estimate before any evidence (the authors'
            `source_train_marginals`).
        meta_lr: alpha > 0; default 1 / C (the authors').
        max_experts: None (the authors' unbounded algorithm) or K >= 2.
        authors_delay: True (the authors') or False (one step less delay), see above.
    """

    kind = "flh_ftl"

    def __init__(
        self,
        local_estimator: LocalEstimator,
        source_prior: Sequence[float],
        *,
        meta_lr: float | None = None,
        max_experts: int | None = None,
        authors_delay: bool = True,
    ):
        self.local_estimator = local_estimator
        self.source_prior = check_prior(
            source_prior, "source_prior", num_classes=local_estimator.num_classes
        )
        num_classes = self.source_prior.size
        self.meta_lr = (
            1.0 / num_classes
            if meta_lr is None
            else _positive("meta_lr", meta_lr, "a learning rate > 0")
        )
        if max_experts is not None:
            max_experts = _positive_int("max_experts", max_experts)
            if max_experts < 2:
                raise ValueError(f"max_experts = {max_experts}: expected None or at least 2")
        self.max_experts = max_experts
        self.authors_delay = bool(authors_delay)
        self.history = np.zeros((0, num_classes))
        self.weights = np.zeros(0)
        self._prior = self.source_prior.copy()

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @property
    def prior(self) -> np.ndarray:
        """The current estimate [C] (the prior for the next batch); p_s before any update."""
        return self._prior.copy()

    @staticmethod
    def experts(history: np.ndarray) -> np.ndarray:
        """Expert i = mean of the last i + 1 local estimates, [len(history), C]."""
        tail_sums = np.cumsum(history[::-1], axis=0)
        return tail_sums / np.arange(1, len(history) + 1)[:, None]

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        local = self.local_estimator.estimate(posteriors)
        steps = len(self.history)
        experts = self.experts(self.history)
        if steps > 0:
            combined = experts.T @ self.weights
        capped = self.max_experts is not None and steps >= self.max_experts
        weights = self.weights.copy()
        decayed = steps if capped else max(steps - 1, 0)
        losses = np.linalg.norm(experts[:decayed] - local, axis=1) ** 2
        weights[:decayed] *= np.exp(-self.meta_lr * losses)
        if capped:
            weights = weights / np.sum(weights)
            history = np.concatenate([self.history[1:], local[None]])
        else:
            if steps > 0:
                weights = weights / np.sum(weights)
                weights = weights * steps / (steps + 1)
                weights = np.append(weights, 1 / (steps + 1))
            else:
                weights = np.ones(1)
            history = np.concatenate([self.history, local[None]])
        self.history, self.weights = history, weights
        if not self.authors_delay:
            self._prior = self.experts(history).T @ weights
        elif steps > 0:
            self._prior = combined
        return self.prior

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the options, the local estimates, the expert weights, the estimate
        and the local estimator's state."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "source_prior": self.source_prior.tolist(),
            "meta_lr": self.meta_lr,
            "max_experts": self.max_experts,
            "authors_delay": self.authors_delay,
            "history": self.history.tolist(),
            "weights": self.weights.tolist(),
            "prior": self._prior.tolist(),
            "local_estimator": self.local_estimator.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FLHFTLTracker":
        """The tracker a `state()` document describes, continuing where it stopped."""
        _check_state(state, cls.kind)
        tracker = cls(
            local_estimator_from_state(state["local_estimator"]),
            state["source_prior"],
            meta_lr=state["meta_lr"],
            max_experts=state["max_experts"],
            authors_delay=state["authors_delay"],
        )
        history = np.asarray(state["history"], dtype=np.float64).reshape(-1, tracker.num_classes)
        tracker.history = _array(history, "history", history.shape)
        tracker.weights = _array(state["weights"], "weights", (len(history),))
        tracker._prior = _array(state["prior"], "prior", (tracker.num_classes,))
        return tracker


# --------------------------------------------------------------------------- ROGD


def project_to_simplex(vector: Any) -> np.ndarray:
    """Euclidean projection onto the probability simplex (the authors' `proj_to_probsimplex`,
    Chen and Ye 2011).

    Formula: u = v sorted decreasingly, rho = the largest j (from 1) with
    u_j + (1 - sum_{k<=j} u_k) / j > 0, theta = (1 - sum_{k<=rho} u_k) / rho,
    result = max(v + theta, 0).
    """
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
        raise ValueError(f"vector has shape {vector.shape}: expected a finite 1-D vector")
    ordered = np.sort(vector)[::-1]
    sizes = np.arange(1, vector.size + 1)
    rho = int(np.flatnonzero(ordered + (1 - np.cumsum(ordered)) / sizes > 0)[-1])
    theta = 1 / (rho + 1) * (1 - np.sum(ordered[: rho + 1]))
    return np.maximum(vector + theta, 0.0)


def finite_gradient(
    function: Callable[[np.ndarray], Any], x0: np.ndarray, delta: float, order: int
) -> np.ndarray:
    """Central finite-difference gradient of order `order` (the authors' `finite_gradient`):
    g_i = sum_{j=1..k} (f(x + j delta e_i) - f(x - j delta e_i)) alpha_j / (2 delta j),
    alpha_j = 2 (-1)^(j+1) C(k, k-j) / C(k+j, k).

    Returns:
        [n] for a scalar f of x0 [n]; [n, *shape] (the Jacobian, row i = d f / d x_i) for an
        array-valued f.
    """
    rows = []
    for i in range(x0.shape[0]):
        step = np.zeros(x0.shape[0])
        step[i] = 1
        grad: Any = 0.0
        for j in range(1, order + 1):
            difference = function(x0 + j * delta * step) - function(x0 - j * delta * step)
            alpha = 2 * (-1) ** (j + 1) * math.comb(order, order - j) / math.comb(order + j, order)
            grad = grad + difference * alpha / (2 * delta * j)
        rows.append(grad)
    return np.asarray(rows, dtype=np.float64)


class ROGDTracker:
    """ROGD (Wu et al. 2021): online projected gradient descent on the prior, as the authors'
    `RegularOnlineGradientEstimator` with the smooth loss (the default), on per-batch local
    estimates e_t.

    Formula (reference data: calibrated posteriors P [M, C] for p_r, labels y; a = P / p_r):
        w_k(p)  = a_k * p / sum_c a_kc p_c                (reweighted reference posteriors)
        D_j(p)  = (1 / M) sum_{k: y_k = j} w_kj(p)        (diagonal of the joint soft
                                                           confusion matrix)
        L(p; e) = sum_j e_j (1 - D_j(p))
        p_{t+1} = Proj_simplex(p_t - lr grad_p L(p_t; e_t)),  p_0 = p_s
    grad_p L is the analytic derivative of the authors' code (a column j with p_j < 1e-7
    contributes nothing); when its norm exceeds 10 the authors' central finite differences
    (step 1e-2, order 3) replace it. The authors' smooth loss weights the reference
    posteriors by p alone, which is this formula when the reference labels are balanced (as in
    this project); dividing by p_r keeps it the reweighting the predictions use otherwise.
    `update(batch t)` returns p_{t+1}, the prior for batch t + 1.

    Learning rate: `lr`, or the authors' sqrt(2 / T) / L for a stream of T = `total_steps`
    batches with the Lipschitz constant L given or estimated as theirs (`rogd_lipschitz`).

    Args:
        local_estimator: `SoftBBSE` or `BatchEM`, the per-batch estimate e_t.
        source_prior: p_s [C], the starting estimate.
        reference_posteriors: calibrated posteriors [M, C] of the labelled reference
            (validation) images, for p_r.
        reference_labels: their labels [M]; every class must occur.
        lr: the learning rate; None for the authors' default (needs total_steps).
        total_steps: T, the stream's length in batches (for the default lr).
        lipschitz: L for the default lr; None estimates it (`rogd_lipschitz`).
        lipschitz_tries, seed: the estimate's random priors and their generator's seed.
    """

    kind = "rogd"

    def __init__(
        self,
        local_estimator: LocalEstimator,
        source_prior: Sequence[float],
        reference_posteriors: Any,
        reference_labels: Any,
        *,
        lr: float | None = None,
        total_steps: int | None = None,
        lipschitz: float | None = None,
        lipschitz_tries: int = ROGD_LIPSCHITZ_TRIES,
        seed: int = 0,
    ):
        self.local_estimator = local_estimator
        num_classes = local_estimator.num_classes
        self.source_prior = check_prior(source_prior, "source_prior", num_classes=num_classes)
        self.reference_posteriors, self.reference_labels = _reference_data(
            reference_posteriors, reference_labels, num_classes, "reference"
        )
        if lr is None:
            if total_steps is None:
                raise ValueError(
                    "lr = None and total_steps = None: give a learning rate, or the stream's "
                    "length in batches for the authors' default sqrt(2 / T) / L"
                )
            total_steps = _positive_int("total_steps", total_steps)
            if lipschitz is None:
                lipschitz = self.lipschitz(lipschitz_tries, seed)
            lipschitz = _positive("lipschitz", lipschitz, "a Lipschitz constant > 0")
            lr = (2 / total_steps) ** (1 / 2) / lipschitz
        self.lr = _positive("lr", lr, "a learning rate > 0")
        self._prior = self.source_prior.copy()

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @property
    def prior(self) -> np.ndarray:
        """The current estimate [C] (the prior for the next batch); p_s before any update."""
        return self._prior.copy()

    @property
    def _scaled_posteriors(self) -> np.ndarray:
        """a = P / p_r with p_r the reference labels' distribution."""
        return self.reference_posteriors / _label_distribution(
            self.reference_labels, self.num_classes
        )

    def smooth_loss(self, prior: np.ndarray, local: np.ndarray) -> float:
        """L(p; e) = sum_j e_j (1 - D_j(p)) (the authors' `get_smooth_loss`)."""
        weighted = self._scaled_posteriors * prior
        weighted = weighted / weighted.sum(axis=1)[:, np.newaxis]
        labels = self.reference_labels
        diagonal = np.bincount(labels, weighted[np.arange(labels.size), labels], self.num_classes)
        return float((1 - diagonal / labels.size) @ local)

    def smooth_gradient(self, prior: np.ndarray, local: np.ndarray) -> np.ndarray:
        """grad_p L(p; e), analytic (the authors' `get_analytical_smooth_grad`, vectorised).

        Formula (S_k = sum_c a_kc p_c): dD_j/dp_i = (1 / M) sum_{k: y_k = j}
        (delta_ij a_ki / S_k - a_ki a_kj p_j / S_k^2), set to 0 for p_j < 1e-7; grad = -G e.
        """
        scaled, labels = self._scaled_posteriors, self.reference_labels
        totals = (scaled * prior).sum(axis=1)
        own = scaled[np.arange(labels.size), labels]
        onehot = np.eye(self.num_classes)[labels]
        derivative = -(scaled * (own * prior[labels] / totals**2)[:, None]).T @ onehot
        derivative += np.diag(onehot.T @ (own / totals))
        derivative /= labels.size
        derivative[:, prior < 1e-7] = 0.0
        return -derivative @ local

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        local = self.local_estimator.estimate(posteriors)
        grad = self.smooth_gradient(self._prior, local)
        if np.linalg.norm(grad) > ROGD_GRADIENT_LIMIT:
            grad = finite_gradient(
                lambda p: self.smooth_loss(p, local), self._prior, delta=1e-2, order=3
            )
        self._prior = project_to_simplex(self._prior - self.lr * grad)
        return self.prior

    def lipschitz(self, tries: int = ROGD_LIPSCHITZ_TRIES, seed: int = 0) -> float:
        """The authors' Lipschitz estimate (`estimate_lipschitz`), seeded.

        Formula: the largest ||grad_p L01(p; e)|| over `tries` random priors p (normalised
        exponential draws: uniform on the simplex) and, for each, the local estimates e = BBSE
        of every one-hot predicted marginal; L01 is the 0-1 version of L (D_j = the joint
        confusion's diagonal of argmax_c a_kc p_c) and its gradient the central finite
        differences of `finite_gradient` (step 1e-2, order 3). The BBSE is the local
        estimator when it is a `SoftBBSE`, else one on the reference data.
        """
        tries = _positive_int("lipschitz_tries", tries)
        bbse = (
            self.local_estimator
            if isinstance(self.local_estimator, SoftBBSE)
            else SoftBBSE(self.reference_posteriors, self.reference_labels)
        )
        locals_ = np.stack([bbse.estimate_from_marginal(e) for e in np.eye(self.num_classes)])
        scaled, labels = self._scaled_posteriors, self.reference_labels

        def missed(p: np.ndarray) -> np.ndarray:
            """1 - D(p) [C] of the 0-1 rule; L01(p; e) = missed(p) @ e is linear in e."""
            predicted = np.argmax(scaled * p, axis=-1)
            hits = np.bincount(labels[predicted == labels], minlength=self.num_classes)
            return 1 - hits / labels.size

        rng = np.random.default_rng(seed)
        largest = -1.0
        for _ in range(tries):
            exponential = rng.exponential(scale=1.0, size=self.num_classes)
            prior = exponential / sum(exponential)
            jacobian = finite_gradient(missed, prior, delta=1e-2, order=3)
            largest = max(largest, float(np.linalg.norm(jacobian @ locals_.T, axis=0).max()))
        return largest

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the learning rate, the reference data, the estimate and the local
        estimator's state."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "source_prior": self.source_prior.tolist(),
            "lr": self.lr,
            "reference_posteriors": self.reference_posteriors.tolist(),
            "reference_labels": self.reference_labels.tolist(),
            "prior": self._prior.tolist(),
            "local_estimator": self.local_estimator.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "ROGDTracker":
        """The tracker a `state()` document describes, continuing where it stopped."""
        _check_state(state, cls.kind)
        tracker = cls(
            local_estimator_from_state(state["local_estimator"]),
            state["source_prior"],
            state["reference_posteriors"],
            state["reference_labels"],
            lr=state["lr"],
        )
        # As stored, not renormalised once more: the continuation is exact.
        tracker.reference_posteriors = _array(
            state["reference_posteriors"],
            "reference_posteriors",
            tracker.reference_posteriors.shape,
        )
        tracker._prior = _array(state["prior"], "prior", (tracker.num_classes,))
        return tracker


# --------------------------------------------------------------------------- UOGD


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class UOGDClassifier:
    """UOGD (Baby et al. 2023), as the authors' `UnbiasedOnlineGradientDescentClassifier`: it
    adapts the classifier's last linear layer, NOT the prior, so it cannot be served through a
    prior input; its predictions are `logits(features)`.

    Formula (kernel W [d, C] and frozen bias b of the last Dense layer; reference (validation)
    features X [M, d] and labels y; local estimate e_t of batch t from the fixed base model's
    calibrated posteriors):
        v       = e_t / p_w                                   (class weights; p_w = p_r)
        L(W)    = sum_k v_{y_k} CE(x_k W + b, y_k) / sum_k v_{y_k}
                  (torch CrossEntropyLoss(weight=v), mean reduction)
        grad    = X^T ((softmax(X W + b) - onehot(y)) * v_y) / sum_k v_{y_k}
        W      <- W - lr grad;   W <- W ||W_0||_F / ||W||_F   (back to the initial norm)
    `update(batch t)` returns W for batch t + 1 (batch t is predicted before its update).
    The authors divide by their training prior, which is their reference split's label
    distribution; here p_w defaults to the reference labels' distribution (pass p_s as
    `weight_prior` to reproduce them literally where they differ).

    Learning rate: `lr`, or the authors' 2 ||W_0||_F / (L sqrt(T)) for T = `total_steps` with
    the Lipschitz constant L given or estimated (`uogd_lipschitz`).

    Args:
        local_estimator: `SoftBBSE` or `BatchEM`, the per-batch estimate e_t.
        kernel: W_0 [d, C] (Keras Dense layout: logits = features @ kernel + bias).
        bias: b [C], frozen (the authors' `linear.bias` has requires_grad False).
        reference_features: X [M, d], the penultimate features of the reference images.
        reference_labels: y [M]; every class must occur.
        weight_prior: p_w [C]; default the reference labels' distribution.
        lr, total_steps, lipschitz, lipschitz_tries, seed: the learning rate, as above.
        initial_norm: ||W_0||_F, the norm every step projects back to; default the kernel's
            (`from_state` passes the original's).
    """

    kind = "uogd"

    def __init__(
        self,
        local_estimator: LocalEstimator,
        kernel: Any,
        bias: Any,
        reference_features: Any,
        reference_labels: Any,
        *,
        weight_prior: Sequence[float] | None = None,
        lr: float | None = None,
        total_steps: int | None = None,
        lipschitz: float | None = None,
        lipschitz_tries: int = UOGD_LIPSCHITZ_TRIES,
        seed: int = 0,
        initial_norm: float | None = None,
    ):
        self.local_estimator = local_estimator
        num_classes = local_estimator.num_classes
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 2 or kernel.shape[1] != num_classes or not np.isfinite(kernel).all():
            raise ValueError(
                f"kernel has shape {kernel.shape}: expected finite [d, {num_classes}] "
                "(Keras Dense layout)"
            )
        self.kernel = kernel.copy()
        self.bias = _array(bias, "bias", (num_classes,))
        features = _array(reference_features, "reference_features")
        if features.ndim != 2 or features.shape[1] != kernel.shape[0] or not len(features):
            raise ValueError(
                f"reference_features has shape {features.shape}: expected [M >= 1, "
                f"{kernel.shape[0]}] (one feature row per reference image)"
            )
        self.reference_features = features
        self.reference_labels = check_labels(
            reference_labels,
            num_classes,
            len(features),
            "reference_labels",
            rows_of="reference_features",
        )
        _require_every_class(self.reference_labels, num_classes, "reference_labels")
        self.weight_prior = check_prior(
            _label_distribution(self.reference_labels, num_classes)
            if weight_prior is None
            else weight_prior,
            "weight_prior",
            num_classes=num_classes,
            zeros=False,
        )
        self.initial_norm = (
            float(np.linalg.norm(kernel))
            if initial_norm is None
            else _positive("initial_norm", initial_norm, "a norm > 0")
        )
        if lr is None:
            if total_steps is None:
                raise ValueError(
                    "lr = None and total_steps = None: give a learning rate, or the stream's "
                    "length in batches for the authors' default 2 ||W|| / (L sqrt(T))"
                )
            total_steps = _positive_int("total_steps", total_steps)
            if lipschitz is None:
                lipschitz = uogd_lipschitz(
                    kernel, self.bias, features, tries=lipschitz_tries, seed=seed
                )
            lipschitz = _positive("lipschitz", lipschitz, "a Lipschitz constant > 0")
            lr = 2 * self.initial_norm / lipschitz / (total_steps ** (1 / 2))
        self.lr = _positive("lr", lr, "a learning rate > 0")

    @property
    def num_classes(self) -> int:
        """C."""
        return self.bias.size

    def logits(self, features: Any) -> np.ndarray:
        """The adapted classifier's logits features @ W + b, float64 [N, C]."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.kernel.shape[0]:
            raise ValueError(
                f"features have shape {features.shape}: expected [N, {self.kernel.shape[0]}]"
            )
        return features @ self.kernel + self.bias

    def loss_and_gradient(self, local: np.ndarray) -> tuple[float, np.ndarray]:
        """The weighted cross-entropy L(W) on the reference data and its gradient [d, C]."""
        labels = self.reference_labels
        class_weights = local / self.weight_prior
        weights = class_weights[labels]
        logits = self.logits(self.reference_features)
        probs = _softmax(logits)
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        total = weights.sum()
        loss = float(-(weights * log_probs[np.arange(labels.size), labels]).sum() / total)
        residual = probs - np.eye(self.num_classes)[labels]
        return loss, self.reference_features.T @ (residual * weights[:, None]) / total

    def update(self, posteriors: Any) -> np.ndarray:
        """One step on one batch of calibrated posteriors [n >= 1, C] (the base model's);
        returns the kernel W [d, C] for the next batch."""
        local = self.local_estimator.estimate(posteriors)
        _, grad = self.loss_and_gradient(local)
        kernel = self.kernel - self.lr * grad
        self.kernel = kernel / np.linalg.norm(kernel) * self.initial_norm
        return self.kernel.copy()

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the kernel, bias, norm, learning rate, reference data and the local
        estimator's state."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "kernel": self.kernel.tolist(),
            "bias": self.bias.tolist(),
            "initial_norm": self.initial_norm,
            "lr": self.lr,
            "weight_prior": self.weight_prior.tolist(),
            "reference_features": self.reference_features.tolist(),
            "reference_labels": self.reference_labels.tolist(),
            "local_estimator": self.local_estimator.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "UOGDClassifier":
        """The classifier a `state()` document describes, continuing where it stopped."""
        _check_state(state, cls.kind)
        return cls(
            local_estimator_from_state(state["local_estimator"]),
            state["kernel"],
            state["bias"],
            state["reference_features"],
            state["reference_labels"],
            weight_prior=state["weight_prior"],
            lr=state["lr"],
            initial_norm=state["initial_norm"],
        )


def uogd_lipschitz(
    kernel: Any,
    bias: Any,
    reference_features: Any,
    *,
    tries: int = UOGD_LIPSCHITZ_TRIES,
    seed: int = 0,
) -> float:
    """A sampled Lipschitz constant of the cross-entropy in the last layer's kernel, seeded
    (after the authors' `sample_linear_weight_lipschitz`).

    Formula: the largest ||d CE(x W + b, y) / dW||_F = ||x|| ||softmax(x W + b) - onehot(y)||
    over `tries` draws of a kernel W (a Gaussian direction scaled to U(0, 1) ||W_0||_F), a
    reference feature row x and a label y (uniform). The authors push Gaussian-noise inputs
    through their feature extractor; a features-only object draws reference features instead.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    features = np.asarray(reference_features, dtype=np.float64)
    tries = _positive_int("tries", tries)
    rng = np.random.default_rng(seed)
    norm = np.linalg.norm(kernel)
    largest = -1.0
    for _ in range(tries):
        direction = rng.standard_normal(kernel.shape)
        weight = direction / np.linalg.norm(direction) * (rng.random() * norm)
        row = features[rng.integers(len(features))]
        label = rng.integers(kernel.shape[1])
        residual = _softmax((row @ weight + bias)[None])[0]
        residual[label] -= 1.0
        largest = max(largest, float(np.linalg.norm(row) * np.linalg.norm(residual)))
    return largest


# --------------------------------------------------------------------------- all trackers

Tracker = HistoryTracker | WindowTracker | ForgettingTracker | FLHFTLTracker | ROGDTracker
TRACKERS = {
    cls.kind: cls
    for cls in (
        HistoryTracker,
        WindowTracker,
        ForgettingTracker,
        FLHFTLTracker,
        ROGDTracker,
        UOGDClassifier,
    )
}


def tracker_from_state(state: Mapping[str, Any]) -> Tracker | UOGDClassifier:
    """The tracker (or UOGD classifier) a `state()` document describes, whatever its kind."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind not in TRACKERS:
        raise ValueError(f"tracker kind {kind!r}: expected one of {tuple(TRACKERS)}")
    return TRACKERS[kind].from_state(state)


def follow(tracker: Tracker, batches: Iterable[Any]) -> np.ndarray:
    """The prior each batch is predicted with, [T, C]: row t is `tracker.prior` before batch t
    is added (the estimate from batches < t); the tracker is updated with every batch."""
    priors = []
    for batch in batches:
        priors.append(tracker.prior)
        tracker.update(batch)
    return np.asarray(priors)
