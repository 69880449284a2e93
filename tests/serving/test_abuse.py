"""The server under abuse, as a real process on 127.0.0.1 over real HTTP and gRPC.

One server starts with a corrupt newest version (3) beside two good ones, small limits
(--max-request-batch-size 64, header and body timeouts of 1 s and 2 s) and its imports traced
(PYTHONPROFILEIMPORTTIME). Against it: the start-up fallback and how it is reported, requests over
the batch-size limit, a large body being decoded while others are answered, memory over repeated
maximum-size requests, stalled request heads and bodies, clients leaving mid-body, NaN and
negative priors. A second server, whose only version is corrupt, must refuse to start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from tests.serving.serving_support import (
    REPO_ROOT,
    InProcessServer,
    ServerProcess,
    free_port,
    http,
    metric,
    metric_samples,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_ROWS = 64
HEADER_SECONDS = 1.0
BODY_SECONDS = 2.0
PRIOR = [0.1] * 10
CORRUPT_GRAPH = b"\x0a\x05serve" + b"\xff" * 64  # a field, then bytes no protobuf parses


def columns(rows: int, prior=PRIOR) -> dict:
    images = np.random.default_rng(rows).integers(0, 256, (rows, 8, 8, 1)).tolist()
    return {"inputs": {"images": images, "target_prior": [prior] * rows}}


def predict(url: str, payload, timeout: float = 60.0) -> tuple[int, dict]:
    return http(f"{url}/v1/models/lade:predict", payload, timeout=timeout)


@pytest.fixture(scope="module")
def abused(tmp_path_factory, export_base) -> ServerProcess:
    root = tmp_path_factory.mktemp("abuse")
    base = root / "lade"
    for version in ("1", "2"):
        shutil.copytree(export_base / "1", base / version)
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(CORRUPT_GRAPH)
    monitoring = root / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    server = ServerProcess(
        [
            "--model-base-path",
            str(base),
            "--model-name",
            "lade",
            "--monitoring_config_file",
            str(monitoring),
            "--max-request-batch-size",
            str(MAX_ROWS),
            "--rest-api-header-timeout-seconds",
            str(HEADER_SECONDS),
            "--rest-api-body-timeout-seconds",
            str(BODY_SECONDS),
        ],
        root / "server.log",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    server.url  # noqa: B018 - waits for the start-up line
    yield server
    server.stop()


def grpc_predict(target: str, inputs: dict, timeout: float = 60.0):
    """PredictionService/Predict of model "lade": the response, or the grpc.RpcError."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lade"
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            return error


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the decoding process), in MiB."""
    pids = [pid]
    children = f"/proc/{pid}/task/{pid}/children"
    if os.path.exists(children):
        with open(children) as handle:
            pids += [int(child) for child in handle.read().split()]
    total = 0.0
    for one in pids:
        with open(f"/proc/{one}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def abused_base(server: ServerProcess) -> str:
    """The model base path of the `abused` server."""
    return str(server.log_path.parent / "lade")


def test_a_corrupt_newest_version_at_start_up_gives_way_to_the_newest_that_loads(abused):
    url = abused.url
    status, body = http(f"{url}/v1/models/lade")
    assert status == 200
    states = {s["version"]: s for s in body["model_version_status"]}
    assert set(states) == {"3", "2"} and states["2"]["state"] == "AVAILABLE"
    assert states["3"]["state"] == "END"
    assert states["3"]["status"] == {
        "error_code": "DATA_LOSS",
        "error_message": "Loading servable: {name: lade version: 3} failed: DATA_LOSS: Can't "
        f"parse {abused_base(abused)}/3/saved_model.pb as binary proto",
    }
    assert http(f"{url}/v1/models/lade/metadata")[1]["model_spec"]["version"] == "2"
    assert predict(url, columns(2))[0] == 200
    attempts = ":tensorflow:cc:saved_model:load_attempt_count_total"
    assert metric(url, attempts, status="fail") == 1
    assert metric(url, attempts, model_path=f"{abused_base(abused)}/2", status="success") == 1
    assert (
        "model lade: serving version 2, the newest that loads; version 3 failed to load"
        in abused.log_text()
    )


def test_a_server_none_of_whose_versions_loads_refuses_to_start(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "saved_model.pb").write_bytes(CORRUPT_GRAPH)
    ports = ["--port", str(free_port()), "--rest_api_port", str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--model-base-path", str(tmp_path / "m"), *ports],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 model(s) did not become available: model 'default': no version loads "
        "(Loading servable: {name: default version: 1} failed: DATA_LOSS: Can't parse "
        f"{tmp_path}/m/1/saved_model.pb as binary proto)"
    )
    assert "Exporting HTTP/REST API" not in result.stdout


def test_requests_over_the_batch_size_limit_are_refused_naming_it(abused):
    limit_text = (
        f"Request batch size {MAX_ROWS + 1} (input 'images') is larger than the maximum of "
        f"{MAX_ROWS} rows per request (--max-request-batch-size)"
    )
    assert predict(abused.url, columns(MAX_ROWS))[0] == 200
    status, body = predict(abused.url, columns(MAX_ROWS + 1))
    assert status == 400 and body["error"].startswith(limit_text)
    rows = columns(MAX_ROWS + 1)["inputs"]
    instances = [{"images": i, "target_prior": p} for i, p in zip(*rows.values())]
    status, body = predict(abused.url, {"instances": instances})
    assert status == 400 and f"Request batch size {MAX_ROWS + 1} ('instances')" in body["error"]
    error = grpc_predict(abused.grpc_target, rows)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(limit_text)


def test_a_large_body_being_decoded_does_not_stall_other_requests(abused):
    """A body whose JSON takes a while to read (one row, and 1.5 million small lists under an
    ignored key): status calls and small predicts are answered while it is decoded, none of
    them waiting even half the time the decoding takes."""
    from serving.json_request import parse_json

    url = abused.url
    large = b'{"padding": [' + b"[0.5]," * 1_500_000 + b"0]," + json.dumps(columns(1)).encode()[1:]
    started = time.perf_counter()
    parse_json(large)
    decode_seconds = time.perf_counter() - started  # what a request decoded in-line waits
    small = json.dumps(columns(1)).encode()
    done = threading.Event()
    latencies: list[float] = []

    def keep_asking() -> None:
        calls = 0
        while not done.is_set() or calls < 10:
            started = time.perf_counter()
            if calls % 2:
                assert http(f"{url}/v1/models/lade")[0] == 200
            else:
                assert http(f"{url}/v1/models/lade:predict", data=small)[0] == 200
            latencies.append(time.perf_counter() - started)
            calls += 1
            time.sleep(0.02)

    with ThreadPoolExecutor(1) as pool:
        asking = pool.submit(keep_asking)
        status, body = http(f"{url}/v1/models/lade:predict", data=large, timeout=120)
        done.set()
        asking.result()
    assert status == 200 and len(body["outputs"]["class_ids"]) == 1
    assert max(latencies) < decode_seconds / 2, (max(latencies), decode_seconds)


def test_memory_stays_flat_over_maximum_size_requests(abused):
    for _ in range(2):
        assert predict(abused.url, columns(MAX_ROWS))[0] == 200
    start = rss_mib(abused.process.pid)
    for _ in range(10):
        assert predict(abused.url, columns(MAX_ROWS))[0] == 200
    assert rss_mib(abused.process.pid) - start < 25


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_stalled_request_heads_are_closed_after_the_header_timeout(abused):
    port = int(abused.url.rsplit(":", 1)[1])
    http(f"{abused.url}/v1/models/lade")
    before = open_descriptors(abused.process.pid)
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for sock in stalled:
        sock.sendall(b"POST /v1/models/lade:predict HTTP/1.1\r\nHost: x\r\nContent-")
    sent = time.monotonic()
    deadline = sent + HEADER_SECONDS + 10
    for sock in stalled:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        assert sock.recv(100) == b""  # closed by the server, nothing answered
        sock.close()
    assert time.monotonic() - sent >= HEADER_SECONDS * 0.8  # by the timeout, not at once
    deadline = time.monotonic() + 5
    while open_descriptors(abused.process.pid) > before:  # none of the 20 is left open
        assert time.monotonic() < deadline, (open_descriptors(abused.process.pid), before)
        time.sleep(0.1)


def test_a_stalled_body_gets_408_and_its_connection_closed(abused):
    port = int(abused.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/models/lade:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        sock.settimeout(BODY_SECONDS + 15)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "error": f"Request body not received within {BODY_SECONDS:g} s "
        "(--rest-api-body-timeout-seconds); the connection is closed"
    }


def test_clients_leaving_mid_body_are_counted_as_cancelled_without_tracebacks(abused):
    url = abused.url
    port = int(url.rsplit(":", 1)[1])
    cancelled = {"API": "predict", "entrypoint": "REST", "status": "CANCELLED"}
    before = metric(url, ":tensorflow:serving:request_count_total", **cancelled)
    internal = metric(url, ":tensorflow:serving:request_count_total", status="INTERNAL")
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/models/lade:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"[" * 20000
            )
    deadline = time.monotonic() + 30
    while metric(url, ":tensorflow:serving:request_count_total", **cancelled) < before + 10:
        assert time.monotonic() < deadline, abused.log_text()[-3000:]
        time.sleep(0.2)
    assert metric(url, ":tensorflow:serving:request_count_total", status="INTERNAL") == internal
    log_lines = abused.log_text().splitlines()
    assert sum('"POST /v1/models/lade:predict HTTP/1.1" 499 0' in line for line in log_lines) >= 10
    assert not [
        line
        for line in log_lines
        if "Traceback" in line
        or " ERROR " in line
        and "Loading servable: {name: lade version: 3}" not in line
    ]


def test_nan_and_negative_priors_are_refused_naming_the_input_and_the_value(abused):
    nan_body = json.dumps(columns(1, prior=[0.1, float("nan")] + [0.1] * 8)).encode()
    status, body = http(f"{abused.url}/v1/models/lade:predict", data=nan_body)
    assert status == 400
    assert body["error"] == (
        "input tensor 'target_prior' has NaN or infinite entries: NaN at [0,1]; expected "
        "finite, non-negative class weights with a positive sum in every row"
    )
    rows = columns(2, prior=[0.1] * 9 + [-0.5])["inputs"]
    error = grpc_predict(abused.grpc_target, rows)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "input tensor 'target_prior' has negative entries: -0.5 at [0,9]"
    )


def test_the_server_process_never_imports_lade_tf(abused):
    assert predict(abused.url, columns(3))[0] == 200
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in abused.log_text().splitlines()
        if line.startswith("import time:")
    ]
    assert "tensorflow" in imported and "serving.model_server" in imported
    assert not [name for name in imported if name.split(".")[0] == "lade_tf"]


def test_a_grpc_call_its_client_gives_up_on_is_counted_as_cancelled(export_base):
    """The call waits in a batch that closes only when full (in 30 s); its client's deadline
    comes first, and the server counts the call as CANCELLED, not as a failure."""
    from serving.batching import BatchingOptions
    from serving.model_manager import ModelConfig, ModelManager
    from serving.monitoring import MonitoringOptions
    from serving.server_core import ServerOptions

    server = InProcessServer(
        ModelManager([ModelConfig(name="lade", base_path=str(export_base))]),
        ServerOptions(
            file_system_poll_wait_seconds=0.0,
            batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=30_000_000),
            monitoring=MonitoringOptions(prometheus_path="/monitoring/prometheus/metrics"),
        ),
    )
    try:
        error = grpc_predict(server.grpc_target, columns(1)["inputs"], timeout=1.0)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        counted = {"API": "Predict", "entrypoint": "GRPC"}
        deadline = time.monotonic() + 10
        while metric(server.url, ":tensorflow:serving:request_count_total", **counted) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        samples = [
            s
            for s in metric_samples(server.url)
            if s.name == ":tensorflow:serving:request_count_total"
        ]
        assert [(s.labels["status"], s.value) for s in samples] == [("CANCELLED", 1.0)]
    finally:
        server.stop()
