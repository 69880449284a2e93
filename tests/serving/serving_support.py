"""Helpers shared by the serving tests: in-process signature calls, HTTP, server processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SERVER_START_SECONDS = 300  # TensorFlow's import alone can take a minute on a busy 2-core box
MAX_REQUEST_BYTES = 1_000_000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now (the server binds it a moment later; TF Serving's
    --port and --rest_api_port have no "any free port" value)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m serving.client ARGS` run to completion (output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "serving.client", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def run_signature(loaded, name: str, **inputs) -> dict[str, np.ndarray]:
    """Calls a signature of an in-process SavedModel with NumPy inputs."""
    import tensorflow as tf

    outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def http(
    url: str,
    payload=None,
    *,
    data: bytes | None = None,
    method: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict]:
    """One HTTP call; returns (status, parsed JSON body)."""
    if payload is not None:
        data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"raw": body.decode("utf-8", "replace")}


def metric_samples(url: str, path: str = "/monitoring/prometheus/metrics") -> list:
    """Every sample the server's Prometheus endpoint exposes now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}{path}", timeout=60) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric(url: str, name: str, **labels) -> float:
    """The sum of a metric's samples with these label values."""
    return sum(
        sample.value
        for sample in metric_samples(url)
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class ServerProcess:
    """`python -m serving.server ...` as a child process on 127.0.0.1, its gRPC and REST APIs
    on free ports (`grpc_target`, `url`)."""

    def __init__(self, args: list[str], log_path: Path, rest: bool = True, env: dict | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")
        self.grpc_target = f"127.0.0.1:{free_port()}"
        ports = ["--port", self.grpc_target.rsplit(":", 1)[1]]
        ports += ["--rest_api_port", str(free_port()) if rest else "0"]
        self._ready_pattern = r"(http://\S+)" if rest else r"gRPC ModelServer at (\S+)"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", *ports, *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._url: str | None = None
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            match = re.search(self._ready_pattern, line)
            if match and not self._ready.is_set():
                self._url = match.group(1)
                self._ready.set()

    @property
    def url(self) -> str:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self._ready.wait(1.0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; log:\n{self.log_text()[-4000:]}")
        return self._url

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class InProcessServer:
    """`serving.model_server.start_server` in this process (REST and gRPC on free ports of
    127.0.0.1), its event loop in a thread: for file systems that live in this process, such as
    ram://, and for reading the server's state (`call_on_loop`)."""

    def __init__(self, manager, options, timeout: float = 120.0):
        import asyncio
        import dataclasses

        from serving.model_server import start_server

        self.timeout = timeout
        options = dataclasses.replace(
            options, host="127.0.0.1", port=free_port(), rest_api_port=free_port()
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self._call(start_server(manager, options))
        self.url = self.server.rest_url
        self.grpc_target = self.server.grpc_address

    def _call(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def call_on_loop(self, function):
        """`function()` run on the server's event loop (its state belongs to that thread)."""

        async def call():
            return function()

        return self._call(call())

    def stop(self) -> None:
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(self.timeout)
        self.loop.close()
