"""`python pipeline/run.py --runner=local --quick` end to end on real Fashion-MNIST: LocalDagRunner,
Beam, both Trainers, the baseline Resolver, ShiftEvaluator, Pusher; then the TFX cache (same
flags: only the ShiftEvaluator and Pusher run again, because the baseline is now the first run's
model, and nothing is pushed twice; a changed --alpha: only the LADE Trainer and what follows it),
the BeamDagRunner on the same pipeline, and a deliberately worse model that the blessing against
the baseline keeps from being pushed. Like TFX's penguin_pipeline_local_e2e_test, it asserts on
artifacts and MLMD, and on accuracy levels that a broken LADE, a skipped prior correction or
shuffled labels cannot reach."""

from __future__ import annotations

import gzip
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {
    "LongTailExampleGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "Trainer_ce",
    "Trainer_lade",
    "ShiftEvaluator",
    "Pusher",
}
LADE_DEPENDENTS = {"Trainer_lade", "ShiftEvaluator", "Pusher"}
BASELINE_DEPENDENTS = {"ShiftEvaluator", "Pusher"}
# TFX runs a Resolver node afresh in every run (its input is what MLMD holds now).
RESOLVER = "latest_blessed_model_resolver"
# What a default-level run may print (measured: 48 lines for --quick); `--log-level info` prints
# about 220.
MAX_QUIET_LINES = 70
# On top of --quick (2 epochs of 3000 images): batch 32 and a quarter-epoch warm-up give about 190
# SGD steps instead of 46, enough for accuracy levels far from what a broken run reaches; 20
# validation images per class are the split the accuracy margins below were measured with.
TRAINING_FLAGS = ("--batch-size", "32", "--warmup-epochs", "0.25", "--val-per-class", "20")
FIRST_ALPHA, CHANGED_ALPHA = 0.1, 0.3

pytestmark = pytest.mark.slow


def run_cli(output_dir: Path, *flags: str, timeout: int, with_stderr: bool = False):
    """Runs pipeline/run.py as a user would (a script, the installed package); returns stdout,
    or (stdout, stderr) with `with_stderr`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "pipeline" / "run.py"),
            "--quick",
            *TRAINING_FLAGS,
            "--output-dir",
            str(output_dir),
            *flags,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-3000:]
    return (result.stdout, result.stderr) if with_stderr else result.stdout


def executions(output_dir: Path) -> list[tuple[int, str, str]]:
    """(id, component id, state) of every MLMD execution but the Resolver's, oldest first."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(output_dir / "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(connection)
    rows = []
    for context in store.get_contexts_by_type("node"):
        component = context.name.split(".", 1)[1]
        if component == RESOLVER:
            continue
        for execution in store.get_executions_by_context(context.id):
            state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
            rows.append((execution.id, component, state))
    return sorted(rows)


def lade_models(output_dir: Path) -> dict[float, Path]:
    """alpha -> model.keras of every LADE Trainer execution."""
    models = {}
    for path in (output_dir / "pipeline_root" / "Trainer_lade" / "model_run").glob("*/model.keras"):
        config = json.loads((path.parent / "train_config.json").read_text())
        models[config["alpha"]] = path
    return models


def log_partition_gap(model_path: Path, fashion_mnist_dir: Path) -> float:
    """|mean_i logsumexp_c f(x_i)[c] - log C| over the Fashion-MNIST test split (NumPy)."""
    import keras

    import lade_tf.models  # noqa: F401  (registers the model's custom layers for loading)

    with gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    logits = (
        keras.saving.load_model(model_path)
        .predict(images.astype(np.float32), batch_size=1000, verbose=0)
        .astype(np.float64)
    )
    top = logits.max(axis=1)
    log_partition = top + np.log(np.sum(np.exp(logits - top[:, None]), axis=1))
    return float(abs(np.mean(log_partition) - np.log(logits.shape[1])))


def blessings(output_dir: Path) -> list[dict]:
    """Custom properties of every ModelBlessing, oldest first."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(output_dir / "metadata.sqlite")
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = mlmd.MetadataStore(connection)
    rows = []
    for artifact in sorted(store.get_artifacts_by_type("ModelBlessing"), key=lambda a: a.id):
        properties = artifact.custom_properties
        rows.append(
            {
                key: value.int_value if value.HasField("int_value") else value.string_value
                for key, value in properties.items()
            }
        )
    return rows


@pytest.fixture(scope="module")
def first_run(fashion_mnist_dir, tmp_path_factory) -> tuple[Path, str, str]:
    output_dir = tmp_path_factory.mktemp("lade_output")
    return (output_dir, *run_cli(output_dir, timeout=1200, with_stderr=True))


@pytest.fixture(scope="module")
def second_run(first_run) -> tuple[list, str]:
    """The same command again: (executions it added, its stdout)."""
    output_dir = first_run[0]
    before = executions(output_dir)
    stdout = run_cli(output_dir, timeout=600)
    return [row for row in executions(output_dir) if row not in before], stdout


@pytest.mark.timeout(1500)
def test_quick_pipeline_writes_report_plot_and_model(first_run):
    output_dir, stdout, stderr = first_run
    report_dir = output_dir / "report"
    for name in ("shift_report.md", "shift_report.json", "shift_accuracy.png"):
        assert str(report_dir / name) in stdout
    assert f"Pushed model: {output_dir / 'serving_model'}" in stdout
    assert {
        component for _, component, state in executions(output_dir) if state == "COMPLETE"
    } == COMPONENTS
    # Quiet by default: one line per component start and finish, Keras progress, the summary.
    lines = (stdout + stderr).splitlines()
    assert len(lines) <= MAX_QUIET_LINES, "\n".join(lines)
    assert "Component Trainer_lade is running." in stderr and "Epoch 2/2" in stdout
    assert "Training small_cnn with lade on CPU:0: 1 replica(s)" in stdout  # the device line
    assert "Unable to register cu" not in stderr and "INFO:absl:Running launcher" not in stderr
    # Printed commands name this environment's interpreter, so they work pasted as they are.
    trainer_logs = next(output_dir.glob("pipeline_root/Trainer_lade/model_run/*/logs"))
    python = shlex.quote(sys.executable)
    assert f"TensorBoard:  {python} -m tensorboard.main --logdir {trainer_logs}" in stdout
    serve = (
        f"{python} -m serving.server --model_name lade --model_base_path "
        f"{output_dir / 'serving_model'} --rest_api_port 8501"
    )
    assert serve in stdout
    for command in (f"{python} -m tensorboard.main --help", f"{serve} --help"):
        pasted = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
        assert pasted.returncode == 0, (command, pasted.stderr[-2000:])

    report = json.loads((report_dir / "shift_report.json").read_text())
    assert set(report) == {"distributions", "methods", "uniform", "blessing"}
    blessing = report["blessing"]
    assert blessing["blessed"] and blessing["baseline"] is None
    assert "no blessed model yet" in blessing["reason"]
    assert blessing["alpha"] == {
        "value": FIRST_ALPHA,
        "source": "TrainConfig default, no --alpha given",
    }
    [first_blessing] = blessings(output_dir)
    [lade_model] = [
        a for a in (output_dir / "pipeline_root" / "Trainer_lade" / "model").iterdir() if a.is_dir()
    ]
    assert first_blessing["blessed"] == 1 and first_blessing["current_model_id"] > 0
    assert first_blessing["current_model"] == str(lade_model)
    assert report["distributions"] == [
        "F50",
        "F25",
        "F10",
        "F5",
        "F2",
        "U",
        "B2",
        "B5",
        "B10",
        "B25",
        "B50",
    ]
    methods = list(report["methods"])
    assert methods[:2] == ["Softmax", "PC Softmax"] and list(report["uniform"]) == methods
    assert {"PC Softmax + EM", "LADE", "LADE + EM"} <= set(methods), methods
    for by_dist in report["methods"].values():
        assert list(by_dist) == report["distributions"]
        # U keeps every test image; the shifted sets are subsamples that differ between seeds.
        assert by_dist["U"]["std"] < 1e-12  # every seed keeps every image: std of equal means
        assert any(cell["std"] > 0 for name, cell in by_dist.items() if name != "U")
        assert all(cell["std"] < 0.1 for cell in by_dist.values()), by_dist
    class_info = json.loads(
        next(
            output_dir.glob("pipeline_root/LongTailExampleGen/examples/*/class_info.json")
        ).read_text()
    )
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


# Measured with these flags over training seeds 0, 1, 2 (TF 2.16): LADE on the uniform
# test 0.679 / 0.629 / 0.631, plain Softmax 0.438 / 0.421 / 0.455; on B50 (1:50 backward shift)
# PC Softmax minus Softmax 0.447 / 0.339 / 0.273 and LADE minus Softmax 0.437 / 0.474 / 0.408.
# |mean logsumexp f - log C| of the LADE model 0.184 / 0.247 / 0.176 (log_partition_gap).
# Broken on purpose (seed 0): labels shuffled in training, LADE U 0.112 and Softmax U 0.100; the
# prior correction skipped, PC Softmax = Softmax (B50 0.131 both); LADER dropped (alpha ignored),
# accuracies unchanged (LADE U 0.655) but a log-partition gap of 2.34.


@pytest.mark.timeout(1500)
def test_quick_pipeline_accuracies_need_lade_and_the_prior_correction(first_run, fashion_mnist_dir):
    output_dir = first_run[0]
    report = json.loads((output_dir / "report" / "shift_report.json").read_text())
    accuracy = {
        method: {name: cell["mean"] for name, cell in by_dist.items()}
        for method, by_dist in report["methods"].items()
    }
    lade, softmax, pc_softmax = accuracy["LADE"], accuracy["Softmax"], accuracy["PC Softmax"]
    assert lade["U"] > 0.45, lade  # chance is 0.1; shuffled labels stay near it
    assert lade["U"] > softmax["U"] + 0.08, (lade, softmax)
    # The correction to the known target prior is what PC Softmax adds to Softmax; a LADE model
    # needs none against its training prior, so it beats Softmax where the tail dominates.
    assert pc_softmax["B50"] > softmax["B50"] + 0.15, (pc_softmax, softmax)
    assert lade["B50"] > softmax["B50"] + 0.2, (lade, softmax)
    # What accuracy cannot show: the LADER term (see log_partition_gap) is in the loss.
    gap = log_partition_gap(lade_models(output_dir)[FIRST_ALPHA], fashion_mnist_dir)
    assert gap < 1.0, gap


@pytest.mark.timeout(600)
def test_pushed_model_answers_for_a_batch_of_priors(first_run):
    import tensorflow as tf

    output_dir = first_run[0]
    versions = sorted((output_dir / "serving_model").iterdir())
    assert len(versions) == 1 and versions[0].name.isdigit()
    loaded = tf.saved_model.load(str(versions[0]))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(4, 28, 28, 1)).astype(np.float32)
    priors = rng.dirichlet(np.ones(10), size=4).astype(np.float32)
    outputs = loaded.signatures["serving_default"](
        images=tf.constant(images), target_prior=tf.constant(priors)
    )
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (4, 10) and outputs["logits"].shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(outputs["class_ids"].numpy(), probabilities.argmax(axis=1))
    # The prior is an input: a one-hot prior forces that class.
    one_hot = np.eye(10, dtype=np.float32)[[3, 3, 7, 7]]
    forced = loaded.signatures["serving_default"](
        images=tf.constant(images), target_prior=tf.constant(one_hot)
    )
    np.testing.assert_array_equal(forced["class_ids"].numpy(), [3, 3, 7, 7])


@pytest.mark.timeout(900)
def test_rerun_with_same_flags_is_served_from_cache(first_run, second_run):
    output_dir = first_run[0]
    new, stdout = second_run
    assert {component for _, component, _ in new} == COMPONENTS
    # As in TFX's own examples, the evaluator runs again: its baseline input is now the first
    # run's model, which it does not bless a second time, so nothing is pushed twice.
    states = {component: state for _, component, state in new}
    assert {c for c, state in states.items() if state == "COMPLETE"} == BASELINE_DEPENDENTS, new
    assert {
        c for c, state in states.items() if state == "CACHED"
    } == COMPONENTS - BASELINE_DEPENDENTS
    assert len(list((output_dir / "serving_model").iterdir())) == 1  # nothing pushed again
    versions = list((output_dir / "serving_model").iterdir())
    assert f"Pushed model: {versions[0]} (by an earlier run: the same model)" in stdout
    blessing = json.loads((output_dir / "report" / "shift_report.json").read_text())["blessing"]
    assert not blessing["blessed"] and "latest blessed model already" in blessing["reason"]
    assert blessings(output_dir)[-1]["already_blessed"] == 1


@pytest.mark.timeout(900)
def test_beam_dag_runner_runs_the_same_pipeline_from_cache(first_run, second_run):
    output_dir = first_run[0]
    before = executions(output_dir)
    run_cli(output_dir, "--runner=beam", timeout=600)
    new = [row for row in executions(output_dir) if row not in before]
    assert {component for _, component, _ in new} == COMPONENTS
    assert {state for _, _, state in new} == {"CACHED"}, new


@pytest.mark.timeout(1200)
def test_changed_alpha_reruns_only_the_lade_trainer_and_what_follows(first_run, fashion_mnist_dir):
    output_dir = first_run[0]
    before = executions(output_dir)
    # Margins of 1: this test is about caching and alpha, not about which alpha is better.
    margins = ("--bless-margin-mean", "1", "--bless-margin-uniform", "1")
    run_cli(output_dir, "--alpha", str(CHANGED_ALPHA), *margins, timeout=1000)
    new = {
        component: state
        for execution_id, component, state in executions(output_dir)
        if (execution_id, component, state) not in before
    }
    assert set(new) == COMPONENTS
    assert {c for c, state in new.items() if state == "COMPLETE"} == LADE_DEPENDENTS, new
    assert {c for c, state in new.items() if state == "CACHED"} == COMPONENTS - LADE_DEPENDENTS
    assert len(list((output_dir / "serving_model").iterdir())) == 2  # the new LADE model

    # The new alpha reached the loss. LADER's optimum is f(x)[c] = log C + log p_u(c|x) (DESIGN
    # section 1), so logsumexp_c f(x)[c] = log C, the closer the larger alpha; Balanced Softmax
    # (no LADER) leaves it free. Measured on the test split (training seeds 0, 1, 2): the gap to
    # log C fell from 0.184 / 0.247 / 0.176 at alpha 0.1 to 0.108 / 0.166 / 0.041 at 0.3 (drops of
    # 0.076 / 0.081 / 0.135; CE models: about 2.9); the assertion asks for a drop of 0.03.
    gap = {
        alpha: log_partition_gap(path, fashion_mnist_dir)
        for alpha, path in lade_models(output_dir).items()
    }
    assert set(gap) == {FIRST_ALPHA, CHANGED_ALPHA}
    assert gap[CHANGED_ALPHA] < gap[FIRST_ALPHA] - 0.03, gap


@pytest.mark.timeout(1800)
def test_worse_model_is_not_pushed_and_the_report_says_why(first_run):
    """A model trained for one epoch on 300 images, against the latest blessed model (the first
    run's, or the changed-alpha one when that test ran first) of the same MLMD."""
    output_dir = first_run[0]
    versions = sorted((output_dir / "serving_model").iterdir())
    before = executions(output_dir)
    stdout = run_cli(
        output_dir, "--losses", "lade", "--epochs", "1", "--max-train-examples", "300", timeout=800
    )
    new = {c: state for (i, c, state) in executions(output_dir) if (i, c, state) not in before}
    assert {c for c, state in new.items() if state == "COMPLETE"} >= LADE_DEPENDENTS, new
    assert sorted((output_dir / "serving_model").iterdir()) == versions  # not pushed
    assert "Pushed model: none (not blessed)" in stdout

    blessing = json.loads((output_dir / "report" / "shift_report.json").read_text())["blessing"]
    assert blessing["blessed"] is False
    baseline, candidate = blessing["baseline"], blessing["candidate"]
    assert baseline["method"] == "LADE" and baseline["model_id"] > 0
    assert candidate["mean"] < baseline["mean"] - blessing["margins"]["mean"]
    failed = {check["name"] for check in blessing["checks"] if not check["passed"]}
    assert "mean" in failed and "uniform" in failed, blessing["checks"]
    assert blessing["reason"].startswith("not blessed: ")
    assert (
        "vs baseline" in blessing["reason"]
        and f"MLMD id {baseline['model_id']}" in blessing["reason"]
    )
    markdown = (output_dir / "report" / "shift_report.md").read_text()
    assert "**LADE (lade): NOT blessed.**" in markdown and "Baseline: LADE (lade" in markdown
    assert f"Blessing:     {blessing['reason']}" in stdout
    latest = blessings(output_dir)[-1]
    assert latest["blessed"] == 0 and latest["baseline_model_id"] == baseline["model_id"]
