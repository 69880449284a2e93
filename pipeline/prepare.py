"""Long-tailed data preparation with Apache Beam: balanced val, long-tailed train, untouched test.

    python -m pipeline.prepare --output-dir DIR [data flags: --source SRC --imbalance-ratio R
        --n-max N --profile exp|step --val-per-class V --data-seed S --class-order label|random
        --test-fraction F --image-size HxW --tfds-data-dir D] [--overwrite]
        [Beam flags: --beam-runner direct|in_memory|dask|flink|spark|dataflow --beam-mode auto|...
        --beam-workers N --dask-address tcp://HOST:PORT | --dask-workers N --beam-arg ARG]

The data and Beam flags are the ones `pipeline/run.py` takes (`pipeline.flags`); the command
line is `pipeline.cli`. The Beam graph (`WriteLongTailExamples`) reads the source's images in
parallel, gathers a small summary of every image (key, label, origin, shape) into one planning
step (`pipeline.split_plan.plan_splits`), and joins the plan's per-image assignment back to the
images, so only the summaries meet in one place.

Output goes to a temporary sibling directory that is renamed to `--output-dir` only after
`class_info.json` (written last) says the run succeeded.

The graph uses only Create, single-output ParDo, GroupByKey and Flatten without side inputs,
which is what Beam's DaskRunner translates correctly (it merges tagged outputs, ignores `Read`,
computes side inputs from inside worker tasks, and computes only the last transform's bag, so the
last transform here depends on every write).
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from typing import BinaryIO, Sequence

import apache_beam as beam
from apache_beam.io import tfrecordio
from apache_beam.options.pipeline_options import PipelineOptions

from lade_tf.records import CLASS_INFO_FILE, SPLITS, encode_example
from pipeline import beam_args
from pipeline.source_types import (
    SkippedFile,
    Source,
    SourceImage,
    conform_image,
    read_unit,
)
from pipeline.sources import resolve_source
from pipeline.split_plan import (
    ImageSummary,
    PrepareConfig,
    SplitPlan,
    plan_splits,
)

_LOG = logging.getLogger(__name__)


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


def _write_tfrecord(handle: BinaryIO, record: bytes) -> None:
    """Appends one TFRecord (length, masked CRC32C, data, masked CRC32C) to an open file.

    Beam's record framing is used because the shards are written through our own GzipFile
    (mtime 0, no file name: identical examples give identical bytes), which neither
    `beam.io.WriteToTFRecord` nor `tf.io.TFRecordWriter` allows; Beam exposes the framing only as
    the private `_TFRecordUtil`, so this is the one place that touches it.
    """
    tfrecordio._TFRecordUtil.write_record(handle, record)


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
            _write_tfrecord(f, example)
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


def check_output_dir(output_dir: str, overwrite: bool) -> None:
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
        config: how to draw the splits (default: `PrepareConfig()`).
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
    check_output_dir(output_dir, overwrite)
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


if __name__ == "__main__":
    # Run the imported module, not __main__: Beam pickles this module's classes by module name,
    # and worker processes cannot import `__main__.ImageSummary`.
    from pipeline.cli import prepare_main

    sys.exit(prepare_main())
