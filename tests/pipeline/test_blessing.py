"""The blessing decision (pipeline.blessing): chance, serving, the margins against the latest
blessed model, and what a margin of UNCHECKED_MARGIN leaves out."""

from __future__ import annotations

import pytest

from pipeline import blessing

MARGINS = dict(blessing.DEFAULT_MARGINS)
BASELINE = {"mean": 0.60, "uniform": 0.65, "ece": 0.05}


def test_first_model_is_blessed_if_it_beats_chance_and_serves():
    blessed, checks = blessing.blessing_decision(
        {"mean": 0.3, "uniform": 0.2, "ece": 0.3}, None, chance=0.1, margins=MARGINS
    )
    assert blessed and [c["name"] for c in checks] == ["chance", "serving"]
    blessed, checks = blessing.blessing_decision(
        {"mean": 0.1, "uniform": 0.09, "ece": 0.3}, None, chance=0.1, margins=MARGINS
    )
    assert not blessed and not checks[0]["passed"] and "chance 10.0 %" in checks[0]["text"]
    blessed, checks = blessing.blessing_decision(
        {"mean": 0.5, "uniform": 0.5, "ece": 0.1},
        None,
        chance=0.1,
        margins=MARGINS,
        serving_problem="served logits differ",
    )
    assert not blessed and "served logits differ" in checks[1]["text"]


@pytest.mark.parametrize(
    "candidate, failed",
    [
        ({"mean": 0.595, "uniform": 0.645, "ece": 0.5}, []),  # within both margins, ECE unchecked
        ({"mean": 0.589, "uniform": 0.70, "ece": 0.05}, ["mean"]),
        ({"mean": 0.62, "uniform": 0.639, "ece": 0.05}, ["uniform"]),
        ({"mean": 0.30, "uniform": 0.30, "ece": 0.05}, ["mean", "uniform"]),
    ],
)
def test_candidate_may_fall_below_the_baseline_only_by_the_margins(candidate, failed):
    blessed, checks = blessing.blessing_decision(candidate, BASELINE, chance=0.1, margins=MARGINS)
    assert [c["name"] for c in checks] == ["chance", "serving", "mean", "uniform"]
    assert [c["name"] for c in checks if not c["passed"]] == failed
    assert blessed == (not failed)
    reason = blessing.blessing_reason(
        blessed, checks, "baseline: the latest blessed model, MLMD id 3"
    )
    assert reason.startswith("blessed" if blessed else "not blessed") and "MLMD id 3" in reason
    if "mean" in failed:
        assert (
            f"mean accuracy over the 11 distributions {100 * candidate['mean']:.1f} %" in reason
            and "baseline 60.0 %" in reason
        )


def test_ece_is_checked_only_with_a_margin_below_one():
    candidate = {"mean": 0.60, "uniform": 0.65, "ece": 0.08}
    blessed, _ = blessing.blessing_decision(candidate, BASELINE, chance=0.1, margins=MARGINS)
    assert blessed
    margins = {**MARGINS, "ece": 0.02}
    blessed, checks = blessing.blessing_decision(candidate, BASELINE, chance=0.1, margins=margins)
    assert not blessed and checks[-1]["name"] == "ece" and not checks[-1]["passed"]
    assert "ECE 8.0 % vs baseline 5.0 % (allowed up to 7.0 %" in checks[-1]["text"]
    blessed, _ = blessing.blessing_decision(
        candidate, BASELINE, chance=0.1, margins={**MARGINS, "ece": 0.04}
    )
    assert blessed


@pytest.mark.parametrize(
    "margins, message",
    [
        (
            {"mean": -0.01, "uniform": 0.01, "ece": 1.0},
            r"margin_mean = -0.01: expected a number between 0 and 1",
        ),
        ({"mean": 0.01, "uniform": 2.0, "ece": 1.0}, r"margin_uniform = 2.0"),
        (
            {"mean": 0.01, "uniform": 0.01, "ece": float("nan")},
            r"margin_ece = nan: expected a number >= 0",
        ),
        ({"mean": 0.01, "uniform": 0.01}, r"expected a 'ece' margin"),
    ],
)
def test_bad_margins_are_refused(margins, message):
    with pytest.raises(ValueError, match=message):
        blessing.check_margins(margins)
