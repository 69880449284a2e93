"""lade_tf.records: the example encoding against TensorFlow's own protobuf, and the reader on real
digits written by TensorFlow's own TFRecord writer (no TFX or Beam here)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import tensorflow as tf

from lade_tf.records import (
    CLASS_INFO_FILE,
    decode_example,
    encode_example,
    iter_tfrecords,
    masked_crc32c,
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


# ---------------------------------------------------------------- reading without TensorFlow


def test_iter_tfrecords_reads_what_tensorflow_wrote_and_reads(digits, tmp_path):
    images, labels = digits
    _write_digits_split(tmp_path / "d.gz", images[:40], labels[:40])
    ours = list(iter_tfrecords(str(tmp_path / "d.gz")))
    theirs = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "d.gz"), "GZIP")]
    assert ours == theirs and len(ours) == 40
    # The NumPy reference of the masked CRC-32C TensorFlow computes (tf.io has no direct op):
    # the 4 bytes after the 8-byte length of the first record.
    raw = gzip.decompress((tmp_path / "d.gz").read_bytes())
    assert struct.unpack("<I", raw[8:12])[0] == masked_crc32c(raw[:8])
    assert masked_crc32c(b"123456789") == _masked_reference(0xE3069283)  # CRC-32C check value


def _masked_reference(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_iter_tfrecords_names_a_corrupt_or_truncated_record(digits, tmp_path):
    images, labels = digits
    with tf.io.TFRecordWriter(str(tmp_path / "plain")) as writer:
        for image, label in zip(images[:3], labels[:3]):
            writer.write(_reference_example(tf.io.encode_png(image[..., None]).numpy(), label))
    raw = bytearray((tmp_path / "plain").read_bytes())
    corrupt = bytearray(raw)
    corrupt[40] ^= 0xFF  # inside the first record's data
    (tmp_path / "corrupt").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="record 0: data checksum mismatch"):
        list(iter_tfrecords(str(tmp_path / "corrupt"), compression=""))
    assert len(list(iter_tfrecords(str(tmp_path / "corrupt"), compression="", verify=False))) == 3
    (tmp_path / "short").write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match="truncated TFRecord file"):
        list(iter_tfrecords(str(tmp_path / "short"), compression=""))
    with pytest.raises(ValueError, match="compression = 'ZLIB'"):
        list(iter_tfrecords(str(tmp_path / "plain"), compression="ZLIB"))


def test_decode_example_inverts_tensorflow_examples_with_other_features():
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG.."])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[2**40])),
                "weight": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, 2.0])),
                "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[-3, 7])),
            }
        )
    ).SerializeToString()
    assert decode_example(example) == (b"\x89PNG..", 2**40)
    assert decode_example(encode_example(b"jpeg", 9)) == (b"jpeg", 9)
    with pytest.raises(ValueError, match="no single int64 feature 'label'"):
        decode_example(_reference_example(b"x", 1).replace(b"label", b"lab_l"))
    with pytest.raises(ValueError, match="not a serialized tf.train.Example"):
        decode_example(b"\x0a\xff")
