"""`TrainConfig`: everything that defines one training run, and the one owner of the loss options.

Which loss takes which option (alpha, lambda, importance, LADER classes, tau), the range of each
and the tau the inference rule uses are decided here; `lade_tf.losses`, `lade_tf.layers`, the
export, the pipeline and both training command lines read these decisions instead of repeating
them. The module imports neither Keras nor TensorFlow, so command lines can parse their flags
without loading a backend.

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
from typing import Any, Callable, Mapping

from lade_tf.checks import check_choice, check_non_negative

#: The options each training loss takes; every other loss option must keep its default.
LOSS_OPTIONS = {
    "ce": (),
    "lade": ("alpha", "remine_lambda", "importance", "lader_classes"),
    "balanced_softmax": (),
    "logit_adjusted": ("tau",),
}
LOSS_NAMES = tuple(LOSS_OPTIONS)
#: LADE's importance weights: the paper's per-sample equation, or the authors' per-class code.
IMPORTANCE_VARIANTS = ("sample", "class")
#: Classes LADER sums over: every class, or those present in the batch.
LADER_CLASS_SETS = ("all", "present")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
STRATEGIES = ("auto", "mirrored", "multi_worker", "tpu", "cpu")


def _flag(help_text: str, *, flag: str | None = None, aliases: tuple[str, ...] = ()) -> dict:
    """Field metadata read by `lade_tf.train_flags`: the flag's help, name and other spellings."""
    return {"help": help_text, "flag": flag, "aliases": aliases}


def _non_negative(name: str) -> Callable[[Any], None]:
    # Plain Python numbers only, so that `to_dict` stays JSON-safe.
    return lambda value: check_non_negative(name, value, types=(int, float))


def check_loss_option(name: str, value: Any) -> Any:
    """A loss option's value if it lies in its range (NumPy scalars accepted), for the losses'
    own constructors and functions; TrainConfig adds that numbers be plain Python numbers.

    Raises:
        ValueError: for an unknown option or a value out of range, naming both.
    """
    if name in ("alpha", "remine_lambda", "tau"):
        return check_non_negative(name, value)
    if name in ("importance", "lader_classes"):
        check_choice(name, value, FIELD_CHOICES[name])
    else:
        options = sorted({o for names in LOSS_OPTIONS.values() for o in names})
        raise ValueError(f"loss option {name!r} is unknown: expected one of {options}")
    return value


#: The values a field with a fixed set of choices takes.
FIELD_CHOICES = {
    "loss": LOSS_NAMES,
    "importance": IMPORTANCE_VARIANTS,
    "lader_classes": LADER_CLASS_SETS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "strategy": STRATEGIES,
}


def _choice(name: str) -> Callable[[Any], None]:
    return lambda value: check_choice(name, value, FIELD_CHOICES[name])


def _positive_int(name: str, *, optional: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            expected = "None or an integer >= 1" if optional else "an integer >= 1"
            raise ValueError(f"{name} = {value!r}: expected {expected}")

    return check


def _positive_number(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        ):
            raise ValueError(f"{name} = {value!r}: expected a finite number > 0")

    return check


def _momentum(value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise ValueError(f"momentum = {value!r}: expected a number in [0, 1)")


def _switch(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} = {value!r}: expected true or false")

    return check


#: The range of every field, checked where a config is made and where a flag value is read.
FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "loss": _choice("loss"),
    "alpha": _non_negative("alpha"),
    "remine_lambda": _non_negative("remine_lambda"),
    "importance": lambda value: check_loss_option("importance", value),
    "lader_classes": lambda value: check_loss_option("lader_classes", value),
    "tau": _non_negative("tau"),
    "arch": lambda value: _text("arch", value),
    "epochs": _positive_int("epochs"),
    "batch_size": _positive_int("batch_size"),
    "optimizer": _choice("optimizer"),
    "learning_rate": _positive_number("learning_rate"),
    "schedule": _choice("schedule"),
    "warmup_epochs": _non_negative("warmup_epochs"),
    "weight_decay": _non_negative("weight_decay"),
    "momentum": _momentum,
    "seed": lambda value: _integer("seed", value),
    "strategy": _choice("strategy"),
    "mixed_precision": _switch("mixed_precision"),
    "xla": _switch("xla"),
    "augment": _switch("augment"),
    "max_train_examples": _positive_int("max_train_examples", optional=True),
}


def _text(name: str, value: Any) -> None:
    # The architecture names themselves are checked by `lade_tf.models.build_model`.
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} = {value!r}: expected a non-empty name")


def _integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} = {value!r}: expected an integer")


def loss_takes(loss: str, option: str) -> bool:
    """Whether the training loss `loss` takes the option `option` (a TrainConfig field name).

    Raises:
        ValueError: for an unknown loss name.
    """
    check_choice("loss", loss, LOSS_NAMES)
    return option in LOSS_OPTIONS[loss]


def inference_tau(loss: str, tau: float = 1.0) -> float:
    """The tau of the inference rule of a model trained with `loss` (docs/design.md section 1).

    Only the logit-adjusted loss has a tau (its rule is f + (tau - 1) log p_s + log p_t); every
    other loss's rule is the tau = 1 form, so another tau given with it is an error, never
    silently dropped.

    Raises:
        ValueError: for an unknown loss, a negative or non-finite tau, or a tau other than 1.0
            with a loss that takes none (the message names both).
    """
    check_choice("train_loss", loss, LOSS_NAMES)
    tau = check_non_negative(
        "tau", tau, "a finite number >= 0 (the logit-adjusted loss's temperature)"
    )
    if tau != 1.0 and not loss_takes(loss, "tau"):
        owners = [name for name, options in LOSS_OPTIONS.items() if "tau" in options]
        raise ValueError(
            f"tau = {tau!r} with train_loss = {loss!r}: tau belongs to the "
            f"{' / '.join(map(repr, owners))} loss; other losses take tau = 1.0"
        )
    return tau


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; JSON-safe through `to_dict` / `from_dict`.

    Defaults are the Fashion-MNIST-LT recipe for a CPU budget: small CNN, 6 epochs (1 of linear
    warm-up, then cosine) at lr 0.1, batch 128. CIFAR-LT with ResNet-32 wants about 30 epochs
    with 5 warm-up epochs (docs/design.md section 10).

    A loss option (LOSS_OPTIONS) set to other than its default for a loss that does not take it
    is an error: `TrainConfig(loss="lade", tau=2.0)` fails here, before any training.

    Args:
        loss: "ce", "lade", "balanced_softmax" or "logit_adjusted" (LOSS_NAMES).
        alpha, remine_lambda, importance, lader_classes: LADE's options.
        tau: the logit-adjusted loss's temperature.
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

    loss: str = dataclasses.field(default="ce", metadata=_flag("training loss"))
    alpha: float = dataclasses.field(
        default=0.1, metadata=_flag("LADE: weight of the LADER regulariser")
    )
    remine_lambda: float = dataclasses.field(
        default=0.1,
        metadata=_flag(
            "LADE: ReMINE regularisation lambda on the DV term",
            flag="--lambda",
            aliases=("--remine-lambda",),
        ),
    )
    importance: str = dataclasses.field(
        default="class",
        metadata=_flag("LADE importance weights: sample (paper) or class (reference code)"),
    )
    lader_classes: str = dataclasses.field(
        default="all",
        metadata=_flag("LADE: classes summed in LADER (all, or those present in the batch)"),
    )
    tau: float = dataclasses.field(
        default=1.0, metadata=_flag("logit-adjusted loss temperature tau")
    )
    arch: str = dataclasses.field(
        default="auto",
        metadata=_flag("auto | small_cnn | resnet32 | resnet32_bbn | app:<KerasAppName>"),
    )
    epochs: int = dataclasses.field(default=6, metadata=_flag("training epochs"))
    batch_size: int = dataclasses.field(default=128, metadata=_flag("global batch size"))
    optimizer: str = dataclasses.field(default="sgd", metadata=_flag("optimizer"))
    learning_rate: float = dataclasses.field(
        default=0.1, metadata=_flag("peak learning rate (after warm-up)", aliases=("--lr",))
    )
    schedule: str = dataclasses.field(
        default="cosine", metadata=_flag("learning-rate decay after the linear warm-up")
    )
    warmup_epochs: float = dataclasses.field(
        default=1.0, metadata=_flag("epochs of linear learning-rate warm-up")
    )
    weight_decay: float = dataclasses.field(
        default=5e-4, metadata=_flag("coupled L2 weight decay (decoupled with adam)")
    )
    momentum: float = dataclasses.field(default=0.9, metadata=_flag("SGD momentum"))
    seed: int = dataclasses.field(default=0, metadata=_flag("training seed"))
    strategy: str = dataclasses.field(
        default="auto", metadata=_flag("tf.distribute strategy (TensorFlow only)")
    )
    mixed_precision: bool = dataclasses.field(
        default=False, metadata=_flag("mixed_float16 compute (losses stay float32)")
    )
    xla: bool = dataclasses.field(
        default=False, metadata=_flag("compile the train step with XLA (jit_compile)")
    )
    augment: bool = dataclasses.field(
        default=True,
        metadata=_flag("data augmentation suited to the images (crop+flip for 32x32 RGB)"),
    )
    max_train_examples: int | None = dataclasses.field(
        default=None, metadata=_flag("train on at most this many examples")
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            FIELD_CHECKS[field.name](getattr(self, field.name))
        defaults = TrainConfig.__dataclass_fields__
        for option in sorted({o for options in LOSS_OPTIONS.values() for o in options}):
            if loss_takes(self.loss, option):
                continue
            value, default = getattr(self, option), defaults[option].default
            if value != default:
                owners = [name for name, options in LOSS_OPTIONS.items() if option in options]
                raise ValueError(
                    f"{option} = {value!r} with loss = {self.loss!r}: {option} is an option of "
                    f"the {' / '.join(map(repr, owners))} loss; the {self.loss!r} loss takes "
                    f"{list(LOSS_OPTIONS[self.loss]) or 'no options'}"
                )

    @classmethod
    def check_field(cls, name: str, value: Any) -> None:
        """Checks one field's value against its range, whatever the loss (for flag parsers).

        Raises:
            ValueError: for an unknown field or a value out of its range.
        """
        if name not in FIELD_CHECKS:
            raise ValueError(
                f"unknown TrainConfig key {name!r}; known keys: {sorted(FIELD_CHECKS)}"
            )
        FIELD_CHECKS[name](value)

    @property
    def inference_tau(self) -> float:
        """The tau of this model's inference rule (`inference_tau(loss, tau)`): tau for the
        logit-adjusted loss, 1.0 for every other loss."""
        return inference_tau(self.loss, self.tau)

    @property
    def lade_alpha(self) -> float | None:
        """LADE's alpha, None for a loss without one (what reports and metadata record)."""
        return float(self.alpha) if loss_takes(self.loss, "alpha") else None

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-safe dict (field name -> value)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from `to_dict` output (or any subset of fields; the rest keep defaults).

        Raises:
            ValueError: for keys that are not fields (named in the message) or invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; known keys: {sorted(fields)}")
        return cls(**dict(values))

    @classmethod
    def for_loss(cls, loss: str, values: Mapping[str, Any]) -> TrainConfig:
        """The config of `loss` from settings shared by several losses (e.g. one command line).

        Loss options that `loss` does not take are left out, so `--alpha` reaches the LADE
        config and not the CE one; every other value is kept.

        Raises:
            ValueError: as `from_dict`.
        """
        check_choice("loss", loss, LOSS_NAMES)
        options = {o for names in LOSS_OPTIONS.values() for o in names}
        kept = {
            name: value
            for name, value in values.items()
            if name != "loss" and (name not in options or loss_takes(loss, name))
        }
        return cls.from_dict({**kept, "loss": loss})

    def with_hyperparameters(
        self, hyperparameters: Mapping[str, Any] | None, *, tuner_epochs: bool = False
    ) -> TrainConfig:
        """The config with a KerasTuner search's values for its fields.

        Every value whose name is a field replaces that field; a loss option the config's loss
        does not take is left out, as in `for_loss`. KerasTuner's own "tuner/..." entries are
        skipped, except that `tuner_epochs=True` takes `epochs` from Hyperband's "tuner/epochs"
        (a trial's epoch budget).

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
        return TrainConfig.for_loss(self.loss, {**self.to_dict(), **updates})

    def loss_options(self) -> dict[str, Any]:
        """The options `lade_tf.losses.make_loss` takes for this config's loss."""
        return {name: getattr(self, name) for name in LOSS_OPTIONS[self.loss]}
