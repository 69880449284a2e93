"""`python pipeline/run.py --runner=kubeflow` compiles a Kubeflow / Vertex pipeline spec offline:
the components, the baseline Resolver, the RuntimeParameters (epochs, alpha, blessing margins) with
their defaults, and the image the repository's Dockerfile builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lade_tf.train_config import TrainConfig
from pipeline import run
from pipeline.create_pipeline import RUNTIME_PARAMETERS

REPO_ROOT = Path(__file__).resolve().parents[2]
# LatestBlessedModelStrategy compiles to two resolver tasks (KubeflowV2's own MLMD queries).
RESOLVER_TASKS = {
    "latest_blessed_model_resolver-model-resolver",
    "latest_blessed_model_resolver-model-blessing-resolver",
}
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
    assert set(tasks) == set(COMPONENTS) | {"Tuner"} | RESOLVER_TASKS
    # User code by function path: a module_file cannot be uploaded offline.
    assert parameter(tasks["Trainer_lade"], "run_fn") == "pipeline.trainer.run_fn"
    assert parameter(tasks["Tuner"], "tuner_fn") == "pipeline.tuner.tuner_fn"
    assert not any(
        "module_file" in task.get("inputs", {}).get("parameters", {}) for task in tasks.values()
    )
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
        "latest_blessed_model_resolver-model-resolver",
    }
    baseline = tasks["ShiftEvaluator"]["inputs"]["artifacts"]["baseline_model"]
    assert baseline["taskOutputArtifact"]["producerTask"] in RESOLVER_TASKS
    # With a Tuner, its best alpha wins: no alpha RuntimeParameter, the rest are there.
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) == set(RUNTIME_PARAMETERS) - {"alpha"}
    assert document["runtimeConfig"]["parameters"]["epochs"] == {"intValue": "3"}
    for loss in ("ce", "lade"):
        inputs = tasks[f"Trainer_{loss}"]["inputs"]["parameters"]
        assert inputs["epochs"] == {"componentInputParameter": "epochs"}
    assert "Tuner" in parameter(tasks["ShiftEvaluator"], "alpha_source")
    assert set(tasks["Pusher"]["dependentTasks"]) == {"ShiftEvaluator", "Trainer_lade"}
    assert parameter(tasks["ShiftEvaluator"], "push") == "lade"
    assert "gs://bucket/lade/serving_model" in parameter(tasks["Pusher"], "push_destination")
    assert not (tmp_path / "out" / run.METADATA_FILE).exists()  # no MLMD for a compile


def parameter(task: dict, name: str):
    """A constant parameter of a compiled task."""
    value = task["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    return next(iter(value.values()))


@pytest.mark.timeout(600)
def test_spec_reruns_with_other_epochs_alpha_and_margins(tmp_path: Path):
    spec_path = tmp_path / "spec.json"
    argv = ["--runner=kubeflow", "--output-dir", str(tmp_path / "out")]
    argv += ["--kubeflow-output", str(spec_path), "--kubeflow-image", "gcr.io/p/lade-tf:0.1.0"]
    argv += ["--alpha", "0.2", "--bless-margin-uniform", "0.03", "--bless-margin-ece", "0.02"]
    assert run.main(argv) == 0
    document = json.loads(spec_path.read_text())
    spec = document["pipelineSpec"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters == {
        "epochs": {"type": "INT"},
        "alpha": {"type": "DOUBLE"},
        "bless_margin_mean": {"type": "DOUBLE"},
        "bless_margin_uniform": {"type": "DOUBLE"},
        "bless_margin_ece": {"type": "DOUBLE"},
    }
    # The defaults a submission starts from: this command line's values.
    assert document["runtimeConfig"]["parameters"] == {
        "epochs": {"intValue": str(TrainConfig().epochs)},
        "alpha": {"doubleValue": 0.2},
        "bless_margin_mean": {"doubleValue": 0.01},
        "bless_margin_uniform": {"doubleValue": 0.03},
        "bless_margin_ece": {"doubleValue": 0.02},
    }
    tasks = spec["root"]["dag"]["tasks"]
    lade = tasks["Trainer_lade"]["inputs"]["parameters"]
    assert lade["alpha"] == {"componentInputParameter": "alpha"}
    assert lade["epochs"] == {"componentInputParameter": "epochs"}
    assert "alpha" not in tasks["Trainer_ce"]["inputs"]["parameters"]
    evaluator = tasks["ShiftEvaluator"]["inputs"]["parameters"]
    for key in ("mean", "uniform", "ece"):
        assert evaluator[f"margin_{key}"] == {"componentInputParameter": f"bless_margin_{key}"}
    # Every container runs the image given, with the project's executors.
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values() if "container" in e}
    assert images == {"gcr.io/p/lade-tf:0.1.0"}
    assert "pipeline.training_components.LadeTrainerExecutor" in json.dumps(executors)


def test_dockerfile_builds_on_the_default_image():
    """The Dockerfile installs this project on the image the spec names by default."""
    default_image = run.flags.build_parser().get_default("kubeflow_image")
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    assert f"FROM {default_image}" in lines
    assert any("pip install" in line and "requirements.txt" in line for line in lines)
    assert any("pip install" in line and "--no-deps ." in line for line in lines)
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "lade_output"} <= set(ignored)
