"""`TrainConfig`: everything that defines one training run, checked where it is made.

Recipe (docs/design.md section 10): SGD with momentum 0.9, weight decay 5e-4, batch 128, a
linear warm-up then cosine decay to 0 (default) or the reference step decay. Weight decay is the
reference's coupled L2 penalty (PyTorch `SGD(weight_decay=wd)`): the gradient of every trainable
variable gets `wd * w` and goes through momentum. Keras' own `SGD(weight_decay=...)` is decoupled
(`w -= lr * wd * w`, bypassing momentum), in steady state about 1 / (1 - momentum) = 10x weaker
at momentum 0.9. With `optimizer="adam"` the decay is decoupled (AdamW).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from lade_tf.checks import check_choice, check_non_negative
from lade_tf.losses import IMPORTANCE_VARIANTS, LADER_CLASS_SETS, LOSS_NAMES, LOSS_OPTIONS

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "cpu")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines one training run; JSON-safe through `to_dict` / `from_dict`.

    Defaults are the Fashion-MNIST-LT recipe for a CPU budget: small CNN, 6 epochs (1 of linear
    warm-up, then cosine) at lr 0.1, batch 128. CIFAR-LT with ResNet-32 wants about 30 epochs
    with 5 warm-up epochs (docs/design.md section 10).

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
    importance: str = "class"
    lader_classes: str = "all"
    tau: float = 1.0
    arch: str = "auto"
    epochs: int = 6
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
        for name, allowed in (
            ("loss", LOSS_NAMES),
            ("importance", IMPORTANCE_VARIANTS),
            ("lader_classes", LADER_CLASS_SETS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("strategy", STRATEGIES),
        ):
            check_choice(name, getattr(self, name), allowed)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected an integer >= 1")
        if self.max_train_examples is not None and (
            isinstance(self.max_train_examples, bool)
            or not isinstance(self.max_train_examples, int)
            or self.max_train_examples < 1
        ):
            raise ValueError(
                f"max_train_examples = {self.max_train_examples!r}: expected None or "
                "an integer >= 1"
            )
        for name in ("learning_rate",):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} = {value!r}: expected a finite number > 0")
        for name in ("alpha", "remine_lambda", "tau", "warmup_epochs", "weight_decay"):
            # Plain Python numbers only, so that `to_dict` stays JSON-safe.
            check_non_negative(name, getattr(self, name), types=(int, float))
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

    def with_hyperparameters(
        self, hyperparameters: Mapping[str, Any] | None, *, tuner_epochs: bool = False
    ) -> TrainConfig:
        """The config with a KerasTuner search's values for its fields.

        Every value whose name is a TrainConfig field ("alpha", "remine_lambda", ...) replaces
        that field, whatever the loss: a loss that has no such option (alpha for "ce") ignores
        it, as it ignores the field's default. KerasTuner's own "tuner/..." entries are skipped,
        except that `tuner_epochs=True` takes `epochs` from Hyperband's "tuner/epochs" (a
        trial's epoch budget).

        Args:
            hyperparameters: the values by name (`keras_tuner.HyperParameters.values`), or a
                `HyperParameters.get_config()` dict {"space": [...], "values": {...}} (the TFX
                Trainer's `fn_args.hyperparameters`), or None.
            tuner_epochs: set `epochs` from "tuner/epochs" when present (a tuner's trial);
                False keeps the config's epochs (the final training after a search).

        Returns:
            self when `hyperparameters` is None or empty, else a new, checked config.

        Raises:
            ValueError: for a value the field does not accept (as the constructor).
        """
        if not hyperparameters:
            return self
        values = hyperparameters
        if "space" in hyperparameters and "values" in hyperparameters:
            values = hyperparameters["values"]
        fields = {f.name for f in dataclasses.fields(self)}
        updates = {name: value for name, value in values.items() if name in fields}
        if tuner_epochs and "tuner/epochs" in values:
            updates["epochs"] = int(values["tuner/epochs"])
        return dataclasses.replace(self, **updates)

    def loss_options(self) -> dict[str, Any]:
        """The options `lade_tf.losses.make_loss` takes for this config's loss."""
        return {name: getattr(self, name) for name in LOSS_OPTIONS[self.loss]}
