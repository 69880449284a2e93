"""A TF-Serving-compatible REST server for SavedModels, for machines without TF Serving.

    python -m serving.server --model-base-path DIR --model-name NAME --port 8501
    python -m serving.server --model-config-file serving/models.config --port 8501 \
        --enable-batching --batching-parameters-file serving/batching.config

Speaks TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md):
`POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`, `GET /v1/models/{name}[/versions/{v}|
/labels/{l}]` (model status) and `GET .../metadata` (signature defs), with TF Serving's request and
response JSON, `{"error": ...}` bodies and HTTP codes. Serves the highest loaded version and polls
the base paths for new versions (no restart; --file-system-poll-wait-seconds 0 loads what is
there at start-up and never polls again, as in TF Serving). Built on aiohttp; inference runs in a
thread pool, never on the event loop. Binds 127.0.0.1 unless --host says otherwise. TF Serving's
underscore flag spellings (--model_base_path, --rest_api_port, ...) are accepted too.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NoReturn, TypeVar
from urllib.parse import unquote

from aiohttp import web

from serving import json_tensor
from serving.batching import (
    BATCH_LEVEL_SIGNATURES,
    Batcher,
    BatchingOptions,
    batchable,
    read_batching_parameters_file,
)
from serving.model_manager import (
    LoadedVersion,
    ModelConfig,
    ModelManager,
    base_path_problem,
    read_model_config_file,
)
from serving.status import ServingError, invalid_argument

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
_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs besides the models."""

    host: str = "127.0.0.1"
    port: int = 8501
    max_request_bytes: int = 64 * 2**20
    num_threads: int = max(4, os.cpu_count() or 1)
    timeout_seconds: float = 30.0
    file_system_poll_wait_seconds: float = 1.0  # 0: no poll after the start-up load
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0: the file is never re-read
    batching: BatchingOptions | None = None


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
    """The REST handlers over a ModelManager, plus the file-system and config-file polls.

    Each poll is a task only when its interval is > 0; with 0 (TF Serving's "exactly once"),
    the start-up load in `serve` was the one poll and no task, thread or loop is started.
    """

    def __init__(self, manager: ModelManager, options: ServerOptions):
        self.manager = manager
        self.options = options
        self.executor = ThreadPoolExecutor(options.num_threads, thread_name_prefix="rest")
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="model-poll")
        self._batchers: weakref.WeakKeyDictionary[LoadedVersion, dict] = weakref.WeakKeyDictionary()
        self._batch_threads: asyncio.Semaphore | None = None
        self._pollers: list[asyncio.Task] = []

    def application(self) -> web.Application:
        """The aiohttp application (one catch-all route; dispatch follows TF Serving's regexes)."""
        app = web.Application(client_max_size=self.options.max_request_bytes)
        app.router.add_route("*", "/{path:.*}", self.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        if self.options.batching is not None:
            self._batch_threads = asyncio.Semaphore(self.options.batching.num_batch_threads)
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

    async def _stop(self, app: web.Application) -> None:
        for poller in self._pollers:
            poller.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
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
        self.manager.reconfigure(configs)
        self.manager.poll(new_only=True)

    async def handle(self, request: web.Request) -> web.Response:
        """Routes one request like TF Serving's RestApiRequestDispatcher."""
        path = request.rel_url.raw_path
        if not _API_PATH.fullmatch(path):
            return _json_response(
                json_tensor.error_body(f"Not Found: {json_tensor.snippet(path)}"), 404
            )
        try:
            return await self._dispatch(request, path)
        except ServingError as error:
            return _error_response(error)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request.content_length)
        except Exception as error:  # noqa: BLE001 - still a JSON error body, like TF Serving
            log.exception("request %s %s failed", request.method, path)
            return _error_response(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))

    async def _dispatch(self, request: web.Request, path: str) -> web.Response:
        malformed = invalid_argument(
            f"Malformed request: {request.method} {json_tensor.snippet(path)}"
        )
        if request.method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, method = match.groups()
            version = _parse_version(version_text)
            name = unquote(name)
            label = None if label is None else unquote(label)
            size = request.content_length
            if size is not None and size > self.options.max_request_bytes:
                return self._too_large(size)
            body = await request.read()
            if method.lower() == "predict":
                return await self._predict(body, name, version, label)
            return await self._run(
                self._classify_or_regress, body, name, version, label, method.lower()
            )
        if request.method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, metadata = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            version = _parse_version(version_text)
            name = unquote(name)
            label = None if label is None else unquote(label)
            if metadata:
                document = self.manager.metadata_json(name, version, label)
            else:
                document = self.manager.status_json(name, version, label)
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

    async def _run(self, function: Callable, *args):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.executor, function, *args), self.options.timeout_seconds
            )
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

    def _prepare(self, body: bytes, name: str, version: int | None, label: str | None):
        document = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(document)
        loaded = self.manager.resolve(name, version, label)
        signature = loaded.signature(signature_name)
        tensors, request_format = json_tensor.predict_inputs(document, body, signature.inputs)
        return loaded, signature, tensors, request_format

    def _predict_blocking(
        self, body: bytes, name: str, version: int | None, label: str | None
    ) -> web.Response:
        _, signature, tensors, request_format = self._prepare(body, name, version, label)
        outputs = signature.run(tensors)
        return _json_response(json_tensor.predict_response(outputs, request_format))

    async def _predict(
        self, body: bytes, name: str, version: int | None, label: str | None
    ) -> web.Response:
        if self.options.batching is None:
            return await self._run(self._predict_blocking, body, name, version, label)
        loaded, signature, tensors, request_format = await self._run(
            self._prepare, body, name, version, label
        )
        if not batchable(signature.name):  # its outputs depend on the whole batch: run alone
            outputs = await self._run(signature.run, tensors)
        else:
            batcher = self._batcher(loaded, signature, tensors)
            try:
                outputs = await asyncio.wait_for(
                    batcher.submit(tensors), self.options.timeout_seconds
                )
            except asyncio.TimeoutError:
                raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        payload = await self._run(json_tensor.predict_response, outputs, request_format)
        return _json_response(payload)

    def _batcher(self, loaded: LoadedVersion, signature, tensors) -> Batcher:
        shapes = tuple(sorted((name, tensor.shape[1:]) for name, tensor in tensors.items()))
        per_version = self._batchers.setdefault(loaded, {})
        key = (signature.name, shapes)
        if key not in per_version:
            per_version[key] = Batcher(
                signature.run, self.options.batching, self.executor, self._batch_threads
            )
        return per_version[key]

    def batching_stats(self) -> dict[tuple[str, int, str], dict[str, int]]:
        """{(model, version, signature): {"requests": n, "batches": m}} of the live batchers.

        requests > batches means requests were merged; a signature never batched is absent.
        """
        stats: dict[tuple[str, int, str], dict[str, int]] = {}
        for loaded, per_version in list(self._batchers.items()):
            for (signature_name, _), batcher in per_version.items():
                entry = stats.setdefault(
                    (loaded.model_name, loaded.version, signature_name),
                    {"requests": 0, "batches": 0},
                )
                entry["requests"] += batcher.requests
                entry["batches"] += batcher.batches
        return stats

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


class StartupError(Exception):
    """A bad flag, file or port found while starting: `main` prints `error: <message>`, exits 2."""


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
        configs = [
            ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))
        ]
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


def _bind_error(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"--port {port}: {host}:{port} is already in use; stop what listens there or "
            "choose another port (0: any free port)"
        )
    return f"--host {host} --port {port}: cannot listen there ({error.strerror or error})"


def bind_socket(host: str, port: int) -> socket.socket:
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
        raise StartupError(_bind_error(host, port, error)) from None
    return sock


def _integer_flag(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from `minimum` to `maximum` (None: no upper bound)."""
    expected = (
        f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    )

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


def _seconds_flag(zero: str, negative: str) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds >= 0.

    Args:
        zero: what 0 means, for the error message.
        negative: what TF Serving does with a negative value (a clause), rejected here.
    """
    expected = f"a finite number of seconds >= 0 (0: {zero})"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value < 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {expected}; {negative}, which this server does not support"
            )
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value + 0.0  # -0.0 is 0

    return parse


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error: ...` line, like the server's other start-up errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (TF Serving's underscore spellings are aliases)."""
    parser = _ArgumentParser(
        prog="python -m serving.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def flag(name: str, **kwargs) -> None:
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
        parser.add_argument(*spellings, **kwargs)

    port = _integer_flag(0, 65535)
    flag(
        "port",
        type=port,
        default=8501,
        help="REST port (0: any free port; TF Serving's --rest_api_port is an alias)",
    )
    parser.add_argument("--rest_api_port", dest="port", type=port, help=argparse.SUPPRESS)
    flag(
        "host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server to the network)",
    )
    flag("model-name", default="default", help="model name in request paths")
    flag("model-base-path", help="directory holding numbered SavedModel versions")
    flag(
        "model-config-file",
        help="text-proto ModelServerConfig (several models, version policies, version labels)",
    )
    flag(
        "model-config-file-poll-wait-seconds",
        default=0.0,
        type=_seconds_flag("read the file once", "TF Serving reserves negative values for testing"),
        help="seconds between re-reads of --model-config-file (default 0: the file is read "
        "exactly once, at start-up, and never re-read); a model a re-read adds is loaded at "
        "once",
    )
    flag(
        "file-system-poll-wait-seconds",
        default=1.0,
        type=_seconds_flag(
            "poll once",
            "a negative value makes TF Serving disable polling and wait for a model at start-up",
        ),
        help="seconds between polls of the model base paths for new versions (default 1; 0: "
        "poll exactly once, loading the versions there at start-up, and never again; "
        "negative values, TF Serving's 'no polling, wait for a model at start-up', are not "
        "supported)",
    )
    flag(
        "enable-batching",
        action="store_true",
        help="batch concurrent requests of the same model version and signature, except for "
        f"{', '.join(sorted(BATCH_LEVEL_SIGNATURES))}, whose outputs depend on the whole "
        "batch and which therefore always runs alone (TF Serving's --enable_batching would "
        "merge it)",
    )
    flag("batching-parameters-file", help="text-proto BatchingParameters (implies batching)")
    flag(
        "max-request-bytes",
        type=_integer_flag(1),
        default=64 * 2**20,
        help="larger request bodies get HTTP 413",
    )
    flag(
        "rest-api-num-threads",
        type=_integer_flag(1),
        default=max(4, os.cpu_count() or 1),
        help="threads running requests",
    )
    flag(
        "rest-api-timeout-in-ms", type=_integer_flag(1), default=30000, help="per-request deadline"
    )
    return parser


async def serve(
    manager: ModelManager,
    options: ServerOptions,
    ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Loads the models, then serves until SIGINT/SIGTERM.

    Args:
        manager: the models to serve.
        options: host, port and the rest.
        ready: called with the start-up line once requests are answered (default: print it).
        sock: a socket from `bind_socket` (default: bound here to options.host/port).

    Raises:
        StartupError: the port is in use or cannot be listened on.
    """
    if sock is None:
        sock = bind_socket(options.host, options.port)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, manager.poll)  # initial load, before accepting requests
    app = ServingApp(manager, options)
    runner = web.AppRunner(app.application(), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except OSError as error:
        await runner.cleanup()
        raise StartupError(_bind_error(options.host, options.port, error)) from None
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    (ready or (lambda text: print(text, flush=True)))(
        f"Exporting HTTP/REST API at {url} (models: {', '.join(sorted(manager.models))})"
    )
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m serving.server`; returns the exit status (2: bad input).

    Flags, files, base paths and the port are checked before TensorFlow is imported, so a bad
    one is reported at once, as one `error: ...` line.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        configs = model_configs_from_args(args)
        options = ServerOptions(
            host=args.host,
            port=args.port,
            max_request_bytes=args.max_request_bytes,
            num_threads=args.rest_api_num_threads,
            timeout_seconds=args.rest_api_timeout_in_ms / 1e3,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            model_config_file=args.model_config_file,
            model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
            batching=batching_from_args(args),
        )
        sock = bind_socket(options.host, options.port)
        import tensorflow  # noqa: F401 - in the main thread, once everything above is checked

        asyncio.run(serve(ModelManager(configs), options, sock=sock))
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
