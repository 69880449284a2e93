"""The TFX pipeline as one pure function: plain parameters in, a `tfx.dsl.Pipeline` out.

LongTailExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> [Tuner] -> one Trainer per
loss -> ShiftEvaluator -> Pusher (docs/design.md section 4), and a Resolver with TFX's
LatestBlessedModelStrategy that gives the ShiftEvaluator the latest blessed model as its baseline.
Nothing here runs anything; `run.py` picks the runner. User code is referenced by function path
(`pipeline.trainer.run_fn`), never by `module_file`, so every process (Beam workers, a
Kubeflow/Vertex container) imports the same package: TFX's `module_file=` would package the
module and install it with `python -m pip`, which uv environments do not have.

With `runtime_parameters=True` (the Kubeflow / Vertex compile), epochs, alpha and the blessing
margins are TFX RuntimeParameters (RUNTIME_PARAMETERS names them), so a compiled spec can be
submitted again with other values; their defaults are the values given here. They reach the
Trainers as the `epochs` / `alpha` execution properties of
`pipeline.training_components.LadeTrainer` (the TrainConfig JSON in custom_config cannot hold
one) and the ShiftEvaluator as its margin parameters.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from tfx import v1 as tfx

from lade_tf.losses import LOSS_NAMES
from lade_tf.train_config import loss_takes
from pipeline.blessing import DEFAULT_MARGINS, check_margins
from pipeline.example_gen import LongTailExampleGen
from pipeline.shift_evaluator import ShiftEvaluator
from pipeline.training_components import LadeTrainer, LadeTuner

RUN_FN = "pipeline.trainer.run_fn"
TUNER_FN = "pipeline.tuner.tuner_fn"
#: Losses whose Trainer takes the Tuner's best hyperparameters (the tuner searches LADE's alpha).
TUNED_LOSSES = ("lade",)
#: Node id of the Tuner (TFX's own default id).
TUNER_ID = "Tuner"
#: Node id of the Resolver that finds the latest blessed model.
BASELINE_RESOLVER_ID = "latest_blessed_model_resolver"
#: RuntimeParameter names of a compiled spec: {name: what it sets}.
RUNTIME_PARAMETERS = {
    "epochs": "every Trainer's epochs",
    "alpha": "the LADE Trainer's alpha (absent with a Tuner, whose best alpha wins)",
    "bless_margin_mean": "ShiftEvaluator margin_mean",
    "bless_margin_uniform": "ShiftEvaluator margin_uniform",
    "bless_margin_ece": "ShiftEvaluator margin_ece (pipeline.blessing.UNCHECKED_MARGIN: ECE not "
    "checked)",
}


def _runtime_parameter(name: str, ptype: type, default: Any):
    """A TFX RuntimeParameter (a pipeline parameter of a compiled Kubeflow / Vertex spec)."""
    return tfx.dsl.experimental.RuntimeParameter(name=name, ptype=ptype, default=ptype(default))


def runtime_parameter_defaults(pipeline: tfx.dsl.Pipeline) -> dict[str, Any]:
    """{name: default} of every RuntimeParameter among the pipeline's execution properties: the
    `parameter_values` a compiled spec's runtime config carries (KubeflowV2DagRunner.run)."""
    defaults: dict[str, Any] = {}
    for component in pipeline.components:
        for value in getattr(component, "exec_properties", {}).values():
            if isinstance(value, tfx.dsl.experimental.RuntimeParameter):
                defaults[value.name] = value.default
    return defaults


def trainer_id(loss: str) -> str:
    """Component id of the Trainer of one loss, e.g. `Trainer_lade`."""
    return f"Trainer_{loss}"


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    *,
    train_configs: Mapping[str, Mapping[str, Any]],
    example_gen_args: Mapping[str, Any],
    serving_model_dir: str,
    push: str = "lade",
    eval_seeds: int = 3,
    eval_test_per_class: int = 0,
    tune: bool = False,
    tuner_config: Mapping[str, Any] | None = None,
    bless_margins: Mapping[str, float] | None = None,
    alpha_source: str = "",
    runtime_parameters: bool = False,
    metadata_path: str | None = None,
    beam_pipeline_args: Sequence[str] = (),
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the long-tail training and label-shift evaluation pipeline.

    Args:
        pipeline_name: TFX pipeline name (also the MLMD context).
        pipeline_root: where component outputs are written (local path, gs://, ...).
        train_configs: {loss: TrainConfig.to_dict()}, one Trainer each, in this order.
        example_gen_args: keyword arguments of LongTailExampleGen (source, imbalance ratio, ...).
        serving_model_dir: Pusher's filesystem base directory (versions go below it).
        push: the loss whose model ShiftEvaluator blesses and Pusher pushes.
        eval_seeds: subsampling seeds per shifted test set.
        eval_test_per_class: test images per class the evaluator uses (0: all of them).
        tune: add a Tuner whose best hyperparameters feed the LADE Trainer.
        tuner_config: the Tuner's custom config (algorithm, trials, ...); needs `lade` trained.
        bless_margins: {"mean", "uniform", "ece"} margins of the ShiftEvaluator against the latest
            blessed model (fractions); a missing one takes `pipeline.blessing.DEFAULT_MARGINS`.
        alpha_source: where the LADE alpha comes from, for the report (e.g. "--alpha flag").
        runtime_parameters: make epochs, alpha and the margins RuntimeParameters (Kubeflow).
        metadata_path: SQLite MLMD file; None leaves the connection to the runner (Kubeflow).
        beam_pipeline_args: flags for the Beam-based components (from pipeline.beam_args).
        enable_cache: reuse outputs of executions with identical inputs and properties.

    Returns:
        The pipeline, ready for LocalDagRunner, BeamDagRunner or KubeflowV2DagRunner.

    Raises:
        ValueError: no or unknown losses, `push` not among them, `tune` without `lade`, a bad
            margin, or (with runtime_parameters) losses trained for different epochs.
    """
    losses = list(train_configs)
    if not losses:
        raise ValueError("train_configs is empty: expected at least one loss to train")
    unknown = [loss for loss in losses if loss not in LOSS_NAMES]
    if unknown:
        raise ValueError(f"unknown losses {unknown}: expected names from {LOSS_NAMES}")
    if push not in losses:
        raise ValueError(f"push = {push!r}: expected one of the trained losses {losses}")
    if tune and not any(loss in TUNED_LOSSES for loss in losses):
        raise ValueError(
            f"tune=True needs one of {TUNED_LOSSES} among the losses {losses}: "
            "the Tuner searches LADE's alpha"
        )

    margins = check_margins({**DEFAULT_MARGINS, **(bless_margins or {})})
    epochs = {
        loss: int(config["epochs"]) for loss, config in train_configs.items() if "epochs" in config
    }
    if runtime_parameters and len(set(epochs.values())) > 1:
        raise ValueError(
            f"epochs per loss {epochs}: expected one value for the 'epochs' RuntimeParameter"
        )
    epochs_values: dict[str, Any] = dict(epochs)
    alpha_losses = [loss for loss in losses if loss_takes(loss, "alpha")]
    alpha_value: Any = train_configs[alpha_losses[0]].get("alpha") if alpha_losses else None
    margin_values: dict[str, Any] = dict(margins)
    if runtime_parameters:
        if epochs:
            shared = _runtime_parameter("epochs", int, next(iter(epochs.values())))
            epochs_values = {loss: shared for loss in epochs}
        if alpha_value is not None and not tune:
            alpha_value = _runtime_parameter("alpha", float, alpha_value)
        margin_values = {
            key: _runtime_parameter(f"bless_margin_{key}", float, value)
            for key, value in margins.items()
        }

    example_gen = LongTailExampleGen(**example_gen_args)
    examples = example_gen.outputs["examples"]
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    components: list[Any] = [example_gen, statistics_gen, schema_gen, example_validator]

    train_args = tfx.proto.TrainArgs(splits=["train"])
    eval_args = tfx.proto.EvalArgs(splits=["val"])
    tuner = None
    if tune:
        tuned_loss = next(loss for loss in losses if loss in TUNED_LOSSES)
        tuner = LadeTuner(
            examples=examples,
            schema=schema_gen.outputs["schema"],
            tuner_fn=TUNER_FN,
            train_args=train_args,
            eval_args=eval_args,
            custom_config={
                "train_config": dict(train_configs[tuned_loss]),
                "tuner": dict(tuner_config or {}),
            },
        ).with_id(TUNER_ID)
        components.append(tuner)

    trainers = {}
    for loss in losses:
        trainers[loss] = LadeTrainer(
            examples=examples,
            schema=schema_gen.outputs["schema"],
            run_fn=RUN_FN,
            hyperparameters=(
                tuner.outputs["best_hyperparameters"]
                if tuner is not None and loss in TUNED_LOSSES
                else None
            ),
            train_args=train_args,
            eval_args=eval_args,
            custom_config={"train_config": dict(train_configs[loss])},
            epochs=epochs_values.get(loss),
            alpha=alpha_value if loss in alpha_losses else None,
        ).with_id(trainer_id(loss))
    components.extend(trainers.values())

    model_inputs = {}
    for loss, trainer in trainers.items():
        model_inputs[f"{loss}_model"] = trainer.outputs["model"]
        model_inputs[f"{loss}_model_run"] = trainer.outputs["model_run"]
    # Every Model and ModelBlessing of the pipeline; only the pushed loss's models are blessed.
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BASELINE_RESOLVER_ID)
    components.append(baseline)
    evaluator = ShiftEvaluator(
        examples=examples,
        baseline_model=baseline.outputs["model"],
        push=push,
        num_seeds=eval_seeds,
        test_per_class=eval_test_per_class,
        margin_mean=margin_values["mean"],
        margin_uniform=margin_values["uniform"],
        margin_ece=margin_values["ece"],
        alpha_source=alpha_source,
        **model_inputs,
    )
    pusher = tfx.components.Pusher(
        model=trainers[push].outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.fspath(serving_model_dir)
            )
        ),
    )
    components += [evaluator, pusher]

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=os.fspath(pipeline_root),
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(os.fspath(metadata_path))
            if metadata_path is not None
            else None
        ),
        beam_pipeline_args=list(beam_pipeline_args),
    )
