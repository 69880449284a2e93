"""The blessing decision: is a candidate model good enough to push, and why (docs/design.md 4).

As TFX's Evaluator does with its thresholds, the ShiftEvaluator blesses the candidate only if it
beats chance, its serving signatures passed and, against the latest blessed model, it loses no
more than a margin on the mean accuracy over the 11 label distributions and on the uniform
accuracy, and gains no more than a margin of ECE. The margins, their defaults and the value that
leaves a margin unchecked are defined here, once; `pipeline/flags.py` and the component read them.
Plain Python: no TensorFlow or TFX import.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

#: The compared numbers, as `pipeline.shift_scoring.method_scores` gives them.
BLESSING_KEYS = ("mean", "uniform", "ece")
#: A margin of 1 spans the whole 0..1 range of accuracy and ECE, so nothing can fail it: the
#: value that leaves a check out (a TFX parameter and a RuntimeParameter cannot be None).
UNCHECKED_MARGIN = 1.0
#: Default margins (fractions: 0.01 is one point): one point below the latest blessed model on
#: the mean over the 11 distributions and on the uniform test; ECE not checked.
DEFAULT_MARGINS = {"mean": 0.01, "uniform": 0.01, "ece": UNCHECKED_MARGIN}


def is_checked(margin: float) -> bool:
    """Whether a margin takes part in the decision (below UNCHECKED_MARGIN)."""
    return margin < UNCHECKED_MARGIN


def percent(value: float | None) -> str:
    """An accuracy-like fraction as a percentage with one decimal, "n/a" when missing."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def points(margin: float) -> str:
    """A margin in accuracy points, e.g. "1 point", "0.5 points"."""
    return f"{100 * margin:g} point{'' if 100 * margin == 1 else 's'}"


def check_margins(margins: Mapping[str, float]) -> dict[str, float]:
    """The blessing margins {"mean", "uniform", "ece"} as floats.

    A margin is a fraction (0.01 = one point); UNCHECKED_MARGIN (1) or more leaves the ECE
    check out.

    Raises:
        ValueError: for a missing, negative or non-finite margin, or an accuracy margin above 1.
    """
    checked = {}
    for key in BLESSING_KEYS:
        if key not in margins:
            raise ValueError(f"margins {dict(margins)}: expected a {key!r} margin")
        value = float(margins[key])
        if key == "ece" and not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"margin_ece = {margins[key]!r}: expected a number >= 0 "
                f"({UNCHECKED_MARGIN:g} or more: ECE not checked)"
            )
        if key != "ece" and not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(
                f"margin_{key} = {margins[key]!r}: expected a number between 0 and 1 "
                "(a fraction of accuracy: 0.01 is one point)"
            )
        checked[key] = value
    return checked


def blessing_decision(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    *,
    chance: float,
    margins: Mapping[str, float],
    serving_problem: str = "",
) -> tuple[bool, list[dict[str, Any]]]:
    """Whether to bless the candidate, and every check behind the answer.

    The candidate is blessed if its uniform accuracy beats chance, its serving signatures passed
    (`serving_problem` is empty) and, when there is a baseline (the latest blessed model), it is
    not below it by more than `margins["mean"]` on the mean over the 11 distributions nor by more
    than `margins["uniform"]` on uniform accuracy, and its ECE is not above the baseline's by
    more than `margins["ece"]` (UNCHECKED_MARGIN leaves ECE out).

    Args:
        candidate, baseline: `method_scores` of each (baseline None: no blessed model yet).
        chance: accuracy of guessing, 1 / C.
        margins: from `check_margins`.
        serving_problem: what the serving check found wrong ('' if nothing).

    Returns:
        (blessed, checks): each check {"name", "passed", "text"} (plus the compared numbers);
        blessed is True only if every check passed.
    """
    margins = check_margins(margins)
    uniform = candidate["uniform"]
    checks: list[dict[str, Any]] = [
        {
            "name": "chance",
            "passed": math.isfinite(uniform) and uniform > chance,
            "candidate": uniform,
            "limit": chance,
            "text": f"uniform accuracy {percent(uniform)} % vs chance {percent(chance)} %",
        },
        {
            "name": "serving",
            "passed": not serving_problem,
            "text": f"serving signatures: {serving_problem or 'ok'}",
        },
    ]
    if baseline is not None:
        labels = {"mean": "mean accuracy over the 11 distributions", "uniform": "uniform accuracy"}
        for key, label in labels.items():
            limit = baseline[key] - margins[key]
            checks.append(
                {
                    "name": key,
                    "passed": math.isfinite(candidate[key]) and candidate[key] >= limit - 1e-12,
                    "candidate": candidate[key],
                    "baseline": baseline[key],
                    "margin": margins[key],
                    "limit": limit,
                    "text": f"{label} {percent(candidate[key])} % vs baseline "
                    f"{percent(baseline[key])} % (allowed down to {percent(limit)} %, "
                    f"margin {points(margins[key])})",
                }
            )
        if is_checked(margins["ece"]):
            limit = baseline["ece"] + margins["ece"]
            checks.append(
                {
                    "name": "ece",
                    "passed": math.isfinite(candidate["ece"]) and candidate["ece"] <= limit + 1e-12,
                    "candidate": candidate["ece"],
                    "baseline": baseline["ece"],
                    "margin": margins["ece"],
                    "limit": limit,
                    "text": f"uniform ECE {percent(candidate['ece'])} % vs baseline "
                    f"{percent(baseline['ece'])} % (allowed up to {percent(limit)} %, "
                    f"margin {points(margins['ece'])})",
                }
            )
    return all(check["passed"] for check in checks), checks


def blessing_reason(blessed: bool, checks: Sequence[Mapping[str, Any]], baseline_note: str) -> str:
    """One line saying why the candidate was or was not blessed."""
    failed = [check["text"] for check in checks if not check["passed"]]
    if blessed:
        passed = "; ".join(check["text"] for check in checks)
        return f"blessed: {passed}; {baseline_note}"
    return f"not blessed: {'; '.join(failed)}; {baseline_note}"
