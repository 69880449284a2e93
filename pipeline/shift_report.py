"""The shift report as files: JSON, Markdown (the blessing first) and a PNG of accuracy against the
label distribution, with the estimation error of the estimated priors below it.

`write_report` writes the three files of a report computed by `pipeline.shift_scoring` into a
folder. No TensorFlow or TFX import.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.blessing import is_checked, percent, points
from pipeline.shift_scoring import ESTIMATED_PRIORS

REPORT_JSON = "shift_report.json"
REPORT_MARKDOWN = "shift_report.md"
REPORT_PLOT = "shift_accuracy.png"
REPORT_FILES = (REPORT_JSON, REPORT_MARKDOWN, REPORT_PLOT)
#: Line style of each kind of row in the plot: estimated priors dashed.
LINE_STYLES = {"none": "-", "known": "-", "em": ":", "calibrated_em": "--", "bbse": "-."}


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities (in nested dicts and lists) as None, JSON's null: an empty
    shot group has no accuracy."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def blessing_markdown(blessing: Mapping[str, Any]) -> list[str]:
    """The report's "Blessing" section: verdict, every check, the baseline and the margins."""
    verdict = "BLESSED" if blessing["blessed"] else "NOT blessed"
    lines = ["## Blessing", "", f"**{blessing['model']} ({blessing['loss']}): {verdict}.**", ""]
    lines += [f"- {blessing['reason']}"]
    alpha = blessing.get("alpha")
    if alpha:
        lines.append(f"- alpha the LADE Trainer used: {alpha['value']:.4g} ({alpha['source']})")
    margins = blessing["margins"]
    ece = (
        f"ECE up {points(margins['ece'])}"
        if is_checked(margins["ece"])
        else "ECE not checked (--bless-margin-ece)"
    )
    lines.append(
        f"- Margins: mean down {points(margins['mean'])}, uniform down "
        f"{points(margins['uniform'])}, {ece}."
    )
    lines += ["", "| Check | Candidate | Baseline | Allowed | Result |", "|---|---:|---:|---:|---|"]
    for check in blessing["checks"]:
        result = "pass" if check["passed"] else "FAIL"
        if "candidate" not in check:  # the serving check has no numbers, only its text
            result += f" ({check['text']})"
        lines.append(
            f"| {check['name']} | {percent(check.get('candidate'))} | "
            f"{percent(check.get('baseline'))} | {percent(check.get('limit'))} | {result} |"
        )
    baseline = blessing.get("baseline")
    lines.append("")
    if baseline:
        lines.append(
            f"Baseline: {baseline['method']} ({baseline['loss']}"
            + (f", alpha {baseline['alpha']:g}" if baseline.get("alpha") is not None else "")
            + f"), MLMD model id {baseline['model_id']}, {baseline['uri']}; on these test images "
            f"mean {percent(baseline['mean'])} %, uniform {percent(baseline['uniform'])} %, "
            f"ECE {percent(baseline['ece'])} %. Per distribution (%): "
            + ", ".join(f"{d} {percent(v)}" for d, v in baseline["by_distribution"].items())
            + "."
        )
    else:
        lines.append(f"Baseline: none ({blessing['baseline_note']}).")
    lines.append("")
    return lines


def _estimated_rows(report: Mapping[str, Any]) -> list[str]:
    return [
        name
        for name, by_dist in report["methods"].items()
        if "prior_l1" in next(iter(by_dist.values()))
    ]


def report_markdown(
    report: Mapping[str, Any], *, title: str = "Label-shift evaluation", notes: Sequence[str] = ()
) -> str:
    """The report as Markdown: accuracy table (mean ± std, %), the estimation error of every
    estimated-prior row (L1 and Jensen-Shannon divergence to the true p_t) and the uniform-test
    metrics."""
    dists = report["distributions"]
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    if report.get("blessing"):
        lines += blessing_markdown(report["blessing"])
    lines += [
        "## Top-1 accuracy (%) under label shift, mean ± std over seeds",
        "",
        "| Method | " + " | ".join(dists) + " | Mean |",
        "|---|" + "---:|" * (len(dists) + 1),
    ]
    for name, by_dist in report["methods"].items():
        cells = [f"{percent(by_dist[d]['mean'])} ± {percent(by_dist[d]['std'])}" for d in dists]
        mean = float(np.mean([by_dist[d]["mean"] for d in dists]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {percent(mean)} |")
    estimated = _estimated_rows(report)
    if estimated:
        lines += [
            "",
            "## Target-prior estimation error: L1 / Jensen-Shannon divergence (nats) "
            "to the true p_t, mean over seeds",
            "",
            "| Method | " + " | ".join(dists) + " | Mean |",
            "|---|" + "---:|" * (len(dists) + 1),
        ]
        for name in estimated:
            by_dist = report["methods"][name]
            cells = [f"{by_dist[d]['prior_l1']:.3f} / {by_dist[d]['prior_js']:.4f}" for d in dists]
            l1 = float(np.mean([by_dist[d]["prior_l1"] for d in dists]))
            js = float(np.mean([by_dist[d]["prior_js"] for d in dists]))
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {l1:.3f} / {js:.4f} |")
    lines += [
        "",
        "## Uniform test set",
        "",
        "| Method | Many (%) | Medium (%) | Few (%) | ECE (%) | NLL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in report["uniform"].items():
        nll = metrics["nll"]
        lines.append(
            f"| {name} | {percent(metrics['many'])} | {percent(metrics['medium'])} | "
            f"{percent(metrics['few'])} | {percent(metrics['ece'])} | "
            f"{'n/a' if nll is None else f'{nll:.3f}'} |"
        )
    lines += [
        "",
        "Many / medium / few: classes with > 100, 20..100, < 20 training images "
        "(n/a: no such class). F = forward (as skewed as training, ratio 50..2), "
        "U = uniform, B = backward (reversed). Estimated target priors, from the unlabeled "
        "shifted test set: EM (Saerens et al. 2002, Dirichlet-MAP centred on the training "
        "prior) on the model's uncalibrated posteriors; calibrated EM: the same after "
        "Dirichlet calibration (Kull et al. 2019) fitted on the validation split; BBSE "
        "(Lipton et al. 2018) with the validation confusion matrix.",
        "",
    ]
    return "\n".join(lines)


def _row_kind(name: str) -> tuple[str, str]:
    """(model name, prior kind) of a report row name."""
    for prior, (suffix, _, _) in ESTIMATED_PRIORS.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), prior
    return name, "known"


def plot_report(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes the PNG: accuracy vs test distribution, one line (with std bars) per method,
    estimated-prior lines dashed; below it the L1 estimation error of the estimated priors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = report["distributions"]
    x = np.arange(len(dists))
    estimated = _estimated_rows(report)
    figure, axes = plt.subplots(
        2 if estimated else 1,
        1,
        figsize=(9, 9 if estimated else 5.5),
        dpi=110,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2] if estimated else [1]},
    )
    accuracy_axis = axes[0, 0]
    colours: dict[str, Any] = {}  # one colour per model, one line style per kind of prior
    for name, by_dist in report["methods"].items():
        means = np.array([by_dist[d]["mean"] for d in dists]) * 100
        stds = np.array([by_dist[d]["std"] for d in dists]) * 100
        base, kind = _row_kind(name)
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = LINE_STYLES["none" if name == "Softmax" else kind]
        accuracy_axis.errorbar(
            x,
            means,
            yerr=stds,
            color=colour,
            marker="o",
            markersize=4,
            capsize=2,
            linestyle=style,
            label=name,
            alpha=0.6 if name == "Softmax" else 1.0,
        )
    accuracy_axis.set_xticks(x, dists)
    accuracy_axis.set_ylabel("top-1 accuracy (%)")
    accuracy_axis.set_title("Accuracy under label shift (dashed / dotted: estimated p_t)")
    accuracy_axis.grid(alpha=0.3)
    accuracy_axis.legend(fontsize=7, loc="best", ncol=2)
    if estimated:
        error_axis = axes[1, 0]
        for name in estimated:
            base, kind = _row_kind(name)
            errors = [report["methods"][name][d]["prior_l1"] for d in dists]
            error_axis.plot(
                x,
                errors,
                color=colours[base],
                marker="o",
                markersize=3,
                linestyle=LINE_STYLES[kind],
                label=name,
            )
        error_axis.set_xticks(x, dists)
        error_axis.set_ylabel("L1 error of estimated p_t")
        error_axis.grid(alpha=0.3)
        error_axis.legend(fontsize=7, loc="best", ncol=2)
    axes[-1, 0].set_xlabel(
        "test label distribution (F: forward long-tailed, U: uniform, B: backward)"
    )
    figure.tight_layout()
    figure.savefig(os.fspath(path))
    plt.close(figure)


def write_report(
    report: Mapping[str, Any], output_dir: str | os.PathLike, *, notes: Sequence[str] = ()
) -> dict[str, str]:
    """Writes shift_report.json, shift_report.md and shift_accuracy.png into output_dir.

    Returns:
        {file name: path} of the three files.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in REPORT_FILES}
    safe = json_safe(json.loads(json.dumps(report)))
    with open(paths[REPORT_JSON], "w", encoding="utf-8") as handle:
        json.dump(safe, handle, indent=2, allow_nan=False)
        handle.write("\n")
    with open(paths[REPORT_MARKDOWN], "w", encoding="utf-8") as handle:
        handle.write(report_markdown(safe, notes=notes))
    plot_report(report, paths[REPORT_PLOT])
    return paths
