"""Benchmark of `python -m pipeline.prepare`: wall time and source images per second.

Runs the CLI as a subprocess (so the time includes interpreter start and imports, as a user sees
it) on Fashion-MNIST (70,000 images from the Debian idx files) and on the CIFAR-10 image folder
(60,000 JPEGs, extracted from the shared cifar10-jpeg.tar.xz, in ../shared/data or
LADE_SHARED_DATA, to a temporary directory), once per Beam mode. Prints a table and writes JSON.
The machine may be shared: the load average before and after each run is recorded with it.

    .venv/bin/python benchmarks/prepare.py [--datasets fashion_mnist,cifar10]
        [--modes in_memory,multi_processing,dask] [--workers 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    CIFAR10_TARBALL,
    REPO_ROOT,
    RESULTS_DIR,
    extracted_cifar10,
    machine_description,
    markdown_table,
    write_json,
)

from lade_tf.process_settings import configure_tensorflow

DATASETS = ("fashion_mnist", "cifar10")
MODES = ("in_memory", "multi_processing", "multi_threading", "dask")
SOURCE_IMAGES = {"fashion_mnist": 70_000, "cifar10": 60_000}


def _runner_flags(mode: str, workers: int) -> list[str]:
    if mode == "dask":
        return ["--beam-runner", "dask", "--dask-workers", str(workers)]
    return ["--beam-runner", "direct", "--beam-mode", mode, "--beam-workers", str(workers)]


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(source: str, mode: str, workers: int, work_dir: Path) -> dict:
    """One CLI run; returns wall time, CPU time, the CLI's own pipeline time and load averages."""
    output_dir = work_dir / f"out-{mode}"
    command = [
        sys.executable,
        "-m",
        "pipeline.prepare",
        "--source",
        source,
        "--output-dir",
        str(output_dir),
        "--overwrite",
        *_runner_flags(mode, workers),
    ]
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    pipeline_seconds = float(re.search(r" in ([\d.]+) s \(", done.stdout).group(1))
    with open(output_dir / "class_info.json") as f:
        counts = json.load(f)["counts"]
    return {
        "wall_s": round(wall, 1),
        "pipeline_s": pipeline_seconds,
        "cpu_s": round(_children_cpu_seconds() - cpu_before, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "written": {split: sum(c) for split, c in counts.items()},
    }


def main(argv=None) -> int:
    """Runs every selected dataset in every selected Beam mode, prints the table, writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--modes", default="in_memory,multi_processing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cifar-tarball", type=Path, default=CIFAR10_TARBALL)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "prepare.json")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    modes = [m for m in args.modes.split(",") if m]
    for name, allowed in (("dataset", DATASETS), ("mode", MODES)):
        bad = [v for v in (datasets if name == "dataset" else modes) if v not in allowed]
        if bad:
            parser.error(f"unknown {name} {bad}: expected {allowed}")
    # The CLI runs inherit the entry points' TensorFlow settings.
    configure_tensorflow()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        sources = {"fashion_mnist": "fashion_mnist"}
        if "cifar10" in datasets:
            start = time.perf_counter()
            tree = extracted_cifar10(args.cifar_tarball, tmp)
            print(f"extracted {args.cifar_tarball.name} in {time.perf_counter() - start:.1f} s")
            sources["cifar10"] = f"folder:{tree}"
        for dataset in datasets:
            for mode in modes:
                run = run_once(sources[dataset], mode, args.workers, tmp)
                run.update(
                    dataset=dataset,
                    mode=mode,
                    workers=args.workers,
                    source_images=SOURCE_IMAGES[dataset],
                    images_per_s=round(SOURCE_IMAGES[dataset] / run["wall_s"]),
                )
                results.append(run)
                print(
                    f"{dataset:14s} {mode:17s} wall {run['wall_s']:6.1f} s  "
                    f"({run['images_per_s']} images/s, pipeline {run['pipeline_s']} s, "
                    f"cpu {run['cpu_s']} s, load {run['load_before']}->{run['load_after']})",
                    flush=True,
                )

    print()
    table = markdown_table(
        ["dataset", "Beam mode", "workers", "wall s", "source images/s"]
        + ["in-process pipeline s", "CPU s", "load avg before->after"],
        (
            [r["dataset"], r["mode"], r["workers"], r["wall_s"], r["images_per_s"]]
            + [r["pipeline_s"], r["cpu_s"], f"{r['load_before']}->{r['load_after']}"]
            for r in results
        ),
    )
    print("\n".join(table))
    write_json(
        args.output,
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_description(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": results,
        },
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
