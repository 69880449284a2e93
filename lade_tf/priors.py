"""Label priors: long-tailed class counts, shifted test distributions, prior estimation.

Everything here is NumPy in, NumPy out, so the pipeline, the evaluator and the tests can use it
without building a Keras object.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PROFILES = ("exp", "step")

#: The 11 test distributions of the shift protocol (DESIGN section 5), forward to backward.
SHIFT_NAMES = ("F50", "F25", "F10", "F5", "F2", "U", "B2", "B5", "B10", "B25", "B50")


def source_prior(class_counts: Sequence[float]) -> np.ndarray:
    """Training prior p_s(c) = n_c / sum(n) as float64 [C].

    Raises:
        ValueError: if a count is zero, negative or not finite (the error names the class), or if
            there are fewer than two classes.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(
            f"class_counts must be a 1-D sequence of at least 2 counts, got shape {counts.shape}")
    for c, n in enumerate(counts):
        if not np.isfinite(n) or n <= 0:
            raise ValueError(
                f"class_counts[{c}] = {class_counts[c]!r}: every class needs a positive, finite "
                "training count (a class absent from training has no defined prior)")
    return counts / counts.sum()


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float,
                     profile: str = "exp") -> list[int]:
    """Per-class image counts of a long-tailed training set, class 0 the most frequent.

    Formula:
        exp:  n_k = floor(n_max * (1 / IR) ** (k / (C - 1)))
        step: n_k = n_max for the first C // 2 classes, floor(n_max / IR) for the rest

    Args:
        n_max: images kept for the most frequent class (>= 1).
        num_classes: C (>= 2).
        imbalance_ratio: IR = n_max / n_min (>= 1; 1 gives a balanced set).
        profile: "exp" (the usual CIFAR-LT profile) or "step".

    Returns:
        A list of C ints. Fashion-MNIST (6000, 10, 100) sums to 14,886; CIFAR-10 (5000, 10, 100) to
        12,406; CIFAR-100 (500, 100, 100 / 50 / 10) to 10,847 / 12,608 / 19,573.
    """
    if not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max = {n_max!r}: expected an integer >= 1")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes = {num_classes!r}: expected an integer >= 2")
    if not math.isfinite(imbalance_ratio) or imbalance_ratio < 1:
        raise ValueError(
            f"imbalance_ratio = {imbalance_ratio!r}: expected a finite number >= 1 (n_max / n_min)")
    if profile == "exp":
        # Same expression (and float rounding) as the CIFAR-LT reference code, so totals match.
        factor = 1.0 / imbalance_ratio
        return [int(n_max * factor ** (k / (num_classes - 1.0))) for k in range(num_classes)]
    if profile == "step":
        n_min = max(1, int(n_max / imbalance_ratio))
        head = num_classes // 2
        return [n_max] * head + [n_min] * (num_classes - head)
    raise ValueError(f"profile = {profile!r}: expected one of {PROFILES}")
