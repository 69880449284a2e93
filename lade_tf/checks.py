"""Argument checks shared by the library: options, logits, probabilities and integer labels.

Every check raises a ValueError whose message names the value and says what was expected. NumPy
only, so the NumPy modules (`priors`, `metrics`, `shift_eval`, `prior_estimation`) use them
without importing Keras; the Keras losses check their (possibly symbolic) tensors themselves.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

#: Tolerance on the row sums of probabilities.
PROBABILITY_ATOL = 1e-3


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """ValueError unless `value` is one of `allowed`: "<name> = <value>: expected one of ..."."""
    if value not in allowed:
        raise ValueError(f"{name} = {value!r}: expected one of {tuple(allowed)}")


def check_non_negative(
    name: str,
    value: Any,
    expected: str = "a finite number >= 0",
    *,
    types: type | tuple[type, ...] = numbers.Real,
) -> float:
    """`value` as a float when it is a finite real number >= 0 (not a bool).

    Args:
        name: the value's name in the message.
        value: the value to check.
        expected: what the message says was expected.
        types: the accepted types (default any real number, NumPy scalars included).

    Returns:
        float(value).

    Raises:
        ValueError: "<name> = <value>: expected <expected>".
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, types)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} = {value!r}: expected {expected}")
    return float(value)


def shown(values: np.ndarray) -> str:
    """A short printout of an array for error messages (long arrays are summarised)."""
    return np.array2string(np.asarray(values), threshold=12, precision=4, separator=", ")


def _check_scores(
    values: Any, num_classes: int | None, name: str, what: tuple[str, str], finite: bool
) -> np.ndarray:
    """[N >= 1, C] float64 scores; `what` is (singular, plural) of what an entry is."""
    values = np.asarray(values, dtype=np.float64)
    if num_classes is None:
        if values.ndim != 2 or values.shape[1] < 2:
            raise ValueError(
                f"{name} have shape {values.shape}: expected [N, C] with C >= 2 (one {what[0]} per "
                "class for each of N samples)"
            )
    elif values.ndim != 2 or values.shape[1] != num_classes:
        raise ValueError(
            f"{name} have shape {values.shape}: expected [N, {num_classes}] (one {what[0]} per "
            "class for each of N samples)"
        )
    if values.shape[0] == 0:
        raise ValueError(
            f"{name} is an empty batch (shape {values.shape}): expected at least one sample"
        )
    if finite:
        rows = np.isfinite(values).all(axis=1)
        if not rows.all():
            row = int(np.argmin(rows))
            raise ValueError(
                f"{name}[{row}] = {shown(values[row])} has NaN or infinite entries: expected "
                f"finite {what[1]}"
            )
    return values


def check_logits(
    logits: Any, num_classes: int | None = None, name: str = "logits", *, finite: bool = True
) -> np.ndarray:
    """Scores of N >= 1 samples as float64 [N, C]: logits (or any per-class scores).

    Args:
        logits: [N, C] array-like.
        num_classes: the expected C; None accepts any C >= 2.
        name: the value's name in messages.
        finite: also reject NaN and infinite entries (naming the first bad row).

    Raises:
        ValueError: wrong rank or width, an empty batch, or a non-finite entry.
    """
    return _check_scores(logits, num_classes, name, ("score", "scores"), finite)


def check_probabilities(
    probs: Any, num_classes: int | None = None, name: str = "probs"
) -> np.ndarray:
    """Class probabilities of N >= 1 samples as float64 [N, C], rows summing to 1 (+- 1e-3).

    The rows are returned as given, not renormalised.

    Args:
        probs: [N, C] array-like.
        num_classes: the expected C; None accepts any C >= 2.
        name: the value's name in messages.

    Raises:
        ValueError: wrong rank or width, an empty batch, or a row with NaN / infinite / negative
            entries or a sum other than 1 (the message names the row).
    """
    probs = _check_scores(probs, num_classes, name, ("probability", "probabilities"), finite=True)
    negative = (probs < 0).any(axis=1)
    if negative.any():
        row = int(np.argmax(negative))
        raise ValueError(
            f"{name}[{row}] = {shown(probs[row])} has negative entries: expected probabilities "
            "(apply softmax to logits first)"
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0)
    if off.max() > PROBABILITY_ATOL:
        row = int(np.argmax(off))
        raise ValueError(
            f"{name}[{row}] sums to {sums[row]:.6g}: expected rows that sum to 1 (probabilities: "
            "apply softmax to logits first)"
        )
    return probs


def check_labels(
    labels: Any,
    num_classes: int,
    num_examples: int | None = None,
    name: str = "labels",
    *,
    rows_of: str = "logits",
) -> np.ndarray:
    """Integer class ids in [0, num_classes) as int64 [N].

    Args:
        labels: [N] array-like of integers.
        num_classes: C; every label must lie in [0, C).
        num_examples: the expected N (one label per row of `rows_of`); None accepts any length.
        name: the value's name in messages.
        rows_of: what the labels belong to, for the message.

    Raises:
        ValueError: wrong shape or a non-integer dtype, or a label outside [0, C) (the message
            gives the labels' range).
    """
    labels = np.asarray(labels)
    if num_examples is None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{name} have shape {labels.shape} and dtype {labels.dtype}: expected a 1-D "
                "array of integer labels"
            )
    elif labels.shape != (num_examples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} have shape {labels.shape} and dtype {labels.dtype}: expected {num_examples} "
            f"integer labels (one per row of {rows_of})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} span {labels.min()}..{labels.max()}: expected integers in "
            f"[0, {num_classes}) ({num_classes} classes)"
        )
    return labels.astype(np.int64)


def check_logits_labels(
    logits: Any, labels: Any, num_classes: int | None = None, *, finite: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`check_logits(logits, num_classes)` and one `check_labels` label per row of them.

    Returns:
        (float64 [N, C] logits, int64 [N] labels).
    """
    logits = check_logits(logits, num_classes, finite=finite)
    return logits, check_labels(labels, logits.shape[1], logits.shape[0])


def check_prior(
    prior: Any,
    name: str = "prior",
    *,
    num_classes: int | None = None,
    batched: bool = False,
    zeros: bool = True,
) -> np.ndarray:
    """A label distribution (class weights) normalised to sum to 1, float64 [C] or [batch, C].

    The one check of a prior vector in the library: target priors of the inference rule, source
    and reference priors of EM, estimated and true priors of the estimation error.

    Args:
        prior: [C] array-like of non-negative class weights (any positive sum), or [batch, C]
            with one distribution per row when `batched`.
        name: the value's name in messages.
        num_classes: the expected C; None accepts any C >= 2.
        batched: also accept [batch, C] (each row checked and normalised).
        zeros: allow zero weights; False requires every entry > 0 (a prior that is divided by,
            such as EM's source prior).

    Raises:
        ValueError: wrong shape, NaN / infinite or negative entries, a zero entry when `zeros`
            is False, or a (row) sum of 0; the message shows the value.
    """
    values = np.asarray(prior, dtype=np.float64)
    ranks = (1, 2) if batched else (1,)
    width = "C" if num_classes is None else str(num_classes)
    if (
        values.ndim not in ranks
        or (num_classes is not None and values.shape[-1] != num_classes)
        or (num_classes is None and values.shape[-1] < 2)
    ):
        expected = f"[{width}] or [batch, {width}]" if batched else f"[{width}]"
        raise ValueError(
            f"{name} has shape {values.shape}: expected {expected} (one weight per class"
            + (", C >= 2)" if num_classes is None else ")")
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"{name} {shown(values)} has NaN or infinite entries: expected finite, non-negative "
            "class weights"
        )
    if (values < 0).any():
        raise ValueError(
            f"{name} {shown(values)} has negative entries: expected non-negative class weights"
        )
    if not zeros and (values == 0).any():
        raise ValueError(
            f"{name} {shown(values)} has zero entries: expected a positive weight per class"
        )
    sums = values.sum(axis=-1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(
            f"{name} {shown(values)} sums to 0"
            + (" (in some row)" if values.ndim == 2 else "")
            + ": expected at least one positive class weight"
        )
    return values / sums
