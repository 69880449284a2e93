"""TF Serving's REST API over a `ServerCore` (tensorflow_serving/g3doc/api_rest.md).

As in TF Serving's http_rest_api_handler.cc, the request path is parsed once, then one small
function per verb answers it: `predict`, `classify_or_regress`, `model_status`, `model_metadata`,
and this server's prior streams (`prior_stream`: GET and DELETE of `.../prior_streams[/<stream>]`; a
predict naming a stream in the `Lade-Prior-Stream` header, see `serving.prior_streams`); the
Prometheus endpoint and CORS preflights are answered before the API paths. Bodies are TF
Serving's JSON (`serving.json_request`, decoded by `serving.request_decoder`;
`serving.json_response`), failures `{"error": ...}` with TF Serving's HTTP codes; every request
is counted and written to the access log. A body must arrive within
--rest-api-body-timeout-seconds (else 408, and the connection is closed); a client that goes away
before its answer is counted as CANCELLED with nginx's 499, as TF Serving maps that code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from serving import json_request
from serving.errors import HTTP_STATUS, ServingError, invalid_argument, snippet
from serving.json_response import error_body, predict_response
from serving.monitoring import RequestRecord, log_access
from serving.prior_streams import STREAM_HEADER, UPDATES_HEADER, server_inputs
from serving.request_decoder import RequestDecoder
from serving.server_core import ServerCore

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
_PRIOR_STREAM_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?/prior_streams(?:/([^/:]+))?",
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
# With prior streams on, a browser may also send the stream header, read the update count and
# reset a stream.
_PRIOR_STREAM_CORS_HEADERS = {
    **_CORS_HEADERS,
    "Access-Control-Allow-Methods": "POST, GET, DELETE",
    "Access-Control-Allow-Headers": f"Content-Type, {STREAM_HEADER}",
    "Access-Control-Expose-Headers": UPDATES_HEADER,
}


@dataclass(frozen=True)
class _ModelPath:
    """What a request path names: a model, and a version or a label (neither: the latest)."""

    name: str
    version: int | None
    label: str | None


def _json_response(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type=_JSON)


def _error_response(error: ServingError) -> web.Response:
    return _json_response(error_body(error.message), error.http_status)


def _json_bytes(document: dict) -> bytes:
    return json.dumps(document, indent=1).encode("utf-8")


def _stream_header(request: web.Request) -> str | None:
    """The prior stream a request names (Lade-Prior-Stream), or None; one header at most."""
    values = request.headers.getall(STREAM_HEADER, [])
    if len(values) > 1:
        raise invalid_argument(f"{STREAM_HEADER}: one header expected, {len(values)} sent")
    return values[0] if values else None


def _parse_version(text: str | None) -> int | None:
    if not text:
        return None
    version = int(text)
    if version > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {snippet(text)} to numeric.")
    return version


def _model_path(name: str, version_text: str | None, label: str | None) -> _ModelPath:
    return _ModelPath(
        unquote(name), _parse_version(version_text), None if label is None else unquote(label)
    )


class RestApiHandler:
    """The REST front end: routes each request like TF Serving's RestApiRequestDispatcher.

    Args:
        core: the models and inference path shared with the gRPC front end.
    """

    def __init__(self, core: ServerCore):
        self.core = core
        self.options = core.options
        self.decoder = RequestDecoder(core.inference, core.options.max_request_batch_size)
        self._cors_headers = (
            _CORS_HEADERS if core.prior_streams is None else _PRIOR_STREAM_CORS_HEADERS
        )

    def application(self) -> web.Application:
        """The aiohttp application (one catch-all route; dispatch follows TF Serving's regexes);
        its start-up starts the request decoder, its clean-up stops it."""
        app = web.Application(client_max_size=self.options.max_request_bytes)
        app.router.add_route("*", "/{path:.*}", self.handle)
        app.on_startup.append(self._start_decoder)
        app.on_cleanup.append(self._stop_decoder)
        return app

    async def _start_decoder(self, app: web.Application) -> None:
        await self.decoder.start()

    async def _stop_decoder(self, app: web.Application) -> None:
        self.decoder.stop()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answers one request; counts it in the metrics and writes its access-log line."""
        version = request.version
        record = RequestRecord(
            "REST",
            "",
            request.remote or "-",
            f"{request.method} {request.rel_url.raw_path_qs} HTTP/{version.major}.{version.minor}",
        )
        response = await self._respond(request, record)
        self._add_cors_headers(response)
        record.http_status = response.status
        body = getattr(response, "body", None)
        record.response_bytes = len(body) if isinstance(body, (bytes, bytearray)) else 0
        gone = request.transport is None or request.transport.is_closing()
        if gone and not response.prepared:
            # The client went away: nobody reads this answer, and the server did not fail.
            record.status, record.http_status = "CANCELLED", HTTP_STATUS["CANCELLED"]
            record.response_bytes = 0
        if record.api and self.core.metrics is not None:
            self.core.metrics.observe(record)
        log_access(record)
        return response

    async def _respond(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        path = request.rel_url.raw_path
        metrics_path = self.options.monitoring.prometheus_path
        if self.core.metrics is not None and path == metrics_path and request.method == "GET":
            return self.metrics()
        if request.method == "OPTIONS":
            return self.cors_preflight(request)
        if not _API_PATH.fullmatch(path):
            return _json_response(error_body(f"Not Found: {snippet(path)}"), 404)
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
    ) -> web.StreamResponse:
        """Parses the path once, then hands the request to the function of its verb."""
        malformed = invalid_argument(f"Malformed request: {request.method} {snippet(path)}")
        stream_path = _PRIOR_STREAM_PATH.fullmatch(path)
        if stream_path is not None and request.method in ("GET", "DELETE"):
            return await self.prior_stream(request.method, stream_path, record)
        if request.method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, method = match.groups()
            method = method.lower()
            record.api, record.model = method, unquote(name)
            model = _model_path(name, version_text, label)
            size = request.content_length
            if size is not None and size > self.options.max_request_bytes:
                record.status = "RESOURCE_EXHAUSTED"
                return self._too_large(size)
            try:
                body = await asyncio.wait_for(
                    request.read(), self.options.rest_api_body_timeout_seconds
                )
            except asyncio.TimeoutError:
                record.status = "DEADLINE_EXCEEDED"
                return await self._body_timeout(request)
            except ConnectionResetError:
                record.status = "CANCELLED"
                return _error_response(
                    ServingError("CANCELLED", "the client closed the connection mid-body")
                )
            if method == "predict":
                return await self.predict(body, model, record, _stream_header(request))
            return await self.classify_or_regress(body, model, method)
        if request.method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version_text, label, metadata = match.groups()
            record.api = "GetModelMetadata" if metadata else "GetModelStatus"
            if not name:
                raise invalid_argument("Missing model name in request.")
            model = _model_path(name, version_text, label)
            record.model, record.version = model.name, model.version
            if metadata:
                return self.model_metadata(model)
            return self.model_status(model)
        raise malformed

    async def predict(
        self, body: bytes, model: _ModelPath, record: RequestRecord, stream: str | None = None
    ) -> web.Response:
        """POST .../models/{name}[...]:predict: row or columnar JSON in, the same format out;
        a request naming a prior `stream` omits target_prior, and its answer says the stream's
        update count in the Lade-Prior-Stream-Updates header."""
        if stream is not None:
            self.core.require_prior_streams()
        try:
            loaded = self.core.manager.resolve(model.name, model.version, model.label)
            signatures = loaded.signature_inputs
        except ServingError as error:  # reported after the body's own errors, as in TF Serving
            loaded, signatures = None, error
        supplied = None if stream is None else server_inputs(stream)
        request = await self.decoder.decode(body, signatures, supplied)
        signature = loaded.signatures[request.signature_name]
        record.version, record.signature = loaded.version, signature.name
        inference = self.core.inference
        outputs, updates = await self.core.predict(loaded, signature, request.tensors, stream)
        payload = await inference.run(predict_response, outputs, request.request_format)
        response = _json_response(payload)
        if updates is not None:
            response.headers[UPDATES_HEADER] = str(updates)
        return response

    async def classify_or_regress(
        self, body: bytes, model: _ModelPath, method: str
    ) -> web.Response:
        """POST ...:classify / ...:regress, validated like TF Serving up to the signature, then
        UNIMPLEMENTED: every signature exported here is a predict signature."""
        return await self.core.inference.run(self._check_classify_or_regress, body, model, method)

    def _check_classify_or_regress(self, body: bytes, model: _ModelPath, method: str):
        document = json_request.parse_json(body)
        signature_name = json_request.signature_name_of(document) or "serving_default"
        json_request.classify_regress_examples(document, method)
        loaded = self.core.manager.resolve(model.name, model.version, model.label)
        method_name = f"tensorflow/serving/{method}"
        signature_def = loaded.signature_def_map.signature_def.get(signature_name)
        if signature_def is None:
            raise invalid_argument(
                f"No signature was found with the name: {snippet(signature_name)}"
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

    async def prior_stream(
        self, method: str, match: re.Match, record: RequestRecord
    ) -> web.Response:
        """GET .../prior_streams (the model's streams), GET .../prior_streams/<stream> (its state
        for the version the path names, default the latest), DELETE .../prior_streams/<stream>
        (reset: the whole stream, or only the version the path names)."""
        name, version_text, label, stream = match.groups()
        model = _model_path(name, version_text, label)
        record.model = model.name
        streams = self.core.require_prior_streams()
        inference = self.core.inference
        if stream is None:
            record.api = "ListPriorStreams"
            if method != "GET" or model.version is not None or model.label is not None:
                raise invalid_argument(
                    f"{method} of a version's prior stream list: expected GET "
                    f"/v1/models/{snippet(model.name)}/prior_streams"
                )
            return _json_response(_json_bytes(streams.registry.list_json(model.name)))
        stream = unquote(stream)
        if method == "DELETE":
            record.api = "ResetPriorStream"
            version = model.version
            if model.label is not None:
                version = self.core.manager.resolve(model.name, None, model.label).version
            record.version = version
            document = await inference.run(streams.registry.reset, model.name, version, stream)
        else:
            record.api = "GetPriorStream"
            loaded = self.core.manager.resolve(model.name, model.version, model.label)
            record.version = loaded.version
            document = await inference.run(streams.state_json, loaded, stream)
        return _json_response(_json_bytes(document))

    def model_status(self, model: _ModelPath) -> web.Response:
        """GET .../models/{name}[/versions/{v}|/labels/{l}]: GetModelStatusResponse as JSON."""
        document = self.core.manager.status_json(model.name, model.version, model.label)
        return _json_response(json.dumps(document, indent=1).encode("utf-8"))

    def model_metadata(self, model: _ModelPath) -> web.Response:
        """GET .../metadata: the signature_def metadata as JSON."""
        document = self.core.manager.metadata_json(model.name, model.version, model.label)
        return _json_response(json.dumps(document, indent=1).encode("utf-8"))

    def metrics(self) -> web.Response:
        """GET of the monitoring config's Prometheus path: the text exposition."""
        payload, content_type = self.core.metrics.exposition()
        response = web.Response(body=payload)
        response.headers["Content-Type"] = content_type
        return response

    def cors_preflight(self, request: web.Request) -> web.Response:
        """OPTIONS: 200 for an http(s) Origin, else FAILED_PRECONDITION as in TF Serving."""
        if re.search(r"https?://", request.headers.get("Origin", "")):
            return web.Response(status=200)
        return _error_response(
            ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
        )

    def _add_cors_headers(self, response: web.StreamResponse) -> None:
        if self.options.enable_cors_support and not response.prepared:
            response.headers.update(self._cors_headers)

    async def _body_timeout(self, request: web.Request) -> web.Response:
        """408, sent, and the connection closed at once: waiting for the rest of a body that is
        not coming would hold the connection open longer still."""
        # TF Serving has no body timeout; 408 is HTTP's answer for a request not sent in time.
        seconds = self.options.rest_api_body_timeout_seconds
        message = (
            f"Request body not received within {seconds:g} s "
            "(--rest-api-body-timeout-seconds); the connection is closed"
        )
        response = _json_response(error_body(message), 408)
        response.force_close()
        self._add_cors_headers(response)
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response

    def _too_large(self, size: int | None) -> web.Response:
        # TF Serving documents no REST body limit; 413 is HTTP's answer for a body over one.
        body = "Request body" if size is None else f"Request body of {size} bytes"
        message = (
            f"{body} exceeds the limit of {self.options.max_request_bytes} bytes "
            "(--max-request-bytes)"
        )
        return _json_response(error_body(message), 413)
