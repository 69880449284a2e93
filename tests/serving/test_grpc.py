"""The gRPC API of the server process, through the official tensorflow_serving.apis stubs over a
real channel on 127.0.0.1, against the in-process model; plus metrics and the access log."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.serving.serving_support import http, run_cli, run_signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RPC_SECONDS = 60


@pytest.fixture(scope="module")
def stubs(grpc_target):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(grpc_target)
    yield {
        "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
        "model": model_service_pb2_grpc.ModelServiceStub(channel),
    }
    channel.close()


def predict_request(
    inputs: dict,
    model: str = "lade",
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def outputs_of(response) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def priors(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(10), size=rows).astype(np.float32)


def test_predict_with_a_target_prior_equals_the_in_process_call(stubs, saved_model, digits_split):
    images, prior = digits_split["test_x"][:16], priors(16, seed=1)
    prior[::3, 0] = 0.0
    expected = run_signature(saved_model, "serving_default", images=images, target_prior=prior)
    for spec in ({}, {"version": 1}, {"label": "stable"}, {"signature": "serving_default"}):
        response = stubs["predict"].Predict(
            predict_request({"images": images, "target_prior": prior}, **spec),
            timeout=RPC_SECONDS,
        )
        assert response.model_spec.name == "lade"
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "serving_default"
        served = outputs_of(response)
        assert set(served) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(served[name], value, err_msg=name)
            assert served[name].dtype == value.dtype
        # TF Serving's default: typed value fields, not tensor_content.
        assert response.outputs["probabilities"].float_val
        assert not response.outputs["probabilities"].tensor_content


def test_output_filter_estimate_prior_and_encoded_images(stubs, saved_model, digits_split):
    images = digits_split["test_x"][:12]
    request = predict_request({"images": images}, signature="estimate_prior")
    request.output_filter.append("target_prior")
    response = stubs["predict"].Predict(request, timeout=RPC_SECONDS)
    expected = run_signature(saved_model, "estimate_prior", images=images)
    assert list(response.outputs) == ["target_prior"]
    np.testing.assert_allclose(
        outputs_of(response)["target_prior"], expected["target_prior"], atol=1e-6
    )
    buffer = io.BytesIO()
    Image.fromarray(images[0, ..., 0].astype(np.uint8), mode="L").save(buffer, format="PNG")
    prior = priors(1, seed=2)
    response = stubs["predict"].Predict(
        predict_request(
            {"image_bytes": np.array([buffer.getvalue()], dtype=object), "target_prior": prior},
            signature="predict_encoded",
        ),
        timeout=RPC_SECONDS,
    )
    direct = run_signature(saved_model, "serving_default", images=images[:1], target_prior=prior)
    np.testing.assert_allclose(
        outputs_of(response)["probabilities"], direct["probabilities"], rtol=1e-4, atol=1e-7
    )


def test_get_model_metadata_lists_the_signatures(stubs):
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "lade"
    request.metadata_field.append("signature_def")
    response = stubs["predict"].GetModelMetadata(request, timeout=RPC_SECONDS)
    assert response.model_spec.name == "lade" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"serving_default", "predict_encoded", "estimate_prior", "class_info"} <= set(defs)
    prior = defs["serving_default"].inputs["target_prior"]
    assert [d.size for d in prior.tensor_shape.dim] == [-1, 10]


def test_get_model_status_by_name_version_and_label(stubs):
    from tensorflow_serving.apis import get_model_status_pb2

    def status(**spec):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = spec.pop("name", "lade")
        if "version" in spec:
            request.model_spec.version.value = spec["version"]
        if "label" in spec:
            request.model_spec.version_label = spec["label"]
        response = stubs["model"].GetModelStatus(request, timeout=RPC_SECONDS)
        return [(s.version, s.state, s.status.error_code) for s in response.model_version_status]

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status() == [(1, available, 0)]
    assert status(version=1) == [(1, available, 0)]
    # A label is not resolved for status (TF Serving lists every version), known or not.
    assert status(label="stable") == status(label="unknown") == status()
    with pytest.raises(grpc.RpcError) as caught:
        status(version=7)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Could not find version 7 of model lade"


IMAGE = np.zeros((1, 8, 8, 1), np.float32)
PRIOR = np.full((1, 10), 0.1, np.float32)


def with_prior(prior) -> dict:
    return {"images": IMAGE, "target_prior": np.asarray(prior, np.float32)}


BAD_PREDICTS = {
    "unknown_model": (
        {"inputs": with_prior(PRIOR), "model": "nope"},
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    ),
    "unknown_version": (
        {"inputs": with_prior(PRIOR), "version": 7},
        "NOT_FOUND",
        "Servable not found for request: Specific(lade, 7)",
    ),
    "unknown_label": (
        {"inputs": with_prior(PRIOR), "label": "nope"},
        "INVALID_ARGUMENT",
        "Unrecognized servable version label: nope",
    ),
    "unknown_signature": (
        {"inputs": with_prior(PRIOR), "signature": "nope"},
        "FAILED_PRECONDITION",
        'Serving signature key "nope" not found.',
    ),
    "missing_input": (
        {"inputs": {"images": IMAGE}},
        "INVALID_ARGUMENT",
        "input size does not match signature: 1!=2 len({images}) != len({images,target_prior})."
        " Sent extra: {}. Missing but required: {target_prior}.",
    ),
    "extra_input": (
        {"inputs": {**with_prior(PRIOR), "x": PRIOR}},
        "INVALID_ARGUMENT",
        "Sent extra: {x}. Missing but required: {}.",
    ),
    "double_images": (
        {"inputs": {"images": IMAGE.astype(np.float64), "target_prior": PRIOR}},
        "INVALID_ARGUMENT",
        "Expects arg[0] ('images') to be float but double is provided",
    ),
    "string_pixels": (
        {"inputs": {"images": np.array([b"pixels"], dtype=object), "target_prior": PRIOR}},
        "INVALID_ARGUMENT",
        "to be float but string is provided",
    ),
    "wrong_image_shape": (
        {"inputs": {"images": np.zeros((1, 7, 8, 1), np.float32), "target_prior": PRIOR}},
        "INVALID_ARGUMENT",
        "input tensor 'images' has shape [1,7,8,1]",
    ),
    "short_prior": (
        {"inputs": with_prior(PRIOR[:, :9])},
        "INVALID_ARGUMENT",
        "input tensor 'target_prior' has shape [1,9]",
    ),
    "negative_prior": (
        {"inputs": with_prior([[-0.1] + [0.1] * 9])},
        "INVALID_ARGUMENT",
        "negative entries",
    ),
    "nan_prior": (
        {"inputs": with_prior([[np.nan] + [0.1] * 9])},
        "INVALID_ARGUMENT",
        "NaN or infinite",
    ),
    "all_zero_prior": ({"inputs": with_prior(np.zeros((1, 10)))}, "INVALID_ARGUMENT", "sums to 0"),
    "not_an_image": (
        {
            "inputs": {"image_bytes": np.array([b"hello"], dtype=object), "target_prior": PRIOR},
            "signature": "predict_encoded",
        },
        "INVALID_ARGUMENT",
        "Unknown image file format",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PREDICTS))
def test_bad_predict_gets_tf_serving_status_and_the_server_keeps_serving(stubs, case):
    arguments, code, message = BAD_PREDICTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        stubs["predict"].Predict(predict_request(**arguments), timeout=RPC_SECONDS)
    assert caught.value.code() == getattr(grpc.StatusCode, code), caught.value.details()
    assert message in caught.value.details()
    stubs["predict"].Predict(predict_request(with_prior(PRIOR)), timeout=RPC_SECONDS)


def test_malformed_requests_and_unsupported_methods(stubs):
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        predict_pb2,
    )

    def status_of(call, request) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=RPC_SECONDS)
        return caught.value.code(), caught.value.details()

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(stubs["predict"].Predict, predict_pb2.PredictRequest()) == (
        invalid,
        "Missing ModelSpec",
    )
    assert status_of(
        stubs["model"].GetModelStatus, get_model_status_pb2.GetModelStatusRequest()
    ) == (invalid, "Missing ModelSpec")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "lade"
    assert status_of(stubs["predict"].GetModelMetadata, metadata) == (
        invalid,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    metadata.metadata_field.append("graph")
    assert status_of(stubs["predict"].GetModelMetadata, metadata) == (
        invalid,
        "Metadata field graph is not supported",
    )
    request = predict_request(with_prior(PRIOR))
    request.output_filter.extend(["logits", "logits"])
    assert status_of(stubs["predict"].Predict, request) == (
        invalid,
        "duplicate output tensor alias: logits",
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "lade"
    code, message = status_of(stubs["predict"].Classify, classify)
    assert code == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in message


def test_client_sends_the_same_queries_over_grpc(server_url, grpc_target, tmp_path, digits_split):
    images = digits_split["test_x"][[0, 30, 60, 90]]
    paths = []
    for index, image in enumerate(images[:2]):
        path = tmp_path / f"digit{index}.png"
        Image.fromarray(image[..., 0].astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    np.save(tmp_path / "batch.npy", images[2:])
    paths.append(str(tmp_path / "batch.npy"))
    for prior in ("source", "estimate"):
        common = ("--model-name", "lade", "--prior", prior, "--top-k", "3", "--json", *paths)
        over_rest = run_cli("--url", server_url, *common)
        over_grpc = run_cli("--grpc", grpc_target, "--label", "stable", *common)
        assert over_rest.returncode == 0, over_rest.stderr
        assert over_grpc.returncode == 0, over_grpc.stderr
        rest, grpc_answer = json.loads(over_rest.stdout), json.loads(over_grpc.stdout)
        rows = rest if prior == "source" else rest["predictions"]
        grpc_rows = grpc_answer if prior == "source" else grpc_answer["predictions"]
        assert [r["input"] for r in rows] == [r["input"] for r in grpc_rows]
        for row, grpc_row in zip(rows, grpc_rows):
            assert [e["class_id"] for e in row["top_k"]] == [
                e["class_id"] for e in grpc_row["top_k"]
            ]
            np.testing.assert_allclose(
                [e["probability"] for e in row["top_k"]],
                [e["probability"] for e in grpc_row["top_k"]],
                atol=1e-6,
            )
    failed = run_cli("--grpc", grpc_target, "--version", "9", "--prior", "uniform", *paths)
    assert failed.returncode == 1
    assert "HTTP 404: NOT_FOUND: Servable not found for request: Specific(lade, 9)" in failed.stderr


def metric_samples(url: str) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=60) as response:
        assert response.status == 200
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def counted(samples, **labels) -> float:
    return sum(
        sample.value
        for sample in samples
        if sample.name == ":tensorflow:serving:request_count_total"
        and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def test_prometheus_metrics_count_requests_of_both_apis(server_url, stubs, servers):
    before = metric_samples(server_url)
    for _ in range(3):
        stubs["predict"].Predict(predict_request(with_prior(PRIOR)), timeout=RPC_SECONDS)
        payload = {"inputs": {"images": IMAGE.tolist(), "target_prior": PRIOR.tolist()}}
        assert http(f"{server_url}/v1/models/lade:predict", payload)[0] == 200
    bad = {"inputs": {"images": IMAGE.tolist(), "target_prior": (-PRIOR).tolist()}}
    assert http(f"{server_url}/v1/models/lade:predict", bad)[0] == 400
    after = metric_samples(server_url)
    ok = {"model_name": "lade", "version": "1", "signature_name": "serving_default"}
    for entrypoint, api in (("GRPC", "Predict"), ("REST", "predict")):
        labels = {**ok, "entrypoint": entrypoint, "API": api, "status": "OK"}
        assert counted(after, **labels) - counted(before, **labels) == 3
    failed = {**ok, "entrypoint": "REST", "status": "INVALID_ARGUMENT"}
    assert counted(after, **failed) - counted(before, **failed) == 1
    latency = [
        s
        for s in after
        if s.name == ":tensorflow:serving:request_latency_seconds_count"
        and s.labels == {"model_name": "lade", "API": "Predict", "entrypoint": "GRPC"}
    ]
    assert latency and latency[0].value >= 3
    loaded = {
        s.labels["model_name"]: s.value
        for s in after
        if s.name == ":tensorflow:serving:loaded_versions"
    }
    assert loaded["lade"] == 1 and loaded["reload"] >= 1
    # One Common Log Format line per request, for both APIs.
    deadline = time.monotonic() + 10
    pattern = (
        r"127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"POST /tensorflow\.serving\.PredictionService/Predict HTTP/2\.0" 200 \d+'
    )
    while time.monotonic() < deadline:
        log_text = servers["plain"].log_text()
        if re.search(pattern, log_text):
            break
        time.sleep(0.2)
    assert re.search(pattern, log_text), log_text[-2000:]
    assert '"POST /v1/models/lade:predict HTTP/1.1" 400 ' in log_text


def test_cors_headers_and_preflight(server_url):
    request = urllib.request.Request(
        f"{server_url}/v1/models/lade", method="OPTIONS", headers={"Origin": "http://example.com"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
    status, body = http(f"{server_url}/v1/models/lade", method="OPTIONS")
    assert (status, body) == (400, {"error": "Origin header is missing in CORS preflight"})
