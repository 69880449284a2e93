"""Training on any Keras backend from NumPy arrays, no TensorFlow needed.

Reads an examples directory written by `python -m pipeline.prepare` (or a TFX ExampleGen of this
project) with `lade_tf.records.read_split`, trains `config.arch` with `config.loss` by
`model.fit` on `lade_tf.array_data.AugmentedBatches` (the recipe of `lade_tf.recipe`: SGD with
momentum and coupled L2 weight decay, warm-up then cosine or step decay), and runs the shift
evaluation (docs/design.md section 5) on the test split: the plain model output, the inference
rule with the known target prior, and with the prior estimated by EM on calibrated logits.

    KERAS_BACKEND=jax python -m lade_tf.train --examples /tmp/cifar10_lt --output-dir /tmp/run \\
        --loss lade --arch resnet32_bbn --epochs 30 --warmup-epochs 5

The command line is `lade_tf/train.py`. `config.xla` compiles the step on TensorFlow (XLA) and
PyTorch (torch.compile); on JAX the step is always compiled. The output directory gets
`model.keras` (the float32 model, raw pixels -> logits, which `lade_tf.export` can export on a
TensorFlow machine), `history.json`, and `shift_eval.json`, `.md` and `.png`. Nothing is resumed:
a run starts from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import numpy as np

from lade_tf.array_data import AugmentedBatches
from lade_tf.losses import make_loss
from lade_tf.models import build_model, resolve_arch
from lade_tf.priors import SHIFT_NAMES
from lade_tf.recipe import (
    build_training_model,
    dtype_policy,
    make_optimizer,
    steps_per_epoch,
    training_metrics,
)
from lade_tf.records import read_class_info, read_split
from lade_tf.schedules import warmup_schedule
from lade_tf.shift_eval import evaluate_under_shift, uniform_summary
from lade_tf.train_config import TrainConfig

#: The rows of the shift evaluation: (key, corrected, estimate).
EVALUATIONS = (("plain", False, None), ("known_prior", True, None), ("em_prior", True, "em"))
INFERENCE_BATCH = 500


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[lade_tf.train {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def select_training_subset(
    images: np.ndarray, labels: np.ndarray, max_examples: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of at most `max_examples` images, in file order (None: all)."""
    if max_examples is None or max_examples >= len(labels):
        return images, labels
    kept = np.sort(np.random.default_rng(seed).choice(len(labels), max_examples, replace=False))
    return images[kept], labels[kept]


# --------------------------------------------------------------------------- training


class EpochTimer(keras.callbacks.Callback):
    """Seconds of every epoch's training steps, validation left out (the first epoch's include
    compiling the step)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = self._last_step = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._started = self._last_step = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._last_step = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.seconds.append(self._last_step - self._started)


def _dtype_policy_name(config: TrainConfig) -> str:
    if not config.mixed_precision:
        return "float32"
    if keras.backend.backend() == "jax":
        import jax

        if jax.devices()[0].platform == "tpu":
            return "mixed_bfloat16"
    return "mixed_float16"


def fit(
    config: TrainConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    class_counts: Sequence[int],
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    verbose: int | str = "auto",
) -> tuple[keras.Model, dict[str, Any]]:
    """Trains `config` on in-memory images with `model.fit`, on the current Keras backend.

    Args:
        config: the run's settings (`strategy` is not used).
        train_images, train_labels: [N, H, W, C] raw pixels and [N] labels (the images trained on,
            already subset to `config.max_train_examples`).
        class_counts: training images per class [C]: the loss's source prior.
        val: (images, labels) evaluated after every epoch, or None.
        verbose: Keras progress output (0, 1, 2 or "auto": a bar on a terminal, else lines).

    Returns:
        (the trained model as a float32 copy, raw pixels -> logits; the history: Keras' logs per
        epoch plus "epoch_seconds" and "images_per_second").
    """
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    keras.utils.set_random_seed(config.seed)
    num_classes = len(class_counts)
    input_shape = tuple(train_images.shape[1:])
    steps = steps_per_epoch(
        dataclasses.replace(config, max_train_examples=None), [len(train_labels)]
    )
    if steps < 1:
        raise ValueError(
            f"batch_size = {config.batch_size}: larger than the {len(train_labels)} training images"
        )
    model = build_training_model(config, num_classes, input_shape, _dtype_policy_name(config))
    model.compile(
        optimizer=make_optimizer(config, warmup_schedule(config, steps)),
        loss=make_loss(config.loss, list(class_counts), **config.loss_options()),
        metrics=training_metrics(num_classes),
        jit_compile=True if keras.backend.backend() == "jax" else config.xla,
    )
    batches = AugmentedBatches(
        train_images, train_labels, config.batch_size, augment=config.augment, seed=config.seed
    )
    timer = EpochTimer()
    validation = None
    if val is not None and len(val[1]):
        validation = (val[0].astype(np.float32), val[1])
    history = model.fit(
        batches,
        epochs=config.epochs,
        validation_data=validation,
        validation_batch_size=INFERENCE_BATCH,
        callbacks=[timer],
        verbose=verbose,
    )
    logs: dict[str, Any] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    logs["epoch_seconds"] = timer.seconds
    logs["images_per_second"] = [steps * config.batch_size / s for s in timer.seconds]
    with dtype_policy("float32"):
        trained = build_model(config.arch, num_classes, input_shape)
    trained.set_weights([np.asarray(w) for w in model.get_weights()])
    return trained, logs


def predict_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """float32 logits [N, C] of raw pixels [N, H, W, C], in batches of INFERENCE_BATCH."""
    if not len(images):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    logits = model.predict(images.astype(np.float32), batch_size=INFERENCE_BATCH, verbose=0)
    return np.asarray(logits, np.float32)


# --------------------------------------------------------------------------- evaluation


def shift_report(
    config: TrainConfig,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    class_counts: Sequence[int],
    seeds: Sequence[int],
) -> dict[str, Any]:
    """The 11-distribution accuracy (mean, std over `seeds`) and uniform-test metrics of every
    row of EVALUATIONS; the EM row needs a validation split with every class."""
    rows: dict[str, Any] = {}
    has_val = len(val_labels) and len(np.unique(val_labels)) == len(class_counts)
    for key, corrected, estimate in EVALUATIONS:
        if estimate is not None and not has_val:
            continue
        options = {"tau": config.inference_tau, "corrected": corrected, "estimate": estimate}
        if estimate is not None:
            options.update(val_logits=val_logits, val_labels=val_labels)
        rows[key] = {
            "shift": evaluate_under_shift(
                test_logits, test_labels, class_counts, config.loss, seeds=seeds, **options
            ),
            "uniform": uniform_summary(
                test_logits, test_labels, class_counts, config.loss, **options
            ),
        }
    return rows


def report_markdown(report: Mapping[str, Any]) -> str:
    """The shift table (rows x 11 distributions, accuracy in %) and the run's speed."""
    lines = [
        f"# `python -m lade_tf.train`: {report['config']['loss']} on {report['examples']}",
        "",
        f"Backend {report['backend']} on {', '.join(report['devices'])}; "
        f"{report['train_images']} training images, {report['config']['epochs']} epochs in "
        f"{report['train_seconds']:.1f} s ({report['images_per_second']:.0f} images/s after the "
        "first epoch, which compiles).",
        "",
        "| prediction | " + " | ".join(SHIFT_NAMES) + " | mean |",
        "|---|" + "---:|" * (len(SHIFT_NAMES) + 1),
    ]
    for key, row in report["rows"].items():
        means = [100 * row["shift"][name]["mean"] for name in SHIFT_NAMES]
        cells = " | ".join(f"{m:.1f}" for m in means)
        lines.append(f"| {key} | {cells} | {np.mean(means):.1f} |")
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: Path) -> bool:
    """Accuracy against the test distribution, one line per row; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for key, row in report["rows"].items():
        means = [100 * row["shift"][name]["mean"] for name in SHIFT_NAMES]
        axes.plot(SHIFT_NAMES, means, marker="o", label=key)
    axes.set_xlabel("test distribution (forward F, uniform U, backward B; imbalance ratio)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"{report['config']['loss']}: accuracy under label shift")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------- the command


def train_and_evaluate(
    examples_dir: str,
    output_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    eval_seeds: Sequence[int] = (0, 1, 2),
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Reads the examples, trains, evaluates under shift and writes everything to output_dir.

    Returns:
        The report also written to `shift_eval.json`.

    Raises:
        ValueError / FileNotFoundError: for an examples directory that cannot be read.
    """
    started = time.perf_counter()
    info = read_class_info(examples_dir)
    shape = (info["height"], info["width"], info["channels"])
    class_counts = [int(c) for c in info["counts"]["train"]]
    splits = {}
    for split in ("train", "val", "test"):
        split_started = time.perf_counter()
        splits[split] = read_split(examples_dir, split, shape)
        log(
            f"read {len(splits[split][1])} {split} images {shape} in "
            f"{time.perf_counter() - split_started:.1f} s"
        )
    train_images, train_labels = select_training_subset(
        *splits["train"], config.max_train_examples, config.seed
    )
    log(
        f"training {resolve_arch(config.arch, shape)} with {config.loss} on "
        f"{len(train_labels)} images, backend "
        f"{keras.backend.backend()}"
    )
    fit_started = time.perf_counter()
    model, history = fit(
        config, train_images, train_labels, class_counts, val=splits["val"], verbose=verbose
    )
    train_seconds = time.perf_counter() - fit_started
    test_logits = predict_logits(model, splits["test"][0])
    val_logits = predict_logits(model, splits["val"][0])
    rates = history["images_per_second"]
    report = {
        "examples": os.fspath(examples_dir),
        "config": config.to_dict(),
        "backend": keras.backend.backend(),
        "devices": _device_names(),
        "train_images": len(train_labels),
        "train_seconds": train_seconds,
        "images_per_second": float(np.median(rates[1:] if len(rates) > 1 else rates)),
        "wall_seconds": None,
        "rows": shift_report(
            config,
            test_logits,
            splits["test"][1],
            val_logits,
            splits["val"][1],
            class_counts,
            eval_seeds,
        ),
    }
    report["wall_seconds"] = time.perf_counter() - started
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save(output / "model.keras")
    (output / "history.json").write_text(json.dumps(history, indent=1))
    (output / "shift_eval.json").write_text(json.dumps(report, indent=1))
    (output / "shift_eval.md").write_text(report_markdown(report))
    plot_report(report, output / "shift_eval.png")
    print(report_markdown(report))
    log(f"wrote {output}/shift_eval.{{json,md,png}} and model.keras")
    return report


def _device_names() -> list[str]:
    if keras.backend.backend() == "jax":
        import jax

        return [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    if keras.backend.backend() == "torch":
        import torch

        return ["cuda:" + torch.cuda.get_device_name()] if torch.cuda.is_available() else ["cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]
