"""A TFDS image classification dataset as an image source (`tfds:NAME`): prepared on first use
when a download is possible, read in slices of a split on Beam workers."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import socket
import urllib.request
from typing import Iterator
from urllib.parse import urlsplit

from pipeline.source_types import Source, SourceImage, image_from_pixels

_TFDS_EXAMPLES_PER_UNIT = 5000
_DOWNLOAD_PROBE_SECONDS = 5.0

_LOG = logging.getLogger(__name__)


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
            yield image_from_pixels(
                example[self.image_key], key, int(example[self.label_key]), self.origin
            )


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


def tfds_source(
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
