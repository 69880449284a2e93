"""MNIST-format idx files as an image source (`idx:DIR`, and Debian's Fashion-MNIST files):
checked through once on the driver (gzip CRC, header sizes), read in slices on Beam workers."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import struct
import zlib
from typing import Iterator, Sequence

import numpy as np

from pipeline.source_types import ORIGINS, Source, SourceImage, image_from_pixels

_IDX_IMAGES_PER_UNIT = 5000
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


@dataclasses.dataclass(frozen=True)
class IdxUnit:
    """Images [start, stop) of one idx images file and its labels file."""

    images_path: str
    labels_path: str
    origin: str
    start: int
    stop: int

    def read(self) -> Iterator[SourceImage]:
        """Yields the unit's images encoded as PNG, keyed `<origin>/<index>`."""
        labels = read_idx(self.labels_path)[self.start : self.stop]
        images = read_idx(self.images_path, self.start, self.stop)
        for offset, (pixels, label) in enumerate(zip(images, labels)):
            yield image_from_pixels(
                pixels, f"{self.origin}/{self.start + offset:06d}", int(label), self.origin
            )


def _find_idx_file(directory: str, origin: str, kind: str) -> str:
    candidates = [
        os.path.join(directory, f"{prefix}-{kind}-ubyte{ext}")
        for prefix in _IDX_PREFIXES[origin]
        for ext in (".gz", "")
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    names = [os.path.basename(c) for c in candidates]
    raise ValueError(f"idx source {directory!r}: none of {names} exists")


def _open_maybe_gzip(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@contextlib.contextmanager
def _idx_errors(path: str) -> Iterator[None]:
    """Turns the errors of reading an idx file into ValueErrors that name the file."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(
            f"idx file {path!r} is corrupt or truncated ({error}); replace it with a complete copy"
        ) from None
    except OSError as error:
        raise ValueError(f"idx file {path!r} cannot be read ({error.strerror or error})") from None


def _check_idx_length(path: str, dims: Sequence[int]) -> None:
    """Reads an idx file to the end: its data must be as long as its header says, and a gzip
    file must be intact (CRC and length are checked only at the end of the stream).

    Raises:
        ValueError: a corrupt or truncated file.
    """
    expected = 4 + 4 * len(dims) + int(np.prod(dims, dtype=np.int64))
    with _idx_errors(path):
        if not path.endswith(".gz"):
            size = os.path.getsize(path)
        else:
            size = 0
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    size += len(chunk)
    if size < expected:
        raise ValueError(
            f"idx file {path!r} is truncated: its header says {list(dims)}, which "
            f"takes {expected} bytes, but it holds {size}; replace it with a "
            "complete copy"
        )


def _idx_header(f, path: str) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != 0x08 or not 1 <= magic[3] <= 4:
        raise ValueError(f"{path!r} is not an unsigned-byte idx file (magic {magic!r})")
    dims = f.read(4 * magic[3])
    if len(dims) != 4 * magic[3]:
        raise ValueError(f"idx file {path!r} is truncated inside its header")
    return struct.unpack(f">{magic[3]}I", dims)


def read_idx(path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Items [start, stop) of an unsigned-byte idx file (optionally .gz) as uint8 [n, ...].

    Raises:
        ValueError: if the file is not an unsigned-byte idx file, is shorter than its header says,
            is a corrupt gzip file or cannot be read.
    """
    with _idx_errors(path), _open_maybe_gzip(path) as f:
        dims = _idx_header(f, path)
        stop = dims[0] if stop is None else min(stop, dims[0])
        item_size = int(np.prod(dims[1:], dtype=np.int64))
        f.seek(4 + 4 * len(dims) + start * item_size)
        count = max(0, stop - start)
        data = f.read(count * item_size)
    if len(data) != count * item_size:
        raise ValueError(
            f"idx file {path!r} is truncated: expected {count} items of {item_size} "
            "bytes; replace it with a complete copy"
        )
    return np.frombuffer(data, np.uint8).reshape((count,) + tuple(dims[1:]))


def idx_source(spec: str, directory: str, class_names: Sequence[str] | None) -> Source:
    if not os.path.isdir(directory):
        raise ValueError(f"source {spec!r}: directory {directory!r} does not exist")
    units, total, labels_seen = [], 0, set()
    for origin in ORIGINS:
        images_path = _find_idx_file(directory, origin, "images-idx3")
        labels_path = _find_idx_file(directory, origin, "labels-idx1")
        labels = read_idx(labels_path)
        with _idx_errors(images_path), _open_maybe_gzip(images_path) as f:
            dims = _idx_header(f, images_path)
        if (
            dims[0] != len(labels)
            or len(dims) not in (3, 4)
            or (len(dims) == 4 and dims[3] not in (1, 3))
        ):
            raise ValueError(
                f"idx source {directory!r}: {os.path.basename(images_path)} has shape {dims}, "
                f"expected [{len(labels)}, H, W] or [{len(labels)}, H, W, 1|3]"
            )
        _check_idx_length(images_path, dims)
        labels_seen.update(np.unique(labels).tolist())
        units += [
            IdxUnit(
                images_path, labels_path, origin, start, min(start + _IDX_IMAGES_PER_UNIT, dims[0])
            )
            for start in range(0, dims[0], _IDX_IMAGES_PER_UNIT)
        ]
        total += dims[0]
    num_classes = max(labels_seen) + 1
    if class_names is None:
        class_names = tuple(str(label) for label in range(num_classes))
    if num_classes > len(class_names) or num_classes < 2:
        raise ValueError(
            f"idx source {directory!r}: labels {sorted(labels_seen)} do not match "
            f"{len(class_names)} classes"
        )
    return Source(spec, os.path.abspath(directory), tuple(class_names), tuple(units), total, True)
