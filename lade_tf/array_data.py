"""In-memory training batches for `model.fit` on any Keras backend (NumPy, no TensorFlow).

The NumPy counterpart of `lade_tf.input_pipeline.train_dataset`: the same augmentation (random
crop of the zero-padded image, pad = height // 8 but at least 1, and a horizontal flip with
probability 1/2), a reshuffle every epoch and full batches only. The random numbers are NumPy's,
so the batches are not those of the tf.data pipeline for the same seed, but they are a function of
(seed, epoch, batch index) alone, whatever the number of Keras data workers.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def random_crop_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image cropped at a random offset of its zero-padded copy, then flipped with p = 1/2.

    Args:
        images: [N, H, W, C] pixels of any dtype (padding adds zeros, i.e. black).
        rng: the random generator of this batch.

    Returns:
        [N, H, W, C] of the same dtype.
    """
    count, height, width = images.shape[:3]
    pad = max(1, height // 8)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, count)
    left = rng.integers(0, 2 * pad + 1, count)
    flip = rng.random(count) < 0.5
    rows = top[:, None] + np.arange(height)[None, :]
    columns = left[:, None] + np.arange(width)[None, :]
    # A flipped image reads its window's columns right to left.
    columns = np.where(flip[:, None], columns[:, ::-1], columns)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled (every epoch), augmented, full batches of in-memory images.

    Args:
        images: [N, H, W, C] raw pixels (uint8 or float, 0..255), e.g. from
            `lade_tf.records.read_split`.
        labels: [N] integer class labels.
        batch_size: images per batch; the last partial batch of an epoch is dropped.
        augment: apply `random_crop_flip`.
        seed: seed of the order and the augmentation.
        **kwargs: `keras.utils.PyDataset` options (workers, use_multiprocessing, max_queue_size).

    Raises:
        ValueError: if images and labels disagree in length or there is not one full batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        augment: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(
                f"images {images.shape} and labels {labels.shape}: expected [N, H, W, C] "
                "images and [N] labels"
            )
        if not isinstance(batch_size, int) or not 1 <= batch_size <= len(images):
            raise ValueError(
                f"batch_size = {batch_size!r}: expected an integer from 1 to the "
                f"{len(images)} training images"
            )
        self._images, self._labels = images, labels.astype(np.int64)
        self._batch_size, self._augment, self._seed = batch_size, augment, int(seed)
        self._epoch = 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        return np.random.default_rng([self._seed, self._epoch]).permutation(len(self._images))

    def __len__(self) -> int:
        return len(self._images) // self._batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        rows = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        images = self._images[rows]
        if self._augment:
            rng = np.random.default_rng([self._seed, self._epoch, index, 1])
            images = random_crop_flip(images, rng)
        return images.astype(np.float32), self._labels[rows]

    def on_epoch_end(self) -> None:
        """Next epoch: a new order and new augmentations."""
        self._epoch += 1
        self._order = self._epoch_order()
