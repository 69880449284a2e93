"""Runs the lade-tf TFX pipeline: `python pipeline/run.py --runner=local|beam|kubeflow [flags]`.

--runner=local     TFX LocalDagRunner; Beam-based components on Beam's DirectRunner
--runner=beam      TFX BeamDagRunner (the orchestration itself is a Beam pipeline)
--runner=kubeflow  writes a compiled Kubeflow Pipelines / Vertex AI pipeline spec (JSON); no
                   cluster is contacted

Everything goes under --output-dir (default ./lade_output): `pipeline_root/` (component outputs),
`metadata.sqlite` (MLMD), `report/` (shift_report.json|md, shift_accuracy.png),
`serving_model/<version>/` (the pushed SavedModel) and, for Kubeflow, `kubeflow/<name>.json`.
A rerun with the same flags is served from TFX's cache. All flags: `--help`, and pipeline/flags.py.
"""

from __future__ import annotations

import contextlib
import logging as python_logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

_PROCESS_START = time.time()

# Run as a script, Python puts this file's folder first on sys.path, where modules such as
# `config` would shadow same-named top-level modules; the project is imported as the installed
# `pipeline` package instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
# Before TensorFlow loads: its C++ INFO/WARNING start-up lines (CUDA probing on CPU-only machines)
# bury the per-component progress; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

from absl import logging  # noqa: E402

from pipeline import flags  # noqa: E402
from pipeline.beam_args import runner_args_from_flags  # noqa: E402

METADATA_FILE = "metadata.sqlite"
REPORT_DIR = "report"
SERVING_MODEL_DIR = "serving_model"


def example_gen_args(args) -> dict[str, Any]:
    """LongTailExampleGen parameters from the data flags."""
    values = {
        "source": args.source,
        "imbalance_ratio": float(args.imbalance_ratio),
        "profile": args.profile,
        "val_per_class": int(args.val_per_class),
        "seed": int(args.data_seed),
    }
    # Optional ones only when set: unchanged exec properties keep the cached examples valid.
    optional = {
        "n_max": args.n_max,
        "class_order": None if args.class_order == "label" else args.class_order,
        "test_fraction": args.test_fraction,
        "image_size": args.image_size,
        "tfds_data_dir": args.tfds_data_dir,
    }
    values.update({name: value for name, value in optional.items() if value is not None})
    return values


def tuner_config(args) -> dict[str, Any]:
    """The Tuner's custom config `tuner` entry (read by pipeline.tuner.tuner_fn)."""
    return {
        "tuner": args.tuner,
        "max_trials": int(args.max_trials),
        "tune_lambda": bool(args.tune_lambda),
        "trial_epochs": None if args.trial_epochs is None else int(args.trial_epochs),
    }


def push_loss(args) -> str:
    """The loss whose model is blessed and pushed: --push, else lade if trained, else the first."""
    if args.push is not None:
        if args.push not in args.losses:
            raise ValueError(
                f"--push {args.push}: expected one of the trained --losses {','.join(args.losses)}"
            )
        return args.push
    return "lade" if "lade" in args.losses else args.losses[0]


def check_local_inputs(args) -> int:
    """Checks, before any component runs, what the pipeline reads and writes on this machine;
    returns the number of images the source lists.

    The output directory (and a local --pipeline-root) must be creatable, the source must be
    readable (idx files intact, a TFDS dataset prepared or downloadable, ...) and the data flags
    must suit it. A compiled Kubeflow spec runs elsewhere, so its paths are not checked here.

    Raises:
        ValueError: naming the bad flag or file and what was expected.
    """
    from pipeline.prepare import check_source_config, check_writable_location
    from pipeline.sources import resolve_source
    from pipeline.split_plan import PrepareConfig, parse_image_size

    check_writable_location(str(args.output_dir), "--output-dir")
    if args.pipeline_root and "://" not in args.pipeline_root:
        check_writable_location(args.pipeline_root, "--pipeline-root")
    values = example_gen_args(args)
    source = resolve_source(values.pop("source"), tfds_data_dir=values.pop("tfds_data_dir", None))
    if "image_size" in values:
        values["image_size"] = parse_image_size(values["image_size"])
    check_source_config(source, PrepareConfig(**values))
    return source.num_images


def build_pipeline(args, beam_pipeline_args: Sequence[str]):
    """The pipeline for parsed flags (create_pipeline with paths under --output-dir), its Beam
    components run with `beam_pipeline_args` (`pipeline.beam_args.runner_args_from_flags`)."""
    from pipeline.create_pipeline import create_pipeline

    output_dir = args.output_dir.resolve()
    beam_args = list(beam_pipeline_args)
    kubeflow = args.runner == "kubeflow"
    pipeline_root = args.pipeline_root or str(output_dir / "pipeline_root")
    if kubeflow:
        # The compiled spec runs in containers: a requirements file of this machine is not there
        # (Beam would fail to stage it), and the pushed model belongs next to the pipeline root.
        beam_args = [arg for arg in beam_args if not arg.startswith("--requirements_file=")]
        serving_model_dir = f"{pipeline_root.rstrip('/')}/{SERVING_MODEL_DIR}"
    else:
        serving_model_dir = str(output_dir / SERVING_MODEL_DIR)
    return create_pipeline(
        pipeline_name=args.pipeline_name,
        pipeline_root=pipeline_root,
        train_configs={
            loss: flags.training_config_from_args(args, loss).to_dict() for loss in args.losses
        },
        example_gen_args=example_gen_args(args),
        serving_model_dir=serving_model_dir,
        push=push_loss(args),
        eval_seeds=args.eval_seeds,
        eval_test_per_class=args.eval_test_per_class,
        tune=args.tune,
        tuner_config=tuner_config(args),
        metadata_path=None if kubeflow else str(output_dir / METADATA_FILE),
        beam_pipeline_args=beam_args,
    )


def compile_kubeflow(pipeline, args) -> Path:
    """Writes the Kubeflow V2 (Vertex / KFP v2) pipeline spec JSON; returns its path."""
    from tfx import v1 as tfx

    output = (
        args.kubeflow_output or args.output_dir / "kubeflow" / f"{args.pipeline_name}.json"
    ).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=args.kubeflow_image
        ),
        output_dir=str(output.parent),
        output_filename=output.name,
    )
    runner.run(pipeline, write_out=True)
    return output


def run_pipeline(pipeline, runner: str) -> None:
    """Runs the pipeline in this process with TFX's LocalDagRunner or BeamDagRunner."""
    from tfx import v1 as tfx

    if runner == "local":
        tfx.orchestration.LocalDagRunner().run(pipeline)
    elif runner == "beam":
        from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

        BeamDagRunner().run(pipeline)
    else:
        raise ValueError(f"runner = {runner!r}: expected local or beam here")


def latest_outputs(
    metadata_path: str | os.PathLike, pipeline_name: str, node_id: str
) -> dict[str, list]:
    """{output key: [MLMD artifacts]} of the latest execution of one component (cached or not)."""
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    store = mlmd.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(os.fspath(metadata_path))
    )
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if context is None:
        return {}
    executions = store.get_executions_by_context(context.id)
    if not executions:
        return {}
    latest = max(executions, key=lambda execution: execution.id)
    outputs: dict[str, list] = {}
    events = [
        event
        for event in store.get_events_by_execution_ids([latest.id])
        if event.type == event.OUTPUT
    ]
    artifacts = {
        artifact.id: artifact
        for artifact in store.get_artifacts_by_id([event.artifact_id for event in events])
    }
    for event in events:
        outputs.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
    return outputs


def execution_summary(
    metadata_path: str | os.PathLike, pipeline_name: str
) -> list[tuple[str, str, float]]:
    """(component id, state, seconds) of every execution of the latest run of the pipeline."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2
    from tfx import v1 as tfx

    store = mlmd.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(os.fspath(metadata_path))
    )
    pipeline_context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_context is None:
        return []
    pipeline_executions = {e.id for e in store.get_executions_by_context(pipeline_context.id)}
    runs = [
        context
        for context in store.get_contexts_by_type("pipeline_run")
        if {e.id for e in store.get_executions_by_context(context.id)} & pipeline_executions
    ]
    if not runs:
        return []
    latest_run = max(runs, key=lambda context: context.id)
    run_executions = {e.id for e in store.get_executions_by_context(latest_run.id)}
    prefix = f"{pipeline_name}."
    rows = []
    for context in store.get_contexts_by_type("node"):
        if not context.name.startswith(prefix):
            continue
        for execution in store.get_executions_by_context(context.id):
            if execution.id not in run_executions:
                continue
            state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
            seconds = (
                execution.last_update_time_since_epoch - execution.create_time_since_epoch
            ) / 1000
            rows.append((execution.id, context.name[len(prefix) :], state, seconds))
    return [row[1:] for row in sorted(rows)]


def collect_outputs(args) -> dict[str, Any]:
    """Copies the latest report to <output-dir>/report/ and finds the pushed model version."""
    from pipeline.shift_evaluator import REPORT_FILES

    output_dir = args.output_dir.resolve()
    metadata_path = output_dir / METADATA_FILE
    result: dict[str, Any] = {"executions": execution_summary(metadata_path, args.pipeline_name)}
    evaluation = latest_outputs(metadata_path, args.pipeline_name, "ShiftEvaluator")
    if evaluation.get("report"):
        source = Path(evaluation["report"][0].uri)
        report_dir = output_dir / REPORT_DIR
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(source / name, report_dir / name)
        result["report"] = report_dir
    if evaluation.get("blessing"):
        blessing = evaluation["blessing"][0]
        result["blessed"] = blessing.custom_properties["blessed"].int_value == 1
        result["blessing_reason"] = blessing.custom_properties["reason"].string_value
    pushed = latest_outputs(metadata_path, args.pipeline_name, "Pusher").get("pushed_model")
    if pushed:
        properties = pushed[0].custom_properties
        if properties["pushed"].int_value == 1:
            result["pushed_model"] = properties["pushed_destination"].string_value
    return result


class _FirstLineOfLongInfo(python_logging.Filter):
    """TFX logs whole pipeline IR protos at INFO for every component; keeping their first line
    leaves the per-component progress (`Component X is running.`, executor lines) readable."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        if record.levelno <= python_logging.INFO:
            message = record.getMessage()
            if "\n" in message or len(message) > 400:
                record.msg, record.args = message.split("\n", 1)[0][:300] + " [...]", ()
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2: bad input, as one `error: ...` line)."""
    with contextlib.ExitStack() as resources:  # a local dask cluster lives as long as the run
        try:
            args = flags.parse_args(
                flags.build_parser(), argv, unset_defaults=flags.PIPELINE_DEFAULTS
            )
            logging.set_verbosity(logging.INFO)
            logging.get_absl_logger().addFilter(_FirstLineOfLongInfo())
            num_images = check_local_inputs(args) if args.runner != "kubeflow" else 0
            pipeline_args = resources.enter_context(runner_args_from_flags(args, num_images))
            pipeline = build_pipeline(args, pipeline_args)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return run_and_report(args, pipeline)


def run_and_report(args, pipeline) -> int:
    """Compiles (Kubeflow) or runs the pipeline and prints the summary; returns the exit status."""
    if args.runner == "kubeflow":
        spec = compile_kubeflow(pipeline, args)
        print(f"Kubeflow / Vertex pipeline spec: {spec}")
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    run_pipeline(pipeline, args.runner)
    result = collect_outputs(args)
    elapsed = time.time() - _PROCESS_START
    print("\nComponent              state      seconds")
    for node_id, state, seconds in result["executions"]:
        print(f"  {node_id:<20} {state:<10} {seconds:7.1f}")
    print(
        f"\nPipeline finished in {elapsed:.0f} s ({args.runner} runner, output under "
        f"{args.output_dir.resolve()})"
    )
    report = result.get("report")
    if report is None:
        print("Report: not produced")
        return 1
    print(
        f"Report:       {report / 'shift_report.md'}\n"
        f"              {report / 'shift_report.json'}\n"
        f"Plot:         {report / 'shift_accuracy.png'}"
    )
    if "pushed_model" in result:
        print(f"Pushed model: {result['pushed_model']}")
    else:
        print(f"Pushed model: none (not blessed: {result.get('blessing_reason', 'unknown')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
