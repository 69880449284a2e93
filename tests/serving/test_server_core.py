"""serving.server_core: the polls it starts (none for an interval of 0, TF Serving's "exactly
once"), the file-system poll and the model-config re-reads."""

from __future__ import annotations

import asyncio

import pytest

from serving.server_core import ServerCore, ServerOptions


class RecordingManager:
    """Stands in for ModelManager: records the polls and config re-reads the core makes."""

    models: dict = {}

    def __init__(self):
        self.calls: list[str] = []

    def poll(self, new_only: bool = False) -> None:
        self.calls.append("poll new models" if new_only else "poll")

    def reconfigure(self, configs) -> None:
        self.calls.append("reconfigure")


def run_core_for(options: ServerOptions, seconds: float) -> tuple[list[str], int]:
    """The core's start and stop around `seconds` of running (no front end, no models).

    Returns:
        the manager calls made while it ran, and how many other asyncio tasks it had started.
    """
    manager = RecordingManager()

    async def run() -> int:
        core = ServerCore(manager, options)
        await core.start()  # where poll tasks would start
        try:
            tasks = len(asyncio.all_tasks() - {asyncio.current_task()})
            await asyncio.sleep(seconds)
        finally:
            await core.stop()
        return tasks

    tasks = asyncio.run(run())
    return manager.calls, tasks


@pytest.fixture()
def config_file(tmp_path) -> str:
    path = tmp_path / "models.config"
    path.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" }} }}\n')
    return str(path)


def polls_of(config_file: str, file_system: float, config_file_poll: float):
    """The manager calls and poll tasks of a core running for a second with these intervals."""
    options = ServerOptions(
        file_system_poll_wait_seconds=file_system,
        model_config_file=config_file,
        model_config_file_poll_wait_seconds=config_file_poll,
    )
    return run_core_for(options, 1.0)


def test_poll_intervals_of_0_start_no_poll_task_and_never_poll(config_file):
    assert polls_of(config_file, file_system=0, config_file_poll=0) == ([], 0)


def test_a_positive_file_system_poll_interval_polls_again_and_again(config_file):
    calls, tasks = polls_of(config_file, file_system=0.1, config_file_poll=0)
    assert tasks == 1
    assert set(calls) == {"poll"} and len(calls) >= 3  # the config file is never re-read


def test_the_config_file_is_re_read_while_the_file_system_poll_is_off(config_file):
    calls, tasks = polls_of(config_file, file_system=0, config_file_poll=0.1)
    assert tasks == 1
    assert len(calls) >= 6 and calls[:2] == ["reconfigure", "poll new models"]
    assert set(calls) == {"reconfigure", "poll new models"}  # only added models are polled
