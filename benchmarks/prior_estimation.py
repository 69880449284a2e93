"""Unknown target prior: known-prior vs EM vs calibrated EM vs BBSE accuracy on the 11 shifts.

For each trained model (CE -> PC Softmax, LADE by default) the benchmark scores the shift
protocol (`pipeline.shift_evaluator.compute_shift_report`, i.e. `lade_tf.shift_eval`, 3
subsampling seeds) with the known target prior and with the prior estimated from the unlabeled
shifted test set by EM on the uncalibrated posteriors, by EM after BCTS fitted on the validation
split (the served default, Dirichlet-MAP with the default strength), and by BBSE; it reports
each estimate's L1 / Jensen-Shannon error, the gap to the known prior per distribution against
the targets (LADE + calibrated EM within 2 points of LADE with the known prior on all 11
distributions, PC Softmax + calibrated EM within 3), and checks that each served
`estimate_prior` signature gives the library's estimate.

Models: trained here on the examples with `pipeline.trainer.train_and_save` (the Trainer's own
code: same TrainConfig defaults as the default `pipeline/run.py` run, 6 epochs; every training
flag of `pipeline.flags` applies), resumed from their checkpoints and reused when finished, or
given with `--model LOSS=DIR` (a `python -m pipeline.trainer` output directory, or a Trainer's
model_run directory). Examples: `--examples-dir` (`python -m pipeline.prepare` output, with a
val split), else Fashion-MNIST-LT IR 100 prepared once into the work directory.

    .venv/bin/python benchmarks/prior_estimation.py [--examples-dir DIR] [--losses ce,lade]
        [--model lade=OUT_DIR] [--work-dir DIR] [--output benchmarks/results] [--epochs 6 ...]

Writes `prior_estimation.json`, `prior_estimation.md` and `prior_estimation.png` to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

#: Largest allowed drop (accuracy points) from the known prior to calibrated EM, per model.
TARGET_GAPS = {"lade": 2.0, "ce": 3.0}
ESTIMATORS = ("EM", "calibrated EM", "BBSE")
RESULT_NAME = "prior_estimation"
SEEDS = (0, 1, 2)


def log(message: str) -> None:
    """One progress line on stderr with the wall-clock time."""
    print(f"[prior_estimation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_examples(work_dir: Path) -> Path:
    """Fashion-MNIST-LT IR 100 (20 val images per class), prepared once under work_dir."""
    from pipeline.prepare import prepare_examples
    from pipeline.split_plan import PrepareConfig

    output = work_dir / "data" / "fashion_mnist_lt_ir100"
    if not (output / "class_info.json").exists():
        log(f"preparing Fashion-MNIST-LT IR 100 into {output}")
        prepare_examples(
            "fashion_mnist",
            str(output),
            PrepareConfig(imbalance_ratio=100),
            pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
        )
    return output


def split_arrays(examples: Path, split: str, info: Mapping[str, Any]):
    """(images float32 [N, H, W, C], labels int64 [N]) of one split."""
    from lade_tf.records import parse_dataset, split_file_pattern

    shape = (int(info["height"]), int(info["width"]), int(info["channels"]))
    images, labels = [], []
    for batch, batch_labels in (
        parse_dataset(split_file_pattern(str(examples), split), shape)
        .batch(2048)
        .as_numpy_iterator()
    ):
        images.append(batch)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def trained_output(loss: str, examples: Path, work_dir: Path, args: argparse.Namespace) -> Path:
    """Trains `loss` like the pipeline's Trainer (resuming, or reusing a finished identical run)
    and returns its output directory (serving_model/, model_run/, checkpoints/)."""
    from pipeline.flags import training_config_from_args
    from pipeline.trainer import MODEL_FILE, TRAIN_CONFIG_FILE, train_and_save

    config = training_config_from_args(args, loss)
    output = work_dir / "models" / loss
    run_dir = output / "model_run"
    if (run_dir / MODEL_FILE).exists() and json.loads(
        (run_dir / TRAIN_CONFIG_FILE).read_text()
    ) == config.to_dict():
        log(f"{loss}: reusing the finished run in {output}")
        return output
    for stale in ("serving_model", "model_run"):
        shutil.rmtree(output / stale, ignore_errors=True)  # the export refuses a full directory
    if json.dumps(config.to_dict()) != _read_text(output / "config.json"):
        shutil.rmtree(output / "checkpoints", ignore_errors=True)  # another config: start over
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(json.dumps(config.to_dict()))
    log(f"{loss}: training {config.epochs} epochs ({config.arch}, batch {config.batch_size})")
    started = time.perf_counter()
    train_and_save(
        config,
        [os.path.join(examples, "Split-train", "*")],
        [os.path.join(examples, "Split-val", "*")],
        serving_model_dir=str(output / "serving_model"),
        model_run_dir=str(run_dir),
        checkpoint_dir=str(output / "checkpoints"),
    )
    log(f"{loss}: trained and exported in {time.perf_counter() - started:.0f} s")
    return output


def _read_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def load_run(output: Path, loss: str):
    """(raw-logits model, train counts, tau, serving SavedModel dir or None) of a trainer output
    directory or of a Trainer model_run directory."""
    import keras

    import lade_tf.layers  # noqa: F401  (registers the serialisable custom objects)
    import lade_tf.losses  # noqa: F401
    import lade_tf.models  # noqa: F401
    from lade_tf.training import TrainConfig
    from pipeline.trainer import CLASS_INFO_FILE, MODEL_FILE, TRAIN_CONFIG_FILE, model_tau

    run_dir = output / "model_run" if (output / "model_run").is_dir() else output
    if not (run_dir / MODEL_FILE).exists():
        raise SystemExit(
            f"error: {run_dir / MODEL_FILE} not found: expected a pipeline.trainer "
            "output directory or a Trainer model_run directory"
        )
    config = TrainConfig.from_dict(json.loads((run_dir / TRAIN_CONFIG_FILE).read_text()))
    if config.loss != loss:
        raise SystemExit(
            f"error: {run_dir} was trained with loss {config.loss!r}, given as {loss!r}"
        )
    counts = [
        int(n) for n in json.loads((run_dir / CLASS_INFO_FILE).read_text())["counts"]["train"]
    ]
    serving = output / "serving_model"
    return (
        keras.models.load_model(run_dir / MODEL_FILE, compile=False),
        counts,
        model_tau(config),
        serving if serving.is_dir() else None,
    )


def served_estimate_gap(serving_dir: Path, images: np.ndarray, logits: np.ndarray) -> float:
    """Largest difference between the served estimate_prior and the library's estimate (from the
    estimator recorded in the model's metadata) on one batch."""
    import tensorflow as tf

    from lade_tf.export import read_serving_metadata
    from lade_tf.prior_estimation import TargetPriorEstimator

    loaded = tf.saved_model.load(str(serving_dir))
    served = loaded.signatures["estimate_prior"](images=tf.constant(images))["target_prior"]
    estimator = TargetPriorEstimator.from_config(
        read_serving_metadata(serving_dir)["prior_estimation"]
    )
    return float(np.abs(served.numpy()[0] - estimator.estimate(logits)).max())


def gap_table(report: Mapping[str, Any], losses: Sequence[str]) -> dict[str, Any]:
    """Known-prior accuracy minus each estimator's, in points, per model and distribution, and
    whether calibrated EM meets its target."""
    from pipeline.shift_evaluator import LOSS_DISPLAY_NAMES

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
        calibrated = by_estimator.get("calibrated EM", {})
        target = TARGET_GAPS.get(loss)
        worst = max(calibrated.values()) if calibrated else None
        gaps[model] = {
            "gaps": by_estimator,
            "target": target,
            "worst_calibrated_gap": worst,
            "target_met": None if target is None or worst is None else worst <= target,
        }
    return gaps


def gap_markdown(gaps: Mapping[str, Any], distributions: Sequence[str]) -> str:
    """The gap table as Markdown (points below the known-prior accuracy; negative = above)."""
    lines = [
        "## Gap to the known prior (accuracy points, known minus estimated)",
        "",
        "| Model + estimator | " + " | ".join(distributions) + " | Worst | Target |",
        "|---|" + "---:|" * (len(distributions) + 2),
    ]
    for model, entry in gaps.items():
        for estimator, by_dist in entry["gaps"].items():
            cells = [f"{by_dist[d]:+.1f}" for d in distributions]
            target = ""
            if estimator == "calibrated EM" and entry["target"] is not None:
                target = f"<= {entry['target']:g}: {'met' if entry['target_met'] else 'MISSED'}"
            lines.append(
                f"| {model} + {estimator} | "
                + " | ".join(cells)
                + f" | {max(by_dist.values()):+.1f} | {target} |"
            )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from pipeline.flags import add_training_flags

    parser = argparse.ArgumentParser(
        prog="benchmarks/prior_estimation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--examples-dir",
        type=Path,
        default=None,
        help="pipeline.prepare output with train, val and test splits (default: "
        "Fashion-MNIST-LT IR 100 prepared into the work directory)",
    )
    parser.add_argument(
        "--losses", default="ce,lade", help="comma-separated losses to evaluate (default ce,lade)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="LOSS=DIR",
        help="use this trained model for LOSS instead of training one",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/lade-prior-estimation"),
        help="prepared data, trained models and checkpoints (reused)",
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    add_training_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the accuracy, error and gap tables and writes JSON, Markdown, PNG."""
    from pipeline.flags import PIPELINE_DEFAULTS, parse_args
    from pipeline.shift_evaluator import (
        compute_shift_report,
        json_safe,
        plot_report,
        report_markdown,
    )

    args = parse_args(build_parser(), argv, unset_defaults=PIPELINE_DEFAULTS)
    losses = [loss.strip() for loss in args.losses.split(",") if loss.strip()]
    given = {}
    for item in args.model:
        loss, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"error: --model {item!r}: expected LOSS=DIR")
        given[loss] = Path(path)
    started = time.perf_counter()
    examples = args.examples_dir or default_examples(args.work_dir)
    from lade_tf.records import read_class_info

    info = read_class_info(str(examples))
    if sum(info["counts"].get("val", [])) == 0:
        raise SystemExit(
            f"error: {examples} has no val split: calibration and BBSE are fitted "
            "on it (prepare with --val-per-class > 0)"
        )
    test_images, test_labels = split_arrays(examples, "test", info)
    val_images, val_labels = split_arrays(examples, "val", info)
    logits, val_logits, counts, taus, served_gaps = {}, {}, {}, {}, {}
    for loss in losses:
        output = given.get(loss) or trained_output(loss, examples, args.work_dir, args)
        model, counts[loss], taus[loss], serving = load_run(output, loss)
        logits[loss] = np.asarray(
            model.predict(test_images, batch_size=1000, verbose=0), np.float64
        )
        val_logits[loss] = np.asarray(
            model.predict(val_images, batch_size=1000, verbose=0), np.float64
        )
        if serving is not None:
            from lade_tf.priors import shifted_test_counts, subsample_by_counts

            kept = subsample_by_counts(
                test_labels,
                shifted_test_counts(counts[loss], int(np.bincount(test_labels).min()), "B50"),
                seed=0,
            )
            served_gaps[loss] = served_estimate_gap(serving, test_images[kept], logits[loss][kept])
    log("scoring 11 distributions x 3 seeds")
    scoring = time.perf_counter()
    report = compute_shift_report(
        logits,
        test_labels,
        counts,
        seeds=SEEDS,
        val_logits_by_loss=val_logits,
        val_labels=val_labels,
        tau_by_loss=taus,
    )
    scoring = time.perf_counter() - scoring
    gaps = gap_table(report, losses)
    notes = [
        f"Examples: {examples} (train counts {counts[losses[0]]}, "
        f"{len(val_labels)} val, {len(test_labels)} test images).",
        f"Scoring took {scoring:.0f} s; {time.perf_counter() - started:.0f} s in all.",
        *[
            f"Served estimate_prior vs library on one B50 batch ({loss}): max difference {gap:.2g}."
            for loss, gap in served_gaps.items()
        ],
        *[
            f"{model}: calibrated EM worst gap {entry['worst_calibrated_gap']:+.1f} points "
            f"(target <= {entry['target']:g}: {'met' if entry['target_met'] else 'MISSED'})."
            for model, entry in gaps.items()
            if entry["target"] is not None
        ],
    ]
    markdown = report_markdown(
        report, title="Unknown target prior: estimation vs known prior", notes=notes
    )
    markdown += "\n" + gap_markdown(gaps, report["distributions"])
    args.output.mkdir(parents=True, exist_ok=True)
    document = {
        "report": report,
        "gaps": gaps,
        "served_estimate_gaps": served_gaps,
        "examples": str(examples),
        "losses": losses,
        "seeds": list(SEEDS),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": time.perf_counter() - started,
    }
    paths = {kind: args.output / f"{RESULT_NAME}.{kind}" for kind in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(json_safe(document), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(markdown)
    plot_report(report, paths["png"])
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
