"""lade_tf.records: the example encoding against TensorFlow's own protobuf, and the reader on real
digits written by TensorFlow's own TFRecord writer (no TFX or Beam here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from lade_tf.records import (
    CLASS_INFO_FILE,
    encode_example,
    parse_dataset,
    read_class_info,
    split_file_pattern,
)


def _reference_example(image_bytes: bytes, label: int) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "size, label", [(0, 0), (1, 9), (127, 127), (128, 128), (20000, 300), (5, 2**40)]
)
def test_encode_example_is_byte_identical_to_tf_train_example(size, label):
    image_bytes = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    encoded = encode_example(image_bytes, label)
    assert encoded == _reference_example(image_bytes, label)
    parsed = tf.train.Example.FromString(encoded).features.feature
    assert parsed["image"].bytes_list.value == [image_bytes]
    assert parsed["label"].int64_list.value == [label]


def test_encode_example_accepts_numpy_labels():
    assert encode_example(b"png", np.int64(3)) == _reference_example(b"png", 3)


@pytest.mark.parametrize("label", [-1, 1.5, "3", True, None])
def test_encode_example_rejects_bad_labels(label):
    with pytest.raises(ValueError, match="label"):
        encode_example(b"png", label)


def test_encode_example_rejects_non_bytes_image():
    with pytest.raises(ValueError, match="image_bytes"):
        encode_example("not bytes", 0)


def _write_digits_split(path, images, labels):
    """Digits as PNG examples in a gzip TFRecord file, written by TensorFlow itself."""
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for image, label in zip(images, labels):
            png = tf.io.encode_png(image[..., None]).numpy()
            writer.write(_reference_example(png, int(label)))


def test_parse_dataset_decodes_the_source_pixels_in_file_order(digits, tmp_path):
    images, labels = digits
    split_dir = tmp_path / "Split-train"
    split_dir.mkdir()
    _write_digits_split(split_dir / "data-00000-of-00002.gz", images[:100], labels[:100])
    _write_digits_split(split_dir / "data-00001-of-00002.gz", images[100:150], labels[100:150])

    decoded = list(parse_dataset(split_file_pattern(str(tmp_path), "train"), (8, 8, 1)))

    assert len(decoded) == 150
    got_images = np.stack([image.numpy() for image, _ in decoded])
    got_labels = np.array([label.numpy() for _, label in decoded])
    assert got_images.dtype == np.float32 and got_images.shape == (150, 8, 8, 1)
    np.testing.assert_array_equal(got_images[..., 0], images[:150].astype(np.float32))
    np.testing.assert_array_equal(got_labels, labels[:150])


def test_parse_dataset_turns_grey_into_rgb_when_asked(digits, tmp_path):
    images, labels = digits
    _write_digits_split(tmp_path / "grey.gz", images[:3], labels[:3])
    decoded = next(iter(parse_dataset(str(tmp_path / "grey.gz"), (8, 8, 3))))[0].numpy()
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], images[0])


def test_parse_dataset_fails_on_a_wrong_shape(digits, tmp_path):
    images, labels = digits
    _write_digits_split(tmp_path / "d.gz", images[:2], labels[:2])
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(parse_dataset(str(tmp_path / "d.gz"), (28, 28, 1)))


def test_parse_dataset_errors_name_the_bad_value(tmp_path):
    with pytest.raises(ValueError, match="no file matches"):
        parse_dataset(str(tmp_path / "missing-*.gz"), (8, 8, 1))
    with pytest.raises(ValueError, match="image_shape"):
        parse_dataset(str(tmp_path / "x.gz"), (8, 8, 2))


def test_split_file_pattern_follows_the_tfx_layout():
    assert split_file_pattern("/data/ex", "val") == "/data/ex/Split-val/*.gz"
    with pytest.raises(ValueError, match="'eval'"):
        split_file_pattern("/data/ex", "eval")


def test_read_class_info_round_trips_and_explains_a_missing_file(tmp_path):
    info = {"class_names": ["a", "b"], "counts": {"train": [5, 1], "val": [1, 1], "test": [2, 2]}}
    (tmp_path / CLASS_INFO_FILE).write_text(json.dumps(info))
    assert read_class_info(str(tmp_path)) == info
    with pytest.raises(FileNotFoundError, match="class_info.json"):
        read_class_info(str(tmp_path / "nowhere"))
