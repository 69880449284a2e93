"""The value types of the server's flags (`serving.flags`, `serving.prior_stream_flags`) and the
error a bad one raises at start-up. Booleans take TF Serving's forms: `--flag`, `--flag=true`,
`--flag=false` (also 1/0).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


class StartupError(Exception):
    """A bad flag, file or port found while starting: `main` prints `error: <message>`, exits 2."""


def integer_flag(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `minimum` to `maximum` (None: no upper bound)."""
    expected = (
        f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    )

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


def seconds_flag(zero: str, negative: str) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds >= 0.

    Args:
        zero: what 0 means, for the error message.
        negative: what TF Serving does with a negative value (a clause), rejected here.
    """
    expected = f"a finite number of seconds >= 0 (0: {zero})"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value < 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {expected}; {negative}, which this server does not support"
            )
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value + 0.0  # -0.0 is 0

    return parse


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of seconds > 0")
    return value


def bool_flag(text: str) -> bool:
    """An argparse type: TF Serving's boolean values (true/false, 1/0, any case)."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")


def fraction_flag(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number from 0.0 to 1.0")
    return value
