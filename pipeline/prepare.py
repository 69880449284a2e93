"""Long-tailed data preparation with Apache Beam: balanced val, long-tailed train, untouched test.

    python -m pipeline.prepare --source SRC --imbalance-ratio R [--n-max N] [--profile exp|step]
        [--val-per-class V] [--seed S] [--class-order label|random] [--test-fraction F]
        [--image-size HxW] --output-dir DIR [--overwrite]
        [--runner direct|in_memory|dask|flink|spark|dataflow] [--direct-mode auto|...]
        [--workers N] [--dask-address tcp://HOST:PORT | --dask-workers N] [Beam options ...]

The Beam graph (`WriteLongTailExamples`) reads the source's images in parallel, gathers a small
summary of every image (key, label, origin, shape) into one planning step, and joins the plan's
per-image assignment back to the images, so only the summaries meet in one place. The plan
(`plan_splits`) ranks each class's images by a hash of (seed, image key): the first
`val_per_class` go to val, the next n_k = long_tail_counts(...)[rank of the class] to train. The
result depends only on the set of images, never on their order or on the number of workers.

Output goes to a temporary sibling directory that is renamed to `--output-dir` only after
`class_info.json` (written last) says the run succeeded.

The graph uses only Create, single-output ParDo, GroupByKey and Flatten without side inputs,
which is what Beam's DaskRunner translates correctly (it merges tagged outputs, ignores `Read`,
computes side inputs from inside worker tasks, and computes only the last transform's bag, so the
last transform here depends on every write).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Iterable, NamedTuple, NoReturn, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.options.pipeline_options import PipelineOptions

from lade_tf.priors import PROFILES, long_tail_counts
from lade_tf.records import CLASS_INFO_FILE, SPLITS, encode_example
from pipeline import beam_args
from pipeline.sources import (
    SkippedFile,
    Source,
    SourceImage,
    conform_image,
    read_unit,
    resolve_source,
)

CLASS_ORDERS = ("label", "random")
EXAMPLES_PER_SHARD = 5000

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How the splits are drawn.

    Args:
        imbalance_ratio: IR = n_max / n_min of the training split (>= 1; 1 = balanced).
        n_max: training images of the most frequent class; None = the largest count every class
            can still supply after validation. A larger value is capped with a warning.
        profile: "exp" or "step" (see `lade_tf.priors.long_tail_counts`).
        val_per_class: balanced validation images per class, taken first (>= 0).
        seed: seeds every selection (and the class order when `class_order="random"`).
        class_order: "label" (label 0 most frequent) or "random" (a seeded permutation).
        test_fraction: for sources without a test split, the fraction of each class held out as
            test (0 < f < 1); must be None when the source has a test split.
        image_size: (height, width) to resize every image to; None requires one common size.
    """

    imbalance_ratio: float = 100.0
    n_max: int | None = None
    profile: str = "exp"
    val_per_class: int = 20
    seed: int = 0
    class_order: str = "label"
    test_fraction: float | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        if not math.isfinite(self.imbalance_ratio) or self.imbalance_ratio < 1:
            raise ValueError(
                f"imbalance_ratio = {self.imbalance_ratio!r}: expected a finite "
                "number >= 1 (n_max / n_min; 1 gives a balanced training split)"
            )
        if self.n_max is not None and (not isinstance(self.n_max, int) or self.n_max < 1):
            raise ValueError(f"n_max = {self.n_max!r}: expected an integer >= 1 or None")
        if self.profile not in PROFILES:
            raise ValueError(f"profile = {self.profile!r}: expected one of {PROFILES}")
        if not isinstance(self.val_per_class, int) or self.val_per_class < 0:
            raise ValueError(f"val_per_class = {self.val_per_class!r}: expected an integer >= 0")
        if self.class_order not in CLASS_ORDERS:
            raise ValueError(f"class_order = {self.class_order!r}: expected one of {CLASS_ORDERS}")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction = {self.test_fraction!r}: expected 0 < f < 1")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size = {self.image_size!r}: expected (height, width) >= 1")


class ImageSummary(NamedTuple):
    """What planning needs to know about one image (no pixels)."""

    key: str
    label: int
    origin: str
    height: int
    width: int
    channels: int


class Assignment(NamedTuple):
    """Where one image goes: split, shard file and position in it, and the target shape."""

    split: str
    shard: int
    num_shards: int
    position: int
    height: int
    width: int
    channels: int


@dataclasses.dataclass
class SplitPlan:
    """Per-image assignments plus the `class_info.json` content; `info["error"]` set on failure."""

    assignments: dict[str, Assignment]
    info: dict


def _rank(seed: int, purpose: str, key: str) -> tuple[int, str]:
    """Sort key of an image for one random choice; depends only on (seed, purpose, key)."""
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), key


def _frequency_order(num_classes: int, config: PrepareConfig) -> list[int]:
    """Labels from most to least frequent in train."""
    if config.class_order == "label":
        return list(range(num_classes))
    return np.random.default_rng(config.seed).permutation(num_classes).tolist()


def _choose_n_max(
    available: list[int], order: list[int], class_names: Sequence[str], config: PrepareConfig
) -> tuple[int, list[str]]:
    """n_max to use (default, requested, or capped) and the warnings about capping."""
    if config.n_max is None:
        return min(available), []

    def shortfall(n_max: int) -> tuple[int, int] | None:
        wanted = long_tail_counts(n_max, len(order), config.imbalance_ratio, config.profile)
        for rank, label in enumerate(order):
            if wanted[rank] > available[label]:
                return label, wanted[rank]
        return None

    short = shortfall(config.n_max)
    if short is None:
        return config.n_max, []
    low, high = 1, config.n_max  # shortfall(low) is None (every class supplies 1), high fails
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if shortfall(middle) is None else (low, middle)
    label, wanted = short
    warning = (
        f"n_max={config.n_max} needs {wanted} training images of class "
        f"{class_names[label]!r} (label {label}), which has {available[label]} left after "
        f"{config.val_per_class} validation images; capped to n_max={low}"
    )
    return low, [warning]


def _size_error(sizes: dict[tuple[int, int], list[str]]) -> str:
    listing = ", ".join(
        f"{h}x{w} ({len(keys)} images, e.g. {sorted(keys)[0]!r})"
        for (h, w), keys in sorted(sizes.items(), key=lambda kv: -len(kv[1]))
    )
    return f"images have different sizes: {listing}; pass --image-size HxW to resize them"


def plan_splits(
    summaries: Iterable[ImageSummary], class_names: Sequence[str], config: PrepareConfig
) -> SplitPlan:
    """Assigns every image to train, val, test or nothing; the result ignores input order.

    Per class (label c, rank k in the frequency order): images of the train pool sorted by
    hash(seed, key); the first `val_per_class` -> val, the next
    `long_tail_counts(n_max, C, IR, profile)[k]` -> train, the rest unused. Test images (the
    source's test split, or a seeded `test_fraction` of each class drawn first) all -> test.
    Each split is spread over ceil(n / EXAMPLES_PER_SHARD) shards in a seeded order.

    Raises:
        ValueError: a class without readable images or test images, a class with fewer than
            val_per_class + 1 training images, images of different sizes without image_size, a
            test split both in the source and asked for by test_fraction (or in neither), or an
            imbalance ratio that leaves a class without training images.
    """
    num_classes = len(class_names)
    pool = [[] for _ in range(num_classes)]
    test = [[] for _ in range(num_classes)]
    sizes = collections.defaultdict(list)
    channels = 1
    for s in summaries:
        (pool if s.origin == "train" else test)[s.label].append(s.key)
        sizes[(s.height, s.width)].append(s.key)
        channels = max(channels, s.channels)
    for label, name in enumerate(class_names):
        if not pool[label] and not test[label]:
            raise ValueError(f"class {name!r} (label {label}) has no readable image")

    has_test = any(test)
    if config.test_fraction is not None:
        if has_test:
            raise ValueError(
                f"test_fraction = {config.test_fraction}: the source has its own "
                "test split; --test-fraction is only for a single class tree"
            )
        for label, name in enumerate(class_names):
            ranked = sorted(pool[label], key=lambda k: _rank(config.seed, "test", k))
            n_test = round(config.test_fraction * len(ranked))
            if not 1 <= n_test < len(ranked):
                raise ValueError(
                    f"test_fraction = {config.test_fraction}: class {name!r} has "
                    f"{len(ranked)} images, giving {n_test} test images"
                )
            test[label], pool[label] = ranked[:n_test], ranked[n_test:]
    elif not has_test:
        raise ValueError("the source has no test split: pass --test-fraction (e.g. 0.2)")
    for label, name in enumerate(class_names):
        if not test[label]:
            raise ValueError(f"class {name!r} (label {label}) has no readable test image")

    if config.image_size is not None:
        height, width = config.image_size
    elif len(sizes) > 1:
        raise ValueError(_size_error(sizes))
    else:
        ((height, width),) = sizes

    val_per_class = config.val_per_class
    for label, name in enumerate(class_names):
        if len(pool[label]) <= val_per_class:
            raise ValueError(
                f"class {name!r} (label {label}) has {len(pool[label])} readable training images; "
                f"{val_per_class} go to validation and at least 1 must remain for training "
                "(lower --val-per-class)"
            )
    available = [len(keys) - val_per_class for keys in pool]
    order = _frequency_order(num_classes, config)
    n_max, warnings = _choose_n_max(available, order, class_names, config)
    by_rank = long_tail_counts(n_max, num_classes, config.imbalance_ratio, config.profile)
    train_counts = [0] * num_classes
    for rank, label in enumerate(order):
        train_counts[label] = by_rank[rank]
    if min(train_counts) < 1:
        label = train_counts.index(0)
        raise ValueError(
            f"imbalance_ratio = {config.imbalance_ratio} with n_max = {n_max} leaves "
            f"class {class_names[label]!r} (label {label}) no training image; "
            "lower the imbalance ratio"
        )

    split_keys = {split: [] for split in SPLITS}
    label_of = {}
    for label in range(num_classes):
        ranked = sorted(pool[label], key=lambda k: _rank(config.seed, "split", k))
        chosen = {
            "val": ranked[:val_per_class],
            "train": ranked[val_per_class : val_per_class + train_counts[label]],
            "test": test[label],
        }
        for split, keys in chosen.items():
            split_keys[split] += keys
            label_of.update((k, label) for k in keys)

    assignments, counts, num_shards = {}, {}, {}
    for split, keys in split_keys.items():
        num_shards[split] = max(1, math.ceil(len(keys) / EXAMPLES_PER_SHARD))
        for i, key in enumerate(sorted(keys, key=lambda k: _rank(config.seed, "order", k))):
            assignments[key] = Assignment(
                split,
                i % num_shards[split],
                num_shards[split],
                i // num_shards[split],
                height,
                width,
                channels,
            )
        counts[split] = np.bincount([label_of[k] for k in keys], minlength=num_classes).tolist()
    info = {
        "class_names": list(class_names),
        "counts": counts,
        "height": height,
        "width": width,
        "channels": channels,
        "profile": config.profile,
        "imbalance_ratio": config.imbalance_ratio,
        "n_max": n_max,
        "n_max_requested": config.n_max,
        "val_per_class": val_per_class,
        "seed": config.seed,
        "class_order": config.class_order,
        "frequency_order": order,
        "test_fraction": config.test_fraction,
        "image_size": list(config.image_size) if config.image_size else None,
        "num_shards": num_shards,
        "warnings": warnings,
        "error": None,
    }
    return SplitPlan(assignments, info)


def _plan_step(keyed_items, class_names: Sequence[str], config: PrepareConfig) -> SplitPlan:
    """Beam step: the plan from all summaries and skipped files; bad input -> info["error"]."""
    _, items = keyed_items
    items = list(items)
    skipped = sorted((i for i in items if isinstance(i, SkippedFile)), key=lambda s: s.key)
    try:
        plan = plan_splits([i for i in items if isinstance(i, ImageSummary)], class_names, config)
    except ValueError as e:
        plan = SplitPlan({}, {"error": str(e), "warnings": []})
    plan.info["skipped_files"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    plan.info["num_skipped"] = len(skipped)
    return plan


def _summarize(item: SourceImage | SkippedFile) -> ImageSummary | SkippedFile:
    if isinstance(item, SkippedFile):
        return item
    return ImageSummary(item.key, item.label, item.origin, item.height, item.width, item.channels)


def _to_example(joined):
    """(key, {"image": [SourceImage], "assignment": [Assignment]})
    -> ((split, shard, num_shards), (position, serialized example)) for an assigned image."""
    _, groups = joined
    for image in groups["image"]:
        for a in groups["assignment"]:
            data = conform_image(image, a.height, a.width, a.channels)
            yield (a.split, a.shard, a.num_shards), (a.position, encode_example(data, image.label))


def _write_shard(keyed_examples, work_dir: str) -> tuple[str, int, str]:
    """Writes one gzip TFRecord shard, examples in their planned order; returns (split, n, name)."""
    (split, shard, num_shards), examples = keyed_examples
    examples = sorted(examples)
    name = f"Split-{split}/data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz"
    path = os.path.join(work_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # mtime=0 and no file name in the gzip header: the same examples give the same bytes.
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0, filename="") as f,
    ):
        for _, example in examples:
            _TFRecordUtil.write_record(f, example)
    return split, len(examples), name


def _write_class_info(keyed_parts, work_dir: str, source_info: dict) -> str:
    """Checks the written shards against the plan and writes class_info.json (last file)."""
    _, parts = keyed_parts
    info = dict(source_info)
    shards = []
    for kind, part in parts:
        if kind == "plan":
            info.update(part)
        else:
            shards.append(part)
    if info["error"] is None:
        for split in SPLITS:
            written = sum(n for s, n, _ in shards if s == split)
            if written != sum(info["counts"][split]):
                info["error"] = (
                    f"internal error: {written} {split} examples written, "
                    f"{sum(info['counts'][split])} planned"
                )
            if not any(s == split for s, _, _ in shards):
                os.makedirs(os.path.join(work_dir, f"Split-{split}"), exist_ok=True)
                empty = os.path.join(work_dir, f"Split-{split}", "data_tfrecord-00000-of-00001.gz")
                with (
                    open(empty, "wb") as raw,
                    gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename=""),
                ):
                    pass
                shards.append((split, 0, os.path.relpath(empty, work_dir)))
    info["files"] = sorted(name for _, _, name in shards)
    path = os.path.join(work_dir, CLASS_INFO_FILE)
    with open(path + ".partial", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(path + ".partial", path)
    return path


class WriteLongTailExamples(beam.PTransform):
    """Reads `source`, plans the splits, writes Split-*/ shards and class_info.json to `work_dir`.

    Applied to a pipeline (PBegin); outputs the path of class_info.json.
    """

    def __init__(self, source: Source, config: PrepareConfig, work_dir: str):
        super().__init__()
        self._source, self._config, self._work_dir = source, config, work_dir

    def expand(self, pbegin):
        source = self._source
        items = (
            pbegin
            | "ListReadUnits" >> beam.Create(source.units)
            | "ReadImages" >> beam.FlatMap(read_unit)
        )
        images = items | "KeepImages" >> beam.Filter(lambda i: isinstance(i, SourceImage))
        plan = (
            items
            | "Summarize" >> beam.Map(_summarize)
            | "KeyForPlan" >> beam.Map(lambda s: (None, s))
            | "GatherSummaries" >> beam.GroupByKey()
            | "PlanSplits"
            >> beam.Map(
                functools.partial(_plan_step, class_names=source.class_names, config=self._config)
            )
        )
        assignments = plan | "Assignments" >> beam.FlatMap(lambda p: p.assignments.items())
        written = (
            {
                "image": images | "KeyImages" >> beam.Map(lambda i: (i.key, i)),
                "assignment": assignments,
            }
            | "JoinAssignments" >> beam.CoGroupByKey()
            | "ToExamples" >> beam.FlatMap(_to_example)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(functools.partial(_write_shard, work_dir=self._work_dir))
        )
        source_info = {
            "source": source.spec,
            "source_path": source.description,
            "ignored_files": source.ignored_files,
        }
        return (
            (
                written | "TagShards" >> beam.Map(lambda s: ("shard", s)),
                plan | "TagPlan" >> beam.Map(lambda p: ("plan", p.info)),
            )
            | "FlattenParts" >> beam.Flatten()
            | "KeyForInfo" >> beam.Map(lambda part: (None, part))
            | "GatherParts" >> beam.GroupByKey()
            | "WriteClassInfo"
            >> beam.Map(
                functools.partial(
                    _write_class_info, work_dir=self._work_dir, source_info=source_info
                )
            )
        )


def check_writable_location(path: str, name: str, *, in_parent: bool = False) -> None:
    """Checks that a directory can be created at `path`, or written into if it exists: its
    nearest existing ancestor (`path`'s parent's, with `in_parent`) must be a directory in which
    this process can create entries.

    Raises:
        ValueError: naming `name` (the flag or argument), `path` and the ancestor at fault.
    """
    ancestor = os.path.abspath(path)
    if in_parent:
        ancestor = os.path.dirname(ancestor)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{name} = {path!r}: {ancestor!r} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=ancestor))
    except OSError as error:
        raise ValueError(
            f"{name} = {path!r}: cannot create anything in {ancestor!r} ({error.strerror or error})"
        ) from None


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(
            f"output_dir = {output_dir!r} exists and is not empty: choose another "
            "directory or pass --overwrite"
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir = {output_dir!r} exists and is not a directory")
    # The work directory is created next to output_dir, and renamed to it at the end.
    check_writable_location(output_dir, "output_dir", in_parent=True)


def check_source_config(source: Source, config: PrepareConfig) -> None:
    """Checks that `config` suits `source` (a test split from the source or from test_fraction).

    Raises:
        ValueError: test_fraction given for a source with a test split, or missing without one.
    """
    if config.test_fraction is not None and source.has_test_split:
        raise ValueError(
            f"test_fraction = {config.test_fraction}: source {source.spec!r} has its "
            "own test split; --test-fraction is only for a single class tree"
        )
    if config.test_fraction is None and not source.has_test_split:
        raise ValueError(
            f"source {source.spec!r} has no test split (no train/ and test/ "
            "sub-folders): pass --test-fraction, e.g. 0.2"
        )


def _publish(work_dir: str, output_dir: str) -> None:
    """Moves the finished work dir to output_dir (a rename; any previous content goes away)."""
    if os.path.exists(output_dir):
        old = f"{output_dir}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output_dir, old)
        os.rename(work_dir, output_dir)
        shutil.rmtree(old)
    else:
        os.rename(work_dir, output_dir)


def prepare_examples(
    source: str | Source,
    output_dir: str,
    config: PrepareConfig | None = None,
    *,
    pipeline_args: Sequence[str] = (),
    pipeline: beam.Pipeline | None = None,
    overwrite: bool = False,
    tfds_data_dir: str | None = None,
) -> dict:
    """Runs the preparation and returns the written class_info.

    Args:
        source: a `--source` string or a resolved `Source`.
        output_dir: the examples directory to create (Split-train/, Split-val/, Split-test/,
            class_info.json). Written under a temporary sibling name and renamed when complete.
        config: how to draw the splits (defaults: IR 100, exp, 20 val per class, seed 0).
        pipeline_args: Beam options (see `pipeline.beam_args.beam_pipeline_args`), used when
            `pipeline` is None.
        pipeline: a Beam pipeline to run in (e.g. the one TFX gives a component); it must be
            otherwise empty, as it is run here.
        overwrite: replace a non-empty `output_dir`.
        tfds_data_dir: TFDS data directory for tfds: sources.

    Raises:
        ValueError: bad source or config (see `resolve_source`, `PrepareConfig`, `plan_splits`),
            a non-empty output_dir without overwrite, or an output_dir whose parent cannot be
            written. Nothing is left at output_dir then.
    """
    config = config or PrepareConfig()
    output_dir = os.path.abspath(output_dir)
    _check_output_dir(output_dir, overwrite)
    if isinstance(source, str):
        source = resolve_source(source, tfds_data_dir=tfds_data_dir)
    check_source_config(source, config)
    parent, name = os.path.split(output_dir)
    work_dir = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(work_dir)
    except OSError as error:
        raise ValueError(
            f"output_dir = {output_dir!r}: cannot create {work_dir!r} ({error.strerror or error})"
        ) from None
    try:
        if pipeline is None:
            pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
        _ = pipeline | "WriteLongTailExamples" >> WriteLongTailExamples(source, config, work_dir)
        beam_args.wait_and_release(pipeline.run())
        with open(os.path.join(work_dir, CLASS_INFO_FILE)) as f:
            info = json.load(f)
        if info["error"]:
            raise ValueError(info["error"])
        _publish(work_dir, output_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    for skipped in info["skipped_files"]:
        _LOG.warning("skipped image file %s (%s)", skipped["path"], skipped["reason"])
    for warning in info["warnings"]:
        _LOG.warning("%s", warning)
    return info


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """ "32x32" -> (32, 32); None or "" -> None.

    Raises:
        ValueError: if the text is not HEIGHTxWIDTH.
    """
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image_size = {text!r}: expected HEIGHTxWIDTH, e.g. 32x32") from None
    return height, width


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error: ...` line, like the CLI's other input errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_arg_parser() -> argparse.ArgumentParser:
    """The CLI's own flags; unknown flags are passed to Beam."""
    parser = _ArgumentParser(
        prog="python -m pipeline.prepare",
        description="Long-tailed train / balanced val / official test splits as gzip TFRecords. "
        "Flags this parser does not know are passed to Beam.",
    )
    parser.add_argument(
        "--source",
        default="fashion_mnist",
        help="fashion_mnist (default), tfds:NAME, folder:PATH or idx:DIR",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--imbalance-ratio", type=float, default=100.0)
    parser.add_argument(
        "--n-max",
        type=int,
        default=None,
        help="training images of the head class (default: the most every class "
        "can supply after validation)",
    )
    parser.add_argument("--profile", choices=PROFILES, default="exp")
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-order", choices=CLASS_ORDERS, default="label")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="hold out this fraction of each class as test (single-tree folders)",
    )
    parser.add_argument(
        "--image-size",
        default=None,
        metavar="HxW",
        help="resize every image (default: all images must have one size)",
    )
    parser.add_argument("--tfds-data-dir", default=None)
    parser.add_argument("--overwrite", action="store_true")
    beam_args.add_runner_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input)."""
    parser = build_arg_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    start = time.perf_counter()
    try:
        config = PrepareConfig(
            imbalance_ratio=args.imbalance_ratio,
            n_max=args.n_max,
            profile=args.profile,
            val_per_class=args.val_per_class,
            seed=args.seed,
            class_order=args.class_order,
            test_fraction=args.test_fraction,
            image_size=parse_image_size(args.image_size),
        )
        _check_output_dir(os.path.abspath(args.output_dir), args.overwrite)
        source = resolve_source(args.source, tfds_data_dir=args.tfds_data_dir)
        with beam_args.runner_args_from_flags(args, source.num_images, extra) as pipeline_args:
            _LOG.info(
                "source %s: %d images listed, %d classes; Beam args: %s",
                source.spec,
                source.num_images,
                len(source.class_names),
                " ".join(pipeline_args),
            )
            info = prepare_examples(
                source,
                args.output_dir,
                config,
                pipeline_args=pipeline_args,
                overwrite=args.overwrite,
            )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    totals = {split: sum(info["counts"][split]) for split in SPLITS}
    print(
        f"wrote {totals['train']} train / {totals['val']} val / {totals['test']} test examples "
        f"({info['height']}x{info['width']}x{info['channels']}, n_max {info['n_max']}, "
        f"{info['num_skipped']} skipped) to {os.path.abspath(args.output_dir)} in "
        f"{seconds:.1f} s ({source.num_images / seconds:.0f} source images/s)"
    )
    return 0


if __name__ == "__main__":
    # Run the imported module, not __main__: Beam pickles this module's classes by module name,
    # and worker processes cannot import `__main__.ImageSummary`.
    from pipeline.prepare import main as _main

    sys.exit(_main())
