"""`python -m lade_tf.train` and the library in an environment without TensorFlow (.venv-jax:
Keras 3 on JAX), on data written by `pipeline.prepare`: stage 4 of scripts/test.sh.

Where TensorFlow is installed these tests are skipped (they are about its absence); the other
stages run with TensorFlow and leave this folder out.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.no_tensorflow

if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip(
        "TensorFlow is installed: these tests run in .venv-jax (scripts/test.sh stage 4)",
        allow_module_level=True,
    )

import keras  # noqa: E402

from lade_tf import train  # noqa: E402
from lade_tf.priors import SHIFT_NAMES  # noqa: E402
from lade_tf.records import read_class_info, read_split  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

TENSORFLOW_FREE_MODULES = (
    "array_data",
    "array_training",
    "calibration",
    "checks",
    "label_shift",
    "layers",
    "losses",
    "metrics",
    "models",
    "prior_estimation",
    "priors",
    "process_settings",
    "recipe",
    "records",
    "schedules",
    "shift_eval",
    "train",
    "train_config",
    "train_flags",
)


def test_the_library_imports_without_tensorflow_on_jax():
    assert keras.backend.backend() == "jax"
    for name in TENSORFLOW_FREE_MODULES:
        importlib.import_module(f"lade_tf.{name}")
    # The tf.data / tf.distribute side says what it needs rather than half-working.
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        importlib.import_module("lade_tf.tf_training")


@pytest.mark.timeout(120)
def test_read_split_gives_the_source_pixels_of_every_prepared_digit(digits, digits_lt_examples):
    images, labels = digits
    source = {(image.tobytes(), int(label)) for image, label in zip(images, labels)}
    info = read_class_info(str(digits_lt_examples))
    for split in ("train", "val", "test"):
        split_images, split_labels = read_split(str(digits_lt_examples), split)
        assert split_images.shape == (sum(info["counts"][split]), 8, 8, 1)
        assert split_images.dtype == np.uint8
        np.testing.assert_array_equal(
            np.bincount(split_labels, minlength=10), info["counts"][split]
        )
        for image, label in zip(split_images, split_labels):
            assert (image[..., 0].tobytes(), int(label)) in source


@pytest.mark.timeout(300)
def test_training_on_digits_learns_and_the_known_prior_corrects_the_shift(
    digits_lt_examples, tmp_path
):
    argv = [
        "--examples", str(digits_lt_examples), "--output-dir", str(tmp_path), "--loss", "ce",
        "--arch", "small_cnn", "--epochs", "15", "--batch-size", "32", "--learning-rate", "0.05",
        "--warmup-epochs", "1", "--verbose", "0",
    ]  # fmt: skip
    assert train.main(argv) == 0
    report = json.loads((tmp_path / "shift_eval.json").read_text())
    assert report["backend"] == "jax"
    assert set(report["rows"]) == {"plain", "known_prior", "em_prior"}
    plain, known = report["rows"]["plain"], report["rows"]["known_prior"]
    assert list(plain["shift"]) == list(SHIFT_NAMES)
    # Measured 0.91 uniform; 83.6 -> 95.0 % at B50 with the prior (PC Softmax).
    assert plain["uniform"]["accuracy"] > 0.8
    assert known["shift"]["B50"]["mean"] > plain["shift"]["B50"]["mean"] + 0.04
    assert report["images_per_second"] > 0
    for name in ("model.keras", "history.json", "shift_eval.md", "shift_eval.png"):
        assert (tmp_path / name).stat().st_size > 0
    # The saved model is the trained one: its logits give the reported uniform accuracy.
    model = keras.saving.load_model(tmp_path / "model.keras")
    test_images, test_labels = read_split(str(digits_lt_examples), "test")
    logits = model.predict(test_images.astype(np.float32), verbose=0)
    accuracy = float(np.mean(logits.argmax(-1) == test_labels))
    assert accuracy == pytest.approx(plain["uniform"]["accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_command_trains_resnet32_with_lade_on_cifar10_lt(cifar10_lt_examples, tmp_path):
    command = [
        sys.executable, "-m", "lade_tf.train", "--examples", str(cifar10_lt_examples),
        "--output-dir", str(tmp_path), "--loss", "lade", "--arch", "resnet32_bbn",
        "--epochs", "2", "--batch-size", "64", "--warmup-epochs", "0.5", "--verbose", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # picks JAX by itself
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Epoch 2/2" in done.stdout  # Keras' per-epoch progress lines
    report = json.loads((tmp_path / "shift_eval.json").read_text())
    assert report["backend"] == "jax" and report["train_images"] == 689
    assert report["config"]["arch"] == "resnet32_bbn" and report["config"]["loss"] == "lade"
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert history["loss"][1] < history["loss"][0]
    for row in report["rows"].values():
        assert list(row["shift"]) == list(SHIFT_NAMES)
        assert all(0 <= row["shift"][name]["mean"] <= 1 for name in SHIFT_NAMES)
    assert "| known_prior |" in (tmp_path / "shift_eval.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--loss", "focal"], "loss = 'focal'"),
        (["--epochs", "0"], "epochs = 0"),
        (["--eval-seeds", "a,b"], "invalid literal"),
        (["--loss", "lade", "--tau", "2"], "tau = 2.0 with loss = 'lade'"),
    ],
)
def test_bad_flags_exit_2_naming_the_value(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train.parse_args(["--examples", str(tmp_path), "--output-dir", str(tmp_path), *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_directory_that_is_not_prepared_exits_2_and_says_why(tmp_path, capsys):
    assert train.main(["--examples", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "class_info.json not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
