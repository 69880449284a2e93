"""gRPC client of a served model: TF Serving's PredictionService and ModelService stubs.

`GrpcServingClient("127.0.0.1:8500", "lade")` has the methods of
`serving.rest_client.ServingClient` (status and metadata as the JSON the REST API returns,
predictions as NumPy arrays), sending the same requests as TensorProtos; it works against
`serving.server` and against real TF Serving. A `prior_stream` is named in the call metadata
(`lade-prior-stream`); reading or resetting a stream's state is REST only.
"""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

from serving.errors import HTTP_STATUS
from serving.prior_streams import STREAM_METADATA_KEY, UPDATES_METADATA_KEY
from serving.rest_client import ServingClient, ServingRequestError, as_prediction_arrays


class GrpcServingClient(ServingClient):
    """The same client over TF Serving's gRPC API (tensorflow_serving.apis stubs).

    Args:
        target: "host:port" of the gRPC server, e.g. "127.0.0.1:8500".
        model_name, version, label, timeout, prior_stream: as for ServingClient.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:8500",
        model_name: str = "lade",
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 30.0,
        prior_stream: str | None = None,
    ):
        super().__init__(
            "grpc://" + target,
            model_name,
            version=version,
            label=label,
            timeout=timeout,
            prior_stream=prior_stream,
        )
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.version = version
        self.label = label
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1)]
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._dtypes: dict[str, dict[str, Any]] = {}

    def _spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label is not None:
            spec.version_label = self.label
        if signature_name:
            spec.signature_name = signature_name

    def _rpc(self, method, request, prior_stream: str | None = None):
        import grpc

        try:
            if not prior_stream:
                return method(request, timeout=self.timeout)
            metadata = ((STREAM_METADATA_KEY, prior_stream),)
            response, call = method.with_call(request, timeout=self.timeout, metadata=metadata)
            for key, value in call.trailing_metadata() or ():
                if key == UPDATES_METADATA_KEY:
                    self.prior_stream_updates = int(value)
            return response
        except grpc.RpcError as error:
            code = error.code().name
            raise ServingRequestError(
                HTTP_STATUS.get(code, 500), f"{code}: {error.details()}"
            ) from None

    def status(self) -> dict:
        """GetModelStatus, as the JSON the REST API returns."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._rpc(self._models.GetModelStatus, request)
        return json_format.MessageToDict(
            response, including_default_value_fields=True, preserving_proto_field_name=True
        )

    def metadata(self) -> dict:
        """GetModelMetadata (signature_def), as the JSON the REST API returns."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._rpc(self._predictions.GetModelMetadata, request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        options = {"including_default_value_fields": True, "preserving_proto_field_name": True}
        self._dtypes = {
            name: {key: info.dtype for key, info in signature.inputs.items()}
            for name, signature in signature_defs.signature_def.items()
        }
        return {
            "model_spec": json_format.MessageToDict(response.model_spec, **options),
            "metadata": {"signature_def": json_format.MessageToDict(signature_defs, **options)},
        }

    def predict(
        self,
        inputs: dict | Any,
        *,
        signature_name: str | None = None,
        row_format: bool = False,
        prior_stream: str | None = None,
    ) -> Any:
        """Predict over gRPC (naming `prior_stream` if given); returns the outputs as NumPy
        arrays (strings decoded as text).

        `inputs` maps input names to arrays or nested lists ({"b64": ...} leaves are bytes).
        """
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        if row_format:
            raise ValueError("row format is a REST notion; gRPC requests are columnar tensors")
        name = signature_name or "serving_default"
        if name not in self._dtypes:
            self.metadata()
        if name not in self._dtypes:
            raise ValueError(f"signature {name!r} not served; served: {sorted(self._dtypes)}")
        if not isinstance(inputs, dict):
            (only,) = self._dtypes[name]
            inputs = {only: inputs}
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for key, value in inputs.items():
            dtype = tf.dtypes.as_dtype(self._dtypes[name].get(key, tf.float32.as_datatype_enum))
            request.inputs[key].CopyFrom(tf.make_tensor_proto(_tensor_value(value, dtype), dtype))
        response = self._rpc(self._predictions.Predict, request, prior_stream)
        outputs = {}
        for key, proto in response.outputs.items():
            array = tf.make_ndarray(proto)
            if array.dtype == object:
                array = np.vectorize(
                    lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                    otypes=[object],
                )(array)
            outputs[key] = array
        return outputs

    def predict_images(
        self, images: np.ndarray, target_prior: Sequence[float] | None = None
    ) -> dict:
        """As ServingClient.predict_images, sending the arrays as tensors."""
        images = np.asarray(images, dtype=np.float32)
        inputs = {"images": images}
        if target_prior is not None or not self.prior_stream:
            inputs.update(self._prior_inputs(target_prior, len(images)))
            inputs["target_prior"] = np.asarray(inputs["target_prior"], dtype=np.float32)
        outputs = self.predict(inputs, prior_stream=self._streamed(target_prior))
        return as_prediction_arrays(outputs)

    def prior_stream_state(self, stream: str | None = None) -> dict:
        """REST only: use a ServingClient on the server's REST port."""
        raise ValueError("a prior stream's state is read over REST: use ServingClient")

    def reset_prior_stream(self, stream: str | None = None) -> dict:
        """REST only: use a ServingClient on the server's REST port."""
        raise ValueError("a prior stream is reset over REST: use ServingClient")


def _tensor_value(value: Any, dtype) -> Any:
    """A request value as make_tensor_proto takes it ({"b64": ...} leaves -> bytes)."""
    if dtype.name != "string":
        return np.asarray(value, dtype=dtype.as_numpy_dtype)

    def leaf(item):
        if isinstance(item, dict) and "b64" in item:
            return base64.b64decode(item["b64"])
        if isinstance(item, str):
            return item.encode("utf-8")
        if isinstance(item, list):
            return [leaf(part) for part in item]
        return item

    return leaf(value)
