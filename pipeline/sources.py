"""Image sources for data preparation: resolve a `--source` string, split it into read units, read.

`resolve_source` runs once in the driver: it checks the paths, finds the class names and builds
small picklable read units. Beam workers call `unit.read()`, which yields a `SourceImage` (encoded
PNG or JPEG bytes or raw pixels, shape, label) per image and a `SkippedFile` per image file that
cannot be read (a dangling link, not a regular file) or decoded (corrupt, truncated);
`conform_image` turns a selected image into the bytes that are stored.

Sources (`--source`):
    fashion_mnist   the Debian files in /usr/share/datasets/fashion-mnist (apt-get install
                    dataset-fashion-mnist), else TFDS fashion_mnist
    tfds:NAME       a TFDS image classification dataset: supervised keys (image, label), or an
                    Image feature "image" and a ClassLabel feature "label"; downloaded and
                    prepared on first use unless --tfds-data-dir already holds it
    folder:PATH     one sub-folder per class, in PATH/train + PATH/test or in PATH itself (then
                    the test split is drawn with --test-fraction); PNG, JPEG, BMP, GIF
    idx:DIR         MNIST-format idx files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]

Paths are read with plain file I/O: with a multi-machine runner they must be on a file system
every worker mounts.

Stored bytes: PNG and JPEG files in grey (L) or RGB mode are kept byte for byte; other formats and
modes are converted to grey or RGB, and raw arrays (idx, TFDS) are kept as pixels until the image is
selected (most of a source is not), then encoded as PNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import gzip
import io
import logging
import os
import socket
import stat
import struct
import urllib.request
import zlib
from typing import Iterator, NamedTuple, Sequence
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
ORIGINS = ("train", "test")

_FILES_PER_UNIT = 1000
_IDX_IMAGES_PER_UNIT = 5000
_TFDS_EXAMPLES_PER_UNIT = 5000
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_DOWNLOAD_PROBE_SECONDS = 5.0

_LOG = logging.getLogger(__name__)


class SourceImage(NamedTuple):
    """One readable image: `key` is unique within the source and stable across runs (a relative
    path or split/index); `origin` is "train" (the pool for train and val) or "test"; `data` is
    PNG or JPEG bytes, or uint8 pixels [H, W] / [H, W, 3], of a `height` x `width` image with
    `channels` 1 (grey) or 3 (RGB)."""

    key: str
    label: int
    origin: str
    data: bytes | np.ndarray
    height: int
    width: int
    channels: int


class SkippedFile(NamedTuple):
    """An image file that could not be read or decoded, with the reason."""

    key: str
    label: int
    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class FolderUnit:
    """Image files under `root`: (relative path, label, origin) triples."""

    root: str
    files: tuple[tuple[str, int, str], ...]

    def read(self) -> Iterator[SourceImage | SkippedFile]:
        """Yields a SourceImage per decodable file and a SkippedFile (logged) per file that cannot
        be read or decoded."""
        for rel_path, label, origin in self.files:
            path = os.path.join(self.root, rel_path)
            try:
                data = _read_regular_file(path)
            except OSError as e:
                image = SkippedFile(rel_path, label, path, _unreadable_reason(path, e))
            else:
                image = _decode_image_file(data, rel_path, label, origin, path)
            if isinstance(image, SkippedFile):
                _LOG.warning("skipping image file %s (%s)", path, image.reason)
            yield image


def _read_regular_file(path: str) -> bytes:
    """The bytes of a regular file (following links); OSError for anything else, so a FIFO named
    like an image is never opened (it would block)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    with open(path, "rb") as f:
        return f.read()


def _unreadable_reason(path: str, error: OSError) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return f"cannot be read: dangling symbolic link to {os.readlink(path)!r}"
    return f"cannot be read: {error.strerror or error}"


def _decode_image_file(
    data: bytes, rel_path: str, label: int, origin: str, path: str
) -> SourceImage | SkippedFile:
    try:
        return _image_from_file_bytes(data, rel_path, label, origin)
    except UnidentifiedImageError:
        return SkippedFile(rel_path, label, path, "not an image format Pillow can identify")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return SkippedFile(rel_path, label, path, f"{type(e).__name__}: {e}")


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
            yield _image_from_pixels(
                pixels, f"{self.origin}/{self.start + offset:06d}", int(label), self.origin
            )


@dataclasses.dataclass(frozen=True)
class TfdsUnit:
    """Examples [start, stop) of one split of a prepared TFDS dataset."""

    name: str
    data_dir: str | None
    split: str
    origin: str
    start: int
    stop: int
    image_key: str = "image"
    label_key: str = "label"

    def read(self) -> Iterator[SourceImage]:
        """Yields the unit's images as pixels, keyed `<split>/<index>`."""
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.name, data_dir=self.data_dir)
        dataset = builder.as_dataset(
            split=f"{self.split}[{self.start}:{self.stop}]", shuffle_files=False
        )
        for offset, example in enumerate(tfds.as_numpy(dataset)):
            key = f"{self.split}/{self.start + offset:07d}"
            yield _image_from_pixels(
                example[self.image_key], key, int(example[self.label_key]), self.origin
            )


ReadUnit = FolderUnit | IdxUnit | TfdsUnit


def read_unit(unit: ReadUnit) -> Iterator[SourceImage | SkippedFile]:
    """`unit.read()` as a plain function, for `beam.FlatMap`."""
    return unit.read()


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved source: class names (index = label), read units and what the listing found.

    Attributes:
        spec: the `--source` string as given.
        description: what was actually opened (a path or a TFDS name).
        class_names: names indexed by label.
        units: picklable read units (`unit.read()` runs on Beam workers).
        num_images: images (or image files) listed, train pool and test together.
        has_test_split: whether the source has its own test split (else --test-fraction).
        ignored_files: files skipped because they are not images (by extension).
    """

    spec: str
    description: str
    class_names: tuple[str, ...]
    units: tuple[ReadUnit, ...]
    num_images: int
    has_test_split: bool
    ignored_files: int = 0


def resolve_source(
    spec: str, *, tfds_data_dir: str | None = None, fashion_mnist_dir: str | None = None
) -> Source:
    """Checks a `--source` string and lists what it holds (driver side; reads no image, but reads
    idx files through once to check that they are intact).

    Args:
        spec: "fashion_mnist", "tfds:NAME", "folder:PATH" or "idx:DIR".
        tfds_data_dir: TFDS data directory (TFDS default when None).
        fashion_mnist_dir: where the Debian Fashion-MNIST idx files are looked for (default
            FASHION_MNIST_DIR).

    Raises:
        ValueError: unknown source kind, missing path or files, a corrupt or truncated idx file,
            an empty class folder, class folders that differ between train/ and test/, an
            unknown TFDS dataset or one that is not prepared and cannot be downloaded (offline),
            or fewer than two classes. The message names the bad value.
    """
    kind, _, arg = spec.partition(":")
    if spec == "fashion_mnist":
        fashion_mnist_dir = fashion_mnist_dir or FASHION_MNIST_DIR
        if os.path.exists(os.path.join(fashion_mnist_dir, "train-images-idx3-ubyte.gz")):
            return _idx_source(spec, fashion_mnist_dir, FASHION_MNIST_CLASS_NAMES)
        _LOG.info("%s has no Fashion-MNIST files; using TFDS fashion_mnist", fashion_mnist_dir)
        return _tfds_source(
            spec,
            "fashion_mnist",
            tfds_data_dir,
            missing=(f"{fashion_mnist_dir} has no Fashion-MNIST files, and "),
            install_hint=(
                "install Debian's copy with `apt-get install dataset-fashion-mnist`, or "
            ),
        )
    if kind == "folder" and arg:
        return _folder_source(spec, arg)
    if kind == "idx" and arg:
        return _idx_source(spec, arg, None)
    if kind == "tfds" and arg:
        return _tfds_source(spec, arg, tfds_data_dir)
    raise ValueError(
        f"source = {spec!r}: expected fashion_mnist, tfds:NAME, folder:PATH or idx:DIR"
    )


def _chunks(items: Sequence, size: int) -> list[tuple]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def _list_class_folders(tree: str) -> dict[str, tuple[list[str], int]]:
    """{class folder name: (sorted image paths relative to the tree, non-image file count)}."""
    classes = {}
    for entry in sorted(os.scandir(tree), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        images, ignored = [], 0
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                rel = os.path.relpath(os.path.join(dirpath, name), tree)
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    images.append(rel)
                else:
                    ignored += 1
        if not images:
            raise ValueError(
                f"class folder {entry.path!r} contains no image files "
                f"(expected {', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
        classes[entry.name] = (images, ignored)
    return classes


def _folder_source(spec: str, path: str) -> Source:
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise ValueError(f"source {spec!r}: folder {root!r} does not exist")
    present = [o for o in ORIGINS if os.path.isdir(os.path.join(root, o))]
    if len(present) == 1:
        raise ValueError(
            f"source {spec!r}: {root!r} has {present[0]}/ but no "
            f"{({'train', 'test'} - set(present)).pop()}/; give both, or put the "
            "class folders directly in it and pass --test-fraction"
        )
    split_trees = len(present) == 2
    trees = {o: os.path.join(root, o) for o in ORIGINS} if split_trees else {"train": root}
    listed = {origin: _list_class_folders(tree) for origin, tree in trees.items()}
    class_names = tuple(sorted(listed["train"]))
    if split_trees and set(listed["test"]) != set(class_names):
        only_train = sorted(set(class_names) - set(listed["test"]))
        only_test = sorted(set(listed["test"]) - set(class_names))
        raise ValueError(
            f"source {spec!r}: train/ and test/ must hold the same class folders; only in train: "
            f"{only_train}, only in test: {only_test}"
        )
    if len(class_names) < 2:
        raise ValueError(
            f"source {spec!r}: found {len(class_names)} class folder(s) in {trees['train']!r}; "
            "expected one sub-folder per class, at least two"
        )
    files, ignored = [], 0
    for origin, classes in listed.items():
        prefix = origin if split_trees else ""
        for label, name in enumerate(class_names):
            images, n_ignored = classes[name]
            files.extend((os.path.join(prefix, rel), label, origin) for rel in images)
            ignored += n_ignored
    units = tuple(FolderUnit(root, chunk) for chunk in _chunks(files, _FILES_PER_UNIT))
    return Source(spec, root, class_names, units, len(files), split_trees, ignored)


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


def _idx_source(spec: str, directory: str, class_names: Sequence[str] | None) -> Source:
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


def _unreachable_download_host(builder) -> str | None:
    """The first download host of a TFDS dataset that cannot be reached, as "host (reason)", or
    None when all can (or when a proxy is configured, which may reach what this machine cannot).

    Offline, TFDS retries every download for minutes before it fails; this takes seconds.
    """
    if urllib.request.getproxies():
        return None
    hosts = {}
    for url in builder.url_infos or {}:
        parts = urlsplit(url)
        if parts.hostname:
            hosts.setdefault(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    for host, port in hosts.items():
        try:
            socket.create_connection((host, port), timeout=_DOWNLOAD_PROBE_SECONDS).close()
        except OSError as error:
            return f"{host} ({getattr(error, 'strerror', None) or error})"
    return None


def _prepare_tfds(spec: str, builder, missing: str, install_hint: str) -> None:
    """Downloads and prepares a TFDS dataset unless its data directory already holds it.

    Args:
        spec: the --source string, for messages.
        builder: the dataset's TFDS builder.
        missing: what else is missing, said before the dataset (e.g. Debian's files).
        install_hint: another way to get the data, said before the TFDS one.

    Raises:
        ValueError: the dataset is not prepared and cannot be downloaded (its download host is
            unreachable, or the download or preparation failed); says how to get it.
    """
    if builder.is_prepared():
        return
    missing = (
        f"source {spec!r}: {missing}TFDS dataset {builder.name!r} is not prepared in "
        f"{os.fspath(builder.data_dir_root)!r}"
    )
    how = (
        f'{install_hint}prepare it on a machine with network access (python -c "import '
        f"tensorflow_datasets as tfds; tfds.builder('{builder.name}', data_dir='DIR')"
        '.download_and_prepare()") and pass --tfds-data-dir DIR'
    )
    unreachable = _unreachable_download_host(builder)
    if unreachable is not None:
        raise ValueError(
            f"{missing} and cannot be downloaded: {unreachable} cannot be reached (offline?); {how}"
        )
    try:
        builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001 - whatever TFDS raises, the user gets one line
        _LOG.debug("TFDS download_and_prepare of %s failed", builder.name, exc_info=True)
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ValueError(
            f"{missing}, and downloading it failed ({type(error).__name__}: {reason}); {how}"
        ) from None


def _tfds_source(
    spec: str, name: str, data_dir: str | None, missing: str = "", install_hint: str = ""
) -> Source:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"source {spec!r}: {missing}the TFDS package is not installed; "
            f"{install_hint}pip install tensorflow-datasets"
        ) from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
        raise ValueError(
            f"source {spec!r}: unknown TFDS dataset {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        ) from None
    _prepare_tfds(spec, builder, missing, install_hint)
    info = builder.info
    keys = info.supervised_keys
    image_key, label_key = keys if keys and len(keys) == 2 else ("image", "label")
    features = info.features
    names = set(features.keys())
    if not (
        image_key in names
        and isinstance(features[image_key], tfds.features.Image)
        and label_key in names
        and isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise ValueError(
            f"source {spec!r}: TFDS dataset {name!r} is not an image classification "
            f"dataset: expected an Image feature {image_key!r} and a ClassLabel "
            f"feature {label_key!r}, got {sorted(features.keys())}"
        )
    if "train" not in info.splits:
        raise ValueError(
            f"source {spec!r}: TFDS dataset {name!r} has no 'train' split "
            f"(splits: {sorted(info.splits)})"
        )
    units, total = [], 0
    origins = {"train": "train", "test": "test"} if "test" in info.splits else {"train": "train"}
    for split, origin in origins.items():
        n = info.splits[split].num_examples
        units += [
            TfdsUnit(
                name,
                data_dir,
                split,
                origin,
                start,
                min(start + _TFDS_EXAMPLES_PER_UNIT, n),
                image_key,
                label_key,
            )
            for start in range(0, n, _TFDS_EXAMPLES_PER_UNIT)
        ]
        total += n
    class_names = tuple(features[label_key].names)
    return Source(spec, f"tfds:{name}", class_names, tuple(units), total, "test" in origins)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image [H, W] or [H, W, 1] (grey) or [H, W, 3] (RGB)."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_from_pixels(pixels: np.ndarray, key: str, label: int, origin: str) -> SourceImage:
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    return SourceImage(key, label, origin, pixels, pixels.shape[0], pixels.shape[1], channels)


def _to_grey_or_rgb(image: Image.Image) -> Image.Image:
    """Grey (L) for single-channel modes (16-bit and float scaled to 0..255), RGB otherwise."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray(np.round(np.asarray(image, np.float64) / 257.0).astype(np.uint8))
    if image.mode in ("I", "F"):
        pixels = np.clip(np.round(np.asarray(image, np.float64)), 0, 255)
        return Image.fromarray(pixels.astype(np.uint8))
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")


def _image_from_file_bytes(data: bytes, key: str, label: int, origin: str) -> SourceImage:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes fully, so truncated files fail here and not later in training
    if image.format in ("PNG", "JPEG") and image.mode in ("L", "RGB"):
        kept = data
    else:
        image = _to_grey_or_rgb(image)
        kept = np.asarray(image)
    channels = 1 if image.mode == "L" else 3
    return SourceImage(key, label, origin, kept, image.height, image.width, channels)


def conform_image(image: SourceImage, height: int, width: int, channels: int) -> bytes:
    """The bytes to store for an image: its PNG/JPEG bytes if it has the target shape, else PNG.

    Raw pixels are encoded as PNG; grey images become RGB when `channels` is 3 (a grey/RGB mix);
    images of another size are resized (bilinear) when the caller asked for a fixed size.

    Raises:
        ValueError: if an RGB image is asked to become grey (the preparation never does that).
    """
    if image.channels > channels:
        raise ValueError(f"image {image.key!r} has {image.channels} channels, expected {channels}")
    same_shape = (image.height, image.width, image.channels) == (height, width, channels)
    if isinstance(image.data, np.ndarray):
        if same_shape:
            return encode_png(image.data)
        decoded = Image.fromarray(image.data)
    elif same_shape:
        return image.data
    else:
        decoded = Image.open(io.BytesIO(image.data))
    decoded = decoded.convert("RGB" if channels == 3 else "L")
    if decoded.size != (width, height):
        decoded = decoded.resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    decoded.save(buffer, format="PNG")
    return buffer.getvalue()
