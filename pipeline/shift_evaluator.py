"""ShiftEvaluator: every trained model under the 11 label shifts (docs/design.md 5); a blessing.

The component is thin: it computes each model's raw logits on the (balanced) test split and on
the validation split and hands them to `lade_tf.shift_eval`, the one implementation of the shift
protocol. It writes `shift_report.json` (the issue's schema), `shift_report.md` and
`shift_accuracy.png` into its `report` artifact, and blesses the model to push (LADE by default)
after checking that its serving SavedModel answers a [batch, C] target prior exactly as the
evaluated rule says, that its `estimate_prior` signature gives the library's estimate, and that
it does not fall below the latest blessed model (its optional `baseline_model` input, from a
Resolver with LatestBlessedModelStrategy, scored on the same test images) by more than the
margins (`blessing_decision`); the standard TFX Pusher then pushes it.

Methods per trained loss: `ce` gives Softmax (no correction) and PC Softmax; `lade`,
`balanced_softmax` and `logit_adjusted` give their NAME; each NAME is evaluated with the known
p_t and with p_t estimated on the unlabeled shifted test set (docs/design.md section 7) by EM on the
uncalibrated posteriors ("NAME + EM"), by EM after BCTS calibration on the validation split
("NAME + calibrated EM") and by BBSE ("NAME + BBSE"); the last two need a validation split.
"""

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from absl import logging

# Narrow imports: `from tfx import v1` also loads the Vertex AI, BigQuery and Kubernetes clients
# (about 25 s of CPU here), which this component never uses.
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation, ModelRun
from tfx.utils import path_utils

REPORT_JSON = "shift_report.json"
REPORT_MARKDOWN = "shift_report.md"
REPORT_PLOT = "shift_accuracy.png"
REPORT_FILES = (REPORT_JSON, REPORT_MARKDOWN, REPORT_PLOT)
UNIFORM_KEYS = ("many", "medium", "few", "ece", "nll")
#: Display name of the model trained with each loss.
LOSS_DISPLAY_NAMES = {
    "ce": "PC Softmax",
    "lade": "LADE",
    "balanced_softmax": "Balanced Softmax",
    "logit_adjusted": "Logit Adjusted",
}
#: How each estimated-prior variant is evaluated: row-name suffix, estimation method, calibration.
ESTIMATED_PRIORS = {
    "em": (" + EM", "em", "none"),
    "calibrated_em": (" + calibrated EM", "em", "bcts"),
    "bbse": (" + BBSE", "bbse", "none"),
}
#: Row-name suffix of the uncalibrated EM rows.
EM_SUFFIX = ESTIMATED_PRIORS["em"][0]
#: Estimated-prior variants that need the validation split.
NEEDS_VALIDATION = ("calibrated_em", "bbse")
#: Line style of each kind of row in the plot: estimated priors dashed.
LINE_STYLES = {"none": "-", "known": "-", "em": ":", "calibrated_em": "--", "bbse": "-."}
#: Default blessing margins (fractions of accuracy; an ECE margin >= 1 leaves ECE unchecked).
DEFAULT_MARGINS = {"mean": 0.01, "uniform": 0.01, "ece": 1.0}
#: Test images checked through the serving signatures before blessing.
SERVING_CHECK_IMAGES = 64


@dataclass(frozen=True)
class Method:
    """One row of the report: a trained model and how its logits meet the target prior.

    Attributes:
        name: row name in the report ("Softmax", "PC Softmax", "LADE + calibrated EM", ...).
        loss: the loss the model was trained with.
        prior: "none" (plain model output), "known" (true p_t), or an estimated p_t: "em"
            (uncalibrated EM), "calibrated_em" (BCTS on val, then EM) or "bbse".
    """

    name: str
    loss: str
    prior: str

    @property
    def estimated(self) -> bool:
        """True for rows whose target prior is estimated."""
        return self.prior in ESTIMATED_PRIORS

    def options(self) -> dict[str, Any]:
        """The `lade_tf.shift_eval` keyword arguments of this row (besides data and tau)."""
        if self.prior == "none":
            return {"corrected": False}
        if self.prior == "known":
            return {}
        _, estimate, calibration = ESTIMATED_PRIORS[self.prior]
        return {"estimate": estimate, "calibration": calibration}


def methods_for(losses: Sequence[str], with_validation: bool = True) -> list[Method]:
    """The report rows for the trained losses, in a stable order (Softmax first).

    Args:
        losses: the trained losses.
        with_validation: include the rows that need the validation split (calibrated EM, BBSE).

    Raises:
        ValueError: for a loss without a display name.
    """
    rows: list[Method] = []
    for loss in losses:
        if loss not in LOSS_DISPLAY_NAMES:
            raise ValueError(f"loss {loss!r}: expected one of {', '.join(LOSS_DISPLAY_NAMES)}")
        name = LOSS_DISPLAY_NAMES[loss]
        if loss == "ce":
            rows.append(Method("Softmax", loss, "none"))
        rows.append(Method(name, loss, "known"))
        for prior, (suffix, _, _) in ESTIMATED_PRIORS.items():
            if with_validation or prior not in NEEDS_VALIDATION:
                rows.append(Method(f"{name}{suffix}", loss, prior))
    return rows


def compute_shift_report(
    logits_by_loss: Mapping[str, np.ndarray],
    labels: np.ndarray,
    train_counts_by_loss: Mapping[str, Sequence[int]],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    val_logits_by_loss: Mapping[str, np.ndarray] | None = None,
    val_labels: np.ndarray | None = None,
    tau_by_loss: Mapping[str, float] | None = None,
) -> dict:
    """The shift report of every trained model, in the issue's JSON schema.

    Args:
        logits_by_loss: raw logits [N, C] of each model on the balanced test split, keyed by the
            loss it was trained with.
        labels: test labels [N].
        train_counts_by_loss: the class counts [C] each model was trained on (its source prior).
        seeds: subsampling seeds of the shifted test sets (at least 3 for a reported std).
        val_logits_by_loss: raw logits [M, C] of each model on the validation split; with
            `val_labels` they add the calibrated-EM and BBSE rows. None: those rows are left out.
        val_labels: validation labels [M].
        tau_by_loss: tau of each model's inference rule (logit-adjusted loss); default 1.0.

    Returns:
        {"distributions": [11 names],
         "methods": {name: {dist: {"mean", "std"} (+ "prior_l1", "prior_js" for estimated
                    priors: L1 and Jensen-Shannon divergence of the estimate to the true p_t)}},
         "uniform": {name: {"many", "medium", "few", "ece", "nll"}}}; accuracies in 0..1, a shot
        group without classes is NaN (written as null in JSON).

    Raises:
        ValueError: if a loss has no train counts (or no val logits while val labels are given),
            or no seeds are given.
    """
    from lade_tf.priors import SHIFT_NAMES
    from lade_tf.shift_eval import ESTIMATION_ERROR_KEYS, evaluate_under_shift, uniform_summary

    if not seeds:
        raise ValueError("seeds is empty: expected at least one subsampling seed (3 or more)")
    missing = sorted(set(logits_by_loss) - set(train_counts_by_loss))
    if missing:
        raise ValueError(f"no train counts for the models trained with {missing}")
    with_validation = val_labels is not None
    if with_validation:
        missing = sorted(set(logits_by_loss) - set(val_logits_by_loss or {}))
        if missing:
            raise ValueError(
                f"no validation logits for the models trained with {missing}: "
                "expected one [M, C] array per model with val_labels"
            )
    labels = np.asarray(labels, dtype=np.int64)
    taus = dict(tau_by_loss or {})
    report: dict[str, Any] = {"distributions": list(SHIFT_NAMES), "methods": {}, "uniform": {}}
    for method in methods_for(list(logits_by_loss), with_validation):
        logits = np.asarray(logits_by_loss[method.loss], dtype=np.float64)
        counts = [int(n) for n in train_counts_by_loss[method.loss]]
        options = {"tau": float(taus.get(method.loss, 1.0)), **method.options()}
        if method.estimated and with_validation:
            options.update(
                val_logits=np.asarray(val_logits_by_loss[method.loss], np.float64),
                val_labels=np.asarray(val_labels, np.int64),
            )
        by_dist = evaluate_under_shift(
            logits, labels, counts, method.loss, seeds=tuple(seeds), **options
        )
        keys = ("mean", "std") + (ESTIMATION_ERROR_KEYS if method.estimated else ())
        report["methods"][method.name] = {
            name: {key: float(by_dist[name][key]) for key in keys} for name in SHIFT_NAMES
        }
        uniform = uniform_summary(logits, labels, counts, method.loss, **options)
        report["uniform"][method.name] = {key: float(uniform[key]) for key in UNIFORM_KEYS}
    return report


def method_scores(report: Mapping[str, Any], method: str) -> dict[str, float]:
    """The numbers blessing compares for one report row: `mean` (mean accuracy over the 11
    distributions), `uniform` (accuracy on the uniform test set) and `ece` (its ECE).

    Raises:
        ValueError: if the report has no row of that name.
    """
    if method not in report["methods"]:
        raise ValueError(f"method {method!r} not in the report; rows: {list(report['methods'])}")
    by_dist = report["methods"][method]
    return {
        "mean": float(np.mean([by_dist[name]["mean"] for name in report["distributions"]])),
        "uniform": float(by_dist["U"]["mean"]),
        "ece": float(report["uniform"][method]["ece"]),
    }


def check_margins(margins: Mapping[str, float]) -> dict[str, float]:
    """The blessing margins {"mean", "uniform", "ece"} as floats.

    A margin is a fraction of accuracy (0.01 = one point); an ECE margin of 1 or more (ECE's
    whole range) leaves ECE unchecked.

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
                f"margin_ece = {margins[key]!r}: expected a number >= 0 (1 or more: ECE not "
                "checked)"
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
    more than `margins["ece"]` (a margin >= 1 leaves ECE unchecked).

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
            "text": f"uniform accuracy {_percent(uniform)} % vs chance {_percent(chance)} %",
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
                    "text": f"{label} {_percent(candidate[key])} % vs baseline "
                    f"{_percent(baseline[key])} % (allowed down to {_percent(limit)} %, "
                    f"margin {_points(margins[key])})",
                }
            )
        if margins["ece"] < 1:
            limit = baseline["ece"] + margins["ece"]
            checks.append(
                {
                    "name": "ece",
                    "passed": math.isfinite(candidate["ece"]) and candidate["ece"] <= limit + 1e-12,
                    "candidate": candidate["ece"],
                    "baseline": baseline["ece"],
                    "margin": margins["ece"],
                    "limit": limit,
                    "text": f"uniform ECE {_percent(candidate['ece'])} % vs baseline "
                    f"{_percent(baseline['ece'])} % (allowed up to {_percent(limit)} %, "
                    f"margin {_points(margins['ece'])})",
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


def _points(margin: float) -> str:
    return f"{100 * margin:g} point{'' if 100 * margin == 1 else 's'}"


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
        f"ECE up {_points(margins['ece'])}"
        if margins["ece"] < 1
        else "ECE not checked (--bless-margin-ece)"
    )
    lines.append(
        f"- Margins: mean down {_points(margins['mean'])}, uniform down "
        f"{_points(margins['uniform'])}, {ece}."
    )
    lines += ["", "| Check | Candidate | Baseline | Allowed | Result |", "|---|---:|---:|---:|---|"]
    for check in blessing["checks"]:
        result = "pass" if check["passed"] else "FAIL"
        if "candidate" not in check:  # the serving check has no numbers, only its text
            result += f" ({check['text']})"
        lines.append(
            f"| {check['name']} | {_percent(check.get('candidate'))} | "
            f"{_percent(check.get('baseline'))} | {_percent(check.get('limit'))} | {result} |"
        )
    baseline = blessing.get("baseline")
    lines.append("")
    if baseline:
        lines.append(
            f"Baseline: {baseline['method']} ({baseline['loss']}"
            + (f", alpha {baseline['alpha']:g}" if baseline.get("alpha") is not None else "")
            + f"), MLMD model id {baseline['model_id']}, {baseline['uri']}; on these test images "
            f"mean {_percent(baseline['mean'])} %, uniform {_percent(baseline['uniform'])} %, "
            f"ECE {_percent(baseline['ece'])} %. Per distribution (%): "
            + ", ".join(f"{d} {_percent(v)}" for d, v in baseline["by_distribution"].items())
            + "."
        )
    else:
        lines.append(f"Baseline: none ({blessing['baseline_note']}).")
    lines.append("")
    return lines


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


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


BLESSING_KEYS = ("mean", "uniform", "ece")


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
        cells = [f"{_percent(by_dist[d]['mean'])} ± {_percent(by_dist[d]['std'])}" for d in dists]
        mean = float(np.mean([by_dist[d]["mean"] for d in dists]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_percent(mean)} |")
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
            f"| {name} | {_percent(metrics['many'])} | {_percent(metrics['medium'])} | "
            f"{_percent(metrics['few'])} | {_percent(metrics['ece'])} | "
            f"{'n/a' if nll is None else f'{nll:.3f}'} |"
        )
    lines += [
        "",
        "Many / medium / few: classes with > 100, 20..100, < 20 training images "
        "(n/a: no such class). F = forward (as skewed as training, ratio 50..2), "
        "U = uniform, B = backward (reversed). Estimated target priors, from the unlabeled "
        "shifted test set: EM (Saerens et al. 2002, Dirichlet-MAP centred on the training "
        "prior) on the model's uncalibrated posteriors; calibrated EM: the same after BCTS "
        "(Alexandari et al. 2020) fitted on the validation split; BBSE (Lipton et al. "
        "2018) with the validation confusion matrix.",
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


# The TFX component: loads the models, the test and val splits, then calls the functions above.


@component
def ShiftEvaluator(
    examples: InputArtifact[Examples],
    report: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    ce_model: InputArtifact[Model] = None,
    ce_model_run: InputArtifact[ModelRun] = None,
    lade_model: InputArtifact[Model] = None,
    lade_model_run: InputArtifact[ModelRun] = None,
    balanced_softmax_model: InputArtifact[Model] = None,
    balanced_softmax_model_run: InputArtifact[ModelRun] = None,
    logit_adjusted_model: InputArtifact[Model] = None,
    logit_adjusted_model_run: InputArtifact[ModelRun] = None,
    baseline_model: InputArtifact[Model] = None,
    push: Parameter[str] = "lade",
    num_seeds: Parameter[int] = 3,
    test_per_class: Parameter[int] = 0,
    margin_mean: Parameter[float] = DEFAULT_MARGINS["mean"],
    margin_uniform: Parameter[float] = DEFAULT_MARGINS["uniform"],
    margin_ece: Parameter[float] = DEFAULT_MARGINS["ece"],
    alpha_source: Parameter[str] = "",
) -> None:
    """Evaluates every trained model under the 11 label shifts and blesses the one to push.

    Args:
        examples: LongTailExampleGen output (train/val/test splits, class_info.json).
        report: receives shift_report.json, shift_report.md and shift_accuracy.png.
        blessing: `blessed` = 1 for the `push` model if it beats chance on the uniform test,
            its serving signatures reproduce the evaluated predictions and prior estimate, and
            it is within the margins of the baseline (`blessing_decision`); else 0. It records
            `current_model_id` (the pushed Model's MLMD id), as LatestBlessedModelStrategy needs.
        <loss>_model / <loss>_model_run: the Trainer outputs of each trained loss (serving
            SavedModel; raw-logits Keras model and train_config.json, whose tau gives the
            logit-adjusted model's inference rule).
        baseline_model: the latest blessed model (a Resolver with LatestBlessedModelStrategy),
            scored through its serving SavedModel on the same test images; None for the first.
            If it is the candidate itself (a rerun of an already blessed model), the candidate
            is not blessed again, so the Pusher does not push the same model twice.
        push: the loss whose model is blessed.
        num_seeds: subsampling seeds per shifted test set (seeds 0..num_seeds-1).
        test_per_class: evaluate on a seeded subset of this many test images per class (the
            protocol's m); 0 keeps the whole test split. Quick runs use it to save inference.
        margin_mean, margin_uniform: largest drop below the baseline allowed on the mean over
            the 11 distributions and on uniform accuracy (fractions: 0.01 is one point).
        margin_ece: largest rise of the uniform-test ECE over the baseline's; 1 or more (the
            default) leaves ECE unchecked.
        alpha_source: where the LADE Trainer's alpha came from (flag, TrainConfig default,
            tuner), written next to the alpha in the report.
    """
    trained = {
        "ce": (ce_model, ce_model_run),
        "lade": (lade_model, lade_model_run),
        "balanced_softmax": (balanced_softmax_model, balanced_softmax_model_run),
        "logit_adjusted": (logit_adjusted_model, logit_adjusted_model_run),
    }
    trained = {loss: pair for loss, pair in trained.items() if pair[1] is not None}
    if not trained:
        raise ValueError(
            "ShiftEvaluator got no trained model: connect at least one <loss>_model_run input"
        )
    if push not in trained:
        raise ValueError(
            f"push = {push!r}: no model trained with that loss; trained: {', '.join(trained)}"
        )
    if num_seeds < 1 or test_per_class < 0:
        raise ValueError(
            f"num_seeds = {num_seeds}, test_per_class = {test_per_class}: expected "
            "num_seeds >= 1 (3 or more for a std) and test_per_class >= 0"
        )
    margins = check_margins({"mean": margin_mean, "uniform": margin_uniform, "ece": margin_ece})
    _run_shift_evaluation(
        examples,
        trained,
        report,
        blessing,
        push,
        num_seeds,
        test_per_class,
        baseline_model=baseline_model,
        margins=margins,
        alpha_source=alpha_source,
    )


def _run_shift_evaluation(
    examples,
    trained,
    report,
    blessing,
    push: str,
    num_seeds: int,
    test_per_class: int,
    *,
    baseline_model=None,
    margins: Mapping[str, float],
    alpha_source: str = "",
) -> None:
    from lade_tf.priors import subsample_by_counts
    from lade_tf.records import read_class_info

    started = time.monotonic()
    class_info = read_class_info(examples.uri)
    images, labels = _load_split(examples, "test", class_info)
    if test_per_class:
        available = np.bincount(labels, minlength=len(class_info["class_names"]))
        kept = subsample_by_counts(labels, np.minimum(available, test_per_class), seed=0)
        images, labels = images[kept], labels[kept]
    has_val = sum(class_info["counts"].get("val", [])) > 0  # pipeline.prepare allows none
    val_images, val_labels = _load_split(examples, "val", class_info) if has_val else (None, None)
    logging.info(
        "ShiftEvaluator: %d test and %d val images %s, models: %s",
        len(labels),
        0 if val_labels is None else len(val_labels),
        images.shape[1:],
        ", ".join(trained),
    )
    models = {
        loss: _load_model_run(model_run, class_info, loss)
        for loss, (_, model_run) in trained.items()
    }
    logits_by_loss = {loss: _predict(loaded.model, images) for loss, loaded in models.items()}
    val_logits_by_loss = (
        None
        if val_images is None
        else {loss: _predict(loaded.model, val_images) for loss, loaded in models.items()}
    )
    counts_by_loss = {loss: loaded.counts for loss, loaded in models.items()}
    tau_by_loss = {loss: loaded.tau for loss, loaded in models.items()}
    logging.info("ShiftEvaluator: logits done (%.0f s)", time.monotonic() - started)
    shift_report = compute_shift_report(
        logits_by_loss,
        labels,
        counts_by_loss,
        seeds=tuple(range(num_seeds)),
        val_logits_by_loss=val_logits_by_loss,
        val_labels=val_labels,
        tau_by_loss=tau_by_loss,
    )
    logging.info(
        "ShiftEvaluator: 11 distributions x %d seeds x %d methods done (%.0f s)",
        num_seeds,
        len(shift_report["methods"]),
        time.monotonic() - started,
    )

    serving = {
        loss: (
            _check_serving_model(
                model, images, logits_by_loss[loss], counts_by_loss[loss], loss, tau_by_loss[loss]
            )
            if model is not None
            else "no serving model input"
        )
        for loss, (model, _) in trained.items()
    }
    push_name = LOSS_DISPLAY_NAMES[push]
    chance = 1.0 / logits_by_loss[push].shape[1]
    candidate_model = trained[push][0]
    baseline, baseline_note = _score_baseline(
        baseline_model, candidate_model, images, labels, num_seeds, class_info
    )
    blessed, checks = blessing_decision(
        method_scores(shift_report, push_name),
        baseline,
        chance=chance,
        margins=margins,
        serving_problem=serving[push],
    )
    same_model = baseline_model is not None and _same_artifact(baseline_model, candidate_model)
    if same_model:
        blessed = False
        reason = (
            f"not blessed again: this {push_name} model (MLMD id {candidate_model.id}) is the "
            "latest blessed model already, pushed by an earlier run; nothing new to push"
        )
    else:
        reason = blessing_reason(blessed, checks, baseline_note)
    shift_report["blessing"] = {
        "model": push_name,
        "loss": push,
        "blessed": blessed,
        "reason": reason,
        "chance": chance,
        "candidate": method_scores(shift_report, push_name),
        "baseline": baseline,
        "baseline_note": baseline_note,
        "margins": dict(margins),
        "checks": checks,
        "alpha": _alpha_record(models, alpha_source),
    }
    notes = [
        f"Test split: {len(labels)} images, {logits_by_loss[push].shape[1]} classes; "
        f"shifted sets subsampled with seeds 0..{num_seeds - 1}.",
        f"Validation split: {len(val_labels)} images (BCTS calibration, BBSE)."
        if val_labels is not None
        else "No validation split: the calibrated-EM and BBSE rows are left out.",
        *[
            f"{LOSS_DISPLAY_NAMES[loss]} model ({loss}"
            + (f", tau {tau_by_loss[loss]:g}" if loss == "logit_adjusted" else "")
            + f"): train counts {list(counts)}; serving signature check: "
            f"{serving[loss] or 'ok'}"
            for loss, counts in counts_by_loss.items()
        ],
        f"Model to push: {push_name} ({push}), {'BLESSED' if blessed else 'NOT blessed'} "
        "(see Blessing).",
    ]
    _write_report_artifact(shift_report, report.uri, notes)
    _write_blessing(
        blessing,
        candidate_model,
        blessed,
        reason,
        baseline_model=baseline_model,
        already_blessed=same_model,
    )
    logging.info(
        "ShiftEvaluator: report in %s; %s %s (%s); %.0f s in all",
        report.uri,
        push,
        "blessed" if blessed else "NOT blessed",
        reason,
        time.monotonic() - started,
    )


def _load_split(examples, split: str, class_info: Mapping[str, Any]):
    """All images [N, H, W, C] float32 and labels [N] int64 of one split of an Examples artifact."""
    from lade_tf.records import parse_dataset, split_file_pattern

    shape = (int(class_info["height"]), int(class_info["width"]), int(class_info["channels"]))
    dataset = parse_dataset(split_file_pattern(examples.uri, split), shape).batch(1024)
    images, labels = [], []
    for batch_images, batch_labels in dataset.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
    if not labels:
        raise ValueError(f"split {split!r} of {examples.uri} has no examples")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _load_model_run(model_run, class_info: Mapping[str, Any], loss: str) -> "_LoadedModel":
    """The raw-logits Keras model, train class counts [C], tau and (LADE) alpha of the Trainer
    output in model_run."""
    import keras
    import tensorflow as tf

    import lade_tf.layers  # noqa: F401  (registers the serialisable custom objects)
    import lade_tf.losses  # noqa: F401
    import lade_tf.models  # noqa: F401
    from lade_tf.records import CLASS_INFO_FILE
    from pipeline.trainer import MODEL_FILE, TRAIN_CONFIG_FILE

    model_path = os.path.join(model_run.uri, MODEL_FILE)
    if not tf.io.gfile.exists(model_path):
        raise FileNotFoundError(
            f"{model_path} not found: expected the {loss} Trainer's raw-logits "
            "model (pipeline.trainer.run_fn writes it)"
        )
    model = keras.models.load_model(model_path, compile=False)
    # The counts the model was trained on (its source prior), as the Trainer recorded them.
    info_path = os.path.join(model_run.uri, CLASS_INFO_FILE)
    if tf.io.gfile.exists(info_path):
        with tf.io.gfile.GFile(info_path) as handle:
            class_info = json.load(handle)
    tau = 1.0
    config_path = os.path.join(model_run.uri, TRAIN_CONFIG_FILE)
    alpha = None
    if loss == "lade" and tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as handle:
            alpha = float(json.load(handle)["alpha"])
    if loss == "logit_adjusted":
        if not tf.io.gfile.exists(config_path):
            raise FileNotFoundError(
                f"{config_path} not found: the logit-adjusted model's tau "
                "(its inference rule) is read from it"
            )
        with tf.io.gfile.GFile(config_path) as handle:
            tau = float(json.load(handle)["tau"])
    return _LoadedModel(model, [int(n) for n in class_info["counts"]["train"]], tau, alpha)


class _LoadedModel(NamedTuple):
    """A Trainer's raw-logits model with what its inference rule needs, and LADE's alpha."""

    model: Any
    counts: list[int]
    tau: float
    alpha: float | None


def _alpha_record(models: Mapping[str, "_LoadedModel"], source: str) -> dict[str, Any] | None:
    """{"value", "source"} of the LADE model's alpha, None without a LADE model."""
    if "lade" not in models or models["lade"].alpha is None:
        return None
    return {"value": models["lade"].alpha, "source": source or "not recorded"}


def _same_artifact(first, second) -> bool:
    """Whether two artifacts are the same MLMD artifact (by id, else by URI)."""
    if first is None or second is None:
        return False
    if first.id and second.id:
        return first.id == second.id
    return first.uri.rstrip("/") == second.uri.rstrip("/")


def baseline_raw_logits(serving_dir: str, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Raw logits [N, C] float64 of a serving SavedModel (`lade_tf.export`), and its metadata.

    The served `predict_uniform` logits are f + b + log(1/C) (b: the model's inference-rule
    offset, `lade_tf.layers.correction_offset`, from the metadata's loss, counts and tau), so
    f is recovered exactly, whatever loss the baseline was trained with.

    Raises:
        FileNotFoundError / ValueError: if the directory is not such a SavedModel.
    """
    import tensorflow as tf

    from lade_tf.export import METADATA_ASSET
    from lade_tf.layers import correction_offset

    with tf.io.gfile.GFile(os.path.join(serving_dir, "assets", METADATA_ASSET)) as handle:
        metadata = json.load(handle)
    loaded = tf.saved_model.load(serving_dir)
    predict = loaded.signatures["predict_uniform"]
    served = np.concatenate(
        [
            predict(images=tf.constant(images[start : start + 1024], tf.float32))["logits"].numpy()
            for start in range(0, len(images), 1024)
        ]
    ).astype(np.float64)
    counts = metadata["class_counts"]
    offset = correction_offset(counts, metadata["train_loss"], float(metadata.get("tau") or 1.0))
    return served - offset[None, :] + math.log(len(counts)), metadata


def _score_baseline(
    baseline_model, candidate_model, images, labels, num_seeds: int, class_info
) -> tuple[dict[str, Any] | None, str]:
    """(scores of the baseline's known-prior row on these test images, a note on it).

    None with the note when there is no baseline, it is the candidate itself, or it cannot be
    compared (other classes or image size, or its SavedModel does not load).
    """
    from lade_tf.priors import SHIFT_NAMES
    from lade_tf.shift_eval import evaluate_under_shift, uniform_summary

    if baseline_model is None:
        return None, "no blessed model yet: the first is blessed if it beats chance"
    if _same_artifact(baseline_model, candidate_model):
        return None, "the baseline is this model"
    serving_dir = path_utils.serving_model_path(baseline_model.uri)
    try:
        logits, metadata = baseline_raw_logits(serving_dir, images)
    except Exception as error:  # an unreadable baseline is reported, the candidate still judged
        return None, f"baseline {serving_dir} not scored: {type(error).__name__}: {error}"
    shape = [int(class_info[k]) for k in ("height", "width", "channels")]
    if list(metadata.get("input_shape", [])) != shape or logits.shape[1] != len(
        class_info["class_names"]
    ):
        return None, (
            f"baseline {serving_dir} not comparable: input {metadata.get('input_shape')} and "
            f"{logits.shape[1]} classes vs {shape} and {len(class_info['class_names'])}"
        )
    loss = metadata["train_loss"]
    tau = float(metadata.get("tau") or 1.0)
    counts = metadata["class_counts"]
    by_dist = evaluate_under_shift(
        logits, labels, counts, loss, seeds=tuple(range(num_seeds)), tau=tau
    )
    uniform = uniform_summary(logits, labels, counts, loss, tau=tau)
    means = {name: float(by_dist[name]["mean"]) for name in SHIFT_NAMES}
    return {
        "model_id": int(baseline_model.id or 0),
        "uri": baseline_model.uri,
        "method": LOSS_DISPLAY_NAMES.get(loss, loss),
        "loss": loss,
        "alpha": metadata.get("alpha"),
        "mean": float(np.mean(list(means.values()))),
        "uniform": means["U"],
        "ece": float(uniform["ece"]),
        "by_distribution": means,
    }, f"baseline: the latest blessed model, MLMD id {baseline_model.id}"


def _predict(model, images: np.ndarray) -> np.ndarray:
    """Raw logits [N, C] float64 of a Keras model on images [N, H, W, C]."""
    return np.asarray(model.predict(images, batch_size=1024, verbose=0), dtype=np.float64)


def _check_serving_model(
    model_artifact,
    images: np.ndarray,
    logits: np.ndarray,
    counts: Sequence[int],
    loss: str,
    tau: float = 1.0,
) -> str:
    """'' if the serving SavedModel answers a [batch, C] uniform prior like the evaluated rule and
    its estimate_prior signature gives the estimate its recorded estimator computes, else what
    went wrong."""
    import tensorflow as tf

    from lade_tf.export import METADATA_ASSET
    from lade_tf.layers import adjust_logits_numpy
    from lade_tf.prior_estimation import TargetPriorEstimator

    serving_dir = path_utils.serving_model_path(model_artifact.uri)
    batch = images[:SERVING_CHECK_IMAGES]
    num_classes = logits.shape[1]
    prior = np.full((len(batch), num_classes), 1.0 / num_classes, dtype=np.float32)
    try:
        loaded = tf.saved_model.load(serving_dir)
        outputs = loaded.signatures["serving_default"](
            images=tf.constant(batch, tf.float32), target_prior=tf.constant(prior)
        )
        estimated = loaded.signatures["estimate_prior"](images=tf.constant(batch, tf.float32))
        # tf.io.gfile: the artifact may live on gs:// (Kubeflow / Vertex).
        with tf.io.gfile.GFile(os.path.join(serving_dir, "assets", METADATA_ASSET)) as handle:
            estimator = TargetPriorEstimator.from_config(json.load(handle)["prior_estimation"])
    except Exception as error:  # any load or call failure means the model must not be pushed
        return f"serving signatures failed on {serving_dir}: {type(error).__name__}: {error}"
    expected = adjust_logits_numpy(logits[: len(batch)], counts, loss, prior, tau=tau)
    served = outputs["logits"].numpy().astype(np.float64)
    gap = float(np.max(np.abs(served - expected)))
    if not gap < 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        return f"served logits differ from the evaluated ones by up to {gap:.3g}"
    if not np.array_equal(outputs["class_ids"].numpy(), np.argmax(served, axis=1)):
        return "served class_ids are not the argmax of the served logits"
    if (estimator.train_loss, estimator.tau) != (loss, tau):
        return (
            f"estimate_prior was exported for ({estimator.train_loss}, tau "
            f"{estimator.tau:g}), the model is ({loss}, tau {tau:g})"
        )
    served_prior = estimated["target_prior"].numpy()[0].astype(np.float64)
    prior_gap = float(np.abs(served_prior - estimator.estimate(logits[: len(batch)])).max())
    if not prior_gap < 1e-4:
        return f"served estimate_prior differs from the library estimate by up to {prior_gap:.3g}"
    return ""


def _write_report_artifact(shift_report: Mapping[str, Any], uri: str, notes: Sequence[str]) -> None:
    """write_report into the artifact URI, through a local folder: the URI may be gs://."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as local:
        paths = write_report(shift_report, local, notes=notes)
        tf.io.gfile.makedirs(uri)
        for name, path in paths.items():
            tf.io.gfile.copy(path, os.path.join(uri, name), overwrite=True)


def _write_blessing(
    blessing,
    model_artifact,
    blessed: bool,
    reason: str,
    *,
    baseline_model=None,
    already_blessed: bool = False,
) -> None:
    """Marks the ModelBlessing the way TFX's Evaluator does, so the stock Pusher reads it and
    LatestBlessedModelStrategy finds the model (`blessed`, `current_model_id`)."""
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_string_custom_property("reason", reason)
    blessing.set_int_custom_property("already_blessed", int(already_blessed))
    if model_artifact is not None:
        blessing.set_string_custom_property("current_model", model_artifact.uri)
        blessing.set_int_custom_property("current_model_id", model_artifact.id or 0)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id or 0)
    import tensorflow as tf  # tf.io.gfile: artifact URIs may be gs:// (Kubeflow / Vertex)

    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(
        os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w"
    ):
        pass
