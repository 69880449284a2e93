"""Fixtures of the pipeline tests: real logits for the shift report (see shift_support)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import shift_scoring
from tests.pipeline.shift_support import TRAIN_COUNTS, VAL_PER_CLASS, read_idx


@pytest.fixture(scope="session")
def real_data(fashion_mnist_dir: Path):
    """Test logits {"ce", "balanced_softmax"} [10000, 10] and labels; val logits [200, 10] and
    labels (20 per class, disjoint from the training subset)."""
    from sklearn.linear_model import LogisticRegression

    def load(prefix: str):
        images = read_idx(fashion_mnist_dir / f"{prefix}-images-idx3-ubyte.gz", 16)
        labels = read_idx(fashion_mnist_dir / f"{prefix}-labels-idx1-ubyte.gz", 8)
        # 2x2 average pooling keeps the fit fast (196 features) on a 2-core machine.
        images = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196) / 255.0
        return images, labels.astype(np.int64)

    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    rng = np.random.default_rng(0)
    keep, val = [], []
    for c, n in enumerate(TRAIN_COUNTS):
        members = rng.permutation(np.flatnonzero(train_y == c))
        val.extend(members[:VAL_PER_CLASS])
        keep.extend(members[VAL_PER_CLASS : VAL_PER_CLASS + n])
    logits, val_logits, weights = {}, {}, {}
    for loss, weight in (("ce", None), ("balanced_softmax", "balanced")):
        model = LogisticRegression(max_iter=300, class_weight=weight)
        model.fit(train_x[keep], train_y[keep])
        logits[loss] = model.decision_function(test_x)
        val_logits[loss] = model.decision_function(train_x[val])
        weights[loss] = (model.coef_, model.intercept_)
    return {
        "logits": logits,
        "labels": test_y,
        "val_logits": val_logits,
        "val_labels": train_y[val],
        "weights": weights,
    }


@pytest.fixture(scope="session")
def real_logits(real_data):
    """(test logits by loss, test labels)."""
    return real_data["logits"], real_data["labels"]


@pytest.fixture(scope="session")
def report(real_data):
    return shift_scoring.compute_shift_report(
        real_data["logits"],
        real_data["labels"],
        {loss: TRAIN_COUNTS for loss in real_data["logits"]},
        val_logits_by_loss=real_data["val_logits"],
        val_labels=real_data["val_labels"],
    )
