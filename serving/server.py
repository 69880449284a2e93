"""A TF-Serving-compatible model server for SavedModels: REST and gRPC, for machines without
TF Serving.

    python -m serving.server --model-base-path DIR --model-name NAME \
        --port 8500 --rest_api_port 8501
    python -m serving.server --model-config-file serving/models.config \
        --enable-batching --batching-parameters-file serving/batching.config \
        --monitoring_config_file serving/monitoring.config

Speaks TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md) on --rest_api_port (default
8501; 0: off): `POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`, `GET
/v1/models/{name}[/versions/{v}|/labels/{l}]` (model status) and `GET .../metadata` (signature
defs), with TF Serving's request and response JSON, `{"error": ...}` bodies and HTTP codes; and
its gRPC API on --port (default 8500): tensorflow.serving.PredictionService (Predict,
GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest). Both share one
inference path (serving/inference.py). Serves the highest loaded version and polls the base paths
(local, or any TensorFlow file system: gs://, s3://, ...) for new versions (no restart;
--file-system-poll-wait-seconds 0 loads what is there at start-up and never polls again, as in TF
Serving). Built on aiohttp and grpc.aio on one event loop; inference runs in a thread pool, never
on the event loop. Binds 127.0.0.1 unless --host says otherwise. Every TF Serving flag is accepted
in its underscore spelling (see serving/flags.py for those with nothing to do here).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import re
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import unquote

from aiohttp import web

from serving import json_tensor
from serving.batching import BatchingOptions, read_batching_parameters_file
from serving.flags import StartupError, check_flags, parse_channel_arguments
from serving.flags import build_parser as _build_parser
from serving.inference import InferenceCore
from serving.model_manager import (
    ModelConfig,
    ModelManager,
    base_path_problem,
    read_model_config_file,
)
from serving.monitoring import (
    Metrics,
    MonitoringOptions,
    RequestRecord,
    access_log,
    log_access,
    read_monitoring_config_file,
)
from serving.status import ServingError, invalid_argument
from serving.storage import is_remote

log = logging.getLogger("serving")

# TF Serving's request path patterns (http_rest_api_util.cc), case-insensitive like RE2's (?i).
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1
_JSON = "application/json"
# TF Serving's AddCORSHeaders (http_rest_api_util.cc).
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_T = TypeVar("_T")
VERSION = "lade-serving 0.2 (TF Serving 2.18 APIs)"


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (see serving/flags.py)."""
    return _build_parser(__doc__)


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs besides the models."""

    host: str = "127.0.0.1"
    port: int = 8500  # gRPC; 0: no TCP port (grpc_socket_path only)
    rest_api_port: int = 8501  # 0: REST off
    grpc_socket_path: str = ""
    max_request_bytes: int = 64 * 2**20
    num_threads: int = max(4, os.cpu_count() or 1)
    timeout_seconds: float = 30.0
    file_system_poll_wait_seconds: float = 1.0  # 0: no poll after the start-up load
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0: the file is never re-read
    batching: BatchingOptions | None = None
    monitoring: MonitoringOptions = MonitoringOptions()
    enable_cors_support: bool = False
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    serialize_as_tensor_content: bool = False


def _json_response(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type=_JSON)


def _error_response(error: ServingError) -> web.Response:
    return _json_response(json_tensor.error_body(error.message), error.http_status)


def _parse_version(text: str | None) -> int | None:
    if not text:
        return None
    version = int(text)
    if version > _INT64_MAX:
        raise invalid_argument(
            f"Failed to convert version: {json_tensor.snippet(text)} to numeric."
        )
    return version


class ServingApp:
    """The REST handlers over the shared InferenceCore, plus the file-system and config-file
    polls.

    Each poll is a task only when its interval is > 0; with 0 (TF Serving's "exactly once"),
    the start-up load in `serve` was the one poll and no task, thread or loop is started.
    """

    def __init__(self, manager: ModelManager, options: ServerOptions):
        self.manager = manager
        self.options = options
        self.core = InferenceCore(
            manager, options.num_threads, options.timeout_seconds, options.batching
        )
        self.metrics = (
            Metrics(manager.loaded_versions)
            if options.monitoring.prometheus_path is not None
            else None
        )
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="model-poll")
        self._pollers: list[asyncio.Task] = []

    def application(self) -> web.Application:
        """The aiohttp application (one catch-all route; dispatch follows TF Serving's regexes)."""
        app = web.Application(client_max_size=self.options.max_request_bytes)
        app.router.add_route("*", "/{path:.*}", self.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application | None = None) -> None:
        self.core.start()
        file_system_wait = self.options.file_system_poll_wait_seconds
        if file_system_wait > 0:
            self._pollers.append(asyncio.create_task(self._poll_file_system(file_system_wait)))
        else:
            log.info(
                "--file-system-poll-wait-seconds 0: the versions loaded at start-up are "
                "served; base paths are not polled again (new versions need a restart)"
            )
        config_wait = self.options.model_config_file_poll_wait_seconds
        if self.options.model_config_file and config_wait > 0:
            self._pollers.append(asyncio.create_task(self._poll_model_config_file(config_wait)))

    async def _stop(self, app: web.Application | None = None) -> None:
        for poller in self._pollers:
            poller.cancel()
        self.core.shutdown()
        self._poll_executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_file_system(self, wait: float) -> None:
        """Polls every base path each `wait` seconds (> 0), until cancelled."""
        while True:
            await asyncio.sleep(wait)
            await self._in_poll_executor(self.manager.poll)

    async def _poll_model_config_file(self, wait: float) -> None:
        """Re-reads the model config file each `wait` seconds (> 0), until cancelled."""
        while True:
            await asyncio.sleep(wait)
            await self._in_poll_executor(self._reread_model_config)

    async def _in_poll_executor(self, function: Callable[[], None]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._poll_executor, function)
        except Exception:  # noqa: BLE001 - a failed poll must not stop serving
            log.exception("model poll failed; serving continues with the loaded versions")

    def _reread_model_config(self) -> None:
        """Applies the model config file again (blocking; in the poll thread, so never while a
        file-system poll runs); a bad file is logged in one line and ignored. A model the file
        adds is polled at once: its start-up load, so it is served even when the file-system
        poll is off (0).
        """
        path = self.options.model_config_file
        try:
            configs = read_model_config_file(path)
        except ValueError as error:
            log.error(
                "--model-config-file %s: %s; keeping the models of the previous config", path, error
            )
            return
        self._apply_configs(configs)

    def _apply_configs(self, configs: list[ModelConfig]) -> None:
        self.manager.reconfigure(configs)
        self.manager.poll(new_only=True)

    async def reload(self, configs: list[ModelConfig]) -> None:
        """Serves `configs` from now on (gRPC HandleReloadConfigRequest), in the poll thread."""
        await asyncio.get_running_loop().run_in_executor(
            self._poll_executor, self._apply_configs, configs
        )

    def batching_stats(self) -> dict[tuple[str, int, str], dict[str, int]]:
        """See InferenceCore.batching_stats."""
        return self.core.batching_stats()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Routes one request like TF Serving's RestApiRequestDispatcher; counts and logs it."""
        path = request.rel_url.raw_path
        version = request.version
        record = RequestRecord(
            "REST",
            "",
            request.remote or "-",
            f"{request.method} {request.rel_url.raw_path_qs} HTTP/{version.major}.{version.minor}",
        )
        response = await self._respond(request, path, record)
        if self.options.enable_cors_support:
            response.headers.update(_CORS_HEADERS)
        record.http_status = response.status
        body = getattr(response, "body", None)
        record.response_bytes = len(body) if isinstance(body, (bytes, bytearray)) else 0
        if record.api:
            if self.metrics is not None:
                self.metrics.observe(record)
        log_access(record)
        return response

    async def _respond(
        self, request: web.Request, path: str, record: RequestRecord
    ) -> web.StreamResponse:
        metrics_path = self.options.monitoring.prometheus_path
        if self.metrics is not None and path == metrics_path and request.method == "GET":
            payload, content_type = self.metrics.exposition()
            response = web.Response(body=payload)
            response.headers["Content-Type"] = content_type
            return response
        if request.method == "OPTIONS":
            if re.search(r"https?://", request.headers.get("Origin", "")):
                return web.Response(status=200)
            return _error_response(
                ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
            )
        if not _API_PATH.fullmatch(path):
            return _json_response(
                json_tensor.error_body(f"Not Found: {json_tensor.snippet(path)}"), 404
            )
        try:
            return await self._dispatch(request, path, record)
        except ServingError as error:
            record.status = error.code
            return _error_response(error)
        except web.HTTPRequestEntityTooLarge:
            record.status = "RESOURCE_EXHAUSTED"
            return self._too_large(request.content_length)
        except Exception as error:  # noqa: BLE001 - still a JSON error body, like TF Serving
            log.exception("request %s %s failed", request.method, path)
            record.status = "INTERNAL"
            return _error_response(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))

    async def _dispatch(
        self, request: web.Request, path: str, record: RequestRecord
    ) -> web.Response:
        malformed = invalid_argument(
            f"Malformed request: {request.method} {json_tensor.snippet(path)}"
        )
        if request.method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, method = match.groups()
            method = method.lower()
            record.api, record.model = method, unquote(name)
            version = _parse_version(version_text)
            label = None if label is None else unquote(label)
            size = request.content_length
            if size is not None and size > self.options.max_request_bytes:
                record.status = "RESOURCE_EXHAUSTED"
                return self._too_large(size)
            body = await request.read()
            if method == "predict":
                return await self._predict(body, record.model, version, label, record)
            return await self.core.run(
                self._classify_or_regress, body, record.model, version, label, method
            )
        if request.method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, metadata = match.groups()
            record.api = "GetModelMetadata" if metadata else "GetModelStatus"
            if not name:
                raise invalid_argument("Missing model name in request.")
            version = _parse_version(version_text)
            record.model, record.version = unquote(name), version
            label = None if label is None else unquote(label)
            if metadata:
                document = self.manager.metadata_json(record.model, version, label)
            else:
                document = self.manager.status_json(record.model, version, label)
            return _json_response(json.dumps(document, indent=1).encode("utf-8"))
        raise malformed

    def _too_large(self, size: int | None) -> web.Response:
        # TF Serving documents no REST body limit; 413 is HTTP's answer for a body over one.
        body = "Request body" if size is None else f"Request body of {size} bytes"
        message = (
            f"{body} exceeds the limit of {self.options.max_request_bytes} bytes "
            "(--max-request-bytes)"
        )
        return _json_response(json_tensor.error_body(message), 413)

    def _prepare(self, body: bytes, name: str, version: int | None, label: str | None):
        document = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(document)
        loaded, signature = self.core.resolve(name, version, label, signature_name)
        tensors, request_format = json_tensor.predict_inputs(document, body, signature.inputs)
        return loaded, signature, tensors, request_format

    async def _predict(
        self, body: bytes, name: str, version: int | None, label: str | None, record
    ) -> web.Response:
        loaded, signature, tensors, request_format = await self.core.run(
            self._prepare, body, name, version, label
        )
        record.version, record.signature = loaded.version, signature.name
        outputs = await self.core.predict(loaded, signature, tensors)
        payload = await self.core.run(json_tensor.predict_response, outputs, request_format)
        return _json_response(payload)

    def _classify_or_regress(
        self, body: bytes, name: str, version: int | None, label: str | None, method: str
    ) -> web.Response:
        """Validates like TF Serving; every signature exported here is a predict signature."""
        document = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(document) or "serving_default"
        json_tensor.classify_regress_examples(document, method)
        loaded = self.manager.resolve(name, version, label)
        method_name = f"tensorflow/serving/{method}"
        signature_def = loaded.signature_def_map.signature_def.get(signature_name)
        if signature_def is None:
            raise invalid_argument(
                f"No signature was found with the name: {json_tensor.snippet(signature_name)}"
            )
        if signature_def.method_name != method_name:
            kind = "classification" if method == "classify" else "regression"
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {method_name}. "
                f"Was: {signature_def.method_name}"
            )
        raise ServingError(
            "UNIMPLEMENTED",
            f"{method} over tf.Example inputs is not supported by this server; use :predict",
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


def _bind_error(flag: str, host: str, port: int, error: OSError | None) -> str:
    if error is None or error.errno == errno.EADDRINUSE:
        return (
            f"{flag} {port}: {host}:{port} is already in use; stop what listens there or "
            "choose another port"
        )
    return f"--host {host} {flag} {port}: cannot listen there ({error.strerror or error})"


def bind_socket(host: str, port: int, flag: str = "--rest_api_port") -> socket.socket:
    """A socket bound to host:port but not listening yet, so that a port in use is reported
    before the models load, and connections are refused (not left waiting) until they have.

    Raises:
        StartupError: the host does not resolve, or the port is in use or not allowed.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise StartupError(
            f"--host {host}: not an address to listen on ({error.strerror})"
        ) from None
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise StartupError(_bind_error(flag, host, port, error)) from None
    return sock


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server: its app, its addresses and the start-up lines (see `start_server`)."""

    app: ServingApp
    grpc_server: object
    runner: web.AppRunner | None
    grpc_address: str | None
    rest_url: str | None
    lines: list[str]

    async def stop(self) -> None:
        """Stops both front ends (gRPC gets a second to finish its calls), then the polls."""
        await self.grpc_server.stop(grace=1.0)
        if self.runner is not None:
            await self.runner.cleanup()
        await self.app._stop()


async def start_server(
    manager: ModelManager, options: ServerOptions, sock: socket.socket | None = None
) -> RunningServer:
    """Binds the ports, loads the models, then starts answering REST and gRPC requests.

    Args:
        manager: the models to serve.
        options: host, ports and the rest.
        sock: the REST socket from `bind_socket` (default: bound here when REST is on).

    Raises:
        StartupError: a port is in use or cannot be listened on.
    """
    from serving.grpc_server import build_grpc_server

    if sock is None and options.rest_api_port:
        sock = bind_socket(options.host, options.rest_api_port)
    app = ServingApp(manager, options)
    grpc_server = build_grpc_server(
        app.core,
        app.metrics,
        app.reload,
        max_request_bytes=options.max_request_bytes,
        channel_arguments=list(options.grpc_channel_arguments),
        as_tensor_content=options.serialize_as_tensor_content,
    )
    lines, grpc_address = [], None
    if options.port:
        grpc_address = _grpc_address(options.host, options.port)
        try:
            bound = grpc_server.add_insecure_port(grpc_address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise StartupError(_bind_error("--port", options.host, options.port, None))
        lines.append(f"Running gRPC ModelServer at {grpc_address} ...")
    if options.grpc_socket_path:
        try:
            bound = grpc_server.add_insecure_port(f"unix:{options.grpc_socket_path}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise StartupError(
                f"--grpc_socket_path {options.grpc_socket_path}: cannot listen there"
            )
        lines.append(f"Running gRPC ModelServer at unix:{options.grpc_socket_path} ...")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, manager.poll)  # initial load, before accepting requests
    await app._start()
    await grpc_server.start()
    runner, rest_url = None, None
    if sock is not None:
        application = app.application()
        application.on_startup.clear()  # started above, for both front ends
        application.on_cleanup.clear()
        runner = web.AppRunner(application, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except OSError as error:
            await runner.cleanup()
            await grpc_server.stop(None)
            raise StartupError(
                _bind_error("--rest_api_port", options.host, options.rest_api_port, error)
            ) from None
        host, port = sock.getsockname()[:2]
        rest_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        lines.append(
            f"Exporting HTTP/REST API at {rest_url} (models: {', '.join(sorted(manager.models))})"
        )
    return RunningServer(app, grpc_server, runner, grpc_address, rest_url, lines)


async def serve(
    manager: ModelManager,
    options: ServerOptions,
    ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """`start_server`, then serves until SIGINT/SIGTERM.

    Args:
        manager, options, sock: as for `start_server`.
        ready: called with the start-up lines once requests are answered (default: print them).

    Raises:
        StartupError: a port is in use or cannot be listened on.
    """
    server = await start_server(manager, options, sock)
    try:
        (ready or (lambda text: print(text, flush=True)))("\n".join(server.lines))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await stop.wait()
    finally:
        await server.stop()


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # Common Log Format lines as they are
    access_log.addHandler(handler)
    access_log.propagate = False


def _set_tensorflow_threads(args: argparse.Namespace) -> None:
    """TF Serving's parallelism flags (0: TensorFlow's default), before any op runs."""
    import tensorflow as tf

    intra = args.tensorflow_intra_op_parallelism or args.tensorflow_session_parallelism
    inter = args.tensorflow_inter_op_parallelism or args.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


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
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m serving.server`; returns the exit status (2: bad input).

    Flags, local files, base paths and both ports are checked before TensorFlow is imported, so
    a bad one is reported at once, as one `error: ...` line.
    """
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"TensorFlow ModelServer: {VERSION}")
        return 0
    _configure_logging()
    try:
        options = options_from_args(args)
        configs = model_configs_from_args(args)
        if options.port:  # reported now, not after the models load; bound for real in `serve`
            bind_socket(options.host, options.port, "--port").close()
        sock = bind_socket(options.host, options.rest_api_port) if options.rest_api_port else None
        import tensorflow  # noqa: F401 - in the main thread, once everything above is checked

        _set_tensorflow_threads(args)
        asyncio.run(serve(ModelManager(configs), options, sock=sock))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
