"""Label priors: the source prior of class counts, long-tailed class counts and the shifted test
distributions of the shift protocol (docs/design.md sections 3 and 5).

Estimating an unknown target prior is `lade_tf.label_shift` (the math) and
`lade_tf.prior_estimation` (for a trained model's raw logits); calibration is
`lade_tf.calibration`. NumPy in, NumPy out, so the pipeline, the evaluator and the tests can use
it without building a Keras object.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from lade_tf.checks import check_labels

PROFILES = ("exp", "step")

#: The 11 test distributions of the shift protocol (docs/design.md section 5), forward to backward.
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
            f"class_counts must be a 1-D sequence of at least 2 counts, got shape {counts.shape}"
        )
    for c, n in enumerate(counts):
        if not np.isfinite(n) or n <= 0:
            raise ValueError(
                f"class_counts[{c}] = {class_counts[c]!r}: every class needs a positive, finite "
                "training count (a class absent from training has no defined prior)"
            )
    return counts / counts.sum()


def class_counts_config(class_counts: Sequence[float]) -> list[float]:
    """Validated class counts as a JSON-friendly list (ints stay ints), for Keras configs.

    Raises:
        ValueError: as `source_prior` for invalid counts.
    """
    source_prior(class_counts)
    return [int(n) if float(n).is_integer() else float(n) for n in class_counts]


def long_tail_counts(
    n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp"
) -> list[int]:
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
            f"imbalance_ratio = {imbalance_ratio!r}: expected a finite number >= 1 (n_max / n_min)"
        )
    if profile == "exp":
        # Same expression (and float rounding) as the CIFAR-LT reference code, so totals match.
        factor = 1.0 / imbalance_ratio
        return [int(n_max * factor ** (k / (num_classes - 1.0))) for k in range(num_classes)]
    if profile == "step":
        n_min = max(1, int(n_max / imbalance_ratio))
        head = num_classes // 2
        return [n_max] * head + [n_min] * (num_classes - head)
    raise ValueError(f"profile = {profile!r}: expected one of {PROFILES}")


def shift_ratio(name: str) -> tuple[str, float]:
    """Direction and imbalance ratio rho of one of the 11 test distributions.

    Returns:
        ("forward", rho) for "F<rho>", ("backward", rho) for "B<rho>", ("uniform", 1.0) for "U".

    Raises:
        ValueError: if `name` is not in SHIFT_NAMES.
    """
    if name not in SHIFT_NAMES:
        raise ValueError(f"shift name {name!r}: expected one of {SHIFT_NAMES}")
    if name == "U":
        return "uniform", 1.0
    return ("forward" if name[0] == "F" else "backward"), float(name[1:])


def frequency_ranks(train_counts: Sequence[float]) -> np.ndarray:
    """Rank of every class by training frequency, 0 for the most frequent, as int64 [C].

    Ties keep label order (the smaller label gets the smaller rank).

    Raises:
        ValueError: as `source_prior` for invalid counts.
    """
    counts = source_prior(train_counts)
    order = np.argsort(-counts, kind="stable")
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[order] = np.arange(counts.size)
    return ranks


def shifted_test_counts(train_counts: Sequence[float], per_class: int, name: str) -> np.ndarray:
    """Test images kept per class (indexed by label) for one shifted test distribution.

    Formula (class of training-frequency rank k, C classes, m = per_class):
        forward  "F<rho>": floor(m * (1 / rho) ** (k / (C - 1)))
        backward "B<rho>": floor(m * (1 / rho) ** ((C - 1 - k) / (C - 1)))
        uniform  "U":      m
    Forward keeps the training order of head and tail, backward reverses it.

    Args:
        train_counts: training images per class [C], used only to rank the classes.
        per_class: m, test images available in every class (1000 for Fashion-MNIST and CIFAR-10,
            100 for CIFAR-100).
        name: one of SHIFT_NAMES.

    Returns:
        int64 [C]; every entry is between 0 and per_class.

    Raises:
        ValueError: for invalid counts, a per_class below 1 or an unknown name.
    """
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class = {per_class!r}: expected an integer >= 1")
    direction, rho = shift_ratio(name)
    ranks = frequency_ranks(train_counts)
    last = ranks.size - 1.0
    factor = 1.0 / rho
    kept = []
    for k in ranks:
        exponent = {"forward": k / last, "backward": (last - k) / last, "uniform": 0.0}[direction]
        kept.append(int(per_class * factor**exponent))
    return np.asarray(kept, dtype=np.int64)


def shifted_priors(train_counts: Sequence[float], per_class: int) -> dict[str, np.ndarray]:
    """The 11 target priors p_t of the shift protocol: normalised `shifted_test_counts`.

    Returns:
        {name: float64 [C] summing to 1} for every name in SHIFT_NAMES, in that order. Classes
        that keep no test image have prior 0.
    """
    priors = {}
    for name in SHIFT_NAMES:
        counts = shifted_test_counts(train_counts, per_class, name).astype(np.float64)
        priors[name] = counts / counts.sum()
    return priors


def subsample_by_counts(labels: Sequence[int], counts: Sequence[int], seed: int) -> np.ndarray:
    """Seeded sample without replacement of `counts[c]` examples of every class c.

    Args:
        labels: integer labels [N] in 0..C-1.
        counts: examples to keep per class [C], each at most the number of examples of that class.
        seed: NumPy random seed; the same seed gives the same indices.

    Returns:
        Sorted int64 indices into `labels`, sum(counts) of them.

    Raises:
        ValueError: if labels fall outside 0..C-1, a count is negative or not an integer, or a
            class has fewer examples than requested (the error names the class).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"counts = {counts.tolist()}: expected a 1-D array of integers >= 0")
    labels = check_labels(labels, counts.size)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, wanted in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if wanted > members.size:
            raise ValueError(f"counts[{c}] = {wanted}: class {c} has only {members.size} examples")
        chosen.append(rng.choice(members, size=int(wanted), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
