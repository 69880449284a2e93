"""pipeline.tuner: KerasTuner over LADE's alpha scored under label shift on the val split.

`python -m pipeline.tuner` on examples written by pipeline.prepare, and a real TFX Tuner whose best
alpha reaches the Trainer, both on long-tailed digits with 2 trials of 1 epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.tfx_support import run_local_pipeline

TRAINING_FLAGS = [
    "--arch",
    "small_cnn",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.05",
    "--warmup-epochs",
    "0.5",
]


def test_search_space_is_log_uniform_alpha_and_optional_lambda():
    from pipeline.tuner import search_space

    hp = search_space()
    [alpha] = hp.space
    assert (alpha.name, alpha.min_value, alpha.max_value, alpha.sampling) == (
        "alpha",
        0.01,
        1.0,
        "log",
    )
    assert [p.name for p in search_space(tune_lambda=True).space] == ["alpha", "remine_lambda"]


def test_oracles_by_name():
    import keras_tuner

    from pipeline.tuner import make_oracle, search_space
    from pipeline.tuning_config import TuningConfig

    kinds = {
        "random": keras_tuner.oracles.RandomSearchOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        "hyperband": keras_tuner.oracles.HyperbandOracle,
    }
    for name, kind in kinds.items():
        oracle = make_oracle(TuningConfig(name, max_trials=3), 4, search_space(), seed=0)
        assert isinstance(oracle, kind)
        assert (oracle.objective.name, oracle.objective.direction) == ("val_shift_accuracy", "max")
    with pytest.raises(ValueError, match="'grid'"):
        TuningConfig("grid")


def test_tuning_options_nested_or_flat_and_unknown_keys():
    from pipeline.tuner import tuning_options
    from pipeline.tuning_config import TuningConfig

    nested = {"train_config": {}, "tuner": {"tuner": "bayesian", "max_trials": 3}}
    flat = {"train_config": {}, "tuner": "bayesian", "max_trials": 3}
    expected = TuningConfig(tuner="bayesian", max_trials=3)
    assert tuning_options(nested) == tuning_options(flat) == expected
    with pytest.raises(ValueError, match="max_trails"):
        tuning_options({"train_config": {}, "max_trails": 3})
    with pytest.raises(ValueError, match="train_config"):
        tuning_options({"tuner": "random"})
    with pytest.raises(ValueError, match="max_trials = 0"):
        TuningConfig(max_trials=0)


def test_trial_table_markdown_shows_percentages():
    from pipeline.trial_report import trial_table_markdown

    text = trial_table_markdown(
        [
            {
                "trial_id": "0",
                "val_shift_accuracy": 0.8123,
                "val_shift_accuracy_se": 0.0041,
                "alpha": 0.05,
                "F50": 0.9,
                "U": 0.75,
            }
        ]
    )
    assert "| trial_id | val_shift_accuracy | val_shift_accuracy_se | alpha | F50 | U |" in text
    assert "| 0 | 81.23 | 0.41 | 0.05 | 90.00 | 75.00 |" in text


def val_logits_of_trial(output_dir: Path, trial_id: str, examples: Path, config: dict):
    """Logits of a trial's final checkpoint on the val split (independent of the tuner code)."""
    import tensorflow as tf

    from lade_tf.models import build_model
    from lade_tf.records import parse_dataset

    model = build_model(config["arch"], 10, (8, 8, 1))
    checkpoint_dir = output_dir / "lade_alpha" / f"trial_{trial_id}" / "checkpoints"
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(str(checkpoint_dir))
    ).expect_partial()
    data = list(parse_dataset(str(examples / "Split-val" / "*"), (8, 8, 1)))
    images = np.stack([x.numpy() for x, _ in data])
    labels = np.array([int(y) for _, y in data])
    return model.predict(images, verbose=0), labels


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tune_cli_prints_trials_and_best_alpha(digits_folder, tmp_path, capsys):
    from lade_tf.priors import SHIFT_NAMES
    from lade_tf.records import read_class_info
    from lade_tf.shift_eval import evaluate_under_shift
    from pipeline.beam_args import beam_pipeline_args
    from pipeline.cli import tuner_main
    from pipeline.prepare import prepare_examples
    from pipeline.split_plan import PrepareConfig

    examples = tmp_path / "examples"
    prepare_examples(
        f"folder:{digits_folder}",
        str(examples),
        PrepareConfig(imbalance_ratio=10.0, n_max=100, val_per_class=10),
        pipeline_args=beam_pipeline_args("in_memory"),
    )
    output = tmp_path / "tuning"
    status = tuner_main(
        [
            "--examples-dir",
            str(examples),
            "--output-dir",
            str(output),
            "--tuner",
            "random",
            "--max-trials",
            "2",
            *TRAINING_FLAGS,
        ]
    )
    printed = capsys.readouterr().out
    rows = json.loads((output / "trials.json").read_text())

    assert status == 0
    assert len(rows) == 2 and all(row["status"] == "COMPLETED" for row in rows)
    assert (output / "trials.md").read_text() in printed
    best = rows[0]
    assert f"best alpha: {best['alpha']:.4g}" in printed
    assert rows[0]["val_shift_accuracy"] >= rows[1]["val_shift_accuracy"]
    assert rows[0]["alpha"] != rows[1]["alpha"]  # two points of the space were tried
    for row in rows:
        assert row["val_shift_accuracy"] == pytest.approx(
            np.mean([row[name] for name in SHIFT_NAMES])
        )
        # 100 val images: the objective's standard error is a few points, never zero.
        assert 0.005 < row["val_shift_accuracy_se"] < 0.2

    # The objective is the shift protocol on the VAL split of the trial's trained model.
    config = dict(zip(TRAINING_FLAGS[::2], TRAINING_FLAGS[1::2]))
    logits, labels = val_logits_of_trial(
        output, best["trial_id"], examples, {"arch": config["--arch"]}
    )
    assert len(labels) == 100  # val: 10 per class
    # U keeps every val image and a LADE model's uniform-prior prediction is argmax f: plain
    # accuracy, computed here without the library.
    assert best["U"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels), abs=1e-6)
    # The shifted sets are seeded subsamples: the one shift protocol the evaluator also uses.
    counts = read_class_info(str(examples))["counts"]["train"]
    shifted = evaluate_under_shift(logits, labels, counts, "lade")
    for name in SHIFT_NAMES:
        assert best[name] == pytest.approx(shifted[name]["mean"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tuner_component_feeds_best_alpha_to_the_trainer(digits_folder, tmp_path):
    from tfx import v1 as tfx

    from pipeline.example_gen import LongTailExampleGen
    from pipeline.training_components import LadeTrainer, LadeTuner

    train_config = {
        "loss": "lade",
        "arch": "small_cnn",
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.05,
        "warmup_epochs": 0.5,
    }
    example_gen = LongTailExampleGen(
        source=f"folder:{digits_folder}", imbalance_ratio=10.0, n_max=100, val_per_class=10, seed=0
    )
    splits = {
        "train_args": tfx.proto.TrainArgs(splits=["train"]),
        "eval_args": tfx.proto.EvalArgs(splits=["val"]),
    }
    tuner = LadeTuner(
        examples=example_gen.outputs["examples"],
        tuner_fn="pipeline.tuner.tuner_fn",
        custom_config={
            "train_config": train_config,
            "tuner": {"tuner": "random", "max_trials": 2, "tune_lambda": True},
        },
        **splits,
    )
    # The pipeline's Trainer: its alpha property (a RuntimeParameter on Kubeflow) yields to the
    # Tuner's best alpha, its epochs property replaces the config's.
    trainer = LadeTrainer(
        examples=example_gen.outputs["examples"],
        run_fn="pipeline.trainer.run_fn",
        hyperparameters=tuner.outputs["best_hyperparameters"],
        custom_config={"train_config": {**train_config, "epochs": 3}},
        epochs=1,
        alpha=0.5,
        **splits,
    )
    artifacts = run_local_pipeline("tuner_test", [example_gen, tuner, trainer], tmp_path)
    [best_hp], [results], [model_run] = (
        artifacts[t] for t in ("HyperParameters", "TunerResults", "ModelRun")
    )
    best = json.loads((Path(best_hp.uri) / "best_hyperparameters.txt").read_text())["values"]
    table = json.loads((Path(results.uri) / "tuner_results.json").read_text())
    # The trial table lives in the Tuner's output artifact, not in TFX's deleted temp dir.
    trials = json.loads((Path(results.uri) / "trials.json").read_text())
    assert "| trial_id |" in (Path(results.uri) / "trials.md").read_text()
    assert (Path(results.uri) / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(table) == len(trials) == 2
    assert max(r["score"] for r in table) == pytest.approx(
        max(r["val_shift_accuracy"] for r in trials)
    )
    # The best hyper-parameters are those of the best-scoring trial, and both were tuned.
    top_score = max(r["val_shift_accuracy"] for r in trials)
    assert (best["alpha"], best["remine_lambda"]) in [
        (r["alpha"], r["remine_lambda"]) for r in trials if r["val_shift_accuracy"] == top_score
    ]
    assert trials[0]["alpha"] != trials[1]["alpha"]
    assert trials[0]["remine_lambda"] != trials[1]["remine_lambda"]
    trained = json.loads((Path(model_run.uri) / "train_config.json").read_text())
    assert (trained["alpha"], trained["remine_lambda"]) == (best["alpha"], best["remine_lambda"])
    assert trained["epochs"] == 1
