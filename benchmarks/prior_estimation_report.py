"""The tables and the picture of `benchmarks/prior_estimation.py`: the shift report with the gap of
every estimated-prior row to the known prior against its target, and the estimator study (each
calibration on each validation-split size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import harness

#: Largest allowed drop (accuracy points) from the known prior to calibrated EM, per model, and
#: the largest allowed drop of calibrated EM below plain EM.
TARGET_GAPS = {"lade": 2.0, "ce": 3.0}
TARGET_DEFICIT_TO_PLAIN_EM = 0.5
ESTIMATORS = ("EM", "calibrated EM", "BBSE")


def gap_table(report: Mapping[str, Any], losses: Sequence[str]) -> dict[str, Any]:
    """Known-prior accuracy minus each estimator's, in points, per model and distribution; the
    worst gap of calibrated EM and its worst deficit to plain EM against the targets."""
    from pipeline.shift_scoring import LOSS_DISPLAY_NAMES

    gaps: dict[str, Any] = {}
    for loss in losses:
        model = LOSS_DISPLAY_NAMES[loss]
        known = report["methods"][model]
        by_estimator = {}
        for estimator in ESTIMATORS:
            row = report["methods"].get(f"{model} + {estimator}")
            if row is not None:
                by_estimator[estimator] = {
                    d: 100 * (known[d]["mean"] - row[d]["mean"]) for d in report["distributions"]
                }
        calibrated, plain = by_estimator.get("calibrated EM", {}), by_estimator.get("EM", {})
        worst = max(calibrated.values()) if calibrated else None
        deficit = max(calibrated[d] - plain[d] for d in calibrated) if plain else None
        target = TARGET_GAPS.get(loss)
        gaps[model] = {
            "gaps": by_estimator,
            "target": target,
            "worst_calibrated_gap": worst,
            "worst_deficit_to_plain_em": deficit,
            "target_met": None
            if target is None or worst is None
            else bool(worst <= target and deficit <= TARGET_DEFICIT_TO_PLAIN_EM),
        }
    return gaps


def gap_markdown(gaps: Mapping[str, Any], distributions: Sequence[str]) -> list[str]:
    """The gap table (points below the known-prior accuracy; negative = above)."""
    rows = []
    for model, entry in gaps.items():
        for estimator, by_dist in entry["gaps"].items():
            verdict = ""
            if estimator == "calibrated EM" and entry["target"] is not None:
                verdict = (
                    f"worst <= {entry['target']:g}, <= {TARGET_DEFICIT_TO_PLAIN_EM:g} below "
                    f"EM (here {entry['worst_deficit_to_plain_em']:+.1f}): "
                    + ("met" if entry["target_met"] else "MISSED")
                )
            rows.append(
                [f"{model} + {estimator}", *(f"{by_dist[d]:+.1f}" for d in distributions)]
                + [f"{max(by_dist.values()):+.1f}", verdict]
            )
    return [
        "## Gap to the known prior (accuracy points, known minus estimated)",
        "",
        *harness.markdown_table(
            ["Model + estimator", *distributions, "Worst", "Target"],
            rows,
            "l" + "r" * (len(distributions) + 1) + "l",
        ),
        "",
    ]


def study_markdown(study: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The estimator study: one row per model, calibration and validation-split size."""
    from pipeline.shift_scoring import LOSS_DISPLAY_NAMES

    rows = [
        [
            LOSS_DISPLAY_NAMES[loss],
            row["calibration"],
            row["val_per_class"],
            row["draws"],
            f"{row['worst_gap']:+.2f}",
            f"{row['mean_gap']:+.2f}",
            f"{row['worst_deficit_to_plain_em']:+.2f}",
            f"{row['mean_l1']:.3f}",
        ]
        for loss, loss_rows in study.items()
        for row in loss_rows
    ]
    return [
        "## Estimator study: each calibration on each validation-split size",
        "",
        "Gap: known-prior accuracy minus calibrated-EM accuracy (points; the worst over the 11 "
        "distributions and, for a split drawn from the validation split, over the draws). "
        "Deficit: plain EM minus calibrated EM, worst over the distributions. L1: mean error "
        "of the estimated prior. `none` is plain EM.",
        "",
        *harness.markdown_table(
            [
                "Model",
                "calibration",
                "val / class",
                "draws",
                "worst gap",
                "mean gap",
                "worst deficit to EM",
                "mean L1",
            ],
            rows,
            "llrrrrrr",
        ),
        "",
    ]


def write_results(document: Mapping[str, Any], stem: Path) -> str:
    """Writes `<stem>.json`, `.md` and `.png`; returns the Markdown."""
    from pipeline.shift_report import json_safe, plot_report, report_markdown

    report = document["report"]
    notes = [
        f"Models: {document['source']}; validation images per class "
        f"{document['val_per_class']}; training counts {document['train_counts']}.",
        f"{document['seconds']:.0f} s in all.",
        *[
            f"Served estimate_prior vs the library on one B50 batch ({loss}): max difference "
            f"{gap:.2g}."
            for loss, gap in document["served_estimate_gaps"].items()
        ],
    ]
    markdown = report_markdown(
        report, title=f"Unknown target prior ({document['name']})", notes=notes
    )
    markdown += "\n" + "\n".join(
        gap_markdown(document["gaps"], report["distributions"]) + study_markdown(document["study"])
    )
    harness.write_json(stem.with_suffix(".json"), json_safe(dict(document)), allow_nan=False)
    stem.with_suffix(".md").write_text(markdown)
    plot_report(report, stem.with_suffix(".png"))
    return markdown
