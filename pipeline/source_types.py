"""What every image source yields and is made of: `SourceImage`, `SkippedFile`, `Source` (class
names and picklable read units), and the conversion of a selected image into the bytes stored.

Stored bytes: PNG and JPEG files in grey (L) or RGB mode are kept byte for byte; other formats and
modes are converted to grey or RGB, and raw arrays (idx, TFDS) are kept as pixels until the image is
selected (most of a source is not), then encoded as PNG.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
from PIL import Image

#: Where an image comes from: the pool for train and val, or the source's test split.
ORIGINS = ("train", "test")


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


class ReadUnit(Protocol):
    """A picklable slice of a source that Beam workers read."""

    def read(self) -> Iterator[SourceImage | SkippedFile]: ...


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
    units: tuple[Any, ...]
    num_images: int
    has_test_split: bool
    ignored_files: int = 0


def chunks(items: Sequence, size: int) -> list[tuple]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image [H, W] or [H, W, 1] (grey) or [H, W, 3] (RGB)."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_from_pixels(pixels: np.ndarray, key: str, label: int, origin: str) -> SourceImage:
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


def image_from_file_bytes(data: bytes, key: str, label: int, origin: str) -> SourceImage:
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
