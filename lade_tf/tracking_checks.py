"""What the trackers of `lade_tf.prior_tracking` share: the checks of their inputs, the plain
data of their `state()` documents, and the estimate they hold. NumPy only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lade_tf.checks import check_labels, check_non_negative, check_probabilities

#: Version tag of every `state()` document.
STATE_FORMAT = "lade_tf.prior_tracking/1"
TINY = np.finfo(np.float64).tiny


class HeldPrior:
    """The estimate a prior tracker holds: `source_prior` [C] and `_prior`, set by the tracker."""

    source_prior: np.ndarray
    _prior: np.ndarray

    @property
    def num_classes(self) -> int:
        """C."""
        return self.source_prior.size

    @property
    def prior(self) -> np.ndarray:
        """The current estimate [C] (the prior for the next batch); p_s before any update."""
        return self._prior.copy()


def checked_posteriors(posteriors: Any, num_classes: int) -> np.ndarray:
    """Checked posteriors [n >= 1, C] with every row renormalised to sum to 1 exactly."""
    probs = check_probabilities(posteriors, num_classes, "posteriors")
    return probs / probs.sum(axis=1, keepdims=True)


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} = {value!r}: expected an integer >= 1")
    return int(value)


def positive_number(name: str, value: Any, expected: str) -> float:
    value = check_non_negative(name, value, expected)
    if value <= 0:
        raise ValueError(f"{name} = {value!r}: expected {expected}")
    return value


def em_options(tol: float, max_iter: int) -> tuple[float, int]:
    tol = positive_number("tol", tol, "an EM tolerance > 0")
    return tol, positive_int("max_iter", max_iter)


def reference_data(
    posteriors: Any, labels: Any, num_classes: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Checked labelled reference posteriors ([M, C] rows summing to 1, int64 [M]); every class
    must occur."""
    probs = check_probabilities(posteriors, num_classes, f"{what}_posteriors")
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = check_labels(
        labels, probs.shape[1], len(probs), f"{what}_labels", rows_of=f"{what}_posteriors"
    )
    require_every_class(labels, probs.shape[1], f"{what}_labels")
    return probs, labels


def require_every_class(labels: np.ndarray, num_classes: int, name: str) -> None:
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(
            f"{name} have no example of class(es) {missing.tolist()}: expected every class in "
            "the reference data"
        )


def label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes) / labels.size


def check_state(state: Mapping[str, Any], kind: str) -> None:
    if not isinstance(state, Mapping):
        raise ValueError(f"state = {state!r}: expected a mapping from state()")
    if state.get("format") != STATE_FORMAT or state.get("kind") != kind:
        raise ValueError(
            f"state format {state.get('format')!r}, kind {state.get('kind')!r}: expected "
            f"format {STATE_FORMAT!r} and kind {kind!r}"
        )


def state_array(values: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if (shape is not None and array.shape != shape) or not np.isfinite(array).all():
        raise ValueError(f"{name} has shape {array.shape}: expected finite values of shape {shape}")
    return array
