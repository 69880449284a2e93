"""`python pipeline/run.py --runner=local --quick` end to end on real Fashion-MNIST: LocalDagRunner,
Beam, both Trainers, ShiftEvaluator, Pusher; then the TFX cache (same flags: nothing executes; a
changed --alpha: only the LADE Trainer and what follows it) and the BeamDagRunner on the same
pipeline. Like TFX's penguin_pipeline_local_e2e_test, it asserts on artifacts and MLMD."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"LongTailExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
              "Trainer_ce", "Trainer_lade", "ShiftEvaluator", "Pusher"}
LADE_DEPENDENTS = {"Trainer_lade", "ShiftEvaluator", "Pusher"}

pytestmark = pytest.mark.slow


def run_cli(output_dir: Path, *flags: str, timeout: int) -> str:
    """Runs pipeline/run.py as a user would (a script, the installed package); returns stdout."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipeline" / "run.py"), "--quick",
         "--output-dir", str(output_dir), *flags],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-3000:]
    return result.stdout


def executions(output_dir: Path) -> list[tuple[int, str, str]]:
    """(id, component id, state) of every MLMD execution, oldest first."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(output_dir / "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(connection)
    rows = []
    for context in store.get_contexts_by_type("node"):
        component = context.name.split(".", 1)[1]
        for execution in store.get_executions_by_context(context.id):
            state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
            rows.append((execution.id, component, state))
    return sorted(rows)


@pytest.fixture(scope="module")
def first_run(fashion_mnist_dir, tmp_path_factory) -> tuple[Path, str]:
    output_dir = tmp_path_factory.mktemp("lade_output")
    return output_dir, run_cli(output_dir, timeout=1200)


@pytest.mark.timeout(1500)
def test_quick_pipeline_writes_report_plot_and_model(first_run):
    output_dir, stdout = first_run
    report_dir = output_dir / "report"
    for name in ("shift_report.md", "shift_report.json", "shift_accuracy.png"):
        assert str(report_dir / name) in stdout
    assert f"Pushed model: {output_dir / 'serving_model'}" in stdout
    assert {component for _, component, state in executions(output_dir)
            if state == "COMPLETE"} == COMPONENTS

    report = json.loads((report_dir / "shift_report.json").read_text())
    assert set(report) == {"distributions", "methods", "uniform"}
    assert report["distributions"] == ["F50", "F25", "F10", "F5", "F2", "U", "B2", "B5", "B10",
                                       "B25", "B50"]
    methods = ["Softmax", "PC Softmax", "PC Softmax + EM", "LADE", "LADE + EM"]
    assert list(report["methods"]) == methods and list(report["uniform"]) == methods
    for by_dist in report["methods"].values():
        assert list(by_dist) == report["distributions"]
        for cell in by_dist.values():
            assert 0 <= cell["mean"] <= 1 and 0 <= cell["std"] < 0.2
    assert report["methods"]["LADE"]["U"]["mean"] > 0.15  # chance is 0.1 (10 classes)
    class_info = json.loads(next(output_dir.glob(
        "pipeline_root/LongTailExampleGen/examples/*/class_info.json")).read_text())
    has_few_shot = min(class_info["counts"]["train"]) < 20
    for metrics in report["uniform"].values():
        assert set(metrics) == {"many", "medium", "few", "ece", "nll"}
        for key, value in metrics.items():
            if value is None:  # only an empty shot group has no value
                assert key == "few" and not has_few_shot
            else:
                assert math.isfinite(value) and value >= 0

    png = (report_dir / "shift_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "| LADE |" in (report_dir / "shift_report.md").read_text()


@pytest.mark.timeout(600)
def test_pushed_model_answers_for_a_batch_of_priors(first_run):
    import tensorflow as tf

    output_dir, _ = first_run
    versions = sorted((output_dir / "serving_model").iterdir())
    assert len(versions) == 1 and versions[0].name.isdigit()
    loaded = tf.saved_model.load(str(versions[0]))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(4, 28, 28, 1)).astype(np.float32)
    priors = rng.dirichlet(np.ones(10), size=4).astype(np.float32)
    outputs = loaded.signatures["serving_default"](images=tf.constant(images),
                                                   target_prior=tf.constant(priors))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (4, 10) and outputs["logits"].shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(outputs["class_ids"].numpy(), probabilities.argmax(axis=1))
    # The prior is an input: a one-hot prior forces that class.
    one_hot = np.eye(10, dtype=np.float32)[[3, 3, 7, 7]]
    forced = loaded.signatures["serving_default"](images=tf.constant(images),
                                                  target_prior=tf.constant(one_hot))
    np.testing.assert_array_equal(forced["class_ids"].numpy(), [3, 3, 7, 7])


@pytest.mark.timeout(900)
def test_rerun_with_same_flags_is_served_from_cache(first_run):
    output_dir, _ = first_run
    before = executions(output_dir)
    stdout = run_cli(output_dir, timeout=600)
    new = [row for row in executions(output_dir) if row not in before]
    assert {component for _, component, _ in new} == COMPONENTS
    assert {state for _, _, state in new} == {"CACHED"}, new
    assert len(list((output_dir / "serving_model").iterdir())) == 1  # nothing pushed again
    assert "Pushed model:" in stdout and (output_dir / "report" / "shift_report.json").exists()


@pytest.mark.timeout(600)
def test_beam_dag_runner_runs_the_same_pipeline_from_cache(first_run):
    output_dir, _ = first_run
    before = executions(output_dir)
    run_cli(output_dir, "--runner=beam", timeout=600)
    new = [row for row in executions(output_dir) if row not in before]
    assert {component for _, component, _ in new} == COMPONENTS
    assert {state for _, _, state in new} == {"CACHED"}, new


@pytest.mark.timeout(1200)
def test_changed_alpha_reruns_only_the_lade_trainer_and_what_follows(first_run):
    output_dir, _ = first_run
    before = executions(output_dir)
    run_cli(output_dir, "--alpha", "0.3", timeout=1000)
    new = {component: state for execution_id, component, state in executions(output_dir)
           if (execution_id, component, state) not in before}
    assert set(new) == COMPONENTS
    assert {c for c, state in new.items() if state == "COMPLETE"} == LADE_DEPENDENTS, new
    assert {c for c, state in new.items() if state == "CACHED"} == COMPONENTS - LADE_DEPENDENTS
    assert len(list((output_dir / "serving_model").iterdir())) == 2  # the new LADE model
