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

`--log-level warning` (the default) keeps TFX, Beam, absl and TensorFlow (its C++ side too) to
warnings and errors, keeps one line per component start / finish / cache hit, Keras's progress
lines and the final summary, and drops a few known-harmless lines (CUDA plug-in registration
on machines without a GPU, TensorRT not found, TFX's MLMD-query notice); `info` prints
everything at INFO as before.
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
#: Lines of TensorFlow's C++ side and of TFX that carry no information for a user of this
#: pipeline, dropped at the warning and error log levels: CUDA plug-ins registering twice on a
#: machine without a GPU, TensorRT not installed, absl's pre-init notice, the end of a tf.data
#: iterator, TFX noting that its MLMD query falls back to a slower path, and XLA's start-up
#: notices under --xla (C++ INFO lines that TF_CPP_MIN_LOG_LEVEL does not reach).
KNOWN_NOISE = (
    r"Unable to register cu(FFT|DNN|BLAS) factory",
    r"XLA service 0x[0-9a-f]+ initialized for platform",
    r"StreamExecutor device \(\d+\): ",
    r"Compiled cluster using XLA!",
    r"TF-TRT Warning: Could not find TensorRT",
    r"All log messages before absl::InitializeLog\(\) is called",
    r"Local rendezvous is aborting with status: OUT_OF_RANGE",
    r"ArtifactQuery\.property_predicate is not supported",
)
#: INFO messages of TFX and of this project kept at the warning level: progress per component.
PROGRESS_MESSAGES = (
    r"^Component \S+ is (running|finished)\.$",
    r"^A cached execution \d+ is used\.$",
    r"^Model written to serving path ",
)
#: TF_CPP_MIN_LOG_LEVEL per --log-level (0: everything, 1: warnings, 2: errors).
TF_CPP_LEVELS = {"error": "2", "warning": "1", "info": "2", "debug": "0"}


def _log_level_in(argv: Sequence[str]) -> str:
    """The --log-level of a command line, before argparse runs ("warning" if absent or bad)."""
    for index, arg in enumerate(argv):
        value = None
        if arg.startswith("--log-level="):
            value = arg.split("=", 1)[1]
        elif arg == "--log-level" and index + 1 < len(argv):
            value = argv[index + 1]
        if value in TF_CPP_LEVELS:
            return value
    return "warning"


class NativeStderrFilter:
    """Drops lines matching `patterns` from file descriptor 2, which TensorFlow's C++ logging
    (in this process and in Beam worker processes) writes to directly, past Python's sys.stderr.

    `start()` puts a pipe at fd 2 and a thread that copies every other line to the real stderr;
    `stop()` (also at exit) puts the real stderr back and drains the pipe, so a traceback
    printed at exit still gets through.
    """

    def __init__(self, patterns: Sequence[str]):
        import re

        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns).encode())
        self._saved_fd: int | None = None
        self._thread = None

    def start(self) -> None:
        """Starts filtering fd 2 (idempotent)."""
        import atexit
        import threading

        if self._saved_fd is not None:
            return
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(
            target=self._copy, args=(read_fd, os.dup(self._saved_fd)), daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)

    def _copy(self, read_fd: int, out_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe, os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in pipe:
                if not self._pattern.search(line):
                    out.write(line)

    def stop(self) -> None:
        """Puts the real stderr back at fd 2 and forwards what is still in the pipe."""
        if self._saved_fd is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved_fd, 2)  # closes this process's write end of the pipe
        os.close(self._saved_fd)
        self._saved_fd = None
        if self._thread is not None:
            self._thread.join(timeout=5)  # a Beam worker may still hold the pipe open


def configure_native_logging(level: str) -> None:
    """What must be set before TensorFlow loads: its C++ log level (inherited by Beam worker
    processes) and Python warnings in subprocesses; at warning / error, the fd-2 line filter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_LEVELS[level])
    if level in ("warning", "error"):
        # The google-api packages warn about Python 3.10 at every import, in every process.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        NativeStderrFilter(KNOWN_NOISE).start()


if __name__ == "__main__":
    configure_native_logging(_log_level_in(sys.argv[1:]))
else:
    # Imported (tests, other tools): no fd-level filter; keep TensorFlow's C++ start-up lines
    # (CUDA probing on CPU-only machines) from burying the output; errors still show.
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
        result["already_blessed"] = (
            "already_blessed" in blessing.custom_properties
            and blessing.custom_properties["already_blessed"].int_value == 1
        )
    pushed = latest_outputs(metadata_path, args.pipeline_name, "Pusher").get("pushed_model")
    if pushed:
        properties = pushed[0].custom_properties
        if properties["pushed"].int_value == 1:
            result["pushed_model"] = properties["pushed_destination"].string_value
    if "pushed_model" not in result and result.get("already_blessed"):
        earlier = latest_pushed_destination(metadata_path, args.pipeline_name)
        if earlier:
            result["earlier_push"] = earlier
    from pipeline.create_pipeline import trainer_id

    result["tensorboard"] = {}
    for loss in args.losses:
        runs = latest_outputs(metadata_path, args.pipeline_name, trainer_id(loss)).get("model_run")
        if runs:
            result["tensorboard"][loss] = Path(runs[0].uri) / "logs"
    if args.tune:
        result["trials"] = copy_trial_table(metadata_path, args.pipeline_name, output_dir)
    return result


def copy_trial_table(
    metadata_path: str | os.PathLike, pipeline_name: str, output_dir: Path
) -> list[Path]:
    """Copies trials.json / trials.md / trials.png of the latest Tuner into <output-dir>/report/;
    returns the copies."""
    from pipeline.tuner import TRIAL_FILES

    results = latest_outputs(metadata_path, pipeline_name, "Tuner").get("tuner_results")
    if not results:
        return []
    report_dir = output_dir / REPORT_DIR
    report_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in TRIAL_FILES:
        source = Path(results[0].uri) / name
        if source.exists():
            shutil.copyfile(source, report_dir / name)
            copies.append(report_dir / name)
    return copies


def latest_pushed_destination(metadata_path: str | os.PathLike, pipeline_name: str) -> str | None:
    """The destination of the newest PushedModel of the pipeline that was really pushed."""
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    store = mlmd.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(os.fspath(metadata_path))
    )
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.Pusher")
    if context is None:
        return None
    for artifact in sorted(
        store.get_artifacts_by_context(context.id), key=lambda a: a.id, reverse=True
    ):
        properties = artifact.custom_properties
        if "pushed" in properties and properties["pushed"].int_value == 1:
            return properties["pushed_destination"].string_value
    return None


class _QuietFilter(python_logging.Filter):
    """At --log-level warning / error: passes records at `level` and above (known noise
    dropped) and, at warning, the INFO progress lines of PROGRESS_MESSAGES."""

    def __init__(self, level: int, keep_progress: bool):
        import re

        super().__init__()
        self._level = level
        self._noise = re.compile("|".join(KNOWN_NOISE))
        self._progress = re.compile("|".join(PROGRESS_MESSAGES)) if keep_progress else None

    def filter(self, record: python_logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= self._level:
            return not self._noise.search(message)
        return self._progress is not None and bool(self._progress.search(message))


def configure_logging(level: str) -> None:
    """Python-side logging for a --log-level (see the module docstring).

    absl (TFX logs through it) stays at INFO so the progress lines can pass the filter; the
    standard loggers of Beam and TensorFlow, and the root logger, get the level itself.
    """
    numeric = {
        "error": python_logging.ERROR,
        "warning": python_logging.WARNING,
        "info": python_logging.INFO,
        "debug": python_logging.DEBUG,
    }[level]
    absl_logger = logging.get_absl_logger()
    for old in list(absl_logger.filters):
        if isinstance(old, (_QuietFilter, _FirstLineOfLongInfo)):
            absl_logger.removeFilter(old)
    if level in ("info", "debug"):
        logging.set_verbosity(logging.DEBUG if level == "debug" else logging.INFO)
        absl_logger.addFilter(_FirstLineOfLongInfo())
        return
    logging.set_verbosity(logging.INFO)
    absl_logger.addFilter(_QuietFilter(numeric, keep_progress=level == "warning"))
    for name in ("", "apache_beam", "tensorflow", "keras_tuner"):
        python_logging.getLogger(name).setLevel(numeric)
    warnings.filterwarnings("ignore", category=FutureWarning)


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
            configure_logging(args.log_level)
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
        print(f"TensorBoard:  tensorboard --logdir {main_logs}")
        print(f"              (every Trainer and run: tensorboard --logdir {pipeline_root(args)})")
    if served is not None:
        print(f"Serve it:     {serve_command(args, Path(served).parent)}")
    return 0


def pipeline_root(args) -> str:
    """The pipeline root of a local run (--pipeline-root or <output-dir>/pipeline_root)."""
    return args.pipeline_root or str(args.output_dir.resolve() / "pipeline_root")


def serve_command(args, model_base_path: Path) -> str:
    """The command that serves the pushed model with the project's server (TF Serving's flags:
    --rest_api_port is REST, --port gRPC)."""
    return (
        f"python -m serving.server --model_name {push_loss(args)} "
        f"--model_base_path {model_base_path} --rest_api_port 8501"
    )


if __name__ == "__main__":
    sys.exit(main())
