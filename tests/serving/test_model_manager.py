"""serving.model_manager: model configs, version policies, loading, status and metadata JSON."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from serving.errors import ServingError
from serving.model_manager import (
    ModelConfig,
    ModelManager,
    parse_model_config,
    read_model_config_file,
)
from serving.storage import base_path_problem
from tests.serving.serving_support import REPO_ROOT


def available(version: str) -> dict:
    return {
        "version": version,
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


def test_shipped_models_config_parses():
    (config,) = read_model_config_file(str(REPO_ROOT / "serving" / "models.config"))
    assert config == ModelConfig(
        name="lade",
        base_path="/models/lade",
        policy="latest",
        num_versions=2,
        labels={"stable": 1, "canary": 2},
    )


def test_model_config_policies_and_errors():
    configs = parse_model_config("""
        model_config_list {
          config { name: "a" base_path: "/a" model_version_policy { all {} } }
          config { name: "b" base_path: "/b" model_platform: "tensorflow"
                   model_version_policy { specific { versions: 1 versions: 3 } } }
        }""")
    assert [(c.policy, c.versions) for c in configs] == [("all", ()), ("specific", (1, 3))]
    for text, message in [
        ('model_config_list { config { name: "a" } }', "expected both name and base_path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" model_platform: "onnx" } }',
            "not supported",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "duplicate",
        ),
        ("model_config_list { config { nmae: 'a' } }", "not a text ModelServerConfig"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_model_config(text)


def test_config_files_that_cannot_be_read_are_value_errors(tmp_path):
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"model_config_list { \xff }")
    for path, message in [
        (tmp_path / "missing.config", r"cannot be read \(No such file"),
        (tmp_path, r"cannot be read \(Is a directory\)"),
        (binary, r"is not UTF-8 text \(byte 20\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_model_config_file(str(path))


def test_base_path_problems(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert base_path_problem(str(tmp_path)) is None
    assert base_path_problem(str(tmp_path / "not_yet")) is None  # may be pushed later
    assert base_path_problem(str(tmp_path / "file")).startswith("is not a directory; expected")
    assert base_path_problem(str(tmp_path / "file" / "1")).startswith("has a file where")
    assert base_path_problem(str(tmp_path / "link")).startswith(
        f"is a symbolic link to {str(tmp_path / 'gone')!r}, which does not exist"
    )


@pytest.fixture()
def two_versions(tmp_path, export_base):
    base = tmp_path / "m"
    for version in ("1", "2"):
        shutil.copytree(export_base / "1", base / version)
    (base / ".3.tmp-abc").mkdir()  # a staging directory is not a version
    (base / "notes").mkdir()
    return base


def test_latest_policy_serves_the_highest_version(two_versions):
    manager = ModelManager([ModelConfig("m", str(two_versions), labels={"old": 1})])
    manager.poll()
    assert manager.status_json("m") == {"model_version_status": [available("2")]}
    assert manager.resolve("m").version == 2
    with pytest.raises(ServingError, match=r"Servable not found for request: Specific\(m, 1\)"):
        manager.resolve("m", 1)
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(x\)") as e:
        manager.resolve("x")
    assert e.value.http_status == 404
    with pytest.raises(ServingError, match="Unrecognized servable version label: new") as e:
        manager.resolve("m", label="new")
    assert e.value.http_status == 400
    # As in TF Serving, status by label lists every version (the label is not resolved).
    assert manager.status_json("m", label="old") == manager.status_json("m")
    assert manager.status_json("m", label="unknown") == manager.status_json("m")
    with pytest.raises(ServingError, match="Could not find version 1 of model m"):
        manager.status_json("m", 1)
    with pytest.raises(ServingError, match="Could not find any versions of model x"):
        manager.status_json("x")


def test_all_and_specific_policies(two_versions):
    manager = ModelManager(
        [
            ModelConfig("all", str(two_versions), policy="all"),
            ModelConfig("one", str(two_versions), policy="specific", versions=(1,)),
        ]
    )
    manager.poll()
    assert sorted(manager.models["all"].available) == [1, 2]
    assert manager.status_json("all")["model_version_status"] == [available("2"), available("1")]
    assert list(manager.models["one"].available) == [1]


def test_new_version_replaces_old_and_a_broken_one_keeps_it_serving(two_versions):
    manager = ModelManager([ModelConfig("m", str(two_versions))])
    manager.poll()
    broken = two_versions / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager.poll()
    assert manager.resolve("m").version == 2  # still serving
    status = {s["version"]: s for s in manager.status_json("m")["model_version_status"]}
    assert status["3"]["state"] == "END" and status["3"]["status"]["error_code"] == "DATA_LOSS"
    assert status["3"]["status"]["error_message"] == (
        f"Loading servable: {{name: m version: 3}} failed: DATA_LOSS: Can't parse "
        f"{broken / 'saved_model.pb'} as binary proto"
    )
    shutil.rmtree(broken)
    shutil.copytree(two_versions / "1", broken)  # files changed: the load is retried
    manager.poll()
    assert manager.resolve("m").version == 3
    states = {s["version"]: s["state"] for s in manager.status_json("m")["model_version_status"]}
    assert states == {"3": "AVAILABLE", "2": "END"}


def version_states(manager: ModelManager, name: str) -> dict[str, tuple[str, str]]:
    return {
        s["version"]: (s["state"], s["status"]["error_code"])
        for s in manager.status_json(name)["model_version_status"]
    }


def test_a_broken_newest_version_at_start_up_falls_back_to_the_newest_that_loads(
    two_versions, caplog
):
    for version, damage in (("3", "truncated graph"), ("4", "no graph")):
        shutil.copytree(two_versions / "1", two_versions / version)
        graph = two_versions / version / "saved_model.pb"
        if damage == "no graph":
            graph.unlink()
        else:
            graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    manager = ModelManager([ModelConfig("m", str(two_versions))])
    with caplog.at_level(logging.WARNING, logger="serving"):
        manager.poll()
    assert manager.resolve("m").version == 2
    assert version_states(manager, "m") == {
        "4": ("END", "NOT_FOUND"),
        "3": ("END", "DATA_LOSS"),
        "2": ("AVAILABLE", "OK"),
    }
    assert (
        "model m: serving version 2, the newest that loads; versions 4, 3 failed to load "
        "(the model status holds the errors)"
    ) in caplog.messages
    assert manager.unavailable_models() == []
    attempts = manager.load_attempts()
    assert attempts[(str(two_versions / "3"), "fail")] == 1
    assert attempts[(str(two_versions / "2"), "success")] == 1
    manager.poll()  # failed versions are not retried while their files stay the same
    assert manager.load_attempts() == attempts


def test_a_model_none_of_whose_versions_loads_is_reported_unavailable(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    manager = ModelManager(
        [ModelConfig("m", str(tmp_path / "m")), ModelConfig("empty", str(tmp_path / "empty"))]
    )
    manager.poll()
    assert manager.unavailable_models() == [
        "model 'm': no version loads (Loading servable: {name: m version: 1} failed: "
        f"NOT_FOUND: Could not find SavedModel .pb at supplied export directory path: "
        f"{tmp_path / 'm' / '1'})"
    ]  # a model with no versions yet is waited for, as TF Serving does, not reported


def test_metadata_is_tf_serving_signature_def_json(two_versions):
    manager = ModelManager([ModelConfig("m", str(two_versions))])
    manager.poll()
    metadata = manager.metadata_json("m", 2)
    assert metadata["model_spec"] == {"name": "m", "signature_name": "", "version": "2"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    images = signature["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT"
    assert images["tensor_shape"] == {
        "dim": [{"size": size, "name": ""} for size in ("-1", "8", "8", "1")],
        "unknown_rank": False,
    }
    assert images["name"].endswith(":0")
    assert signature["outputs"]["class_ids"]["dtype"] == "DT_INT64"
    loaded = manager.resolve("m")
    outputs = loaded.signatures["serving_default"].run(
        {"images": np.zeros((2, 8, 8, 1), np.float32), "target_prior": np.ones((2, 10), np.float32)}
    )
    assert outputs["probabilities"].shape == (2, 10)


def test_a_base_path_turned_into_a_file_is_logged_once_and_serving_continues(two_versions, caplog):
    manager = ModelManager([ModelConfig("m", str(two_versions))])
    manager.poll()
    shutil.rmtree(two_versions)
    two_versions.write_text("not a directory any more")
    with caplog.at_level(logging.ERROR, logger="serving"):
        for _ in range(3):
            manager.poll()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"model m: base path {str(two_versions)!r} is not a directory; expected a "
        "directory of numbered SavedModel versions (1/, 2/, ...); serving continues "
        "with the loaded versions"
    ]
    assert manager.resolve("m").version == 2


def test_poll_new_only_loads_models_a_reconfigure_added_and_leaves_the_others(
    two_versions, export_base, tmp_path
):
    base = tmp_path / "once"
    shutil.copytree(export_base / "1", base / "1")
    manager = ModelManager([ModelConfig("once", str(base))])
    manager.poll()
    shutil.copytree(export_base / "1", base / "2")
    manager.reconfigure([ModelConfig("once", str(base)), ModelConfig("added", str(two_versions))])
    manager.poll(new_only=True)
    assert manager.resolve("added").version == 2
    assert list(manager.models["once"].available) == [1]  # polled once already: not again
    manager.poll()
    assert manager.resolve("once").version == 2
