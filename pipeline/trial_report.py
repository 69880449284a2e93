"""The trial table of a search over LADE's alpha: trials.json, trials.md and trials.png.

One row per finished trial, best first, with the objective (mean accuracy over the 11 shifted
versions of the val split), its standard error over the val split (so a difference smaller than
about twice it is noise) and the 11 per-distribution accuracies; the plot shows the objective with
its standard error against alpha. No keras_tuner import.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from lade_tf.priors import SHIFT_NAMES
from pipeline.tuning_config import OBJECTIVE, OBJECTIVE_STANDARD_ERROR, TUNED_RANGE

TRIALS_JSON = "trials.json"
TRIALS_MARKDOWN = "trials.md"
TRIALS_PLOT = "trials.png"
TRIAL_FILES = (TRIALS_JSON, TRIALS_MARKDOWN, TRIALS_PLOT)


def trial_table(tuner: Any) -> list[dict[str, Any]]:
    """One row per finished trial of a KerasTuner tuner, best first: trial_id, status,
    hyper-parameters, the objective and its standard error, the 11 accuracies."""
    rows = []
    for trial in tuner.oracle.trials.values():
        row = {"trial_id": trial.trial_id, "status": str(trial.status), OBJECTIVE: trial.score}
        row.update({k: v for k, v in trial.hyperparameters.values.items()})
        for name in (OBJECTIVE_STANDARD_ERROR, *SHIFT_NAMES):
            if trial.metrics.exists(name):
                row[name] = float(trial.metrics.get_last_value(name))
        rows.append(row)
    return sorted(rows, key=lambda r: (r[OBJECTIVE] is None, -(r[OBJECTIVE] or 0.0)))


def trial_table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The trial table as Markdown, accuracies in percent."""
    if not rows:
        return "(no trials)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    percent = {OBJECTIVE, OBJECTIVE_STANDARD_ERROR, *SHIFT_NAMES}

    def cell(column, value):
        if value is None:
            return "-"
        if column in percent:
            return f"{100 * value:.2f}"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_trials(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes a PNG of the objective (mean shifted-val accuracy, %) against alpha, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.get(OBJECTIVE) is not None and r.get("alpha") is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    if scored:
        alphas = [float(r["alpha"]) for r in scored]
        scores = [100 * float(r[OBJECTIVE]) for r in scored]
        errors = [100 * float(r.get(OBJECTIVE_STANDARD_ERROR) or 0.0) for r in scored]
        axis.errorbar(
            alphas,
            scores,
            yerr=errors,
            fmt="o",
            color="tab:blue",
            capsize=3,
            zorder=2,
            label="trial (bar: standard error over the val split)",
        )
        best = max(range(len(scored)), key=lambda i: scores[i])
        axis.scatter([alphas[best]], [scores[best]], color="tab:red", zorder=3, label="best trial")
        for alpha, score, row in zip(alphas, scores, scored):
            axis.annotate(
                str(row["trial_id"]),
                (alpha, score),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        axis.legend(fontsize=8)
    axis.set_xscale("log")
    axis.set_xlim(TUNED_RANGE[0] / 1.25, TUNED_RANGE[1] * 1.25)  # the whole search range
    axis.set_xlabel("alpha (LADER weight)")
    axis.set_ylabel("mean accuracy over the 11 shifted val sets (%)")
    axis.set_title(f"{len(scored)} trials")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.fspath(path))
    plt.close(figure)


def write_trial_table(rows: Sequence[Mapping[str, Any]], directory: str | os.PathLike) -> None:
    """Writes trials.json, trials.md (accuracies in percent) and trials.png into directory
    (a local path or any tf.io.gfile URI)."""
    import tempfile

    import tensorflow as tf

    directory = os.fspath(directory)
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, TRIALS_JSON), "w") as handle:
        json.dump(list(rows), handle, indent=1)
    with tf.io.gfile.GFile(os.path.join(directory, TRIALS_MARKDOWN), "w") as handle:
        handle.write(trial_table_markdown(rows))
    with tempfile.TemporaryDirectory() as local:  # matplotlib writes local files only
        plot_path = os.path.join(local, TRIALS_PLOT)
        plot_trials(rows, plot_path)
        tf.io.gfile.copy(plot_path, os.path.join(directory, TRIALS_PLOT), overwrite=True)
