"""The training recipe's backend-agnostic pieces, shared by `lade_tf.tf_training` (TensorFlow)
and `lade_tf.array_training` (any Keras backend): the model under a dtype policy with the coupled
L2 weight decay, the optimizer, the compiled metrics and the steps per epoch (docs/design.md
section 10)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import keras

from lade_tf.metrics import BalancedAccuracy
from lade_tf.models import build_model
from lade_tf.train_config import TrainConfig


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside use the Keras dtype policy `name`; the previous one is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def add_l2_weight_decay(model: keras.Model, weight_decay: float) -> None:
    """wd/2 * ||w||^2 on every trainable variable: gradient wd * w, as PyTorch's coupled decay."""
    if weight_decay <= 0:
        return
    for variable in model.trainable_variables:
        variable.regularizer = keras.regularizers.L2(weight_decay / 2.0)


def build_training_model(
    config: TrainConfig, num_classes: int, input_shape: Sequence[int], policy: str = "float32"
) -> keras.Model:
    """`config.arch` built under the dtype policy `policy`, with SGD's coupled weight decay."""
    with dtype_policy(policy):
        model = build_model(config.arch, num_classes, tuple(input_shape))
    if config.optimizer == "sgd":
        add_l2_weight_decay(model, config.weight_decay)
    return model


def make_optimizer(
    config: TrainConfig, learning_rate: keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """SGD with momentum (decay through the model's regularizers) or AdamW (decoupled decay)."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum)
    return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)


def training_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """The metrics every training compiles: accuracy and balanced (mean per-class) accuracy."""
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        BalancedAccuracy(num_classes, name="balanced_accuracy"),
    ]


def steps_per_epoch(config: TrainConfig, class_counts: Sequence[int]) -> int:
    """Full global batches per epoch for a training set with these class counts."""
    examples = int(sum(class_counts))
    if config.max_train_examples is not None:
        examples = min(examples, config.max_train_examples)
    return examples // config.batch_size
