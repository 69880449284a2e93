"""The worker processes of `benchmarks/throughput.py`: what runs inside each measured process.

Each worker is its own process, started by throughput.py, so that its TensorFlow settings
(TF_ENABLE_ONEDNN_OPTS must be set before TensorFlow is imported) and its peak RSS are its own:

    train      JSON-lines loop on stdin/stdout: "train ce|lade <steps>" (images/s of `model.fit`),
               "infer <steps>" (images/s of `predict_on_batch`), "quit" (peak RSS); the first
               line reports set-up time, the settings in force and the model's parameter counts
    pipeline   one JSON line: the tf.data pipeline alone, then feeding `fit` against synthetic
               batches
    profile    one JSON line: images/s while tf.profiler records, and the top ops by time

    .venv/bin/python benchmarks/throughput_worker.py train --variant-json '{"name": "default"}'

The protocol owns stdout: TensorFlow's own prints go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import harness  # noqa: F401  (puts the checkout on sys.path)
import numpy as np

from lade_tf.process_settings import configure_tensorflow

IMAGE_SHAPE = (32, 32, 3)
TRAIN_CLASSES = 100
BATCH = 128
INFER_BATCH = 512
WORKER_KINDS = ("train", "pipeline", "profile")


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
    """ResNet-32-BBN compiled as `tf_training._train_fit` compiles it (one device).

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

    from lade_tf import tf_training
    from lade_tf.losses import make_loss
    from lade_tf.priors import long_tail_counts
    from lade_tf.recipe import make_optimizer, training_metrics
    from lade_tf.schedules import warmup_schedule
    from lade_tf.train_config import TrainConfig

    n_max = 500 if num_classes == 100 else 4980
    counts = long_tail_counts(n_max, num_classes, 100)
    config = TrainConfig(
        loss=loss_name, arch="resnet32_bbn", epochs=30, warmup_epochs=5.0, xla=variant.xla
    )
    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()
    schedule = warmup_schedule(config, steps_per_epoch)
    model = tf_training._build_training_model(config, num_classes, IMAGE_SHAPE, strategy)
    model.compile(
        optimizer=make_optimizer(config, schedule),
        loss=make_loss(config.loss, list(counts), **config.loss_options()),
        metrics=training_metrics(num_classes),
        jit_compile=config.xla,
        steps_per_execution=variant.steps_per_execution,
    )
    return model, counts


def parameter_counts(model) -> dict[str, int]:
    """Trainable parameters and non-trainable state (batch-norm moving statistics) of a model."""
    return {
        "trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights),
    }


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
    """JSON-lines loop: "train ce|lade <steps>", "infer <steps>", "quit" (see the docstring)."""
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
    ready = {
        "ready": True,
        "setup_s": time.perf_counter() - started,
        **settings,
        "parameters": parameter_counts(models["ce"]),
    }
    out.write(json.dumps(ready) + "\n")
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


def worker_arguments(kind: str, variant: Variant, **options: Any) -> list[str]:
    """The command-line arguments of one worker (after the interpreter and this file)."""
    arguments = [kind, "--variant-json", json.dumps(dataclasses.asdict(variant))]
    for name, value in options.items():
        arguments += [f"--{name.replace('_', '-')}", str(value)]
    return arguments


def build_parser() -> argparse.ArgumentParser:
    """The worker's flags (throughput.py writes them; see `worker_arguments`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=WORKER_KINDS)
    parser.add_argument("--variant-json", required=True, help="a Variant's fields as JSON")
    parser.add_argument("--warmup", type=int, default=3, help="train: untimed steps")
    parser.add_argument("--examples", default=None, help="pipeline: prepared examples dir")
    parser.add_argument("--repeats", type=int, default=5, help="pipeline: timed repeats")
    parser.add_argument("--steps", type=int, default=20, help="pipeline, profile: fit steps")
    parser.add_argument("--profile", default=None, help="profile: the profiler's log dir")
    parser.add_argument("--profile-loss", default="ce", choices=("ce", "lade"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one worker until its protocol ends."""
    args = build_parser().parse_args(argv)
    variant = Variant(**json.loads(args.variant_json))
    # The variant's TF_ENABLE_ONEDNN_OPTS, if any, is already in the environment; this fills in
    # the entry points' default where it is not.
    configure_tensorflow()
    if args.kind == "train":
        train_worker(variant, args.warmup)
    elif args.kind == "pipeline":
        pipeline_worker(str(args.examples), variant, args.repeats, args.steps)
    else:
        profile_worker(variant, args.profile_loss, args.steps, str(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
