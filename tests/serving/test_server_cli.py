"""Flags and files given to `python -m serving.server`, run as real processes.

A bad flag or file ends in one `error: ...` line naming the flag, the value and what was expected,
with exit status 2 and no traceback; all are found before TensorFlow is imported, so within
seconds. The poll intervals' 0 ("exactly once", as in TF Serving) is checked with real servers (a
version pushed later is not loaded); tests/serving/test_server_core.py checks that no poll task
is started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving.flags import build_parser, channel_arguments_from_args, check_flags
from tests.serving.serving_support import REPO_ROOT, ServerProcess, free_port, http

PROCESS_SECONDS = 120


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server_cli")
    paths = {
        "root": root,
        "models": root / "models",
        "file": root / "a_file",
        "dangling": root / "dangling",
        "bad_config": root / "bad.config",
        "bad_entry_config": root / "bad_entry.config",
        "file_config": root / "file.config",
        "bad_batching": root / "bad_batching.config",
        "unparsable_batching": root / "unparsable_batching.config",
    }
    paths["models"].mkdir()
    paths["file"].write_text("not a directory")
    paths["dangling"].symlink_to(root / "deleted")
    paths["bad_config"].write_text('model_config_list { config { nmae: "a" } }\n')
    paths["bad_entry_config"].write_text('model_config_list { config { name: "a" } }\n')
    paths["file_config"].write_text(
        f'model_config_list {{ config {{ name: "lade" base_path: "{paths["file"]}" }} }}\n'
    )
    paths["bad_batching"].write_text("max_batch_size { value: 0 }\n")
    paths["unparsable_batching"].write_text("max_batch_size: 8\n")
    paths["monitoring"] = root / "monitoring.config"
    paths["monitoring"].write_text('prometheus_config { enable: true path: "/metrics" }\n')
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
    return subprocess.run(
        [sys.executable, "-m", "serving.server", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_SECONDS,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr[-4000:]
    return lines[-1]


CASES = {
    "missing_config_file": (
        ["--model-config-file", "{root}/missing.config"],
        "error: --model-config-file {root}/missing.config: cannot be read "
        "(No such file or directory)",
    ),
    "config_file_is_a_directory": (
        ["--model-config-file", "{models}"],
        "error: --model-config-file {models}: cannot be read (Is a directory)",
    ),
    "malformed_config_file": (
        ["--model-config-file", "{bad_config}"],
        "error: --model-config-file {bad_config}: model config is not a "
        "text ModelServerConfig: 1:30 : Message type "
        '"tensorflow.serving.ModelConfig" has no field named "nmae".',
    ),
    "config_entry_without_base_path": (
        ["--model-config-file", "{bad_entry_config}"],
        "model config entry 'name: \"a\"': expected both name and base_path",
    ),
    "config_base_path_is_a_file": (
        ["--model-config-file", "{file_config}"],
        "error: --model-config-file {file_config}: model 'lade': "
        "base_path '{file}' is not a directory; expected a directory "
        "of numbered SavedModel versions (1/, 2/, ...)",
    ),
    "base_path_is_a_file": (
        ["--model-base-path", "{file}"],
        "error: --model-base-path {file} is not a directory; expected a "
        "directory of numbered SavedModel versions (1/, 2/, ...)",
    ),
    "base_path_is_a_dangling_link": (
        ["--model-base-path", "{dangling}"],
        "error: --model-base-path {dangling} is a symbolic link to "
        "'{root}/deleted', which does not exist",
    ),
    "base_path_under_a_file": (
        ["--model-base-path", "{file}/1"],
        "error: --model-base-path {file}/1 has a file where a parent directory should be",
    ),
    "missing_batching_file": (
        ["--model-base-path", "{models}", "--batching-parameters-file", "{root}/missing.config"],
        "error: --batching-parameters-file {root}/missing.config: cannot be "
        "read (No such file or directory)",
    ),
    "bad_batching_value": (
        ["--model-base-path", "{models}", "--batching-parameters-file", "{bad_batching}"],
        "error: --batching-parameters-file {bad_batching}: batching parameter "
        "max_batch_size = 0: expected >= 1",
    ),
    "malformed_batching_file": (
        ["--model-base-path", "{models}", "--batching-parameters-file", "{unparsable_batching}"],
        "batching parameters are not a text BatchingParameters: 1:",
    ),
    "zero_threads": (
        ["--model-base-path", "{models}", "--rest-api-num-threads", "0"],
        "error: argument --rest-api-num-threads/--rest_api_num_threads: '0': "
        "expected an integer >= 1 (see python -m serving.server --help)",
    ),
    "negative_poll_interval": (
        ["--model-base-path", "{models}", "--file_system_poll_wait_seconds", "-1"],
        "error: argument --file-system-poll-wait-seconds/"
        "--file_system_poll_wait_seconds: '-1': expected a finite number "
        "of seconds >= 0 (0: poll once); a negative value makes TF Serving "
        "disable polling and wait for a model at start-up, which this "
        "server does not support (see python -m serving.server --help)",
    ),
    "non_finite_poll_interval": (
        ["--model-base-path", "{models}", "--file-system-poll-wait-seconds", "nan"],
        "--file_system_poll_wait_seconds: 'nan': expected a finite number "
        "of seconds >= 0 (0: poll once) (see",
    ),
    "negative_config_poll_interval": (
        ["--model-base-path", "{models}", "--model_config_file_poll_wait_seconds", "-1"],
        "'-1': expected a finite number of seconds >= 0 (0: read "
        "the file once); TF Serving reserves negative values for "
        "testing, which this server does not support",
    ),
    "port_out_of_range": (
        ["--model-base-path", "{models}", "--port", "70000"],
        "error: argument --port: '70000': expected an integer from 0 to 65535",
    ),
    "no_model": ([], "error: give --model-base-path (and --model-name) or --model-config-file"),
    "unknown_flag": (
        ["--model-base-path", "{models}", "--no_such_flag", "1"],
        "error: unrecognized arguments: --no_such_flag 1 (see python -m serving.server --help)",
    ),
    "grpc_port_0_without_socket": (
        ["--model-base-path", "{models}", "--port", "0"],
        "error: --port 0: gRPC needs a TCP port or --grpc_socket_path, as in TF Serving (0 does "
        "not mean any free port); give --port N (default 8500)",
    ),
    "same_port_for_both_apis": (
        ["--model-base-path", "{models}", "--port", "9123", "--rest_api_port", "9123"],
        "error: --rest_api_port 9123: the same as --port (gRPC); give the REST API another "
        "port (default 8501) or 0 to turn it off",
    ),
    "gpu_memory_fraction": (
        ["--model-base-path", "{models}", "--per_process_gpu_memory_fraction=0.5"],
        "error: --per_process_gpu_memory_fraction 0.5: not supported by this server "
        "(TensorFlow's default GPU memory allocation is used); omit it or give 0.0",
    ),
    "gpu_memory_fraction_out_of_range": (
        ["--model-base-path", "{models}", "--per_process_gpu_memory_fraction", "2"],
        "'2': expected a number from 0.0 to 1.0",
    ),
    "alts_credentials": (
        ["--model-base-path", "{models}", "--use_alts_credentials"],
        "error: --use_alts_credentials true: not supported by this server (gRPC serves "
        "without credentials (insecure)); omit it or give false",
    ),
    "other_saved_model_tags": (
        ["--model-base-path", "{models}", "--saved_model_tags", "serve,gpu"],
        "error: --saved_model_tags 'serve,gpu': not supported by this server",
    ),
    "bad_boolean": (
        ["--model-base-path", "{models}", "--rest_api_enable_cors_support=maybe"],
        "--rest_api_enable_cors_support: 'maybe': expected true or false",
    ),
    "bad_channel_arguments": (
        ["--model-base-path", "{models}", "--grpc_channel_arguments", "grpc.max_age"],
        "error: --grpc_channel_arguments grpc.max_age: 'grpc.max_age': expected name=value "
        "entries separated by commas",
    ),
    "missing_monitoring_file": (
        ["--model-base-path", "{models}", "--monitoring_config_file", "{root}/missing.config"],
        "error: --monitoring_config_file {root}/missing.config: cannot be read",
    ),
    "malformed_monitoring_file": (
        ["--model-base-path", "{models}", "--monitoring_config_file", "{bad_config}"],
        "monitoring config is not a text MonitoringConfig: 1:1 :",
    ),
    "metrics_with_rest_off": (
        [
            "--model-base-path",
            "{models}",
            "--rest_api_port",
            "0",
            "--monitoring_config_file",
            "{monitoring}",
        ],
        "Prometheus metrics are served on the REST port, but --rest_api_port is 0 (off)",
    ),
    "unknown_host": (
        ["--model-base-path", "{models}", "--host", "no-such-host.invalid"],
        "error: --host no-such-host.invalid: not an address to listen on",
    ),
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
    for flag in ("--port", "--rest_api_port"):
        other = "--rest_api_port" if flag == "--port" else "--port"
        result = start(
            "--model-base-path", str(files["models"]), flag, str(busy_port), other, str(free_port())
        )
        assert error_line(result) == (
            f"error: {flag} {busy_port}: 127.0.0.1:{busy_port} is already in use; stop "
            "what listens there or choose another port"
        )


# Every flag of TF Serving's main.cc, with a value TF Serving accepts.
TF_SERVING_FLAGS = {
    "port": "8500",
    "grpc_socket_path": "/tmp/lade.sock",
    "rest_api_port": "8501",
    "rest_api_num_threads": "4",
    "rest_api_timeout_in_ms": "5000",
    "rest_api_enable_cors_support": "true",
    "enable_batching": "false",
    "allow_version_labels_for_unavailable_models": "true",
    "batching_parameters_file": "serving/batching.config",
    "enable_per_model_batching_parameters": "false",
    "model_config_file": "serving/models.config",
    "model_config_file_poll_wait_seconds": "60",
    "model_name": "lade",
    "model_base_path": "gs://bucket/lade",
    "num_load_threads": "2",
    "num_unload_threads": "2",
    "max_num_load_retries": "3",
    "load_retry_interval_micros": "1000",
    "file_system_poll_wait_seconds": "2",
    "flush_filesystem_caches": "false",
    "tensorflow_session_parallelism": "2",
    "tensorflow_session_config_file": "",
    "tensorflow_intra_op_parallelism": "2",
    "tensorflow_inter_op_parallelism": "1",
    "use_alts_credentials": "false",
    "ssl_config_file": "",
    "platform_config_file": "",
    "per_process_gpu_memory_fraction": "0",
    "saved_model_tags": "serve",
    "grpc_channel_arguments": "grpc.max_connection_age_ms=2000",
    "grpc_max_threads": "8",
    "enable_model_warmup": "false",
    "num_request_iterations_for_warmup": "2",
    "version": None,
    "monitoring_config_file": "serving/monitoring.config",
    "remove_unused_fields_from_bundle_metagraph": "true",
    "prefer_tflite_model": "false",
    "num_tflite_pools": "1",
    "num_tflite_interpreters_per_pool": "1",
    "enable_signature_method_name_check": "false",
    "xla_cpu_compilation_enabled": "false",
    "xla_gpu_compilation_enabled": "false",
    "enable_profiler": "true",
    "thread_pool_factory_config_file": "",
    "mixed_precision": "",
    "skip_initialize_tpu": "true",
    "enable_grpc_healthcheck_service": "false",
    "enable_serialization_as_tensor_content": "true",
}


def test_every_tf_serving_flag_is_accepted_in_both_forms():
    for name, value in TF_SERVING_FLAGS.items():
        if value is None:
            argvs = [[f"--{name}"]]
        else:
            argvs = [[f"--{name}={value}"], [f"--{name}", value]]
        for argv in argvs:
            args = build_parser().parse_args(argv)
            check_flags(args)
    args = build_parser().parse_args(
        ["--port=9000", "--rest_api_port=0", "--rest_api_enable_cors_support"]
    )
    assert (args.port, args.rest_api_port, args.rest_api_enable_cors_support) == (9000, 0, True)
    channel = build_parser().parse_args(["--grpc_channel_arguments", "a.b=1,c=x"])
    assert channel_arguments_from_args(channel) == (("a.b", 1), ("c", "x"))


@pytest.mark.parametrize("operator_value, applied", [(None, "1"), ("0", "0")])
def test_tensorflow_settings_are_applied_in_main_not_on_import(operator_value, applied):
    """Importing the server changes no environment variable and imports neither TensorFlow nor
    lade_tf; `main` turns oneDNN on before TensorFlow loads, unless the operator chose."""
    script = (
        "import os, sys\n"
        "import serving.server\n"
        "before = os.environ.get('TF_ENABLE_ONEDNN_OPTS')\n"
        "assert serving.server.main(['--model-base-path', serving.server.__file__]) == 2\n"
        "print(before, os.environ['TF_ENABLE_ONEDNN_OPTS'], 'tensorflow' in sys.modules, "
        "'lade_tf' in sys.modules)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if operator_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = operator_value
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == [str(operator_value), applied, "False", "False"]


def test_version_prints_and_exits_0():
    result = start("--version")
    assert result.returncode == 0 and result.stdout.startswith("TensorFlow ModelServer: ")


def test_help_states_what_the_poll_intervals_and_their_0_mean(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping (argparse also breaks after hyphens)
    text = " ".join(build_parser().format_help().split())
    assert (
        "--file-system-poll-wait-seconds FILE_SYSTEM_POLL_WAIT_SECONDS, "
        "--file_system_poll_wait_seconds FILE_SYSTEM_POLL_WAIT_SECONDS seconds between polls "
        "of the model base paths for new versions (default 1; 0: poll exactly once, loading "
        "the versions there at start-up, and never again; negative values, TF Serving's 'no "
        "polling, wait for a model at start-up', are not supported)"
    ) in text
    assert (
        "--model_config_file_poll_wait_seconds MODEL_CONFIG_FILE_POLL_WAIT_SECONDS seconds "
        "between re-reads of --model-config-file (default 0: the file is read exactly once, "
        "at start-up, and never re-read); a model a re-read adds is loaded at once"
    ) in text
    assert (
        build_parser()
        .parse_args(["--file_system_poll_wait_seconds", "0"])
        .file_system_poll_wait_seconds
        == 0
    )


def model_states(url: str, name: str) -> dict[str, str]:
    status, body = http(f"{url}/v1/models/{name}")
    if status != 200:
        return {}
    return {entry["version"]: entry["state"] for entry in body["model_version_status"]}


def write_config(path: Path, bases: dict[str, Path]) -> None:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{base}" }}\n' for name, base in bases.items()
    )
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(f"model_config_list {{\n{entries}}}\n")
    staged.replace(path)  # a re-read never sees half a file


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_poll_wait_0_serves_the_start_up_version_and_never_loads_a_later_one(tmp_path, export_base):
    """Two servers, started together: poll 0 ("once") and, as the control, poll 0.5.

    Version 2 is pushed to both. Once the control serves it (so the copy is loadable and the
    0.5 s poll has run several times), the "once" server is given two more seconds and must
    still serve only version 1. Its config file is re-read (every 0.5 s) and adds a model,
    which is loaded once: the re-read runs although the file-system poll is off.
    """
    bases = {name: tmp_path / name for name in ("once", "polled", "added")}
    for base in bases.values():
        shutil.copytree(export_base / "1", base / "1")
    config = tmp_path / "models.config"
    write_config(config, {"once": bases["once"]})
    once = ServerProcess(
        [
            "--model-config-file",
            str(config),
            "--file_system_poll_wait_seconds",
            "0",
            "--model-config-file-poll-wait-seconds",
            "0.5",
        ],
        tmp_path / "once.log",
    )
    polled = ServerProcess(
        [
            "--model-base-path",
            str(bases["polled"]),
            "--model-name",
            "polled",
            "--file-system-poll-wait-seconds",
            "0.5",
        ],
        tmp_path / "polled.log",
    )
    try:
        once_url, polled_url = once.url, polled.url
        assert model_states(once_url, "once") == {"1": "AVAILABLE"}
        assert model_states(polled_url, "polled") == {"1": "AVAILABLE"}
        for name in ("once", "polled"):
            shutil.copytree(export_base / "1", bases[name] / ".2.tmp")
            (bases[name] / ".2.tmp").rename(bases[name] / "2")  # appears whole, as pushes should
        write_config(config, {name: bases[name] for name in ("once", "added")})
        deadline = time.monotonic() + 120
        while not (
            model_states(polled_url, "polled") == {"2": "AVAILABLE", "1": "END"}
            and model_states(once_url, "added") == {"1": "AVAILABLE"}
        ):
            assert time.monotonic() < deadline, (
                model_states(polled_url, "polled"),
                model_states(once_url, "added"),
                once.log_text()[-3000:],
            )
            time.sleep(0.25)
        time.sleep(2.0)
        assert model_states(once_url, "once") == {"1": "AVAILABLE"}
        status, body = http(f"{once_url}/v1/models/once/versions/2")
        assert status == 404, body
        status, body = http(f"{once_url}/v1/models/once/metadata")
        assert status == 200 and body["model_spec"]["version"] == "1"
        log_text = once.log_text()
        assert "base paths are not polled again" in log_text
        assert "{name: once version: 2}" not in log_text and "Traceback" not in log_text
    finally:
        once.stop()
        polled.stop()
