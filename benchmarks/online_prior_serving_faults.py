"""The faults of `benchmarks/online_prior_serving.py`, on real `python -m serving.server`
processes: SIGKILL mid-stream and a restart on the same state directory (saves before each answer,
and in the background every 100 ms), truncated and garbage state files, and many distinct stream
keys under a cap (resident memory and state files)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import harness
import numpy as np

from lade_tf import prior_tracking as pt

log = harness.progress_logger("online_prior_serving")
KILLED_STREAM = "killed"
BAD_FILES = {"truncated": "cut", "garbage": "noise"}
RESUMED_REQUESTS = 50


def server_process(base: Path, work: Path, name: str, *flags: str):
    """`python -m serving.server` on free ports with prior streams and metrics (not started
    until its `url` is read)."""
    from tests.serving.serving_support import ServerProcess

    monitoring = work / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    args = ["--model-base-path", str(base), "--model-name", "lade"]
    args += ["--file-system-poll-wait-seconds", "0", "--monitoring_config_file", str(monitoring)]
    return ServerProcess([*args, "--enable_prior_streams", *flags], work / f"{name}.log")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def post_stream(connection: http.client.HTTPConnection, image: np.ndarray, stream: str):
    """One streamed one-image predict on a keep-alive connection: (status, body, updates)."""
    from serving.prior_streams import STREAM_HEADER, UPDATES_HEADER

    body = json.dumps({"inputs": {"images": image[None].tolist()}}).encode()
    connection.request("POST", "/v1/models/lade:predict", body, {STREAM_HEADER: stream})
    response = connection.getresponse()
    document = json.loads(response.read())
    updates = response.getheader(UPDATES_HEADER)
    return response.status, document, None if updates is None else int(updates)


def connect(url: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urlparse(url).netloc, timeout=60)


def kill_and_resume(
    base: Path,
    work: Path,
    model: dict[str, Any],
    kill_after: int,
    save_ms: int,
    cap: int | None = None,
    then: Callable[[Any, Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A stream of one-image requests; SIGKILL after `kill_after` answers; a restart on the
    same state directory; what the stream resumed from, and its next answers against the
    library's replay of the stream. With saves before each answer (`save_ms` 0), two other
    streams' files are damaged before the restart. The servers hold at most `cap` streams
    (default: the server's default); `then(server, state_dir)` measures more on the restarted
    server.

    Returns:
        {"kill": the kill figures, **then's figures}.
    """
    from serving.rest_client import ServingClient

    mode = "immediate" if save_ms == 0 else f"background-{save_ms}ms"
    state = work / f"state-{mode}"
    shutil.rmtree(state, ignore_errors=True)
    flags = ["--prior_stream_state_dir", str(state), "--prior_stream_save_interval_ms"]
    flags += [str(save_ms), *(["--prior_stream_max_streams", str(cap)] if cap else [])]
    first = server_process(base, work, f"kill-{mode}-first", *flags)
    images = model["test_images"]
    damage = save_ms == 0
    if damage:
        for name in BAD_FILES.values():
            with closing(connect(first.url)) as connection:
                post_stream(connection, images[0], name)
    killed = kill_mid_stream(first, images, kill_after)
    if damage:
        whole = (state / "cut.json").read_bytes()
        (state / "cut.json").write_bytes(whole[: len(whole) // 2])
        (state / "noise.json").write_bytes(os.urandom(200))
    second = server_process(base, work, f"kill-{mode}-second", *flags)
    try:
        client = ServingClient(second.url, "lade", prior_stream=KILLED_STREAM)
        restored = client.prior_stream_state()
        result = {
            "save_interval_ms": save_ms,
            **killed,
            "restored_updates": restored["updates"],
            "lost_updates": killed["answered_before_kill"] - restored["updates"],
            **resumed_like_the_library(client, model, restored),
        }
        if damage:
            result["bad_files"] = bad_file_reports(second, state, images[0])
        more = then(second, state) if then else {}
    finally:
        second.stop()
    log(
        f"SIGKILL ({mode}): {killed['answered_before_kill']} answered, "
        f"{result['restored_updates']} restored, {result['images_differing_after_restart']} of "
        f"{RESUMED_REQUESTS} next answers differ"
    )
    return {"kill": result, **more}


def kill_mid_stream(server, images: np.ndarray, kill_after: int) -> dict[str, Any]:
    """One-image requests on KILLED_STREAM over one connection; after `kill_after` answers a
    SIGKILL is sent while the next request runs. The last update count answered, and the rate."""
    answered: list[int] = []
    connection = connect(server.url)
    started = time.perf_counter()
    while len(answered) < kill_after:
        image = images[len(answered) % len(images)]
        status, _, updates = post_stream(connection, image, KILLED_STREAM)
        assert status == 200, status
        answered.append(updates)
    threading.Timer(0.0, server.process.kill).start()
    try:
        while True:
            image = images[len(answered) % len(images)]
            answered.append(post_stream(connection, image, KILLED_STREAM)[2])
    except (OSError, http.client.HTTPException, ValueError):
        pass  # the server is gone
    elapsed = time.perf_counter() - started
    server.process.wait(30)
    server.stop()
    return {"answered_before_kill": answered[-1], "requests_per_second": len(answered) / elapsed}


def resumed_like_the_library(client, model: dict[str, Any], restored: dict) -> dict[str, Any]:
    """The restored prior against the library tracker fed the same first requests, and the next
    RESUMED_REQUESTS answers against the library continuing from there."""
    from lade_tf.layers import adjust_logits_numpy

    count = len(model["test_labels"])
    tracker = pt.ForgettingTracker(model["source"], model["reference"])
    for step in range(restored["updates"]):
        tracker.update(model["test_posteriors"][step % count][None])
    gap = float(np.abs(np.array(restored["prior"]) - tracker.prior).max())
    differing = 0
    for step in range(restored["updates"], restored["updates"] + RESUMED_REQUESTS):
        index = step % count
        served = client.predict_images(model["test_images"][index][None])["class_ids"][0]
        posteriors = model["test_posteriors"][index][None]
        prior = pt.prior_for_batch(posteriors, tracker.prior, model["reference"])
        tracker.update(posteriors)
        logits = adjust_logits_numpy(
            model["test_logits"][index][None], model["counts"], model["loss"], prior
        )
        differing += int(served != logits.argmax())
    return {"restored_prior_gap": gap, "images_differing_after_restart": differing}


def bad_file_reports(server, state: Path, image: np.ndarray) -> dict[str, Any]:
    """What the restarted server did with the damaged files: its log lines, the files moved
    aside, and the streams starting fresh."""
    from serving.rest_client import ServingClient, ServingRequestError

    lines = [line for line in server.log_text().splitlines() if "unreadable" in line]
    reports = {}
    for damage, name in BAD_FILES.items():
        client = ServingClient(server.url, "lade", prior_stream=name)
        try:
            client.prior_stream_state()
            held = True
        except ServingRequestError:
            held = False
        client.predict_images(image[None])
        reports[damage] = {
            "log": next((line for line in lines if f"{name}.json is unreadable" in line), None),
            "moved_aside": (state / f"{name}.json.unreadable").exists(),
            "held_after_restart": held,
            "updates_after_one_request": client.prior_stream_updates,
        }
    return reports


def keys_server(base: Path, work: Path, images: np.ndarray, keys: int, cap: int) -> dict[str, Any]:
    """`many_keys` on a server of its own with stream cap `cap` and a state directory."""
    state = work / f"state-keys-{cap}"
    shutil.rmtree(state, ignore_errors=True)
    flags = ["--prior_stream_max_streams", str(cap), "--prior_stream_state_dir", str(state)]
    server = server_process(base, work, f"keys-{cap}", *flags)
    try:
        return many_keys(server, state, images, keys, cap)
    finally:
        server.stop()


def many_keys(
    server, state: Path, images: np.ndarray, keys: int, cap: int, threads: int = 4
) -> dict[str, Any]:
    """`keys` distinct streams, one one-image request each, on a server holding at most `cap`
    streams: its resident memory every tenth of the way; streams held, state files and LRU
    evictions at the end."""
    from tests.serving.serving_support import metric

    pid = server.process.pid
    with closing(connect(server.url)) as connection:  # warm: the model and one stream
        post_stream(connection, images[0], "warm-up")
    samples = [(0, rss_mib(pid))]
    step = max(1, keys // 10)
    local = threading.local()

    def send(index: int) -> int:
        if not hasattr(local, "connection"):
            local.connection = connect(server.url)
        return post_stream(local.connection, images[index % len(images)], f"key-{index}")[0]

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, keys, step):
            statuses = list(pool.map(send, range(start, min(keys, start + step))))
            assert set(statuses) == {200}, set(statuses)
            samples.append((min(keys, start + step), rss_mib(pid)))
    seconds = time.perf_counter() - started
    held = json.loads(http_get(server.url, "/v1/models/lade/prior_streams"))["streams_held"]
    evictions = metric(server.url, ":lade:serving:prior_stream_evictions_total", reason="lru")
    files = len([p for p in state.iterdir() if p.suffix == ".json"])
    log(
        f"{keys} keys, cap {cap}: {held} held, {files} files, RSS {samples[0][1]:.0f} -> "
        f"{samples[-1][1]:.0f} MiB"
    )
    return {
        "keys": keys,
        "cap": cap,
        "streams_held": held,
        "state_files": files,
        "lru_evictions": evictions,
        "rss_mib": samples,
        "requests_per_second": keys / seconds,
    }


def http_get(url: str, path: str) -> bytes:
    with closing(connect(url)) as connection:
        connection.request("GET", path)
        return connection.getresponse().read()
