"""lade_tf.train_config and lade_tf.train_flags: the one owner of the training settings and of
which loss takes which option, and the flags generated from it. No Keras or TensorFlow needed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from lade_tf.train_config import LOSS_OPTIONS, TrainConfig, inference_tau, loss_takes
from lade_tf.train_flags import add_train_config_flags, train_config_from_flags

pytestmark = pytest.mark.backend_agnostic


def test_config_round_trips_through_json():
    config = TrainConfig(loss="lade", alpha=0.3, epochs=7, max_train_examples=100, xla=True)
    text = json.dumps(config.to_dict())
    assert TrainConfig.from_dict(json.loads(text)) == config
    assert TrainConfig.from_dict({}) == TrainConfig()


def test_config_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="'learnig_rate'"):
        TrainConfig.from_dict({"learnig_rate": 0.1})


@pytest.mark.parametrize(
    "field, value",
    [
        ("loss", "focal"),
        ("optimizer", "rmsprop"),
        ("schedule", "linear"),
        ("strategy", "gpu"),
        ("epochs", 0),
        ("batch_size", 2.5),
        ("learning_rate", 0.0),
        ("weight_decay", -1.0),
        ("momentum", 1.0),
        ("alpha", float("nan")),
        ("max_train_examples", 0),
        ("augment", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_hyperparameters_replace_fields_and_tuner_epochs_only_when_asked():
    config = TrainConfig(loss="lade", alpha=0.1, epochs=5)
    values = {"alpha": 0.37, "remine_lambda": 0.02, "tuner/epochs": 3, "tuner/round": 0}
    tuned = config.with_hyperparameters(values)
    assert (tuned.alpha, tuned.remine_lambda, tuned.epochs) == (0.37, 0.02, 5)
    assert tuned == TrainConfig(loss="lade", alpha=0.37, remine_lambda=0.02, epochs=5)
    trial = config.with_hyperparameters(values, tuner_epochs=True)
    assert (trial.alpha, trial.epochs) == (0.37, 3)
    # A HyperParameters.get_config() dict, as the TFX Trainer receives it.
    space = [{"class_name": "Float", "config": {"name": "alpha"}}]
    assert config.with_hyperparameters({"space": space, "values": values}) == tuned
    assert config.with_hyperparameters(None) is config
    assert config.with_hyperparameters({}) is config
    # An option the loss does not take is left out, as for_loss does.
    assert TrainConfig(loss="ce").with_hyperparameters({"alpha": 0.5}) == TrainConfig(loss="ce")
    with pytest.raises(ValueError, match="alpha = -1.0"):
        config.with_hyperparameters({"alpha": -1.0})


def test_config_checks_the_lade_options_where_it_is_made():
    with pytest.raises(ValueError, match="importance = 'paper'"):
        TrainConfig(loss="lade", importance="paper")
    with pytest.raises(ValueError, match="lader_classes = 'some'"):
        TrainConfig.from_dict({"loss": "lade", "lader_classes": "some"})
    with pytest.raises(ValueError, match="tau = True"):
        TrainConfig(loss="logit_adjusted", tau=True)


def test_loss_options_follow_the_loss():
    assert TrainConfig(loss="ce").loss_options() == {}
    assert TrainConfig(loss="lade", alpha=0.5).loss_options() == {
        "alpha": 0.5,
        "remine_lambda": 0.1,
        "importance": "class",
        "lader_classes": "all",
    }
    assert TrainConfig(loss="logit_adjusted", tau=2.0).loss_options() == {"tau": 2.0}


@pytest.mark.parametrize(
    "loss, option, value",
    [
        ("lade", "tau", 2.0),
        ("ce", "alpha", 0.3),
        ("balanced_softmax", "importance", "sample"),
        ("logit_adjusted", "remine_lambda", 0.5),
    ],
)
def test_an_option_of_another_loss_is_refused_before_training(loss, option, value):
    with pytest.raises(ValueError, match=f"{option} = .* with loss = '{loss}'"):
        TrainConfig(loss=loss, **{option: value})
    # Its default is no setting at all: every loss accepts it.
    assert TrainConfig(loss=loss, **{option: getattr(TrainConfig(), option)}).loss == loss


def test_inference_tau_is_decided_once():
    assert TrainConfig(loss="logit_adjusted", tau=2.0).inference_tau == 2.0
    for loss in ("ce", "lade", "balanced_softmax"):
        assert TrainConfig(loss=loss).inference_tau == 1.0
        assert inference_tau(loss) == 1.0
        with pytest.raises(ValueError, match=f"tau = 2.0 with train_loss = '{loss}'"):
            inference_tau(loss, 2.0)
    assert [loss for loss in LOSS_OPTIONS if loss_takes(loss, "tau")] == ["logit_adjusted"]
    with pytest.raises(ValueError, match="train_loss = 'focal'"):
        inference_tau("focal")


def test_for_loss_keeps_each_loss_to_its_own_options():
    shared = {"alpha": 0.3, "tau": 2.0, "epochs": 4, "loss": "ce"}
    assert TrainConfig.for_loss("lade", shared) == TrainConfig(loss="lade", alpha=0.3, epochs=4)
    assert TrainConfig.for_loss("ce", shared) == TrainConfig(loss="ce", epochs=4)
    assert TrainConfig.for_loss("logit_adjusted", shared).tau == 2.0


def _parse(argv, **options):
    parser = argparse.ArgumentParser(prog="test")
    add_train_config_flags(parser, **options)
    return parser.parse_args(argv)


def test_flags_are_generated_from_the_fields_with_their_old_spellings():
    args = _parse(["--loss", "lade", "--lambda", "0.2", "--lr", "0.05", "--no-augment"])
    assert (args.remine_lambda, args.learning_rate, args.augment) == (0.2, 0.05, False)
    assert _parse(["--remine-lambda", "0.3"]).remine_lambda == 0.3
    config = train_config_from_flags(args, "lade")
    assert config == TrainConfig(loss="lade", remine_lambda=0.2, learning_rate=0.05, augment=False)
    unset = _parse([], unset_defaults=True, exclude=("loss",))
    assert unset.epochs is None and not hasattr(unset, "loss")
    assert train_config_from_flags(unset, "ce") == TrainConfig()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--alpha", "-1"], "alpha = -1.0: expected a finite number >= 0"),
        (["--epochs", "0"], "epochs = 0: expected an integer >= 1"),
        (["--importance", "paper"], "importance = 'paper'"),
        (["--max-train-examples", "x"], "invalid"),
    ],
)
def test_bad_flag_values_exit_2_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parsing_training_flags_loads_no_backend():
    code = (
        "import sys, argparse; from lade_tf.train_flags import add_train_config_flags; "
        "add_train_config_flags(argparse.ArgumentParser()); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_train_command_refuses_tau_for_lade_before_reading_anything(tmp_path, capsys):
    from lade_tf import train

    argv = ["--examples", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args([*argv, "--loss", "lade", "--tau", "2"])
    assert exit_info.value.code == 2
    assert "tau = 2.0 with loss = 'lade'" in capsys.readouterr().err
    _, config = train.parse_args([*argv, "--loss", "logit_adjusted", "--tau", "2"])
    assert config.inference_tau == 2.0
    assert not (tmp_path / "out").exists()
