"""Every command-line flag of the pipeline's commands, defined once, and the parsing they share.

`pipeline/run.py` builds its parser with `build_parser()`; the standalone commands of
`pipeline.cli` (`python -m pipeline.prepare`, `pipeline.trainer`, `pipeline.tuner`) take the same
groups (`add_data_flags`, `add_beam_flags`, `add_training_flags`, `add_tuner_flags`). Every default
comes from the object that owns it: the training flags are generated from `TrainConfig`'s fields
(`lade_tf.train_flags`), the data flags take `PrepareConfig`'s defaults, the tuner flags
`TuningConfig`'s and the blessing flags `pipeline.blessing`'s. `parse_args(parser, argv)` reads an
optional `--config FILE.yaml` holding the same settings (keys are flag names, `epochs` or
`batch-size`); flags given on the command line win over the file. `training_config_from_args(args,
loss)` turns the parsed flags into the TrainConfig a Trainer receives.

Training flags default to None, meaning "TrainConfig's default" (their help shows that value);
`--quick` (QUICK_SETTINGS) and, for run.py only, PIPELINE_DEFAULTS fill flags that are still unset.

Parsing imports neither TensorFlow, TFX nor keras_tuner, so `--help` and bad flags answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from lade_tf.priors import PROFILES
from lade_tf.train_config import LOSS_NAMES, LOSS_OPTIONS, TrainConfig, loss_takes
from lade_tf.train_flags import (
    TRAIN_CONFIG_FIELDS,
    add_train_config_flags,
    train_config_from_flags,
)
from pipeline.beam_args import DIRECT_MODES, MULTI_PROCESSING_MIN_IMAGES
from pipeline.beam_args import RUNNERS as BEAM_RUNNERS
from pipeline.blessing import DEFAULT_MARGINS, UNCHECKED_MARGIN, is_checked
from pipeline.run_logging import LOG_LEVELS
from pipeline.split_plan import CLASS_ORDERS, PrepareConfig
from pipeline.tuning_config import DEFAULT_TUNING, TUNERS

#: `--runner` values: TFX's LocalDagRunner, BeamDagRunner, or a compiled Kubeflow / Vertex spec.
RUNNERS = ("local", "beam", "kubeflow")

#: What `--quick` sets for flags not given explicitly: a smoke test of the whole pipeline (a few
#: epochs on a subset of the training data, in-process Beam, 200 test images per class).
QUICK_SETTINGS = {
    "epochs": 2,
    "max_train_examples": 3000,
    "beam_mode": "in_memory",
    "eval_test_per_class": 200,
}

#: What `python pipeline/run.py` uses for flags left unset (after --quick). Training flags left
#: unset take TrainConfig's defaults, the one place they are defined.
PIPELINE_DEFAULTS = {"beam_mode": "multi_processing", "eval_test_per_class": 0}

#: TrainConfig fields set from the command line, one flag each (flag dest == field name).
TRAINING_FIELDS = tuple(name for name in TRAIN_CONFIG_FIELDS if name != "loss")
#: The fields that are options of some loss (`LOSS_OPTIONS`).
LOSS_OPTION_FIELDS = tuple(sorted({o for options in LOSS_OPTIONS.values() for o in options}))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number > 0")
    return value


def parse_losses(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parses `ce,lade` (or a YAML list) into a tuple of distinct loss names, order kept.

    Raises:
        argparse.ArgumentTypeError: for an unknown or repeated name, or an empty list.
    """
    names = text.split(",") if isinstance(text, str) else [str(n) for n in text]
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--losses is empty: expected e.g. ce,lade")
    for name in names:
        if name not in LOSS_NAMES:
            raise argparse.ArgumentTypeError(
                f"--losses: unknown loss {name!r}; expected names from {', '.join(LOSS_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--losses {','.join(names)}: a loss is repeated")
    return tuple(names)


def _parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of a parser. argparse has no public way to list them (its own help and
    parsing read `_actions`), and reading a YAML file of flag settings needs each flag's type."""
    return list(parser._actions)


def _has_flag(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in action.option_strings for action in _parser_actions(parser))


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--config FILE.yaml` (applied by `parse_args`) unless the parser already has it."""
    if _has_flag(parser, "--config"):
        return
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.yaml",
        help="YAML file of flag settings (keys are flag names, e.g. `epochs: 30`, `losses: "
        "[ce, lade]`); command-line flags override it",
    )


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the training flags (one per TrainConfig field but `loss`), `--quick` and `--config`.

    Every flag defaults to None, which keeps TrainConfig's own default.
    """
    add_config_flag(parser)
    group = add_train_config_flags(
        parser,
        unset_defaults=True,
        exclude=("loss",),
        title="training (TrainConfig; unset = TrainConfig default)",
    )
    if not _has_flag(parser, "--quick"):
        group.add_argument(
            "--quick",
            action="store_true",
            default=False,
            help="smoke test: unless given explicitly, "
            + ", ".join(f"{k}={v}" for k, v in QUICK_SETTINGS.items()),
        )


def _margin(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a margin between 0 and 1 (a fraction: 0.01 is one point; "
            f"{UNCHECKED_MARGIN:g}: not checked)"
        )
    return value


def _margin_help(text: str, key: str) -> str:
    default = DEFAULT_MARGINS[key]
    shown = f"{default:g}" if is_checked(default) else f"{UNCHECKED_MARGIN:g}, not checked"
    return f"{text} (default: {shown})"


def add_blessing_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the ShiftEvaluator's blessing margins against the latest blessed model."""
    group = parser.add_argument_group(
        "blessing (the candidate vs the latest blessed model; fractions, 0.01 = one point, "
        f"{UNCHECKED_MARGIN:g} = not checked)"
    )
    group.add_argument(
        "--bless-margin-mean",
        type=_margin,
        default=DEFAULT_MARGINS["mean"],
        help=_margin_help(
            "largest drop allowed in the mean accuracy over the 11 label distributions", "mean"
        ),
    )
    group.add_argument(
        "--bless-margin-uniform",
        type=_margin,
        default=DEFAULT_MARGINS["uniform"],
        help=_margin_help(
            "largest drop allowed in the accuracy on the uniform test set", "uniform"
        ),
    )
    group.add_argument(
        "--bless-margin-ece",
        type=_margin,
        default=DEFAULT_MARGINS["ece"],
        help=_margin_help("largest rise allowed in the uniform-test ECE", "ece"),
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the data flags (long-tailed set built by LongTailExampleGen / pipeline.prepare);
    the defaults are PrepareConfig's."""
    defaults = PrepareConfig()
    group = parser.add_argument_group("data")
    group.add_argument(
        "--source",
        default="fashion_mnist",
        help="fashion_mnist | tfds:<name> | folder:<path> | idx:<dir> (docs/design.md section 3)",
    )
    group.add_argument(
        "--imbalance-ratio",
        type=_positive_float,
        default=defaults.imbalance_ratio,
        help="IR = n_max / n_min of the long-tailed training set",
    )
    group.add_argument(
        "--profile", choices=PROFILES, default=defaults.profile, help="long-tail profile"
    )
    group.add_argument(
        "--val-per-class",
        type=int,
        default=defaults.val_per_class,
        help="balanced validation images per class, held out first",
    )
    group.add_argument(
        "--n-max",
        type=positive_int,
        default=defaults.n_max,
        help="images of the most frequent class (default: the most every class "
        "can still supply after validation)",
    )
    group.add_argument(
        "--data-seed", type=int, default=defaults.seed, help="seed of the subsampling"
    )
    group.add_argument(
        "--class-order",
        choices=CLASS_ORDERS,
        default=defaults.class_order,
        help="which classes are the head: label order, or a seeded permutation",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="hold out this fraction of every class as test (sources without a test split)",
    )
    group.add_argument(
        "--image-size",
        default=None,
        metavar="HxW",
        help="resize every image (default: the source's one common size)",
    )
    group.add_argument("--tfds-data-dir", default=None, help="TFDS data directory (tfds: sources)")


def prepare_config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of parsed data flags.

    Raises:
        ValueError: for a value PrepareConfig or the image size rejects.
    """
    from pipeline.split_plan import parse_image_size

    return PrepareConfig(
        imbalance_ratio=float(args.imbalance_ratio),
        n_max=args.n_max,
        profile=args.profile,
        val_per_class=int(args.val_per_class),
        seed=int(args.data_seed),
        class_order=args.class_order,
        test_fraction=args.test_fraction,
        image_size=parse_image_size(args.image_size),
    )


def add_beam_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the Beam flags every entry point shares: --beam-runner, --beam-mode, --beam-workers,
    --dask-address, --dask-workers and --beam-arg (read back by
    `pipeline.beam_args.runner_args_from_flags`)."""
    group = parser.add_argument_group("Beam")
    group.add_argument(
        "--beam-runner",
        choices=BEAM_RUNNERS,
        default="direct",
        help="Beam runner of the Beam-based steps (default direct: Beam's FnApiRunner)",
    )
    group.add_argument(
        "--beam-mode",
        choices=("auto",) + DIRECT_MODES,
        default=None,
        help="direct running mode; auto (the default of python -m pipeline.prepare): "
        f"multi_processing for >= {MULTI_PROCESSING_MIN_IMAGES} images on more than 2 cores, "
        "else in_memory",
    )
    group.add_argument(
        "--beam-workers",
        type=positive_int,
        default=2,
        help="direct_num_workers; with --beam-runner dask and neither --dask-address nor "
        "--dask-workers, the size of the local dask cluster",
    )
    group.add_argument("--dask-address", default=None, help="dask scheduler, tcp://HOST:PORT")
    group.add_argument(
        "--dask-workers",
        type=positive_int,
        default=None,
        help="start a local dask.distributed cluster with N worker processes",
    )
    group.add_argument(
        "--beam-arg",
        dest="beam_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra Beam pipeline flag, passed through verbatim (repeatable), e.g. "
        "--beam-arg=--flink_master=host:8081",
    )


def add_tuner_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the KerasTuner flags (alpha search; lambda optionally); defaults are TuningConfig's."""
    group = parser.add_argument_group("tuning (KerasTuner over LADE's alpha)")
    group.add_argument(
        "--tuner", choices=TUNERS, default=DEFAULT_TUNING.tuner, help="search algorithm"
    )
    group.add_argument(
        "--max-trials",
        type=positive_int,
        default=DEFAULT_TUNING.max_trials,
        help="number of trials",
    )
    group.add_argument(
        "--tune-lambda",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_TUNING.tune_lambda,
        help="also search LADE's lambda",
    )
    group.add_argument(
        "--trial-epochs",
        type=positive_int,
        default=DEFAULT_TUNING.trial_epochs,
        help="epochs per trial (default: --epochs)",
    )


def tuning_config_from_args(args: argparse.Namespace, results_dir: str | None = None):
    """The `pipeline.tuning_config.TuningConfig` of parsed tuner flags."""
    from pipeline.tuning_config import TuningConfig

    return TuningConfig(
        tuner=args.tuner,
        max_trials=int(args.max_trials),
        tune_lambda=bool(args.tune_lambda),
        trial_epochs=None if args.trial_epochs is None else int(args.trial_epochs),
        results_dir=results_dir,
    )


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the orchestration flags of pipeline/run.py (runner, outputs, push, log level)."""
    group = parser.add_argument_group("pipeline")
    group.add_argument(
        "--runner",
        choices=RUNNERS,
        default="local",
        help="local: LocalDagRunner; beam: BeamDagRunner; kubeflow: compile a "
        "Kubeflow Pipelines / Vertex spec JSON (no cluster needed)",
    )
    group.add_argument(
        "--losses",
        type=parse_losses,
        default=("ce", "lade"),
        help=f"comma-separated, one Trainer each, from {','.join(LOSS_NAMES)} (default: ce,lade)",
    )
    group.add_argument(
        "--tune",
        action="store_true",
        default=False,
        help="tune LADE's alpha with a Tuner component before training",
    )
    group.add_argument(
        "--push",
        default=None,
        metavar="LOSS",
        help="loss whose model is blessed and pushed (default: lade if trained, "
        "else the first of --losses)",
    )
    group.add_argument(
        "--output-dir",
        type=Path,
        default=Path("lade_output"),
        help="pipeline root, MLMD, report/ and serving_model/ go here",
    )
    group.add_argument(
        "--pipeline-name",
        default="lade-tf",
        help="TFX pipeline name (Kubeflow needs [a-z0-9][a-z0-9-]*)",
    )
    group.add_argument(
        "--pipeline-root",
        default=None,
        help="component outputs (default <output-dir>/pipeline_root; a gs:// path "
        "for Vertex / Kubeflow)",
    )
    group.add_argument(
        "--eval-seeds",
        type=positive_int,
        default=3,
        help="subsampling seeds per shifted test set (>= 3 for the report)",
    )
    group.add_argument(
        "--eval-test-per-class",
        type=int,
        default=None,
        help="test images per class for the shift evaluation (default: all)",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        help="warning: TFX, Beam, absl and TensorFlow (C++ too) print warnings and errors only, "
        "with one line per component and Keras progress kept; info: every INFO line; "
        "debug: more (default: %(default)s)",
    )
    group.add_argument(
        "--kubeflow-image",
        default="gcr.io/tfx-oss-public/tfx:1.16.0",
        help="container image of the compiled Kubeflow/Vertex pipeline: the repository's "
        "Dockerfile builds one with this project installed (default: %(default)s)",
    )
    group.add_argument(
        "--kubeflow-output",
        type=Path,
        default=None,
        help="spec file to write (default: <output-dir>/kubeflow/<name>.json)",
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` to a flag's help unless it states its default or has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS, [], ())
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    """The full parser of pipeline/run.py: pipeline, data, training and tuner flags, --config."""
    parser = argparse.ArgumentParser(
        prog="python pipeline/run.py",
        formatter_class=DefaultsHelpFormatter,
        description="Long-tailed training (CE, LADE, ...) and label-shift evaluation as a TFX "
        "pipeline: LongTailExampleGen -> StatisticsGen -> SchemaGen -> "
        "ExampleValidator -> [Tuner] -> Trainer per loss -> ShiftEvaluator -> Pusher.",
    )
    add_pipeline_flags(parser)
    add_blessing_flags(parser)
    add_beam_flags(parser)
    add_data_flags(parser)
    add_training_flags(parser)
    add_tuner_flags(parser)
    return parser


def load_config_file(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Reads a YAML settings file into {flag dest: value}, converted like the flag would be.

    Raises:
        ValueError: if the file is not a mapping, names an unknown setting (the error lists the
            known ones) or holds a value the flag rejects.
    """
    import yaml

    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"--config {path}: expected a mapping of flag names to values, got {type(raw).__name__}"
        )
    actions = {}
    for action in _parser_actions(parser):
        if action.dest in ("help", "config"):
            continue
        actions[action.dest] = action
        for option in action.option_strings:
            actions[option.lstrip("-").replace("-", "_")] = action
    values: dict[str, Any] = {}
    for key, value in raw.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None:
            known = sorted({a.dest for a in actions.values()})
            raise ValueError(
                f"--config {path}: unknown setting {key!r}; known settings: {', '.join(known)}"
            )
        values[action.dest] = _convert_config_value(path, key, value, action)
    return values


def _convert_config_value(path: Any, key: Any, value: Any, action: argparse.Action) -> Any:
    try:
        if value is None:
            return None
        if action.dest == "beam_args":
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if action.type is parse_losses:
            return parse_losses(value)
        if action.nargs == 0:  # a switch: store_true or --flag/--no-flag
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
            return value
        if action.type is not None:
            value = action.type(str(value)) if not isinstance(value, bool) else value
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not one of {', '.join(map(str, action.choices))}"
            )
        return value
    except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
        raise ValueError(f"--config {path}: setting {key!r}: {error}") from None


def trained_losses(args: argparse.Namespace) -> tuple[str, ...]:
    """The losses a command line trains: --losses (run.py), --loss (the trainer), else LADE
    (the tuner)."""
    if getattr(args, "losses", None):
        return tuple(args.losses)
    return (getattr(args, "loss", None) or "lade",)


def _unused_loss_option(args: argparse.Namespace) -> str | None:
    """What is wrong when a loss option is set and no trained loss takes it, else None."""
    losses = trained_losses(args)
    for option in LOSS_OPTION_FIELDS:
        value = getattr(args, option, None)
        if value is None or any(loss_takes(loss, option) for loss in losses):
            continue
        owners = [loss for loss in LOSS_NAMES if loss_takes(loss, option)]
        return (
            f"{option} = {value!r} is set but no trained loss ({','.join(losses)}) takes it "
            f"(it is an option of {', '.join(owners)})"
        )
    return None


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    unset_defaults: Mapping[str, Any] | None = None,
) -> argparse.Namespace:
    """Parses argv, with `--config FILE.yaml` values as defaults that explicit flags override.

    Flags still unset (None) afterwards take QUICK_SETTINGS when `--quick` is on, then
    `unset_defaults` (run.py passes PIPELINE_DEFAULTS). The training values are then checked
    by TrainConfig for every loss they reach (exit 2 with its message).

    Raises:
        ValueError: for a bad config file (see `load_config_file`).
    """
    add_config_flag(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_config_file(known.config, parser))
    args = parser.parse_args(argv)
    fills = [QUICK_SETTINGS] if getattr(args, "quick", False) else []
    for values in fills + [dict(unset_defaults or {})]:
        for name, value in values.items():
            if hasattr(args, name) and getattr(args, name) is None:
                setattr(args, name, value)
    if _has_flag(parser, "--epochs"):
        problem = _unused_loss_option(args)
        if problem:
            parser.exit(2, f"error: {problem}\n")
        for loss in trained_losses(args):
            try:
                training_config_from_args(args, loss)
            except ValueError as error:
                parser.exit(2, f"error: {error}\n")
    return args


def training_config_from_args(args: argparse.Namespace, loss: str | None = None) -> TrainConfig:
    """The TrainConfig for one loss from parsed flags.

    Args:
        args: flags from a parser with `add_training_flags`.
        loss: the loss this config trains; default `args.loss` if the parser has one, else "lade".
            Loss-specific options (alpha, lambda, ... for LADE, tau for the logit-adjusted loss)
            reach only the loss that takes them, so changing --alpha reruns the LADE Trainer but
            not the CE one (TFX caches on the exec properties).

    Returns:
        A TrainConfig; flags left unset keep TrainConfig's defaults.

    Raises:
        ValueError: for an unknown loss name (or anything TrainConfig rejects).
    """
    return train_config_from_flags(args, loss or getattr(args, "loss", None) or "lade", shared=True)
