"""The reports of `benchmarks/accuracy.py`: every finished part of a budget merged into tables.

`write_reports(output, budget)` reads the parts under `<output>/parts/<budget>/` and writes
`accuracy_<budget>.{json,md,png}` (per data set and method: the 11 shifted distributions and the
uniform-test metrics) and `figure2_<budget>.{json,md,png}` (LADE's mean positive and negative
logits against alpha). Parts whose data had a different number of validation images per class
come from different training sets: they are never merged into one table (see
`check_val_per_class`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from accuracy_plan import DATASETS, EVAL_SEEDS, METHODS
from harness import SHIFT_NAMES, markdown_table, pyplot, save_figure, write_json

PART_KINDS = ("accuracy", "figure2")


def part_files(output: Path, budget: str, kind: str) -> list[Path]:
    """The JSON files of every finished part of one kind for a budget, sorted by name."""
    return sorted((output / "parts" / budget / kind).glob("*.json"))


def load_parts(output: Path, budget: str, kind: str) -> list[dict[str, Any]]:
    """Every finished part of one kind for a budget."""
    return [json.loads(path.read_text()) for path in part_files(output, budget, kind)]


def check_val_per_class(output: Path, budget: str, requested: int | None = None) -> int | None:
    """The one number of validation images per class behind every part of a budget.

    Args:
        requested: the number a new training would use; every finished part must have it too.

    Returns:
        That number (`requested` when no part exists yet).

    Raises:
        SystemExit: when parts differ from each other or from `requested`, or record none,
            naming the parts: their models saw different training sets (the validation images
            are taken first), so one table of them would compare unlike runs.
    """
    found: dict[Any, list[str]] = {}
    for kind in PART_KINDS:
        for path in part_files(output, budget, kind):
            value = json.loads(path.read_text()).get("val_per_class")
            found.setdefault(value, []).append(f"{kind}/{path.name}")
    if requested is not None:
        found.setdefault(requested, [])
    if len(found) <= 1:
        return next(iter(found), None)
    listing = "; ".join(
        f"{'no val_per_class recorded' if value is None else f'{value} per class'}: "
        f"{', '.join(names) or 'this run'}"
        for value, names in found.items()
    )
    finished = [value for value, names in found.items() if names and value is not None]
    advice = "keep each --val-per-class in its own --output folder"
    if requested is not None and len(finished) == 1 and len(found) == 2:
        advice = f"pass --val-per-class {finished[0]} to go on with these parts, or {advice}"
    raise SystemExit(
        f"error: the parts of budget {budget!r} in {output / 'parts' / budget} would mix "
        f"validation splits ({listing}). Their models saw different training sets: {advice}."
    )


def merge_accuracy(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per dataset and method: mean and std of each distribution and of the uniform metrics.

    With one training seed the std is over the 3 test subsamplings; with several it is over the
    training seeds (of each seed's subsampling mean), and `subsampling_std` keeps the former.
    """
    by_key: dict[tuple[str, str], list[tuple[int, Mapping[str, Any], Mapping[str, Any]]]] = {}
    for part in parts:
        for name, scores in part["methods"].items():
            by_key.setdefault((part["dataset"], name), []).append((part["seed"], scores, part))
    merged: dict[str, Any] = {}
    order = {name: i for i, name in enumerate(METHODS)}
    for (dataset, name), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        runs.sort(key=lambda run: run[0])
        shift = {}
        for dist in SHIFT_NAMES:
            means = np.array([s["shift"][dist]["mean"] for _, s, _ in runs])
            sub_std = float(np.mean([s["shift"][dist]["std"] for _, s, _ in runs]))
            shift[dist] = {
                "mean": float(means.mean()),
                "std": float(means.std()) if len(runs) > 1 else sub_std,
                "subsampling_std": sub_std,
            }
        uniform = {}
        for metric in runs[0][1]["uniform"]:
            values = np.array([s["uniform"][metric] for _, s, _ in runs], dtype=np.float64)
            uniform[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)) if len(runs) > 1 else 0.0,
            }
        merged.setdefault(dataset, {})[name] = {
            "label": METHODS[name].label,
            "seeds": [seed for seed, _, _ in runs],
            "shift": shift,
            "mean_of_11": float(np.mean([shift[d]["mean"] for d in SHIFT_NAMES])),
            "uniform": uniform,
            "train_seconds": [p["train_seconds"] for _, _, p in runs],
            "train_images_per_s": [p["train_images_per_s"] for _, _, p in runs],
            "epochs": runs[0][2]["config"]["epochs"],
        }
    return merged


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _command(budget: str, val_per_class: int | None) -> str:
    """The command line that reproduces a budget's report (whatever the default split is)."""
    command = f".venv/bin/python benchmarks/accuracy.py --budget {budget}"
    if val_per_class is not None:
        command += f" --val-per-class {val_per_class}"
    return f"`{command}`"


def _heading(title: str, paragraph: str, val_per_class: int | None) -> list[str]:
    """A report's title and opening paragraph, which ends with the validation split's size."""
    if val_per_class is None:
        split = "Validation split: not recorded."
    else:
        split = (
            f"Validation split: {val_per_class} balanced images per class, taken before the "
            "long-tailed training split."
        )
    return [f"# {title}", "", f"{paragraph} {split}", ""]


def accuracy_markdown(merged: Mapping[str, Any], budget: str, val_per_class: int | None) -> str:
    """The tables of one budget: 11 distributions, then uniform-test metrics, per dataset."""
    lines = _heading(
        f"Accuracy under label shift (budget `{budget}`)",
        f"Top-1 %, mean over {len(EVAL_SEEDS)} test subsamplings (and over training seeds "
        "where there are several); `largest std`: the largest of the 11 standard deviations "
        "(over subsamplings, or over training seeds where there are several). Command: "
        f"{_command(budget, val_per_class)}.",
        val_per_class,
    )
    for dataset, methods in merged.items():
        first = next(iter(methods.values()))
        lines += [f"## {dataset} ({first['epochs']} epochs, {DATASETS[dataset].arch})", ""]
        lines += markdown_table(
            ["Method", "seeds", *SHIFT_NAMES, "mean of 11", "largest std"],
            (
                [
                    row["label"],
                    len(row["seeds"]),
                    *(_pct(row["shift"][d]["mean"]) for d in SHIFT_NAMES),
                    _pct(row["mean_of_11"]),
                    _pct(max(row["shift"][d]["std"] for d in SHIFT_NAMES)),
                ]
                for row in methods.values()
            ),
            "ll" + "r" * (len(SHIFT_NAMES) + 2),
        )
        lines += ["", "Uniform test set:", ""]
        rows = []
        for row in methods.values():
            u = {k: v["mean"] for k, v in row["uniform"].items()}
            rows.append(
                [row["label"]]
                + [_pct(u[k]) for k in ("accuracy", "many", "medium", "few", "ece")]
                + [
                    f"{u['nll']:.3f}",
                    f"{np.mean(row['train_seconds']):.0f}",
                    f"{np.mean(row['train_images_per_s']):.0f}",
                ]
            )
        lines += markdown_table(
            ["Method", "accuracy", "many", "medium", "few", "ECE %", "NLL", "train s"]
            + ["train img/s"],
            rows,
            "l" + "r" * 8,
        )
        lines.append("")
        verdict = importance_verdict(methods)
        if verdict:
            lines += [verdict, ""]
    return "\n".join(lines)


def importance_verdict(methods: Mapping[str, Any]) -> str | None:
    """Which LADE importance variant has the better mean over the 11 distributions."""
    if "lade_sample" not in methods or "lade_class" not in methods:
        return None
    sample, cls = methods["lade_sample"]["mean_of_11"], methods["lade_class"]["mean_of_11"]
    better = "sample" if sample >= cls else "class"
    return (
        f"LADE importance: sample {_pct(sample)} vs class {_pct(cls)} (mean of 11): "
        f"`{better}` is better here by {100 * abs(sample - cls):.1f} points."
    )


def plot_accuracy(merged: Mapping[str, Any], path: Path) -> None:
    """Accuracy vs distribution, one panel per dataset, one line per method."""
    plt = pyplot()
    panels = len(merged)
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 4.8), squeeze=False)
    for ax, (dataset, methods) in zip(axes[0], merged.items()):
        x = np.arange(len(SHIFT_NAMES))
        for name, row in methods.items():
            means = np.array([row["shift"][d]["mean"] for d in SHIFT_NAMES]) * 100
            stds = np.array([row["shift"][d]["std"] for d in SHIFT_NAMES]) * 100
            style = "--" if METHODS[name].rule != "known_prior" else "-"
            ax.plot(x, means, style, marker="o", markersize=3, label=row["label"])
            ax.fill_between(x, means - stds, means + stds, alpha=0.15)
        ax.set_xticks(x, SHIFT_NAMES)
        ax.set_xlabel("test distribution (F: as skewed as train ... U ... B: reversed)")
        ax.set_ylabel("top-1 accuracy %")
        ax.set_title(f"{dataset}, {next(iter(methods.values()))['epochs']} epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def merge_figure2(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figure 2 rows sorted by alpha."""
    rows = sorted(parts, key=lambda p: p["alpha"])
    return {
        "dataset": rows[0]["dataset"] if rows else None,
        "log_C": math.log(rows[0]["num_classes"]) if rows else None,
        "rows": [
            {
                k: p[k]
                for k in ("alpha", "positive", "negative", "uniform_accuracy_raw_logits", "epochs")
            }
            for p in rows
        ],
    }


def figure2_markdown(fig2: Mapping[str, Any], budget: str, val_per_class: int | None) -> str:
    """Figure 2 as a table."""
    lines = _heading(
        f"Figure 2 check (budget `{budget}`): LADE logits vs alpha on {fig2['dataset']}",
        f"log C = {fig2['log_C']:.3f}. Mean over the test set of the positive-sample "
        "logit f(x)[y] and of the negative-sample logits f(x)[c != y].",
        val_per_class,
    )
    lines += markdown_table(
        ["alpha", "epochs", "positive", "negative", "accuracy % (raw logits)"],
        (
            [
                f"{row['alpha']:g}",
                row["epochs"],
                f"{row['positive']:.3f}",
                f"{row['negative']:.3f}",
                _pct(row["uniform_accuracy_raw_logits"]),
            ]
            for row in fig2["rows"]
        ),
        "rrrrr",
    )
    return "\n".join(lines) + "\n"


def plot_figure2(fig2: Mapping[str, Any], path: Path) -> None:
    """Positive and negative mean logits vs alpha with the log C line."""
    plt = pyplot()
    alphas = [row["alpha"] for row in fig2["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(alphas, [r["positive"] for r in fig2["rows"]], "o-", label="positive f(x)[y]")
    ax.plot(alphas, [r["negative"] for r in fig2["rows"]], "s-", label="negative f(x)[c≠y]")
    ax.axhline(fig2["log_C"], color="grey", linestyle="--", label="log C")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("alpha")
    ax.set_ylabel("mean logit")
    ax.set_title(f"LADE logits vs alpha ({fig2['dataset']})")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def write_reports(output: Path, budget: str) -> None:
    """Merges every part of a budget into JSON + Markdown + PNG and prints the tables."""
    val_per_class = check_val_per_class(output, budget)
    accuracy_parts = load_parts(output, budget, "accuracy")
    if accuracy_parts:
        merged = merge_accuracy(accuracy_parts)
        write_json(
            output / f"accuracy_{budget}.json",
            {"budget": budget, "val_per_class": val_per_class, "datasets": merged},
        )
        text = accuracy_markdown(merged, budget, val_per_class)
        (output / f"accuracy_{budget}.md").write_text(text)
        plot_accuracy(merged, output / f"accuracy_{budget}.png")
        print(text)
    figure2_parts = load_parts(output, budget, "figure2")
    if figure2_parts:
        fig2 = merge_figure2(figure2_parts)
        write_json(
            output / f"figure2_{budget}.json",
            {"budget": budget, "val_per_class": val_per_class, **fig2},
        )
        text = figure2_markdown(fig2, budget, val_per_class)
        (output / f"figure2_{budget}.md").write_text(text)
        plot_figure2(fig2, output / f"figure2_{budget}.png")
        print(text)
