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

    .venv/bin/python benchmarks/serving.py --abuse --before-tree /tmp/serving-before

measures the server under abuse instead, each figure on the server of --before-tree (a checkout of
the code before, e.g. `git worktree add /tmp/serving-before <commit>`) and of this checkout, both
with default flags: a start-up with a corrupt newest version (and with only a corrupt one), a
5,000-image (35 MB) and a 1,024-image request with the p99 of status calls and 1-image predicts
sent meanwhile, resident memory over ten maximum-size requests, the server's open descriptors
while 50 connections stall mid-header, what 50 clients leaving mid-body do to the log and the
metrics, and the answers to a NaN and a negative prior. Writes serving_abuse.json, .md and .png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
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
        try:
            connection.request(
                "POST", self.path, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # The server closes keep-alive connections idle past its header timeout.
            connection.close()
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


def start_server(
    base: Path, extra: list[str], log_path: Path, tree: Path = REPO_ROOT
) -> tuple[subprocess.Popen, str, str]:
    """The server process of the checkout `tree`, its REST root URL and its gRPC host:port."""
    process = launch_server(base, extra, log_path, tree)
    grpc_port = process.args[process.args.index("--port") + 1]
    for line in process.stdout:
        match = re.search(r"(http://\S+)", line)
        if match:  # the REST line comes last, once both APIs answer
            return process, match.group(1), f"127.0.0.1:{grpc_port}"
    raise RuntimeError(f"server exited; see {log_path}")


def launch_server(base: Path, extra: list[str], log_path: Path, tree: Path) -> subprocess.Popen:
    """`python -m serving.server` of the checkout `tree` on free ports (stdout piped)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            "--model-base-path",
            str(base),
            "--model-name",
            "bench",
            "--port",
            str(free_port()),
            "--rest_api_port",
            str(free_port()),
            *extra,
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(log_path, "w"),
        text=True,
    )


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


# ---------------------------------------------------------------------------------------------
# Abuse: the figures of a server under abuse (corrupt newest version at start-up, huge requests,
# stalled and vanished clients, bad priors), each measured on the server of --before-tree (the
# code before) and of this checkout (after), both with their default flags.

HUGE_IMAGES = 5000  # the request that stalled everyone: 35 MB of JSON
MAX_IMAGES = 1024  # the largest request the server takes by default (--max-request-batch-size)
CORRUPT_GRAPH = b"\x0a\x05serve" + b"\xff" * 64


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (a decoding process), in MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total = 0.0
    for one in pids:
        with open(f"/proc/{one}/status") as handle:
            total += sum(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return total / 1024


def post(url: str, body: bytes, timeout: float = 300) -> tuple[int, dict, float]:
    """(HTTP status, JSON body, seconds) of one predict POST of model "bench"."""
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/v1/models/bench:predict", data=body)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    return status, json.loads(payload), time.perf_counter() - started


def images_body(images: int, prior: list | None = None) -> bytes:
    batch, priors = make_inputs(images, 1)[0]
    if prior is not None:
        priors = np.tile(np.float32(prior), (images, 1))
    return json.dumps(
        {"inputs": {"images": batch.tolist(), "target_prior": priors.tolist()}}
    ).encode()


def latencies_during(url: str, body: bytes) -> dict:
    """Status calls and 1-image predicts, sent back to back from two threads while `body` is
    answered: its status and seconds, and their p50 / p99 / max in ms."""
    small = images_body(1)
    done = threading.Event()
    times: dict[str, list[float]] = {"status": [], "small_predict": []}

    def keep_asking(kind: str) -> None:
        while not done.is_set():
            started = time.perf_counter()
            if kind == "status":
                urllib.request.urlopen(f"{url}/v1/models/bench", timeout=300).read()
            else:
                post(url, small)
            times[kind].append(time.perf_counter() - started)
            time.sleep(0.01)

    with ThreadPoolExecutor(2) as pool:
        askers = [pool.submit(keep_asking, kind) for kind in times]
        time.sleep(0.3)
        status, _, seconds = post(url, body)
        done.set()
        for asker in askers:
            asker.result()
    row = {"status_code": status, "seconds": seconds, "body_mb": len(body) / 1e6}
    for kind, values in times.items():
        ms = np.asarray(values) * 1e3
        row[kind] = {
            "calls": len(ms),
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 99)},
            "max_ms": float(ms.max()),
        }
    return row


def startup_figures(tree: Path, bench: Path, workdir: Path) -> dict:
    """A start-up with a corrupt newest version beside good ones, and with only a corrupt one."""
    beside = workdir / "corrupt-newest"
    for version in ("1", "2"):
        shutil.copytree(bench / "1", beside / version)
    (beside / "3").mkdir()
    (beside / "3" / "saved_model.pb").write_bytes(CORRUPT_GRAPH)
    process, url, _ = start_server(beside, [], workdir / "startup.log", tree)
    try:
        codes = [post(url, images_body(1))[0] for _ in range(10)]
        status = json.loads(urllib.request.urlopen(f"{url}/v1/models/bench", timeout=60).read())
    finally:
        stop_server(process)
    alone = workdir / "only-corrupt"
    (alone / "1").mkdir(parents=True)
    (alone / "1" / "saved_model.pb").write_bytes(CORRUPT_GRAPH)
    started = time.perf_counter()
    process = launch_server(alone, [], workdir / "only-corrupt.log", tree)
    ready = any("http://" in line for line in process.stdout)  # False once the process exits
    stop_server(process)
    return {
        "corrupt_newest_predict_codes": sorted(set(codes)),
        "corrupt_newest_versions": {
            s["version"]: s["state"] for s in status["model_version_status"]
        },
        "corrupt_version_error_code": status["model_version_status"][0]["status"]["error_code"],
        "only_corrupt": "up, answering 404" if ready else f"exit {process.returncode}",
        "only_corrupt_seconds": time.perf_counter() - started,
        "only_corrupt_last_line": (workdir / "only-corrupt.log")
        .read_text()
        .strip()
        .splitlines()[-1],
    }


def abuse_figures(tree: Path, bench: Path, workdir: Path, slow_seconds: float) -> dict:
    """Every figure of one server (the checkout `tree`) serving `bench`."""
    workdir.mkdir(parents=True, exist_ok=True)
    figures = startup_figures(tree, bench, workdir)
    monitoring = workdir / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    log_path = workdir / "server.log"
    process, url, _ = start_server(
        bench, ["--monitoring_config_file", str(monitoring)], log_path, tree
    )
    try:
        post(url, images_body(1))
        figures["rss_start_mib"] = rss_mib(process.pid)
        huge = images_body(HUGE_IMAGES)
        largest = huge if post(url, huge)[0] == 200 else images_body(MAX_IMAGES)
        figures["largest_accepted_images"] = HUGE_IMAGES if largest is huge else MAX_IMAGES
        if largest is not huge:
            post(url, largest)
        rss = [rss_mib(process.pid)]
        for _ in range(9):
            post(url, largest)
            rss.append(rss_mib(process.pid))
        figures["rss_over_ten_largest_mib"] = rss
        figures["huge_request"] = latencies_during(url, huge)
        figures["max_size_request"] = latencies_during(url, images_body(MAX_IMAGES))
        for name, prior in (
            ("nan_prior", [float("nan")] + [0.1] * 9),
            ("negative_prior", [-0.1] + [0.1] * 9),
        ):
            status, body, _ = post(url, images_body(1, prior))
            figures[name] = f"{status}: {' '.join(body['error'].split())[:160]}"
        figures.update(vanishing_clients(url, log_path))
        figures["open_descriptors_under_50_stalled_heads"] = stalled_heads(
            url, process.pid, slow_seconds
        )
    finally:
        stop_server(process)
    return figures


def vanishing_clients(url: str, log_path: Path) -> dict:
    """50 clients that send half a body and go away: what the log and the metrics make of it."""
    host, port = url.split("//")[1].rsplit(":", 1)
    seen = len(log_path.read_text().splitlines())
    counted_before = request_counts(url)
    for _ in range(50):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"[" * 20000
            )
    time.sleep(3)
    counted = request_counts(url)
    lines = log_path.read_text().splitlines()[seen:]
    access = [line for line in lines if '"POST /v1/models/bench:predict' in line]
    return {
        "vanished_log_lines": len(lines),
        "vanished_error_lines": sum(" ERROR " in line for line in lines),
        "vanished_tracebacks": sum("Traceback" in line for line in lines),
        "vanished_access_codes": sorted({line.split('" ')[1].split()[0] for line in access}),
        "vanished_metric_status": {
            status: count - counted_before.get(status, 0)
            for status, count in counted.items()
            if count > counted_before.get(status, 0)
        },
    }


def request_counts(url: str) -> dict[str, float]:
    """Status code -> requests counted so far by the server's Prometheus metrics."""
    with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=60) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for status, value in re.findall(r'request_count_total\{[^}]*status="(\w+)"[^}]*\} (\S+)', text):
        counts[status] = counts.get(status, 0.0) + float(value)
    return counts


def stalled_heads(url: str, pid: int, seconds: float) -> dict[str, int]:
    """Open descriptors of the server while 50 connections send half a request head and stall."""
    host, port = url.split("//")[1].rsplit(":", 1)
    counts = {"idle": len(os.listdir(f"/proc/{pid}/fd"))}
    sockets = []
    for _ in range(50):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: x\r\nContent-")
        sockets.append(sock)
    started = time.monotonic()
    for at in (1, 5, 15, seconds):
        time.sleep(max(0.0, started + at - time.monotonic()))
        counts[f"{at:g}s"] = len(os.listdir(f"/proc/{pid}/fd"))
    for sock in sockets:
        sock.close()
    return counts


def run_abuse(args: argparse.Namespace) -> dict:
    from lade_tf.export import export_serving_model
    from lade_tf.priors import long_tail_counts

    workdir = Path(tempfile.mkdtemp(prefix="lade-serving-abuse-"))
    bench = workdir / "bench"
    export_serving_model(
        build_model(),
        bench / "1",
        class_counts=long_tail_counts(6000, NUM_CLASSES, 100),
        train_loss="ce",
    )
    trees = {"after": REPO_ROOT}
    if args.before_tree:
        trees = {"before": args.before_tree, **trees}
    report = {
        "model": f"small_cnn {IMAGE_SHAPE} -> {NUM_CLASSES} logits, 127.0.0.1, default flags",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_start": os.getloadavg(),
    }
    for name, tree in trees.items():
        print(f"measuring {name} ({tree}) ...", flush=True)
        report[name] = abuse_figures(Path(tree), bench, workdir / name, args.slow_seconds)
    report["load_average_at_end"] = os.getloadavg()
    return report


def abuse_rows(f: dict) -> dict[str, str]:
    """The table of one server's figures `f`: figure -> cell."""

    def during(request: dict, kind: str) -> str:
        return f"{request[kind]['p99_ms']:.0f} / {request[kind]['max_ms']:.0f}"

    huge, largest, rss = f["huge_request"], f["max_size_request"], f["rss_over_ten_largest_mib"]
    stalled = f["open_descriptors_under_50_stalled_heads"]
    return {
        "start-up, newest of 3 versions corrupt: predict codes": f["corrupt_newest_predict_codes"],
        "start-up, newest of 3 versions corrupt: states": f["corrupt_newest_versions"],
        "corrupt version's error code": f["corrupt_version_error_code"],
        "start-up, only version corrupt": (
            f"{f['only_corrupt']} ({f['only_corrupt_seconds']:.0f} s)"
        ),
        f"{HUGE_IMAGES}-image request (35 MB): code, seconds": (
            f"{huge['status_code']}, {huge['seconds']:.1f} s"
        ),
        f"status p99 / max ms during the {HUGE_IMAGES}-image request": during(huge, "status"),
        f"1-image predict p99 / max ms during the {HUGE_IMAGES}-image request": during(
            huge, "small_predict"
        ),
        f"{MAX_IMAGES}-image request (7 MB): code, seconds": (
            f"{largest['status_code']}, {largest['seconds']:.1f} s"
        ),
        f"status p99 / max ms during the {MAX_IMAGES}-image request": during(largest, "status"),
        f"1-image predict p99 / max ms during the {MAX_IMAGES}-image request": during(
            largest, "small_predict"
        ),
        "RSS MiB at start": f"{f['rss_start_mib']:.0f}",
        "RSS MiB after the 1st and 10th largest accepted request": (
            f"{rss[0]:.0f}, {rss[-1]:.0f} ({f['largest_accepted_images']} images)"
        ),
        "server descriptors, 50 stalled request heads": ", ".join(
            f"{at}: {count}" for at, count in stalled.items()
        ),
        "50 clients gone mid-body: log lines, ERROR lines, tracebacks": (
            f"{f['vanished_log_lines']}, {f['vanished_error_lines']}, {f['vanished_tracebacks']}"
        ),
        "50 clients gone mid-body: access-log codes": f["vanished_access_codes"],
        "50 clients gone mid-body: counted statuses": f["vanished_metric_status"],
        "NaN prior": f["nan_prior"],
        "negative prior": f["negative_prior"],
    }


def abuse_markdown(report: dict) -> str:
    names = [name for name in ("before", "after") if name in report]
    rows = {name: abuse_rows(report[name]) for name in names}
    start, end = report["load_average_at_start"][0], report["load_average_at_end"][0]
    lines = [
        f"{report['model']}; {report['machine']['cpus']} CPUs, load average {start:.1f} at "
        f"start, {end:.1f} at end",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label in rows[names[0]]:
        cells = [str(rows[name][label]).replace("|", "/") for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_abuse(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in ("before", "after") if name in report]
    figure, (latency, memory, descriptors) = plt.subplots(1, 3, figsize=(15, 4.5))
    for offset, name in enumerate(names):
        figures = report[name]
        cells = [
            (figures[request][kind]["p99_ms"])
            for request in ("huge_request", "max_size_request")
            for kind in ("status", "small_predict")
        ]
        latency.bar(np.arange(4) + offset * 0.4, cells, 0.4, label=name)
        memory.plot(
            [figures["rss_start_mib"], *figures["rss_over_ten_largest_mib"]],
            marker="o",
            label=f"{name} ({figures['largest_accepted_images']} images)",
        )
        counts = figures["open_descriptors_under_50_stalled_heads"]
        descriptors.plot(list(counts), list(counts.values()), marker="o", label=name)
    latency.set_xticks(
        np.arange(4) + 0.2,
        [
            f"status\n{HUGE_IMAGES} img",
            f"predict\n{HUGE_IMAGES} img",
            f"status\n{MAX_IMAGES} img",
            f"predict\n{MAX_IMAGES} img",
        ],
    )
    latency.set_yscale("log")
    latency.set_title("p99 ms of other requests during a large one")
    memory.set_title("RSS MiB: start, then after each of ten largest accepted requests")
    descriptors.set_title("server descriptors, 50 stalled request heads")
    for axis in (latency, memory, descriptors):
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
    parser.add_argument(
        "--abuse",
        action="store_true",
        help="measure the server under abuse instead (serving_abuse.json / .md / .png)",
    )
    parser.add_argument(
        "--before-tree",
        type=Path,
        help="with --abuse: a checkout of the code before (e.g. `git worktree add "
        "/tmp/serving-before <commit>`), measured first as the 'before' column",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=66.0,
        help="with --abuse: how long 50 stalled request heads are watched",
    )
    args = parser.parse_args()
    if args.abuse:
        report = run_abuse(args)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "serving_abuse.json").write_text(json.dumps(report, indent=2))
        markdown = abuse_markdown(report)
        (args.output_dir / "serving_abuse.md").write_text(markdown)
        plot_abuse(report, args.output_dir / "serving_abuse.png")
        print(markdown)
        print(f"wrote {args.output_dir}/serving_abuse.json, .md and .png")
        return
    report = run(args)
    report["rest_vs_grpc"] = rest_vs_grpc(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "serving.json").write_text(json.dumps(report, indent=2))
    plot(report, args.output_dir / "serving.png")
    print_table(report)
    print(f"\nwrote {args.output_dir / 'serving.json'} and {args.output_dir / 'serving.png'}")


if __name__ == "__main__":
    main()
