"""The shift report's files (pipeline.shift_report): JSON without non-standard constants, the
Markdown tables and the PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lade_tf.priors import SHIFT_NAMES
from pipeline import blessing, shift_report, shift_scoring


def test_written_report_files(report, tmp_path: Path):
    paths = shift_report.write_report(report, tmp_path, notes=["a note"])
    assert sorted(Path(p).name for p in paths.values()) == sorted(shift_report.REPORT_FILES)

    def reject_constant(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    written = json.loads(
        Path(paths[shift_report.REPORT_JSON]).read_text(), parse_constant=reject_constant
    )
    assert written == json.loads(json.dumps(report))

    markdown = Path(paths[shift_report.REPORT_MARKDOWN]).read_text()
    assert "a note" in markdown
    for name in list(report["methods"]) + list(SHIFT_NAMES):
        assert f" {name} |" in markdown
    pc_f50 = report["methods"]["PC Softmax"]["F50"]
    assert f"{100 * pc_f50['mean']:.1f} ± {100 * pc_f50['std']:.1f}" in markdown
    assert "## Target-prior estimation error" in markdown
    calibrated_b50 = report["methods"]["PC Softmax + calibrated EM"]["B50"]
    assert f"{calibrated_b50['prior_l1']:.3f} / {calibrated_b50['prior_js']:.4f}" in markdown

    png = Path(paths[shift_report.REPORT_PLOT]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 600 and height >= 400 and len(png) > 20_000


def test_empty_shot_group_is_null_in_json_and_na_in_markdown(real_logits, tmp_path: Path):
    """Fashion-MNIST-LT IR 100 has no class under 20 images: `few` has no value, not a fake one."""
    logits, labels = real_logits
    counts = [math.floor(5980 * (1 / 100) ** (k / 9)) for k in range(10)]  # 5980 ... 59
    report = shift_scoring.compute_shift_report(
        {"ce": logits["ce"]}, labels, {"ce": counts}, seeds=(0, 1, 2)
    )
    # Without a validation split there are no calibrated-EM or BBSE rows.
    assert list(report["methods"]) == ["Softmax", "PC Softmax", "PC Softmax + EM"]
    assert math.isnan(report["uniform"]["PC Softmax"]["few"])
    paths = shift_report.write_report(report, tmp_path)
    written = json.loads(Path(paths[shift_report.REPORT_JSON]).read_text())
    assert written["uniform"]["PC Softmax"]["few"] is None
    assert math.isfinite(written["uniform"]["PC Softmax"]["medium"])
    assert "n/a" in Path(paths[shift_report.REPORT_MARKDOWN]).read_text()


def test_report_says_why_and_names_the_baseline(report, tmp_path: Path):
    candidate = shift_scoring.method_scores(report, "PC Softmax")
    baseline = {
        **{k: v + 0.05 for k, v in candidate.items()},
        "model_id": 3,
        "uri": "/root/Trainer_ce/model/3",
        "method": "PC Softmax",
        "loss": "ce",
        "alpha": None,
        "by_distribution": {d: 0.5 for d in SHIFT_NAMES},
    }
    margins = {"mean": 0.01, "uniform": 0.02, "ece": 1.0}
    blessed, checks = blessing.blessing_decision(candidate, baseline, chance=0.1, margins=margins)
    reason = blessing.blessing_reason(
        blessed, checks, "baseline: the latest blessed model, MLMD id 3"
    )
    with_blessing = {
        **report,
        "blessing": {
            "model": "PC Softmax",
            "loss": "ce",
            "blessed": blessed,
            "reason": reason,
            "chance": 0.1,
            "candidate": candidate,
            "baseline": baseline,
            "baseline_note": "baseline: the latest blessed model, MLMD id 3",
            "margins": margins,
            "checks": checks,
            "alpha": {"value": 0.3, "source": "--alpha flag"},
        },
    }
    paths = shift_report.write_report(with_blessing, tmp_path)
    written = json.loads(Path(paths[shift_report.REPORT_JSON]).read_text())["blessing"]
    assert written["blessed"] is False and written["margins"] == margins
    assert written["baseline"]["model_id"] == 3
    markdown = Path(paths[shift_report.REPORT_MARKDOWN]).read_text()
    assert "**PC Softmax (ce): NOT blessed.**" in markdown
    assert "not blessed: mean accuracy over the 11 distributions" in markdown
    assert "Margins: mean down 1 point, uniform down 2 points, ECE not checked" in markdown
    assert "alpha the LADE Trainer used: 0.3 (--alpha flag)" in markdown
    assert "MLMD model id 3, /root/Trainer_ce/model/3" in markdown
    assert "| mean |" in markdown and "FAIL" in markdown
