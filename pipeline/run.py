"""Runs the lade-tf TFX pipeline: `python pipeline/run.py --runner=local|beam|kubeflow [flags]`.

--runner=local     TFX LocalDagRunner; Beam-based components on Beam's DirectRunner
--runner=beam      TFX BeamDagRunner (the orchestration itself is a Beam pipeline)
--runner=kubeflow  writes a compiled Kubeflow Pipelines / Vertex AI pipeline spec (JSON); no
                   cluster is contacted

Everything goes under --output-dir (default ./lade_output): `pipeline_root/` (component outputs),
`metadata.sqlite` (MLMD), `report/` (shift_report.json|md, shift_accuracy.png, and with --tune
trials.json|md|png), `serving_model/<version>/` (the pushed SavedModel) and, for Kubeflow,
`kubeflow/<name>.json`. A rerun with the same flags is served from TFX's cache. All flags:
`--help`, and pipeline/flags.py.

Process settings are made here, before TensorFlow loads: the oneDNN switch
(`lade_tf.process_settings`) and, for `--log-level` (`pipeline.run_logging`), TensorFlow's C++
log level and the filter of its known-harmless lines. Parsing the flags imports neither
TensorFlow, TFX nor keras_tuner.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

_PROCESS_START = time.time()

# Run as a script, Python puts this file's folder first on sys.path, where modules such as
# `flags` would shadow same-named top-level modules; the project is imported as the installed
# `pipeline` package instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

if __name__ == "__main__":
    from lade_tf.process_settings import configure_tensorflow
    from pipeline.run_logging import configure_native_logging, log_level_in

    configure_tensorflow()
    configure_native_logging(log_level_in(sys.argv[1:]))

from pipeline import flags  # noqa: E402
from pipeline.beam_args import runner_args_from_flags  # noqa: E402
from pipeline.run_logging import configure_logging  # noqa: E402
from pipeline.run_results import METADATA_FILE, collect_outputs  # noqa: E402
from pipeline.split_plan import PrepareConfig  # noqa: E402

SERVING_MODEL_DIR = "serving_model"
_DATA_DEFAULTS = PrepareConfig()


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
        "class_order": None if args.class_order == _DATA_DEFAULTS.class_order else args.class_order,
        "test_fraction": args.test_fraction,
        "image_size": args.image_size,
        "tfds_data_dir": args.tfds_data_dir,
    }
    values.update({name: value for name, value in optional.items() if value is not None})
    return values


def tuner_config(args) -> dict[str, Any]:
    """The Tuner's custom config `tuner` entry (read by pipeline.tuner.tuner_fn)."""
    return flags.tuning_config_from_args(args).to_dict()


def push_loss(args) -> str:
    """The loss whose model is blessed and pushed: --push, else lade if trained, else the first."""
    if args.push is not None:
        if args.push not in args.losses:
            raise ValueError(
                f"--push {args.push}: expected one of the trained --losses {','.join(args.losses)}"
            )
        return args.push
    return "lade" if "lade" in args.losses else args.losses[0]


def alpha_source(args) -> str:
    """Where the LADE Trainer's alpha comes from, as the shift report states it."""
    if args.tune:
        return f"Tuner: best of its {args.tuner} search over alpha, --tune"
    given = args.alpha is not None
    source = "--alpha flag" if given else "TrainConfig default, no --alpha given"
    if args.runner == "kubeflow":
        return f"the 'alpha' RuntimeParameter, compiled default from the {source}"
    return source


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

    check_writable_location(str(args.output_dir), "--output-dir")
    if args.pipeline_root and "://" not in args.pipeline_root:
        check_writable_location(args.pipeline_root, "--pipeline-root")
    source = resolve_source(args.source, tfds_data_dir=args.tfds_data_dir)
    check_source_config(source, flags.prepare_config_from_args(args))
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
        bless_margins={
            "mean": args.bless_margin_mean,
            "uniform": args.bless_margin_uniform,
            "ece": args.bless_margin_ece,
        },
        alpha_source=alpha_source(args),
        runtime_parameters=kubeflow,
        metadata_path=None if kubeflow else str(output_dir / METADATA_FILE),
        beam_pipeline_args=beam_args,
    )


def compile_kubeflow(pipeline, args) -> Path:
    """Writes the Kubeflow V2 (Vertex / KFP v2) pipeline spec JSON; returns its path.

    The spec's pipeline parameters are create_pipeline.RUNTIME_PARAMETERS (epochs, alpha, the
    blessing margins), with the values of this command line as defaults."""
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
    from pipeline.create_pipeline import runtime_parameter_defaults

    # The RuntimeParameters' defaults go into the spec's runtime config; a submission of the
    # spec may replace any of them (Vertex: PipelineJob(parameter_values=...)).
    runner.run(pipeline, parameter_values=runtime_parameter_defaults(pipeline), write_out=True)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2: bad input, as one `error: ...` line)."""
    with contextlib.ExitStack() as resources:  # a local dask cluster lives as long as the run
        try:
            args = flags.parse_args(
                flags.build_parser(), argv, unset_defaults=flags.PIPELINE_DEFAULTS
            )
            configure_logging(args.log_level)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
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
    width = max([20] + [len(node_id) for node_id, _, _ in result["executions"]])
    print(f"\n{'Component':<{width + 2}} {'state':<10} seconds")
    for node_id, state, seconds in result["executions"]:
        print(f"  {node_id:<{width}} {state:<10} {seconds:7.1f}")
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
    for path in result.get("trials", []):
        print(f"Tuning:       {path}")
    print(f"Blessing:     {result.get('blessing_reason', 'unknown')}")
    served = None
    if "pushed_model" in result:
        print(f"Pushed model: {result['pushed_model']}")
        served = result["pushed_model"]
    elif "earlier_push" in result:
        print(f"Pushed model: {result['earlier_push']} (by an earlier run: the same model)")
        served = result["earlier_push"]
    else:
        print("Pushed model: none (not blessed)")
    logs = result.get("tensorboard", {})
    if logs:
        main_logs = logs.get(push_loss(args), next(iter(logs.values())))
        tensorboard = f"{interpreter()} -m tensorboard.main --logdir"
        print(f"TensorBoard:  {tensorboard} {shlex.quote(str(main_logs))}")
        print(
            f"              (every Trainer and run: {tensorboard} "
            f"{shlex.quote(pipeline_root(args))})"
        )
    if served is not None:
        print(f"Serve it:     {serve_command(args, Path(served).parent)}")
    return 0


def pipeline_root(args) -> str:
    """The pipeline root of a local run (--pipeline-root or <output-dir>/pipeline_root)."""
    return args.pipeline_root or str(args.output_dir.resolve() / "pipeline_root")


def interpreter() -> str:
    """This run's Python, quoted for a shell: a printed command pasted into any terminal runs
    in the environment that has the project, activated or not."""
    return shlex.quote(sys.executable)


def serve_command(args, model_base_path: Path) -> str:
    """The command that serves the pushed model with the project's server (TF Serving's flags:
    --rest_api_port is REST, --port gRPC)."""
    return (
        f"{interpreter()} -m serving.server --model_name {push_loss(args)} "
        f"--model_base_path {shlex.quote(str(model_base_path))} --rest_api_port 8501"
    )


if __name__ == "__main__":
    sys.exit(main())
