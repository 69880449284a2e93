"""REST client of a served model: TF Serving's standard REST API only.

Works against `serving.server` and against real TF Serving:

    client = ServingClient("http://127.0.0.1:8501", "lade")
    outputs = client.predict_images(images, prior)  # images float [B, H, W, C] 0..255
    estimated = client.estimate_prior(images)       # p_t unknown: estimated from the batch

With `prior_stream="name"` (the embedded server's prior streams, `serving.prior_streams`), the
prediction calls name that stream and may leave the prior out: the server tracks it.
`serving.prior_tracking_client.PriorTrackingClient` keeps the tracker on the client instead, for
any TF Serving.

`serving.grpc_client.GrpcServingClient` has the same methods over gRPC; `python -m
serving.client` is the command line over either.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from serving.prior_streams import STREAM_HEADER, UPDATES_HEADER


class ServingRequestError(RuntimeError):
    """A REST call answered with an error: HTTP status and the server's `error` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ServingClient:
    """Thin client of one model's REST endpoints (`/v1/models/<name>[/versions/<v>|/labels/<l>]`).

    Args:
        url: server root, e.g. "http://127.0.0.1:8501".
        model_name: the served model's name.
        version: a specific version (default: the latest the server serves).
        label: a version label (exclusive with `version`).
        timeout: seconds per HTTP call.
        prior_stream: the prior stream the prediction calls name (embedded server only).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8501",
        model_name: str = "lade",
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 30.0,
        prior_stream: str | None = None,
    ):
        if version is not None and label is not None:
            raise ValueError(f"give version ({version}) or label ({label!r}), not both")
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.timeout = timeout
        self.model_path = f"/v1/models/{model_name}" + (
            f"/versions/{int(version)}"
            if version is not None
            else f"/labels/{label}"
            if label is not None
            else ""
        )
        self._specs: dict[str, dict] = {}
        self.prior_stream = prior_stream
        #: The stream's update count the last streamed prediction was answered with.
        self.prior_stream_updates: int | None = None

    def _call(
        self,
        path: str,
        payload: dict | None = None,
        *,
        method: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                updates = response.headers.get(UPDATES_HEADER)
                if updates is not None:
                    self.prior_stream_updates = int(updates)
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = body.decode("utf-8", errors="replace")
            raise ServingRequestError(error.code, message) from None

    def status(self) -> dict:
        """GET the model status (`model_version_status`)."""
        return self._call(self.model_path)

    def metadata(self) -> dict:
        """GET the model metadata (signature defs)."""
        return self._call(self.model_path + "/metadata")

    def predict(
        self,
        inputs: dict | Any,
        *,
        signature_name: str | None = None,
        row_format: bool = False,
        prior_stream: str | None = None,
    ) -> Any:
        """POST a predict request (naming `prior_stream` if given); returns `outputs`
        (columnar) or `predictions` (row format)."""
        payload: dict[str, Any] = {"instances" if row_format else "inputs": inputs}
        if signature_name:
            payload["signature_name"] = signature_name
        headers = {STREAM_HEADER: prior_stream} if prior_stream else None
        reply = self._call(self.model_path + ":predict", payload, headers=headers)
        return reply["predictions" if row_format else "outputs"]

    def _prior_inputs(self, target_prior: Sequence[float] | None, rows: int) -> dict:
        """{"target_prior": rows x prior}, or {} when the prior stream chooses it."""
        if target_prior is None:
            if not self.prior_stream:
                raise ValueError("give a target prior, or a prior_stream for the server to track")
            return {}
        prior = np.asarray(target_prior, dtype=np.float64).tolist()
        return {"target_prior": [prior] * rows}

    def prior_stream_state(self, stream: str | None = None) -> dict:
        """GET the state of a prior stream (default this client's) for the model version."""
        return self._call(f"{self.model_path}/prior_streams/{self._stream_name(stream)}")

    def reset_prior_stream(self, stream: str | None = None) -> dict:
        """DELETE a prior stream (default this client's): the whole stream, or only the
        version this client names."""
        path = f"{self.model_path}/prior_streams/{self._stream_name(stream)}"
        return self._call(path, method="DELETE")

    def _stream_name(self, stream: str | None) -> str:
        name = stream or self.prior_stream
        if not name:
            raise ValueError("name a prior stream")
        return name

    def input_shapes(self, signature_name: str = "serving_default") -> dict[str, list[int]]:
        """Input name -> shape (-1 for any size) of a signature, from the metadata endpoint."""
        if signature_name not in self._specs:
            signatures = self.metadata()["metadata"]["signature_def"]["signature_def"]
            if signature_name not in signatures:
                raise ValueError(
                    f"signature {signature_name!r} not served; served: {sorted(signatures)}"
                )
            self._specs[signature_name] = {
                name: [int(dim["size"]) for dim in info["tensor_shape"].get("dim", [])]
                for name, info in signatures[signature_name]["inputs"].items()
            }
        return self._specs[signature_name]

    def num_classes(self) -> int:
        """C, read from the shape of serving_default's `target_prior` input."""
        return self.input_shapes()["target_prior"][-1]

    def class_info(self) -> dict[str, np.ndarray]:
        """class_names, source_prior and class_counts of every class (`class_info` signature),
        and, from a model that returns them, the tracker constants reference_prior,
        reference_confusion [C, C] and prior_strength (`serving.tracked_prior`)."""
        outputs = self.predict(
            {"class_ids": list(range(self.num_classes()))}, signature_name="class_info"
        )
        info = {
            "class_names": np.array(outputs["class_names"], dtype=object),
            "source_prior": np.array(outputs["source_prior"], dtype=np.float64),
            "class_counts": np.array(outputs["class_counts"], dtype=np.int64),
        }
        for name in ("reference_prior", "reference_confusion", "prior_strength"):
            if name in outputs:
                info[name] = np.array(outputs[name], dtype=np.float64)
        return info

    def predict_images(
        self, images: np.ndarray, target_prior: Sequence[float] | None = None
    ) -> dict:
        """Predictions for raw-pixel images [B, H, W, C] under one prior (tiled over the
        batch), or the prior the server tracks for this client's `prior_stream` (None).

        Returns:
            probabilities float32 [B, C], logits (adjusted) float32 [B, C], class_ids int64 [B],
            and posteriors float32 [B, C] from a model that returns them.
        """
        images = np.asarray(images, dtype=np.float32)
        inputs = {"images": images.tolist(), **self._prior_inputs(target_prior, len(images))}
        outputs = self.predict(inputs, prior_stream=self._streamed(target_prior))
        return as_prediction_arrays(outputs)

    def predict_encoded(
        self, encoded_images: Sequence[bytes], target_prior: Sequence[float] | None = None
    ) -> dict:
        """Predictions for PNG/JPEG/GIF/BMP bytes (sent as {"b64": ...}) under one prior, or
        the prior the server tracks for this client's `prior_stream` (None)."""
        inputs = {
            "image_bytes": [
                {"b64": base64.b64encode(data).decode("ascii")} for data in encoded_images
            ],
            **self._prior_inputs(target_prior, len(encoded_images)),
        }
        outputs = self.predict(
            inputs, signature_name="predict_encoded", prior_stream=self._streamed(target_prior)
        )
        return as_prediction_arrays(outputs)

    def _streamed(self, target_prior: Sequence[float] | None) -> str | None:
        """The stream a prediction names: this client's, when it sends no prior."""
        return self.prior_stream if target_prior is None else None

    def estimate_prior(self, images: np.ndarray) -> dict:
        """The target prior estimated from a batch of raw-pixel images [B, H, W, C], and the
        predictions under it (`estimate_prior` signature).

        Returns:
            target_prior float64 [C], probabilities float32 [B, C], logits float32 [B, C],
            class_ids int64 [B].

        Raises:
            ValueError: for an empty batch.
            ServingRequestError: if the server rejects the request.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(
                f"images have shape {images.shape}: expected a non-empty batch "
                "[B >= 1, H, W, C] from the target distribution"
            )
        outputs = self.predict({"images": images.tolist()}, signature_name="estimate_prior")
        result = as_prediction_arrays(outputs)
        result["target_prior"] = np.asarray(outputs["target_prior"], np.float64)[0]
        return result


def as_prediction_arrays(outputs: dict) -> dict:
    """probabilities float32 [B, C], logits float32 [B, C] and class_ids int64 [B] of a
    predict answer, and posteriors float32 [B, C] when it has them."""
    arrays = {
        "probabilities": np.array(outputs["probabilities"], dtype=np.float32),
        "logits": np.array(outputs["logits"], dtype=np.float32),
        "class_ids": np.array(outputs["class_ids"], dtype=np.int64),
    }
    if "posteriors" in outputs:
        arrays["posteriors"] = np.array(outputs["posteriors"], dtype=np.float32)
    return arrays
