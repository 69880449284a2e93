"""Prior streams through a real `python -m serving.server` process: a drifting stream is followed
(the served predictions beat the training prior clearly), and a SIGKILL mid-stream loses no
answered update: the restarted server resumes every stream from its state file, and reports and
starts afresh the streams whose files were truncated or overwritten with garbage."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from lade_tf import prior_tracking as pt
from serving.rest_client import ServingClient
from tests.serving.prior_stream_support import drifting_stream, predict_stream
from tests.serving.serving_support import ServerProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def stream_server(base, state, log) -> ServerProcess:
    return ServerProcess(
        [
            "--model-base-path",
            str(base),
            "--model-name",
            "lade",
            "--file-system-poll-wait-seconds",
            "0",
            "--enable-prior-streams",
            "--prior_stream_state_dir",
            str(state),
        ],
        log,
    )


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_process")
    return {"state": root / "state", "log": root / "first.log", "restart": root / "second.log"}


@pytest.fixture(scope="module")
def server(tracked_digits, paths):
    running = stream_server(tracked_digits["base"], paths["state"], paths["log"])
    running.url  # noqa: B018 - waits for the start-up line
    yield running
    running.stop()


def test_served_predictions_follow_a_drifting_stream(server, tracked_digits):
    """60 requests of 10 images whose class mix switches between head- and tail-heavy every
    ten requests: the stream's answers beat the training prior by over 3 points."""
    images, labels = tracked_digits["test_x"], tracked_digits["test_y"]
    priors, indices = drifting_stream(labels, steps=60, size=10)
    served = []
    for step, chosen in enumerate(indices):
        status, outputs, updates = predict_stream(server.url, images[chosen], "drift")
        assert (status, updates) == (200, step + 1)
        served.append(outputs["class_ids"])
    client = ServingClient(server.url, "lade")
    source = client.class_info()["source_prior"]
    flat = indices.reshape(-1)
    fixed = client.predict_images(images[flat], source)["class_ids"]
    served_accuracy = float((np.concatenate(served) == labels[flat]).mean())
    fixed_accuracy = float((fixed == labels[flat]).mean())
    assert served_accuracy > fixed_accuracy + 0.03, (served_accuracy, fixed_accuracy)
    state = ServingClient(server.url, "lade", prior_stream="drift").prior_stream_state()
    # After ten tail-heavy steps the tracked prior has left the head-heavy training prior.
    tracked_error = np.abs(np.array(state["prior"]) - priors[-1]).sum()
    assert tracked_error < 0.5 * np.abs(source - priors[-1]).sum()


def test_a_killed_server_resumes_every_stream_and_reports_bad_files(server, tracked_digits, paths):
    images = tracked_digits["test_x"]
    for name in ("cut", "noise"):
        assert predict_stream(server.url, images[:3], name)[0] == 200
    answered: list[tuple[int, list]] = []
    stop = threading.Event()

    def keep_streaming() -> None:
        step = 0
        while not stop.is_set():
            try:
                status, outputs, updates = predict_stream(server.url, images[step % 250][None], "k")
            except OSError:
                return  # the server is gone
            if status == 200:
                answered.append((updates, outputs["posteriors"][0]))
            step += 1

    thread = threading.Thread(target=keep_streaming)
    thread.start()
    while len(answered) < 40:
        assert thread.is_alive()
        threading.Event().wait(0.05)
    server.process.kill()  # SIGKILL mid-stream
    server.process.wait(30)
    stop.set()
    thread.join(60)
    acknowledged = answered[-1][0]
    assert [u for u, _ in answered] == list(range(1, acknowledged + 1))
    state = paths["state"]
    cut = (state / "cut.json").read_bytes()
    (state / "cut.json").write_bytes(cut[: len(cut) // 2])
    (state / "noise.json").write_bytes(os.urandom(100))
    restarted = stream_server(tracked_digits["base"], state, paths["restart"])
    try:
        url = restarted.url
        log = restarted.log_text()
        for name in ("cut", "noise"):
            assert f"{name}.json is unreadable (" in log and f"stream '{name}' starts fresh" in log
            assert (state / f"{name}.json.unreadable").exists()
            assert http(f"{url}/v1/models/lade/prior_streams/{name}")[0] == 404
            assert predict_stream(url, images[:3], name)[2] == 1
        resumed = ServingClient(url, "lade", prior_stream="k").prior_stream_state()
        # Saved before it was answered: nothing answered is lost; the request in flight when
        # the server died may have been saved without its answer being sent.
        assert resumed["updates"] in (acknowledged, acknowledged + 1)
        if resumed["updates"] == acknowledged:
            info = ServingClient(url, "lade").class_info()
            replay = pt.ForgettingTracker(info["source_prior"], info["reference_prior"])
            for _, posteriors in answered:
                replay.update(np.array(posteriors)[None])
            np.testing.assert_allclose(resumed["prior"], replay.prior, atol=1e-6)
        next_update = predict_stream(url, images[:1], "k")[2]
        assert next_update == resumed["updates"] + 1
    finally:
        restarted.stop()
