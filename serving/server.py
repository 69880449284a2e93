"""A TF-Serving-compatible REST server for SavedModels, for machines without TF Serving.

    python -m serving.server --model-base-path DIR --model-name NAME --port 8501
    python -m serving.server --model-config-file serving/models.config --port 8501 \
        --enable-batching --batching-parameters-file serving/batching.config

Speaks TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md):
`POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`, `GET /v1/models/{name}[/versions/{v}|
/labels/{l}]` (model status) and `GET .../metadata` (signature defs), with TF Serving's request and
response JSON, `{"error": ...}` bodies and HTTP codes. Serves the highest loaded version and polls
the base paths for new versions (no restart). Built on aiohttp; inference runs in a thread pool,
never on the event loop. Binds 127.0.0.1 unless --host says otherwise. TF Serving's underscore
flag spellings (--model_base_path, --rest_api_port, ...) are accepted too.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

from aiohttp import web

from serving import json_tensor
from serving.batching import Batcher, BatchingOptions, read_batching_parameters_file
from serving.model_manager import (LoadedVersion, ModelConfig, ModelManager,
                                   read_model_config_file)
from serving.status import ServingError, invalid_argument

log = logging.getLogger("serving")

# TF Serving's request path patterns (http_rest_api_util.cc), case-insensitive like RE2's (?i).
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_INT64_MAX = 2**63 - 1
_JSON = "application/json"


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs besides the models."""

    host: str = "127.0.0.1"
    port: int = 8501
    max_request_bytes: int = 64 * 2**20
    num_threads: int = max(4, os.cpu_count() or 1)
    timeout_seconds: float = 30.0
    file_system_poll_wait_seconds: float = 1.0
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
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
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return version


class ServingApp:
    """The REST handlers over a ModelManager, plus the file-system poll."""

    def __init__(self, manager: ModelManager, options: ServerOptions):
        self.manager = manager
        self.options = options
        self.executor = ThreadPoolExecutor(options.num_threads, thread_name_prefix="rest")
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="model-poll")
        self._batchers: weakref.WeakKeyDictionary[LoadedVersion, dict] = (
            weakref.WeakKeyDictionary())
        self._batch_threads: asyncio.Semaphore | None = None
        self._poller: asyncio.Task | None = None

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
        self._poller = asyncio.create_task(self._poll_forever())

    async def _stop(self, app: web.Application) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._poll_executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        config_wait = self.options.model_config_file_poll_wait_seconds
        next_config_read = loop.time() + config_wait
        while True:
            await asyncio.sleep(self.options.file_system_poll_wait_seconds)
            try:
                if (self.options.model_config_file and config_wait > 0
                        and loop.time() >= next_config_read):
                    next_config_read = loop.time() + config_wait
                    configs = await loop.run_in_executor(
                        self._poll_executor, read_model_config_file,
                        self.options.model_config_file)
                    self.manager.reconfigure(configs)
                await loop.run_in_executor(self._poll_executor, self.manager.poll)
            except Exception:  # noqa: BLE001 - a bad poll (e.g. config typo) must not stop serving
                log.exception("model poll failed; serving continues with the loaded versions")

    async def handle(self, request: web.Request) -> web.Response:
        """Routes one request like TF Serving's RestApiRequestDispatcher."""
        path = request.rel_url.raw_path
        if not _API_PATH.fullmatch(path):
            return _json_response(json_tensor.error_body(f"Not Found: {path}"), 404)
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
        malformed = invalid_argument(f"Malformed request: {request.method} {path}")
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
            return await self._run(self._classify_or_regress, body, name, version, label,
                                   method.lower())
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
        message = (f"{body} exceeds the limit of {self.options.max_request_bytes} bytes "
                   "(--max-request-bytes)")
        return _json_response(json_tensor.error_body(message), 413)

    async def _run(self, function: Callable, *args):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.executor, function, *args),
                                          self.options.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

    def _prepare(self, body: bytes, name: str, version: int | None, label: str | None):
        document = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(document)
        loaded = self.manager.resolve(name, version, label)
        signature = loaded.signature(signature_name)
        tensors, request_format = json_tensor.predict_inputs(document, body, signature.inputs)
        return loaded, signature, tensors, request_format

    def _predict_blocking(self, body: bytes, name: str, version: int | None,
                          label: str | None) -> web.Response:
        _, signature, tensors, request_format = self._prepare(body, name, version, label)
        outputs = signature.run(tensors)
        return _json_response(json_tensor.predict_response(outputs, request_format))

    async def _predict(self, body: bytes, name: str, version: int | None,
                       label: str | None) -> web.Response:
        if self.options.batching is None:
            return await self._run(self._predict_blocking, body, name, version, label)
        loaded, signature, tensors, request_format = await self._run(
            self._prepare, body, name, version, label)
        batcher = self._batcher(loaded, signature, tensors)
        try:
            outputs = await asyncio.wait_for(batcher.submit(tensors),
                                             self.options.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        payload = await self._run(json_tensor.predict_response, outputs, request_format)
        return _json_response(payload)

    def _batcher(self, loaded: LoadedVersion, signature, tensors) -> Batcher:
        shapes = tuple(sorted((name, tensor.shape[1:]) for name, tensor in tensors.items()))
        per_version = self._batchers.setdefault(loaded, {})
        key = (signature.name, shapes)
        if key not in per_version:
            per_version[key] = Batcher(signature.run, self.options.batching, self.executor,
                                       self._batch_threads)
        return per_version[key]

    def _classify_or_regress(self, body: bytes, name: str, version: int | None,
                             label: str | None, method: str) -> web.Response:
        """Validates like TF Serving; every signature exported here is a predict signature."""
        document = json_tensor.parse_json(body)
        signature_name = json_tensor.signature_name_of(document) or "serving_default"
        if "examples" not in document:
            raise invalid_argument(f"JSON Value: {json.dumps(document, indent=4)} When method is "
                                   "classify, key 'examples' is expected and was not found")
        loaded = self.manager.resolve(name, version, label)
        method_name = f"tensorflow/serving/{method}"
        signature_def = loaded.signature_def_map.signature_def.get(signature_name)
        if signature_def is None:
            raise invalid_argument(f"No signature was found with the name: {signature_name}")
        if signature_def.method_name != method_name:
            kind = "classification" if method == "classify" else "regression"
            raise invalid_argument(f"Expected {kind} signature method_name to be {method_name}. "
                                   f"Was: {signature_def.method_name}")
        raise ServingError("UNIMPLEMENTED", f"{method} over tf.Example inputs is not supported "
                                            "by this server; use :predict")


def model_configs_from_args(args: argparse.Namespace) -> list[ModelConfig]:
    """The served models: the config file if given, else --model-name/--model-base-path."""
    if args.model_config_file:
        if args.model_base_path:
            log.warning("--model-config-file given: ignoring --model-name/--model-base-path")
        return read_model_config_file(args.model_config_file)
    if not args.model_base_path:
        raise SystemExit("error: give --model-base-path (and --model-name) or "
                         "--model-config-file")
    return [ModelConfig(name=args.model_name, base_path=os.path.abspath(args.model_base_path))]


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (TF Serving's underscore spellings are aliases)."""
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name: str, **kwargs) -> None:
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
        parser.add_argument(*spellings, **kwargs)

    flag("port", type=int, default=8501, help="REST port (0: any free port; TF Serving's "
         "--rest_api_port is an alias)")
    parser.add_argument("--rest_api_port", dest="port", type=int, help=argparse.SUPPRESS)
    flag("host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes "
         "the server to the network)")
    flag("model-name", default="default", help="model name in request paths")
    flag("model-base-path", help="directory holding numbered SavedModel versions")
    flag("model-config-file", help="text-proto ModelServerConfig (several models, version "
         "policies, version labels)")
    flag("model-config-file-poll-wait-seconds", type=float, default=0.0,
         help="re-read the model config file this often (0: read once)")
    flag("file-system-poll-wait-seconds", type=float, default=1.0,
         help="how often base paths are polled for new versions")
    flag("enable-batching", action="store_true", help="batch concurrent requests")
    flag("batching-parameters-file", help="text-proto BatchingParameters (implies batching)")
    flag("max-request-bytes", type=int, default=64 * 2**20,
         help="larger request bodies get HTTP 413")
    flag("rest-api-num-threads", type=int, default=max(4, os.cpu_count() or 1),
         help="threads running requests")
    flag("rest-api-timeout-in-ms", type=int, default=30000, help="per-request deadline")
    return parser


async def serve(manager: ModelManager, options: ServerOptions,
                ready: Callable[[str], None] | None = None) -> None:
    """Loads the models, then serves until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, manager.poll)  # initial load, before accepting requests
    app = ServingApp(manager, options)
    runner = web.AppRunner(app.application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    (ready or (lambda text: print(text, flush=True)))(
        f"Exporting HTTP/REST API at {url} (models: {', '.join(sorted(manager.models))})")
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m serving.server`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    batching = None
    if args.enable_batching or args.batching_parameters_file:
        batching = (read_batching_parameters_file(args.batching_parameters_file)
                    if args.batching_parameters_file else BatchingOptions())
    options = ServerOptions(
        host=args.host, port=args.port, max_request_bytes=args.max_request_bytes,
        num_threads=args.rest_api_num_threads, timeout_seconds=args.rest_api_timeout_in_ms / 1e3,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        batching=batching)
    asyncio.run(serve(ModelManager(model_configs_from_args(args)), options))


if __name__ == "__main__":
    main()
