"""Training: `train_model` trains any loss of `lade_tf.losses` on any model of `lade_tf.models`.

It is what the TFX Trainer, the Tuner and `python -m pipeline.trainer` call. TensorFlow-specific
(tf.data, tf.distribute, tf.train.Checkpoint); the math stays in `lade_tf.losses`. The pieces it
uses live in modules named after them: `train_config` (TrainConfig), `schedules` (warm-up then
decay), `input_pipeline` (tf.data), `strategies` (tf.distribute) and `checkpoints` (resume).

Two training paths, one behaviour:
- `model.fit` for the default, one-device, `MirroredStrategy` and `TPUStrategy` cases;
- a custom loop with `strategy.run` for `MultiWorkerMirroredStrategy`, where Keras 3 `fit` fails
  (keras-team/keras#20585). Each replica computes the loss of its share of the global batch (the
  LADER statistics are gathered over the global batch inside `lade_tf.losses`), divides it by the
  replica count, and the optimizer sums the gradients across replicas.
With more than one replica, batch normalisation is synchronised across replicas, so a step of N
replicas equals a one-device step on the global batch.

Calling `train_model` again with the same `checkpoint_dir` resumes after the last completed
epoch; a finished run returns at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import time
import warnings
from typing import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from lade_tf.checkpoints import HISTORY_FILE, CheckpointCallback, EpochState, read_history
from lade_tf.input_pipeline import augment_image, eval_dataset, steps_per_epoch, train_dataset
from lade_tf.losses import make_loss
from lade_tf.metrics import balanced_accuracy
from lade_tf.models import build_model, resolve_arch
from lade_tf.recipe import (
    build_training_model,
    dtype_policy,
    make_optimizer,
    training_metrics,
)
from lade_tf.schedules import WarmupSchedule, warmup_schedule
from lade_tf.strategies import is_chief, make_strategy, uses_custom_loop
from lade_tf.train_config import OPTIMIZERS, SCHEDULES, STRATEGIES, TrainConfig

# The names callers use as `training.X`, defined in the modules above.
__all__ = [
    "HISTORY_FILE",
    "OPTIMIZERS",
    "SCHEDULES",
    "STRATEGIES",
    "TrainConfig",
    "WarmupSchedule",
    "augment_image",
    "eval_dataset",
    "is_chief",
    "make_strategy",
    "read_history",
    "steps_per_epoch",
    "train_dataset",
    "train_model",
    "warmup_schedule",
]


# --------------------------------------------------------------------------- model set-up


def _training_dtype_policy(config: TrainConfig, strategy: tf.distribute.Strategy) -> str:
    if not config.mixed_precision:
        return "float32"
    return "mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy) else "mixed_float16"


def _synchronize_batch_norm(layer: keras.layers.Layer) -> None:
    """Batch statistics over the global batch (all replicas), not each replica's share."""
    for sublayer in getattr(layer, "layers", ()):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            sublayer.synchronized = True
        _synchronize_batch_norm(sublayer)


def _device_names(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices the strategy computes on; for the default strategy, where TF places ops."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: the first GPU if there is one, else the CPU
        devices = [
            (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices())[0].name
        ]
    return [device.split("device:")[-1] for device in devices]


def _build_training_model(
    config: TrainConfig,
    num_classes: int,
    input_shape: Sequence[int],
    strategy: tf.distribute.Strategy,
) -> keras.Model:
    model = build_training_model(
        config, num_classes, input_shape, _training_dtype_policy(config, strategy)
    )
    if strategy.num_replicas_in_sync > 1:
        _synchronize_batch_norm(model)
    return model


def _inference_copy(
    model: keras.Model, config: TrainConfig, num_classes: int, input_shape: Sequence[int]
) -> keras.Model:
    """A float32, uncompiled, undistributed copy with the trained weights, for export/evaluation."""
    with dtype_policy("float32"):
        copy = build_model(config.arch, num_classes, tuple(input_shape))
    copy.set_weights([np.asarray(w) for w in model.get_weights()])
    return copy


# --------------------------------------------------------------------------- training


def _tensorboard_log_dir(log_dir: str | os.PathLike | None) -> str | None:
    """log_dir if logs can be written; None (with a warning) when TensorBoard is missing."""
    if log_dir is None:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        warnings.warn(f"TensorBoard is not installed: no training logs are written to {log_dir}")
        return None
    return os.fspath(log_dir)


def train_model(
    config: TrainConfig,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    class_counts: Sequence[int],
    input_shape: Sequence[int],
    checkpoint_dir: str | os.PathLike | None,
    log_dir: str | os.PathLike | None,
    *,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> keras.Model:
    """Trains `config.loss` on `train_ds`, checkpointing each epoch; resumes from checkpoint_dir.

    Args:
        config: the run's settings.
        train_ds: one epoch of (images, labels) batches of the GLOBAL batch size, e.g. from
            `train_dataset`; it is repeated, and an epoch is `steps_per_epoch(config,
            class_counts)` batches, so its size should match `class_counts` (and
            `config.max_train_examples`).
        val_ds: validation batches (e.g. `eval_dataset`) evaluated after each epoch, or None.
        class_counts: training images per class [C] (the loss's source prior).
        input_shape: (H, W, C) of the images.
        checkpoint_dir: where per-epoch checkpoints and history.json go (None: no checkpoints).
        log_dir: TensorBoard log directory (None: no logs).
        strategy: a strategy already made (required for "multi_worker", see `make_strategy`);
            default `make_strategy(config.strategy)`.
        callbacks: extra Keras callbacks (fit path only; not called by the multi-worker loop).
        verbose: Keras progress output: 0, 1 (progress bar), 2 (a line per epoch) or "auto"
            (a bar on a terminal, lines otherwise).

    Returns:
        The trained model (raw pixels -> raw logits): a float32, uncompiled copy outside any
        strategy, ready for `lade_tf.export` and evaluation.

    Raises:
        ValueError: if the global batch does not split evenly over the replicas, or the training
            set is smaller than one batch.
    """
    strategy = strategy or make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size = {config.batch_size}: the global batch must be divisible "
            f"by the {replicas} replicas of the strategy"
        )
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if verbose and is_chief(strategy):
        print(
            f"Training {resolve_arch(config.arch, input_shape)} with {config.loss} on "
            f"{', '.join(_device_names(strategy))}: "
            f"{replicas} replica(s), dtype policy {_training_dtype_policy(config, strategy)}, "
            f"XLA {'on' if config.xla else 'off'}",
            flush=True,
        )
    keras.utils.set_random_seed(config.seed)
    num_classes = len(class_counts)
    schedule = warmup_schedule(config, steps_per_epoch(config, class_counts))
    loss = make_loss(config.loss, list(class_counts), **config.loss_options())

    run = _TrainingRun(
        config=config,
        strategy=strategy,
        train_ds=train_ds,
        val_ds=val_ds,
        class_counts=class_counts,
        input_shape=input_shape,
        schedule=schedule,
        loss=loss,
        checkpoint_dir=checkpoint_dir,
        log_dir=log_dir,
        verbose=verbose,
    )
    if uses_custom_loop(strategy):
        model = _train_custom_loop(run)
    else:
        model = _train_fit(run, callbacks)
    return _inference_copy(model, config, num_classes, input_shape)


@dataclasses.dataclass(frozen=True)
class _TrainingRun:
    """What both training paths take: the arguments of `train_model` and what it derived."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset | None
    class_counts: Sequence[int]
    input_shape: tuple[int, int, int]
    schedule: WarmupSchedule
    loss: keras.losses.Loss
    checkpoint_dir: str | os.PathLike | None
    log_dir: str | os.PathLike | None
    verbose: int


def _train_fit(run: _TrainingRun, callbacks: Sequence[keras.callbacks.Callback]) -> keras.Model:
    config, strategy, schedule = run.config, run.strategy, run.schedule
    class_counts = run.class_counts
    checkpoint_dir, log_dir, val_ds = run.checkpoint_dir, run.log_dir, run.val_ds
    num_classes = len(class_counts)
    with strategy.scope():
        model = _build_training_model(config, num_classes, run.input_shape, strategy)
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss=run.loss,
            metrics=training_metrics(num_classes),
            jit_compile=config.xla,
        )
        # compile() may wrap the optimizer (LossScaleOptimizer under mixed_float16): track that.
        state = EpochState(checkpoint_dir, model, model.optimizer)
    initial_epoch = int(state.epoch.numpy())
    if initial_epoch >= config.epochs:
        return model
    all_callbacks = [CheckpointCallback(state, schedule)]
    if _tensorboard_log_dir(log_dir) is not None:
        all_callbacks.append(keras.callbacks.TensorBoard(os.fspath(log_dir)))
    all_callbacks.extend(callbacks)
    # A repeated dataset with explicit steps: with an unknown cardinality Keras 3 makes one extra
    # train-function call per epoch that fails at the end of the data but still increments the
    # optimizer's step counter, which would shift the learning-rate schedule.
    # Validation likewise: a finite dataset of unknown size makes Keras warn that the input ran
    # out of data each epoch; one counted pass of a repeated dataset is explicit.
    val_steps = None
    if val_ds is not None:
        val_steps = int(val_ds.reduce(np.int64(0), lambda count, _: count + 1))
        val_ds = val_ds.repeat() if val_steps else None
    model.fit(
        run.train_ds.repeat(),
        steps_per_epoch=steps_per_epoch(config, class_counts),
        validation_data=val_ds,
        validation_steps=val_steps or None,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=all_callbacks,
        verbose=run.verbose,
        shuffle=False,
    )
    return model


def _train_custom_loop(run: _TrainingRun) -> keras.Model:
    """MultiWorkerMirroredStrategy: strategy.run over the global batches, same logs as fit."""
    config, strategy, schedule = run.config, run.strategy, run.schedule
    class_counts = run.class_counts
    checkpoint_dir, log_dir, val_ds, loss = run.checkpoint_dir, run.log_dir, run.val_ds, run.loss
    verbose = run.verbose
    num_classes = len(class_counts)
    chief = is_chief(strategy)
    options = tf.data.Options()
    # DATA sharding: every worker reads all files and keeps its slice of each global batch, so
    # the global batches are exactly those of a single worker (FILE sharding would regroup them).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(
        run.train_ds.repeat().with_options(options)
    )
    with strategy.scope():
        model = _build_training_model(config, num_classes, run.input_shape, strategy)
        optimizer = make_optimizer(config, schedule)
        if model.dtype_policy.name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        worker_dir = None
        if checkpoint_dir is not None and not chief:
            # Every worker saves (saving may run collectives); only the chief's copy is kept.
            worker_dir = os.path.join(
                os.path.dirname(os.fspath(checkpoint_dir).rstrip("/")),
                f".worker_{strategy.cluster_resolver.task_id}_tmp",
            )
        state = EpochState(checkpoint_dir, model, optimizer, write=chief, worker_dir=worker_dir)

    train_step = _distributed_train_step(strategy, model, optimizer, loss, config.xla)
    predict_step = tf.function(lambda images: model(images, training=False))
    writers = {}
    if _tensorboard_log_dir(log_dir) is not None and chief:
        writers = {
            split: tf.summary.create_file_writer(os.path.join(os.fspath(log_dir), split))
            for split in ("train", "validation")
        }
    batches = iter(distributed)
    for epoch in range(int(state.epoch.numpy()), config.epochs):
        started = time.perf_counter()
        if chief and verbose:
            print(f"Epoch {epoch + 1}/{config.epochs}")
        logs = _run_epoch(
            train_step,
            batches,
            steps_per_epoch(config, class_counts),
            config.batch_size,
            verbose if chief else 0,
        )
        if val_ds is not None:
            logs.update(_evaluate(predict_step, model, loss, val_ds))
        logs["learning_rate"] = float(schedule(optimizer.iterations - 1))
        logs["epoch_seconds"] = time.perf_counter() - started
        _write_epoch_summaries(writers, epoch, logs)
        if chief and verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        state.end_epoch(epoch, logs)
    return model


def _distributed_train_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    loss: keras.losses.Loss,
    xla: bool,
):
    """A tf.function: one global batch -> (summed loss, summed correct predictions)."""
    replicas = strategy.num_replicas_in_sync

    @tf.autograph.experimental.do_not_convert  # plain TF ops; autograph trips on Loss.call
    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            # The unreduced per-sample values (Loss.call): Keras' own reduction already divides
            # by the replica count in some versions; here the division is done exactly once.
            step_loss = tf.reduce_mean(loss.call(labels, logits))
            if model.losses:
                step_loss += tf.add_n(model.losses)
            scaled = step_loss / replicas
            # LossScaleOptimizer multiplies by its loss scale here and divides the gradients back.
            scaled_for_gradients = optimizer.scale_loss(scaled)
        gradients = tape.gradient(scaled_for_gradients, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.cast(labels, tf.int64)), tf.float32)
        )
        return scaled, correct

    step_fn = tf.function(replica_step, jit_compile=True) if xla else replica_step

    @tf.function
    def train_step(batch):
        scaled, correct = strategy.run(step_fn, args=batch)
        return (
            strategy.reduce(tf.distribute.ReduceOp.SUM, scaled, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None),
        )

    return train_step


def _run_epoch(
    train_step, batches: Iterator, steps: int, batch_size: int, verbose: int
) -> dict[str, float]:
    """`steps` training steps with a Keras progress bar; returns the epoch's loss and accuracy."""
    progress = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=["loss", "accuracy"])
    losses, correct_total, seen = [], 0.0, 0
    for step in range(steps):
        step_loss, correct = train_step(next(batches))
        losses.append(float(step_loss))
        correct_total += float(correct)
        seen += batch_size
        progress.update(
            step + 1, [("loss", float(np.mean(losses))), ("accuracy", correct_total / seen)]
        )
    return {"loss": float(np.mean(losses)), "accuracy": correct_total / max(seen, 1)}


def _evaluate(
    predict_step, model: keras.Model, loss: keras.losses.Loss, val_ds: tf.data.Dataset
) -> dict[str, float]:
    """Validation logs as Keras evaluate() computes them: the loss per batch (+ regularisation),
    weighted by batch size, accuracy and balanced accuracy."""
    logits, labels, batch_losses = [], [], []
    regularisation = float(sum(model.losses)) if model.losses else 0.0
    for images, batch_labels in val_ds:
        logits.append(predict_step(images).numpy())
        labels.append(batch_labels.numpy())
        batch_losses.append(float(np.mean(loss.call(labels[-1], logits[-1]))) + regularisation)
    sizes = [len(batch) for batch in labels]
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {
        "val_loss": float(np.average(batch_losses, weights=sizes)),
        "val_accuracy": float(np.mean(logits.argmax(-1) == labels)),
        "val_balanced_accuracy": balanced_accuracy(labels, logits),
    }


def _write_epoch_summaries(writers: dict, epoch: int, logs: dict[str, float]) -> None:
    """TensorBoard scalars named as Keras' TensorBoard callback names them."""
    for split, writer in writers.items():
        with writer.as_default(step=epoch):
            for name, value in logs.items():
                is_val = name.startswith("val_")
                if is_val == (split == "validation"):
                    tf.summary.scalar(f"epoch_{name[4:] if is_val else name}", value)
