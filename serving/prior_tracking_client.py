"""A client that predicts with a prior that follows its traffic, through any TF Serving.

The tracker lives here, not in the server, so this works against real TF Serving (stateless:
every request carries its prior) and behind any number of replicas. Per batch, one standard
Predict request:

1. send the tracked prior A (from the batches before) as `target_prior`;
2. read the batch's calibrated source `posteriors` from the answer;
3. choose the batch's prior B: by default `prior_for_batch` (MAP-EM on the batch's own images
   centred on A, the measured better rule), else A itself; re-express the answer for B by the
   additive rule (`serving.tracked_prior.reprior`), so no second request is needed;
4. update the tracker with the posteriors.

The tracker's constants come from the model's `class_info` signature, read once. Its state is
plain JSON (`state()`, `save`, `load`), so a job can stop and continue the stream later.

    from serving.prior_tracking_client import PriorTrackingClient
    from serving.rest_client import ServingClient

    tracking = PriorTrackingClient(ServingClient("http://127.0.0.1:8501", "lade"))
    outputs = tracking.predict_images(batch)  # probabilities, logits, class_ids, target_prior
    tracking.save("stream.json")              # PriorTrackingClient.load(client, "stream.json")
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from serving.rest_client import ServingClient
from serving.tracked_prior import (
    DEFAULT_TRACKER,
    TrackerConstants,
    make_tracker,
    reprior,
    restored_tracker,
    sent_prior,
    track_batch,
)

STATE_FORMAT = "lade_serving.prior_tracking_client/1"


class PriorTrackingClient:
    """Predictions under a tracked prior, through a REST or gRPC client of one model.

    Args:
        client: a `serving.rest_client.ServingClient` or `serving.grpc_client.GrpcServingClient`.
        tracker: the tracker kind (`serving.tracked_prior.TRACKER_KINDS`; default forgetting,
            the measured best with the batch prior).
        tracker_options: its constructor options (default: the library's), e.g.
            {"half_life": 100}.
        batch_prior: predict each batch with MAP-EM on its own images centred on the tracked
            prior (default True), or with the tracked prior alone.
    """

    def __init__(
        self,
        client: ServingClient,
        tracker: str = DEFAULT_TRACKER,
        *,
        tracker_options: Mapping[str, Any] | None = None,
        batch_prior: bool = True,
    ):
        self.client = client
        self.kind = tracker
        self.options = dict(tracker_options or {})
        self.batch_prior = bool(batch_prior)
        self.updates = 0
        self.images = 0
        self._constants: TrackerConstants | None = None
        self._tracker = None

    @property
    def constants(self) -> TrackerConstants:
        """The model's tracker constants (one `class_info` request, the first time)."""
        if self._constants is None:
            try:
                self._constants = TrackerConstants.from_class_info(self.client.class_info())
            except ValueError as error:
                raise ValueError(f"model {self.client.model_name!r}: {error}") from None
        return self._constants

    @property
    def tracker(self):
        """The tracker (`lade_tf.prior_tracking`), made on first use."""
        if self._tracker is None:
            self._tracker = make_tracker(self.kind, self.constants, self.options)
        return self._tracker

    @property
    def prior(self) -> np.ndarray:
        """The tracked prior [C] the next batch is sent with (p_s before any batch)."""
        return self.tracker.prior

    def predict_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions for raw-pixel images [B, H, W, C] (one request), the tracker updated.

        Returns:
            probabilities [B, C], logits [B, C], class_ids [B], posteriors [B, C] (the served
            outputs, re-expressed for the batch's prior), and target_prior [C], that prior.
        """
        sent = sent_prior(self.prior, self.batch_prior)
        return self._tracked(self.client.predict_images(images, sent), sent)

    def predict_encoded(self, encoded_images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """As `predict_images`, for PNG/JPEG/GIF/BMP bytes (the `predict_encoded` signature)."""
        sent = sent_prior(self.prior, self.batch_prior)
        return self._tracked(self.client.predict_encoded(encoded_images, sent), sent)

    def _tracked(self, outputs: dict[str, np.ndarray], sent: np.ndarray) -> dict[str, np.ndarray]:
        if "posteriors" not in outputs:
            raise ValueError(
                f"model {self.client.model_name!r} returns no posteriors: export it with a "
                "lade_tf.export that does"
            )
        posteriors = outputs["posteriors"]
        prior = track_batch(self.tracker, posteriors, self.constants, self.batch_prior)
        result = reprior(outputs, sent, prior) if self.batch_prior else dict(outputs)
        result["target_prior"] = prior if self.batch_prior else _normalised(sent)
        self.updates += 1
        self.images += len(posteriors)
        return result

    def state(self) -> dict[str, Any]:
        """JSON-safe state: the settings, the counts and the tracker's `state()`."""
        return {
            "format": STATE_FORMAT,
            "model_name": self.client.model_name,
            "tracker": self.kind,
            "options": self.options,
            "batch_prior": self.batch_prior,
            "updates": self.updates,
            "images": self.images,
            "state": self.tracker.state(),
        }

    @classmethod
    def from_state(cls, client: ServingClient, state: Mapping[str, Any]) -> PriorTrackingClient:
        """The client a `state()` document describes, continuing its stream against `client`.

        Raises:
            ValueError: not such a document, or a state for another model's classes.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a prior tracking client state (expected {STATE_FORMAT!r})")
        tracking = cls(
            client,
            state["tracker"],
            tracker_options=state["options"],
            batch_prior=state["batch_prior"],
        )
        try:
            tracking._tracker = restored_tracker(
                state["state"], state["tracker"], tracking.constants
            )
        except ValueError as error:
            raise ValueError(f"tracker state for model {client.model_name!r}: {error}") from None
        tracking.updates, tracking.images = int(state["updates"]), int(state["images"])
        return tracking

    def save(self, path: str | os.PathLike) -> None:
        """Writes `state()` to a JSON file atomically (temporary file, then rename)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(prefix=".prior-state.", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.state(), stream)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    @classmethod
    def load(
        cls, client: ServingClient, path: str | os.PathLike, **settings: Any
    ) -> PriorTrackingClient:
        """The client saved in `path`, or a new one with `settings` when the file does not
        exist yet.

        Raises:
            ValueError: the file is not a state document, or is for another model's classes.
        """
        if not os.path.exists(path):
            return cls(client, **settings)
        with open(path, encoding="utf-8") as stream:
            try:
                document = json.load(stream)
            except ValueError as error:
                raise ValueError(f"{os.fspath(path)}: not JSON ({error})") from None
        return cls.from_state(client, document)


def _normalised(values: np.ndarray) -> np.ndarray:
    prior = np.asarray(values, dtype=np.float64)
    return prior / prior.sum()
