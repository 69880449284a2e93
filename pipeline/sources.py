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

The types they yield and the conversion of images are `pipeline.source_types`; idx files and TFDS
datasets are `pipeline.idx_source` and `pipeline.tfds_source`; image folders are read here.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from pipeline.idx_source import idx_source
from pipeline.source_types import (
    ORIGINS,
    SkippedFile,
    Source,
    SourceImage,
    chunks,
    image_from_file_bytes,
)
from pipeline.tfds_source import tfds_source

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

_FILES_PER_UNIT = 1000

_LOG = logging.getLogger(__name__)


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
        return image_from_file_bytes(data, rel_path, label, origin)
    except UnidentifiedImageError:
        return SkippedFile(rel_path, label, path, "not an image format Pillow can identify")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return SkippedFile(rel_path, label, path, f"{type(e).__name__}: {e}")


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
            return idx_source(spec, fashion_mnist_dir, FASHION_MNIST_CLASS_NAMES)
        _LOG.info("%s has no Fashion-MNIST files; using TFDS fashion_mnist", fashion_mnist_dir)
        return tfds_source(
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
        return idx_source(spec, arg, None)
    if kind == "tfds" and arg:
        return tfds_source(spec, arg, tfds_data_dir)
    raise ValueError(
        f"source = {spec!r}: expected fashion_mnist, tfds:NAME, folder:PATH or idx:DIR"
    )


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
    units = tuple(FolderUnit(root, chunk) for chunk in chunks(files, _FILES_PER_UNIT))
    return Source(spec, root, class_names, units, len(files), split_trees, ignored)
