"""serving.client, as a library and as a command, against a real server process."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from lade_tf.export import read_serving_metadata
from serving.client import ServingClient, ServingRequestError, resolve_prior, top_k
from tests.serving.serving_support import CLASS_NAMES, run_cli, run_signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def input_files(tmp_path_factory, digits_split):
    """Three PNG files and one .npy batch of two images (raw pixels)."""
    root = tmp_path_factory.mktemp("client_inputs")
    images = digits_split["test_x"][[0, 30, 60, 90, 120]]
    pngs = []
    for index, image in enumerate(images[:3]):
        path = root / f"digit{index}.png"
        Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(path)
        pngs.append(str(path))
    array = root / "batch.npy"
    np.save(array, images[3:, ..., 0])  # [2, 8, 8]: grey images without a channel axis
    return pngs + [str(array)], images


def expected_probabilities(saved_model, images, prior):
    return run_signature(
        saved_model,
        "serving_default",
        images=images,
        target_prior=np.tile(np.float32(prior), (len(images), 1)),
    )["probabilities"]


def test_cli_prints_top_k_for_images_and_arrays(server_url, saved_model, input_files, digits_split):
    paths, images = input_files
    result = run_cli(
        "--url",
        server_url,
        "--model-name",
        "lade",
        "--prior",
        "source",
        "--top-k",
        "3",
        "--json",
        *paths,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["input"] for row in rows] == paths[:3] + [f"{paths[3]}[0]", f"{paths[3]}[1]"]
    counts = np.asarray(digits_split["counts"], np.float64)
    expected = expected_probabilities(saved_model, images, counts / counts.sum())
    for row, probabilities in zip(rows, expected):
        assert [entry["class_id"] for entry in row["top_k"]] == [
            c for c, _ in top_k(probabilities[None], 3)[0]
        ]
        best = row["top_k"][0]
        assert best["class_name"] == CLASS_NAMES[best["class_id"]]
        assert best["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_cli_estimated_prior_sends_the_batch_to_estimate_prior(
    server_url, saved_model, input_files
):
    paths, images = input_files
    expected = run_signature(saved_model, "estimate_prior", images=images)
    result = run_cli("--url", server_url, "--prior", "estimate", "--top-k", "2", "--json", *paths)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    prior = [entry["prior"] for entry in document["target_prior"]]
    assert [entry["class_name"] for entry in document["target_prior"]] == CLASS_NAMES
    np.testing.assert_allclose(prior, expected["target_prior"][0], atol=1e-6)
    rows = document["predictions"]
    assert [row["input"] for row in rows] == paths[:3] + [f"{paths[3]}[0]", f"{paths[3]}[1]"]
    for row, probabilities in zip(rows, expected["probabilities"]):
        assert [entry["class_id"] for entry in row["top_k"]] == [
            c for c, _ in top_k(probabilities[None], 2)[0]
        ]
        assert row["top_k"][0]["probability"] == pytest.approx(float(probabilities.max()), abs=1e-6)
    text = run_cli("--url", server_url, "--prior", "estimate", "--top-k", "1", *paths)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert lines[0].startswith("estimated target prior (5 images): zero (0) ")
    assert f"nine (9) {expected['target_prior'][0][9]:.4f}" in lines[0]
    assert len(lines) == 6 and lines[1].startswith(f"{paths[0]}: ")


def test_cli_one_hot_prior_file_and_label(server_url, input_files, tmp_path):
    paths, _ = input_files
    prior_file = tmp_path / "prior.json"
    prior_file.write_text(json.dumps({"target_prior": np.eye(10)[7].tolist()}))
    result = run_cli(
        "--url", server_url, "--label", "stable", "--prior", str(prior_file), "--top-k", "1", *paths
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and all(
        line.split(": ")[1].startswith("seven (7) 1.0000") for line in lines
    )


def test_cli_reports_bad_priors_and_server_errors(server_url, input_files):
    paths, _ = input_files
    result = run_cli("--url", server_url, "--prior", "0.5,0.5", *paths)
    assert result.returncode == 1 and "expected 10 class weights" in result.stderr
    result = run_cli("--url", server_url, "--version", "9", "--prior", "uniform", *paths)
    assert result.returncode == 1
    assert "HTTP 404: Servable not found for request: Specific(lade, 9)" in result.stderr


def test_library_calls(server_url, saved_model, export_base, digits_split, tmp_path):
    client = ServingClient(server_url, "lade", version=1)
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.num_classes() == 10
    metadata = read_serving_metadata(export_base / "1")
    source = resolve_prior("source", client)
    np.testing.assert_allclose(source, metadata["source_prior"], rtol=1e-6)
    np.testing.assert_allclose(
        resolve_prior("source", client, metadata_file=str(export_base / "1")),
        metadata["source_prior"],
    )
    np.testing.assert_allclose(resolve_prior("uniform", client), np.full(10, 0.1))
    np.testing.assert_allclose(
        resolve_prior("[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]", client)[[0, 9]], [1, 1]
    )
    for bad in ("[1, -1, 0, 0, 0, 0, 0, 0, 0, 1]", "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "abc"):
        with pytest.raises(ValueError):
            resolve_prior(bad, client)
    images = digits_split["test_x"][:5]
    prior = np.linspace(1, 2, 10)
    outputs = client.predict_images(images, prior)
    np.testing.assert_array_equal(
        outputs["probabilities"], expected_probabilities(saved_model, images, prior)
    )
    buffer = io.BytesIO()
    Image.fromarray(images[0, ..., 0].astype(np.uint8), mode="L").save(buffer, format="PNG")
    encoded = client.predict_encoded([buffer.getvalue()], prior)  # batch 1: same up to rounding
    np.testing.assert_allclose(
        encoded["probabilities"][0], outputs["probabilities"][0], rtol=1e-4, atol=1e-7
    )
    estimated = client.estimate_prior(images)
    served = run_signature(saved_model, "estimate_prior", images=images)
    np.testing.assert_allclose(estimated["target_prior"], served["target_prior"][0], atol=1e-6)
    np.testing.assert_allclose(estimated["probabilities"], served["probabilities"], atol=1e-6)
    with pytest.raises(ValueError, match="non-empty batch"):
        client.estimate_prior(images[:0])
    with pytest.raises(ServingRequestError) as caught:
        ServingClient(server_url, "nope").status()
    assert caught.value.status == 404
