"""REST client of a served model: TF Serving's standard REST API only.

Works against `serving.server` and against real TF Serving:

    client = ServingClient("http://127.0.0.1:8501", "lade")
    outputs = client.predict_images(images, prior)  # images float [B, H, W, C] 0..255
    estimated = client.estimate_prior(images)       # p_t unknown: estimated from the batch

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
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8501",
        model_name: str = "lade",
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float = 30.0,
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

    def _call(self, path: str, payload: dict | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
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
        self, inputs: dict | Any, *, signature_name: str | None = None, row_format: bool = False
    ) -> Any:
        """POST a predict request; returns `outputs` (columnar) or `predictions` (row format)."""
        payload: dict[str, Any] = {"instances" if row_format else "inputs": inputs}
        if signature_name:
            payload["signature_name"] = signature_name
        reply = self._call(self.model_path + ":predict", payload)
        return reply["predictions" if row_format else "outputs"]

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
        """class_names, source_prior and class_counts of every class (`class_info` signature)."""
        outputs = self.predict(
            {"class_ids": list(range(self.num_classes()))}, signature_name="class_info"
        )
        return {
            "class_names": np.array(outputs["class_names"], dtype=object),
            "source_prior": np.array(outputs["source_prior"], dtype=np.float64),
            "class_counts": np.array(outputs["class_counts"], dtype=np.int64),
        }

    def predict_images(self, images: np.ndarray, target_prior: Sequence[float]) -> dict:
        """Predictions for raw-pixel images [B, H, W, C] under one prior (tiled over the batch).

        Returns:
            probabilities float32 [B, C], logits (adjusted) float32 [B, C], class_ids int64 [B].
        """
        images = np.asarray(images, dtype=np.float32)
        prior = np.asarray(target_prior, dtype=np.float64).tolist()
        outputs = self.predict({"images": images.tolist(), "target_prior": [prior] * len(images)})
        return as_prediction_arrays(outputs)

    def predict_encoded(
        self, encoded_images: Sequence[bytes], target_prior: Sequence[float]
    ) -> dict:
        """Predictions for PNG/JPEG/GIF/BMP bytes (sent as {"b64": ...}) under one prior."""
        prior = np.asarray(target_prior, dtype=np.float64).tolist()
        outputs = self.predict(
            {
                "image_bytes": [
                    {"b64": base64.b64encode(data).decode("ascii")} for data in encoded_images
                ],
                "target_prior": [prior] * len(encoded_images),
            },
            signature_name="predict_encoded",
        )
        return as_prediction_arrays(outputs)

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
    predict answer."""
    return {
        "probabilities": np.array(outputs["probabilities"], dtype=np.float32),
        "logits": np.array(outputs["logits"], dtype=np.float32),
        "class_ids": np.array(outputs["class_ids"], dtype=np.int64),
    }
