"""Speed: training and inference images/s (TF CE vs LADE vs PyTorch), tf.data, preparation, memory.

    .venv/bin/python benchmarks/throughput.py                      # the published run
    .venv/bin/python benchmarks/throughput.py --repeats 3 --steps 10 --skip-prepare
    .venv/bin/python benchmarks/throughput.py --quick --output-dir /tmp/tp  # what the test runs
    .venv/bin/python benchmarks/throughput.py --profile /tmp/tp_profile      # top ops, one run

What is measured, each phase in its own process (`throughput_worker.py`) so its peak RSS
(ru_maxrss from os.wait4) and its TensorFlow settings (TF_ENABLE_ONEDNN_OPTS must be set before
TensorFlow is imported) are its own:

(a) Training images/s of the BBN ResNet-32 (`build_model("resnet32_bbn", 100, (32, 32, 3))`,
    100 classes, batch 128) on synthetic in-memory batches (4 distinct batches of uniform 0..255
    pixels, random labels, `Dataset.from_tensor_slices(...).repeat()`), so the step is measured
    alone. The step is train_model's: the model from `tf_training._build_training_model` (coupled
    L2 regularizers), `recipe.make_optimizer` (SGD momentum 0.9, the warm-up-cosine schedule),
    compiled with train_model's loss, `recipe.training_metrics` and jit_compile, and run
    by `model.fit` (verbose 0). CE and LADE (alpha 0.1, class counts of CIFAR-100-LT IR 100) are
    both built in one worker per settings variant. Each repeat is one fit call of `--steps` steps;
    the time runs from the end of its first train-function call to the end of its last, so the
    warm-up (tracing, XLA compilation, first-call allocation) is excluded twice over. LADE's
    overhead is median(CE) / median(LADE) - 1.
(b) Inference images/s: `model.predict_on_batch` on a 512-image tensor (the compiled predict
    function, eval-mode batch norm), `--steps` calls per repeat after one untimed call.
(c) The tf.data pipeline alone on real CIFAR-10-LT IR 100 TFRecords: `input_pipeline.
    train_dataset` (parallel decode -> cache -> shuffle -> augment -> batch 128 -> prefetch);
    the first epoch (decode + cache fill) and then one full epoch per repeat (cache -> shuffle ->
    augment -> batch). Then the same pipeline feeding training (ResNet-32-BBN, 10 classes, CE,
    as the pipeline trains CIFAR-10-LT) against the same model on synthetic batches, interleaved;
    the ratio is the input pipeline's cost in end-to-end training.
(d) Data preparation: `python -m pipeline.prepare` on the CIFAR-10 JPEG folder (60,000 images,
    extracted from the shared cifar10-jpeg.tar.xz, in ../shared/data or LADE_SHARED_DATA, into
    the work directory), Beam FnApiRunner in_memory, once; source images/s and written
    examples/s over the wall time of the subprocess (imports included).
(e) Peak memory: the RSS high-water mark of every worker process.
(f) PyTorch: benchmarks/torch_resnet32.py, the same network (the report checks that both have
    the same trainable parameters and batch-norm statistics), run with .venv-torch/bin/python
    as a JSON-lines worker, torch.set_num_threads(cores), CE + SGD momentum 0.9 + weight_decay
    5e-4, batch 128, inference batch 512. Missing .venv-torch: the row says so
    (`scripts/setup.sh --torch`).

Repeats are interleaved (repeat k: every TF variant's CE, LADE, then torch training; then every
inference), so load drift on a shared machine hits all alike; min / median / max over repeats.
Settings variants (`--variants`, default default,onednn_off,xla,onednn_spe4): "default" is what
the entry points set up (`lade_tf.process_settings.configure_tensorflow`: oneDNN on unless
TF_ENABLE_ONEDNN_OPTS is set; TensorFlow 2.16 itself leaves its oneDNN ops off on CPUs without
AVX-512, which is what `onednn_off` measures); the others change one thing (XLA; oneDNN on or
off; one inter-op thread; steps_per_execution 4) or two.
Writes benchmarks/results/throughput.{json,md,png} (bar chart, min-max error bars;
`throughput_report.py`) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from harness import (
    CIFAR10_TARBALL,
    REPO_ROOT,
    RESULTS_DIR,
    extracted_cifar10,
    machine_description,
    progress_logger,
)
from throughput_report import print_table, verdict, write_report
from throughput_worker import (
    BATCH,
    IMAGE_SHAPE,
    INFER_BATCH,
    TRAIN_CLASSES,
    Variant,
    worker_arguments,
)

from lade_tf.process_settings import configure_tensorflow

TORCH_PYTHON = REPO_ROOT / ".venv-torch" / "bin" / "python"
TORCH_SCRIPT = REPO_ROOT / "benchmarks" / "torch_resnet32.py"
WORKER_SCRIPT = REPO_ROOT / "benchmarks" / "throughput_worker.py"
CIFAR10_IMAGES = 60_000

VARIANTS = {
    "default": Variant("default"),
    "xla": Variant("xla", xla=True),
    "onednn_off": Variant("onednn_off", onednn="0"),
    "onednn_on": Variant("onednn_on", onednn="1"),
    "inter1": Variant("inter1", inter=1),
    "spe4": Variant("spe4", steps_per_execution=4),
    "onednn_inter1": Variant("onednn_inter1", onednn="1", inter=1),
    "onednn_spe4": Variant("onednn_spe4", onednn="1", steps_per_execution=4),
    "xla_onednn": Variant("xla_onednn", xla=True, onednn="1"),
}
DEFAULT_VARIANTS = "default,onednn_off,xla,onednn_spe4"
DEFAULT_PIPELINE_VARIANT = "onednn_on"
log = progress_logger("throughput")


class Worker:
    """A JSON-lines subprocess; `close` returns its peak RSS (MiB) from os.wait4."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], label: str):
        self.label = label
        self.process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ready: dict[str, Any] | None = None

    @property
    def ready(self) -> dict[str, Any]:
        """The worker's first line (its set-up report), waited for on first use."""
        if self._ready is None:
            self._ready = self.read()
        return self._ready

    def read(self) -> dict[str, Any]:
        """The next JSON line; RuntimeError when the worker died."""
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{self.label} worker exited ({self.process.returncode})")
        return json.loads(line)

    def call(self, command: str) -> dict[str, Any]:
        """Sends one command and returns its answer."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> float:
        """Ends the worker; its peak RSS in MiB (children's maximum, from the kernel)."""
        reported = self.call("quit").get("peak_rss_mb", 0.0)
        self.process.stdin.close()
        return max(reported, wait_rss_mb(self.process))


def wait_rss_mb(process: subprocess.Popen) -> float:
    """Waits for `process` and returns its ru_maxrss (MiB) from os.wait4."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0


def worker_env(variant: Variant | None = None) -> dict[str, str]:
    """The environment of a TF worker: quiet logs, the variant's oneDNN setting."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    if variant is not None and variant.onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = variant.onednn
    return env


def worker_command(kind: str, variant: Variant, **options: Any) -> list[str]:
    """The command line of one `throughput_worker.py` process."""
    return [sys.executable, str(WORKER_SCRIPT), *worker_arguments(kind, variant, **options)]


def stats(values: Iterable[float]) -> dict[str, Any]:
    """min / median / max (and the values) of the repeats."""
    values = [float(v) for v in values]
    return {
        "min": min(values),
        "median": float(np.median(values)),
        "max": max(values),
        "values": values,
    }


def run_training(
    variants: Sequence[Variant],
    repeats: int,
    steps: int,
    warmup: int,
    infer_steps: int,
    torch: bool,
) -> dict[str, Any]:
    """(a), (b), (f): interleaved repeats over every variant's worker and the torch worker."""
    workers: dict[str, Worker] = {}
    # All workers set up (import, build, trace, compile) at once; timing starts when all are ready.
    for variant in variants:
        log(f"starting TF worker {variant.name} ({variant})")
        workers[variant.name] = Worker(
            worker_command("train", variant, warmup=warmup), worker_env(variant), variant.name
        )
    torch_worker = None
    torch_status = "skipped (--skip-torch)"
    if torch and TORCH_PYTHON.exists():
        cores = os.cpu_count() or 1
        torch_worker = Worker(
            [str(TORCH_PYTHON), str(TORCH_SCRIPT), "--serve", "--threads", str(cores)],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            "torch",
        )
        torch_status = "ok"
    for name, worker in workers.items():
        log(f"  {name} ready after {worker.ready['setup_s']:.1f} s")
    if torch_worker:
        log(f"  torch ready ({torch_worker.ready['threads']} threads)")
    elif torch:
        torch_status = f"missing: {TORCH_PYTHON} not found; run scripts/setup.sh --torch"
    results: dict[str, dict[str, list[float]]] = {
        name: {"train_ce": [], "train_lade": [], "infer": []} for name in workers
    }
    results["torch"] = {"train_ce": [], "infer": []}
    for repeat in range(repeats):
        for name, worker in workers.items():
            for loss_name in ("ce", "lade"):
                answer = worker.call(f"train {loss_name} {steps}")
                results[name][f"train_{loss_name}"].append(answer["images_per_s"])
        if torch_worker:
            answer = torch_worker.call(f"train {steps} {warmup if repeat == 0 else 1}")
            results["torch"]["train_ce"].append(answer["images_per_s"])
        for name, worker in workers.items():
            results[name]["infer"].append(worker.call(f"infer {infer_steps}")["images_per_s"])
        if torch_worker:
            answer = torch_worker.call(f"infer {infer_steps} {1}")
            results["torch"]["infer"].append(answer["images_per_s"])
        log(
            f"repeat {repeat + 1}/{repeats}: "
            + ", ".join(
                f"{name} {key} {values[-1]:.0f}"
                for name, rows in results.items()
                for key, values in rows.items()
                if values
            )
        )
    out: dict[str, Any] = {"variants": {}, "torch": {"status": torch_status}}
    for variant in variants:
        rows = results[variant.name]
        worker = workers[variant.name]
        entry = {key: stats(values) for key, values in rows.items()}
        entry["lade_overhead_pct"] = 100.0 * (
            entry["train_ce"]["median"] / entry["train_lade"]["median"] - 1.0
        )
        entry["settings"] = {
            **dataclasses.asdict(variant),
            **{k: worker.ready[k] for k in ("onednn", "intra", "inter") if k in worker.ready},
        }
        entry["setup_s"] = worker.ready["setup_s"]
        entry["parameters"] = worker.ready["parameters"]
        entry["peak_rss_mb"] = worker.close()
        out["variants"][variant.name] = entry
    if torch_worker:
        out["torch"].update({key: stats(values) for key, values in results["torch"].items()})
        out["torch"]["threads"] = torch_worker.ready["threads"]
        if "parameters" in torch_worker.ready:
            out["torch"]["parameters"] = torch_worker.ready["parameters"]
        out["torch"]["peak_rss_mb"] = torch_worker.close()
    return out


def run_pipeline(examples: Path, variant: Variant, repeats: int, steps: int) -> dict[str, Any]:
    """(c): tf.data alone and pipeline-fed training, in one worker."""
    log(f"tf.data pipeline on {examples} ({variant.name} settings)")
    process = subprocess.Popen(
        worker_command("pipeline", variant, examples=examples, repeats=repeats, steps=steps),
        cwd=REPO_ROOT,
        env=worker_env(variant),
        stdout=subprocess.PIPE,
        text=True,
    )
    answer = json.loads(process.stdout.readline() or "{}")
    process.stdout.close()
    rss = wait_rss_mb(process)
    if process.returncode != 0 or not answer:
        raise RuntimeError(f"pipeline worker failed ({process.returncode})")
    pipeline_fed = stats(answer["fit_pipeline_images_per_s"])
    synthetic = stats(answer["fit_synthetic_images_per_s"])
    return {
        "settings": variant.name,
        "epoch_images": answer["epoch_images"],
        "first_epoch_images_per_s": answer["first_epoch_images_per_s"],
        "alone": stats(answer["alone_images_per_s"]),
        "fit_pipeline": pipeline_fed,
        "fit_synthetic": synthetic,
        "pipeline_cost_pct": 100.0 * (synthetic["median"] / pipeline_fed["median"] - 1.0),
        "peak_rss_mb": max(rss, answer["peak_rss_mb"]),
    }


def run_prepare(work_dir: Path) -> tuple[dict[str, Any], Path]:
    """(d): pipeline.prepare on the CIFAR-10 folder, once; returns (row, examples dir)."""
    tree = extracted_cifar10(CIFAR10_TARBALL, work_dir, log)
    output = work_dir / "examples_prepare_bench"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pipeline.prepare",
        "--source",
        f"folder:{tree}",
        "--output-dir",
        str(output),
        "--beam-runner",
        "direct",
        "--beam-mode",
        "in_memory",
    ]
    log("preparing CIFAR-10-LT IR 100 with " + " ".join(command[1:]))
    started = time.perf_counter()
    with open(work_dir / "prepare.log", "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=worker_env(), stderr=log_file)
        rss = wait_rss_mb(process)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"pipeline.prepare failed; see {work_dir / 'prepare.log'}")
    info = json.loads((output / "class_info.json").read_text())
    written = sum(sum(counts) for counts in info["counts"].values())
    return {
        "seconds": seconds,
        "source_images": CIFAR10_IMAGES,
        "source_images_per_s": CIFAR10_IMAGES / seconds,
        "examples_written": written,
        "examples_per_s": written / seconds,
        "peak_rss_mb": rss,
        "mode": "FnApiRunner in_memory",
    }, output


def cached_examples(work_dir: Path) -> Path | None:
    """Examples prepared by an earlier run in this work dir, if any."""
    output = work_dir / "examples_prepare_bench"
    return output if (output / "class_info.json").exists() else None


def write_tiny_examples(root: Path, images: int = 640, classes: int = 10) -> Path:
    """A small synthetic examples dir (PNG records, Split-train only) for --quick runs."""
    import tensorflow as tf

    from lade_tf.records import encode_example

    folder = root / "Split-train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(str(folder / "data-00000-of-00001.gz"), options) as writer:
        for i in range(images):
            pixels = rng.integers(0, 256, IMAGE_SHAPE).astype(np.uint8)
            png = tf.io.encode_png(pixels).numpy()
            writer.write(encode_example(png, int(i % classes)))
    return root


def run_profile(args: argparse.Namespace, variant: Variant) -> int:
    """Runs the profile worker and prints the top ops."""
    args.profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.run(
        worker_command(
            "profile",
            variant,
            profile=args.profile,
            profile_loss=args.profile_loss,
            steps=args.steps,
        ),
        cwd=REPO_ROOT,
        env=worker_env(variant),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    answer = json.loads(process.stdout.strip().splitlines()[-1])
    print(f"{variant.name} {args.profile_loss}: {answer['images_per_s']:.0f} img/s while profiled")
    for op in answer["top_ops"]:
        print(
            f"  {op['op']:<32} {op['ms']:9.1f} ms {op['calls']:6d} calls {100 * op['share']:5.1f} %"
        )
    (args.profile / "top_ops.json").write_text(json.dumps(answer, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    parser.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the repeats")
    parser.add_argument("--infer-steps", type=int, default=10, help="predict calls per repeat")
    parser.add_argument("--pipeline-steps", type=int, default=40, help="fit steps per repeat (c)")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated TF settings variants, of {sorted(VARIANTS)}",
    )
    parser.add_argument("--xla", action="store_true", help="add the 'xla' variant")
    parser.add_argument(
        "--pipeline-variant",
        default=None,
        help=f"settings of (c) (default: {DEFAULT_PIPELINE_VARIANT} if run, else the last variant)",
    )
    parser.add_argument("--skip-prepare", action="store_true", help="no data-preparation run (d)")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch worker (f)")
    parser.add_argument("--skip-pipeline", action="store_true", help="no tf.data phase (c)")
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="prepared CIFAR-10-LT examples dir for (c) (default: prepared here, or reused)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lade_tf_throughput",
        help="scratch folder (extracted CIFAR-10, prepared examples)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny run (the test): 1 repeat, 2 steps, tiny data"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--profile", type=Path, default=None, help="profile into DIR and exit")
    parser.add_argument("--profile-loss", default="ce", choices=("ce", "lade"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark: workers, then the report."""
    args = build_parser().parse_args(argv)
    # Workers inherit the entry points' TensorFlow settings unless their variant overrides them.
    configure_tensorflow()
    names = [n for n in args.variants.split(",") if n]
    if args.xla and "xla" not in names:
        names.append("xla")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown}; known: {sorted(VARIANTS)}")
    variants = [VARIANTS[n] for n in names]
    if args.quick:
        args.repeats, args.steps, args.warmup = min(args.repeats, 2), 2, 1
        args.infer_steps, args.pipeline_steps = 2, 2
        args.skip_prepare = True
    if args.profile is not None:
        return run_profile(args, variants[-1])
    args.work_dir.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "machine": machine_description(),
        "command": command.strip(),
        "repeats": args.repeats,
        "steps": args.steps,
        "batch": BATCH,
        "infer_batch": INFER_BATCH,
        "classes": TRAIN_CLASSES,
    }
    examples = args.examples
    if not args.skip_prepare:
        results["prepare"], prepared = run_prepare(args.work_dir)
        examples = examples or prepared
    if not args.skip_pipeline and examples is None:
        if args.quick:
            examples = write_tiny_examples(Path(tempfile.mkdtemp(dir=args.work_dir)))
        else:
            examples = cached_examples(args.work_dir)
            if examples is None:
                results["prepare"], examples = run_prepare(args.work_dir)
    started = time.perf_counter()
    results["training"] = run_training(
        variants, args.repeats, args.steps, args.warmup, args.infer_steps, not args.skip_torch
    )
    if not args.skip_pipeline:
        pipeline_name = args.pipeline_variant or (
            DEFAULT_PIPELINE_VARIANT if DEFAULT_PIPELINE_VARIANT in names else names[-1]
        )
        results["pipeline"] = run_pipeline(
            examples, VARIANTS[pipeline_name], args.repeats, args.pipeline_steps
        )
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["verdict"] = verdict(results)
    write_report(results, args.output_dir)
    print_table(results)
    log(f"wrote {args.output_dir}/throughput.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
