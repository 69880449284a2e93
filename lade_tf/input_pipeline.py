"""tf.data input for training and evaluation from the TFRecords of `lade_tf.records`."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from lade_tf.records import parse_dataset
from lade_tf.train_config import TrainConfig


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random crop of the zero-padded image and random horizontal flip (stateless, seeded).

    Padding is height // 8 pixels on each side (4 for 32x32 CIFAR and 28x28 Fashion-MNIST, the
    CIFAR reference recipe; 1 for 8x8). The flip suits natural images and clothes, not text.

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
    augment (parallel, stateless per-image seeds) -> batch with drop_remainder -> prefetch.
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
    if augment:
        seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
        data = tf.data.Dataset.zip((data, seeds)).map(
            lambda example, image_seed: (augment_image(example[0], image_seed), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


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


def steps_per_epoch(config: TrainConfig, class_counts: Sequence[int]) -> int:
    """Full global batches per epoch for a training set with these class counts."""
    examples = int(sum(class_counts))
    if config.max_train_examples is not None:
        examples = min(examples, config.max_train_examples)
    return examples // config.batch_size
