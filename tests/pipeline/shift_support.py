"""What the shift-report tests share: real logits of two logistic-regression models fitted on a
long-tailed subset of Fashion-MNIST (plain, and class-balanced = prior-free logits like Balanced
Softmax), scored on the full official test split, with a balanced validation split (20 per class),
and NumPy references of the protocol's steps."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# Long-tailed counts with every shot group present: 600 ... 6 (> 100, 20..100, < 20 images).
TRAIN_COUNTS = [int(600 * 0.01 ** (k / 9)) for k in range(10)]
VAL_PER_CLASS = 20
NAMES = [
    "Softmax",
    "PC Softmax",
    "PC Softmax + EM",
    "PC Softmax + calibrated EM",
    "PC Softmax + BBSE",
    "Balanced Softmax",
    "Balanced Softmax + EM",
    "Balanced Softmax + calibrated EM",
    "Balanced Softmax + BBSE",
]


def read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


def subsample(labels: np.ndarray, counts: np.ndarray, seed: int) -> np.ndarray:
    """The documented seeded protocol, written directly: one generator, classes in label order,
    counts[c] images of class c without replacement, indices sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), size=n, replace=False)
                for c, n in enumerate(counts)
            ]
        )
    )


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))
