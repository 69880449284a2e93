"""Online label shift: how close each tracker of `lade_tf.prior_tracking` comes to knowing the
drifting target prior, on streams as in Baby et al. 2023.

Streams: the authors' four processes between two priors (their `generate_monotone_shift`,
`generate_square_shift`, `generate_sinusoidal_shift`, `generate_bernouli_shift`: period sqrt(T),
change probability 1 / sqrt(T)), T steps (1,000) of k images (10; also 1 and 100 with
`--images-per-step`), each step's images drawn without replacement from the test split by the
step's prior, as their `sample_idc_wo_replacement`, from a seeded generator. Two pairs: the
published uniform <-> one class (class 0) and this project's F50 <-> B50
(`lade_tf.priors.shifted_priors`).

Models: saved logits (`--logits [LOSS=]FILE.npz`, the loss ce or lade read from the file name
when not given), `.npz` files with `counts`, `val_logits`, `val_labels`, `test_logits`,
`test_labels` and, for UOGD, `val_features`, `test_features`, `kernel`, `bias` (the last Dense
layer: test_logits = test_features @ kernel + bias). The calibration is the served one,
`TargetPriorEstimator(counts, loss).fit(val_logits, val_labels)`; its `posteriors(test_logits)`
feed the trackers, and every prior is applied by the inference rule
`adjust_logits_numpy(f, counts, loss, prior)`.

Rows: fixed p_s, fixed uniform, per-batch calibrated EM (each batch predicted with its own
Dirichlet-MAP EM estimate, what the served `estimate_prior` gives), every online tracker
(batch t predicted with the estimate from batches < t), UOGD where the file has features, and the
oracle (the step's true p_t). Columns: accuracy over the stream and mean L1 error of the prior
per process, and their mean over the four. Targets (for every model and k): the best online
tracker within 1.5 points of the oracle on the mean of the four processes (each pair), and at
least 3 points above the better fixed rule on each process of F50 <-> B50.

    .venv/bin/python benchmarks/online_prior.py --name online_prior_fmnist \\
        --logits ce=MODEL_CE.npz --logits lade=MODEL_LADE.npz [--images-per-step 1 10 100]
    .venv/bin/python benchmarks/online_prior.py --smoke --logits FILE.npz   # seconds

Writes `<name>.json`, `<name>.md` and `<name>.png` under benchmarks/results/ and prints the
tables; `--sweep` adds the window / half-life sensitivity table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import harness
import numpy as np
from online_prior_report import write_results

from lade_tf import prior_tracking as pt
from lade_tf.calibration import CALIBRATIONS, DEFAULT_CALIBRATION

PROCESSES = ("monotone", "square", "sinusoidal", "bernoulli")
PAIRS = ("uniform <-> one class", "F50 <-> B50")
ONE_CLASS = 0  # the authors' marg2 = e_0
STEPS = 1000
SMOKE_STEPS = 40
SWEEP_WINDOWS = (50, 100, 200, 500, 1000)
SWEEP_HALF_LIVES = (25.0, 50.0, 100.0, 200.0, 400.0)
SWEEP_META_LRS = (1.0, 10.0)
#: The fixed rules and the per-batch estimate; every other row is an online tracker.
FIXED = ("fixed p_s", "fixed uniform")
PER_BATCH = "per-batch calibrated EM"
ORACLE = "oracle (true p_t)"
#: Diagnostic rows, not deployable: the true prior one step late, and exponential forgetting
#: of the TRUE labels of the images of batches < t (what stands in the way of any causal
#: estimate at this switching rate, even a supervised one).
LATE_ORACLE = "oracle one step late (p_{t-1})"
LABELLED = "past labels, half-life "
LABELLED_HALF_LIVES = (10.0, 30.0, 100.0, 300.0)
NOT_ONLINE = (*FIXED, PER_BATCH, ORACLE, LATE_ORACLE)
#: Trackers whose prior also centres the MAP-EM of the batch itself (`pt.prior_for_batch`):
#: rows "<tracker> + batch MAP-EM", predicted with batches < t AND batch t's own images.
WITH_BATCH = " + batch MAP-EM"
COMBINED = (
    "follow the history",
    f"forgetting, half-life {pt.DEFAULT_HALF_LIFE:g}",
    "FLH-FTL (soft BBSE), no extra delay",
)

log = harness.progress_logger("online_prior")


# --------------------------------------------------------------------------- streams


def process_priors(
    process: str, first: np.ndarray, second: np.ndarray, steps: int, rng: np.random.Generator
) -> np.ndarray:
    """The step priors [T, C] of one process between two priors (Baby et al.'s definitions).

    Formula (t = 0 .. T-1, period P = int(sqrt(T))):
        monotone:   (1 - t / T) first + (t / T) second
        square:     first if floor(t / P) is even, else second
        sinusoidal: (1 - s) first + s second, s = sin((t mod P) pi / P)
        bernoulli:  a_0 = 0, prior_t = (1 - a_t) first + a_t second, then a flips with
                    probability 1 / sqrt(T)
    """
    period = int(steps ** (1 / 2))
    t = np.arange(steps)[:, None]
    if process == "monotone":
        return (1 - t / steps) * first + (t / steps) * second
    if process == "square":
        return np.where((t // period) % 2 == 0, first, second)
    if process == "sinusoidal":
        s = np.sin((t % period) * np.pi / period)
        return (1 - s) * first + s * second
    if process == "bernoulli":
        switch = 1 / steps ** (1 / 2)
        state, rows = 0, []
        for _ in range(steps):
            rows.append((1 - state) * first + state * second)
            if rng.random() < switch:
                state = 1 - state
        return np.asarray(rows)
    raise ValueError(f"process = {process!r}: expected one of {PROCESSES}")


def sample_steps(
    labels: np.ndarray, priors: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Image indices [T, k]: each step's labels drawn by its prior, then that many images of each
    class without replacement, shuffled (the authors' `sample_idc_wo_replacement`)."""
    by_class = [np.flatnonzero(labels == c) for c in range(priors.shape[1])]
    steps = []
    for prior in priors:
        counts = rng.multinomial(size, prior / prior.sum())
        chosen = np.concatenate(
            [rng.choice(by_class[c], n, replace=False) for c, n in enumerate(counts) if n]
        )
        rng.shuffle(chosen)
        steps.append(chosen)
    return np.asarray(steps)


def pair_priors(model: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The two ends of each pair: uniform and class ONE_CLASS alone; F50 and B50."""
    from lade_tf.priors import shifted_priors

    num_classes = len(model["counts"])
    per_class = int(np.bincount(model["test_labels"]).min())
    shifted = shifted_priors(model["counts"], per_class)
    return {
        PAIRS[0]: (np.full(num_classes, 1 / num_classes), np.eye(num_classes)[ONE_CLASS]),
        PAIRS[1]: (shifted["F50"], shifted["B50"]),
    }


# --------------------------------------------------------------------------- models


def loss_of(path: Path) -> str:
    """ce or lade, from a file name such as cifar10_lt_ir100-lade_class-s0.npz."""
    words = set(re.split(r"[-_.]", path.name))
    found = words & {"ce", "lade"}
    if len(found) != 1:
        raise SystemExit(f"error: cannot tell the loss of {path} (ce or lade): pass LOSS={path}")
    return found.pop()


def load_model(spec: str, calibration: str) -> dict[str, Any]:
    """A saved logits file with the calibration fitted and the test posteriors computed."""
    from lade_tf.prior_estimation import TargetPriorEstimator

    loss, _, name = spec.rpartition("=")
    path = Path(name)
    loss = loss or loss_of(path)
    with np.load(path) as arrays:
        model = {key: arrays[key] for key in arrays.files}
    model["counts"] = [int(n) for n in model["counts"]]
    estimator = TargetPriorEstimator(model["counts"], loss, calibration=calibration).fit(
        model["val_logits"], model["val_labels"]
    )
    model.update(
        name=path.stem,
        loss=loss,
        estimator=estimator,
        source=estimator.source_prior,
        reference=estimator.reference_prior,
        val_posteriors=estimator.posteriors(model["val_logits"]),
        test_posteriors=estimator.posteriors(model["test_logits"]),
        uogd=all(k in model for k in ("val_features", "test_features", "kernel", "bias")),
    )
    if model["uogd"]:
        rebuilt = model["test_features"] @ model["kernel"] + model["bias"]
        gap = float(np.abs(rebuilt - model["test_logits"]).max())
        if gap > 1e-3:
            log(f"warning: {path.name}: features @ kernel + bias is {gap:.2g} off test_logits")
    return model


# --------------------------------------------------------------------------- methods


def tracker_factories(
    model: dict[str, Any], steps: int, sweep: bool, lipschitz: dict[str, float]
) -> dict[str, Callable[[], Any]]:
    """A fresh tracker per stream, by row name."""
    source, reference = model["source"], model["reference"]
    val_posteriors, val_labels = model["val_posteriors"], model["val_labels"]
    bbse = pt.SoftBBSE(val_posteriors, val_labels)
    em = pt.BatchEM(reference, prior_centre=source)
    locals_ = {"soft BBSE": bbse, "MAP-EM": em}
    factories: dict[str, Callable[[], Any]] = {
        "follow the history": lambda: pt.HistoryTracker(source, reference),
        f"window {pt.DEFAULT_WINDOW}": lambda: pt.WindowTracker(source, reference),
        f"forgetting, half-life {pt.DEFAULT_HALF_LIFE:g}": lambda: pt.ForgettingTracker(
            source, reference
        ),
    }
    for local_name, local in locals_.items():
        factories[f"FLH-FTL ({local_name})"] = lambda local=local: pt.FLHFTLTracker(local, source)
        factories[f"FLH-FTL ({local_name}), no extra delay"] = lambda local=local: pt.FLHFTLTracker(
            local, source, authors_delay=False
        )
    if "rogd" not in lipschitz:
        lipschitz["rogd"] = pt.ROGDTracker(
            bbse, source, val_posteriors, val_labels, lr=1.0
        ).lipschitz()
    for local_name, local in locals_.items():
        factories[f"ROGD ({local_name})"] = lambda local=local: pt.ROGDTracker(
            local,
            source,
            val_posteriors,
            val_labels,
            total_steps=steps,
            lipschitz=lipschitz["rogd"],
        )
    if model["uogd"]:
        if "uogd" not in lipschitz:
            lipschitz["uogd"] = pt.uogd_lipschitz(
                model["kernel"], model["bias"], model["val_features"]
            )
        for local_name, local in locals_.items():
            factories[f"UOGD ({local_name})"] = lambda local=local: pt.UOGDClassifier(
                local,
                model["kernel"],
                model["bias"],
                model["val_features"],
                val_labels,
                total_steps=steps,
                lipschitz=lipschitz["uogd"],
            )
    if sweep:
        for window in SWEEP_WINDOWS:
            factories[f"window {window}"] = lambda w=window: pt.WindowTracker(
                source, reference, window=w
            )
        for half_life in SWEEP_HALF_LIVES:
            factories[f"forgetting, half-life {half_life:g}"] = lambda h=half_life: (
                pt.ForgettingTracker(source, reference, half_life=h)
            )
        for rate in SWEEP_META_LRS:
            factories[f"FLH-FTL (soft BBSE), no extra delay, meta-lr {rate:g}"] = lambda r=rate: (
                pt.FLHFTLTracker(bbse, source, meta_lr=r, authors_delay=False)
            )
    return factories


def labelled_priors(
    labels: np.ndarray, source: np.ndarray, size: int, half_life: float
) -> np.ndarray:
    """The diagnostic supervised tracker [T, C]: row t = (n + p_s) / (sum(n) + 1) with n the
    true label counts of batches < t, each image's weight halving every `half_life` images."""
    decay = 0.5 ** (size / half_life)
    counts, rows = np.zeros(source.size), []
    for step_labels in labels:
        rows.append((counts + source) / (counts.sum() + 1.0))
        counts = counts * decay + np.bincount(step_labels, minlength=source.size)
    return np.asarray(rows)


def run_stream(
    model: dict[str, Any], priors: np.ndarray, indices: np.ndarray, factories: dict[str, Any]
) -> dict[str, Any]:
    """Every row on one stream: its accuracy, mean L1 error, and per-step accuracy and prior."""
    from lade_tf.layers import adjust_logits_numpy

    steps, size = indices.shape
    num_classes = priors.shape[1]
    posteriors = model["test_posteriors"]
    used: dict[str, np.ndarray] = {
        FIXED[0]: np.tile(model["source"], (steps, 1)),
        FIXED[1]: np.full((steps, num_classes), 1 / num_classes),
        PER_BATCH: np.empty((steps, num_classes)),
        ORACLE: priors,
        LATE_ORACLE: np.vstack([model["source"], priors[:-1]]),
    }
    step_labels = model["test_labels"][indices]
    for half_life in LABELLED_HALF_LIVES:
        used[f"{LABELLED}{half_life:g}"] = labelled_priors(
            step_labels, model["source"], size, half_life
        )
    per_batch = pt.BatchEM(model["reference"], prior_centre=model["source"])
    trackers = {name: make() for name, make in factories.items()}
    uogd_logits = {n: [] for n, t in trackers.items() if isinstance(t, pt.UOGDClassifier)}
    combined = {f"{n}{WITH_BATCH}": n for n in COMBINED if n in trackers}
    for name in [*trackers, *combined]:
        if name not in uogd_logits:
            used[name] = np.empty((steps, num_classes))
    for t, chosen in enumerate(indices):
        batch = posteriors[chosen]
        used[PER_BATCH][t] = per_batch.estimate(batch)
        for name, tracker in trackers.items():
            if name in uogd_logits:
                uogd_logits[name].append(tracker.logits(model["test_features"][chosen]))
            else:
                used[name][t] = tracker.prior
        for name, base in combined.items():
            used[name][t] = pt.prior_for_batch(batch, used[base][t], model["reference"])
        for tracker in trackers.values():
            tracker.update(batch)
    flat = indices.reshape(-1)
    labels = model["test_labels"][flat].reshape(steps, size)
    logits = model["test_logits"][flat]
    rows = {}
    for name, prior in used.items():
        adjusted = adjust_logits_numpy(
            logits, model["counts"], model["loss"], np.repeat(prior, size, axis=0)
        )
        correct = adjusted.argmax(axis=1).reshape(steps, size) == labels
        rows[name] = {
            "accuracy": float(correct.mean()),
            "l1": float(np.abs(prior - priors).sum(axis=1).mean()),
            "step_accuracy": correct.mean(axis=1),
            "prior": prior,
        }
    for name, outputs in uogd_logits.items():
        correct = np.concatenate(outputs).argmax(axis=1).reshape(steps, size) == labels
        rows[name] = {
            "accuracy": float(correct.mean()),
            "l1": None,
            "step_accuracy": correct.mean(axis=1),
            "prior": None,
        }
    return rows


def run_model(
    model: dict[str, Any], sizes: Sequence[int], steps: int, seed: int, sweep: bool
) -> dict[str, Any]:
    """Every pair, process and images-per-step of one model; per-step traces of F50 <-> B50."""
    lipschitz: dict[str, float] = {}
    factories = tracker_factories(model, steps, sweep, lipschitz)
    results: dict[str, Any] = {}
    traces: dict[str, Any] = {}
    for size in sizes:
        by_pair: dict[str, Any] = {}
        for p, (pair, (first, second)) in enumerate(pair_priors(model).items()):
            by_process = {}
            for q, process in enumerate(PROCESSES):
                started = time.time()
                rng = np.random.default_rng([seed, size, p, q])
                priors = process_priors(process, first, second, steps, rng)
                indices = sample_steps(model["test_labels"], priors, size, rng)
                rows = run_stream(model, priors, indices, factories)
                by_process[process] = {
                    n: {"accuracy": r["accuracy"], "l1": r["l1"]} for n, r in rows.items()
                }
                if pair == PAIRS[1] and size == sizes[0]:
                    traces[process] = {
                        "true": priors,
                        **{n: r for n, r in rows.items()},
                    }
                best = max(
                    (n for n in rows if n not in NOT_ONLINE and not n.startswith(LABELLED)),
                    key=lambda n: rows[n]["accuracy"],
                )
                log(
                    f"{model['name']} k={size} {pair} {process}: oracle "
                    f"{100 * rows[ORACLE]['accuracy']:.1f}, {best} "
                    f"{100 * rows[best]['accuracy']:.1f}, fixed p_s "
                    f"{100 * rows[FIXED[0]]['accuracy']:.1f} ({time.time() - started:.1f} s)"
                )
            by_pair[pair] = by_process
        results[str(size)] = by_pair
    return {
        "loss": model["loss"],
        "counts": model["counts"],
        "uogd": model["uogd"],
        "rogd_lipschitz": lipschitz.get("rogd"),
        "uogd_lipschitz": lipschitz.get("uogd"),
        "results": results,
        "traces": traces,
    }


def sweep_rows() -> list[str]:
    """The rows `--sweep` adds (the defaults' rows are there without it)."""
    windows = [f"window {w}" for w in SWEEP_WINDOWS if w != pt.DEFAULT_WINDOW]
    return (
        windows
        + [f"forgetting, half-life {h:g}" for h in SWEEP_HALF_LIVES if h != pt.DEFAULT_HALF_LIFE]
        + [f"FLH-FTL (soft BBSE), no extra delay, meta-lr {r:g}" for r in SWEEP_META_LRS]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--logits",
        action="append",
        required=True,
        metavar="[LOSS=]FILE.npz",
        help="a model's saved logits (repeat for several); LOSS ce or lade, else from the name",
    )
    parser.add_argument("--name", default="online_prior", help="result file stem")
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default=DEFAULT_CALIBRATION,
        help=f"the posteriors' calibration (default {DEFAULT_CALIBRATION}, the served one)",
    )
    parser.add_argument("--images-per-step", type=int, nargs="+", default=[10])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="window / half-life sensitivity")
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_STEPS} steps of 10 images, seconds"
    )
    parser.add_argument("--output", type=Path, default=harness.RESULTS_DIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lade_tf.process_settings import configure_tensorflow

    configure_tensorflow()
    steps, sizes = (SMOKE_STEPS, [10]) if args.smoke else (args.steps, args.images_per_step)
    if steps < 4 or min(sizes) < 1:
        raise SystemExit(f"error: --steps {steps}, --images-per-step {sizes}: expected >= 4, >= 1")
    started = time.time()
    models = {}
    for spec in args.logits:
        model = load_model(spec, args.calibration)
        log(
            f"{model['name']} ({model['loss']}): {len(model['test_labels'])} test images, "
            f"UOGD {'on' if model['uogd'] else 'off (no features in the file)'}"
        )
        models[model["name"]] = run_model(model, sizes, steps, args.seed, args.sweep)
    report = {
        "config": {
            "steps": steps,
            "images_per_step": sizes,
            "seed": args.seed,
            "processes": list(PROCESSES),
            "pairs": list(PAIRS),
            "one_class": ONE_CLASS,
            "smoke": args.smoke,
            "calibration": args.calibration,
            "window": pt.DEFAULT_WINDOW,
            "half_life": pt.DEFAULT_HALF_LIFE,
            "sweep_rows": sweep_rows() if args.sweep else [],
        },
        "models": models,
        "seconds": time.time() - started,
        "machine": harness.machine_description(),
    }
    print("\n".join(write_results(report, args.output, args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
