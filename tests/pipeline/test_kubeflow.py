"""`python pipeline/run.py --runner=kubeflow` compiles a Kubeflow / Vertex pipeline spec offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lade_tf.training import TrainConfig
from pipeline import run

COMPONENTS = (
    "LongTailExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "Trainer_ce",
    "Trainer_lade",
    "ShiftEvaluator",
    "Pusher",
)


@pytest.mark.timeout(600)
def test_kubeflow_spec_compiles_without_a_cluster(tmp_path: Path, capsys):
    spec_path = tmp_path / "spec.json"
    assert (
        run.main(
            [
                "--runner=kubeflow",
                "--output-dir",
                str(tmp_path / "out"),
                "--pipeline-root",
                "gs://bucket/lade",
                "--kubeflow-output",
                str(spec_path),
                "--tune",
                "--max-trials",
                "2",
                "--alpha",
                "0.3",
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    assert str(spec_path) in capsys.readouterr().out
    document = json.loads(spec_path.read_text())
    spec = document["pipelineSpec"]
    assert document["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/lade"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(COMPONENTS) | {"Tuner"}
    # User code by function path: a module_file cannot be uploaded offline.
    assert parameter(tasks["Trainer_lade"], "run_fn") == "pipeline.trainer.run_fn"
    assert parameter(tasks["Tuner"], "tuner_fn") == "pipeline.tuner.tuner_fn"
    assert not any("module_file" in task["inputs"].get("parameters", {}) for task in tasks.values())
    executors = json.dumps(spec["deploymentSpec"]["executors"])
    assert "gcr.io/tfx-oss-public/tfx:1.16.0" in executors
    assert "--requirements_file" not in executors  # a path of this machine, absent in containers
    # The tuned LADE Trainer consumes the Tuner; the CE Trainer does not, nor gets --alpha.
    assert "Tuner" in tasks["Trainer_lade"]["dependentTasks"]
    assert "Tuner" not in tasks["Trainer_ce"]["dependentTasks"]
    lade = json.loads(parameter(tasks["Trainer_lade"], "custom_config"))["train_config"]
    ce = json.loads(parameter(tasks["Trainer_ce"], "custom_config"))["train_config"]
    assert lade == TrainConfig(loss="lade", alpha=0.3, epochs=3).to_dict()
    assert ce == TrainConfig(loss="ce", epochs=3).to_dict()
    tuner = json.loads(parameter(tasks["Tuner"], "custom_config"))
    assert tuner["tuner"]["max_trials"] == 2 and tuner["train_config"] == lade
    assert set(tasks["ShiftEvaluator"]["dependentTasks"]) == {
        "LongTailExampleGen",
        "Trainer_ce",
        "Trainer_lade",
    }
    assert set(tasks["Pusher"]["dependentTasks"]) == {"ShiftEvaluator", "Trainer_lade"}
    assert parameter(tasks["ShiftEvaluator"], "push") == "lade"
    assert "gs://bucket/lade/serving_model" in parameter(tasks["Pusher"], "push_destination")
    assert not (tmp_path / "out" / run.METADATA_FILE).exists()  # no MLMD for a compile


def parameter(task: dict, name: str):
    """A constant parameter of a compiled task."""
    value = task["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    return next(iter(value.values()))
