"""Every command-line flag of the project's pipeline and training entry points, defined once.

`pipeline/run.py` builds its parser with `build_parser()`; `python -m pipeline.tuner` adds the same
training, data and tuner flags with `add_training_flags` / `add_data_flags` / `add_tuner_flags`.
Both parse with `parse_args(parser, argv)`, which reads an optional `--config FILE.yaml` holding the
same settings (keys are flag names, `epochs` or `batch-size`); flags given on the command line win
over the file. `training_config_from_args(args, loss)` turns the parsed flags into the
`lade_tf.training.TrainConfig` a Trainer receives.

Training flags default to None, meaning "TrainConfig's default" (their help shows that value);
`--quick` (QUICK_SETTINGS) and, for run.py only, PIPELINE_DEFAULTS (its 15-minute budget) fill
flags that are still unset. run.py also has the blessing margins (`add_blessing_flags`) and
`--log-level`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from lade_tf.losses import IMPORTANCE_VARIANTS, LADER_CLASS_SETS, LOSS_NAMES
from lade_tf.priors import PROFILES
from lade_tf.training import OPTIMIZERS, SCHEDULES, STRATEGIES, TrainConfig
from pipeline import beam_args
from pipeline.beam_args import positive_int as _positive_int
from pipeline.split_plan import CLASS_ORDERS
from pipeline.tuner import TUNERS

RUNNERS = ("local", "beam", "kubeflow")
#: `--log-level` values, quietest first.
LOG_LEVELS = ("error", "warning", "info", "debug")
#: Default blessing margins (fractions of accuracy): a candidate may fall one point below the
#: latest blessed model on the mean over the 11 distributions and on the uniform test.
DEFAULT_BLESS_MARGINS = {"mean": 0.01, "uniform": 0.01}

#: What `--quick` sets for flags not given explicitly: a smoke test of the whole pipeline (a few
#: epochs on a subset of the training data, in-process Beam, 200 test images per class).
QUICK_SETTINGS = {
    "epochs": 2,
    "max_train_examples": 3000,
    "beam_mode": "in_memory",
    "eval_test_per_class": 200,
}

#: What `python pipeline/run.py` uses for flags left unset (after --quick). Training flags left
#: unset take TrainConfig's defaults (6 epochs), the one place they are defined.
PIPELINE_DEFAULTS = {"beam_mode": "multi_processing", "eval_test_per_class": 0}

#: TrainConfig fields set from the command line, one flag each (flag dest == field name).
TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "loss")


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
    """Adds the training flags (one per TrainConfig field), `--quick` and `--config`.

    Every flag defaults to None, which keeps TrainConfig's own default.
    """
    add_config_flag(parser)
    group = parser.add_argument_group("training (TrainConfig; unset = TrainConfig default)")
    group.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="LADE: weight of the LADER regulariser",
    )
    group.add_argument(
        "--lambda",
        dest="remine_lambda",
        type=float,
        default=None,
        help="LADE: ReMINE regularisation lambda on the DV term",
    )
    group.add_argument(
        "--importance",
        choices=IMPORTANCE_VARIANTS,
        default=None,
        help="LADE importance weights: sample (paper) or class (reference code)",
    )
    group.add_argument(
        "--lader-classes",
        choices=LADER_CLASS_SETS,
        default=None,
        help="LADE: classes summed in LADER (all, or those present in the batch)",
    )
    group.add_argument(
        "--tau", type=float, default=None, help="logit-adjusted loss temperature tau"
    )
    group.add_argument(
        "--arch",
        default=None,
        help="auto | small_cnn | resnet32 | resnet32_bbn | app:<KerasAppName>",
    )
    group.add_argument("--epochs", type=int, default=None)
    group.add_argument("--batch-size", type=int, default=None, help="global batch size")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    group.add_argument(
        "--learning-rate",
        "--lr",
        dest="learning_rate",
        type=float,
        default=None,
        help="peak learning rate (after warm-up)",
    )
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="learning-rate decay after the linear warm-up",
    )
    group.add_argument("--warmup-epochs", type=float, default=None)
    group.add_argument("--weight-decay", type=float, default=None)
    group.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    group.add_argument("--seed", type=int, default=None, help="training seed")
    group.add_argument(
        "--strategy", choices=STRATEGIES, default=None, help="tf.distribute strategy"
    )
    group.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed_float16 compute (losses stay float32)",
    )
    group.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the train step with XLA (jit_compile)",
    )
    group.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="data augmentation suited to the images (crop+flip for 32x32 RGB)",
    )
    group.add_argument(
        "--max-train-examples",
        type=int,
        default=None,
        help="train on at most this many examples (default: all)",
    )
    defaults = TrainConfig()
    for action in _parser_actions(parser):
        if action.dest in TRAINING_FIELDS and "default:" not in (action.help or ""):
            shown = _shown_default(getattr(defaults, action.dest))
            action.help = (
                f"{action.help} (default: {shown})" if action.help else f"default: {shown}"
            )
    if not _has_flag(parser, "--quick"):
        group.add_argument(
            "--quick",
            action="store_true",
            default=False,
            help="smoke test: unless given explicitly, "
            + ", ".join(f"{k}={v}" for k, v in QUICK_SETTINGS.items()),
        )


def _shown_default(value: Any) -> str:
    """A TrainConfig default as a user would type it on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "all"  # max_train_examples, the one optional field
    return str(value)


def _margin(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a margin between 0 and 1 (a fraction: 0.01 is one point)"
        )
    return value


def add_blessing_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the ShiftEvaluator's blessing margins against the latest blessed model."""
    group = parser.add_argument_group(
        "blessing (the candidate vs the latest blessed model; fractions, 0.01 = one point)"
    )
    group.add_argument(
        "--bless-margin-mean",
        type=_margin,
        default=DEFAULT_BLESS_MARGINS["mean"],
        help="largest drop allowed in the mean accuracy over the 11 label distributions "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--bless-margin-uniform",
        type=_margin,
        default=DEFAULT_BLESS_MARGINS["uniform"],
        help="largest drop allowed in the accuracy on the uniform test set (default: %(default)s)",
    )
    group.add_argument(
        "--bless-margin-ece",
        type=_margin,
        default=None,
        help="largest rise allowed in the uniform-test ECE (default: ECE not checked)",
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the data flags (long-tailed set built by LongTailExampleGen / pipeline.prepare)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--source",
        default="fashion_mnist",
        help="fashion_mnist | tfds:<name> | folder:<path> | idx:<dir> (docs/design.md section 3)",
    )
    group.add_argument(
        "--imbalance-ratio",
        type=_positive_float,
        default=100.0,
        help="IR = n_max / n_min of the long-tailed training set",
    )
    group.add_argument("--profile", choices=PROFILES, default="exp", help="long-tail profile")
    group.add_argument(
        "--val-per-class",
        type=int,
        default=20,
        help="balanced validation images per class, held out first",
    )
    group.add_argument(
        "--n-max",
        type=_positive_int,
        default=None,
        help="images of the most frequent class (default: the most every class "
        "can still supply after validation)",
    )
    group.add_argument("--data-seed", type=int, default=0, help="seed of the subsampling")
    group.add_argument(
        "--class-order",
        choices=CLASS_ORDERS,
        default="label",
        help="which classes are the head: label order, or a seeded permutation",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="hold out this fraction of every class as test (sources without a test split)",
    )
    group.add_argument(
        "--image-size",
        default=None,
        metavar="HxW",
        help="resize every image (default: the source's one common size)",
    )
    group.add_argument("--tfds-data-dir", default=None, help="TFDS data directory (tfds: sources)")


def add_tuner_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the KerasTuner flags (alpha search; lambda optionally)."""
    group = parser.add_argument_group("tuning (KerasTuner over LADE's alpha)")
    group.add_argument("--tuner", choices=TUNERS, default="random", help="search algorithm")
    group.add_argument("--max-trials", type=_positive_int, default=8, help="number of trials")
    group.add_argument(
        "--tune-lambda",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also search LADE's lambda",
    )
    group.add_argument(
        "--trial-epochs",
        type=_positive_int,
        default=None,
        help="epochs per trial (default: --epochs)",
    )


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the orchestration flags of pipeline/run.py (runner, outputs, Beam, push)."""
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
        type=_positive_int,
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
    beam_args.add_beam_flags(parser)
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
        if action.dest in TRAINING_FIELDS:
            TrainConfig(**{action.dest: value})  # TrainConfig's own check names the value
        return value
    except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
        raise ValueError(f"--config {path}: setting {key!r}: {error}") from None


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    unset_defaults: Mapping[str, Any] | None = None,
) -> argparse.Namespace:
    """Parses argv, with `--config FILE.yaml` values as defaults that explicit flags override.

    Flags still unset (None) afterwards take QUICK_SETTINGS when `--quick` is on, then
    `unset_defaults` (run.py passes PIPELINE_DEFAULTS).

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
    if _has_flag(parser, "--alpha"):
        # The flags only parse; TrainConfig checks the values, once, for every loss they reach.
        for loss in LOSS_NAMES:
            try:
                training_config_from_args(args, loss)
            except ValueError as error:
                parser.exit(2, f"error: {error}\n")
    return args


def training_config_from_args(args: argparse.Namespace, loss: str | None = None) -> TrainConfig:
    """The `lade_tf.training.TrainConfig` for one loss from parsed flags.

    Args:
        args: flags from a parser with `add_training_flags`.
        loss: the loss this config trains; default `args.loss` if the parser has one, else "lade".
            Loss-specific options (`TrainConfig.loss_options`: alpha, lambda, ... for LADE, tau
            for the logit-adjusted loss) reach only the loss that uses them, so changing --alpha
            reruns the LADE Trainer but not the CE one (TFX caches on the exec properties).

    Returns:
        A TrainConfig; flags left unset keep TrainConfig's defaults.

    Raises:
        ValueError: for an unknown loss name (or anything TrainConfig.from_dict rejects).
    """
    loss = loss or getattr(args, "loss", None) or "lade"
    if loss not in LOSS_NAMES:
        raise ValueError(f"loss = {loss!r}: expected one of {', '.join(LOSS_NAMES)}")
    option_fields = {
        name for other in LOSS_NAMES for name in TrainConfig(loss=other).loss_options()
    }
    own_options = set(TrainConfig(loss=loss).loss_options())
    values: dict[str, Any] = {"loss": loss}
    for field in TRAINING_FIELDS:
        value = getattr(args, field, None)
        if value is None or (field in option_fields and field not in own_options):
            continue
        values[field] = value
    return TrainConfig.from_dict(values)
