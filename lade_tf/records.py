"""The on-disk example format: gzip TFRecord files of `tf.train.Example` in TFX's Examples layout.

Layout of an examples directory (a TFX `Examples` artifact URI or `pipeline.prepare --output-dir`):

    <dir>/Split-train/*.gz   long-tailed training split
    <dir>/Split-val/*.gz     balanced validation split (may hold one empty file)
    <dir>/Split-test/*.gz    the source's official test split, untouched
    <dir>/class_info.json    class names, counts per split, image shape, how the data was made

Each example has two features: `image` (bytes, an encoded PNG or JPEG) and `label` (int64).
TensorFlow is imported only inside the functions that need it: code which only writes examples
(Beam workers) does not pay the TensorFlow import, and `read_split` (with `read_class_info` on
local paths) reads the files without TensorFlow at all, for `python -m lade_tf.train` on JAX.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import numbers
import os
import struct
from typing import BinaryIO, Iterator, Sequence

import numpy as np

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
        image = tf.ensure_shape(decode_image_tensor(example[IMAGE_KEY], shape[-1]), shape)
        return tf.cast(image, tf.float32), example[LABEL_KEY]

    records = tf.data.TFRecordDataset(files, compression_type=compression)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def decode_image_tensor(image_bytes, channels: int):
    """uint8 [H, W, channels] tensor of one PNG or JPEG (a scalar string tensor), in TensorFlow.

    JPEG is decoded with the accurate integer DCT (libjpeg's default, which Pillow uses) rather
    than TensorFlow's default fast DCT: the training pipeline, the exported model's image input,
    the REST client (Pillow) and `read_split` then see the same pixels for the same file (the
    fast DCT differs by up to 5 levels on about 65 % of CIFAR-10 pixels).
    """
    import tensorflow as tf

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=channels, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(
            image_bytes, channels=channels, dtype=tf.uint8, expand_animations=False
        ),
    )


def read_class_info(examples_dir: str) -> dict:
    """The `class_info.json` of an examples directory, as a dict.

    Keys: class_names, counts ({split: [count per label]}), height, width, channels, source,
    profile, imbalance_ratio, n_max, val_per_class, seed, class_order (labels from most to least
    frequent in train), skipped_files ([{path, reason}]), num_skipped, warnings.

    Raises:
        FileNotFoundError: if the directory has no class_info.json (not a prepared examples dir,
            or a preparation that did not finish).
    """
    path = os.path.join(examples_dir, CLASS_INFO_FILE)
    if "://" not in path:  # local: no TensorFlow needed
        exists, opener = os.path.exists, open
    else:  # gs://, s3://, ram://...: TensorFlow's file systems
        import tensorflow as tf

        exists, opener = tf.io.gfile.exists, tf.io.gfile.GFile
    if not exists(path):
        raise FileNotFoundError(
            f"{path} not found: expected a directory written by pipeline.prepare or "
            "LongTailExampleGen (its class_info.json is written last)"
        )
    with opener(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- reading without TF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum of `data`: CRC-32C (Castagnoli), rotated and offset ("masked")."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_exactly(stream: BinaryIO, size: int, path: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError(f"{path}: truncated TFRecord file ({what}: {len(data)} of {size} bytes)")
    return data


def iter_tfrecords(path: str, *, compression: str = "GZIP", verify: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file, in order, without TensorFlow.

    Framing per record: uint64 length, uint32 masked CRC-32C of the length, the data, uint32
    masked CRC-32C of the data (all little-endian).

    Args:
        path: a local file.
        compression: "GZIP" (what `pipeline.prepare` writes) or "" (uncompressed).
        verify: check both checksums of every record (pure Python, a few MB/s of record data);
            the length checksum is always checked, as it guards the framing itself.

    Raises:
        ValueError: for an unknown compression, a truncated file or a checksum mismatch (the
            message names the file and the record index).
    """
    if compression not in ("GZIP", ""):
        raise ValueError(f"compression = {compression!r}: expected 'GZIP' or ''")
    opener = gzip.open if compression == "GZIP" else open
    with opener(path, "rb") as stream:
        index = 0
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) != 12:
                raise ValueError(f"{path}: truncated TFRecord file (record {index} header)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if masked_crc32c(length_bytes) != length_crc:
                raise ValueError(f"{path}: record {index}: length checksum mismatch")
            (length,) = struct.unpack("<Q", length_bytes)
            data = _read_exactly(stream, length, path, f"record {index}")
            (data_crc,) = struct.unpack("<I", _read_exactly(stream, 4, path, f"record {index}"))
            if verify and masked_crc32c(data) != data_crc:
                raise ValueError(f"{path}: record {index}: data checksum mismatch")
            yield data
            index += 1


def _read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(buffer):
            raise ValueError("truncated varint")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message: bytes for length-delimited
    fields, the integer for varints; fixed-width fields are skipped over as bytes."""
    position = 0
    while position < len(buffer):
        key, position = _read_varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _read_varint(buffer, position)
        elif wire_type == 2:
            size, position = _read_varint(buffer, position)
            value = buffer[position : position + size]
            if len(value) != size:
                raise ValueError("truncated length-delimited field")
            position += size
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = buffer[position : position + size], position + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


def _feature_values(feature: bytes) -> tuple[str, list]:
    """("bytes", [...]) or ("int64", [...]) or ("float", [...]) of a serialized tf.train.Feature."""
    for kind, wire_type, payload in _fields(feature):
        if kind == 1:  # BytesList
            return "bytes", [bytes(v) for n, _, v in _fields(payload) if n == 1]
        if kind == 2:  # FloatList (packed)
            values = [v for n, _, v in _fields(payload) if n == 1]
            return "float", [x for v in values for x in struct.unpack(f"<{len(v) // 4}f", v)]
        if kind == 3:  # Int64List, packed (as TensorFlow writes) or not
            values = []
            for number, inner_type, value in _fields(payload):
                if number != 1:
                    continue
                if inner_type == 2:
                    position = 0
                    while position < len(value):
                        item, position = _read_varint(value, position)
                        values.append(item)
                else:
                    values.append(value)
            return "int64", [v - (1 << 64) if v >= 1 << 63 else v for v in values]
    return "empty", []


def decode_example(serialized: bytes) -> tuple[bytes, int]:
    """(image bytes, label) of a serialized `tf.train.Example`, parsed without TensorFlow.

    The inverse of `encode_example` for any Example with one `image` bytes value and one `label`
    int64 value (other features are ignored).

    Raises:
        ValueError: for bytes that are not such an Example (the message says what is missing).
    """
    features: dict[str, tuple[str, list]] = {}
    try:
        for number, _, message in _fields(serialized):
            if number != 1:
                continue
            for entry_number, _, entry in _fields(message):
                if entry_number != 1:
                    continue
                parts = {n: v for n, _, v in _fields(entry)}
                features[bytes(parts.get(1, b"")).decode()] = _feature_values(parts.get(2, b""))
    except (ValueError, UnicodeDecodeError, struct.error) as error:
        raise ValueError(f"not a serialized tf.train.Example ({error})") from error
    image, label = features.get(IMAGE_KEY), features.get(LABEL_KEY)
    if image is None or image[0] != "bytes" or len(image[1]) != 1:
        raise ValueError(f"example has no single bytes feature {IMAGE_KEY!r}: {image!r:.80}")
    if label is None or label[0] != "int64" or len(label[1]) != 1:
        raise ValueError(f"example has no single int64 feature {LABEL_KEY!r}: {label!r:.80}")
    return image[1][0], int(label[1][0])


def decode_image(image_bytes: bytes, image_shape: Sequence[int]) -> np.ndarray:
    """uint8 [H, W, C] pixels of PNG or JPEG bytes (Pillow), grey or RGB as C asks.

    Raises:
        ValueError: if the bytes are not an image Pillow reads, or it is not `image_shape`.
    """
    from PIL import Image, UnidentifiedImageError

    height, width, channels = (int(d) for d in image_shape)
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"image bytes could not be decoded ({error})") from error
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
    if pixels.shape != (height, width, channels):
        raise ValueError(f"decoded image shape {pixels.shape}: expected {tuple(image_shape)}")
    return pixels


def read_split(
    examples_dir: str,
    split: str,
    image_shape: Sequence[int] | None = None,
    *,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One split of an examples directory as NumPy arrays, without TensorFlow.

    The same examples in the same order as `parse_dataset(split_file_pattern(...))`: files in
    sorted name order, records in file order. Local directories only (TensorFlow's file systems
    such as gs:// need `parse_dataset`).

    Args:
        examples_dir: a directory written by `pipeline.prepare` (or a TFX Examples artifact URI).
        split: "train", "val" or "test".
        image_shape: (H, W, C); default the class_info.json's.
        verify: check every record's checksum (see `iter_tfrecords`).

    Returns:
        (images uint8 [N, H, W, C], labels int64 [N]); N may be 0 (an empty val split).

    Raises:
        ValueError: for a remote path, a split without files, or a record or image that cannot
            be read (the message names the file and record).
    """
    if "://" in examples_dir:
        raise ValueError(
            f"examples_dir = {examples_dir!r}: read_split reads local directories; use "
            "parse_dataset (TensorFlow) for remote file systems"
        )
    if image_shape is None:
        info = read_class_info(examples_dir)
        image_shape = (info["height"], info["width"], info["channels"])
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[-1] not in (1, 3):
        raise ValueError(
            f"image_shape = {tuple(image_shape)!r}: expected (H, W, C) with C in (1, 3)"
        )
    pattern = split_file_pattern(examples_dir, split)
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"file_pattern = {pattern!r}: no file matches")
    images, labels = [], []
    for path in files:
        for index, record in enumerate(iter_tfrecords(path, verify=verify)):
            try:
                image_bytes, label = decode_example(record)
                images.append(decode_image(image_bytes, shape))
            except ValueError as error:
                raise ValueError(f"{path}: record {index}: {error}") from error
            labels.append(label)
    if not images:
        return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, np.int64)
