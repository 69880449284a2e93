"""Command-line flags generated from `TrainConfig`'s fields: one flag per field, one spelling.

Both training command lines (`pipeline/run.py` with its standalone trainer and tuner, and
`python -m lade_tf.train`) call `add_train_config_flags`, so a field's flag name, its other
spellings (`--remine-lambda` for `--lambda`, `--lr` for `--learning-rate`), its choices and its
help are written once, in the field's metadata in `lade_tf/train_config.py`. Values are checked
against the field's range as they are parsed (argparse reports `argument --alpha: ...`), and
`train_config_from_flags` builds the config of one loss from the parsed flags. No Keras or
TensorFlow import.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Mapping, Sequence

from lade_tf.train_config import FIELD_CHOICES, TrainConfig

TRAIN_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))


def flag_name(field: dataclasses.Field) -> str:
    """The flag of a TrainConfig field: its metadata's `flag`, else `--field-name`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def shown_default(value: Any) -> str:
    """A TrainConfig default as a user would type it on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "all"  # max_train_examples, the one optional field
    return str(value)


def _value_parser(field: dataclasses.Field) -> Callable[[str], Any]:
    """argparse `type=`: text -> the field's type, checked against the field's range."""
    default = field.default
    convert: Callable[[str], Any] = (
        int if default is None or isinstance(default, int) else type(default)
    )

    def parse(text: str) -> Any:
        try:
            value = convert(text)
            TrainConfig.check_field(field.name, value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parse.__name__ = field.name  # argparse names the type in "invalid <type> value" messages
    return parse


def add_train_config_flags(
    parser: argparse.ArgumentParser,
    *,
    unset_defaults: bool = False,
    exclude: Sequence[str] = (),
    title: str = "training (TrainConfig)",
) -> argparse._ArgumentGroup:
    """Adds one flag per TrainConfig field (except `exclude`) in a group of its own.

    Args:
        parser: the parser to extend.
        unset_defaults: every flag defaults to None ("not given": the caller fills it, e.g. from
            a YAML file or a quick preset, and TrainConfig's default applies last); the help
            still shows TrainConfig's default. False: the flags default to TrainConfig's values.
        exclude: field names without a flag (e.g. "loss" where a command trains several).
        title: the group's title in --help.

    Returns:
        The argument group (callers may add related flags to it).
    """
    group = parser.add_argument_group(title)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name in exclude:
            continue
        default = getattr(defaults, field.name)
        help_text = f"{field.metadata['help']} (default: {shown_default(default)})"
        options: dict[str, Any] = {
            "dest": field.name,
            "default": None if unset_defaults else default,
            "help": help_text,
        }
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _value_parser(field)
            if field.name in FIELD_CHOICES:
                options["metavar"] = "{" + ",".join(FIELD_CHOICES[field.name]) + "}"
        group.add_argument(flag_name(field), *field.metadata.get("aliases", ()), **options)
    return group


def train_config_from_flags(
    values: Mapping[str, Any] | argparse.Namespace, loss: str, *, shared: bool = False
) -> TrainConfig:
    """The TrainConfig of `loss` from parsed flags (fields left None keep their defaults).

    Args:
        values: the parsed flags (a Namespace or a dict by field name).
        loss: the loss to configure.
        shared: the flags configure several losses at once (`pipeline/run.py --losses`): loss
            options the loss does not take are left out (`TrainConfig.for_loss`). False: every
            value given must suit `loss` (`--loss lade --tau 2` is refused).

    Raises:
        ValueError: for a value TrainConfig rejects (the message names it).
    """
    if isinstance(values, argparse.Namespace):
        values = vars(values)
    given = {
        name: values[name]
        for name in TRAIN_CONFIG_FIELDS
        if name != "loss" and values.get(name) is not None
    }
    if shared:
        return TrainConfig.for_loss(loss, given)
    return TrainConfig.from_dict({**given, "loss": loss})
