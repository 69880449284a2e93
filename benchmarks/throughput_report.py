"""The report of `benchmarks/throughput.py`: its results as tables, a verdict and a bar chart.

`write_report(results, output_dir)` writes `throughput.json`, `throughput.md` and
`throughput.png` there; `print_table(results)` prints the same rows. Every row is a
min / median / max over the repeats (see `throughput.stats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from harness import markdown_table, pyplot, save_figure, write_json

Row = tuple[str, str, Mapping[str, Any] | None, str]


def table_rows(results: Mapping[str, Any]) -> list[Row]:
    """(section, row label, stats or None, note) rows of the report, in order."""
    infer_note = f"batch {results['infer_batch']}"
    rows: list[Row] = []
    for name, entry in results["training"]["variants"].items():
        settings = entry["settings"]
        note = (
            f"xla={settings['xla']} onednn={settings['onednn'] or 'default'} "
            f"intra={settings['intra']} inter={settings['inter']} "
            f"spe={settings['steps_per_execution']}"
        )
        rows.append(("train img/s", f"TF {name} CE", entry["train_ce"], note))
        rows.append(
            (
                "train img/s",
                f"TF {name} LADE",
                entry["train_lade"],
                f"LADE overhead {entry['lade_overhead_pct']:+.1f} %",
            )
        )
        rows.append(("infer img/s", f"TF {name}", entry["infer"], infer_note))
    torch = results["training"]["torch"]
    if "train_ce" in torch:
        rows.append(("train img/s", "PyTorch CE", torch["train_ce"], f"threads {torch['threads']}"))
        rows.append(("infer img/s", "PyTorch", torch["infer"], infer_note))
    else:
        rows.append(("train img/s", "PyTorch CE", None, torch["status"]))
    pipeline = results.get("pipeline")
    if pipeline:
        rows.append(
            (
                "tf.data img/s",
                "cache+shuffle+augment+batch",
                pipeline["alone"],
                f"first epoch (decode+cache) {pipeline['first_epoch_images_per_s']:.0f} img/s",
            )
        )
        rows.append(
            (
                "train img/s (10 cl.)",
                "fit on tf.data pipeline",
                pipeline["fit_pipeline"],
                f"pipeline cost {pipeline['pipeline_cost_pct']:+.1f} %",
            )
        )
        rows.append(
            ("train img/s (10 cl.)", "fit on synthetic batches", pipeline["fit_synthetic"], "")
        )
    prepare = results.get("prepare")
    if prepare:
        point = {k: prepare["examples_per_s"] for k in ("min", "median", "max")}
        rows.append(
            (
                "prepare ex/s",
                "pipeline.prepare CIFAR-10",
                point,
                f"{prepare['seconds']:.0f} s, {prepare['source_images_per_s']:.0f} source img/s, "
                f"{prepare['examples_written']} examples (one run)",
            )
        )
    return rows


def memory_rows(results: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(process, peak RSS MiB) of every worker."""
    rows = [
        (f"TF train worker {name} (CE + LADE models)", entry["peak_rss_mb"])
        for name, entry in results["training"]["variants"].items()
    ]
    torch = results["training"]["torch"]
    if "peak_rss_mb" in torch:
        rows.append(("PyTorch worker", torch["peak_rss_mb"]))
    if results.get("pipeline"):
        rows.append(("tf.data + fit worker (10 classes)", results["pipeline"]["peak_rss_mb"]))
    if results.get("prepare"):
        rows.append(("pipeline.prepare (Beam in_memory)", results["prepare"]["peak_rss_mb"]))
    return rows


def verdict(results: Mapping[str, Any]) -> str | None:
    """TF (best variant) vs PyTorch training, in words."""
    torch = results["training"]["torch"]
    if "train_ce" not in torch:
        return None
    variants = results["training"]["variants"]
    best = max(variants, key=lambda name: variants[name]["train_ce"]["median"])
    tf_median = variants[best]["train_ce"]["median"]
    torch_median = torch["train_ce"]["median"]
    ratio = tf_median / torch_median
    met = "met" if ratio >= 1.0 else "not met"
    return (
        f"Target TF training >= PyTorch training: {met} (TF {best} CE median {tf_median:.0f} "
        f"img/s vs PyTorch {torch_median:.0f} img/s, ratio {ratio:.2f})."
    )


def same_network_note(results: Mapping[str, Any]) -> str | None:
    """Whether the PyTorch twin has the Keras model's parameter counts (None without torch)."""
    torch = results["training"]["torch"].get("parameters")
    variants = results["training"]["variants"]
    keras = next((e["parameters"] for e in variants.values() if "parameters" in e), None)
    if torch is None or keras is None:
        return None
    counts = (
        f"{keras['trainable']:,} trainable parameters and {keras['non_trainable']:,} "
        "batch-norm statistics"
    )
    if torch == keras:
        return f"Same network: the PyTorch twin and the Keras model both have {counts}."
    return (
        f"The PyTorch twin is NOT the Keras model's network: Keras {counts}; PyTorch "
        f"{torch['trainable']:,} and {torch['non_trainable']:,}."
    )


def markdown(results: Mapping[str, Any]) -> str:
    """The report as a Markdown table (plus the memory table and the verdict)."""
    m = results["machine"]
    lines = [
        "# Throughput (benchmarks/throughput.py)",
        "",
        f"{m['cpu']}, {m['cores']} cores, TensorFlow {m.get('tensorflow')}, Keras "
        f"{m.get('keras')}; {results['repeats']} repeats of {results['steps']} steps; "
        f"load average at start {m['load_average'][0]:.2f}. Command: `{results['command']}`",
        "",
    ]
    cells = []
    for section, label, values, note in table_rows(results):
        numbers = (
            ["-"] * 3 if values is None else [f"{values[k]:.0f}" for k in ("min", "median", "max")]
        )
        cells.append([section, label, *numbers, note])
    lines += markdown_table(["what", "row", "min", "median", "max", "note"], cells, "llrrrl")
    lines.append("")
    lines += markdown_table(
        ["process", "peak RSS (MiB)"],
        ([name, f"{rss:.0f}"] for name, rss in memory_rows(results)),
        "lr",
    )
    for note in (same_network_note(results), results.get("verdict")):
        if note:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Horizontal bar chart of the medians with min-max error bars, one panel per unit."""
    plt = pyplot()
    rows = [r for r in table_rows(results) if r[2] is not None]
    sections = list(dict.fromkeys(r[0] for r in rows))
    heights = [sum(r[0] == s for r in rows) for s in sections]
    figure, axes = plt.subplots(
        len(sections), 1, figsize=(8, 1.2 + 0.45 * len(rows)), height_ratios=heights, squeeze=False
    )
    for axis, section in zip(axes[:, 0], sections):
        part = [r for r in rows if r[0] == section]
        medians = np.array([r[2]["median"] for r in part])
        low = medians - np.array([r[2]["min"] for r in part])
        high = np.array([r[2]["max"] for r in part]) - medians
        colors = ["tab:orange" if "PyTorch" in r[1] else "tab:blue" for r in part]
        axis.barh(range(len(part)), medians, xerr=[low, high], color=colors, capsize=3)
        axis.set_yticks(range(len(part)), [r[1] for r in part], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel(section, fontsize=8)
        for i, value in enumerate(medians):
            axis.text(value, i, f" {value:.0f}", va="center", fontsize=7)
    figure.suptitle("Throughput, median with min-max over repeats", fontsize=10)
    save_figure(figure, path)


def print_table(results: Mapping[str, Any]) -> None:
    """The table on stdout."""
    print(f"{'what':<22} {'row':<30} {'min':>8} {'median':>8} {'max':>8}  note")
    for section, label, values, note in table_rows(results):
        numbers = (
            "       -        -        -"
            if values is None
            else f"{values['min']:8.0f} {values['median']:8.0f} {values['max']:8.0f}"
        )
        print(f"{section:<22} {label:<30} {numbers}  {note}")
    for name, rss in memory_rows(results):
        print(f"{'peak RSS MiB':<22} {name:<40} {rss:8.0f}")
    for note in (same_network_note(results), results.get("verdict")):
        if note:
            print(note)


def write_report(results: Mapping[str, Any], output_dir: Path) -> None:
    """throughput.json, throughput.md and throughput.png in `output_dir`."""
    write_json(output_dir / "throughput.json", results)
    (output_dir / "throughput.md").write_text(markdown(results))
    plot(results, output_dir / "throughput.png")
