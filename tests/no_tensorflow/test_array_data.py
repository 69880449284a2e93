"""lade_tf.array_data: the NumPy augmentation against a per-image reference, and the batches."""

from __future__ import annotations

import numpy as np
import pytest

from lade_tf.array_data import AugmentedBatches, random_crop_flip

pytestmark = pytest.mark.no_tensorflow


def _crops_and_flips(image: np.ndarray, pad: int) -> list[np.ndarray]:
    """Every image the augmentation may produce: each window of the padded image, either way."""
    height, width = image.shape[:2]
    padded = np.zeros((height + 2 * pad, width + 2 * pad, image.shape[2]), image.dtype)
    padded[pad : pad + height, pad : pad + width] = image
    windows = [
        padded[top : top + height, left : left + width]
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
    ]
    return windows + [window[:, ::-1] for window in windows]


def test_every_augmented_image_is_a_window_of_the_padded_image_flipped_half_the_time(digits):
    images = digits[0][:400, :, :, None]
    out = random_crop_flip(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    flipped, moved = 0, 0
    for image, augmented in zip(images, out):
        candidates = _crops_and_flips(image, pad=1)  # 8 // 8 = 1
        matches = [i for i, c in enumerate(candidates) if np.array_equal(c, augmented)]
        assert matches, "not a crop (or flipped crop) of the zero-padded image"
        flipped += min(matches) >= 9
        moved += not np.array_equal(image, augmented)
    assert 150 < flipped < 250  # p = 1/2 of 400 (the bounds are > 5 standard deviations)
    assert moved > 300


def test_batches_cover_each_epoch_once_reshuffle_and_repeat_with_the_seed(digits):
    images, labels = digits[0][:100, :, :, None], digits[1][:100]
    batches = AugmentedBatches(images, labels, 32, augment=False, seed=3)
    assert len(batches) == 3  # 100 // 32, the partial batch dropped

    def epoch_rows(data):
        batch_list = [data[i] for i in range(len(data))]
        for x, y in batch_list:
            assert x.dtype == np.float32 and x.shape == (32, 8, 8, 1) and y.shape == (32,)
        x = np.concatenate([b[0] for b in batch_list])
        index = {images[i].astype(np.float32).tobytes(): i for i in range(len(images))}
        rows = [index[row.tobytes()] for row in x]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batch_list]), labels[rows])
        return rows

    first = epoch_rows(batches)
    assert len(set(first)) == 96
    batches.on_epoch_end()
    second = epoch_rows(batches)
    assert first != second
    assert epoch_rows(AugmentedBatches(images, labels, 32, augment=False, seed=3)) == first
    augmented = AugmentedBatches(images, labels, 32, seed=3)
    np.testing.assert_array_equal(augmented[1][0], augmented[1][0])  # the same on a re-read
    with pytest.raises(IndexError):
        batches[3]


@pytest.mark.parametrize(
    "images, labels, batch_size, message",
    [
        (np.zeros((10, 8, 8)), np.zeros(10), 2, "expected \\[N, H, W, C\\]"),
        (np.zeros((10, 8, 8, 1)), np.zeros(9), 2, "expected \\[N, H, W, C\\]"),
        (np.zeros((10, 8, 8, 1)), np.zeros(10), 11, "batch_size = 11"),
    ],
)
def test_bad_arrays_are_named(images, labels, batch_size, message):
    with pytest.raises(ValueError, match=message):
        AugmentedBatches(images, labels, batch_size)
