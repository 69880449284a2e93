"""Online label shift through the real serving path: the streams of
`benchmarks/online_prior.py` sent to a `python -m serving.server` process, once as server-side
prior streams (REST; one stream also over gRPC) and once through the client-side tracker
(`serving.prior_tracking_client`, plain TF Serving requests), against the library path on the
same model's logits; the cost of tracking per request at batch 1; and the faults: SIGKILL
mid-stream and restart, truncated and garbage state files, 10,000 stream keys under a cap.

Model: the default-run LADE model of `benchmarks/prior_estimation.py` (Fashion-MNIST-LT IR 100,
small CNN, 6 epochs; trained once into --training-dir and reused), exported by
`lade_tf.export.export_serving_model` with its Dirichlet-calibrated estimator into --work-dir; or
any exported model with `--model-base-path DIR --images FILE.npz` (`images`, `labels`).

Library path: `online_prior.run_stream` on the SavedModel's own raw logits
(`lade_tf.export.served_raw_logits`) and the estimator of its metadata, row "forgetting,
half-life 100 + batch MAP-EM" (the served default: the forgetting tracker's prior centring MAP-EM
on each request's images). Streams: `online_prior.process_priors` and `sample_steps` with the
seeds of `online_prior.run_model`, both pairs, four processes, T steps of 10 images.

    .venv/bin/python benchmarks/online_prior_serving.py              # about 10 minutes
    .venv/bin/python benchmarks/online_prior_serving.py --smoke      # 40 steps, small faults

Writes online_prior_serving.json, .md and .png under benchmarks/results/ and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import harness
import numpy as np
import online_prior as op
from online_prior_serving_report import write_results

from lade_tf import prior_tracking as pt

# This folder's serving.py (the REST vs gRPC benchmark) would shadow the `serving` package of the
# checkout for a script run from here: the checkout goes first.
sys.path.insert(0, str(harness.REPO_ROOT))

TRACKER_ROW = f"forgetting, half-life {pt.DEFAULT_HALF_LIFE:g}"
SERVED_ROW = TRACKER_ROW + op.WITH_BATCH
GRPC_CASE = (op.PAIRS[1], "square")
PATHS = ("server stream, REST", "server stream, gRPC", "client tracker, REST")
IMAGES_PER_STEP = 10
SMOKE = {"steps": 40, "cost_rounds": 60, "kill_after": 20, "keys": 300, "cap": 30}
BACKGROUND_SAVE_MS = 100
FULL = {"steps": op.STEPS, "cost_rounds": 600, "kill_after": 300, "keys": 10_000, "cap": 1_000}

log = harness.progress_logger("online_prior_serving")


# --------------------------------------------------------------------------- model


def default_model(work_dir: Path, training_dir: Path, seed: int) -> tuple[Path, Path]:
    """The default-run LADE model exported with the tracker constants, and its test images
    (trained by prior_estimation.py's code, or reused from a finished run)."""
    served = work_dir / "served"
    base, images = served / "lade", served / "test_images.npz"
    if (base / "1" / "saved_model.pb").exists() and images.exists():
        return base, images
    import json as json_module

    import keras
    import prior_estimation

    import lade_tf.layers  # noqa: F401  (registers the serialisable custom objects)
    import lade_tf.losses  # noqa: F401
    import lade_tf.models  # noqa: F401
    from lade_tf.export import export_serving_model
    from lade_tf.prior_estimation import TargetPriorEstimator
    from lade_tf.records import read_class_info
    from lade_tf.train_config import TrainConfig

    examples = prior_estimation.default_examples(training_dir, None)
    output = prior_estimation.trained_output("lade", examples, training_dir, seed)
    model = keras.models.load_model(output / "model_run" / "model.keras", compile=False)
    info = read_class_info(str(examples))
    counts = [int(n) for n in info["counts"]["train"]]
    val_images, val_labels = prior_estimation.split_arrays(examples, "val", info)
    val_logits = np.asarray(model.predict(val_images, batch_size=1000, verbose=0), np.float64)
    config = TrainConfig(loss="lade", seed=seed)
    estimator = TargetPriorEstimator(counts, "lade", tau=config.inference_tau).fit(
        val_logits, val_labels
    )
    export_serving_model(
        model,
        base / "1",
        class_counts=counts,
        train_loss="lade",
        tau=config.inference_tau,
        class_names=info.get("class_names"),
        alpha=config.lade_alpha,
        prior_estimator=estimator,
        metadata={"train_config": json_module.loads(json_module.dumps(config.to_dict()))},
    )
    test_images, test_labels = prior_estimation.split_arrays(examples, "test", info)
    harness.write_npz(images, images=test_images, labels=test_labels)
    log(f"exported {base / '1'} and {len(test_labels)} test images")
    return base, images


def library_model(version_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What `online_prior.run_stream` reads, from the SavedModel's own raw logits and the
    estimator of its metadata (the served calibration, not a refit)."""
    from lade_tf.export import served_raw_logits
    from lade_tf.layers import correction_offset
    from lade_tf.prior_estimation import TargetPriorEstimator

    logits, metadata = served_raw_logits(version_dir, images)
    estimator = TargetPriorEstimator.from_config(metadata["prior_estimation"])
    counts = metadata["class_counts"]
    return {
        "name": version_dir.parent.name,
        "counts": counts,
        "loss": metadata["train_loss"],
        "offset": correction_offset(counts, metadata["train_loss"], metadata.get("tau") or 1.0),
        "test_logits": logits,
        "test_labels": labels,
        "test_images": images,
        "source": estimator.source_prior,
        "reference": estimator.reference_prior,
        "test_posteriors": estimator.posteriors(logits),
        "uogd": False,
    }


# --------------------------------------------------------------------------- streams


def stream_cases(model: dict[str, Any], steps: int, seed: int) -> list[dict[str, Any]]:
    """Every pair and process, drawn as `online_prior.run_model` draws them."""
    cases = []
    for p, (pair, (first, second)) in enumerate(op.pair_priors(model).items()):
        for q, process in enumerate(op.PROCESSES):
            rng = np.random.default_rng([seed, IMAGES_PER_STEP, p, q])
            priors = op.process_priors(process, first, second, steps, rng)
            indices = op.sample_steps(model["test_labels"], priors, IMAGES_PER_STEP, rng)
            cases.append({"pair": pair, "process": process, "priors": priors, "indices": indices})
    return cases


def library_run(model: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """The library's rows on one stream, and the served row's class per image."""
    from lade_tf.layers import adjust_logits_numpy

    factories = {TRACKER_ROW: lambda: pt.ForgettingTracker(model["source"], model["reference"])}
    rows = op.run_stream(model, case["priors"], case["indices"], factories)
    priors = rows[SERVED_ROW]["prior"]
    class_ids = np.stack(
        [
            adjust_logits_numpy(
                model["test_logits"][chosen], model["counts"], model["loss"], p
            ).argmax(axis=1)
            for chosen, p in zip(case["indices"], priors)
        ]
    )
    return {"rows": rows, "class_ids": class_ids, "priors": priors}


def served_run(
    predict: Callable[[np.ndarray], dict], model: dict[str, Any], case: dict[str, Any]
) -> dict[str, Any]:
    """One request per step; each step's prior recovered from the answer's logits
    (logits - f - b = log p + a constant)."""
    class_ids, priors = [], []
    started = time.perf_counter()
    for chosen in case["indices"]:
        outputs = predict(model["test_images"][chosen])
        class_ids.append(np.asarray(outputs["class_ids"]))
        shift = (np.asarray(outputs["logits"], np.float64) - model["test_logits"][chosen]).mean(0)
        shift -= model["offset"] + shift.max()
        priors.append(np.exp(shift) / np.exp(shift).sum())
    seconds = time.perf_counter() - started
    return {"class_ids": np.stack(class_ids), "priors": np.stack(priors), "seconds": seconds}


def compared(served: dict, library: dict, model: dict, case: dict) -> dict[str, Any]:
    """Accuracy of both, images predicted differently, and the largest prior difference."""
    labels = model["test_labels"][case["indices"]]
    return {
        "accuracy": float((served["class_ids"] == labels).mean()),
        "library_accuracy": float((library["class_ids"] == labels).mean()),
        "images_differing": int((served["class_ids"] != library["class_ids"]).sum()),
        "images": int(labels.size),
        "max_prior_difference": float(np.abs(served["priors"] - library["priors"]).max()),
        "requests_per_second": len(labels) / served["seconds"],
    }


def run_streams(server, model: dict, cases: list[dict]) -> dict[str, Any]:
    """Every case through the server's streams (REST, and gRPC for GRPC_CASE) and through the
    client tracker, beside the library's rows."""
    from serving.grpc_client import GrpcServingClient
    from serving.prior_tracking_client import PriorTrackingClient
    from serving.rest_client import ServingClient

    results = {}
    for index, case in enumerate(cases):
        key = f"{case['pair']} / {case['process']}"
        library = library_run(model, case)
        fixed = {n: library["rows"][n]["accuracy"] for n in (*op.FIXED, op.ORACLE, TRACKER_ROW)}
        paths = {
            PATHS[0]: ServingClient(server.url, "lade", prior_stream=f"rest-{index}"),
            PATHS[2]: PriorTrackingClient(ServingClient(server.url, "lade")),
        }
        if (case["pair"], case["process"]) == GRPC_CASE:
            paths[PATHS[1]] = GrpcServingClient(server.grpc_target, "lade", prior_stream="grpc")
        entry = {"library": library["rows"][SERVED_ROW]["accuracy"], "rows": fixed}
        for path, client in paths.items():
            entry[path] = compared(
                served_run(client.predict_images, model, case), library, model, case
            )
            log(
                f"{key} {path}: {100 * entry[path]['accuracy']:.2f} % (library "
                f"{100 * entry['library']:.2f}), {entry[path]['images_differing']} images differ"
            )
        results[key] = entry
    return results


# --------------------------------------------------------------------------- cost


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90))}


def cost_at_batch_one(server, model: dict, rounds: int) -> dict[str, Any]:
    """Latency of one-image requests, the paths taking turns: a plain predict with a prior,
    a server stream, the client tracker (REST), and plain vs stream over gRPC; and the tracking
    step alone (the server's histogram; the client's `track_batch` + `reprior` timed here)."""
    from serving.grpc_client import GrpcServingClient
    from serving.prior_tracking_client import PriorTrackingClient
    from serving.rest_client import ServingClient
    from serving.tracked_prior import TrackerConstants, make_tracker, reprior, track_batch

    images, source = model["test_images"], model["source"]
    plain_rest = ServingClient(server.url, "lade")
    plain_grpc = GrpcServingClient(server.grpc_target, "lade")
    calls = {
        "plain predict, REST": lambda x: plain_rest.predict_images(x, source),
        "server stream, REST": ServingClient(
            server.url, "lade", prior_stream="cost"
        ).predict_images,
        "client tracker, REST": PriorTrackingClient(
            ServingClient(server.url, "lade")
        ).predict_images,
        "plain predict, gRPC": lambda x: plain_grpc.predict_images(x, source),
        "server stream, gRPC": GrpcServingClient(
            server.grpc_target, "lade", prior_stream="cost-grpc"
        ).predict_images,
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    before = tracking_histogram(server)
    for step in range(rounds + 20):
        image = images[step % len(images)][None]
        for name, call in calls.items():
            started = time.perf_counter()
            call(image)
            if step >= 20:  # the first rounds warm connections and caches
                times[name].append(time.perf_counter() - started)
    after = tracking_histogram(server)
    constants = TrackerConstants.from_class_info(plain_rest.class_info())
    tracker, local = make_tracker("forgetting", constants), []
    sent = np.full(constants.num_classes, 1 / constants.num_classes, np.float32)
    for step in range(rounds):
        outputs = plain_rest.predict_images(images[step % len(images)][None], sent)
        started = time.perf_counter()
        reprior(outputs, sent, track_batch(tracker, outputs["posteriors"], constants, True))
        local.append(time.perf_counter() - started)
    latency = {name: percentiles(values) for name, values in times.items()}
    for name in ("server stream, REST", "client tracker, REST"):
        latency[name]["over_plain_p50_ms"] = (
            latency[name]["p50_ms"] - latency["plain predict, REST"]["p50_ms"]
        )
    grpc = latency["server stream, gRPC"]
    grpc["over_plain_p50_ms"] = grpc["p50_ms"] - latency["plain predict, gRPC"]["p50_ms"]
    count = after[1] - before[1]
    return {
        "rounds": rounds,
        "latency": latency,
        "server_tracking_mean_ms": 1000 * (after[0] - before[0]) / count if count else None,
        "client_tracking": percentiles(local),
    }


def tracking_histogram(server) -> tuple[float, float]:
    """(sum, count) of the server's prior_stream_tracking_seconds histogram."""
    from tests.serving.serving_support import metric

    name = ":lade:serving:prior_stream_tracking_seconds"
    return metric(server.url, f"{name}_sum"), metric(server.url, f"{name}_count")


# --------------------------------------------------------------------------- main


def latest_version(base: Path) -> Path:
    versions = [p for p in base.iterdir() if p.name.isdigit()]
    if not versions:
        raise SystemExit(f"error: --model-base-path {base}: no numbered SavedModel version")
    return max(versions, key=lambda p: int(p.name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="online_prior_serving", help="result file stem")
    parser.add_argument("--steps", type=int, help=f"steps per stream (default {FULL['steps']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE['steps']} steps; small fault figures"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/lade-online-prior-serving"),
        help="the exported model, state directories and server logs",
    )
    parser.add_argument(
        "--training-dir",
        type=Path,
        default=Path("/tmp/lade-prior-estimation"),
        help="prior_estimation.py's work directory: its data and trained models are reused",
    )
    parser.add_argument("--model-base-path", type=Path, help="an exported model instead")
    parser.add_argument("--images", type=Path, help="with --model-base-path: images, labels")
    parser.add_argument("--output", type=Path, default=harness.RESULTS_DIR)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from online_prior_serving_faults import (
        keys_server,
        kill_and_resume,
        many_keys,
        server_process,
    )

    from lade_tf.process_settings import configure_tensorflow

    configure_tensorflow()
    sizes = dict(SMOKE if args.smoke else FULL)
    sizes["steps"] = args.steps or sizes["steps"]
    if (args.model_base_path is None) != (args.images is None):
        raise SystemExit("error: give --model-base-path and --images together")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started, machine = time.time(), harness.machine_description()
    if args.model_base_path is None:
        base, images_file = default_model(args.work_dir, args.training_dir, args.seed)
    else:
        base, images_file = args.model_base_path.resolve(), args.images
    with np.load(images_file) as arrays:
        images, labels = arrays["images"].astype(np.float32), arrays["labels"].astype(np.int64)
    model = library_model(latest_version(base), images, labels)
    cases = stream_cases(model, sizes["steps"], args.seed)
    server = server_process(base, args.work_dir, "streams")
    try:
        log(f"server at {server.url}; {len(cases)} streams of {sizes['steps']} steps")
        streams = run_streams(server, model, cases)
        cost = cost_at_batch_one(server, model, sizes["cost_rounds"])
    finally:
        server.stop()

    def on_restart(restarted, state: Path) -> dict[str, Any]:
        """With saves before each answer: the cost at batch 1 again, and the many keys."""
        return {
            "cost": cost_at_batch_one(restarted, model, sizes["cost_rounds"]),
            "keys": many_keys(restarted, state, images, sizes["keys"], sizes["cap"]),
        }

    kill_after = sizes["kill_after"]
    immediate = kill_and_resume(base, args.work_dir, model, kill_after, 0, sizes["cap"], on_restart)
    faults = {"kill": [immediate["kill"]], "keys": [immediate["keys"]]}
    if not args.smoke:
        background = kill_and_resume(base, args.work_dir, model, kill_after, BACKGROUND_SAVE_MS)
        faults["kill"].append(background["kill"])
        uncapped = keys_server(base, args.work_dir, images, sizes["keys"], sizes["keys"])
        faults["keys"].append(uncapped)
    report = {
        "config": {
            **sizes,
            "images_per_step": IMAGES_PER_STEP,
            "seed": args.seed,
            "smoke": args.smoke,
            "model": str(base),
            "test_images": len(labels),
            "served_row": SERVED_ROW,
            "grpc_case": list(GRPC_CASE),
        },
        "streams": streams,
        "cost": cost,
        "cost_saving_state": immediate["cost"],
        "faults": faults,
        "seconds": time.time() - started,
        "machine": machine,
        "load_average_after": list(os.getloadavg()),
    }
    print("\n".join(write_results(report, args.output, args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
