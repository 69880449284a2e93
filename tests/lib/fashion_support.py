"""Real data for the inference-rule and prior-estimation tests: Fashion-MNIST-LT, 2x2-pooled
(196 features), a balanced validation split taken first, and a small Keras MLP trained in seconds
with any loss of lade_tf.losses."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from lade_tf.priors import long_tail_counts

#: Long-tailed training counts, IR 100 (2000 ... 20 images): small enough to train in seconds.
TRAIN_COUNTS = long_tail_counts(2000, 10, 100)
VAL_PER_CLASS = 20


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


@functools.lru_cache(maxsize=1)
def pooled_fashion_mnist(directory: Path) -> dict[str, np.ndarray]:
    """train_x / test_x float32 [N, 196] in 0..1 (2x2 average pooling), train_y / test_y."""

    def load(prefix: str):
        images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz", 16)
        labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", 8)
        pooled = images.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196) / 255.0
        return pooled.astype(np.float32), labels.astype(np.int64)

    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def long_tailed_split(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices with TRAIN_COUNTS per class, balanced val indices, VAL_PER_CLASS each)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, count in enumerate(TRAIN_COUNTS):
        members = rng.permutation(np.flatnonzero(labels == label))
        val.extend(members[:VAL_PER_CLASS])
        train.extend(members[VAL_PER_CLASS : VAL_PER_CLASS + count])
    return np.array(train), np.array(val)


def trained_logits(
    directory: Path, loss: str, *, tau: float = 1.0, seed: int = 0, epochs: int = 15
) -> dict[str, np.ndarray]:
    """A 196-64-10 MLP trained with `loss` (Adam, 15 epochs, a few seconds).

    Returns:
        test_logits [10000, 10], test_labels, val_logits [200, 10], val_labels.
    """
    import keras

    from lade_tf.losses import make_loss

    data = pooled_fashion_mnist(directory)
    train, val = long_tailed_split(data["train_y"])
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((196,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    options = {"tau": tau} if loss == "logit_adjusted" else {}
    model.compile(keras.optimizers.Adam(3e-3), loss=make_loss(loss, TRAIN_COUNTS, **options))
    model.fit(
        data["train_x"][train], data["train_y"][train], epochs=epochs, batch_size=128, verbose=0
    )

    def predict(x):
        return np.asarray(model.predict(x, batch_size=2000, verbose=0), np.float64)

    return {
        "test_logits": predict(data["test_x"]),
        "test_labels": data["test_y"],
        "val_logits": predict(data["train_x"][val]),
        "val_labels": data["train_y"][val],
    }
