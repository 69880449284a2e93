"""Speed: training and inference images/s (TF CE vs LADE vs PyTorch), tf.data, preparation, memory.

    .venv/bin/python benchmarks/throughput.py                      # the published run
    .venv/bin/python benchmarks/throughput.py --repeats 3 --steps 10 --skip-prepare
    .venv/bin/python benchmarks/throughput.py --quick --output-dir /tmp/tp  # what the test runs
    .venv/bin/python benchmarks/throughput.py --profile /tmp/tp_profile      # top ops, one run

What is measured, each phase in its own process so its peak RSS (ru_maxrss from os.wait4) and its
TensorFlow settings (TF_ENABLE_ONEDNN_OPTS must be set before TensorFlow is imported) are its own:

(a) Training images/s of the BBN ResNet-32 (`build_model("resnet32_bbn", 100, (32, 32, 3))`,
    100 classes, batch 128) on synthetic in-memory batches (4 distinct batches of uniform 0..255
    pixels, random labels, `Dataset.from_tensor_slices(...).repeat()`), so the step is measured
    alone. The step is train_model's: the model from `training._build_training_model` (coupled L2
    regularizers), `recipe.make_optimizer` (SGD momentum 0.9, the warm-up-cosine schedule),
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
    extracted from ../shared/data/cifar10-jpeg.tar.xz to a temporary directory; LADE_SHARED_DATA
    overrides ../shared/data), Beam FnApiRunner in_memory, once; source images/s and written
    examples/s over the wall time of the subprocess (imports included).
(e) Peak memory: the RSS high-water mark of every worker process.
(f) PyTorch: benchmarks/torch_resnet32.py (the same network; parameter counts are equal, see
    tests/benchmarks/test_throughput.py), run with .venv-torch/bin/python as a JSON-lines worker,
    torch.set_num_threads(cores), CE + SGD momentum 0.9 + weight_decay 5e-4, batch 128,
    inference batch 512. Missing .venv-torch: the row says so (`scripts/setup.sh --torch`).

Repeats are interleaved (repeat k: every TF variant's CE, LADE, then torch training; then every
inference), so load drift on a shared machine hits all alike; min / median / max over repeats.
Settings variants (`--variants`, default default,onednn_off,xla,onednn_spe4): "default" is what
train_model does (importing lade_tf sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set: TensorFlow 2.16
itself leaves its oneDNN ops off on CPUs without AVX-512, such as this AMD EPYC); the others change
one thing (XLA; oneDNN on or off; one inter-op thread; steps_per_execution 4) or two.
`onednn_off` is what training did before lade_tf set that default.
Writes benchmarks/results/throughput.{json,md,png} (bar chart, min-max error bars) and prints
the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# lade_tf's TensorFlow defaults (oneDNN on), inherited by every worker that does not override them.
import lade_tf  # noqa: E402, F401

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TORCH_PYTHON = REPO_ROOT / ".venv-torch" / "bin" / "python"
TORCH_SCRIPT = REPO_ROOT / "benchmarks" / "torch_resnet32.py"
SHARED_DATA = Path(os.environ.get("LADE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
TARBALL = SHARED_DATA / "cifar10-jpeg.tar.xz"
CIFAR10_IMAGES = 60_000
IMAGE_SHAPE = (32, 32, 3)
TRAIN_CLASSES = 100
BATCH = 128
INFER_BATCH = 512


@dataclasses.dataclass(frozen=True)
class Variant:
    """TensorFlow settings of one training worker.

    Args:
        name: row label.
        xla: compile the train and predict functions with XLA (TrainConfig.xla, jit_compile).
        onednn: TF_ENABLE_ONEDNN_OPTS for the worker ("0", "1"), or None to inherit.
        intra, inter: tf.config.threading intra-/inter-op threads (None: TensorFlow's default).
        steps_per_execution: `model.compile(steps_per_execution=...)`.
    """

    name: str
    xla: bool = False
    onednn: str | None = None
    intra: int | None = None
    inter: int | None = None
    steps_per_execution: int = 1


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


def log(message: str) -> None:
    """One progress line on stderr with the wall-clock time."""
    print(f"[throughput {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker side


def _protocol_stdout():
    """A private handle on the real stdout; fd 1 then points at stderr (TF may print to it)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _configure_tensorflow(variant: Variant):
    """Imports TensorFlow with the variant's thread settings (before any op runs)."""
    import tensorflow as tf

    if variant.intra:
        tf.config.threading.set_intra_op_parallelism_threads(variant.intra)
    if variant.inter:
        tf.config.threading.set_inter_op_parallelism_threads(variant.inter)
    return tf


def build_compiled_model(
    loss_name: str, num_classes: int, variant: Variant, steps_per_epoch: int = 100
):
    """ResNet-32-BBN compiled as `training._train_fit` compiles it (one device).

    Args:
        loss_name: "ce" or "lade".
        num_classes: 100 for the synthetic benchmark, 10 for CIFAR-10-LT.
        variant: XLA and steps_per_execution.
        steps_per_epoch: length of an epoch for the learning-rate schedule.

    Returns:
        (model, class_counts).
    """
    import keras
    import tensorflow as tf

    from lade_tf import training
    from lade_tf.losses import make_loss
    from lade_tf.priors import long_tail_counts
    from lade_tf.recipe import make_optimizer, training_metrics
    from lade_tf.schedules import warmup_schedule

    n_max = 500 if num_classes == 100 else 4980
    counts = long_tail_counts(n_max, num_classes, 100)
    config = training.TrainConfig(
        loss=loss_name, arch="resnet32_bbn", epochs=30, warmup_epochs=5.0, xla=variant.xla
    )
    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()
    schedule = warmup_schedule(config, steps_per_epoch)
    model = training._build_training_model(config, num_classes, IMAGE_SHAPE, strategy)
    model.compile(
        optimizer=make_optimizer(config, schedule),
        loss=make_loss(config.loss, list(counts), **config.loss_options()),
        metrics=training_metrics(num_classes),
        jit_compile=config.xla,
        steps_per_execution=variant.steps_per_execution,
    )
    return model, counts


def synthetic_batches(num_classes: int, batch: int, count: int = 4, seed: int = 0):
    """A repeated dataset of `count` distinct in-memory (images, labels) batches."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, batch, *IMAGE_SHAPE)).astype(np.float32)
    labels = rng.integers(0, num_classes, (count, batch)).astype(np.int64)
    return tf.data.Dataset.from_tensor_slices((images, labels)).repeat()


class _ExecutionTimer:
    """Keras callback: perf_counter at the end of every train-function call."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append(time.perf_counter())

        return Timer()


def timed_fit(model, data, steps: int, batch: int) -> dict[str, float]:
    """images/s of `model.fit` between the end of its first and of its last execution.

    One fit call of `steps` steps plus one untimed execution (`steps_per_execution` steps).
    """
    per_call = int(model.steps_per_execution)
    timer = _ExecutionTimer()
    model.fit(
        data,
        steps_per_epoch=steps + per_call,
        epochs=1,
        verbose=0,
        callbacks=[timer],
        shuffle=False,
    )
    seconds = timer.ends[-1] - timer.ends[0]
    timed_steps = (len(timer.ends) - 1) * per_call
    return {"images_per_s": timed_steps * batch / seconds, "seconds": seconds}


def timed_predict(model, images, steps: int) -> dict[str, float]:
    """images/s of `steps` predict_on_batch calls after one untimed call."""
    model.predict_on_batch(images)
    started = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(images)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * int(images.shape[0]) / seconds, "seconds": seconds}


def train_worker(variant: Variant, warmup: int) -> None:
    """JSON-lines loop: "train ce|lade <steps>", "infer <steps>", "quit" (see run_training)."""
    out = _protocol_stdout()
    tf = _configure_tensorflow(variant)
    started = time.perf_counter()
    models = {
        name: build_compiled_model(name, TRAIN_CLASSES, variant)[0] for name in ("ce", "lade")
    }
    data = synthetic_batches(TRAIN_CLASSES, BATCH)
    for model in models.values():
        # Tracing (and XLA compilation), then a few steps so allocations settle.
        timed_fit(model, data, max(warmup, 1) * variant.steps_per_execution, BATCH)
    images = tf.constant(
        np.random.default_rng(1).integers(0, 256, (INFER_BATCH, *IMAGE_SHAPE)).astype(np.float32)
    )
    models["ce"].predict_on_batch(images)
    settings = {
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    out.write(
        json.dumps({"ready": True, "setup_s": time.perf_counter() - started, **settings}) + "\n"
    )
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "quit":
            out.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")
            return
        if command == "train":
            result = timed_fit(models[rest[0]], data, int(rest[1]), BATCH)
        else:
            result = timed_predict(models["ce"], images, int(rest[0]))
        out.write(json.dumps(result) + "\n")


def pipeline_worker(examples: str, variant: Variant, repeats: int, steps: int) -> None:
    """One JSON line: tf.data alone (first and later epochs) and pipeline-fed vs synthetic fit."""
    out = _protocol_stdout()
    _configure_tensorflow(variant)
    from lade_tf.input_pipeline import train_dataset
    from lade_tf.records import split_file_pattern

    pattern = split_file_pattern(examples, "train")

    def epoch_seconds(dataset) -> tuple[float, int]:
        started = time.perf_counter()
        images = sum(int(batch[1].shape[0]) for batch in dataset)
        return time.perf_counter() - started, images

    dataset = train_dataset(pattern, IMAGE_SHAPE, BATCH, seed=0)
    first_s, epoch_images = epoch_seconds(dataset)
    alone = []
    for _ in range(repeats):
        seconds, _ = epoch_seconds(dataset)
        alone.append(epoch_images / seconds)
    model, _ = build_compiled_model("ce", 10, variant, max(epoch_images // BATCH, 1))
    feeds = {"pipeline": dataset.repeat(), "synthetic": synthetic_batches(10, BATCH)}
    timed_fit(model, feeds["synthetic"], variant.steps_per_execution, BATCH)
    fed: dict[str, list[float]] = {"pipeline": [], "synthetic": []}
    for _ in range(repeats):
        for name, feed in feeds.items():
            fed[name].append(timed_fit(model, feed, steps, BATCH)["images_per_s"])
    out.write(
        json.dumps(
            {
                "epoch_images": epoch_images,
                "first_epoch_images_per_s": epoch_images / first_s,
                "alone_images_per_s": alone,
                "fit_pipeline_images_per_s": fed["pipeline"],
                "fit_synthetic_images_per_s": fed["synthetic"],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
        + "\n"
    )


def profile_worker(variant: Variant, loss_name: str, steps: int, logdir: str) -> None:
    """Profiles `steps` training steps with tf.profiler and prints the top ops as JSON."""
    out = _protocol_stdout()
    tf = _configure_tensorflow(variant)
    model, _ = build_compiled_model(loss_name, TRAIN_CLASSES, variant)
    data = synthetic_batches(TRAIN_CLASSES, BATCH)
    timed_fit(model, data, 2 * variant.steps_per_execution, BATCH)
    tf.profiler.experimental.start(logdir)
    result = timed_fit(model, data, steps, BATCH)
    tf.profiler.experimental.stop()
    out.write(json.dumps({**result, "top_ops": top_ops(logdir)}) + "\n")


def top_ops(logdir: str, count: int = 15) -> list[dict[str, Any]]:
    """Time per op type from the profiler's xplane.pb files (host plane, TF executor threads).

    TF op events are named "scope/name:Type"; executor and thread-pool events ("ExecutorState::
    Process", "ParallelFor") wrap or split them and are left out. Ops that run in parallel on the
    inter-op threads add up, so the shares are of summed op time, not of wall time.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    if ":" not in name or "::" in name:
                        continue
                    kind = name.rsplit(":", 1)[-1]
                    totals[kind] = totals.get(kind, 0.0) + event.duration_ps / 1e9
                    calls[kind] = calls.get(kind, 0) + 1
    overall = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [{"op": k, "ms": v, "calls": calls[k], "share": v / overall} for k, v in ranked]


# --------------------------------------------------------------------------- orchestrator side


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


def variant_args(variant: Variant) -> list[str]:
    """Command-line form of a variant for a worker subprocess."""
    return ["--variant-json", json.dumps(dataclasses.asdict(variant))]


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
            [sys.executable, __file__, "--worker", "train", "--warmup", str(warmup)]
            + variant_args(variant),
            worker_env(variant),
            variant.name,
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
        entry["settings"] = {**dataclasses.asdict(variant), **_settings(worker.ready)}
        entry["setup_s"] = worker.ready["setup_s"]
        entry["peak_rss_mb"] = worker.close()
        out["variants"][variant.name] = entry
    if torch_worker:
        out["torch"].update({key: stats(values) for key, values in results["torch"].items()})
        out["torch"]["threads"] = torch_worker.ready["threads"]
        out["torch"]["peak_rss_mb"] = torch_worker.close()
    return out


def _settings(ready: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ready[k] for k in ("onednn", "intra", "inter") if k in ready}


def run_pipeline(examples: Path, variant: Variant, repeats: int, steps: int) -> dict[str, Any]:
    """(c): tf.data alone and pipeline-fed training, in one worker."""
    log(f"tf.data pipeline on {examples} ({variant.name} settings)")
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            "pipeline",
            "--examples",
            str(examples),
            "--repeats",
            str(repeats),
            "--steps",
            str(steps),
        ]
        + variant_args(variant),
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
    if not TARBALL.exists():
        raise SystemExit(f"error: {TARBALL} not found (set LADE_SHARED_DATA or --skip-prepare)")
    tree = work_dir / "cifar10-jpeg"
    if not (tree / "test").is_dir():
        log(f"extracting {TARBALL} to {work_dir}")
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(work_dir)], check=True)
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


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and how busy it was)."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    versions = {}
    try:
        from importlib.metadata import version

        versions = {name: version(name) for name in ("tensorflow", "keras")}
    except Exception:  # noqa: BLE001  (metadata is a nicety)
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
        "load_average": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- report


def table_rows(results: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any] | None, str]]:
    """(section, row label, stats or None, note) rows of the report, in order."""
    rows: list[tuple[str, str, Mapping[str, Any] | None, str]] = []
    for name, entry in results["training"]["variants"].items():
        settings = entry["settings"]
        note = (
            f"xla={settings['xla']} onednn={settings['onednn'] or 'default'} "
            f"intra={settings['intra']} inter={settings['inter']} "
            f"spe={settings['steps_per_execution']}"
        )
        rows.append(("train img/s", f"TF {name} CE", entry["train_ce"], note))
        rows.append(
            (
                "train img/s",
                f"TF {name} LADE",
                entry["train_lade"],
                f"LADE overhead {entry['lade_overhead_pct']:+.1f} %",
            )
        )
        rows.append(("infer img/s", f"TF {name}", entry["infer"], f"batch {INFER_BATCH}"))
    torch = results["training"]["torch"]
    if "train_ce" in torch:
        rows.append(("train img/s", "PyTorch CE", torch["train_ce"], f"threads {torch['threads']}"))
        rows.append(("infer img/s", "PyTorch", torch["infer"], f"batch {INFER_BATCH}"))
    else:
        rows.append(("train img/s", "PyTorch CE", None, torch["status"]))
    pipeline = results.get("pipeline")
    if pipeline:
        rows.append(
            (
                "tf.data img/s",
                "cache+shuffle+augment+batch",
                pipeline["alone"],
                f"first epoch (decode+cache) {pipeline['first_epoch_images_per_s']:.0f} img/s",
            )
        )
        rows.append(
            (
                "train img/s (10 cl.)",
                "fit on tf.data pipeline",
                pipeline["fit_pipeline"],
                f"pipeline cost {pipeline['pipeline_cost_pct']:+.1f} %",
            )
        )
        rows.append(
            ("train img/s (10 cl.)", "fit on synthetic batches", pipeline["fit_synthetic"], "")
        )
    prepare = results.get("prepare")
    if prepare:
        point = {k: prepare["examples_per_s"] for k in ("min", "median", "max")}
        rows.append(
            (
                "prepare ex/s",
                "pipeline.prepare CIFAR-10",
                point,
                f"{prepare['seconds']:.0f} s, {prepare['source_images_per_s']:.0f} source img/s, "
                f"{prepare['examples_written']} examples (one run)",
            )
        )
    return rows


def memory_rows(results: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(process, peak RSS MiB) of every worker."""
    rows = [
        (f"TF train worker {name} (CE + LADE models)", entry["peak_rss_mb"])
        for name, entry in results["training"]["variants"].items()
    ]
    torch = results["training"]["torch"]
    if "peak_rss_mb" in torch:
        rows.append(("PyTorch worker", torch["peak_rss_mb"]))
    if results.get("pipeline"):
        rows.append(("tf.data + fit worker (10 classes)", results["pipeline"]["peak_rss_mb"]))
    if results.get("prepare"):
        rows.append(("pipeline.prepare (Beam in_memory)", results["prepare"]["peak_rss_mb"]))
    return rows


def markdown(results: Mapping[str, Any]) -> str:
    """The report as a Markdown table (plus the memory table and the verdict)."""
    m = results["machine"]
    lines = [
        "# Throughput (benchmarks/throughput.py)",
        "",
        f"{m['cpu']}, {m['cores']} cores, TensorFlow {m.get('tensorflow')}, Keras "
        f"{m.get('keras')}; {results['repeats']} repeats of {results['steps']} steps; "
        f"load average at start {m['load_average'][0]:.2f}. Command: `{results['command']}`",
        "",
        "| what | row | min | median | max | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for section, label, values, note in table_rows(results):
        if values is None:
            lines.append(f"| {section} | {label} | - | - | - | {note} |")
        else:
            lines.append(
                f"| {section} | {label} | {values['min']:.0f} | {values['median']:.0f} | "
                f"{values['max']:.0f} | {note} |"
            )
    lines += ["", "| process | peak RSS (MiB) |", "|---|---:|"]
    lines += [f"| {name} | {rss:.0f} |" for name, rss in memory_rows(results)]
    verdict = results.get("verdict")
    if verdict:
        lines += ["", verdict]
    return "\n".join(lines) + "\n"


def verdict(results: Mapping[str, Any]) -> str | None:
    """TF (best variant) vs PyTorch training, in words."""
    torch = results["training"]["torch"]
    if "train_ce" not in torch:
        return None
    variants = results["training"]["variants"]
    best = max(variants, key=lambda name: variants[name]["train_ce"]["median"])
    tf_median = variants[best]["train_ce"]["median"]
    torch_median = torch["train_ce"]["median"]
    ratio = tf_median / torch_median
    met = "met" if ratio >= 1.0 else "not met"
    return (
        f"Target TF training >= PyTorch training: {met} (TF {best} CE median {tf_median:.0f} "
        f"img/s vs PyTorch {torch_median:.0f} img/s, ratio {ratio:.2f})."
    )


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Horizontal bar chart of the medians with min-max error bars, one panel per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table_rows(results) if r[2] is not None]
    sections = list(dict.fromkeys(r[0] for r in rows))
    heights = [sum(r[0] == s for r in rows) for s in sections]
    figure, axes = plt.subplots(
        len(sections), 1, figsize=(8, 1.2 + 0.45 * len(rows)), height_ratios=heights, squeeze=False
    )
    for axis, section in zip(axes[:, 0], sections):
        part = [r for r in rows if r[0] == section]
        medians = np.array([r[2]["median"] for r in part])
        low = medians - np.array([r[2]["min"] for r in part])
        high = np.array([r[2]["max"] for r in part]) - medians
        colors = ["tab:orange" if "PyTorch" in r[1] else "tab:blue" for r in part]
        axis.barh(range(len(part)), medians, xerr=[low, high], color=colors, capsize=3)
        axis.set_yticks(range(len(part)), [r[1] for r in part], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(section, fontsize=8)
        for i, value in enumerate(medians):
            axis.text(value, i, f" {value:.0f}", va="center", fontsize=7)
    figure.suptitle("Throughput, median with min-max over repeats", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def print_table(results: Mapping[str, Any]) -> None:
    """The table on stdout."""
    print(f"{'what':<22} {'row':<30} {'min':>8} {'median':>8} {'max':>8}  note")
    for section, label, values, note in table_rows(results):
        numbers = (
            "       -        -        -"
            if values is None
            else f"{values['min']:8.0f} {values['median']:8.0f} {values['max']:8.0f}"
        )
        print(f"{section:<22} {label:<30} {numbers}  {note}")
    for name, rss in memory_rows(results):
        print(f"{'peak RSS MiB':<22} {name:<40} {rss:8.0f}")
    if results.get("verdict"):
        print(results["verdict"])


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
    parser.add_argument(
        "--worker", choices=("train", "pipeline", "profile"), help=argparse.SUPPRESS
    )
    parser.add_argument("--variant-json", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark (or, internally, one worker)."""
    args = build_parser().parse_args(argv)
    variant = Variant(**json.loads(args.variant_json)) if args.variant_json else VARIANTS["default"]
    if args.worker == "train":
        train_worker(variant, args.warmup)
        return 0
    if args.worker == "pipeline":
        pipeline_worker(str(args.examples), variant, args.repeats, args.steps)
        return 0
    if args.worker == "profile":
        profile_worker(variant, args.profile_loss, args.steps, str(args.profile))
        return 0
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
        "machine": machine(),
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
        pipeline_variant = VARIANTS[pipeline_name]
        results["pipeline"] = run_pipeline(
            examples, pipeline_variant, args.repeats, args.pipeline_steps
        )
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["verdict"] = verdict(results)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "throughput.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output_dir / "throughput.md").write_text(markdown(results))
    plot(results, args.output_dir / "throughput.png")
    print_table(results)
    log(f"wrote {args.output_dir}/throughput.{{json,md,png}}")
    return 0


def run_profile(args: argparse.Namespace, variant: Variant) -> int:
    """Runs the profile worker and prints the top ops."""
    args.profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            "profile",
            "--profile",
            str(args.profile),
            "--profile-loss",
            args.profile_loss,
            "--steps",
            str(args.steps),
        ]
        + variant_args(variant),
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


if __name__ == "__main__":
    sys.exit(main())
