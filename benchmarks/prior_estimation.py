"""Unknown target prior: how close each estimate of p_t comes to knowing it, on the 11 shifts.

For each trained model (CE -> PC Softmax, LADE) the benchmark scores the shift protocol
(`pipeline.shift_scoring.compute_shift_report`, i.e. `lade_tf.shift_eval`, 3 subsampling
seeds) with the known target prior and with the prior estimated from the unlabeled shifted test
set by EM on the uncalibrated posteriors, by EM after the default calibration fitted on the
validation split (Dirichlet calibration, Dirichlet-MAP EM: what the served `estimate_prior`
runs), and by BBSE, against the targets (LADE + calibrated EM within 2 points of LADE with the
known prior on every distribution, PC Softmax + calibrated EM within 3, and never more than 0.5
points below plain EM). The estimator study then measures each step that closes the gap: every
calibration (none, temperature, BCTS, Dirichlet) fitted on validation splits of 20, 50 and all
images per class (three seeded draws of the smaller ones).

Models: by default the default `pipeline/run.py` models (the Trainer's own code,
`pipeline.trainer.train_and_save`, with the TrainConfig defaults on the default data, Fashion-
MNIST-LT IR 100 with `PrepareConfig`'s validation split), trained into the work directory,
resumed from their checkpoints and reused when finished; their validation and test logits are
kept under `benchmarks/results/prior_estimation/logits/` so a rerun needs no training. Or saved
logits (`--logits LOSS=FILE.npz`, e.g. what `benchmarks/accuracy.py` keeps for the CIFAR-10-LT
models) with a `--name` for the result files.

    .venv/bin/python benchmarks/prior_estimation.py [--losses ce,lade] [--work-dir DIR]
    .venv/bin/python benchmarks/prior_estimation.py --name cifar10_lt_ir100 \\
        --logits ce=benchmarks/results/accuracy/logits/cpu/cifar10_lt_ir100-ce-s0.npz \\
        --logits lade=benchmarks/results/accuracy/logits/cpu/cifar10_lt_ir100-lade_class-s0.npz

Writes `<name>.json`, `<name>.md` and `<name>.png` under benchmarks/results/prior_estimation/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import harness
import numpy as np
from prior_estimation_report import gap_table, write_results

RESULTS = harness.RESULTS_DIR / "prior_estimation"
DEFAULT_NAME = "fmnist_lt_ir100"
CALIBRATIONS_STUDIED = ("none", "temperature", "bcts", "dirichlet")
STUDY_VAL_PER_CLASS = (20, 50, 100)
STUDY_DRAWS = (0, 1, 2)
SEEDS = (0, 1, 2)

log = harness.progress_logger("prior_estimation")


def default_examples(work_dir: Path, val_per_class: int | None) -> Path:
    """The default run's data (Fashion-MNIST-LT IR 100, `PrepareConfig()`, or another validation
    split size), prepared once."""
    from pipeline.prepare import prepare_examples
    from pipeline.split_plan import PrepareConfig

    config = PrepareConfig()
    if val_per_class is not None:
        config = PrepareConfig(val_per_class=val_per_class)
    output = work_dir / "data" / f"fashion_mnist_lt_ir100_val{config.val_per_class}"
    if not (output / "class_info.json").exists():
        log(f"preparing Fashion-MNIST-LT IR 100 into {output}")
        prepare_examples(
            "fashion_mnist",
            str(output),
            config,
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


def trained_output(loss: str, examples: Path, work_dir: Path, seed: int) -> Path:
    """Trains `loss` with the default TrainConfig (and `seed`) like the pipeline's Trainer
    (resuming, or reusing a finished identical run on the same data) and returns its output
    directory."""
    import json
    import shutil

    from lade_tf.train_config import TrainConfig
    from pipeline.trainer import MODEL_FILE, TRAIN_CONFIG_FILE, train_and_save

    config = TrainConfig(loss=loss, seed=seed)
    output = work_dir / "models" / examples.name / f"{loss}-s{seed}"
    run_dir = output / "model_run"
    if (run_dir / MODEL_FILE).exists() and json.loads(
        (run_dir / TRAIN_CONFIG_FILE).read_text()
    ) == config.to_dict():
        log(f"{loss}: reusing the finished run in {output}")
        return output
    for stale in ("serving_model", "model_run"):
        shutil.rmtree(output / stale, ignore_errors=True)  # the export refuses a full directory
    output.mkdir(parents=True, exist_ok=True)
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


def logits_of_trained_model(
    loss: str, examples: Path, work_dir: Path, name: str, seed: int
) -> tuple[dict[str, Any], Path]:
    """Trains (or reuses) the default-run model of `loss`, writes its logits file under RESULTS
    and returns (the logits, its serving SavedModel directory)."""
    import json

    import keras

    import lade_tf.layers  # noqa: F401  (registers the serialisable custom objects)
    import lade_tf.losses  # noqa: F401
    import lade_tf.models  # noqa: F401
    from lade_tf.records import read_class_info
    from pipeline.trainer import CLASS_INFO_FILE, MODEL_FILE

    output = trained_output(loss, examples, work_dir, seed)
    run_dir = output / "model_run"
    model = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
    info = read_class_info(str(examples))
    counts = [
        int(n) for n in json.loads((run_dir / CLASS_INFO_FILE).read_text())["counts"]["train"]
    ]
    arrays, images = {}, {}
    for split in ("val", "test"):
        images[split], labels = split_arrays(examples, split, info)
        arrays[f"{split}_logits"] = model.predict(images[split], batch_size=1000, verbose=0)
        arrays[f"{split}_labels"] = labels
    path = RESULTS / "logits" / f"{name}-{loss}.npz"
    val_per_class = int(info["counts"]["val"][0])
    harness.write_logits(
        path,
        counts=counts,
        val_per_class=val_per_class,
        last_layer=harness.last_layer_arrays(model, images["val"], images["test"]),
        **arrays,
    )
    log(f"{loss}: logits kept in {path}")
    return harness.read_logits(path), output / "serving_model"


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


def _validation_draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of a seeded balanced subset of `per_class` validation images per class."""
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                for c in range(int(labels.max()) + 1)
            ]
        )
    )


def estimator_study(run: Mapping[str, Any], loss: str) -> list[dict[str, Any]]:
    """Each calibration on each validation-split size: the worst and mean gap to the known prior
    over the 11 distributions, the worst deficit to plain EM, and the mean L1 error of the
    estimate (the worst over the draws of a smaller split)."""
    from lade_tf.shift_eval import evaluate_under_shift

    logits, labels, counts = run["test_logits"], run["test_labels"], run["counts"]
    known = evaluate_under_shift(logits, labels, counts, loss, seeds=SEEDS)
    plain = evaluate_under_shift(
        logits, labels, counts, loss, seeds=SEEDS, estimate="em", calibration="none"
    )
    available = int(np.bincount(run["val_labels"]).min())
    sizes = [(n, STUDY_DRAWS) for n in STUDY_VAL_PER_CLASS if n < available]
    sizes.append((available, (None,)))
    rows = []
    for calibration in CALIBRATIONS_STUDIED:
        for per_class, draws in sizes:
            if calibration == "none" and per_class != available:
                continue  # plain EM reads no validation split
            worst = deficit = -np.inf
            mean_gaps, l1 = [], []
            for draw in draws:
                rows_kept = (
                    np.arange(len(run["val_labels"]))
                    if draw is None
                    else _validation_draw(run["val_labels"], per_class, draw)
                )
                estimated = evaluate_under_shift(
                    logits,
                    labels,
                    counts,
                    loss,
                    seeds=SEEDS,
                    estimate="em",
                    calibration=calibration,
                    val_logits=run["val_logits"][rows_kept],
                    val_labels=run["val_labels"][rows_kept],
                )
                gaps = [100 * (known[d]["mean"] - estimated[d]["mean"]) for d in known]
                worst = max(worst, max(gaps))
                deficit = max(
                    deficit, max(100 * (plain[d]["mean"] - estimated[d]["mean"]) for d in known)
                )
                mean_gaps.append(np.mean(gaps))
                l1.append(np.mean([estimated[d]["prior_l1"] for d in known]))
            rows.append(
                {
                    "calibration": calibration,
                    "val_per_class": per_class,
                    "draws": len(draws),
                    "worst_gap": float(worst),
                    "mean_gap": float(np.mean(mean_gaps)),
                    "worst_deficit_to_plain_em": float(deficit),
                    "mean_l1": float(np.mean(l1)),
                }
            )
            log(
                f"{loss}: {calibration} on {per_class} val/class: worst gap {worst:.2f}, "
                f"deficit to plain EM {deficit:.2f}"
            )
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/prior_estimation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--losses", default="ce,lade", help="losses of the default-run models (default ce,lade)"
    )
    parser.add_argument(
        "--logits",
        action="append",
        default=[],
        metavar="LOSS=FILE",
        help="score these saved logits (benchmarks/harness.write_logits format) instead of "
        "training; repeatable",
    )
    parser.add_argument(
        "--name",
        default=None,
        help=f"stem of the result files (default {DEFAULT_NAME}, with -val<N> and -s<seed> "
        "when those differ from the defaults)",
    )
    parser.add_argument(
        "--val-per-class",
        type=int,
        default=None,
        help="validation images per class of the default-run data (default: PrepareConfig's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/lade-prior-estimation"),
        help="prepared data, trained models and checkpoints (reused)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the tables and writes JSON, Markdown and PNG."""
    from lade_tf.process_settings import configure_tensorflow

    args = build_parser().parse_args(argv)
    if args.name is None:
        args.name = DEFAULT_NAME + "".join(
            suffix
            for suffix, given in (
                (f"-val{args.val_per_class}", args.val_per_class is not None),
                (f"-s{args.seed}", args.seed != 0),
            )
            if given
        )
    configure_tensorflow()
    from pipeline.shift_scoring import compute_shift_report

    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    served_gaps: dict[str, float] = {}
    source = ""
    if args.logits:
        for item in args.logits:
            loss, _, path = item.partition("=")
            if not path or not Path(path).exists():
                raise SystemExit(f"error: --logits {item!r}: expected LOSS=FILE of an .npz")
            runs[loss] = harness.read_logits(Path(path))
        source = ", ".join(args.logits)
    else:
        from lade_tf.priors import shifted_test_counts, subsample_by_counts
        from lade_tf.records import read_class_info

        examples = default_examples(args.work_dir, args.val_per_class)
        test_images, test_labels = split_arrays(examples, "test", read_class_info(str(examples)))
        for loss in [name.strip() for name in args.losses.split(",") if name.strip()]:
            runs[loss], serving = logits_of_trained_model(
                loss, examples, args.work_dir, args.name, args.seed
            )
            kept = subsample_by_counts(
                test_labels,
                shifted_test_counts(runs[loss]["counts"], 1000, "B50"),
                seed=0,
            )
            served_gaps[loss] = served_estimate_gap(
                serving, test_images[kept], runs[loss]["test_logits"][kept]
            )
        source = f"default-run models trained on {examples}"
    log("scoring 11 distributions x 3 seeds")
    first = next(iter(runs.values()))
    report = compute_shift_report(
        {loss: run["test_logits"] for loss, run in runs.items()},
        first["test_labels"],
        {loss: run["counts"] for loss, run in runs.items()},
        seeds=SEEDS,
        val_logits_by_loss={loss: run["val_logits"] for loss, run in runs.items()},
        val_labels=first["val_labels"],
    )
    study = {loss: estimator_study(run, loss) for loss, run in runs.items()}
    document = {
        "name": args.name,
        "source": source,
        "report": report,
        "gaps": gap_table(report, list(runs)),
        "study": study,
        "served_estimate_gaps": served_gaps,
        "val_per_class": {loss: run["val_per_class"] for loss, run in runs.items()},
        "train_counts": {loss: run["counts"] for loss, run in runs.items()},
        "seeds": list(SEEDS),
        "machine": harness.machine_description(),
        "seconds": time.perf_counter() - started,
    }
    print(write_results(document, args.output / args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
