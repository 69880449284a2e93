"""The project's variants of TFX's Trainer and Tuner components, for what a compiled spec needs.

`LadeTrainer` is TFX's Trainer (same executor, same `run_fn` contract) with two more execution
properties, `epochs` and `alpha`. The TrainConfig travels as JSON in the Trainer's
`custom_config`, where a `RuntimeParameter` cannot sit (TFX serialises that dict to one string at
pipeline-build time), so these two are separate properties: plain values locally, RuntimeParameters
in a compiled Kubeflow / Vertex spec, merged into `train_config` by the executor before `run_fn`
runs. A Tuner's best hyper-parameters still win over `alpha` (run_fn applies them last).

`LadeTuner` is TFX's Tuner whose executor points the trial table's `results_dir` at the Tuner's
own `tuner_results` output artifact: KerasTuner's project directory sits in TFX's temporary
directory, which is deleted when the execution ends.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Union

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.tuner import component as tuner_component
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import json_utils

from lade_tf.train_config import TrainConfig

#: Execution properties LadeTrainer adds to TFX's Trainer (each a TrainConfig field).
TRAIN_CONFIG_OVERRIDES = ("epochs", "alpha")


def merge_train_config_overrides(
    custom_config: Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The Trainer custom_config with set `epochs` / `alpha` written into its train_config.

    Args:
        custom_config: the Trainer's custom_config ({"train_config": TrainConfig dict, ...}).
        overrides: {"epochs": int or None, "alpha": float or None}; None leaves the config's value.

    Raises:
        ValueError: for a custom_config without train_config, or what TrainConfig refuses (an
            epochs below 1, a negative alpha, an alpha for a loss other than LADE).
    """
    custom = dict(custom_config or {})
    if not isinstance(custom.get("train_config"), Mapping):
        raise ValueError(
            f"Trainer custom_config keys {sorted(custom)}: expected 'train_config' "
            "(a TrainConfig dict)"
        )
    given = {key: value for key, value in overrides.items() if value is not None}
    config = TrainConfig.from_dict({**custom["train_config"], **given})
    custom["train_config"] = config.to_dict()
    return custom


class LadeTrainerExecutor(trainer_executor.GenericExecutor):
    """TFX's generic Trainer executor, after merging `epochs` / `alpha` into the train_config."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 (TFX's name)
        """Merges the overrides into custom_config, then runs TFX's Trainer executor."""
        properties = dict(exec_properties)
        overrides = {key: properties.pop(key, None) for key in TRAIN_CONFIG_OVERRIDES}
        custom = json_utils.loads(properties.get("custom_config") or "null")
        properties["custom_config"] = json_utils.dumps(
            merge_train_config_overrides(custom, overrides)
        )
        super().Do(input_dict, output_dict, properties)


class LadeTrainerSpec(standard_component_specs.TrainerSpec):
    """TFX's TrainerSpec plus the optional `epochs` and `alpha` execution properties."""

    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        "epochs": ExecutionParameter(type=int, optional=True),
        "alpha": ExecutionParameter(type=float, optional=True),
    }
    INPUTS = dict(standard_component_specs.TrainerSpec.INPUTS)
    OUTPUTS: dict[str, ChannelParameter] = dict(standard_component_specs.TrainerSpec.OUTPUTS)


class LadeTrainer(base_component.BaseComponent):
    """TFX's Trainer (function-path `run_fn`) with `epochs` / `alpha` as execution properties.

    Args:
        examples, schema, hyperparameters, run_fn, train_args, eval_args, custom_config: as for
            `tfx.components.Trainer`.
        epochs: overrides `custom_config["train_config"]["epochs"]` (int or RuntimeParameter).
        alpha: overrides the LADE train_config's alpha (float or RuntimeParameter); only for a
            "lade" train_config.
    """

    SPEC_CLASS = LadeTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(LadeTrainerExecutor)

    def __init__(
        self,
        *,
        examples,
        run_fn: str,
        custom_config: Mapping[str, Any],
        schema=None,
        hyperparameters=None,
        train_args: Optional[trainer_pb2.TrainArgs] = None,
        eval_args: Optional[trainer_pb2.EvalArgs] = None,
        epochs: Optional[Union[int, data_types.RuntimeParameter]] = None,
        alpha: Optional[Union[float, data_types.RuntimeParameter]] = None,
    ):
        spec = LadeTrainerSpec(
            examples=examples,
            schema=schema,
            hyperparameters=hyperparameters,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            run_fn=run_fn,
            custom_config=json_utils.dumps(dict(custom_config)),
            epochs=epochs,
            alpha=alpha,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)


class LadeTunerExecutor(tuner_executor.Executor):
    """TFX's Tuner executor, with the trial table written into the `tuner_results` artifact."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 (TFX's name)
        """Sets custom_config's `tuner.results_dir` to the output artifact, then tunes."""
        properties = dict(exec_properties)
        custom = json.loads(properties.get("custom_config") or "{}")
        results_uri = artifact_utils.get_single_uri(
            output_dict[standard_component_specs.TUNER_RESULTS_KEY]
        )
        if isinstance(custom.get("tuner"), Mapping):
            custom["tuner"] = {**custom["tuner"], "results_dir": results_uri}
        else:
            custom["results_dir"] = results_uri
        properties["custom_config"] = json.dumps(custom)
        super().Do(input_dict, output_dict, properties)


class LadeTuner(tuner_component.Tuner):
    """`tfx.components.Tuner` whose trials.json / trials.md / trials.png land in `tuner_results`."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(LadeTunerExecutor)
