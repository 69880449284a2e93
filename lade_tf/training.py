"""Training: the config, learning-rate schedules, tf.data input, strategies and the training loop.

One function, `train_model`, trains any loss of `lade_tf.losses` on any model of `lade_tf.models`
and is what the TFX Trainer, the Tuner and `python -m pipeline.trainer` call. TensorFlow-specific
(tf.data, tf.distribute, tf.train.Checkpoint); the math stays in `lade_tf.losses`.

Recipe (DESIGN section 10): SGD with momentum 0.9, weight decay 5e-4, batch 128, a linear warm-up
then cosine decay to 0 (default) or the reference step decay (x0.01 at 60% and again at 80% of the
steps). Weight decay is the reference's coupled L2 penalty (PyTorch `SGD(weight_decay=wd)`): the
gradient of every trainable variable gets `wd * w` and goes through momentum, implemented as an L2
regulariser `wd / 2 * ||w||^2` on every trainable variable (kernels, biases, batch-norm scales and
offsets). Keras' own `SGD(weight_decay=...)` is decoupled (`w -= lr * wd * w`, bypassing momentum),
in steady state about 1 / (1 - momentum) = 10x weaker at momentum 0.9. With `optimizer="adam"` the
decay is decoupled (AdamW).

Two training paths, one behaviour:
- `model.fit` for the default, one-device, `MirroredStrategy` and `TPUStrategy` cases;
- a custom loop with `strategy.run` for `MultiWorkerMirroredStrategy`, where Keras 3 `fit` fails
  (keras-team/keras#20585). Each replica computes the loss of its share of the global batch (the
  LADER statistics are gathered over the global batch inside `lade_tf.losses`), divides it by the
  replica count, and the optimizer sums the gradients across replicas.
With more than one replica, batch normalisation is synchronised across replicas, so a step of N
replicas equals a one-device step on the global batch (the two-worker test checks the loss curve).

Checkpoints: `tf.train.Checkpoint` (model, optimizer with its step count and momenta, epoch) after
every epoch in `checkpoint_dir` (the last 3 are kept), plus `history.json` with one row of metrics
per epoch. Calling `train_model` again with the same `checkpoint_dir` resumes after the last
completed epoch; a finished run returns at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from lade_tf.losses import LOSS_NAMES, make_loss
from lade_tf.metrics import BalancedAccuracy, balanced_accuracy
from lade_tf.models import build_model
from lade_tf.records import parse_dataset

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "cpu")
#: Step decay of the reference schedule: fractions of training where the rate is multiplied.
STEP_MILESTONES = (0.6, 0.8)
STEP_DECAY_FACTOR = 0.01
#: Checkpoints kept in checkpoint_dir (older ones are deleted as new epochs are saved).
CHECKPOINTS_KEPT = 3
HISTORY_FILE = "history.json"

# Options of each loss in TrainConfig (make_loss rejects options a loss does not take).
_LOSS_OPTIONS = {"lade": ("alpha", "remine_lambda", "importance", "lader_classes"),
                 "logit_adjusted": ("tau",)}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines one training run; JSON-safe through `to_dict` / `from_dict`.

    Defaults are the Fashion-MNIST-LT recipe for a CPU budget: small CNN, 8 epochs (1 of linear
    warm-up, then cosine) at lr 0.1, batch 128; about 52 CPU-seconds an epoch (30-40 s on 2
    cores). CIFAR-LT with ResNet-32 wants about 30 epochs with 5 warm-up epochs (DESIGN 10).

    Args:
        loss: "ce", "lade", "balanced_softmax" or "logit_adjusted" (lade_tf.losses.LOSS_NAMES).
        alpha, remine_lambda, importance, lader_classes: LADE's options (ignored by other losses).
        tau: the logit-adjusted loss's temperature (ignored by other losses).
        arch: model name for `lade_tf.models.build_model` ("auto": small CNN for 28x28 grey,
            ResNet-32 otherwise).
        epochs: training epochs (>= 1).
        batch_size: GLOBAL batch size (split evenly over replicas).
        optimizer: "sgd" (momentum, coupled L2 weight decay) or "adam" (AdamW).
        learning_rate: peak learning rate, reached at the end of the warm-up.
        schedule: decay after the warm-up: "cosine" (to 0 at the last step), "step" (x0.01 at 60%
            and again at 80% of the steps) or "constant".
        warmup_epochs: length of the linear warm-up in epochs (capped at half of training).
        weight_decay: L2 coefficient wd (>= 0).
        momentum: SGD momentum in [0, 1).
        seed: seed of weight initialisation, shuffling and augmentation.
        strategy: "auto" (MirroredStrategy with more than one GPU, else the default), "mirrored",
            "multi_worker" (TF_CONFIG), "tpu" or "cpu".
        mixed_precision: compute in float16 (bfloat16 on TPU), variables and losses in float32.
        xla: compile the training step with XLA (`jit_compile`).
        augment: random crop after zero padding (pad = height // 8) and horizontal flip.
        max_train_examples: train on a seeded random subset of at most this many examples
            (None = all); used by quick runs.
    """

    loss: str = "ce"
    alpha: float = 0.1
    remine_lambda: float = 0.1
    importance: str = "sample"
    lader_classes: str = "all"
    tau: float = 1.0
    arch: str = "auto"
    epochs: int = 8
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0
    strategy: str = "auto"
    mixed_precision: bool = False
    xla: bool = False
    augment: bool = True
    max_train_examples: int | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("loss", LOSS_NAMES), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES), ("strategy", STRATEGIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} = {getattr(self, name)!r}: expected one of {allowed}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected an integer >= 1")
        if self.max_train_examples is not None and (
                isinstance(self.max_train_examples, bool)
                or not isinstance(self.max_train_examples, int) or self.max_train_examples < 1):
            raise ValueError(f"max_train_examples = {self.max_train_examples!r}: expected None or "
                             "an integer >= 1")
        for name in ("learning_rate",):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r}: expected a finite number > 0")
        for name in ("alpha", "remine_lambda", "tau", "warmup_epochs", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} = {value!r}: expected a finite number >= 0")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum = {self.momentum!r}: expected a number in [0, 1)")
        for name in ("mixed_precision", "xla", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} = {getattr(self, name)!r}: expected true or false")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-safe dict (field name -> value)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """A config from `to_dict` output (or any subset of fields; the rest keep defaults).

        Raises:
            ValueError: for keys that are not fields (named in the message) or invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; known keys: {sorted(fields)}")
        return cls(**dict(values))

    def loss_options(self) -> dict[str, Any]:
        """The options `lade_tf.losses.make_loss` takes for this config's loss."""
        return {name: getattr(self, name) for name in _LOSS_OPTIONS.get(self.loss, ())}


# --------------------------------------------------------------------------- learning rate

@keras.saving.register_keras_serializable(package="lade_tf")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a peak rate, then cosine, step or constant decay (per optimizer step).

    Formula (step s counted from 0, T total steps, W warm-up steps, peak rate r):
        s <  W:  r * (s + 1) / W
        s >= W:  cosine:   r * 0.5 * (1 + cos(pi * min(1, (s - W) / (T - W))))
                 step:     r * factor ** #{m in milestones : s >= m * T}
                 constant: r

    Args:
        peak_learning_rate: r (> 0).
        total_steps: T (>= 1).
        warmup_steps: W (0 <= W < T).
        decay: "cosine", "step" or "constant".
        milestones: fractions of T where the step decay multiplies by `factor`.
        factor: step decay factor.
    """

    def __init__(self, peak_learning_rate: float, total_steps: int, warmup_steps: int,
                 decay: str = "cosine", milestones: Sequence[float] = STEP_MILESTONES,
                 factor: float = STEP_DECAY_FACTOR):
        if decay not in SCHEDULES:
            raise ValueError(f"decay = {decay!r}: expected one of {SCHEDULES}")
        if int(total_steps) < 1 or not 0 <= int(warmup_steps) < int(total_steps):
            raise ValueError(f"total_steps = {total_steps!r}, warmup_steps = {warmup_steps!r}: "
                             "expected total_steps >= 1 and 0 <= warmup_steps < total_steps")
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.milestones = [float(m) for m in milestones]
        self.factor = float(factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        if self.decay == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            progress = ops.clip(progress, 0.0, 1.0)
            decayed = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "step":
            passed = sum(ops.cast(step >= m * self.total_steps, "float32")
                         for m in self.milestones) if self.milestones else 0.0
            decayed = peak * ops.power(self.factor, passed)
        else:
            decayed = ops.convert_to_tensor(peak, "float32")
        if self.warmup_steps == 0:
            return decayed
        warm = peak * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {"peak_learning_rate": self.peak_learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "decay": self.decay,
                "milestones": self.milestones, "factor": self.factor}


def warmup_schedule(config: TrainConfig, steps_per_epoch: int) -> WarmupSchedule:
    """The learning-rate schedule of a config: warm-up, then `config.schedule` decay.

    The warm-up lasts `config.warmup_epochs` epochs but at most half of training, so a two-epoch
    quick run still reaches the peak rate.

    Raises:
        ValueError: if steps_per_epoch < 1.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch = {steps_per_epoch!r}: expected >= 1 (is the training "
                         "set smaller than one batch?)")
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total // 2)
    return WarmupSchedule(config.learning_rate, total, warmup, config.schedule)


# --------------------------------------------------------------------------- input pipeline

def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random crop of the zero-padded image and random horizontal flip (stateless, seeded).

    Padding is height // 8 pixels on each side (4 for 32x32 CIFAR and 28x28 Fashion-MNIST, the
    CIFAR reference recipe; 1 for 8x8). The flip suits natural images and clothes, not text.

    Args:
        image: float32 [H, W, C] raw pixels (0..255; padding adds zeros, i.e. black).
        seed: int [2], the stateless random seed of this image.
    """
    height, width = image.shape[0], image.shape[1]
    pad = max(1, height // 8)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def train_dataset(file_pattern: str | Sequence[str], image_shape: Sequence[int], batch_size: int,
                  *, augment: bool = True, seed: int = 0, max_examples: int | None = None,
                  shuffle_buffer: int = 16384, cache: bool = True) -> tf.data.Dataset:
    """Shuffled, augmented, batched training data from TFRecords of `lade_tf.records`.

    Order: parallel decode -> (seeded subset) -> cache -> shuffle (reshuffled every epoch) ->
    augment (parallel, stateless per-image seeds) -> batch with drop_remainder -> prefetch.
    Full batches only, so every step (and every replica's share) has the same size. The order is
    a function of `seed` and of TensorFlow's global seed when the dataset is made (none, or the
    one `keras.utils.set_random_seed` set), so processes that build it alike read it alike.

    Args:
        file_pattern: gzip TFRecord file pattern(s), e.g. "<examples>/Split-train/*".
        image_shape: (H, W, C).
        batch_size: the global batch size.
        augment: apply `augment_image`.
        seed: seed of the subset, the shuffle order and the augmentation.
        max_examples: keep a seeded random subset of this many examples (None = all).
        shuffle_buffer: shuffle buffer size in examples (a full shuffle when >= the data size).
        cache: cache decoded images in memory.

    Returns:
        A dataset of (images float32 [batch, H, W, C] 0..255, labels int64 [batch]).
    """
    data = parse_dataset(file_pattern, tuple(image_shape))
    if max_examples is not None:
        data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        data = data.take(max_examples)
    if cache:
        data = data.cache()
    data = data.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
        data = tf.data.Dataset.zip((data, seeds)).map(
            lambda example, image_seed: (augment_image(example[0], image_seed), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(file_pattern: str | Sequence[str], image_shape: Sequence[int], batch_size: int,
                 *, cache: bool = True) -> tf.data.Dataset:
    """Evaluation data in file order, no augmentation, the last batch possibly smaller.

    Returns:
        A dataset of (images float32 [batch, H, W, C] 0..255, labels int64 [batch]).
    """
    data = parse_dataset(file_pattern, tuple(image_shape))
    if cache:
        data = data.cache()
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(config: TrainConfig, class_counts: Sequence[int]) -> int:
    """Full global batches per epoch for a training set with these class counts."""
    examples = int(sum(class_counts))
    if config.max_train_examples is not None:
        examples = min(examples, config.max_train_examples)
    return examples // config.batch_size


# --------------------------------------------------------------------------- strategies

def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The tf.distribute strategy for a name.

    "multi_worker" must be created before any other TensorFlow op of the program (TF configures
    collective ops at start-up), so create it first and pass it to `train_model`. The cluster
    comes from the TF_CONFIG environment variable. "tpu" resolves the TPU named by TPU_NAME (or
    the local one); it could not be tested on this project's machines.

    Args:
        name: "auto" (MirroredStrategy over all GPUs if there are several, else the default
            strategy), "mirrored" (all local GPUs, or the CPU), "multi_worker", "tpu" or "cpu"
            (one-device strategy on the CPU even when GPUs exist).

    Raises:
        ValueError: for an unknown name.
        RuntimeError: if the multi-worker or TPU strategy cannot be created (the message says why).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy = {name!r}: expected one of {STRATEGIES}")
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "multi_worker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(
                f"cannot create MultiWorkerMirroredStrategy ({error}); create it with "
                "make_strategy('multi_worker') before any other TensorFlow op (datasets "
                "included), with TF_CONFIG set for this worker") from error
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(f"strategy 'tpu': no TPU could be resolved or initialised ({error}); "
                           "set TPU_NAME or run on a TPU VM") from error
    return tf.distribute.TPUStrategy(resolver)


def _uses_custom_loop(strategy: tf.distribute.Strategy) -> bool:
    # Keras 3 fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes outputs: always, except on non-chief multi-worker workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


# --------------------------------------------------------------------------- model set-up

@contextlib.contextmanager
def _global_dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside use the dtype policy `name`; the global policy is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _training_dtype_policy(config: TrainConfig, strategy: tf.distribute.Strategy) -> str:
    if not config.mixed_precision:
        return "float32"
    return "mixed_bfloat16" if isinstance(strategy, tf.distribute.TPUStrategy) else \
        "mixed_float16"


def _add_l2_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """wd/2 * ||w||^2 on every trainable variable: gradient wd * w, as PyTorch's coupled decay."""
    if weight_decay <= 0:
        return
    for variable in model.trainable_variables:
        variable.regularizer = keras.regularizers.L2(weight_decay / 2.0)


def _synchronize_batch_norm(layer: keras.layers.Layer) -> None:
    """Batch statistics over the global batch (all replicas), not each replica's share."""
    for sublayer in getattr(layer, "layers", ()):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            sublayer.synchronized = True
        _synchronize_batch_norm(sublayer)


def _make_optimizer(config: TrainConfig, schedule: WarmupSchedule) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def _build_training_model(config: TrainConfig, num_classes: int, input_shape: Sequence[int],
                          strategy: tf.distribute.Strategy) -> keras.Model:
    with _global_dtype_policy(_training_dtype_policy(config, strategy)):
        model = build_model(config.arch, num_classes, tuple(input_shape))
    if config.optimizer == "sgd":
        _add_l2_weight_decay(model, config.weight_decay)
    if strategy.num_replicas_in_sync > 1:
        _synchronize_batch_norm(model)
    return model


def _inference_copy(model: keras.Model, config: TrainConfig, num_classes: int,
                    input_shape: Sequence[int]) -> keras.Model:
    """A float32, uncompiled, undistributed copy with the trained weights, for export/evaluation."""
    with _global_dtype_policy("float32"):
        copy = build_model(config.arch, num_classes, tuple(input_shape))
    copy.set_weights([np.asarray(w) for w in model.get_weights()])
    return copy


# --------------------------------------------------------------------------- checkpoints

class _EpochState:
    """Checkpoint (model, optimizer, epoch) and history.json of one checkpoint directory."""

    def __init__(self, checkpoint_dir: str | os.PathLike | None, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, *, write: bool = True,
                 worker_dir: str | None = None):
        self.directory = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.write = write
        self.history: list[dict[str, float]] = []
        self._manager = None
        self._worker_dir = worker_dir
        if self.directory is None:
            return
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self._manager = tf.train.CheckpointManager(
            checkpoint, self.directory if write else worker_dir, max_to_keep=CHECKPOINTS_KEPT)
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            optimizer.build(model.trainable_variables)
            checkpoint.restore(latest).assert_existing_objects_matched()
            self.history = read_history(self.directory)[:int(self.epoch.numpy())]

    def end_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Records the epoch's metrics and saves the checkpoint (every worker must call it)."""
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self.epoch.assign(epoch + 1)
        if self._manager is None:
            return
        self._manager.save(checkpoint_number=epoch + 1)
        if self.write:
            with tf.io.gfile.GFile(os.path.join(self.directory, HISTORY_FILE), "w") as handle:
                json.dump(self.history, handle, indent=1)
        elif self._worker_dir:
            tf.io.gfile.rmtree(self._worker_dir)


class _CheckpointCallback(keras.callbacks.Callback):
    """Adds learning rate and epoch time to the logs, then checkpoints (fit path)."""

    def __init__(self, state: _EpochState, schedule: WarmupSchedule):
        super().__init__()
        self._state = state
        self._schedule = schedule
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self._schedule(self.model.optimizer.iterations - 1))
            logs["epoch_seconds"] = time.perf_counter() - self._started
        self._state.end_epoch(epoch, logs or {})


def read_history(checkpoint_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The per-epoch metrics `train_model` wrote to checkpoint_dir/history.json ([] if none)."""
    path = os.path.join(os.fspath(checkpoint_dir), HISTORY_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


# --------------------------------------------------------------------------- training

def _tensorboard_log_dir(log_dir: str | os.PathLike | None) -> str | None:
    """log_dir if logs can be written; None (with a warning) when TensorBoard is missing."""
    if log_dir is None:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        warnings.warn(f"TensorBoard is not installed: no training logs are written to {log_dir}")
        return None
    return os.fspath(log_dir)


def train_model(config: TrainConfig, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset | None,
                class_counts: Sequence[int], input_shape: Sequence[int],
                checkpoint_dir: str | os.PathLike | None, log_dir: str | os.PathLike | None, *,
                strategy: tf.distribute.Strategy | None = None,
                callbacks: Sequence[keras.callbacks.Callback] = (),
                verbose: int | str = "auto") -> keras.Model:
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
        raise ValueError(f"batch_size = {config.batch_size}: the global batch must be divisible "
                         f"by the {replicas} replicas of the strategy")
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    keras.utils.set_random_seed(config.seed)
    num_classes = len(class_counts)
    schedule = warmup_schedule(config, steps_per_epoch(config, class_counts))
    loss = make_loss(config.loss, list(class_counts), **config.loss_options())

    if _uses_custom_loop(strategy):
        model = _train_custom_loop(config, strategy, train_ds, val_ds, class_counts, input_shape,
                                   schedule, loss, checkpoint_dir, log_dir, verbose)
    else:
        model = _train_fit(config, strategy, train_ds, val_ds, class_counts, input_shape,
                           schedule, loss, checkpoint_dir, log_dir, callbacks, verbose)
    return _inference_copy(model, config, num_classes, input_shape)


def _train_fit(config, strategy, train_ds, val_ds, class_counts, input_shape, schedule, loss,
               checkpoint_dir, log_dir, callbacks, verbose) -> keras.Model:
    num_classes = len(class_counts)
    with strategy.scope():
        model = _build_training_model(config, num_classes, input_shape, strategy)
        model.compile(optimizer=_make_optimizer(config, schedule), loss=loss,
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                               BalancedAccuracy(num_classes, name="balanced_accuracy")],
                      jit_compile=config.xla)
        # compile() may wrap the optimizer (LossScaleOptimizer under mixed_float16): track that.
        state = _EpochState(checkpoint_dir, model, model.optimizer)
    initial_epoch = int(state.epoch.numpy())
    if initial_epoch >= config.epochs:
        return model
    all_callbacks = [_CheckpointCallback(state, schedule)]
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
    model.fit(train_ds.repeat(), steps_per_epoch=steps_per_epoch(config, class_counts),
              validation_data=val_ds, validation_steps=val_steps or None, epochs=config.epochs,
              initial_epoch=initial_epoch, callbacks=all_callbacks, verbose=verbose,
              shuffle=False)
    return model


def _train_custom_loop(config, strategy, train_ds, val_ds, class_counts, input_shape, schedule,
                       loss, checkpoint_dir, log_dir, verbose) -> keras.Model:
    """MultiWorkerMirroredStrategy: strategy.run over the global batches, same logs as fit."""
    replicas = strategy.num_replicas_in_sync
    num_classes = len(class_counts)
    chief = is_chief(strategy)
    options = tf.data.Options()
    # DATA sharding: every worker reads all files and keeps its slice of each global batch, so
    # the global batches are exactly those of a single worker (FILE sharding would regroup them).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    distributed = strategy.experimental_distribute_dataset(
        train_ds.repeat().with_options(options))
    with strategy.scope():
        model = _build_training_model(config, num_classes, input_shape, strategy)
        optimizer = _make_optimizer(config, schedule)
        if model.dtype_policy.name == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        worker_dir = None
        if checkpoint_dir is not None and not chief:
            # Every worker saves (saving may run collectives); only the chief's copy is kept.
            worker_dir = os.path.join(os.path.dirname(os.fspath(checkpoint_dir).rstrip("/")),
                                      f".worker_{strategy.cluster_resolver.task_id}_tmp")
        state = _EpochState(checkpoint_dir, model, optimizer, write=chief, worker_dir=worker_dir)

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
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, axis=-1), tf.cast(labels, tf.int64)), tf.float32))
        return scaled, correct

    step_fn = tf.function(replica_step, jit_compile=True) if config.xla else replica_step

    @tf.function
    def train_step(batch):
        scaled, correct = strategy.run(step_fn, args=batch)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, scaled, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    @tf.function
    def predict_step(images):
        return model(images, training=False)

    writers = {}
    if _tensorboard_log_dir(log_dir) is not None and chief:
        writers = {split: tf.summary.create_file_writer(os.path.join(os.fspath(log_dir), split))
                   for split in ("train", "validation")}
    steps = steps_per_epoch(config, class_counts)
    batches = iter(distributed)
    for epoch in range(int(state.epoch.numpy()), config.epochs):
        started = time.perf_counter()
        progress = keras.utils.Progbar(steps, verbose=verbose if chief else 0,
                                       stateful_metrics=["loss", "accuracy"])
        if chief and verbose:
            print(f"Epoch {epoch + 1}/{config.epochs}")
        losses, correct_total, seen = [], 0.0, 0
        for step in range(steps):
            step_loss, correct = train_step(next(batches))
            losses.append(float(step_loss))
            correct_total += float(correct)
            seen += config.batch_size
            progress.update(step + 1, [("loss", float(np.mean(losses))),
                                       ("accuracy", correct_total / seen)])
        logs = {"loss": float(np.mean(losses)), "accuracy": correct_total / max(seen, 1)}
        if val_ds is not None:
            # As Keras evaluate(): the loss per batch (+ regularisation), weighted by batch size.
            logits, labels, batch_losses = [], [], []
            regularisation = float(sum(model.losses)) if model.losses else 0.0
            for images, batch_labels in val_ds:
                logits.append(predict_step(images).numpy())
                labels.append(batch_labels.numpy())
                batch_losses.append(float(np.mean(loss.call(labels[-1], logits[-1])))
                                    + regularisation)
            sizes = [len(batch) for batch in labels]
            logits, labels = np.concatenate(logits), np.concatenate(labels)
            logs.update(val_loss=float(np.average(batch_losses, weights=sizes)),
                        val_accuracy=float(np.mean(logits.argmax(-1) == labels)),
                        val_balanced_accuracy=balanced_accuracy(labels, logits))
        logs["learning_rate"] = float(schedule(optimizer.iterations - 1))
        logs["epoch_seconds"] = time.perf_counter() - started
        for split, writer in writers.items():
            with writer.as_default(step=epoch):
                for name, value in logs.items():
                    is_val = name.startswith("val_")
                    if is_val == (split == "validation"):
                        tf.summary.scalar(f"epoch_{name[4:] if is_val else name}", value)
        if chief and verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        state.end_epoch(epoch, logs)
    return model
