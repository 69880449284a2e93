"""LADE trained with MultiWorkerMirroredStrategy on two local workers equals one worker.

Two `python -m pipeline.trainer --strategy multi_worker` processes (TF_CONFIG on 127.0.0.1, free
ports) split every global batch of 32 digits images; the reference is one process with the default
strategy on the same global batches. The custom training loop (Keras 3 fit fails under
MultiWorkerMirroredStrategy, keras-team/keras#20585), LADER on the global batch and synchronised
batch norm make the loss curve and the final weights agree.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.tfx, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING_FLAGS = ["--loss", "lade", "--alpha", "0.5", "--arch", "small_cnn", "--epochs", "3",
                  "--batch-size", "32", "--learning-rate", "0.05", "--warmup-epochs", "0.5",
                  "--seed", "1"]


@pytest.fixture(scope="module")
def digits_examples_dir(digits_folder, tmp_path_factory) -> Path:
    """Long-tailed digits (IR 10, n_max 100, 10 val per class) written by pipeline.prepare."""
    from pipeline.beam_args import beam_pipeline_args
    from pipeline.prepare import PrepareConfig, prepare_examples

    root = digits_folder
    output = tmp_path_factory.mktemp("examples") / "digits"
    prepare_examples(f"folder:{root}", str(output),
                     PrepareConfig(imbalance_ratio=10.0, n_max=100, val_per_class=10),
                     pipeline_args=beam_pipeline_args("in_memory"))
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_trainer(examples: Path, output: Path, strategy: str, tf_config: dict | None,
                  log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    command = [sys.executable, "-m", "pipeline.trainer", "--examples-dir", str(examples),
               "--output-dir", str(output), "--strategy", strategy, *TRAINING_FLAGS]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.timeout(600)
def test_two_workers_follow_the_single_worker_loss_curve(digits_examples_dir, tmp_path):
    import keras

    from lade_tf.training import read_history

    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    runs = {
        "worker0": start_trainer(digits_examples_dir, tmp_path / "multi", "multi_worker",
                                 {"cluster": cluster, "task": {"type": "worker", "index": 0}},
                                 tmp_path / "worker0.log"),
        "worker1": start_trainer(digits_examples_dir, tmp_path / "multi", "multi_worker",
                                 {"cluster": cluster, "task": {"type": "worker", "index": 1}},
                                 tmp_path / "worker1.log"),
        "single": start_trainer(digits_examples_dir, tmp_path / "single", "auto", None,
                                tmp_path / "single.log"),
    }
    for name, process in runs.items():
        code = process.wait(timeout=540)
        assert code == 0, f"{name} failed:\n" + (tmp_path / f"{name}.log").read_text()[-4000:]

    single = read_history(tmp_path / "single" / "checkpoints")
    multi = read_history(tmp_path / "multi" / "checkpoints")
    assert [row["epoch"] for row in multi] == [0, 1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose([r[key] for r in multi], [r[key] for r in single],
                                   rtol=1e-3, atol=1e-4, err_msg=key)
    assert multi[-1]["loss"] < multi[0]["loss"]

    # Only the chief (worker 0) wrote outputs; the other worker's checkpoint copies are gone.
    assert sorted(os.listdir(tmp_path / "multi")) == ["checkpoints", "model_run", "serving_model"]
    single_model = keras.saving.load_model(tmp_path / "single" / "model_run" / "model.keras")
    multi_model = keras.saving.load_model(tmp_path / "multi" / "model_run" / "model.keras")
    for got, expected in zip(multi_model.get_weights(), single_model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    config = json.loads((tmp_path / "multi" / "model_run" / "train_config.json").read_text())
    assert (config["strategy"], config["alpha"]) == ("multi_worker", 0.5)
