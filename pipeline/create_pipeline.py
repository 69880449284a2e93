"""The TFX pipeline as one pure function: plain parameters in, a `tfx.dsl.Pipeline` out.

LongTailExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> [Tuner] -> one Trainer per
loss -> ShiftEvaluator -> Pusher (docs/design.md section 4). Nothing here runs anything; `run.py`
picks the runner. User code is referenced by function path (`pipeline.trainer.run_fn`), never by
`module_file`, so every process (Beam workers, a Kubeflow/Vertex container) imports the installed
package (see STACK_NOTES).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from tfx import v1 as tfx

from pipeline.example_gen import LongTailExampleGen
from pipeline.shift_evaluator import ShiftEvaluator

RUN_FN = "pipeline.trainer.run_fn"
TUNER_FN = "pipeline.tuner.tuner_fn"
#: Losses whose Trainer takes the Tuner's best hyperparameters (the tuner searches LADE's alpha).
TUNED_LOSSES = ("lade",)


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
        metadata_path: SQLite MLMD file; None leaves the connection to the runner (Kubeflow).
        beam_pipeline_args: flags for the Beam-based components (from pipeline.beam_args).
        enable_cache: reuse outputs of executions with identical inputs and properties.

    Returns:
        The pipeline, ready for LocalDagRunner, BeamDagRunner or KubeflowV2DagRunner.

    Raises:
        ValueError: no or unknown losses, `push` not among them, or `tune` without `lade`.
    """
    from pipeline.flags import LOSS_NAMES

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
        tuner = tfx.components.Tuner(
            examples=examples,
            schema=schema_gen.outputs["schema"],
            tuner_fn=TUNER_FN,
            train_args=train_args,
            eval_args=eval_args,
            custom_config={
                "train_config": dict(train_configs[tuned_loss]),
                "tuner": dict(tuner_config or {}),
            },
        )
        components.append(tuner)

    trainers = {}
    for loss in losses:
        trainers[loss] = tfx.components.Trainer(
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
        ).with_id(trainer_id(loss))
    components.extend(trainers.values())

    model_inputs = {}
    for loss, trainer in trainers.items():
        model_inputs[f"{loss}_model"] = trainer.outputs["model"]
        model_inputs[f"{loss}_model_run"] = trainer.outputs["model_run"]
    evaluator = ShiftEvaluator(
        examples=examples,
        push=push,
        num_seeds=eval_seeds,
        test_per_class=eval_test_per_class,
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
