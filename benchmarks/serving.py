"""Serving benchmark: REST vs gRPC vs the in-process SavedModel call on the same inputs.

    .venv/bin/python benchmarks/serving.py              # small_cnn, 28x28x1, 10 classes
    .venv/bin/python benchmarks/serving.py --requests 400 --no-batching

For batch sizes 1 and 32 and concurrency 1 and 8 it measures per-call latency (p50, p99) and
throughput of (a) `loaded.signatures["serving_default"](...)` in this process, (b) the same
signature through `serving.server` over HTTP on 127.0.0.1 (columnar JSON, one keep-alive
connection per client thread; the time includes the client's JSON encoding and decoding), (c) the
same server's gRPC API (PredictionService/Predict through the tensorflow_serving.apis stubs, one
channel; the time includes the client's tf.make_tensor_proto / tf.make_ndarray), and (d) both APIs
of a server with --enable-batching. The paths take turns, in several rounds per cell, so the load
of a shared machine affects them alike. Prints a table with the overhead ratios and a REST-vs-gRPC
table, writes benchmarks/results/serving.json and benchmarks/results/serving.png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def build_model():
    """The project's small_cnn (about 66 k parameters) with its initial weights."""
    import keras

    from lade_tf.models import small_cnn

    keras.utils.set_random_seed(0)
    return small_cnn(NUM_CLASSES, IMAGE_SHAPE)


def make_inputs(batch: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` distinct (images, target_prior) pairs of one batch size."""
    rng = np.random.default_rng(seed + batch)
    return [
        (
            rng.integers(0, 256, (batch, *IMAGE_SHAPE)).astype(np.float32),
            rng.dirichlet(np.ones(NUM_CLASSES), size=batch).astype(np.float32),
        )
        for _ in range(count)
    ]


def timed_calls(call, inputs: list, concurrency: int) -> tuple[list[float], float]:
    """Per-call latencies (s) and wall time of `call(item)` over `inputs` from N threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(items):
        local = []
        for item in items:
            started = time.perf_counter()
            call(item)
            local.append(time.perf_counter() - started)
        with lock:
            latencies.extend(local)

    shards = [inputs[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, shards))
    return latencies, time.perf_counter() - started


def summary(latencies: list[float], wall: float, batch: int) -> dict:
    times = np.asarray(latencies) * 1e3
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "requests_per_s": len(times) / wall,
        "images_per_s": len(times) * batch / wall,
        "requests": len(times),
    }


class RestCaller:
    """POSTs columnar predict requests, one keep-alive connection per thread."""

    def __init__(self, url: str, model: str):
        match = re.match(r"http://([^:/]+):(\d+)", url)
        self.host, self.port = match.group(1), int(match.group(2))
        self.path = f"/v1/models/{model}:predict"
        self.local = threading.local()

    def __call__(self, item) -> dict:
        images, priors = item
        body = json.dumps({"inputs": {"images": images.tolist(), "target_prior": priors.tolist()}})
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(
                self.host, self.port, timeout=120
            )
        connection.request(
            "POST", self.path, body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        payload = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload}")
        return payload["outputs"]


class GrpcCaller:
    """Predict over gRPC with the official stubs (one channel; tensors built per call)."""

    def __init__(self, target: str, model: str):
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self.tf, self.predict_pb2, self.model = tf, predict_pb2, model
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1)]
        )
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def __call__(self, item) -> dict:
        images, priors = item
        request = self.predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["images"].CopyFrom(self.tf.make_tensor_proto(images))
        request.inputs["target_prior"].CopyFrom(self.tf.make_tensor_proto(priors))
        response = self.stub.Predict(request, timeout=120)
        return {name: self.tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def free_port() -> int:
    """A port free on 127.0.0.1 now (the server's flags have no "any free port" value)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(base: Path, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str, str]:
    """The server process, its REST root URL and its gRPC host:port."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    grpc_port, rest_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--model-base-path",
            str(base),
            "--model-name",
            "bench",
            "--port",
            str(grpc_port),
            "--rest_api_port",
            str(rest_port),
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(log_path, "w"),
        text=True,
    )
    for line in process.stdout:
        match = re.search(r"(http://\S+)", line)
        if match:  # the REST line comes last, once both APIs answer
            return process, match.group(1), f"127.0.0.1:{grpc_port}"
    raise RuntimeError(f"server exited; see {log_path}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def run(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    from lade_tf.export import export_serving_model
    from lade_tf.priors import long_tail_counts

    workdir = Path(tempfile.mkdtemp(prefix="lade-serving-bench-"))
    model = build_model()
    base = workdir / "bench"
    export_serving_model(
        model, base / "1", class_counts=long_tail_counts(6000, NUM_CLASSES, 100), train_loss="ce"
    )
    loaded = tf.saved_model.load(str(base / "1"))
    signature = loaded.signatures["serving_default"]

    def in_process(item):
        images, priors = item
        outputs = signature(images=tf.constant(images), target_prior=tf.constant(priors))
        return {name: value.numpy() for name, value in outputs.items()}

    inputs = {
        batch: make_inputs(batch, args.requests if batch == 1 else args.requests // 4)
        for batch in args.batch_sizes
    }
    callers = {"in-process": in_process}
    servers = [("", [])]
    if args.batching:
        config = workdir / "batching.config"
        config.write_text(
            "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 1000 }\n"
            "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
        )
        servers.append(
            ("+batching", ["--enable-batching", "--batching-parameters-file", str(config)])
        )
    processes = []
    results = []
    try:
        for suffix, extra in servers:
            process, url, target = start_server(base, extra, workdir / f"server{suffix}.log")
            processes.append(process)
            callers[f"REST{suffix}"] = RestCaller(url, "bench")
            callers[f"gRPC{suffix}"] = GrpcCaller(target, "bench")
            for name in (f"REST{suffix}", f"gRPC{suffix}"):
                served = callers[name](inputs[args.batch_sizes[0]][0])
                np.testing.assert_allclose(
                    np.asarray(served["probabilities"]),
                    in_process(inputs[args.batch_sizes[0]][0])["probabilities"],
                    rtol=1e-5,
                    atol=1e-7,
                )
        for batch in args.batch_sizes:
            for concurrency in args.concurrency:
                for call in callers.values():
                    for item in inputs[batch][: args.warmup]:
                        call(item)
                pooled = {name: ([], 0.0) for name in callers}
                # Paths take turns in every round, so a busy machine's drift hits them alike.
                for round_index in range(args.rounds):
                    chunk = inputs[batch][round_index :: args.rounds]
                    for name, call in callers.items():
                        latencies, wall = timed_calls(call, chunk, concurrency)
                        pooled[name] = (pooled[name][0] + latencies, pooled[name][1] + wall)
                for name, (latencies, wall) in pooled.items():
                    results.append(
                        {
                            "path": name,
                            "batch": batch,
                            "concurrency": concurrency,
                            **summary(latencies, wall, batch),
                        }
                    )
                    print(
                        f"{name:<14} batch {batch:>2} concurrency {concurrency}: "
                        f"p50 {results[-1]['p50_ms']:.2f} ms",
                        flush=True,
                    )
    finally:
        for process in processes:
            stop_server(process)
    baseline = {(r["batch"], r["concurrency"]): r for r in results if r["path"] == "in-process"}
    for row in results:
        reference = baseline[(row["batch"], row["concurrency"])]
        row["p50_overhead_x"] = row["p50_ms"] / reference["p50_ms"]
        row["throughput_fraction"] = row["requests_per_s"] / reference["requests_per_s"]
    return {
        "model": f"small_cnn {IMAGE_SHAPE} -> {NUM_CLASSES} logits, "
        f"{model.count_params()} parameters",
        "signature": "serving_default (images, target_prior)",
        "request_format": "REST: columnar JSON ('inputs'), keep-alive HTTP/1.1; gRPC: "
        "PredictRequest TensorProtos (typed value fields in responses); both on 127.0.0.1",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
            "tensorflow": tf.__version__,
        },
        "results": results,
    }


def print_table(report: dict) -> None:
    print(f"\n{report['model']}; {report['request_format']}")
    print(
        f"machine: {report['machine']['cpus']} CPUs, load average at end "
        f"{', '.join(f'{x:.1f}' for x in report['machine']['load_average_at_end'])}"
    )
    header = (
        f"{'path':<14}{'batch':>6}{'conc':>6}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}"
        f"{'img/s':>10}{'p50 x':>8}{'thr frac':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in sorted(report["results"], key=lambda r: (r["batch"], r["concurrency"])):
        print(
            f"{r['path']:<14}{r['batch']:>6}{r['concurrency']:>6}{r['p50_ms']:>10.2f}"
            f"{r['p99_ms']:>10.2f}{r['requests_per_s']:>10.1f}{r['images_per_s']:>10.0f}"
            f"{r['p50_overhead_x']:>8.1f}{r['throughput_fraction']:>10.2f}"
        )
    print("p50 x: path p50 / in-process p50; thr frac: path throughput / in-process throughput")
    comparison = rest_vs_grpc(report)
    print("\nREST vs gRPC (same server)")
    header = (
        f"{'server':<12}{'batch':>6}{'conc':>6}{'REST p50':>10}{'gRPC p50':>10}"
        f"{'REST req/s':>12}{'gRPC req/s':>12}{'gRPC speed-up':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in comparison:
        print(
            f"{row['server']:<12}{row['batch']:>6}{row['concurrency']:>6}"
            f"{row['rest_p50_ms']:>10.2f}{row['grpc_p50_ms']:>10.2f}"
            f"{row['rest_requests_per_s']:>12.1f}{row['grpc_requests_per_s']:>12.1f}"
            f"{row['grpc_p50_speedup_x']:>14.1f}x"
        )


def rest_vs_grpc(report: dict) -> list[dict]:
    """One row per server and cell: REST and gRPC p50 and requests/s side by side."""
    rows = {(r["path"], r["batch"], r["concurrency"]): r for r in report["results"]}
    comparison = []
    for suffix, server in (("", "plain"), ("+batching", "batching")):
        for (path, batch, concurrency), rest in sorted(rows.items(), key=lambda i: i[0][1:]):
            grpc_row = rows.get((f"gRPC{suffix}", batch, concurrency))
            if path != f"REST{suffix}" or grpc_row is None:
                continue
            comparison.append(
                {
                    "server": server,
                    "batch": batch,
                    "concurrency": concurrency,
                    "rest_p50_ms": rest["p50_ms"],
                    "grpc_p50_ms": grpc_row["p50_ms"],
                    "rest_requests_per_s": rest["requests_per_s"],
                    "grpc_requests_per_s": grpc_row["requests_per_s"],
                    "grpc_p50_speedup_x": rest["p50_ms"] / grpc_row["p50_ms"],
                }
            )
    return comparison


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    paths = list(dict.fromkeys(r["path"] for r in results))
    cells = list(dict.fromkeys((r["batch"], r["concurrency"]) for r in results))
    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(paths)
    for index, name in enumerate(paths):
        rows = {(r["batch"], r["concurrency"]): r for r in results if r["path"] == name}
        x = np.arange(len(cells)) + index * width
        latency_axis.bar(x, [rows[c]["p50_ms"] for c in cells], width, label=name)
        latency_axis.errorbar(
            x,
            [rows[c]["p50_ms"] for c in cells],
            yerr=[[0] * len(cells), [rows[c]["p99_ms"] - rows[c]["p50_ms"] for c in cells]],
            fmt="none",
            ecolor="black",
            capsize=3,
        )
        throughput_axis.bar(x, [rows[c]["images_per_s"] for c in cells], width, label=name)
    labels = [f"batch {b}\nconc {c}" for b, c in cells]
    for axis, title in (
        (latency_axis, "latency p50 (bar) to p99 (whisker), ms"),
        (throughput_axis, "throughput, images/s"),
    ):
        axis.set_xticks(np.arange(len(cells)) + width * (len(paths) - 1) / 2, labels)
        axis.set_yscale("log")
        axis.set_title(title)
        axis.legend()
    figure.suptitle(report["model"])
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=240,
        help="calls per path for batch-1 cells (a quarter for larger batches)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="the paths take turns this many times per cell"
    )
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="skip the --enable-batching server",
    )
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    report = run(args)
    report["rest_vs_grpc"] = rest_vs_grpc(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "serving.json").write_text(json.dumps(report, indent=2))
    plot(report, args.output_dir / "serving.png")
    print_table(report)
    print(f"\nwrote {args.output_dir / 'serving.json'} and {args.output_dir / 'serving.png'}")


if __name__ == "__main__":
    main()
