"""tf.data input for training and evaluation from the TFRecords of `lade_tf.records`."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from lade_tf.recipe import steps_per_epoch
from lade_tf.records import parse_dataset

# `steps_per_epoch` lives in lade_tf.recipe (no TensorFlow) and is part of this module's API.
__all__ = [
    "augment_batch",
    "augment_image",
    "augment_parameters",
    "eval_dataset",
    "steps_per_epoch",
    "train_dataset",
]


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random crop of the zero-padded image and random horizontal flip (stateless, seeded).

    Padding is height // 8 pixels on each side (4 for 32x32 CIFAR and 28x28 Fashion-MNIST, the
    CIFAR reference recipe; 1 for 8x8). The flip suits natural images and clothes, not text.
    `train_dataset` applies the same crop and flip in batched form (`augment_parameters`, then
    `augment_batch`), with identical results.

    Args:
        image: float32 [H, W, C] raw pixels (0..255; padding adds zeros, i.e. black).
        seed: int [2], the stateless random seed of this image.
    """
    height = image.shape[0]
    pad = max(1, height // 8)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def augment_parameters(seed: tf.Tensor, image_shape: Sequence[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """The crop offset and flip `augment_image` draws for one image, without touching pixels.

    The same random draws as `tf.image.stateless_random_crop` (int32 uniform over [3] mod the
    crop's limit) and `tf.image.stateless_random_flip_left_right` (uniform [0, 1) < 0.5).

    Args:
        seed: int [2], the stateless random seed of the image.
        image_shape: (H, W, C).

    Returns:
        (offset int32 [2]: top and left of the crop in the padded image, flip bool []).
    """
    height, width, _ = (int(d) for d in image_shape)
    pad = max(1, height // 8)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    limit = tf.constant([2 * pad + 1, 2 * pad + 1, 1], tf.int32)
    offset = (
        tf.random.stateless_uniform([3], seed=crop_seed, dtype=tf.int32, maxval=tf.int32.max)
        % limit
    )
    flip = tf.random.stateless_uniform([], seed=flip_seed, minval=0, maxval=1.0) < 0.5
    return offset[:2], flip


def augment_batch(images: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """`augment_image` on a batch, given each image's `augment_parameters` (a few batched ops).

    Args:
        images: float32 [B, H, W, C].
        offsets: int32 [B, 2] crop offsets in the padded images.
        flips: bool [B] horizontal flips.

    Returns:
        float32 [B, H, W, C], equal to `augment_image` of each image with its seed.
    """
    height, width = images.shape[1], images.shape[2]
    pad = max(1, height // 8)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None, :]
    forward = tf.range(width)[None, :]
    # A flip of the crop reads the crop's columns right to left.
    columns = offsets[:, 1:] + tf.where(flips[:, None], width - 1 - forward, forward)
    cropped_rows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped_rows, columns, axis=2, batch_dims=1)


def train_dataset(
    file_pattern: str | Sequence[str],
    image_shape: Sequence[int],
    batch_size: int,
    *,
    augment: bool = True,
    seed: int = 0,
    max_examples: int | None = None,
    shuffle_buffer: int = 16384,
    cache: bool = True,
) -> tf.data.Dataset:
    """Shuffled, augmented, batched training data from TFRecords of `lade_tf.records`.

    Order: parallel decode -> (seeded subset) -> cache -> shuffle (reshuffled every epoch) ->
    batch with drop_remainder -> augment (stateless per-image seeds, applied per batch: the same
    images as `augment_image` per image) -> prefetch.
    Full batches only, so every step (and every replica's share) has the same size. The order is
    a function of `seed` and of TensorFlow's global seed when the dataset is made (none, or the
    one `keras.utils.set_random_seed` set), so processes that build it alike read it alike.

    Args:
        file_pattern: gzip TFRecord file pattern(s), e.g. "<examples>/Split-train/*".
        image_shape: (H, W, C).
        batch_size: the global batch size.
        augment: apply `augment_image`.
        seed: seed of the subset, the shuffle order and the augmentation.
        max_examples: keep a seeded random subset of this many examples (None = all).
        shuffle_buffer: shuffle buffer size in examples (a full shuffle when >= the data size).
        cache: cache decoded images in memory.

    Returns:
        A dataset of (images float32 [batch, H, W, C] 0..255, labels int64 [batch]).
    """
    data = parse_dataset(file_pattern, tuple(image_shape))
    if max_examples is not None:
        data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        data = data.take(max_examples)
    if cache:
        data = data.cache()
    data = data.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    if not augment:
        return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
    # Per image only the random draws (a few scalar ops); the pixels are cropped and flipped per
    # batch, which costs a fraction of a per-image map and leaves more CPU to the training step.
    parameters = seeds.map(
        lambda image_seed: augment_parameters(image_seed, image_shape),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    data = tf.data.Dataset.zip((data, parameters)).batch(batch_size, drop_remainder=True)
    data = data.map(
        lambda example, drawn: (augment_batch(example[0], *drawn), example[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return data.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    file_pattern: str | Sequence[str],
    image_shape: Sequence[int],
    batch_size: int,
    *,
    cache: bool = True,
) -> tf.data.Dataset:
    """Evaluation data in file order, no augmentation, the last batch possibly smaller.

    Returns:
        A dataset of (images float32 [batch, H, W, C] 0..255, labels int64 [batch]).
    """
    data = parse_dataset(file_pattern, tuple(image_shape))
    if cache:
        data = data.cache()
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)
