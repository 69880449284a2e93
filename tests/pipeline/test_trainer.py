"""pipeline.trainer: the TFX Trainer run_fn, in a real LocalDagRunner run on long-tailed digits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.tfx_support import run_local_pipeline

TRAIN_CONFIG = {
    "loss": "lade",
    "alpha": 0.3,
    "arch": "small_cnn",
    "epochs": 2,
    "batch_size": 32,
    "learning_rate": 0.05,
    "warmup_epochs": 0.5,
    "strategy": "auto",
}


def test_run_fn_applies_the_tuners_hyperparameters_config_dict():
    """TFX hands run_fn a HyperParameters config dict; TrainConfig reads its values."""
    import keras_tuner

    from lade_tf.train_config import TrainConfig

    hp = keras_tuner.HyperParameters()
    hp.Float("alpha", 0.01, 1.0, sampling="log")
    hp.Float("remine_lambda", 0.01, 1.0, sampling="log")
    hp.values.update({"alpha": 0.37, "remine_lambda": 0.02, "tuner/epochs": 3})
    config = TrainConfig(loss="lade", alpha=0.1, epochs=5)
    tuned = config.with_hyperparameters(hp.get_config())
    assert (tuned.alpha, tuned.remine_lambda, tuned.epochs) == (0.37, 0.02, 5)
    assert config.with_hyperparameters(None) is config


def test_examples_dir_and_stable_checkpoint_dir(tmp_path):
    from lade_tf.train_config import TrainConfig
    from pipeline.trainer import default_checkpoint_dir, examples_dir_from_files

    (tmp_path / "ex" / "Split-train").mkdir(parents=True)
    (tmp_path / "ex" / "class_info.json").write_text("{}")
    pattern = str(tmp_path / "ex" / "Split-train" / "*")
    assert examples_dir_from_files([pattern]) == str(tmp_path / "ex")
    with pytest.raises(ValueError, match="class_info.json"):
        examples_dir_from_files([str(tmp_path / "Split-train" / "*")])
    with pytest.raises(ValueError, match="several example directories"):
        examples_dir_from_files([pattern, "/elsewhere/Split-train/*"])

    config = TrainConfig(loss="lade")
    first = default_checkpoint_dir("/root/Trainer_lade/model_run/7", config, [pattern])
    again = default_checkpoint_dir("/root/Trainer_lade/model_run/12", config, [pattern])
    other = default_checkpoint_dir(
        "/root/Trainer_lade/model_run/12", TrainConfig(loss="lade", alpha=0.5), [pattern]
    )
    assert first == again != other
    assert first.startswith("/root/Trainer_lade/checkpoints/")


def test_run_fn_rejects_a_custom_config_without_train_config():
    from tfx.components.trainer.fn_args_utils import FnArgs

    from pipeline.trainer import run_fn

    with pytest.raises(ValueError, match="'train_config'"):
        run_fn(FnArgs(custom_config={"epochs": 3}, train_files=[], eval_files=[]))
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        run_fn(FnArgs(custom_config={"train_config": {"epoch": 3}}, train_files=[], eval_files=[]))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trainer_component_trains_exports_and_writes_run_files(digits_folder, tmp_path):
    import keras
    import tensorflow as tf
    from tfx import v1 as tfx

    from lade_tf.records import parse_dataset, read_class_info
    from pipeline.example_gen import LongTailExampleGen

    example_gen = LongTailExampleGen(
        source=f"folder:{digits_folder}", imbalance_ratio=10.0, n_max=100, val_per_class=10, seed=0
    )
    trainer = tfx.components.Trainer(
        examples=example_gen.outputs["examples"],
        run_fn="pipeline.trainer.run_fn",
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["val"]),
        custom_config={"train_config": TRAIN_CONFIG},
    )
    artifacts = run_local_pipeline("trainer_test", [example_gen, trainer], tmp_path)
    [examples], [model], [model_run] = (artifacts[t] for t in ("Examples", "Model", "ModelRun"))
    run_dir = Path(model_run.uri)
    info = read_class_info(examples.uri)

    config = json.loads((run_dir / "train_config.json").read_text())
    assert {k: config[k] for k in TRAIN_CONFIG} == TRAIN_CONFIG
    assert json.loads((run_dir / "class_info.json").read_text()) == info
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    assert history[1]["loss"] < history[0]["loss"]
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    checkpoints = list((tmp_path / "root" / "Trainer" / "checkpoints").glob("*/ckpt-2.index"))
    assert len(checkpoints) == 1

    # The raw-logits model and the served model are the same trained network: served
    # probabilities = softmax(logits + log p_t) for a LADE model (DESIGN section 1).
    raw = keras.saving.load_model(run_dir / "model.keras")
    images = np.stack(
        [
            x.numpy()
            for x, _ in parse_dataset(os.path.join(examples.uri, "Split-val", "*"), (8, 8, 1)).take(
                6
            )
        ]
    )
    logits = raw.predict(images, verbose=0)
    served = tf.saved_model.load(os.path.join(model.uri, "Format-Serving"))
    prior = np.asarray(info["counts"]["train"], np.float32)[::-1]
    prior = np.tile(prior / prior.sum(), (len(images), 1))
    outputs = served.signatures["serving_default"](
        images=tf.constant(images), target_prior=tf.constant(prior)
    )
    expected = tf.nn.softmax(logits + np.log(prior)).numpy()
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-5)
