"""serving.prior_tracking_client: the tracker kept by the client, against a real server on
127.0.0.1 through plain TF Serving requests (REST and gRPC): its answers are the library replayed,
its state saved and loaded continues the stream exactly, and the command line keeps it in a file
(`--track-prior`) or names a server-side stream (`--prior-stream`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lade_tf import prior_tracking as pt
from lade_tf.export import read_serving_metadata
from serving.grpc_client import GrpcServingClient
from serving.model_manager import ModelConfig, ModelManager
from serving.prior_stream_registry import PriorStreamOptions
from serving.prior_tracking_client import PriorTrackingClient
from serving.rest_client import ServingClient
from serving.server_core import ServerOptions
from tests.serving.serving_support import InProcessServer, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server(tracked_digits, export_base):
    """ "lade": the tracked digits model; "plain": the CE model exported without a validation
    split (no soft confusion matrix); prior streams on, for --prior-stream."""
    running = InProcessServer(
        ModelManager(
            [
                ModelConfig("lade", str(tracked_digits["base"])),
                ModelConfig("plain", str(export_base)),
            ]
        ),
        ServerOptions(file_system_poll_wait_seconds=0.0, prior_streams=PriorStreamOptions()),
    )
    yield running
    running.stop()


def batches(images: np.ndarray) -> list[np.ndarray]:
    return [images[s] for s in (slice(0, 1), slice(1, 11), slice(11, 40), slice(40, 41))]


def test_answers_are_the_library_tracker_replayed_one_request_each(server, tracked_digits):
    metadata = read_serving_metadata(tracked_digits["base"] / "1")["prior_estimation"]
    reference = np.array(metadata["reference_prior"])
    replay = pt.ForgettingTracker(metadata["prior_centre"], reference)
    plain = ServingClient(server.url, "lade")
    tracking = PriorTrackingClient(ServingClient(server.url, "lade"))
    for batch in batches(tracked_digits["test_x"]):
        outputs = tracking.predict_images(batch)
        prior = pt.prior_for_batch(outputs["posteriors"], replay.prior, reference)
        replay.update(outputs["posteriors"])
        np.testing.assert_allclose(outputs["target_prior"], prior, atol=1e-6)
        uniform = plain.predict_images(batch, np.full(10, 0.1))["logits"]
        expected = uniform + np.log(prior) - np.log(0.1)
        np.testing.assert_allclose(outputs["logits"], expected, atol=2e-5)
        np.testing.assert_array_equal(outputs["class_ids"], expected.argmax(axis=1))
    np.testing.assert_allclose(tracking.prior, replay.prior, atol=1e-6)
    assert (tracking.updates, tracking.images) == (4, 41)


def test_grpc_gives_the_same_answers_and_the_tracked_prior_alone_is_sent(server, tracked_digits):
    rest = PriorTrackingClient(ServingClient(server.url, "lade"), batch_prior=False)
    grpc = PriorTrackingClient(GrpcServingClient(server.grpc_target, "lade"), batch_prior=False)
    for batch in batches(tracked_digits["test_x"][100:]):
        sent = rest.prior
        by_rest, by_grpc = rest.predict_images(batch), grpc.predict_images(batch)
        np.testing.assert_allclose(by_rest["target_prior"], sent, atol=1e-7)
        np.testing.assert_allclose(by_rest["logits"], by_grpc["logits"], atol=1e-5)
        np.testing.assert_array_equal(by_rest["class_ids"], by_grpc["class_ids"])
    np.testing.assert_allclose(rest.prior, grpc.prior, atol=1e-7)


def test_a_saved_state_continues_the_stream_exactly(server, tracked_digits, tmp_path):
    images = tracked_digits["test_x"]
    options = {"tracker": "window", "tracker_options": {"window": 30}}
    through = PriorTrackingClient(ServingClient(server.url, "lade"), **options)
    paused = PriorTrackingClient.load(ServingClient(server.url, "lade"), tmp_path / "s", **options)
    for batch in batches(images)[:2]:
        through.predict_images(batch)
        paused.predict_images(batch)
    paused.save(tmp_path / "s")
    assert json.loads((tmp_path / "s").read_text())["state"]["kind"] == "window"
    resumed = PriorTrackingClient.load(ServingClient(server.url, "lade"), tmp_path / "s")
    assert (resumed.kind, resumed.updates) == ("window", 2)
    for batch in batches(images)[2:]:
        np.testing.assert_array_equal(
            resumed.predict_images(batch)["logits"], through.predict_images(batch)["logits"]
        )
    np.testing.assert_array_equal(resumed.prior, through.prior)
    other = ServingClient(server.url, "plain")
    with pytest.raises(ValueError, match="model 'plain': it was saved for another model"):
        PriorTrackingClient.load(other, tmp_path / "s")


def test_a_model_without_a_validation_split_tracks_without_soft_bbse(server, tracked_digits):
    client = ServingClient(server.url, "plain")
    with pytest.raises(ValueError, match="use local=batch_em"):
        PriorTrackingClient(client, "flh_ftl").predict_images(tracked_digits["test_x"][:2])
    tracking = PriorTrackingClient(client, "flh_ftl", tracker_options={"local": "batch_em"})
    assert tracking.predict_images(tracked_digits["test_x"][:2])["class_ids"].shape == (2,)


def test_cli_keeps_the_tracker_in_a_file_or_names_a_server_stream(server, tracked_digits, tmp_path):
    arrays = []
    for index, batch in enumerate(batches(tracked_digits["test_x"])[:3]):
        arrays.append(str(tmp_path / f"batch{index}.npy"))
        np.save(arrays[-1], batch)
    state = tmp_path / "tracker.json"
    common = ["--url", server.url, "--model-name", "lade", "--json"]
    first = run_cli(*common, "--track-prior", "--tracker-state", str(state), *arrays[:2])
    assert first.returncode == 0, first.stderr
    second = run_cli(*common, "--track-prior", "--tracker-state", str(state), arrays[2])
    assert second.returncode == 0, second.stderr
    saved = json.loads(state.read_text())
    assert (saved["updates"], saved["images"]) == (3, 40)
    through = PriorTrackingClient(ServingClient(server.url, "lade"))
    for batch in batches(tracked_digits["test_x"])[:3]:
        expected = through.predict_images(batch)
    document = json.loads(second.stdout)
    assert [entry["prior"] for entry in document["target_prior"]] == pytest.approx(
        through.prior.tolist(), abs=1e-9
    )
    best = [row["top_k"][0]["class_id"] for row in document["predictions"]]
    assert best == expected["class_ids"].tolist()
    streamed = run_cli(*common, "--prior-stream", "cli", *arrays)
    assert streamed.returncode == 0, streamed.stderr
    assert len(json.loads(streamed.stdout)) == 40
    state_of = ServingClient(server.url, "lade", prior_stream="cli").prior_stream_state()
    assert (state_of["updates"], state_of["images"]) == (3, 40)
    refused = run_cli(*common, "--tracker-state", str(state), arrays[0])
    assert refused.returncode == 2 and "--tracker-state needs --track-prior" in refused.stderr
