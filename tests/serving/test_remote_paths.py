"""Model base paths and config files on a TensorFlow file system (ram://, which lives in this
process, so the server runs in process too), and a server with its REST API off."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.model_manager import ModelManager, read_model_config_file
from serving.server_core import ServerOptions
from serving.storage import base_path_problem
from tests.serving.serving_support import InProcessServer, ServerProcess, http, run_signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def copy_tree(local: Path, remote: str) -> None:
    """Copies a local directory tree to a TensorFlow file system path, file by file."""
    import tensorflow as tf

    for root, _, files in os.walk(local):
        relative = os.path.relpath(root, local)
        target = remote if relative == "." else f"{remote}/{relative}"
        tf.io.gfile.makedirs(target)
        for name in sorted(files, key=lambda n: n == "saved_model.pb"):  # the graph last
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)


def columns(images, priors) -> dict:
    return {"inputs": {"images": images.tolist(), "target_prior": priors.tolist()}}


def grpc_predict(target: str, images, priors) -> dict[str, np.ndarray]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "lade"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    request.inputs["target_prior"].CopyFrom(tf.make_tensor_proto(priors))
    with grpc.insecure_channel(target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=60
        )
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def reload_config(target: str, base_path: str) -> None:
    """ModelService/HandleReloadConfigRequest: serve only model "copy" of `base_path`."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    entry = request.config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = "copy", base_path, "tensorflow"
    with grpc.insecure_channel(target) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=120
        )


def test_a_ram_base_path_is_served_and_a_new_version_there_is_loaded(
    export_base, saved_model, trained_model, digits_split, tmp_path
):
    import tensorflow as tf

    from lade_tf.export import export_serving_model

    root = f"ram://lade-serving-{uuid.uuid4().hex}"
    copy_tree(export_base / "1", f"{root}/lade/1")
    config_path = f"{root}/models.config"
    with tf.io.gfile.GFile(config_path, "w") as handle:
        handle.write(
            f'model_config_list {{ config {{ name: "lade" base_path: "{root}/lade" '
            'version_labels { key: "stable" value: 1 } } }\n'
        )
    configs = read_model_config_file(config_path)
    assert configs[0].base_path == f"{root}/lade" and configs[0].labels == {"stable": 1}
    assert base_path_problem(config_path).startswith("is not a directory")
    assert base_path_problem(f"{root}/not-yet") is None  # versions may be pushed later
    server = InProcessServer(
        ModelManager(configs),
        ServerOptions(
            file_system_poll_wait_seconds=0.3,
            model_config_file=config_path,  # read above, through tf.io.gfile; not re-read, so
            model_config_file_poll_wait_seconds=0,  # the gRPC config reload below stays
        ),
    )
    try:
        images = digits_split["test_x"][:6]
        priors = np.random.default_rng(5).dirichlet(np.ones(10), size=6).astype(np.float32)
        expected = run_signature(saved_model, "serving_default", images=images, target_prior=priors)
        status, body = http(f"{server.url}/v1/models/lade:predict", columns(images, priors))
        assert status == 200
        np.testing.assert_array_equal(
            np.asarray(body["outputs"]["probabilities"], np.float32), expected["probabilities"]
        )
        served = grpc_predict(server.grpc_target, images, priors)
        np.testing.assert_array_equal(served["probabilities"], expected["probabilities"])

        local = export_serving_model(
            trained_model,
            tmp_path / "2",
            class_counts=digits_split["counts"],
            train_loss="balanced_softmax",
        )
        copy_tree(Path(local), f"{root}/lade/2")
        deadline = time.monotonic() + 120
        while True:
            status, body = http(f"{server.url}/v1/models/lade")
            states = {s["version"]: s["state"] for s in body["model_version_status"]}
            if states == {"2": "AVAILABLE", "1": "END"}:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.25)
        new = run_signature(
            tf.saved_model.load(local), "serving_default", images=images, target_prior=priors
        )
        served = grpc_predict(server.grpc_target, images, priors)
        np.testing.assert_array_equal(served["logits"], new["logits"])
        assert not np.allclose(served["logits"], expected["logits"])
        reload_config(server.grpc_target, f"{root}/lade")
        status, body = http(f"{server.url}/v1/models/copy")
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        assert http(f"{server.url}/v1/models/lade")[0] == 404  # left the config: unloaded
    finally:
        server.stop()
        tf.io.gfile.rmtree(root)


def test_rest_api_port_0_turns_rest_off_and_grpc_still_serves(export_base, tmp_path):
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    process = ServerProcess(
        ["--model-base-path", str(export_base), "--model-name", "lade"],
        tmp_path / "grpc_only.log",
        rest=False,
    )
    try:
        target = process.url  # the gRPC start-up line's address, once it serves
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "lade"
        with grpc.insecure_channel(target) as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=60
            )
        assert [s.version for s in response.model_version_status] == [1]
        assert process.stdout_lines == [f"Running gRPC ModelServer at {target} ..."]
    finally:
        process.stop()
