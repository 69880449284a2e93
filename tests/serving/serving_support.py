"""Helpers shared by the serving tests: in-process signature calls, HTTP, server processes."""

from __future__ import annotations

import json
import os
import re
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


class ServerProcess:
    """`python -m serving.server ...` as a child process, on 127.0.0.1 and a free port."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--port", "0", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            match = re.search(r"(http://\S+)", line)
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
