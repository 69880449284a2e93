"""FLH-FTL (Baby et al. 2023, "Online Label Shift: Optimal Dynamic Regret meets Practical
Algorithms"): follow-the-leading-history over per-batch local estimates, as the authors' code
(acmi-lab/OnlineLabelShift) computes it. NumPy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lade_tf.checks import check_prior
from lade_tf.local_estimates import LocalEstimator, local_estimator_from_state
from lade_tf.tracking_checks import (
    STATE_FORMAT,
    HeldPrior,
    check_state,
    positive_int,
    positive_number,
    state_array,
)


class FLHFTLTracker(HeldPrior):
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
            else positive_number("meta_lr", meta_lr, "a learning rate > 0")
        )
        if max_experts is not None:
            max_experts = positive_int("max_experts", max_experts)
            if max_experts < 2:
                raise ValueError(f"max_experts = {max_experts}: expected None or at least 2")
        self.max_experts = max_experts
        self.authors_delay = bool(authors_delay)
        self.history = np.zeros((0, num_classes))
        self.weights = np.zeros(0)
        self._prior = self.source_prior.copy()

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
        check_state(state, cls.kind)
        tracker = cls(
            local_estimator_from_state(state["local_estimator"]),
            state["source_prior"],
            meta_lr=state["meta_lr"],
            max_experts=state["max_experts"],
            authors_delay=state["authors_delay"],
        )
        history = np.asarray(state["history"], dtype=np.float64).reshape(-1, tracker.num_classes)
        tracker.history = state_array(history, "history", history.shape)
        tracker.weights = state_array(state["weights"], "weights", (len(history),))
        tracker._prior = state_array(state["prior"], "prior", (tracker.num_classes,))
        return tracker
