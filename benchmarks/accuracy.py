"""Accuracy under label shift on CIFAR-10-LT and Fashion-MNIST-LT, every method, and Figure 2.

Reproduces the paper's comparison with this library: each training run is one loss on one
long-tailed training split; every method is a training run plus an inference rule
(`accuracy_plan.METHODS`):

    softmax            CE model, logits as they are
    pc_softmax         CE model, f - log p_s + log p_t (known target prior)
    posthoc_la         CE model, f - tau log p_s with tau = 1 (post-hoc logit adjustment, Menon et
                       al. 2021: targets the uniform prior whatever the test prior is)
    balanced_softmax   Balanced Softmax (LADE-CE) model, f + log p_t; at tau = 1 the logit-adjusted
                       loss of Menon et al. is the same loss, CE(f + log p_s), so this one
                       training is also the logit-adjusted-loss row (see `TRAININGS`)
    lade_sample        LADE, importance="sample" (the paper's equation), f + log p_t
    lade_class         LADE, importance="class" (the authors' code), f + log p_t

Each method is scored on the 11 shifted test distributions (`lade_tf.shift_eval`, 3 subsampling
seeds), and on the uniform test set for many/medium/few, ECE and NLL. The Figure 2 check trains
LADE for several alpha and records the mean positive-sample logit f(x)[y] and negative-sample logit
f(x)[c != y] on the test set, which the paper shows moving toward log C as alpha grows.

Data come from `pipeline.prepare` (exp profile; `--val-per-class` balanced validation images per
class taken first, by default `PrepareConfig`'s, so CIFAR-10-LT's n_max is 5,000 minus that):
CIFAR-10 from the shared JPEG tarball, Fashion-MNIST from Debian's files. Recipe (all budgets but
gpu): SGD momentum 0.9, weight decay 5e-4 (coupled), batch 128, lr 0.1, 5-epoch linear warm-up
then cosine to 0, crop + flip augmentation; ResNet-32 in the LADE authors' (BBN) form for CIFAR,
the small CNN for Fashion-MNIST.

Budgets: `smoke` (CI: two epochs on a 512-image subset of CIFAR-10-LT IR 100, every method and
the Figure 2 alphas, scored on the first 2,000 test images), `cpu` (30 epochs: every method on
CIFAR-10-LT IR 100; 10 epochs: Softmax and LADE with 3 training seeds on Fashion-MNIST-LT;
Figure 2 on Fashion-MNIST-LT with 5 epochs; warm-up at most a quarter of a run) and `gpu` (the
authors' 200-epoch step schedule, lr 0.2, batch 256, every method on CIFAR-10-LT IR 100/50/10).

Every training run is a part: its scores are written to `<output>/parts/<budget>/` as soon as it
finishes, and its model's validation and test logits to `<output>/logits/<budget>/<part>.npz`
(Figure 2 runs: `.../logits/<budget>/figure2/<part>.npz`; see `save_logits`), so that scoring
and the label-shift estimation benchmarks rerun from them without training. An interrupted
training resumes from its last epoch checkpoint and finished parts are skipped, so a long budget
can run in pieces (`--datasets`, `--methods`, `--seeds`); each run merges all parts of its budget
into `accuracy_<budget>.{json,md,png}` and `figure2_<budget>.{json,md,png}`
(`accuracy_report.py`). The parts of one output folder share one `--val-per-class`: a run that
would mix two refuses to start.

    .venv/bin/python benchmarks/accuracy.py --budget smoke
    .venv/bin/python benchmarks/accuracy.py --budget cpu [--datasets cifar10_lt_ir100]
        [--methods softmax,lade_class] [--seeds 0] [--skip-figure2] [--only-merge] [--rescore]
        [--val-per-class N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from accuracy_plan import (
    BUDGETS,
    DATASETS,
    EVAL_SEEDS,
    METHODS,
    TRAININGS,
    Budget,
    Dataset,
    Method,
    default_val_per_class,
    figure2_alphas,
)
from accuracy_report import check_val_per_class, write_reports
from harness import (
    CIFAR10_TARBALL,
    LOGIT_ARRAYS,
    RESULTS_DIR,
    extracted_cifar10,
    last_layer_arrays,
    machine_description,
    progress_logger,
    read_logits,
    write_json,
    write_logits,
)

from lade_tf.process_settings import configure_tensorflow

DEFAULT_OUTPUT = RESULTS_DIR / "accuracy"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "lade-tf-bench"
EVAL_BATCH = 500
log = progress_logger("accuracy")


# --------------------------------------------------------------------------- data


def prepared_examples(name: str, val_per_class: int, work_dir: Path, tarball: Path) -> Path:
    """The examples directory of a dataset, prepared once with `pipeline.prepare` and reused.

    One directory per validation size: the validation images are taken before the training
    split, so each size gives a different training set.
    """
    from pipeline.prepare import prepare_examples
    from pipeline.split_plan import PrepareConfig

    dataset = DATASETS[name]
    output = work_dir / "data" / f"{name}-val{val_per_class}"
    if (output / "class_info.json").exists():
        return output
    if dataset.source == "cifar10":
        source = f"folder:{extracted_cifar10(tarball, work_dir, log)}"
    else:
        source = dataset.source
    log(
        f"preparing {name} from {source} (IR {dataset.imbalance_ratio}, "
        f"{val_per_class} val per class)"
    )
    prepare_examples(
        source,
        str(output),
        PrepareConfig(imbalance_ratio=dataset.imbalance_ratio, val_per_class=val_per_class),
        pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    )
    return output


def split_arrays(
    examples: Path, split: str, image_shape: Sequence[int], limit: int | None = None
) -> tuple[Any, np.ndarray]:
    """(tf.data batches of the split in file order, its labels as int64 [N]); with `limit`,
    only its first `limit` examples."""
    from lade_tf.records import split_file_pattern
    from lade_tf.tf_training import eval_dataset

    data = eval_dataset(split_file_pattern(str(examples), split), image_shape, EVAL_BATCH)
    if limit is not None:
        data = data.unbatch().take(limit).batch(EVAL_BATCH)
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in data])
    return data, labels


# --------------------------------------------------------------------------- one training run


def train_config(
    budget: Budget, dataset: Dataset, training: str, seed: int, epochs: int, **overrides
):
    """The TrainConfig of one training run of `epochs` under a budget."""
    from lade_tf.train_config import TrainConfig

    options = dict(TRAININGS[training])
    options.update(overrides)
    return TrainConfig(
        arch=dataset.arch,
        epochs=epochs,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        schedule=budget.schedule,
        warmup_epochs=budget.warmup_for(epochs),
        weight_decay=5e-4,
        momentum=0.9,
        seed=seed,
        augment=True,
        max_train_examples=budget.max_train_examples,
        **options,
    )


def train_and_predict(
    config, examples: Path, checkpoint_dir: Path, max_test_examples: int | None = None
) -> dict[str, Any]:
    """Trains one config and returns its test and val logits, labels and training speed."""
    from lade_tf import tf_training as training
    from lade_tf.records import read_class_info, split_file_pattern

    info = read_class_info(str(examples))
    shape = (int(info["height"]), int(info["width"]), int(info["channels"]))
    counts = [int(n) for n in info["counts"]["train"]]
    train = training.train_dataset(
        split_file_pattern(str(examples), "train"),
        shape,
        config.batch_size,
        augment=config.augment,
        seed=config.seed,
        max_examples=config.max_train_examples,
    )
    val, val_labels = split_arrays(examples, "val", shape)
    test, test_labels = split_arrays(examples, "test", shape, max_test_examples)
    started = time.perf_counter()
    model = training.train_model(config, train, val, counts, shape, checkpoint_dir, None, verbose=2)
    history = training.read_history(checkpoint_dir)
    train_seconds = (
        sum(row.get("epoch_seconds", 0.0) for row in history) or time.perf_counter() - started
    )
    images = training.steps_per_epoch(config, counts) * config.batch_size * config.epochs
    started = time.perf_counter()
    test_logits = model.predict(test, verbose=0)
    infer_seconds = time.perf_counter() - started
    return {
        "last_layer": last_layer_arrays(model, val, test),
        "counts": counts,
        "test_logits": test_logits,
        "test_labels": test_labels,
        "val_logits": model.predict(val, verbose=0),
        "val_labels": val_labels,
        "train_seconds": train_seconds,
        "train_images_per_s": images / train_seconds,
        "infer_images_per_s": len(test_labels) / infer_seconds,
        "final_epoch": history[-1] if history else {},
    }


# --------------------------------------------------------------------------- scoring


def method_logits(
    method: Method, logits: np.ndarray, counts: Sequence[int]
) -> tuple[np.ndarray, str, bool]:
    """(logits, train_loss, corrected) to hand to `lade_tf.shift_eval` for one method."""
    loss = TRAININGS[method.training]["loss"]
    if method.rule == "raw":
        return logits, loss, False
    if method.rule == "posthoc_uniform":
        log_prior = np.log(np.asarray(counts, np.float64) / np.sum(counts))
        return (logits - log_prior).astype(np.float32), "ce", False
    return logits, loss, True


def score_method(method: Method, run: Mapping[str, Any]) -> dict[str, Any]:
    """The 11-distribution accuracies and the uniform-test summary of one method."""
    from lade_tf.shift_eval import evaluate_under_shift, uniform_summary

    logits, loss, corrected = method_logits(method, run["test_logits"], run["counts"])
    shift = evaluate_under_shift(
        logits, run["test_labels"], run["counts"], loss, seeds=EVAL_SEEDS, corrected=corrected
    )
    uniform = uniform_summary(logits, run["test_labels"], run["counts"], loss, corrected=corrected)
    return {"shift": shift, "uniform": uniform}


def logit_statistics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean positive-sample logit f(x)[y] and mean negative-sample logit f(x)[c != y]."""
    positive = logits[np.arange(len(labels)), labels]
    negative_sum = logits.sum(axis=1) - positive
    return {
        "positive": float(positive.mean()),
        "negative": float((negative_sum / (logits.shape[1] - 1)).mean()),
    }


# --------------------------------------------------------------------------- saved logits


def logits_path(output: Path, budget: str, kind: str, name: str) -> Path:
    """Where the logits of one part's model live (beside the results, not in the work dir)."""
    folder = output / "logits" / budget
    return (folder if kind == "accuracy" else folder / kind) / f"{name}.npz"


def save_logits(path: Path, run: Mapping[str, Any], val_per_class: int) -> None:
    """Keeps a trained model's outputs (`harness.write_logits`): its methods can be scored, and
    target priors estimated, again without training."""
    write_logits(
        path,
        **{key: run[key] for key in LOGIT_ARRAYS},
        counts=run["counts"],
        val_per_class=val_per_class,
        last_layer=run.get("last_layer"),
    )


# --------------------------------------------------------------------------- parts


def part_path(output: Path, budget: str, kind: str, name: str) -> Path:
    """Where one finished part's JSON lives."""
    return output / "parts" / budget / kind / f"{name}.json"


def rescore_part(path: Path, saved: Path, methods: Iterable[str]) -> None:
    """Scores `methods` of one finished part from its saved logits and rewrites the part."""
    part = json.loads(path.read_text())
    run = read_logits(saved)
    part["methods"] = {name: score_method(METHODS[name], run) for name in dict.fromkeys(methods)}
    write_json(path, part)


def rescore_parts(output: Path, budget: str) -> None:
    """Scores every finished accuracy part again from its saved logits (after a rule change)."""
    for path in sorted((output / "parts" / budget / "accuracy").glob("*.json")):
        saved = logits_path(output, budget, "accuracy", path.stem)
        if not saved.exists():
            log(f"{path.stem}: no saved logits in {saved}, kept as it is")
            continue
        rescore_part(path, saved, json.loads(path.read_text())["methods"])
        log(f"{path.stem}: rescored")


def run_accuracy_part(
    budget_name: str,
    dataset_name: str,
    training: str,
    methods: Sequence[str],
    seed: int,
    args: argparse.Namespace,
) -> None:
    """Trains one run (unless its part exists) and writes the scores of its methods.

    A finished part that lacks some of `methods` gets them from its saved logits, or else from
    its training resumed at its last checkpoint; the methods it had are scored again with them.
    """
    name = f"{dataset_name}-{training}-s{seed}"
    path = part_path(args.output, budget_name, "accuracy", name)
    saved = logits_path(args.output, budget_name, "accuracy", name)
    done: list[str] = []
    if path.exists():
        done = list(json.loads(path.read_text())["methods"])
        if set(methods) <= set(done):
            log(f"{path.name}: done before, skipped")
            return
        if saved.exists():
            rescore_part(path, saved, [*done, *methods])
            log(f"{name}: scored {', '.join(methods)} from its saved logits")
            return
    budget = BUDGETS[budget_name]
    examples = prepared_examples(dataset_name, args.val_per_class, args.work_dir, args.tarball)
    epochs = budget.epochs_for(dataset_name)
    config = train_config(budget, DATASETS[dataset_name], training, seed, epochs)
    log(
        f"training {training} on {dataset_name}, seed {seed}, {epochs} epochs "
        f"({DATASETS[dataset_name].arch})"
    )
    run = train_and_predict(
        config, examples, checkpoint_dir(args, budget_name, name), budget.max_test_examples
    )
    save_logits(saved, run, args.val_per_class)
    scores = {m: score_method(METHODS[m], run) for m in dict.fromkeys([*done, *methods])}
    write_json(
        path,
        {
            "dataset": dataset_name,
            "training": training,
            "seed": seed,
            "budget": budget_name,
            "val_per_class": args.val_per_class,
            "config": config.to_dict(),
            "train_seconds": run["train_seconds"],
            "train_images_per_s": run["train_images_per_s"],
            "infer_images_per_s": run["infer_images_per_s"],
            "final_epoch": run["final_epoch"],
            "machine": machine_description(gpus=True),
            "methods": scores,
        },
    )
    uniform = {m: round(100 * s["shift"]["U"]["mean"], 1) for m, s in scores.items()}
    log(f"{name}: {run['train_seconds']:.0f} s training, uniform accuracy {uniform}")


def run_figure2_part(budget_name: str, alpha: float, args: argparse.Namespace) -> None:
    """Trains LADE with one alpha (unless done) and records its logit statistics."""
    budget = BUDGETS[budget_name]
    dataset_name = budget.figure2_dataset
    name = f"{dataset_name}-alpha{alpha:g}"
    path = part_path(args.output, budget_name, "figure2", name)
    if path.exists():
        log(f"{path.name}: done before, skipped")
        return
    examples = prepared_examples(dataset_name, args.val_per_class, args.work_dir, args.tarball)
    config = train_config(
        budget, DATASETS[dataset_name], "lade_class", 0, budget.figure2_epochs, alpha=alpha
    )
    log(f"Figure 2: LADE alpha {alpha:g} on {dataset_name}, {config.epochs} epochs")
    run = train_and_predict(
        config,
        examples,
        checkpoint_dir(args, budget_name, f"figure2-{name}"),
        budget.max_test_examples,
    )
    save_logits(logits_path(args.output, budget_name, "figure2", name), run, args.val_per_class)
    stats = logit_statistics(run["test_logits"], run["test_labels"])
    accuracy = float(np.mean(run["test_logits"].argmax(1) == run["test_labels"]))
    write_json(
        path,
        {
            "dataset": dataset_name,
            "alpha": alpha,
            "budget": budget_name,
            "val_per_class": args.val_per_class,
            "epochs": config.epochs,
            "num_classes": len(run["counts"]),
            "uniform_accuracy_raw_logits": accuracy,
            "train_seconds": run["train_seconds"],
            **stats,
        },
    )
    log(
        f"{name}: positive {stats['positive']:.3f}, negative {stats['negative']:.3f}, "
        f"log C {math.log(len(run['counts'])):.3f}"
    )


def checkpoint_dir(args: argparse.Namespace, budget_name: str, name: str) -> Path:
    """The epoch checkpoints of one training run (apart for each validation size)."""
    return args.work_dir / "checkpoints" / budget_name / f"val{args.val_per_class}" / name


# --------------------------------------------------------------------------- command line


def _names(text: str | None, allowed: Iterable[str], what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(
            f"error: --{what} {text!r}: expected a comma-separated subset of {', '.join(allowed)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    from pipeline.flags import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="smoke")
    parser.add_argument(
        "--datasets", help=f"subset of {', '.join(DATASETS)} (default: the budget's)"
    )
    parser.add_argument("--methods", help=f"subset of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--seeds", help="training seeds, e.g. 0,1,2 (default: the budget's)")
    parser.add_argument("--skip-figure2", action="store_true", help="no Figure 2 trainings")
    parser.add_argument("--only-figure2", action="store_true", help="only Figure 2 trainings")
    parser.add_argument(
        "--only-merge",
        action="store_true",
        help="train nothing; merge the finished parts into the reports",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="train nothing; score the finished parts again from their saved logits "
        "(<output>/logits/<budget>/), then merge",
    )
    parser.add_argument(
        "--val-per-class",
        type=positive_int,
        default=default_val_per_class(),
        metavar="N",
        help="balanced validation images per class, taken before the training split; at least "
        "one, as the validation logits are kept (default: pipeline.prepare's, %(default)s); one "
        "value per --output folder",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK,
        help="prepared data and checkpoints (default: %(default)s)",
    )
    parser.add_argument("--tarball", type=Path, default=CIFAR10_TARBALL)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected parts of a budget, then merges every finished part of it."""
    args = build_parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    datasets = _names(args.datasets, DATASETS, "datasets")
    methods = _names(args.methods, METHODS, "methods")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: expected integers like 0,1,2") from None
    configure_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    if args.rescore:
        rescore_parts(args.output, args.budget)
        args.only_merge = True
    if not args.only_merge:
        check_val_per_class(args.output, args.budget, args.val_per_class)
    if not args.only_merge and not args.only_figure2:
        for dataset_name, (planned, planned_seeds) in budget.plan.items():
            if datasets is not None and dataset_name not in datasets:
                continue
            chosen = [m for m in planned if methods is None or m in methods]
            for seed in seeds or planned_seeds:
                for training in dict.fromkeys(METHODS[m].training for m in chosen):
                    wanted = [m for m in chosen if METHODS[m].training == training]
                    run_accuracy_part(args.budget, dataset_name, training, wanted, seed, args)
        if datasets is not None:
            for name in set(datasets) - set(budget.plan):
                log(
                    f"{name} is not in the {args.budget} budget's plan "
                    f"({', '.join(budget.plan)}): nothing trained for it"
                )
    if not args.only_merge and not args.skip_figure2:
        for alpha in figure2_alphas(args.budget):
            run_figure2_part(args.budget, alpha, args)
    write_reports(args.output, args.budget)
    log(f"done in {time.perf_counter() - started:.0f} s; reports in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
