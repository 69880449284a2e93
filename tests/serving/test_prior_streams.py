"""Prior streams of the embedded server (serving.prior_streams), over real HTTP and gRPC on
127.0.0.1 against servers started in this process: the answers are the library's tracker replayed
on the same posteriors, concurrent requests lose no update, the stream cap evicts or refuses, a
new version starts fresh, state is read and reset over REST, metrics stay bounded, and every
misuse gets a clear 4xx."""

from __future__ import annotations

import http.client as http_client
import json
import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
import pytest

from lade_tf import prior_tracking as pt
from lade_tf.export import read_serving_metadata
from serving.grpc_client import GrpcServingClient
from serving.model_manager import ModelConfig, ModelManager
from serving.monitoring import MonitoringOptions
from serving.prior_stream_registry import PriorStreamOptions
from serving.prior_streams import STREAM_HEADER, UPDATES_HEADER
from serving.rest_client import ServingClient, ServingRequestError
from serving.server_core import ServerOptions
from tests.serving.prior_stream_support import post, predict_stream
from tests.serving.serving_support import InProcessServer, http, metric, metric_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
METRICS = "/monitoring/prometheus/metrics"


def start(
    configs: list[ModelConfig], poll: float = 0.0, batching=None, **streams
) -> InProcessServer:
    """A server in this process with prior streams (off=True: none) and Prometheus metrics."""
    return InProcessServer(
        ModelManager(configs),
        ServerOptions(
            file_system_poll_wait_seconds=poll,
            batching=batching,
            prior_streams=None if streams.get("off") else PriorStreamOptions(**streams),
            monitoring=MonitoringOptions(prometheus_path=METRICS),
        ),
    )


@pytest.fixture(scope="module")
def server(tracked_digits, tmp_path_factory):
    """Models "lade" (the tracked digits model) and "other" (a copy), streams in a state dir."""
    state = tmp_path_factory.mktemp("stream_state")
    base = tracked_digits["base"]
    running = start(
        [ModelConfig("lade", str(base)), ModelConfig("other", str(base))],
        state_dir=str(state),
        metrics_max_streams=2,
    )
    yield running
    running.stop()


def test_a_stream_is_answered_as_the_library_tracker_replayed(server, tracked_digits):
    """Each answer: the uniform-prior logits moved to prior_for_batch of the forgetting
    tracker (constants from the model's metadata, float64) by the inference rule."""
    metadata = read_serving_metadata(tracked_digits["base"] / "1")["prior_estimation"]
    reference = np.array(metadata["reference_prior"])
    tracker = pt.ForgettingTracker(metadata["prior_centre"], reference)
    images = tracked_digits["test_x"]
    plain = ServingClient(server.url, "lade")
    for step, rows in enumerate([slice(0, 1), slice(1, 9), slice(9, 30), slice(30, 31)]):
        status, outputs, updates = predict_stream(server.url, images[rows], "replay")
        assert (status, updates) == (200, step + 1)
        posteriors = np.array(outputs["posteriors"])
        prior = pt.prior_for_batch(posteriors, tracker.prior, reference)
        tracker.update(posteriors)
        uniform = plain.predict_images(images[rows], np.full(10, 0.1))
        expected = uniform["logits"] + np.log(prior) - np.log(0.1)
        np.testing.assert_allclose(outputs["logits"], expected, atol=2e-5)
        np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=1))
        np.testing.assert_allclose(outputs["posteriors"], uniform["posteriors"])
    state = ServingClient(server.url, "lade", prior_stream="replay").prior_stream_state()
    assert state["updates"] == 4 and state["images"] == 31 and state["tracker"] == "forgetting"
    np.testing.assert_allclose(state["prior"], tracker.prior, atol=1e-6)


def test_grpc_metadata_names_the_same_streams(server, tracked_digits):
    images = tracked_digits["test_x"][100:104]
    client = GrpcServingClient(server.grpc_target, "lade", prior_stream="via-grpc")
    first = client.predict_images(images)
    assert client.prior_stream_updates == 1
    status, outputs, updates = predict_stream(server.url, images, "via-grpc")
    assert (status, updates) == (200, 2)
    replay = GrpcServingClient(server.grpc_target, "lade", prior_stream="via-grpc-2")
    np.testing.assert_allclose(replay.predict_images(images)["logits"], first["logits"])
    with pytest.raises(ServingRequestError, match="INVALID_ARGUMENT: input 'target_prior' must"):
        client.predict(
            {"images": images, "target_prior": np.full((4, 10), 0.1, np.float32)},
            prior_stream="via-grpc",
        )


def test_encoded_images_in_rows_follow_a_stream_like_raw_pixels(server, tracked_digits):
    """The README's curl: predict_encoded, row format, b64 images only, the stream header."""
    import base64
    import io

    from PIL import Image

    images = tracked_digits["test_x"][60:62]
    rows = []
    for image in images:
        png = io.BytesIO()
        Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(png, format="PNG")
        rows.append({"b64": base64.b64encode(png.getvalue()).decode("ascii")})
    payload = {"signature_name": "predict_encoded", "instances": rows}
    status, body, headers = post(f"{server.url}/v1/models/lade:predict", payload, "encoded")
    assert status == 200 and headers[UPDATES_HEADER] == "1"
    raw = predict_stream(server.url, images, "raw-pixels")[1]
    assert [p["class_ids"] for p in body["predictions"]] == raw["class_ids"]
    np.testing.assert_allclose([p["logits"] for p in body["predictions"]], raw["logits"], atol=1e-5)


def test_misuse_gets_a_clear_4xx(server, tracked_digits):
    url, image = server.url, tracked_digits["test_x"][:1].tolist()
    predict = f"{url}/v1/models/lade:predict"
    prior = [[0.1] * 10]
    cases = [
        ({"inputs": {"images": image}}, "bad name", 400, "prior stream name 'bad name'"),
        ({"inputs": {"images": image}}, "." * 3, 400, "starting with a letter or digit"),
        ({"inputs": {"images": image, "target_prior": prior}}, "s", 400, "must not be sent"),
        ({"instances": [{"images": image[0], "target_prior": prior[0]}]}, "s", 400, "not both"),
        (
            {"signature_name": "predict_uniform", "inputs": {"images": image}},
            "s",
            400,
            "signature 'predict_uniform' cannot follow a prior stream",
        ),
        (
            {"signature_name": "estimate_prior", "inputs": {"images": image}},
            "s",
            400,
            "needs a 'target_prior' input and logits and posteriors outputs",
        ),
    ]
    for payload, stream, code, message in cases:
        status, body, _ = post(predict, payload, stream)
        assert status == code and message in body["error"], (stream, body)
    assert predict_stream(url, np.array(image), "bound")[0] == 200
    status, body, _ = post(f"{url}/v1/models/other:predict", {"inputs": {"images": image}}, "bound")
    assert status == 400
    assert body["error"] == (
        "prior stream 'bound' follows the classes of model 'lade', not of model 'other': name "
        "another stream, or reset this one (DELETE /v1/models/lade/prior_streams/bound)"
    )
    assert predict_stream(url, np.array(image), "bound", model="nope")[0] == 404
    assert http(f"{url}/v1/models/lade/prior_streams/never")[0] == 404
    assert http(f"{url}/v1/models/lade/prior_streams", method="DELETE")[0] == 400
    connection = http_client.HTTPConnection(urlparse(url).netloc, timeout=30)
    body = json.dumps({"inputs": {"images": image}})
    headers = [(STREAM_HEADER, "a"), (STREAM_HEADER, "b")]
    connection.putrequest("POST", "/v1/models/lade:predict")
    for name, value in [*headers, ("Content-Length", str(len(body)))]:
        connection.putheader(name, value)
    connection.endheaders(body.encode())
    response = connection.getresponse()
    assert response.status == 400 and b"one header expected, 2 sent" in response.read()


def test_state_is_listed_read_and_reset_per_version(server, tracked_digits):
    images = tracked_digits["test_x"][40:43]
    client = ServingClient(server.url, "lade", prior_stream="to-reset")
    client.predict_images(images)
    client.predict_images(images)
    listed = http(f"{server.url}/v1/models/lade/prior_streams")[1]
    entry = next(s for s in listed["prior_streams"] if s["stream"] == "to-reset")
    assert entry["versions"]["1"]["updates"] == 2 and entry["versions"]["1"]["images"] == 6
    assert listed["max_streams"] == 1000
    state = client.prior_stream_state()
    assert state["model_spec"] == {"name": "lade", "version": "1"}
    assert state["class_names"] == [str(c) for c in range(10)] and len(state["prior"]) == 10
    assert state["state"]["kind"] == "forgetting" and state["unsaved_updates"] == 0
    versioned = ServingClient(server.url, "lade", version=1, prior_stream="to-reset")
    assert versioned.reset_prior_stream()["reset_versions"] == [1]
    with pytest.raises(ServingRequestError, match="has no state for model 'lade' version 1"):
        client.prior_stream_state()
    client.predict_images(images)
    assert client.prior_stream_updates == 1
    assert client.reset_prior_stream() == {
        "model_spec": {"name": "lade"},
        "stream": "to-reset",
        "reset_versions": [1],
    }
    with pytest.raises(ServingRequestError, match="HTTP 404: prior stream 'to-reset' not found"):
        client.prior_stream_state()


def test_metrics_count_streams_and_export_only_the_most_updated(server, tracked_digits):
    image = tracked_digits["test_x"][:1]
    for index, times in enumerate([3, 5, 1]):
        for _ in range(times):
            predict_stream(server.url, image, f"metered-{index}")
    samples = metric_samples(server.url, METRICS)
    streams = {s.labels["stream"] for s in samples if s.name == ":lade:serving:prior_stream_prior"}
    assert len(streams) == 2  # --prior_stream_metrics_max_streams 2: the two most updated
    assert metric(server.url, ":lade:serving:prior_streams", model_name="lade") >= 3
    updates = ":lade:serving:prior_stream_updates_total"
    assert metric(server.url, updates, model_name="lade", version="1") >= 9
    assert metric(server.url, ":lade:serving:prior_stream_tracking_seconds_count") >= 9


def test_concurrent_requests_of_one_stream_lose_no_update(tracked_digits):
    """8 clients x 200 one-image requests on one stream: 1,600 updates, each answered with its
    own count, and the window tracker (order-independent: MAP-EM over every image) ends where
    the same posteriors fed one by one leave it."""
    running = start(
        [ModelConfig("lade", str(tracked_digits["base"]))],
        tracker="window",
        tracker_options=(("window", 2000),),
    )
    images = tracked_digits["test_x"]
    counts, posteriors, failures = [], [], []

    def client(worker: int) -> None:
        connection = http_client.HTTPConnection(urlparse(running.url).netloc, timeout=60)
        try:
            for step in range(200):
                image = images[(worker * 200 + step) % len(images)][None].tolist()
                body = json.dumps({"inputs": {"images": image}}).encode()
                connection.request("POST", "/v1/models/lade:predict", body, {STREAM_HEADER: "busy"})
                response = connection.getresponse()
                payload = json.loads(response.read())
                if response.status != 200:
                    failures.append(payload)
                    continue
                counts.append(int(response.getheader(UPDATES_HEADER)))
                posteriors.append(payload["outputs"]["posteriors"][0])
        finally:
            connection.close()

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
        assert failures == []
        assert sorted(counts) == list(range(1, 1601))
        state = ServingClient(running.url, "lade", prior_stream="busy").prior_stream_state()
    finally:
        running.stop()
    assert state["updates"] == 1600 and state["images"] == 1600
    sent = np.asarray(posteriors, np.float64)
    sent /= sent.sum(axis=1, keepdims=True)
    kept = np.asarray(state["state"]["recent"])
    np.testing.assert_allclose(sorted(map(tuple, kept)), sorted(map(tuple, sent)), atol=1e-7)
    sequential = pt.WindowTracker(
        state["state"]["source_prior"], state["state"]["reference_prior"], window=2000
    )
    for row in sent:
        sequential.update(row[None])
    np.testing.assert_allclose(state["prior"], sequential.prior, atol=1e-9)


def test_cors_lets_a_browser_name_a_stream_and_read_its_count(tracked_digits):
    running = InProcessServer(
        ModelManager([ModelConfig("lade", str(tracked_digits["base"]))]),
        ServerOptions(
            file_system_poll_wait_seconds=0.0,
            enable_cors_support=True,
            prior_streams=PriorStreamOptions(),
        ),
    )
    try:
        preflight = urllib.request.Request(
            f"{running.url}/v1/models/lade:predict",
            method="OPTIONS",
            headers={"Origin": "https://example.org"},
        )
        with urllib.request.urlopen(preflight, timeout=30) as response:
            allowed = response.headers
        _, _, headers = post(
            f"{running.url}/v1/models/lade:predict",
            {"inputs": {"images": tracked_digits["test_x"][:1].tolist()}},
            "browser",
        )
    finally:
        running.stop()
    assert allowed["Access-Control-Allow-Headers"] == f"Content-Type, {STREAM_HEADER}"
    assert allowed["Access-Control-Allow-Methods"] == "POST, GET, DELETE"
    assert headers["Access-Control-Expose-Headers"] == UPDATES_HEADER
    assert headers[UPDATES_HEADER] == "1"


def test_batched_requests_of_several_streams_update_each_its_own(tracked_digits):
    """Four streams' requests merged into batches by --enable_batching: every stream ends
    where the library tracker fed its own posteriors leaves it."""
    from serving.batching import BatchingOptions

    batching = BatchingOptions(max_batch_size=32, batch_timeout_micros=20_000)
    running = start([ModelConfig("lade", str(tracked_digits["base"]))], batching=batching)
    images, seen = tracked_digits["test_x"], {}

    def stream(index: int) -> None:
        client = ServingClient(running.url, "lade", prior_stream=f"batched-{index}")
        rows = [client.predict_images(images[index * 40 + 3 * s :][:3]) for s in range(6)]
        seen[index] = np.concatenate([r["posteriors"] for r in rows]).reshape(6, 3, 10)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(stream, range(4)))
        merged = running.server.core.batching_stats()[("lade", 1, "serving_default")]
        states = {
            i: ServingClient(running.url, "lade").prior_stream_state(f"batched-{i}") for i in seen
        }
    finally:
        running.stop()
    assert merged["requests"] == 24 and merged["batches"] < 24
    for index, posteriors in seen.items():
        replay = pt.ForgettingTracker(
            states[index]["state"]["source_prior"], states[index]["state"]["reference_prior"]
        )
        for batch in posteriors:
            replay.update(batch)
        assert states[index]["updates"] == 6
        np.testing.assert_allclose(states[index]["prior"], replay.prior, atol=1e-9)


def test_the_stream_cap_evicts_the_least_recently_used_or_refuses(tracked_digits, tmp_path):
    base, image = str(tracked_digits["base"]), tracked_digits["test_x"][:1]
    state = tmp_path / "state"
    running = start([ModelConfig("lade", base)], max_streams=3, state_dir=str(state))
    try:
        for name in ["s0", "s1", "s2", "s0", "s3", "s4"]:
            assert predict_stream(running.url, image, name)[0] == 200
        held = sorted(p.stem for p in state.iterdir())
        assert held == ["s0", "s3", "s4"]  # s0 was used again: s1 and s2 went first
        assert http(f"{running.url}/v1/models/lade/prior_streams/s1")[0] == 404
        evicted = metric(running.url, ":lade:serving:prior_stream_evictions_total", reason="lru")
        assert evicted == 2
        assert predict_stream(running.url, image, "s1")[2] == 1  # back, from the start
    finally:
        running.stop()
    refusing = start([ModelConfig("lade", base)], max_streams=2, when_full="refuse")
    try:
        for name in ["r0", "r1"]:
            assert predict_stream(refusing.url, image, name)[0] == 200
        status, body, _ = predict_stream(refusing.url, image, "r2")
        assert status == 429
        assert body["error"].startswith("prior stream 'r2' would be stream 3 of at most 2")
        assert predict_stream(refusing.url, image, "r1")[0] == 200  # held streams still work
        ServingClient(refusing.url, "lade").reset_prior_stream("r0")
        assert predict_stream(refusing.url, image, "r2")[0] == 200
    finally:
        refusing.stop()


def test_a_new_version_starts_fresh_and_the_old_ones_tracker_goes(tracked_digits, tmp_path):
    base = tmp_path / "lade"
    shutil.copytree(tracked_digits["base"] / "1", base / "1")
    image = tracked_digits["test_x"][:2]
    running = start([ModelConfig("lade", str(base))], poll=0.2)
    try:
        for expected in (1, 2, 3):
            assert predict_stream(running.url, image, "kept")[2] == expected
        shutil.copytree(base / "1", base / "2")
        deadline = time.monotonic() + 60
        status = ServingClient(running.url, "lade").status
        while {v["version"]: v["state"] for v in status()["model_version_status"]} != {
            "2": "AVAILABLE",
            "1": "END",
        }:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert predict_stream(running.url, image, "kept")[2] == 1
        listed = http(f"{running.url}/v1/models/lade/prior_streams")[1]["prior_streams"]
        assert [(s["stream"], list(s["versions"])) for s in listed] == [("kept", ["2"])]
        unloaded = ":lade:serving:prior_stream_evictions_total"
        assert metric(running.url, unloaded, reason="version_unloaded") == 1
    finally:
        running.stop()


def test_a_server_without_streams_refuses_a_request_naming_one(tracked_digits):
    running = start([ModelConfig("lade", str(tracked_digits["base"]))], off=True)
    try:
        status, body, _ = predict_stream(running.url, tracked_digits["test_x"][:1], "s")
        assert status == 400 and body["error"].startswith("prior streams are off on this server")
        assert http(f"{running.url}/v1/models/lade/prior_streams")[0] == 400
        client = GrpcServingClient(running.grpc_target, "lade", prior_stream="s")
        with pytest.raises(ServingRequestError, match="FAILED_PRECONDITION: prior streams are off"):
            client.predict_images(tracked_digits["test_x"][:1])
    finally:
        running.stop()
