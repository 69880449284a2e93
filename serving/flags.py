"""Command-line flags of `python -m serving.server`, with TF Serving's names and meanings, and
their translation into the server's settings (`options_from_args`, `model_configs_from_args`).

Every flag of TF Serving's model server (tensorflow_serving/model_servers/main.cc) is accepted,
in TF Serving's underscore spelling and in the hyphenated one. Each is either honoured, accepted
as having nothing to do here (`NO_OP_FLAGS`, with the reason), or accepted only at TF Serving's
default value (`DEFAULT_ONLY_FLAGS`: another value is refused at start-up with one line naming
the flag, the value and why). Booleans take TF Serving's forms: `--flag`, `--flag=true`,
`--flag=false` (also 1/0).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable, NoReturn, TypeVar

from serving.batching import (
    BATCH_LEVEL_SIGNATURES,
    BatchingOptions,
    read_batching_parameters_file,
)
from serving.flag_values import (
    StartupError,
    bool_flag,
    fraction_flag,
    integer_flag,
    positive_seconds,
    seconds_flag,
)
from serving.model_manager import ModelConfig, read_model_config_file
from serving.monitoring import MonitoringOptions, read_monitoring_config_file
from serving.prior_stream_flags import add_prior_stream_flags, prior_streams_from_args
from serving.server_core import ServerOptions
from serving.storage import base_path_problem, is_remote

log = logging.getLogger("serving")
_T = TypeVar("_T")


#: TF Serving flags with nothing to do here: name -> (type, TF Serving's default, why).
NO_OP_FLAGS: dict[str, tuple[Callable, object, str]] = {
    "grpc_max_threads": (
        integer_flag(0),
        0,
        "gRPC calls run on the event loop and inference on the --rest_api_num_threads pool",
    ),
    "enable_model_warmup": (bool_flag, True, "warm-up records are not replayed"),
    "num_request_iterations_for_warmup": (integer_flag(0), 1, "warm-up records are not replayed"),
    "allow_version_labels_for_unavailable_models": (
        bool_flag,
        False,
        "a label may always name a version that is not loaded (requests by it get NOT_FOUND)",
    ),
    "num_load_threads": (integer_flag(0), 0, "versions load one at a time, newest first"),
    "num_unload_threads": (integer_flag(0), 0, "versions unload one at a time"),
    "max_num_load_retries": (
        integer_flag(0),
        5,
        "a version that failed to load is retried once its files change",
    ),
    "load_retry_interval_micros": (
        integer_flag(0),
        60_000_000,
        "a version that failed to load is retried once its files change",
    ),
    "flush_filesystem_caches": (bool_flag, True, "no file-system caches are kept"),
    "remove_unused_fields_from_bundle_metagraph": (
        bool_flag,
        True,
        "signature defs are read once per version",
    ),
    "enable_signature_method_name_check": (
        bool_flag,
        False,
        "every exported signature is a predict signature",
    ),
    "num_tflite_pools": (integer_flag(1), 1, "TensorFlow Lite models are not served"),
    "num_tflite_interpreters_per_pool": (integer_flag(1), 1, "TensorFlow Lite is not served"),
    "skip_initialize_tpu": (bool_flag, False, "no TPU is used"),
    "enable_profiler": (bool_flag, True, "the TensorFlow profiler service is not started"),
}

#: TF Serving flags accepted only at their default: name -> (type, default, why not otherwise).
DEFAULT_ONLY_FLAGS: dict[str, tuple[Callable, object, str]] = {
    "use_alts_credentials": (bool_flag, False, "gRPC serves without credentials (insecure)"),
    "ssl_config_file": (str, "", "gRPC serves without TLS"),
    "platform_config_file": (str, "", "only the tensorflow platform is served"),
    "prefer_tflite_model": (bool_flag, False, "TensorFlow Lite models are not served"),
    "xla_cpu_compilation_enabled": (bool_flag, False, "signatures run as exported, without XLA"),
    "xla_gpu_compilation_enabled": (bool_flag, False, "signatures run as exported, without XLA"),
    "thread_pool_factory_config_file": (str, "", "inference uses one shared thread pool"),
    "mixed_precision": (str, "", "signatures run in their exported precision"),
    "tensorflow_session_config_file": (str, "", "TF2 SavedModels are loaded without a session"),
    "enable_per_model_batching_parameters": (
        bool_flag,
        False,
        "one --batching_parameters_file applies to every model",
    ),
    "enable_grpc_healthcheck_service": (
        bool_flag,
        False,
        "grpcio-health-checking is not installed; use ModelService/GetModelStatus",
    ),
    "per_process_gpu_memory_fraction": (
        fraction_flag,
        0.0,
        "TensorFlow's default GPU memory allocation is used",
    ),
    "saved_model_tags": (str, "serve", 'only the "serve" MetaGraph is loaded'),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error: ...` line, like the server's other start-up errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Command-line flags (TF Serving's underscore spellings and hyphenated ones)."""
    parser = ArgumentParser(
        prog="python -m serving.server",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def flag(name: str, **kwargs) -> None:
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
        parser.add_argument(*spellings, **kwargs)

    def switch(name: str, help: str, default: bool = False) -> None:
        flag(name, type=bool_flag, nargs="?", const=True, default=default, help=help)

    defaults = ServerOptions()
    port = integer_flag(0, 65535)
    flag(
        "port",
        type=port,
        default=defaults.port,
        help=f"gRPC port (default {defaults.port}; 0: no gRPC TCP port, which needs "
        "--grpc_socket_path, as in TF Serving)",
    )
    flag(
        "rest-api-port",
        type=port,
        default=defaults.rest_api_port,
        help=f"REST port (default {defaults.rest_api_port}; 0: REST off, as in TF Serving); "
        "must differ from --port",
    )
    flag("grpc-socket-path", default="", help="also serve gRPC on this UNIX socket path")
    flag(
        "host",
        default=defaults.host,
        help=f"address both APIs bind (default {defaults.host}; 0.0.0.0 exposes the server to "
        "the network; TF Serving binds gRPC to 0.0.0.0 and REST to localhost)",
    )
    flag("model-name", default="default", help="model name in request paths")
    flag(
        "model-base-path",
        help="directory holding numbered SavedModel versions (local, or gs://, s3://... where "
        "TensorFlow has that file system)",
    )
    flag(
        "model-config-file",
        help="text-proto ModelServerConfig (several models, version policies, version labels)",
    )
    flag(
        "model-config-file-poll-wait-seconds",
        default=defaults.model_config_file_poll_wait_seconds,
        type=seconds_flag("read the file once", "TF Serving reserves negative values for testing"),
        help="seconds between re-reads of --model-config-file (default "
        f"{defaults.model_config_file_poll_wait_seconds:g}: the file is read exactly once, at "
        "start-up, and never re-read); a model a re-read adds is loaded at once",
    )
    flag(
        "file-system-poll-wait-seconds",
        default=defaults.file_system_poll_wait_seconds,
        type=seconds_flag(
            "poll once",
            "a negative value makes TF Serving disable polling and wait for a model at start-up",
        ),
        help="seconds between polls of the model base paths for new versions (default "
        f"{defaults.file_system_poll_wait_seconds:g}; 0: poll exactly once, loading the "
        "versions there at start-up, and never again; "
        "negative values, TF Serving's 'no polling, wait for a model at start-up', are not "
        "supported)",
    )
    switch(
        "enable-batching",
        help="batch concurrent requests of the same model version and signature, except for "
        f"{', '.join(sorted(BATCH_LEVEL_SIGNATURES))}, whose outputs depend on the whole "
        "batch and which therefore always runs alone (TF Serving's --enable_batching would "
        "merge it)",
    )
    flag("batching-parameters-file", help="text-proto BatchingParameters (implies batching)")
    flag(
        "monitoring-config-file",
        help="text-proto MonitoringConfig; prometheus_config { enable: true } serves metrics on "
        "the REST port at its path (default /monitoring/prometheus/metrics)",
    )
    flag(
        "max-request-bytes",
        type=integer_flag(1),
        default=defaults.max_request_bytes,
        help="larger REST bodies get HTTP 413, larger gRPC messages RESOURCE_EXHAUSTED",
    )
    flag(
        "max-request-batch-size",
        type=integer_flag(1),
        default=defaults.max_request_batch_size,
        help="most rows (images) one predict request may carry, counted along the batch axis of "
        f"its inputs (default {defaults.max_request_batch_size}); a larger request is refused "
        "with INVALID_ARGUMENT (HTTP 400) naming the limit, before its tensors are built",
    )
    flag(
        "rest-api-header-timeout-seconds",
        type=positive_seconds,
        default=defaults.rest_api_header_timeout_seconds,
        help="seconds a REST connection may take to send a request's line and headers, counted "
        "from when it opens or its previous response was sent; it is closed after that, so an "
        "idle keep-alive connection is too "
        f"(default {defaults.rest_api_header_timeout_seconds:g})",
    )
    flag(
        "rest-api-body-timeout-seconds",
        type=positive_seconds,
        default=defaults.rest_api_body_timeout_seconds,
        help="seconds a REST request may take to send its whole body once its headers are in "
        f"(default {defaults.rest_api_body_timeout_seconds:g}); a slower one gets HTTP 408 "
        "and its connection is closed",
    )
    flag(
        "rest-api-num-threads",
        type=integer_flag(1),
        default=defaults.num_threads,
        help="threads running requests (REST and gRPC)",
    )
    flag(
        "rest-api-timeout-in-ms",
        type=integer_flag(1),
        default=round(defaults.timeout_seconds * 1000),
        help="per-request deadline (REST and gRPC)",
    )
    switch(
        "rest-api-enable-cors-support",
        help="add Access-Control-Allow-Origin: * (and -Methods, -Headers) to REST responses",
    )
    flag(
        "grpc-channel-arguments",
        default="",
        help="comma-separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000",
    )
    switch(
        "enable-serialization-as-tensor-content",
        help="gRPC responses carry tensor_content instead of typed value fields",
    )
    for name in ("tensorflow-intra-op-parallelism", "tensorflow-inter-op-parallelism"):
        flag(name, type=integer_flag(0), default=0, help="TensorFlow threads (0: its default)")
    flag(
        "tensorflow-session-parallelism",
        type=integer_flag(0),
        default=0,
        help="both TensorFlow thread counts where the two flags above are 0",
    )
    flag("version", action="store_true", help="print the version and exit")
    add_prior_stream_flags(parser)
    group = parser.add_argument_group(
        "TF Serving flags accepted with nothing to do here",
        "; ".join(f"--{name}: {why}" for name, (_, _, why) in NO_OP_FLAGS.items()),
    )
    for name, (kind, default, _) in {**NO_OP_FLAGS, **DEFAULT_ONLY_FLAGS}.items():
        target = group if name in NO_OP_FLAGS else parser
        extra = {"nargs": "?", "const": True} if kind is bool_flag else {}
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
        target.add_argument(
            *spellings,
            type=kind,
            default=default,
            help=argparse.SUPPRESS
            if name in NO_OP_FLAGS
            else f"accepted only as {default!r}: {DEFAULT_ONLY_FLAGS[name][2]}",
            **extra,
        )
    return parser


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's --grpc_channel_arguments: "name=value,name=value" (integers stay integers).

    Raises:
        ValueError: an entry without "=".
    """
    arguments: list[tuple[str, int | str]] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = entry.partition("=")
        if not equals or not name:
            raise ValueError(f"{entry!r}: expected name=value entries separated by commas")
        try:
            arguments.append((name, int(value)))
        except ValueError:
            arguments.append((name, value))
    return arguments


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def check_flags(args: argparse.Namespace) -> None:
    """Refuses flag values TF Serving accepts but this server cannot honour.

    Raises:
        StartupError: a DEFAULT_ONLY_FLAGS flag away from its default, no gRPC endpoint, the
            same port for both APIs.
    """
    for name, (_, default, why) in DEFAULT_ONLY_FLAGS.items():
        value = getattr(args, name)
        if value != default:
            raise StartupError(
                f"--{name} {_shown(value)}: not supported by this server ({why}); "
                f"omit it or give {_shown(default)}"
            )
    if args.port == 0 and not args.grpc_socket_path:
        raise StartupError(
            "--port 0: gRPC needs a TCP port or --grpc_socket_path, as in TF Serving (0 does not "
            "mean any free port); give --port N (default 8500)"
        )
    if args.port and args.port == args.rest_api_port:
        raise StartupError(
            f"--rest_api_port {args.rest_api_port}: the same as --port (gRPC); "
            "give the REST API another port (default 8501) or 0 to turn it off"
        )


def _read_flag_file(flag: str, path: str, read: Callable[[str], _T]) -> _T:
    """`read(path)`; its ValueError becomes a StartupError naming the flag and the file."""
    try:
        return read(path)
    except ValueError as error:
        raise StartupError(f"{flag} {path}: {error}") from None


def model_configs_from_args(args: argparse.Namespace) -> list[ModelConfig]:
    """The served models: the config file if given, else --model-name/--model-base-path.

    Raises:
        StartupError: neither is given, the config file cannot be read or parsed, or a base path
            is a file, a dangling link or a directory that cannot be listed.
    """
    if args.model_config_file:
        if args.model_base_path:
            log.warning("--model-config-file given: ignoring --model-name/--model-base-path")
        path = args.model_config_file
        configs = _read_flag_file("--model-config-file", path, read_model_config_file)
        sources = [
            f"--model-config-file {path}: model {c.name!r}: base_path {c.base_path!r}"
            for c in configs
        ]
    elif args.model_base_path:
        base_path = args.model_base_path
        if not is_remote(base_path):
            base_path = os.path.abspath(base_path)
        configs = [ModelConfig(name=args.model_name, base_path=base_path)]
        sources = [f"--model-base-path {args.model_base_path}"]
    else:
        raise StartupError("give --model-base-path (and --model-name) or --model-config-file")
    for config, source in zip(configs, sources):
        problem = base_path_problem(config.base_path)
        if problem is not None:
            raise StartupError(f"{source} {problem}")
    return configs


def batching_from_args(args: argparse.Namespace) -> BatchingOptions | None:
    """Batching options from --enable-batching / --batching-parameters-file (None: no batching).

    Raises:
        StartupError: the batching parameters file cannot be read or holds bad parameters.
    """
    if args.batching_parameters_file:
        return _read_flag_file(
            "--batching-parameters-file",
            args.batching_parameters_file,
            read_batching_parameters_file,
        )
    return BatchingOptions() if args.enable_batching else None


def monitoring_from_args(args: argparse.Namespace) -> MonitoringOptions:
    """Monitoring options from --monitoring_config_file (default: no metrics endpoint).

    Raises:
        StartupError: the file cannot be read or parsed, or asks for metrics with REST off.
    """
    if not args.monitoring_config_file:
        return MonitoringOptions()
    options = _read_flag_file(
        "--monitoring_config_file", args.monitoring_config_file, read_monitoring_config_file
    )
    if options.prometheus_path is not None and args.rest_api_port == 0:
        raise StartupError(
            f"--monitoring_config_file {args.monitoring_config_file}: Prometheus metrics are "
            "served on the REST port, but --rest_api_port is 0 (off); give it a port"
        )
    return options


def channel_arguments_from_args(args: argparse.Namespace) -> tuple[tuple[str, int | str], ...]:
    """--grpc_channel_arguments as (name, value) pairs.

    Raises:
        StartupError: an entry is not name=value.
    """
    try:
        return tuple(parse_channel_arguments(args.grpc_channel_arguments))
    except ValueError as error:
        raise StartupError(f"--grpc_channel_arguments {args.grpc_channel_arguments}: {error}")


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """ServerOptions from parsed flags (files are read and checked here).

    Raises:
        StartupError: a bad flag value or file.
    """
    check_flags(args)
    return ServerOptions(
        host=args.host,
        port=args.port,
        rest_api_port=args.rest_api_port,
        grpc_socket_path=args.grpc_socket_path,
        max_request_bytes=args.max_request_bytes,
        max_request_batch_size=args.max_request_batch_size,
        rest_api_header_timeout_seconds=args.rest_api_header_timeout_seconds,
        rest_api_body_timeout_seconds=args.rest_api_body_timeout_seconds,
        num_threads=args.rest_api_num_threads,
        timeout_seconds=args.rest_api_timeout_in_ms / 1e3,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        batching=batching_from_args(args),
        monitoring=monitoring_from_args(args),
        enable_cors_support=args.rest_api_enable_cors_support,
        grpc_channel_arguments=channel_arguments_from_args(args),
        serialize_as_tensor_content=args.enable_serialization_as_tensor_content,
        prior_streams=prior_streams_from_args(args),
    )
