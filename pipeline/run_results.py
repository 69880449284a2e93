"""What a finished local run left, read from its MLMD store: each component's state and time,
the report and the trial table (copied to `<output-dir>/report/`), the blessing verdict, the
pushed model and the TensorBoard log folders, for `pipeline/run.py`'s closing summary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.sqlite"
REPORT_DIR = "report"


def _store(metadata_path: str | os.PathLike):
    import ml_metadata as mlmd
    from tfx import v1 as tfx

    return mlmd.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(os.fspath(metadata_path))
    )


def latest_outputs(
    metadata_path: str | os.PathLike, pipeline_name: str, node_id: str
) -> dict[str, list]:
    """{output key: [MLMD artifacts]} of the latest execution of one component (cached or not)."""
    store = _store(metadata_path)
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
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
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
    from pipeline.shift_report import REPORT_FILES

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
    from pipeline.trial_report import TRIAL_FILES

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
    store = _store(metadata_path)
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
