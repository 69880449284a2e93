"""Bad flags and files given to `python -m serving.server`, run as real processes.

Each ends in one `error: ...` line naming the flag, the value and what was expected, with exit
status 2 and no traceback; all are found before TensorFlow is imported, so within seconds.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.serving.serving_support import REPO_ROOT

PROCESS_SECONDS = 120


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server_cli")
    paths = {"root": root, "models": root / "models", "file": root / "a_file",
             "dangling": root / "dangling", "bad_config": root / "bad.config",
             "bad_entry_config": root / "bad_entry.config", "file_config": root / "file.config",
             "bad_batching": root / "bad_batching.config",
             "unparsable_batching": root / "unparsable_batching.config"}
    paths["models"].mkdir()
    paths["file"].write_text("not a directory")
    paths["dangling"].symlink_to(root / "deleted")
    paths["bad_config"].write_text('model_config_list { config { nmae: "a" } }\n')
    paths["bad_entry_config"].write_text('model_config_list { config { name: "a" } }\n')
    paths["file_config"].write_text(
        f'model_config_list {{ config {{ name: "lade" base_path: "{paths["file"]}" }} }}\n')
    paths["bad_batching"].write_text("max_batch_size { value: 0 }\n")
    paths["unparsable_batching"].write_text("max_batch_size: 8\n")
    return paths


@pytest.fixture()
def busy_port():
    """A port something already listens on (127.0.0.1)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def start(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "serving.server", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=PROCESS_SECONDS)


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr[-4000:]
    return lines[-1]


CASES = {
    "missing_config_file": (["--model-config-file", "{root}/missing.config"],
                            "error: --model-config-file {root}/missing.config: cannot be read "
                            "(No such file or directory)"),
    "config_file_is_a_directory": (["--model-config-file", "{models}"],
                                   "error: --model-config-file {models}: cannot be read "
                                   "(Is a directory)"),
    "malformed_config_file": (["--model-config-file", "{bad_config}"],
                              "error: --model-config-file {bad_config}: model config is not a "
                              "text ModelServerConfig: 1:30 : Message type "
                              '"tensorflow.serving.ModelConfig" has no field named "nmae".'),
    "config_entry_without_base_path": (["--model-config-file", "{bad_entry_config}"],
                                       "model config entry 'name: \"a\"': expected both name and "
                                       "base_path"),
    "config_base_path_is_a_file": (["--model-config-file", "{file_config}"],
                                   "error: --model-config-file {file_config}: model 'lade': "
                                   "base_path '{file}' is not a directory; expected a directory "
                                   "of numbered SavedModel versions (1/, 2/, ...)"),
    "base_path_is_a_file": (["--model-base-path", "{file}"],
                            "error: --model-base-path {file} is not a directory; expected a "
                            "directory of numbered SavedModel versions (1/, 2/, ...)"),
    "base_path_is_a_dangling_link": (["--model-base-path", "{dangling}"],
                                     "error: --model-base-path {dangling} is a symbolic link to "
                                     "'{root}/deleted', which does not exist"),
    "base_path_under_a_file": (["--model-base-path", "{file}/1"],
                               "error: --model-base-path {file}/1 has a file where a parent "
                               "directory should be"),
    "missing_batching_file": (["--model-base-path", "{models}", "--batching-parameters-file",
                               "{root}/missing.config"],
                              "error: --batching-parameters-file {root}/missing.config: cannot be "
                              "read (No such file or directory)"),
    "bad_batching_value": (["--model-base-path", "{models}", "--batching-parameters-file",
                            "{bad_batching}"],
                           "error: --batching-parameters-file {bad_batching}: batching parameter "
                           "max_batch_size = 0: expected >= 1"),
    "malformed_batching_file": (["--model-base-path", "{models}", "--batching-parameters-file",
                                 "{unparsable_batching}"],
                                "batching parameters are not a text BatchingParameters: 1:"),
    "zero_threads": (["--model-base-path", "{models}", "--rest-api-num-threads", "0"],
                     "error: argument --rest-api-num-threads/--rest_api_num_threads: '0': "
                     "expected an integer >= 1 (see python -m serving.server --help)"),
    "zero_poll_interval": (["--model-base-path", "{models}", "--file-system-poll-wait-seconds",
                            "0"],
                           "error: argument --file-system-poll-wait-seconds/"
                           "--file_system_poll_wait_seconds: '0': expected a finite number of "
                           "seconds > 0"),
    "negative_config_poll_interval": (["--model-base-path", "{models}",
                                       "--model_config_file_poll_wait_seconds", "-1"],
                                      "'-1': expected a finite number of seconds >= 0"),
    "port_out_of_range": (["--model-base-path", "{models}", "--port", "70000"],
                          "error: argument --port: '70000': expected an integer from 0 to 65535"),
    "no_model": ([], "error: give --model-base-path (and --model-name) or --model-config-file"),
    "unknown_host": (["--model-base-path", "{models}", "--host", "no-such-host.invalid"],
                     "error: --host no-such-host.invalid: not an address to listen on"),
}


@pytest.fixture(scope="module")
def results(files) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    """Every case of CASES run once, four processes at a time."""
    names = {key: str(value) for key, value in files.items()}

    def run(case: str) -> tuple[subprocess.CompletedProcess, str]:
        argv, expected = CASES[case]
        return start(*(arg.format(**names) for arg in argv)), expected.format(**names)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flag_or_file_is_one_error_line_with_exit_status_2(results, case):
    result, expected = results[case]
    assert expected in error_line(result)


def test_a_port_in_use_is_reported_before_the_models_load(files, busy_port):
    line = error_line(start("--model-base-path", str(files["models"]), "--port", str(busy_port)))
    assert line == (f"error: --port {busy_port}: 127.0.0.1:{busy_port} is already in use; stop "
                    "what listens there or choose another port (0: any free port)")
