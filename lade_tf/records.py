"""The on-disk example format: gzip TFRecord files of `tf.train.Example` in TFX's Examples layout.

Layout of an examples directory (a TFX `Examples` artifact URI or `pipeline.prepare --output-dir`):

    <dir>/Split-train/*.gz   long-tailed training split
    <dir>/Split-val/*.gz     balanced validation split (may hold one empty file)
    <dir>/Split-test/*.gz    the source's official test split, untouched
    <dir>/class_info.json    class names, counts per split, image shape, how the data was made

Each example has two features: `image` (bytes, an encoded PNG or JPEG) and `label` (int64).
TensorFlow is imported only inside the functions that need it, so that code which only writes
examples (Beam workers) does not pay the TensorFlow import.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Sequence

IMAGE_KEY = "image"
LABEL_KEY = "label"
SPLITS = ("train", "val", "test")
CLASS_INFO_FILE = "class_info.json"


def split_file_pattern(examples_dir: str, split: str) -> str:
    """Glob pattern of the TFRecord files of one split, e.g. `<dir>/Split-train/*.gz`.

    Raises:
        ValueError: if `split` is not one of `SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: expected one of {SPLITS}")
    return os.path.join(examples_dir, f"Split-{split}", "*.gz")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _map_entry(name: str, feature: bytes) -> bytes:
    return _length_delimited(1, _length_delimited(1, name.encode()) + _length_delimited(2, feature))


def encode_example(image_bytes: bytes, label: int) -> bytes:
    """Serialized `tf.train.Example` with `image` (encoded PNG/JPEG bytes) and `label` (int64).

    The protobuf wire format is written directly (Example.features = 1, Features.feature map = 1,
    Feature.bytes_list = 1, Feature.int64_list = 3, packed values = 1), byte-identical to
    `tf.train.Example(...).SerializeToString(deterministic=True)`. Beam workers call this for every
    image, and importing TensorFlow costs each worker process 10-30 s on a small machine.

    Args:
        image_bytes: the encoded image.
        label: class index (>= 0).

    Raises:
        ValueError: if `label` is not a non-negative integer or `image_bytes` is not bytes.
    """
    if not isinstance(image_bytes, (bytes, bytearray)):
        raise ValueError(f"image_bytes: expected bytes, got {type(image_bytes).__name__}")
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or label < 0:
        raise ValueError(f"label = {label!r}: expected an integer class index >= 0")
    image_feature = _length_delimited(1, _length_delimited(1, bytes(image_bytes)))
    label_feature = _length_delimited(3, _length_delimited(1, _varint(int(label))))
    features = _map_entry(IMAGE_KEY, image_feature) + _map_entry(LABEL_KEY, label_feature)
    return _length_delimited(1, features)


def parse_dataset(
    file_pattern: str | Sequence[str], image_shape: Sequence[int], *, compression: str = "GZIP"
):
    """`tf.data.Dataset` of (image float32 [H, W, C] with values 0..255, label int64 []).

    Files are read in sorted name order and records in file order, so the dataset order is
    deterministic. PNG and JPEG images are decoded to `image_shape[-1]` channels.

    Args:
        file_pattern: a glob pattern (e.g. `split_file_pattern(dir, "train")`) or a list of them.
        image_shape: (H, W, C), e.g. from `read_class_info`: (height, width, channels).
        compression: "GZIP" (what `pipeline.prepare` writes) or "" for uncompressed files.

    Raises:
        ValueError: if no file matches or `image_shape` is not three positive ints. A decoded image
            of another shape fails when the dataset is iterated (InvalidArgumentError).
    """
    import tensorflow as tf

    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[-1] not in (1, 3):
        raise ValueError(
            f"image_shape = {tuple(image_shape)!r}: expected (H, W, C) with C in (1, 3)"
        )
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for pattern in patterns for f in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"file_pattern = {file_pattern!r}: no file matches")
    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(example[IMAGE_KEY], channels=shape[-1], expand_animations=False)
        image = tf.ensure_shape(image, shape)
        return tf.cast(image, tf.float32), example[LABEL_KEY]

    records = tf.data.TFRecordDataset(files, compression_type=compression)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def read_class_info(examples_dir: str) -> dict:
    """The `class_info.json` of an examples directory, as a dict.

    Keys: class_names, counts ({split: [count per label]}), height, width, channels, source,
    profile, imbalance_ratio, n_max, val_per_class, seed, class_order (labels from most to least
    frequent in train), skipped_files ([{path, reason}]), num_skipped, warnings.

    Raises:
        FileNotFoundError: if the directory has no class_info.json (not a prepared examples dir,
            or a preparation that did not finish).
    """
    import tensorflow as tf

    path = os.path.join(examples_dir, CLASS_INFO_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: expected a directory written by pipeline.prepare or "
            "LongTailExampleGen (its class_info.json is written last)"
        )
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
