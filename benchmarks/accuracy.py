"""Accuracy under label shift on CIFAR-10-LT and Fashion-MNIST-LT, every method, and Figure 2.

Reproduces the paper's comparison with this library: each training run is one loss on one
long-tailed training split; every method is a training run plus an inference rule:

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

Data come from `pipeline.prepare` (exp profile, 20 balanced validation images per class taken
first, so CIFAR-10-LT's n_max is 4,980): CIFAR-10 from the shared JPEG tarball, Fashion-MNIST
from Debian's files. Recipe (all budgets but gpu): SGD momentum 0.9, weight decay 5e-4 (coupled),
batch 128, lr 0.1, 5-epoch linear warm-up then cosine to 0, crop + flip augmentation; ResNet-32
in the LADE authors' (BBN) form for CIFAR, the small CNN for Fashion-MNIST.

Budgets: `smoke` (CI: one epoch on a 1,024-image subset of CIFAR-10-LT IR 100, every method and
the Figure 2 alphas), `cpu` (30 epochs: every method on CIFAR-10-LT IR 100; 10 epochs: Softmax
and LADE with 3 training seeds on Fashion-MNIST-LT; Figure 2 on Fashion-MNIST-LT with 5 epochs;
warm-up at most a quarter of a run) and `gpu` (the
authors' 200-epoch step schedule, lr 0.2, batch 256, every method on CIFAR-10-LT IR 100/50/10).

Every training run is a part: its result is written to `<output>/parts/` as soon as it finishes,
an interrupted training resumes from its last epoch checkpoint, and finished parts are skipped,
so a long budget can run in pieces (`--datasets`, `--methods`, `--seeds`) and each run merges all
parts of its budget into `accuracy_<budget>.{json,md,png}` and `figure2_<budget>.{json,md,png}`.

    .venv/bin/python benchmarks/accuracy.py --budget smoke
    .venv/bin/python benchmarks/accuracy.py --budget cpu [--datasets cifar10_lt_ir100]
        [--methods softmax,lade_class] [--seeds 0] [--skip-figure2] [--only-merge]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SHARED_DATA = Path(os.environ.get("LADE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
DEFAULT_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.xz"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "accuracy"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "lade-tf-bench"
BUDGETS = ("smoke", "cpu", "gpu")
SHIFTS = ("F50", "F25", "F10", "F5", "F2", "U", "B2", "B5", "B10", "B25", "B50")
FIGURE2_ALPHAS = (0.0, 0.1, 0.5, 1.0, 2.0)
SMOKE_FIGURE2_ALPHAS = (0.0, 1.0)
EVAL_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A long-tailed training split made by `pipeline.prepare`, and the model trained on it."""

    source: str  # "cifar10" (the shared tarball) or "fashion_mnist"
    imbalance_ratio: int
    arch: str


DATASETS = {
    "cifar10_lt_ir100": Dataset("cifar10", 100, "resnet32_bbn"),
    "cifar10_lt_ir50": Dataset("cifar10", 50, "resnet32_bbn"),
    "cifar10_lt_ir10": Dataset("cifar10", 10, "resnet32_bbn"),
    "fmnist_lt_ir100": Dataset("fashion_mnist", 100, "small_cnn"),
}

#: Training runs: loss and its options. Methods are a training run plus an inference rule.
TRAININGS = {
    "ce": {"loss": "ce"},
    "balanced_softmax": {"loss": "balanced_softmax"},
    "lade_sample": {"loss": "lade", "importance": "sample"},
    "lade_class": {"loss": "lade", "importance": "class"},
}
# No separate logit-adjusted (tau 1) training: `logit_adjusted_loss(tau=1)` and
# `balanced_softmax_loss` compute the same CE(f + log p_s) (tests/benchmarks checks it), and both
# predict with f + log p_t, so a second training would repeat the first step for step.


@dataclasses.dataclass(frozen=True)
class Method:
    """How one row of the table predicts: which training run, which rule."""

    label: str
    training: str
    rule: str  # "raw", "known_prior" or "posthoc_uniform"


METHODS = {
    "softmax": Method("Softmax (CE)", "ce", "raw"),
    "pc_softmax": Method("PC Softmax (CE + known p_t)", "ce", "known_prior"),
    "posthoc_la": Method("Post-hoc logit adjustment (CE, tau 1)", "ce", "posthoc_uniform"),
    "lade_class": Method("LADE, importance=class (+ known p_t)", "lade_class", "known_prior"),
    "lade_sample": Method("LADE, importance=sample (+ known p_t)", "lade_sample", "known_prior"),
    "balanced_softmax": Method(
        "Balanced Softmax = logit-adjusted loss, tau 1 (+ known p_t)",
        "balanced_softmax",
        "known_prior",
    ),
}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Epochs, recipe and the parts a budget runs by default."""

    epochs: int
    batch_size: int
    learning_rate: float
    schedule: str
    warmup_epochs: float
    max_train_examples: int | None
    plan: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]]  # dataset -> (methods, seeds)
    figure2_dataset: str
    figure2_epochs: int
    #: Datasets trained for other than `epochs` (Fashion-MNIST-LT on the CPU budget).
    dataset_epochs: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def epochs_for(self, dataset_name: str) -> int:
        """Training epochs on one dataset."""
        return self.dataset_epochs.get(dataset_name, self.epochs)

    def warmup_for(self, epochs: int) -> float:
        """Warm-up epochs of a run of `epochs`: the budget's, at most a quarter of the run."""
        return min(self.warmup_epochs, epochs / 4)


_ALL = tuple(METHODS)
BUDGET_SETTINGS = {
    "smoke": Budget(
        2, 64, 0.05, "cosine", 1.0, 512, {"cifar10_lt_ir100": (_ALL, (0,))}, "cifar10_lt_ir100", 2
    ),
    "cpu": Budget(
        30,
        128,
        0.1,
        "cosine",
        5.0,
        None,
        {
            "cifar10_lt_ir100": (_ALL, (0,)),
            "fmnist_lt_ir100": (("softmax", "pc_softmax", "lade_class"), (0, 1, 2)),
        },
        "fmnist_lt_ir100",
        5,
        # 30 epochs of the small CNN took 22 min per training on the 2-core machine; it has
        # converged long before (see the README).
        {"fmnist_lt_ir100": 10},
    ),
    "gpu": Budget(
        200,
        256,
        0.2,
        "step",
        5.0,
        None,
        {
            "cifar10_lt_ir100": (_ALL, (0,)),
            "cifar10_lt_ir50": (_ALL, (0,)),
            "cifar10_lt_ir10": (_ALL, (0,)),
        },
        "cifar10_lt_ir100",
        200,
    ),
}


def log(message: str) -> None:
    """One progress line on stderr with the wall-clock time."""
    print(f"[accuracy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def prepared_examples(name: str, work_dir: Path, tarball: Path) -> Path:
    """The examples directory of a dataset, prepared once with `pipeline.prepare` and reused."""
    from pipeline.prepare import prepare_examples
    from pipeline.split_plan import PrepareConfig

    dataset = DATASETS[name]
    output = work_dir / "data" / name
    if (output / "class_info.json").exists():
        return output
    if dataset.source == "cifar10":
        tree = work_dir / "cifar10-jpeg"
        if not (tree / "test").is_dir():
            if not tarball.exists():
                raise SystemExit(
                    f"error: {tarball} not found: expected the shared CIFAR-10 "
                    "tarball (pass --tarball)"
                )
            log(f"extracting {tarball} to {work_dir}")
            work_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-xJf", str(tarball), "-C", str(work_dir)], check=True)
        source = f"folder:{tree}"
    else:
        source = dataset.source
    log(f"preparing {name} from {source} (IR {dataset.imbalance_ratio}, 20 val per class)")
    prepare_examples(
        source,
        str(output),
        PrepareConfig(imbalance_ratio=dataset.imbalance_ratio),
        pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    )
    return output


def split_arrays(examples: Path, split: str, image_shape: Sequence[int]) -> tuple[Any, np.ndarray]:
    """(tf.data batches of the split in file order, its labels as int64 [N])."""
    from lade_tf.records import split_file_pattern
    from lade_tf.training import eval_dataset

    data = eval_dataset(split_file_pattern(str(examples), split), image_shape, 500)
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in data])
    return data, labels


# --------------------------------------------------------------------------- one training run


def train_config(
    budget: Budget, dataset: Dataset, training: str, seed: int, epochs: int, **overrides
):
    """The TrainConfig of one training run of `epochs` under a budget."""
    from lade_tf.training import TrainConfig

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


def train_and_predict(config, examples: Path, checkpoint_dir: Path) -> dict[str, Any]:
    """Trains one config and returns its test and val logits, labels and training speed."""
    from lade_tf import training
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
    test, test_labels = split_arrays(examples, "test", shape)
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


# --------------------------------------------------------------------------- parts


def save_logits(path: Path, run: Mapping[str, Any]) -> None:
    """Keeps a run's logits and labels, so its methods can be scored again without training."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        counts=np.asarray(run["counts"]),
        **{k: run[k] for k in ("test_logits", "test_labels", "val_logits", "val_labels")},
    )


def rescore_parts(output: Path, work_dir: Path, budget: str) -> None:
    """Scores every finished accuracy part again from its saved logits (after a rule change)."""
    for path in sorted((output / "parts" / budget / "accuracy").glob("*.json")):
        saved = work_dir / "logits" / budget / f"{path.stem}.npz"
        if not saved.exists():
            log(f"{path.stem}: no saved logits in {saved}, kept as it is")
            continue
        part = json.loads(path.read_text())
        with np.load(saved) as arrays:
            run = {k: arrays[k] for k in arrays.files}
        run["counts"] = [int(n) for n in run["counts"]]
        part["methods"] = {name: score_method(METHODS[name], run) for name in part["methods"]}
        write_json(path, part)
        log(f"{path.stem}: rescored")


def part_path(output: Path, budget: str, kind: str, name: str) -> Path:
    """Where one finished part's JSON lives."""
    return output / "parts" / budget / kind / f"{name}.json"


def write_json(path: Path, value: Any) -> None:
    """Writes JSON atomically (a finished part is never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=True))
    os.replace(tmp, path)


def run_accuracy_part(
    budget_name: str,
    dataset_name: str,
    training: str,
    methods: Sequence[str],
    seed: int,
    args: argparse.Namespace,
) -> None:
    """Trains one run (unless its part exists) and writes the scores of its methods."""
    path = part_path(args.output, budget_name, "accuracy", f"{dataset_name}-{training}-s{seed}")
    if path.exists():
        done = json.loads(path.read_text())
        if set(methods) <= set(done["methods"]):
            log(f"{path.name}: done before, skipped")
            return
    budget = BUDGET_SETTINGS[budget_name]
    examples = prepared_examples(dataset_name, args.work_dir, args.tarball)
    epochs = budget.epochs_for(dataset_name)
    config = train_config(budget, DATASETS[dataset_name], training, seed, epochs)
    checkpoints = args.work_dir / "checkpoints" / budget_name / path.stem
    log(
        f"training {training} on {dataset_name}, seed {seed}, {epochs} epochs "
        f"({DATASETS[dataset_name].arch})"
    )
    run = train_and_predict(config, examples, checkpoints)
    save_logits(args.work_dir / "logits" / budget_name / f"{path.stem}.npz", run)
    scores = {name: score_method(METHODS[name], run) for name in methods}
    write_json(
        path,
        {
            "dataset": dataset_name,
            "training": training,
            "seed": seed,
            "budget": budget_name,
            "config": config.to_dict(),
            "train_seconds": run["train_seconds"],
            "train_images_per_s": run["train_images_per_s"],
            "infer_images_per_s": run["infer_images_per_s"],
            "final_epoch": run["final_epoch"],
            "machine": machine(),
            "methods": scores,
        },
    )
    uniform = {name: round(100 * s["shift"]["U"]["mean"], 1) for name, s in scores.items()}
    log(f"{path.stem}: {run['train_seconds']:.0f} s training, uniform accuracy {uniform}")


def run_figure2_part(budget_name: str, alpha: float, args: argparse.Namespace) -> None:
    """Trains LADE with one alpha (unless done) and records its logit statistics."""
    budget = BUDGET_SETTINGS[budget_name]
    dataset_name = budget.figure2_dataset
    path = part_path(args.output, budget_name, "figure2", f"{dataset_name}-alpha{alpha:g}")
    if path.exists():
        log(f"{path.name}: done before, skipped")
        return
    examples = prepared_examples(dataset_name, args.work_dir, args.tarball)
    config = train_config(
        budget, DATASETS[dataset_name], "lade_class", 0, budget.figure2_epochs, alpha=alpha
    )
    log(f"Figure 2: LADE alpha {alpha:g} on {dataset_name}, {config.epochs} epochs")
    run = train_and_predict(
        config, examples, args.work_dir / "checkpoints" / budget_name / f"figure2-{path.stem}"
    )
    stats = logit_statistics(run["test_logits"], run["test_labels"])
    accuracy = float(np.mean(run["test_logits"].argmax(1) == run["test_labels"]))
    write_json(
        path,
        {
            "dataset": dataset_name,
            "alpha": alpha,
            "budget": budget_name,
            "epochs": config.epochs,
            "num_classes": len(run["counts"]),
            "uniform_accuracy_raw_logits": accuracy,
            "train_seconds": run["train_seconds"],
            **stats,
        },
    )
    log(
        f"{path.stem}: positive {stats['positive']:.3f}, negative {stats['negative']:.3f}, "
        f"log C {math.log(len(run['counts'])):.3f}"
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import tensorflow as tf

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


# --------------------------------------------------------------------------- merge and report


def load_parts(output: Path, budget: str, kind: str) -> list[dict[str, Any]]:
    """Every finished part of one kind for a budget."""
    folder = output / "parts" / budget / kind
    return (
        [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
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
        seeds = [seed for seed, _, _ in runs]
        shift = {}
        for dist in SHIFTS:
            means = np.array([s["shift"][dist]["mean"] for _, s, _ in runs])
            sub_std = float(np.mean([s["shift"][dist]["std"] for _, s, _ in runs]))
            shift[dist] = {
                "mean": float(means.mean()),
                "std": float(means.std()) if len(runs) > 1 else sub_std,
                "subsampling_std": sub_std,
            }
        shift_means = [shift[d]["mean"] for d in SHIFTS]
        uniform = {}
        for metric in runs[0][1]["uniform"]:
            values = np.array([s["uniform"][metric] for _, s, _ in runs], dtype=np.float64)
            uniform[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)) if len(runs) > 1 else 0.0,
            }
        merged.setdefault(dataset, {})[name] = {
            "label": METHODS[name].label,
            "seeds": seeds,
            "shift": shift,
            "mean_of_11": float(np.mean(shift_means)),
            "uniform": uniform,
            "train_seconds": [p["train_seconds"] for _, _, p in runs],
            "train_images_per_s": [p["train_images_per_s"] for _, _, p in runs],
            "epochs": runs[0][2]["config"]["epochs"],
        }
    return merged


def _pct(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def accuracy_markdown(merged: Mapping[str, Any], budget: str) -> str:
    """The tables of one budget: 11 distributions, then uniform-test metrics, per dataset."""
    lines = [
        f"# Accuracy under label shift (budget `{budget}`)",
        "",
        f"Top-1 %, mean over {len(EVAL_SEEDS)} test subsamplings (and over training seeds "
        "where there are several); `largest std`: the largest of the 11 standard deviations "
        "(over subsamplings, or over training seeds where there are several). Command: "
        f"`.venv/bin/python benchmarks/accuracy.py --budget {budget}`.",
        "",
    ]
    for dataset, methods in merged.items():
        first = next(iter(methods.values()))
        lines += [
            f"## {dataset} ({first['epochs']} epochs, {DATASETS[dataset].arch})",
            "",
            "| Method | seeds | " + " | ".join(SHIFTS) + " | mean of 11 | largest std |",
            "|---|---|" + "---:|" * (len(SHIFTS) + 2),
        ]
        for name, row in methods.items():
            cells = [_pct(row["shift"][d]["mean"]) for d in SHIFTS]
            largest_std = max(row["shift"][d]["std"] for d in SHIFTS)
            lines.append(
                f"| {row['label']} | {len(row['seeds'])} | "
                + " | ".join(cells)
                + f" | {_pct(row['mean_of_11'])} | {_pct(largest_std)} |"
            )
        lines += [
            "",
            "Uniform test set:",
            "",
            "| Method | accuracy | many | medium | few | ECE % | NLL | train s | train img/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in methods.items():
            u = {k: v["mean"] for k, v in row["uniform"].items()}
            lines.append(
                f"| {row['label']} | {_pct(u['accuracy'])} | {_pct(u['many'])} | "
                f"{_pct(u['medium'])} | {_pct(u['few'])} | {_pct(u['ece'])} | "
                f"{u['nll']:.3f} | {np.mean(row['train_seconds']):.0f} | "
                f"{np.mean(row['train_images_per_s']):.0f} |"
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(merged)
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 4.8), squeeze=False)
    for ax, (dataset, methods) in zip(axes[0], merged.items()):
        x = np.arange(len(SHIFTS))
        for name, row in methods.items():
            means = np.array([row["shift"][d]["mean"] for d in SHIFTS]) * 100
            stds = np.array([row["shift"][d]["std"] for d in SHIFTS]) * 100
            style = "--" if METHODS[name].rule != "known_prior" else "-"
            ax.plot(x, means, style, marker="o", markersize=3, label=row["label"])
            ax.fill_between(x, means - stds, means + stds, alpha=0.15)
        ax.set_xticks(x, SHIFTS)
        ax.set_xlabel("test distribution (F: as skewed as train ... U ... B: reversed)")
        ax.set_ylabel("top-1 accuracy %")
        ax.set_title(f"{dataset}, {next(iter(methods.values()))['epochs']} epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def figure2_markdown(fig2: Mapping[str, Any], budget: str) -> str:
    """Figure 2 as a table."""
    lines = [
        f"# Figure 2 check (budget `{budget}`): LADE logits vs alpha on {fig2['dataset']}",
        "",
        f"log C = {fig2['log_C']:.3f}. Mean over the test set of the positive-sample "
        "logit f(x)[y] and of the negative-sample logits f(x)[c != y].",
        "",
        "| alpha | epochs | positive | negative | accuracy % (raw logits) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in fig2["rows"]:
        lines.append(
            f"| {row['alpha']:g} | {row['epochs']} | {row['positive']:.3f} | "
            f"{row['negative']:.3f} | {_pct(row['uniform_accuracy_raw_logits'])} |"
        )
    return "\n".join(lines) + "\n"


def plot_figure2(fig2: Mapping[str, Any], path: Path) -> None:
    """Positive and negative mean logits vs alpha with the log C line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(output: Path, budget: str) -> None:
    """Merges every part of a budget into JSON + Markdown + PNG and prints the tables."""
    accuracy_parts = load_parts(output, budget, "accuracy")
    if accuracy_parts:
        merged = merge_accuracy(accuracy_parts)
        write_json(output / f"accuracy_{budget}.json", {"budget": budget, "datasets": merged})
        text = accuracy_markdown(merged, budget)
        (output / f"accuracy_{budget}.md").write_text(text)
        plot_accuracy(merged, output / f"accuracy_{budget}.png")
        print(text)
    figure2_parts = load_parts(output, budget, "figure2")
    if figure2_parts:
        fig2 = merge_figure2(figure2_parts)
        write_json(output / f"figure2_{budget}.json", {"budget": budget, **fig2})
        text = figure2_markdown(fig2, budget)
        (output / f"figure2_{budget}.md").write_text(text)
        plot_figure2(fig2, output / f"figure2_{budget}.png")
        print(text)


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=BUDGETS, default="smoke")
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
        help="train nothing; score the finished parts again from their saved logits, then merge",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK,
        help="prepared data and checkpoints (default: %(default)s)",
    )
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected parts of a budget, then merges every finished part of it."""
    args = build_parser().parse_args(argv)
    budget = BUDGET_SETTINGS[args.budget]
    datasets = _names(args.datasets, DATASETS, "datasets")
    methods = _names(args.methods, METHODS, "methods")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: expected integers like 0,1,2") from None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    if args.rescore:
        rescore_parts(args.output, args.work_dir, args.budget)
        args.only_merge = True
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
        for alpha in SMOKE_FIGURE2_ALPHAS if args.budget == "smoke" else FIGURE2_ALPHAS:
            run_figure2_part(args.budget, alpha, args)
    write_reports(args.output, args.budget)
    log(f"done in {time.perf_counter() - started:.0f} s; reports in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
