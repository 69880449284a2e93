"""pipeline.sources: listing and reading image folders (real digits, real CIFAR-10 JPEGs), idx
files (real Fashion-MNIST) and the errors for bad input. No Beam pipeline runs here."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.idx_source import IdxUnit, read_idx
from pipeline.source_types import SkippedFile, SourceImage, conform_image, read_unit
from pipeline.sources import FASHION_MNIST_CLASS_NAMES, FolderUnit, resolve_source


def _save(path: Path, pixels: np.ndarray, fmt: str, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **options)
    return path


def _read_all(source) -> list:
    return [item for unit in source.units for item in read_unit(unit)]


def _decode(data) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture()
def digits_tree(digits, tmp_path) -> Path:
    """Ten digits of each of classes 0-3 as PNGs, every fourth in test/, plus non-image files."""
    images, labels = digits
    root = tmp_path / "digits"
    for label in range(4):
        for n, i in enumerate(np.flatnonzero(labels == label)[:10]):
            origin = "test" if n % 4 == 0 else "train"
            _save(root / origin / f"class {label}" / f"{i:04d}.png", images[i], "PNG")
    for origin in ("train", "test"):
        (root / origin / "class 0" / "notes.txt").write_text("not an image")
        (root / origin / "class 0" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_classes_are_sorted_folder_names_and_non_images_are_ignored(digits, digits_tree):
    images, labels = digits
    source = resolve_source(f"folder:{digits_tree}")
    assert source.class_names == ("class 0", "class 1", "class 2", "class 3")
    assert source.has_test_split and source.num_images == 40 and source.ignored_files == 4
    read = _read_all(source)
    assert all(isinstance(item, SourceImage) for item in read) and len(read) == 40
    assert sum(item.origin == "test" for item in read) == 12
    for item in read:
        index = int(Path(item.key).stem)
        assert item.key.startswith(item.origin + "/")
        assert item.label == labels[index]
        assert (item.height, item.width, item.channels) == (8, 8, 1)
        # grey PNGs are kept byte for byte
        assert item.data == (digits_tree / item.key).read_bytes()
        np.testing.assert_array_equal(_decode(item.data), images[index])


def test_cifar_jpegs_are_kept_byte_for_byte_with_official_label_order(cifar10_dir, tmp_path):
    root = tmp_path / "cifar_small"
    for origin in ("train", "test"):
        for name in sorted(os.listdir(cifar10_dir / origin))[:3]:
            (root / origin / name).mkdir(parents=True)
            for jpg in sorted(os.listdir(cifar10_dir / origin / name))[:4]:
                shutil.copy(cifar10_dir / origin / name / jpg, root / origin / name / jpg)
    source = resolve_source(f"folder:{root}")
    assert source.class_names == ("airplane", "automobile", "bird")
    read = _read_all(source)
    assert len(read) == 24
    for item in read:
        assert (item.height, item.width, item.channels) == (32, 32, 3)
        assert item.data == (root / item.key).read_bytes()
        assert source.class_names[item.label] == Path(item.key).parent.name


def test_other_formats_and_modes_become_grey_or_rgb_pixels(digits, tmp_path):
    images, _ = digits
    grey = images[0]
    rgb = np.stack([images[1], images[2], images[3]], axis=-1)
    root = tmp_path / "formats"
    _save(root / "a" / "grey.bmp", grey, "BMP")
    _save(root / "a" / "rgba.png", np.dstack([rgb, np.full((8, 8), 255, np.uint8)]), "PNG")
    _save(root / "b" / "grey16.png", grey.astype(np.uint16) * 257, "PNG")
    _save(root / "b" / "rgb.gif", rgb, "GIF")
    source = resolve_source(
        f"folder:{root}",
    )
    # a single tree: no test split of its own
    assert not source.has_test_split
    read = {Path(item.key).name: item for item in _read_all(source)}
    np.testing.assert_array_equal(read["grey.bmp"].data, grey)
    assert read["grey.bmp"].channels == 1
    np.testing.assert_array_equal(read["rgba.png"].data, rgb)
    assert read["rgba.png"].channels == 3
    np.testing.assert_array_equal(read["grey16.png"].data, grey)
    gif = read["rgb.gif"]
    assert gif.channels == 3 and gif.data.shape == (8, 8, 3)
    # GIF has a 256-colour palette: compare against PIL's own palette conversion
    palette_rgb = np.asarray(Image.open(root / "b" / "rgb.gif").convert("RGB"))
    np.testing.assert_array_equal(gif.data, palette_rgb)


def test_corrupt_and_truncated_images_are_skipped_with_a_warning_naming_the_file(
    digits, tmp_path, caplog
):
    images, _ = digits
    root = tmp_path / "broken"
    good = _save(root / "a" / "good.png", images[0], "PNG")
    _save(root / "b" / "good.jpg", np.dstack([images[1]] * 3), "JPEG")
    truncated = root / "a" / "truncated.jpg"
    full = io.BytesIO()
    Image.fromarray(np.dstack([images[2]] * 3)).resize((64, 64)).save(full, format="JPEG")
    truncated.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    garbage = root / "b" / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    source = resolve_source(f"folder:{root}")
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        read = _read_all(source)
    skipped = sorted((i for i in read if isinstance(i, SkippedFile)), key=lambda s: s.path)
    assert [s.path for s in skipped] == [str(truncated), str(garbage)]
    assert "truncated" in skipped[0].reason.lower() and skipped[1].reason
    assert [s.label for s in skipped] == [0, 1]
    for path in (garbage, truncated):
        assert any(str(path) in record.getMessage() for record in caplog.records)
    assert sorted(i.key for i in read if isinstance(i, SourceImage)) == [
        os.path.relpath(good, root),
        "b/good.jpg",
    ]


def test_unreadable_files_are_skipped_like_corrupt_ones_and_folders_are_walked(
    digits, tmp_path, caplog
):
    images, _ = digits
    root = tmp_path / "unreadable"
    good = _save(root / "a" / "good.png", images[0], "PNG")
    _save(root / "b" / "good.png", images[1], "PNG")
    dangling = root / "a" / "gone.png"
    dangling.symlink_to(root / "a" / "deleted.png")
    fifo = root / "b" / "pipe.png"
    os.mkfifo(fifo)  # opening it would block until a writer came
    (root / "b" / "folder.jpg").mkdir()  # a folder named like an image is walked, not opened
    nested = _save(root / "b" / "folder.jpg" / "inner.png", images[2], "PNG")
    source = resolve_source(f"folder:{root}")
    assert source.num_images == 5
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        read = _read_all(source)
    skipped = {Path(s.path).name: s for s in read if isinstance(s, SkippedFile)}
    assert set(skipped) == {"gone.png", "pipe.png"}
    assert skipped["gone.png"].reason == (
        f"cannot be read: dangling symbolic link to {str(root / 'a' / 'deleted.png')!r}"
    )
    assert skipped["pipe.png"].reason == "cannot be read: not a regular file"
    assert [skipped[n].label for n in ("gone.png", "pipe.png")] == [0, 1]
    for path in (dangling, fifo):
        assert any(str(path) in record.getMessage() for record in caplog.records)
    assert sorted(i.key for i in read if isinstance(i, SourceImage)) == sorted(
        os.path.relpath(p, root) for p in (good, root / "b" / "good.png", nested)
    )


def _write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture()
def digits_idx(digits, tmp_path) -> Path:
    """The first 130 digits as gzip idx files: 100 train, 30 test."""
    images, labels = digits
    for prefix, part in (("train", slice(0, 100)), ("t10k", slice(100, 130))):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[part])
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
    return tmp_path


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "truncate_gzip",
            r"is corrupt or truncated \(Compressed file ended before the end-of-stream",
        ),
        ("flip_a_byte", r"is corrupt or truncated \((CRC check failed|Error -3)"),
        (
            "short_data",
            r"is truncated: its header says \[100, 8, 8\], which takes 6416 bytes, but "
            r"it holds 6415",
        ),
        ("not_gzip", r"is corrupt or truncated \(Not a gzipped file"),
    ],
)
def test_corrupt_or_truncated_idx_files_are_named_before_anything_is_read(
    digits_idx, damage, message
):
    path = digits_idx / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "truncate_gzip":
        data = data[: len(data) // 2]
    elif damage == "flip_a_byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "short_data":
        data = gzip.compress(gzip.decompress(bytes(data))[:-1])
    else:
        data = gzip.decompress(bytes(data))
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"idx file {str(path)!r} {message}"):
        resolve_source(f"idx:{digits_idx}")


def test_conform_image_converts_grey_to_rgb_and_resizes(digits):
    images, _ = digits
    grey_png = io.BytesIO()
    Image.fromarray(images[5]).save(grey_png, format="PNG")
    grey = SourceImage("k", 0, "train", grey_png.getvalue(), 8, 8, 1)
    assert conform_image(grey, 8, 8, 1) == grey.data
    as_rgb = _decode(conform_image(grey, 8, 8, 3))
    assert as_rgb.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(as_rgb[..., channel], images[5])
    pixels = SourceImage("k", 0, "train", images[5], 8, 8, 1)
    np.testing.assert_array_equal(_decode(conform_image(pixels, 8, 8, 1)), images[5])
    assert _decode(conform_image(pixels, 16, 12, 1)).shape == (16, 12)
    rgb = SourceImage("k", 0, "train", np.dstack([images[5]] * 3), 8, 8, 3)
    with pytest.raises(ValueError, match="3 channels"):
        conform_image(rgb, 8, 8, 1)


def _reference_idx(path: Path) -> np.ndarray:
    """Independent idx parser: big-endian header, then raw uint8."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(dims)


def test_fashion_mnist_idx_files_are_listed_and_read_exactly(fashion_mnist_dir):
    source = resolve_source("fashion_mnist", fashion_mnist_dir=str(fashion_mnist_dir))
    assert source.class_names == FASHION_MNIST_CLASS_NAMES
    assert source.num_images == 70_000 and source.has_test_split
    units = [u for u in source.units if isinstance(u, IdxUnit)]
    assert sum(u.stop - u.start for u in units) == 70_000
    reference = _reference_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")
    reference_labels = _reference_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    last_test_unit = [u for u in units if u.origin == "test"][-1]
    read = list(last_test_unit.read())
    assert len(read) == last_test_unit.stop - last_test_unit.start
    for offset in (0, 1, len(read) - 1):
        item = read[offset]
        index = last_test_unit.start + offset
        assert item.key == f"test/{index:06d}"
        assert item.label == reference_labels[index]
        np.testing.assert_array_equal(item.data, reference[index])
    np.testing.assert_array_equal(
        read_idx(str(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"), 9998, 10_005),
        reference[9998:],
    )


def test_idx_source_with_plain_files_and_numeric_class_names(digits, tmp_path):
    images, labels = digits

    def write(path: Path, array: np.ndarray):
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    write(tmp_path / "train-images-idx3-ubyte", images[:100])
    write(tmp_path / "train-labels-idx1-ubyte", labels[:100])
    write(tmp_path / "t10k-images-idx3-ubyte", images[100:130])
    write(tmp_path / "t10k-labels-idx1-ubyte", labels[100:130])
    source = resolve_source(f"idx:{tmp_path}")
    assert source.class_names == tuple(str(d) for d in range(10))
    read = _read_all(source)
    assert len(read) == 130
    for item in read:
        index = int(item.key.split("/")[1]) + (100 if item.origin == "test" else 0)
        np.testing.assert_array_equal(item.data, images[index])
        assert item.label == labels[index]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("folder:/no/such/folder", "does not exist"),
        ("idx:/no/such/dir", "does not exist"),
        ("imagenet", "expected fashion_mnist, tfds:NAME, folder:PATH or idx:DIR"),
        ("folder:", "expected fashion_mnist"),
    ],
)
def test_bad_source_strings_are_named(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve_source(spec)
    assert spec.split(":")[-1] in str(error.value)


def test_an_empty_class_folder_is_an_error_naming_it(digits, tmp_path):
    images, _ = digits
    _save(tmp_path / "train" / "a" / "0.png", images[0], "PNG")
    _save(tmp_path / "test" / "a" / "1.png", images[1], "PNG")
    _save(tmp_path / "test" / "b" / "2.png", images[2], "PNG")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder '.*train/b' contains no image files"):
        resolve_source(f"folder:{tmp_path}")


def test_train_and_test_trees_must_have_the_same_classes(digits, tmp_path):
    images, _ = digits
    for origin, name in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "c")]:
        _save(tmp_path / origin / name / "0.png", images[0], "PNG")
    with pytest.raises(ValueError, match=r"only in train: \['b'\], only in test: \['c'\]"):
        resolve_source(f"folder:{tmp_path}")


def test_a_train_tree_without_a_test_tree_is_an_error(digits, tmp_path):
    _save(tmp_path / "train" / "a" / "0.png", digits[0][0], "PNG")
    _save(tmp_path / "train" / "b" / "1.png", digits[0][1], "PNG")
    with pytest.raises(ValueError, match="has train/ but no test/"):
        resolve_source(f"folder:{tmp_path}")


def test_a_single_class_is_not_a_classification_dataset(digits, tmp_path):
    _save(tmp_path / "only" / "0.png", digits[0][0], "PNG")
    with pytest.raises(ValueError, match="at least two"):
        resolve_source(f"folder:{tmp_path}")


def test_missing_idx_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        resolve_source(f"idx:{tmp_path}")


def test_an_unknown_tfds_name_is_an_error_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown TFDS dataset 'fashion_mnistt'.*fashion_mnist"):
        resolve_source("tfds:fashion_mnistt")


def test_folder_units_are_picklable_and_small(digits_tree):
    source = resolve_source(f"folder:{digits_tree}")
    assert all(isinstance(u, FolderUnit) for u in source.units)
    assert pickle.loads(pickle.dumps(source.units)) == source.units
