"""The REST server as a real process on 127.0.0.1, over real HTTP, against the in-process model."""

from __future__ import annotations

import base64
import http.client as http_client
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from lade_tf.export import export_serving_model
from tests.serving.serving_support import MAX_REQUEST_BYTES, http, run_signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def predict(url: str, payload: dict, model: str = "lade", suffix: str = "") -> tuple[int, dict]:
    return http(f"{url}/v1/models/{model}{suffix}:predict", payload)


def rows_payload(images, priors) -> dict:
    return {
        "instances": [
            {"images": image.tolist(), "target_prior": prior.tolist()}
            for image, prior in zip(images, priors)
        ]
    }


def columns_payload(images, priors, signature: str | None = None) -> dict:
    payload = {"inputs": {"images": images.tolist(), "target_prior": priors.tolist()}}
    if signature:
        payload["signature_name"] = signature
    return payload


def random_priors(rows: int, seed: int) -> np.ndarray:
    priors = np.random.default_rng(seed).dirichlet(np.ones(10), size=rows).astype(np.float32)
    priors[::3, 0] = 0.0
    return priors


def assert_same_outputs(served: dict, expected: dict, exact: bool = True) -> None:
    for name, value in expected.items():
        got = np.asarray(served[name], dtype=value.dtype)
        if exact:
            np.testing.assert_array_equal(got, value, err_msg=name)
        else:
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_model_status_versions_and_labels(server_url):
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    for suffix in ("", "/versions/1", "/labels/stable"):
        assert http(f"{server_url}/v1/models/lade{suffix}") == (200, expected)


def test_metadata_lists_both_inputs_of_serving_default(server_url):
    status, body = http(f"{server_url}/v1/models/lade/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "lade", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {
        "serving_default",
        "predict_uniform",
        "predict_encoded",
        "estimate_prior",
        "class_info",
    } <= set(signatures)
    inputs = signatures["serving_default"]["inputs"]
    assert set(inputs) == {"images", "target_prior"}
    assert [d["size"] for d in inputs["target_prior"]["tensor_shape"]["dim"]] == ["-1", "10"]
    outputs = set(signatures["serving_default"]["outputs"])
    assert outputs == {"probabilities", "logits", "class_ids", "posteriors"}


def test_row_and_columnar_predictions_equal_the_in_process_call(
    server_url, saved_model, digits_split
):
    images, priors = digits_split["test_x"][:32], random_priors(32, seed=2)
    expected = run_signature(saved_model, "serving_default", images=images, target_prior=priors)
    status, body = predict(server_url, rows_payload(images, priors))
    assert status == 200 and len(body["predictions"]) == 32
    served = {name: [row[name] for row in body["predictions"]] for name in expected}
    assert_same_outputs(served, expected)
    status, body = predict(server_url, columns_payload(images, priors))
    assert status == 200 and set(body["outputs"]) == set(expected)
    assert_same_outputs(body["outputs"], expected)
    # By version number and by label: the same model.
    for suffix in ("/versions/1", "/labels/stable"):
        status, body = predict(server_url, columns_payload(images, priors), suffix=suffix)
        assert status == 200
        assert_same_outputs(body["outputs"], expected)


def test_one_hot_prior_forces_every_class(server_url, digits_split):
    images = digits_split["test_x"][:50]
    targets = np.arange(50) % 10
    priors = np.eye(10, dtype=np.float32)[targets]
    status, body = predict(server_url, columns_payload(images, priors))
    assert status == 200
    np.testing.assert_array_equal(body["outputs"]["class_ids"], targets)
    probabilities = np.asarray(body["outputs"]["probabilities"])
    assert np.all(probabilities[np.eye(10, dtype=bool)[targets] == 0] == 0.0)  # exactly 0
    np.testing.assert_allclose(probabilities[np.arange(50), targets], 1.0, atol=1e-6)


def test_tail_skewed_prior_raises_tail_predictions(server_url, digits_split):
    images, labels = digits_split["test_x"], digits_split["test_y"]  # balanced test split
    counts = np.asarray(digits_split["counts"], np.float32)
    tail = np.arange(10) >= 5
    uniform = predict(server_url, {"signature_name": "predict_uniform", "inputs": images.tolist()})[
        1
    ]["outputs"]["class_ids"]
    reversed_prior = np.tile(counts[::-1] / counts.sum(), (len(images), 1))
    skewed = predict(server_url, columns_payload(images, reversed_prior))[1]["outputs"]
    uniform, skewed = np.asarray(uniform), np.asarray(skewed["class_ids"])
    assert tail[skewed].sum() > tail[uniform].sum()
    # Under uniform p_t, PC Softmax is at least as good on the tail as the training prior.
    source = predict(
        server_url, columns_payload(images, np.tile(counts / counts.sum(), (len(images), 1)))
    )[1]["outputs"]["class_ids"]
    tail_rows = tail[labels]
    assert (uniform == labels)[tail_rows].mean() >= (np.asarray(source) == labels)[tail_rows].mean()


def png_b64(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(buffer, format="PNG")
    return {"b64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def test_b64_png_through_predict_encoded(server_url, saved_model, digits_split):
    images, priors = digits_split["test_x"][:8], random_priors(8, seed=3)
    expected = run_signature(saved_model, "serving_default", images=images, target_prior=priors)
    status, body = predict(
        server_url,
        {
            "signature_name": "predict_encoded",
            "instances": [
                {"image_bytes": png_b64(image), "target_prior": prior.tolist()}
                for image, prior in zip(images, priors)
            ],
        },
    )
    assert status == 200
    served = {name: [row[name] for row in body["predictions"]] for name in expected}
    assert_same_outputs(served, expected)


def test_estimate_prior_and_class_info_signatures(server_url, digits_split):
    images = digits_split["test_x"][:30]
    status, body = predict(
        server_url, {"signature_name": "estimate_prior", "instances": images.tolist()}
    )
    assert status == 200 and len(body["predictions"]) == 30
    estimate = np.asarray([row["target_prior"] for row in body["predictions"]])
    np.testing.assert_allclose(estimate.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(estimate == estimate[0])
    status, body = predict(
        server_url, {"signature_name": "class_info", "inputs": {"class_ids": [0, 9]}}
    )
    assert status == 200 and body["outputs"]["class_names"] == ["zero", "nine"]
    assert body["outputs"]["class_counts"] == [digits_split["counts"][0], digits_split["counts"][9]]


IMAGE = np.zeros((8, 8, 1)).tolist()
PRIOR = [0.1] * 10


def instance(image=IMAGE, prior=PRIOR) -> dict:
    return {"instances": [{"images": image, "target_prior": prior}]}


BAD_REQUESTS = {
    "malformed_json": (b'{"instances": [1, 2', 400, "JSON Parse error"),
    "empty_body": (b"", 400, "JSON Parse error: The document is empty"),
    "not_an_object": (b"[1, 2]", 400, "Is not object"),
    "wrong_image_shape": (
        instance(image=np.zeros((7, 8, 1)).tolist()),
        400,
        "input tensor 'images' has shape [1,7,8,1]",
    ),
    "wrong_image_rank": (
        {"inputs": {"images": [[1.0, 2.0]], "target_prior": [PRIOR]}},
        400,
        "input tensor 'images' has shape [1,2]",
    ),
    "string_pixels": (instance(image="pixels"), 400, "is not of expected type: float"),
    "bool_prior": (instance(prior=[True] * 10), 400, "Type: True is not of expected type"),
    "ragged_images": (
        {"inputs": {"images": [[[[0]] * 8] * 8, [[[0]] * 7] * 8], "target_prior": [PRIOR, PRIOR]}},
        400,
        "Encountered list at unexpected size",
    ),
    "negative_prior": (
        instance(prior=[-0.1] + PRIOR[1:]),
        400,
        "input tensor 'target_prior' has negative entries: -0.1 at [0,0]; expected finite, "
        "non-negative class weights with a positive sum in every row",
    ),
    "nan_prior": (
        b'{"instances": [{"images": %s, "target_prior": [NaN, %s]}]}'
        % (json.dumps(IMAGE).encode(), b", ".join([b"0.1"] * 9)),
        400,
        "input tensor 'target_prior' has NaN or infinite entries: NaN at [0,0]",
    ),
    "all_zero_prior": (
        instance(prior=[0.0] * 10),
        400,
        "input tensor 'target_prior' sums to 0 in row 0",
    ),
    "short_prior": (instance(prior=PRIOR[:9]), 400, "input tensor 'target_prior' has shape"),
    "long_prior": (instance(prior=PRIOR + [0.1]), 400, "input tensor 'target_prior' has shape"),
    "missing_input": ({"inputs": {"images": [IMAGE]}}, 400, "Missing named input: target_prior"),
    "unknown_signature": (
        {"signature_name": "nope", **instance()},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    "bad_b64": (
        {
            "signature_name": "predict_encoded",
            "inputs": {"image_bytes": [{"b64": "%%%"}], "target_prior": [PRIOR]},
        },
        400,
        "Unable to base64 decode",
    ),
    "not_an_image": (
        {
            "signature_name": "predict_encoded",
            "inputs": {"image_bytes": [{"b64": "aGVsbG8="}], "target_prior": [PRIOR]},
        },
        400,
        "Unknown image file format",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_tf_serving_error_and_the_server_keeps_serving(server_url, case):
    payload, code, message = BAD_REQUESTS[case]
    if isinstance(payload, bytes):
        status, body = http(f"{server_url}/v1/models/lade:predict", data=payload)
    else:
        status, body = predict(server_url, payload)
    assert status == code and set(body) == {"error"}
    assert message in body["error"]
    assert predict(server_url, instance())[0] == 200


@pytest.mark.parametrize(
    "path, code, message",
    [
        ("/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        (
            "/v1/models/lade/versions/7:predict",
            404,
            "Servable not found for request: Specific(lade, 7)",
        ),
        ("/v1/models/lade/labels/nope:predict", 400, "Unrecognized servable version label: nope"),
        (
            "/v1/models/lade/version/1:predict",
            400,
            "Malformed request: POST /v1/models/lade/version",
        ),
        ("/v1/models/lade:classify", 400, "Expected classification signature method_name"),
    ],
)
def test_unknown_model_version_label_or_method(server_url, path, code, message):
    status, body = http(server_url + path, {"instances": [1], "examples": [{"x": 1}]})
    assert (status, set(body)) == (code, {"error"}) and message in body["error"]


SNIPPET_BYTES = 256  # the longest quote of a request in an error message (TF Serving's)


def quoted_request(message: str, before: str) -> str:
    """The part of an error message between "JSON Value: " and `before`."""
    assert message.startswith("JSON Value: ") and before in message, message
    return message[len("JSON Value: ") : message.index(before)]


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_or_regress_without_examples_quote_a_bounded_line_of_the_request(
    server_url, method
):
    payload = {"instances": [[0.5] * 1000] * 150, "note": "two\nlines"}  # 0.75 MB
    status, body = http(f"{server_url}/v1/models/lade:{method}", payload)
    assert status == 400 and set(body) == {"error"}
    message = body["error"]
    expected = f" When method is {method}, key 'examples' is expected and was not found"
    assert message.endswith(expected) and "\n" not in message
    quoted = quoted_request(message, expected)
    assert quoted.startswith('{"instances": [[0.5, 0.5') and quoted.endswith("...")
    assert len(quoted.encode()) <= SNIPPET_BYTES + len("...")
    for examples, text in (
        ({"x": 1}, "Expecting 'examples' value to be an list/array"),
        ([], "'examples' value is an empty array"),
    ):
        status, body = http(f"{server_url}/v1/models/lade:{method}", {"examples": examples})
        assert status == 400 and body["error"].endswith(text)


def test_deeply_nested_arrays_are_bad_requests_and_the_server_keeps_serving(server_url):
    deep = b"[" * 1000 + b"]" * 1000
    for method in ("predict", "classify"):
        status, body = http(f"{server_url}/v1/models/lade:{method}", data=deep)
        assert status == 400 and set(body) == {"error"}
        assert body["error"].endswith(" Is not object")
        assert quoted_request(body["error"], " Is not object") == "[" * SNIPPET_BYTES + "..."
    status, body = http(
        f"{server_url}/v1/models/lade:predict", data=b"[" * 100_000 + b"]" * 100_000
    )
    assert status == 400 and "nested too deeply" in body["error"]
    assert predict(server_url, instance())[0] == 200


def test_long_names_in_a_request_are_quoted_cut_short(server_url):
    name = "s" * 100_000
    status, body = predict(server_url, {"signature_name": name, **instance()})
    assert status == 400
    cut = "s" * SNIPPET_BYTES + "..."
    assert body["error"] == f'Serving signature name: "{cut}" not found in signature def'
    status, body = predict(
        server_url, {"instances": [{"images": IMAGE, "target_prior": PRIOR, "x\n" * 50_000: 1}]}
    )
    assert status == 400 and "does not have named input: x\\nx\\n" in body["error"]
    assert len(body["error"].encode()) < 1000 and "\n" not in body["error"]


@pytest.mark.parametrize(
    "path, code, message",
    [
        ("/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("/v1/models/lade/versions/7", 404, "Could not find version 7 of model lade"),
        ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        ("/v1/models", 400, "Missing model name in request."),
        ("/v1/foo", 400, "Malformed request: GET /v1/foo"),
    ],
)
def test_status_errors(server_url, path, code, message):
    status, body = http(server_url + path)
    assert (status, body) == (code, {"error": message})


def test_oversized_body_gets_413_and_the_server_keeps_serving(server_url):
    big = json.dumps({"instances": [[0.0] * 1000] * (MAX_REQUEST_BYTES // 5000)}).encode()
    assert len(big) > MAX_REQUEST_BYTES
    status, body = http(f"{server_url}/v1/models/lade:predict", data=big)
    assert status == 413 and "exceeds the limit" in body["error"]
    # Without Content-Length (chunked) the limit still holds.
    parts = urlsplit(server_url)
    connection = http_client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request(
        "POST",
        "/v1/models/lade:predict",
        body=(big[i : i + 65536] for i in range(0, len(big), 65536)),
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413 and "error" in json.loads(response.read())
    connection.close()
    assert predict(server_url, instance())[0] == 200


def test_concurrent_clients_get_their_own_answers(server_url, saved_model, digits_split):
    clients, requests_each = 8, 50
    images = digits_split["test_x"]
    jobs = []
    for client in range(clients):
        for index in range(requests_each):
            start = (client * requests_each + index) % (len(images) - 3)
            jobs.append((images[start : start + 3], random_priors(3, seed=client * 1000 + index)))

    def call(job):
        batch, priors = job
        return predict(server_url, columns_payload(batch, priors))

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(call, jobs))
    assert [status for status, _ in results] == [200] * len(jobs)
    for (batch, priors), (_, body) in zip(jobs[::25], results[::25]):
        expected = run_signature(saved_model, "serving_default", images=batch, target_prior=priors)
        assert_same_outputs(body["outputs"], expected)


def wait_for_version(url: str, model: str, version: str, seconds: float = 120.0) -> dict:
    """The model's version states once `version` is the one AVAILABLE version and no version is
    still changing state (a new version is AVAILABLE before the old one passes through
    UNLOADING to END, so for a moment both are AVAILABLE)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = http(f"{url}/v1/models/{model}")
        states = {s["version"]: s["state"] for s in body.get("model_version_status", [])}
        settled = {"START", "LOADING", "UNLOADING"}.isdisjoint(states.values())
        only = [v for v, state in states.items() if state == "AVAILABLE"] == [version]
        if settled and only:
            return states
        time.sleep(0.25)
    raise AssertionError(f"version {version} of {model} never became AVAILABLE: {body}")


def test_hot_reload_serves_a_newly_pushed_version(
    server_url, server_dirs, trained_model, digits_split
):
    import tensorflow as tf

    images, priors = digits_split["test_x"][:6], random_priors(6, seed=4)
    before = predict(server_url, columns_payload(images, priors), model="reload")[1]["outputs"]
    path = export_serving_model(
        trained_model,
        server_dirs["reload_base"] / "2",
        class_counts=digits_split["counts"],
        train_loss="balanced_softmax",
    )
    states = wait_for_version(server_url, "reload", "2")
    assert states == {"2": "AVAILABLE", "1": "END"}
    expected = run_signature(
        tf.saved_model.load(path), "serving_default", images=images, target_prior=priors
    )
    status, body = predict(server_url, columns_payload(images, priors), model="reload")
    assert status == 200
    assert_same_outputs(body["outputs"], expected)
    assert not np.allclose(body["outputs"]["logits"], before["logits"])  # a different rule
    status, body = predict(
        server_url, columns_payload(images, priors), model="reload", suffix="/versions/1"
    )
    assert status == 404


def test_batching_server_answers_concurrent_requests_exactly(
    batching_server_url, saved_model, digits_split
):
    images = digits_split["test_x"]
    jobs = [(images[i : i + 1 + i % 4], random_priors(1 + i % 4, seed=100 + i)) for i in range(64)]
    jobs[10] = (jobs[10][0], -jobs[10][1])  # one invalid prior in the middle of a batch

    def call(job):
        return predict(batching_server_url, columns_payload(*job))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for index, ((batch, priors), (status, body)) in enumerate(zip(jobs, results)):
        if index == 10:
            assert status == 400 and "negative entries" in body["error"]
            continue
        assert status == 200
        expected = run_signature(saved_model, "serving_default", images=batch, target_prior=priors)
        assert_same_outputs(body["outputs"], expected, exact=False)
