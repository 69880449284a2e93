"""pipeline/flags.py: one flag per TrainConfig field, YAML --config, --quick, loss options."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from lade_tf.train_config import TrainConfig
from pipeline import blessing, flags


def parse(*argv: str) -> argparse.Namespace:
    return flags.parse_args(flags.build_parser(), list(argv))


def test_every_train_config_field_has_exactly_one_flag():
    dests = [action.dest for action in flags.build_parser()._actions]
    for field in dataclasses.fields(TrainConfig):
        if field.name != "loss":
            assert dests.count(field.name) == 1, field.name


def test_unset_flags_keep_train_config_defaults():
    args = parse()
    for loss in flags.LOSS_NAMES:
        assert flags.training_config_from_args(args, loss) == TrainConfig(loss=loss)
    assert args.losses == ("ce", "lade") and args.runner == "local"
    assert args.output_dir == Path("lade_output") and args.tune is False


def test_flags_reach_train_config():
    args = parse(
        "--epochs",
        "7",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--schedule",
        "step",
        "--warmup-epochs",
        "1",
        "--weight-decay",
        "0.001",
        "--seed",
        "3",
        "--strategy",
        "mirrored",
        "--mixed-precision",
        "--xla",
        "--no-augment",
        "--arch",
        "small_cnn",
        "--max-train-examples",
        "500",
    )
    got = flags.training_config_from_args(args, "ce")
    assert got == TrainConfig(
        loss="ce",
        epochs=7,
        batch_size=64,
        optimizer="adam",
        learning_rate=0.01,
        schedule="step",
        warmup_epochs=1.0,
        weight_decay=0.001,
        seed=3,
        strategy="mirrored",
        mixed_precision=True,
        xla=True,
        augment=False,
        arch="small_cnn",
        max_train_examples=500,
    )


def test_loss_options_reach_only_the_loss_that_uses_them():
    args = parse(
        "--alpha",
        "0.3",
        "--lambda",
        "0.05",
        "--importance",
        "class",
        "--lader-classes",
        "present",
        "--tau",
        "2",
        "--losses",
        "ce,lade,logit_adjusted",
    )
    lade = flags.training_config_from_args(args, "lade")
    assert (lade.alpha, lade.remine_lambda, lade.importance, lade.lader_classes) == (
        0.3,
        0.05,
        "class",
        "present",
    )
    assert lade.tau == TrainConfig().tau
    # The CE config must not change with --alpha, or TFX would rerun the CE Trainer.
    assert flags.training_config_from_args(args, "ce") == TrainConfig(loss="ce")
    assert flags.training_config_from_args(args, "logit_adjusted") == TrainConfig(
        loss="logit_adjusted", tau=2.0
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tau", "2"], "tau = 2.0 is set but no trained loss (ce,lade) takes it"),
        (["--alpha", "0.3", "--losses", "ce"], "alpha = 0.3 is set but no trained loss (ce)"),
    ],
)
def test_an_option_no_trained_loss_takes_is_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_quick_fills_only_unset_flags():
    args = parse("--quick")
    for name, value in flags.QUICK_SETTINGS.items():
        assert getattr(args, name) == value
    quick = flags.training_config_from_args(args, "lade")
    assert quick.epochs == flags.QUICK_SETTINGS["epochs"]
    assert quick.max_train_examples == flags.QUICK_SETTINGS["max_train_examples"]
    explicit = parse("--quick", "--epochs", "5", "--beam-mode", "multi_processing")
    assert explicit.epochs == 5 and explicit.beam_mode == "multi_processing"
    assert parse().beam_mode is None and parse().epochs is None


def test_pipeline_defaults_fill_what_quick_and_flags_leave_unset(tmp_path: Path):
    def parse_pipeline(*argv: str) -> argparse.Namespace:
        return flags.parse_args(
            flags.build_parser(), list(argv), unset_defaults=flags.PIPELINE_DEFAULTS
        )

    # Training flags left unset take TrainConfig's defaults, the one place they are defined.
    assert parse_pipeline().epochs is None
    assert flags.training_config_from_args(parse_pipeline(), "lade").epochs == TrainConfig().epochs
    assert parse_pipeline().beam_mode == flags.PIPELINE_DEFAULTS["beam_mode"]
    assert parse_pipeline("--quick").epochs == flags.QUICK_SETTINGS["epochs"]
    assert parse_pipeline("--epochs", "3").epochs == 3
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 5\n")
    assert parse_pipeline("--config", str(path)).epochs == 5


def test_yaml_config_sets_values_and_command_line_wins(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "epochs: 9\nbatch-size: 32\nlosses: [ce, balanced_softmax, lade]\nlambda: 0.5\n"
        "mixed_precision: true\nimbalance_ratio: 50\nbeam_args: ['--a=1']\n"
        "runner: beam\n"
    )
    # The explicit flag wins whether it comes before or after --config.
    for argv in (
        ["--epochs", "4", "--config", str(path)],
        ["--config", str(path), "--epochs", "4"],
    ):
        args = parse(*argv)
        assert args.epochs == 4 and args.batch_size == 32 and args.runner == "beam"
        assert args.losses == ("ce", "balanced_softmax", "lade") and args.imbalance_ratio == 50.0
        assert args.remine_lambda == 0.5 and args.mixed_precision is True
        assert args.beam_args == ["--a=1"]
    assert parse("--config", str(path), "--beam-arg=--b=2").beam_args == ["--a=1", "--b=2"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("epoch: 3\n", "unknown setting 'epoch'"),
        ("epochs: 0\n", "setting 'epochs'"),
        ("optimizer: rmsprop\n", "optimizer = 'rmsprop': expected one of"),
        ("losses: ce,hinge\n", "unknown loss 'hinge'"),
        ("xla: maybe\n", "expected true or false"),
        ("- epochs\n", "expected a mapping"),
    ],
)
def test_yaml_config_errors_name_the_bad_setting(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        parse("--config", str(path))


@pytest.mark.parametrize("losses", ["ce,hinge", "ce,ce", ","])
def test_bad_losses_flag_is_rejected(losses: str, capsys):
    with pytest.raises(SystemExit):
        parse("--losses", losses)
    assert "--losses" in capsys.readouterr().err


def test_training_flags_on_their_own_parser(tmp_path: Path):
    """What `python -m pipeline.tuner` does: training + data + tuner flags, --config honoured."""
    parser = argparse.ArgumentParser()
    flags.add_training_flags(parser)
    flags.add_data_flags(parser)
    flags.add_tuner_flags(parser)
    path = tmp_path / "tune.yaml"
    path.write_text("alpha: 0.2\nmax_trials: 3\ntuner: bayesian\n")
    args = flags.parse_args(parser, ["--config", str(path), "--epochs", "2"])
    assert (args.max_trials, args.tuner, args.source) == (3, "bayesian", "fashion_mnist")
    got = flags.training_config_from_args(args)
    assert got == TrainConfig(loss="lade", alpha=0.2, epochs=2)


def test_push_defaults_to_lade_else_the_first_loss():
    from pipeline.run import push_loss

    assert push_loss(parse()) == "lade"
    assert push_loss(parse("--losses", "balanced_softmax,ce")) == "balanced_softmax"
    assert push_loss(parse("--losses", "ce,lade", "--push", "ce")) == "ce"
    with pytest.raises(ValueError, match="--push logit_adjusted"):
        push_loss(parse("--push", "logit_adjusted"))


def test_example_gen_gets_only_the_data_flags_that_are_set():
    from pipeline.run import example_gen_args

    assert example_gen_args(parse()) == {
        "source": "fashion_mnist",
        "imbalance_ratio": 100.0,
        "profile": "exp",
        "val_per_class": 200,
        "seed": 0,
    }
    assert example_gen_args(
        parse(
            "--source",
            "folder:/data/x",
            "--imbalance-ratio",
            "50",
            "--test-fraction",
            "0.2",
            "--image-size",
            "32x32",
            "--class-order",
            "random",
            "--data-seed",
            "4",
        )
    ) == {
        "source": "folder:/data/x",
        "imbalance_ratio": 50.0,
        "profile": "exp",
        "val_per_class": 200,
        "seed": 4,
        "class_order": "random",
        "test_fraction": 0.2,
        "image_size": "32x32",
    }


def test_help_shows_train_config_defaults(capsys):
    with pytest.raises(SystemExit):
        flags.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    defaults = TrainConfig()
    assert f"--epochs EPOCHS training epochs (default: {defaults.epochs})" in text
    assert f"LADE: weight of the LADER regulariser (default: {defaults.alpha})" in text
    assert "(default: on)" in text and "(default: off)" in text  # --augment, --xla
    assert "(default: None)" not in text
    assert "--log-level {error,warning,info,debug}" in text and "(default: warning)" in text
    assert "--bless-margin-mean BLESS_MARGIN_MEAN" in text and "(default: 0.01)" in text
    assert "(default: 1, not checked)" in text  # --bless-margin-ece


def test_blessing_margins_and_log_level():
    args = parse()
    margins = (args.bless_margin_mean, args.bless_margin_uniform, args.bless_margin_ece)
    assert margins == (0.01, 0.01, blessing.UNCHECKED_MARGIN)
    assert args.log_level == "warning"
    args = parse("--bless-margin-mean", "0", "--bless-margin-ece", "0.02", "--log-level", "info")
    assert (args.bless_margin_mean, args.bless_margin_ece, args.log_level) == (0.0, 0.02, "info")


@pytest.mark.parametrize("value", ["-0.01", "1.5", "nan", "one"])
def test_bad_blessing_margin_is_refused(value: str, capsys):
    with pytest.raises(SystemExit):
        parse("--bless-margin-uniform", value)
    error = capsys.readouterr().err
    assert "--bless-margin-uniform" in error
    if value != "one":
        assert f"{value!r}: expected a margin between 0 and 1" in error
