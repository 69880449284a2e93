"""pipeline/training_components.py: the Trainer's epochs / alpha reach the TrainConfig."""

from __future__ import annotations

import pytest

from lade_tf.train_config import TrainConfig
from pipeline.training_components import LadeTrainerSpec, merge_train_config_overrides


def test_overrides_replace_only_what_is_set():
    custom = {"train_config": TrainConfig(loss="lade", epochs=6, alpha=0.1).to_dict()}
    merged = merge_train_config_overrides(custom, {"epochs": 2, "alpha": 0.5})
    assert TrainConfig.from_dict(merged["train_config"]) == TrainConfig(
        loss="lade", epochs=2, alpha=0.5
    )
    assert merge_train_config_overrides(custom, {"epochs": None, "alpha": None}) == custom
    assert custom["train_config"]["epochs"] == 6  # the input is not changed
    ce = {"train_config": TrainConfig(loss="ce").to_dict(), "checkpoint_dir": "/tmp/c"}
    merged = merge_train_config_overrides(ce, {"epochs": 3})
    assert merged["train_config"]["epochs"] == 3 and merged["checkpoint_dir"] == "/tmp/c"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, r"epochs = 0: expected an integer >= 1"),
        ({"epochs": 2.5}, r"epochs = 2.5: expected an integer >= 1"),
        ({"alpha": -0.1}, r"alpha = -0.1: expected a finite number >= 0"),
        ({"alpha": float("inf")}, r"alpha = inf: expected a finite number >= 0"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    custom = {"train_config": TrainConfig(loss="lade").to_dict()}
    with pytest.raises(ValueError, match=message):
        merge_train_config_overrides(custom, overrides)


def test_alpha_only_for_lade_and_train_config_required():
    with pytest.raises(ValueError, match=r"alpha = 0.3 with loss = 'ce'"):
        merge_train_config_overrides(
            {"train_config": TrainConfig(loss="ce").to_dict()}, {"alpha": 0.3}
        )
    with pytest.raises(ValueError, match=r"expected 'train_config'"):
        merge_train_config_overrides({"checkpoint_dir": "x"}, {"epochs": 2})


def test_spec_is_trainers_plus_two_optional_properties():
    from tfx.types import standard_component_specs

    extra = set(LadeTrainerSpec.PARAMETERS) - set(standard_component_specs.TrainerSpec.PARAMETERS)
    assert extra == {"epochs", "alpha"}
    assert all(LadeTrainerSpec.PARAMETERS[name].optional for name in extra)
    assert LadeTrainerSpec.INPUTS.keys() == standard_component_specs.TrainerSpec.INPUTS.keys()
