"""TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus, HandleReloadConfigRequest), over the same `ServerCore` (event loop, models,
inference path) as the REST API.

A Predict call whose metadata names a prior stream (`lade-prior-stream`, this server's extension,
see `serving.prior_streams`) may omit target_prior; its answer carries the stream's update count
in the trailing metadata `lade-prior-stream-updates`.

Tensors are read with `tf.make_ndarray` and written with `tf.make_tensor_proto`; responses use
the typed value fields (float_val, int64_val, ...) unless --enable_serialization_as_tensor_content
asks for tensor_content, as in TF Serving. Errors are gRPC statuses with TF Serving's codes and
messages (an unknown signature is FAILED_PRECONDITION over gRPC, INVALID_ARGUMENT over REST, as
there).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import ServingError, grpc_status_code, invalid_argument
from serving.model_manager import parse_model_config
from serving.monitoring import Metrics, RequestRecord, log_access
from serving.prior_streams import STREAM_METADATA_KEY, UPDATES_METADATA_KEY
from serving.server_core import ServerCore
from serving.signature_inputs import DEFAULT_SIGNATURE

log = logging.getLogger("serving")

_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
_MODEL_SERVICE = "tensorflow.serving.ModelService"
# dtype -> the TensorProto field TF Serving's AsProtoField fills.
_VALUE_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "float16": "half_val",
}


def to_ndarray(name: str, proto) -> np.ndarray:
    """A request TensorProto as a NumPy array (`tf.make_ndarray`), or INVALID_ARGUMENT."""
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as error:
        raise invalid_argument(f"input '{name}' is not a valid TensorProto: {error}") from None


def to_tensor_proto(array: np.ndarray, as_tensor_content: bool = False):
    """A response tensor as a TensorProto (`tf.make_tensor_proto`), in typed value fields
    unless `as_tensor_content`."""
    import tensorflow as tf

    array = np.asarray(array)
    proto = tf.make_tensor_proto(array)
    field = _VALUE_FIELDS.get(array.dtype.name)
    if not as_tensor_content and field is not None and proto.tensor_content:
        values = array.view(np.uint16) if array.dtype == np.float16 else array
        getattr(proto, field).extend(values.ravel().tolist())
        proto.ClearField("tensor_content")
    return proto


def _model_spec(request) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a request's ModelSpec, or INVALID_ARGUMENT "Missing ModelSpec"."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


class _Rpc:
    """Shared by the servicers: the per-call record, metrics, access log and error statuses."""

    def __init__(self, metrics: Metrics | None):
        self.metrics = metrics

    async def call(
        self,
        service: str,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[RequestRecord], Awaitable],
    ):
        record = RequestRecord(
            "GRPC", method, _peer_host(context.peer()), f"POST /{service}/{method} HTTP/2.0"
        )
        try:
            response = await body(record)
            record.response_bytes = response.ByteSize()
            return response
        except ServingError as error:
            failure = _recorded(record, error)
        except asyncio.CancelledError:
            # The client cancelled the call or went away: counted as that, not as a failure.
            _recorded(record, ServingError("CANCELLED", "the client cancelled the call"))
            raise
        except Exception as error:  # noqa: BLE001 - still a gRPC status, like TF Serving
            log.exception("gRPC %s failed", method)
            internal = ServingError("INTERNAL", f"{type(error).__name__}: {error}")
            failure = _recorded(record, internal)
        finally:
            if self.metrics is not None:
                self.metrics.observe(record)
            log_access(record)
        await context.abort(grpc_status_code(failure.code), failure.message)


def _stream_metadata(context: grpc.aio.ServicerContext) -> str | None:
    """The prior stream a call's metadata names (lade-prior-stream), or None; one at most."""
    values = [v for k, v in (context.invocation_metadata() or ()) if k == STREAM_METADATA_KEY]
    if len(values) > 1:
        raise invalid_argument(f"{STREAM_METADATA_KEY}: one metadata entry expected")
    if not values:
        return None
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _peer_host(peer: str) -> str:
    """The client address of a gRPC peer string ("ipv4:127.0.0.1:5000" -> "127.0.0.1")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or "-"
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or "-"
    return "-"


def _recorded(record: RequestRecord, error: ServingError) -> ServingError:
    record.status, record.http_status = error.code, error.http_status
    return error


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over the shared ServerCore."""

    def __init__(self, core: ServerCore):
        self.core = core
        self.rpc = _Rpc(core.metrics)
        self.as_tensor_content = core.options.serialize_as_tensor_content

    async def Predict(self, request, context):  # noqa: N802 - the gRPC method name
        """Runs the signature the request's ModelSpec names on its input TensorProtos."""

        return await self.rpc.call(
            _PREDICTION_SERVICE,
            "Predict",
            context,
            lambda record: self._predict(request, record, context),
        )

    async def _predict(self, request, record: RequestRecord, context):
        stream = _stream_metadata(context)
        if stream is not None:
            self.core.require_prior_streams()
        name, version, label = _model_spec(request)
        record.model = name
        loaded = self.core.manager.resolve(name, version, label)
        record.version = loaded.version
        inference = self.core.inference
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        record.signature = signature_name
        if signature_name not in loaded.signatures:
            raise ServingError(
                "FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.'
            )
        signature = loaded.signatures[signature_name]
        outputs_wanted = self._output_filter(request, loaded, signature_name)
        tensors = await inference.run(
            lambda: {key: to_ndarray(key, value) for key, value in request.inputs.items()}
        )
        outputs, updates = await self.core.predict(loaded, signature, tensors, stream)
        if updates is not None:
            context.set_trailing_metadata(((UPDATES_METADATA_KEY, str(updates)),))

        def respond():
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature_name
            for alias in outputs_wanted or sorted(outputs):
                response.outputs[alias].CopyFrom(
                    to_tensor_proto(outputs[alias], self.as_tensor_content)
                )
            return response

        return await inference.run(respond)

    @staticmethod
    def _output_filter(request, loaded, signature_name: str) -> list[str]:
        """The requested output aliases, checked as TF Serving's PreProcessPrediction does."""
        known = loaded.signature_def_map.signature_def[signature_name].outputs
        seen: list[str] = []
        for alias in request.output_filter:
            if alias not in known:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(known))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.append(alias)
        return seen

    async def GetModelMetadata(self, request, context):  # noqa: N802 - the gRPC method name
        """The signature_def metadata of a model version (TF Serving's only metadata field)."""

        async def body(record: RequestRecord):
            name, version, label = _model_spec(request)
            record.model = name
            if not request.metadata_field:
                raise invalid_argument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid_argument(f"Metadata field {field} is not supported")
            response = self.core.manager.metadata_proto(name, version, label)
            record.version = response.model_spec.version.value
            return response

        return await self.rpc.call(_PREDICTION_SERVICE, "GetModelMetadata", context, body)

    async def Classify(self, request, context):  # noqa: N802 - the gRPC method name
        """Not supported: every signature exported here is a predict signature."""
        await self._unimplemented("Classify", "classify", context)

    async def Regress(self, request, context):  # noqa: N802 - the gRPC method name
        """Not supported: every signature exported here is a predict signature."""
        await self._unimplemented("Regress", "regress", context)

    async def MultiInference(self, request, context):  # noqa: N802 - the gRPC method name
        """Not supported (it combines Classify and Regress)."""
        await self._unimplemented("MultiInference", "multi-inference", context)

    async def _unimplemented(self, method: str, what: str, context) -> None:
        async def body(record: RequestRecord):
            raise ServingError(
                "UNIMPLEMENTED",
                f"{what} over tf.Example inputs is not supported by this server; use Predict",
            )

        await self.rpc.call(_PREDICTION_SERVICE, method, context, body)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: model status and config reloads, over the ServerCore."""

    def __init__(self, core: ServerCore):
        self.core = core
        self.rpc = _Rpc(core.metrics)

    async def GetModelStatus(self, request, context):  # noqa: N802 - the gRPC method name
        """The state of every version of a model, or of one version (a label lists all)."""

        async def body(record: RequestRecord):
            name, version, label = _model_spec(request)
            record.model, record.version = name, version
            return self.core.manager.status_proto(name, version, label)

        return await self.rpc.call(_MODEL_SERVICE, "GetModelStatus", context, body)

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802 - gRPC name
        """Serves the models of the request's ModelServerConfig from now on."""

        async def body(record: RequestRecord):
            try:
                configs = parse_model_config(text_format.MessageToString(request.config))
            except ValueError as error:
                raise invalid_argument(str(error)) from None
            await self.core.reload(configs)
            return model_management_pb2.ReloadConfigResponse()

        return await self.rpc.call(_MODEL_SERVICE, "HandleReloadConfigRequest", context, body)


def build_grpc_server(core: ServerCore) -> grpc.aio.Server:
    """A grpc.aio server with both services over `core`, configured by its options (call on the
    serving event loop; add ports, then start it)."""
    options = [
        ("grpc.so_reuseport", 0),  # a port already in use is an error, not shared
        ("grpc.max_receive_message_length", core.options.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        *core.options.grpc_channel_arguments,
    ]
    server = grpc.aio.server(options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    return server
