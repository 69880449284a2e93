"""Runs a few TFX components in a real LocalDagRunner for a test and reads back what they wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def run_local_pipeline(name: str, components: Sequence[Any], root: Path) -> dict[str, list]:
    """Runs `components` with TFX's LocalDagRunner under `root` (SQLite MLMD, in-process Beam).

    Asserts that every execution completed and returns {artifact type name: [MLMD artifacts]}
    of every artifact the run recorded.
    """
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    from pipeline.beam_args import beam_pipeline_args

    connection = metadata.sqlite_metadata_connection_config(str(root / "metadata.sqlite"))
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=name,
        pipeline_root=str(root / "root"),
        components=list(components),
        metadata_connection_config=connection,
        beam_pipeline_args=beam_pipeline_args("in_memory"),
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    with metadata.Metadata(connection) as store:
        executions = store.store.get_executions()
        assert len(executions) == len(components)
        assert all(e.last_known_state == e.COMPLETE for e in executions)
        types = {t.id: t.name for t in store.store.get_artifact_types()}
        artifacts: dict[str, list] = {}
        for artifact in store.store.get_artifacts():
            artifacts.setdefault(types[artifact.type_id], []).append(artifact)
    return artifacts
