"""The one place that maps a runner name to Apache Beam pipeline options.

Runners (`beam_pipeline_args(runner=...)`):
    direct, fnapi  Beam's FnApiRunner (what DirectRunner would pick for batch) with
                   `--direct_running_mode` and `--direct_num_workers`. Named explicitly because
                   Beam 2.74's DirectRunner first tries to download and start Prism.
    in_memory      FnApiRunner in the calling process, one worker.
    dask           apache_beam.runners.dask.dask_runner.DaskRunner on a dask.distributed
                   cluster (`--dask_client_address`; `local_dask_cluster` starts one here).
    flink          FlinkRunner; add `--flink_master=HOST:8081 --environment_type=LOOPBACK` (or
                   `--environment_type=DOCKER`/`PROCESS` for a remote cluster) via `extra`.
                   Needs Java; Beam starts a Flink job server jar.
    spark          SparkRunner; add `--spark_master_url=spark://HOST:7077` and an environment
                   type as for Flink. Needs Java; Beam starts a Spark job server jar.
    dataflow       DataflowRunner; add `--project=P --region=R --temp_location=gs://B/tmp` and
                   `--sdk_container_image=IMAGE` (the repository's Dockerfile) so workers can
                   import `lade_tf` and `pipeline`. pipeline.prepare / LongTailExampleGen read
                   and write plain file paths, so they need a file system that the driver and
                   every worker mount (local disk, NFS): true for dask, Flink and Spark
                   clusters set up that way, not for Dataflow, where these flags serve the
                   TFX components that read gs:// artifacts.
Options in `extra` come last, so they override the ones chosen here.

On two cores the parallel direct modes cost about twice the CPU of `in_memory` for at best the
same wall time (each SDK worker process pays the Python and Beam imports, and every element crosses
a process boundary; the README gives the measurements of `benchmarks/prepare.py`), so
`choose_direct_mode` picks in_memory there, and multi_processing only with more than two cores and
at least `MULTI_PROCESSING_MIN_IMAGES` images.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from typing import Iterator, Sequence

RUNNERS = ("direct", "in_memory", "fnapi", "dask", "flink", "spark", "dataflow")
DIRECT_MODES = ("in_memory", "multi_threading", "multi_processing")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
MULTI_PROCESSING_MIN_IMAGES = 100_000

_NAMED_RUNNERS = {"flink": "FlinkRunner", "spark": "SparkRunner", "dataflow": "DataflowRunner"}


def _empty_requirements_file() -> str:
    """An empty requirements file: with it TFX does not package itself for every Beam step."""
    path = os.path.join(tempfile.gettempdir(), "lade_tf_empty_requirements.txt")
    if not os.path.exists(path):
        open(path, "a").close()
    return path


def beam_pipeline_args(
    runner: str = "direct",
    *,
    mode: str = "multi_processing",
    workers: int = 2,
    dask_address: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Beam pipeline arguments for a runner name.

    Args:
        runner: one of `RUNNERS` (see the module docstring).
        mode: direct running mode for "direct"/"fnapi": one of `DIRECT_MODES`.
        workers: `--direct_num_workers` for "direct"/"fnapi"; for "dask" the expected number of
            cluster workers (sets `--dask_npartitions` to 4 per worker, because Beam's DaskRunner
            otherwise puts up to 128 created elements in one partition, i.e. one worker).
        dask_address: scheduler address for "dask" (tcp://HOST:PORT); None lets Beam start its
            own default LocalCluster.
        extra: more Beam flags, appended last (they win over the ones chosen here).

    Local runners also get `--requirements_file=<empty file>`: TFX then skips building a source
    archive of itself for each Beam component (a dependency flag tells it one is provided).

    Raises:
        ValueError: unknown runner or mode, or workers < 1.
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner = {runner!r}: expected one of {RUNNERS}")
    if mode not in DIRECT_MODES:
        raise ValueError(f"mode = {mode!r}: expected one of {DIRECT_MODES}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers = {workers!r}: expected an integer >= 1")
    if runner in ("direct", "fnapi"):
        # in_memory runs everything in the calling thread; more workers only add a warning.
        num_workers = 1 if mode == "in_memory" else workers
        args = [
            "--runner=FnApiRunner",
            f"--direct_running_mode={mode}",
            f"--direct_num_workers={num_workers}",
        ]
    elif runner == "in_memory":
        args = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    elif runner == "dask":
        args = [f"--runner={DASK_RUNNER}", f"--dask_npartitions={4 * workers}"]
        if dask_address:
            args.append(f"--dask_client_address={dask_address}")
    else:
        return [f"--runner={_NAMED_RUNNERS[runner]}", *extra]
    return [*args, f"--requirements_file={_empty_requirements_file()}", *extra]


def choose_direct_mode(num_images: int, cpu_count: int | None = None) -> str:
    """ "in_memory" on one or two cores or for small data, else "multi_processing".

    Args:
        num_images: images the source lists.
        cpu_count: cores available (default: os.cpu_count()).
    """
    cpus = cpu_count or os.cpu_count() or 1
    if cpus > 2 and num_images >= MULTI_PROCESSING_MIN_IMAGES:
        return "multi_processing"
    return "in_memory"


@contextlib.contextmanager
def local_dask_cluster(workers: int) -> Iterator[str]:
    """Starts a dask.distributed LocalCluster (one process and thread per worker); yields its
    scheduler address and closes it on exit."""
    from distributed import LocalCluster

    # The scheduler and nannies log every connection at INFO; keep only warnings while it runs.
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            yield cluster.scheduler_address
    finally:
        logger.setLevel(level)


def wait_and_release(result) -> None:
    """Waits for a pipeline result; closes the DaskRunner's client, which Beam leaves open."""
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if client is not None:
            client.close()


@contextlib.contextmanager
def runner_args_from_flags(
    args: argparse.Namespace, num_images: int, extra: Sequence[str] = ()
) -> Iterator[list[str]]:
    """Beam arguments for parsed `pipeline.flags.add_beam_flags` flags; starts (and finally
    stops) a local dask cluster for `--beam-runner dask` without `--dask-address`.

    Args:
        args: parsed flags.
        num_images: images the source lists (for `--beam-mode auto`, see `choose_direct_mode`).
        extra: more Beam flags, after the `--beam-arg` ones.

    Raises:
        ValueError: --dask-address or --dask-workers without --beam-runner dask, or both together.
    """
    if args.beam_runner != "dask" and (args.dask_address or args.dask_workers):
        raise ValueError("--dask-address and --dask-workers need --beam-runner dask")
    if args.dask_address and args.dask_workers:
        raise ValueError(
            "give --dask-address (an existing cluster) or --dask-workers (a new "
            "local cluster), not both"
        )
    mode = args.beam_mode or "auto"
    if mode == "auto":
        mode = choose_direct_mode(num_images)
    extra = [*args.beam_args, *extra]
    if args.beam_runner != "dask" or args.dask_address:
        yield beam_pipeline_args(
            args.beam_runner,
            mode=mode,
            workers=args.beam_workers,
            dask_address=args.dask_address,
            extra=extra,
        )
        return
    workers = args.dask_workers or args.beam_workers
    with local_dask_cluster(workers) as address:
        yield beam_pipeline_args("dask", workers=workers, dask_address=address, extra=extra)
