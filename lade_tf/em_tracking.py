"""Running Dirichlet-MAP EM over a stream of unlabeled batches: follow the history (bounded
state), a fixed window of images, and exponential forgetting; and `prior_for_batch`, the prior
for a batch from a tracker's estimate and the batch's own images. NumPy only."""

from __future__ import annotations

import math
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
    TINY,
    HeldPrior,
    check_state,
    checked_posteriors,
    em_options,
    positive_int,
    state_array,
)

#: Default window of `WindowTracker` and half-life of `ForgettingTracker`, in images (the
#: sensitivity table of benchmarks/results/online_prior.md: half-lives of 50 to 200 images are
#: within 0.3 points of each other).
DEFAULT_WINDOW = 200
DEFAULT_HALF_LIFE = 100.0
#: Smallest entry of a tracked prior used as the centre of `prior_for_batch`'s Dirichlet prior.
CENTRE_FLOOR = 1e-6


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
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), TINY)
        new_pi = (counts + weighted.sum(axis=0) + pseudo_counts) / (count + len(probs) + strength)
        change = np.abs(new_pi - pi).max()
        pi = new_pi
        if change < tol:
            break
    pi = pi / pi.sum()
    responsibilities = probs * (pi / reference_prior)
    responsibilities /= np.maximum(responsibilities.sum(axis=1, keepdims=True), TINY)
    return pi, responsibilities.sum(axis=0)


class _MAPEMTracker(HeldPrior):
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
        self.tol, self.max_iter = em_options(tol, max_iter)
        self._prior = self.source_prior.copy()

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
        self._prior = state_array(state["prior"], "prior", (self.num_classes,))


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
        probs = checked_posteriors(posteriors, self.num_classes)
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
        check_state(state, cls.kind)
        tracker = cls(**cls._options(state), **cls._extra_options(state))
        tracker._restore_prior(state)
        tracker.count = check_non_negative("count", state["count"], "an image count >= 0")
        tracker.counts = state_array(state["counts"], "counts", (tracker.num_classes,))
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
        self.window = positive_int("window", window)
        self.recent = np.zeros((0, self.num_classes))

    def update(self, posteriors: Any) -> np.ndarray:
        """Adds one batch of calibrated posteriors [n >= 1, C]; returns the prior [C] for the
        next batch."""
        probs = checked_posteriors(posteriors, self.num_classes)
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
        check_state(state, cls.kind)
        tracker = cls(**cls._options(state), window=state["window"])
        tracker._restore_prior(state)
        recent = np.asarray(state["recent"], dtype=np.float64).reshape(-1, tracker.num_classes)
        if len(recent):  # checked, not renormalised: the rows are kept bit for bit
            check_probabilities(recent, tracker.num_classes, "recent")
        tracker.recent = recent
        if len(recent) > tracker.window:
            raise ValueError(f"recent has {len(recent)} rows: expected at most {tracker.window}")
        return tracker


def prior_for_batch(
    posteriors: Any,
    tracked_prior: Sequence[float],
    reference_prior: Sequence[float],
    *,
    prior_strength: float = DEFAULT_PRIOR_STRENGTH,
) -> np.ndarray:
    """The prior for a batch from the tracked prior AND the batch's own unlabeled images:
    Dirichlet-MAP EM on the batch centred on the tracker's estimate from earlier batches.

    Formula: `estimate_target_prior(q, p_r, prior_strength=lambda, prior_centre=m)` with
    m = max(tracked prior, 1e-6) renormalised (the floor lets a class the tracker had ruled
    out come back). Where the batch is seen before it is answered (a server's request), predict
    it with this, then `tracker.update(q)`.

    Args:
        posteriors: calibrated posteriors [n >= 1, C] of the batch, for p_r.
        tracked_prior: the tracker's `prior` before this batch.
        reference_prior: p_r [C].
        prior_strength: lambda, the weight of the tracked prior in images (the served 10).
    """
    centre = np.maximum(check_prior(tracked_prior, "tracked_prior"), CENTRE_FLOOR)
    return estimate_target_prior(
        check_probabilities(posteriors, centre.size, "posteriors"),
        reference_prior,
        "em",
        prior_strength=prior_strength,
        prior_centre=centre / centre.sum(),
    )
