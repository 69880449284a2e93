"""Prior streams: the embedded server follows each traffic stream's class mix (an extension of
TF Serving's predict API; off unless --enable_prior_streams).

A predict request that names a stream, with the HTTP header `Lade-Prior-Stream: <name>` (REST) or
the gRPC metadata key `lade-prior-stream`, may omit `target_prior`: the server runs the signature
(with a uniform prior), then, under the stream's lock, chooses the prior for the request from the
stream's tracker and the request's own images (`serving.tracked_prior.track_batch`), updates the
tracker with the request's `posteriors`, and answers with the outputs re-expressed for that prior
(`serving.tracked_prior.reprior`). The model runs outside the lock, so requests of one stream run
concurrently, and their updates apply one at a time in the order they take the lock: none is lost,
and each request is answered with the prior of every update before it. Requests without the
header are TF Serving's, unchanged. Which streams exist, their limits and their files:
`serving.prior_stream_registry`.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Callable

import numpy as np

from serving.errors import ServingError, invalid_argument, snippet
from serving.prior_stream_registry import (
    PriorStreamOptions,
    StreamRegistry,
    check_stream_name,
    timestamp,
)
from serving.tracked_prior import (
    CLASS_INFO_SIGNATURE,
    PRIOR_INPUT,
    TRACKED_OUTPUTS,
    TrackerConstants,
    reprior,
    track_batch,
)

if TYPE_CHECKING:
    from serving.inference import InferenceCore
    from serving.servable import LoadedVersion, Signature

#: The request header naming a stream (REST); gRPC metadata keys are lower case.
STREAM_HEADER = "Lade-Prior-Stream"
STREAM_METADATA_KEY = STREAM_HEADER.lower()
#: Answered with every streamed request: the stream's updates for this version, this one included.
UPDATES_HEADER = "Lade-Prior-Stream-Updates"
UPDATES_METADATA_KEY = UPDATES_HEADER.lower()


def server_chosen(name: str) -> str:
    """Why a request naming stream `name` must not send a target prior."""
    return (
        f"the server chooses it for a request naming a prior stream ({STREAM_HEADER}: "
        f"{name}); send the stream or the prior, not both"
    )


def server_inputs(name: str) -> dict[str, str]:
    """The inputs the server supplies for a request naming stream `name`, with why."""
    return {PRIOR_INPUT: server_chosen(name)}


class PriorStreams:
    """The request path of prior streams, over the server's `StreamRegistry`.

    Args:
        options: the --prior_stream_* settings.
    """

    def __init__(self, options: PriorStreamOptions):
        self.options = options
        self.registry = StreamRegistry(options)
        self._constants: weakref.WeakKeyDictionary[
            LoadedVersion, TrackerConstants | ServingError
        ] = weakref.WeakKeyDictionary()
        #: Called with the seconds of every update (the Prometheus histogram), if set.
        self.observe_tracking: Callable[[float], None] | None = None

    def check_request(self, loaded: LoadedVersion, signature: Signature, tensors, name: str):
        """INVALID_ARGUMENT / FAILED_PRECONDITION / RESOURCE_EXHAUSTED before the model runs."""
        check_stream_name(name)
        if PRIOR_INPUT in tensors:
            raise invalid_argument(f"input '{PRIOR_INPUT}' must not be sent: {server_chosen(name)}")
        outputs = loaded.signature_def_map.signature_def[signature.name].outputs
        if PRIOR_INPUT not in signature.inputs or not all(o in outputs for o in TRACKED_OUTPUTS):
            raise invalid_argument(
                f"signature '{snippet(signature.name)}' cannot follow a prior stream: it needs a "
                f"'{PRIOR_INPUT}' input and {' and '.join(TRACKED_OUTPUTS)} outputs (the "
                "exported serving_default and predict_encoded have them)"
            )
        self.registry.check(name, loaded.model_name)

    def constants(self, loaded: LoadedVersion) -> TrackerConstants:
        """The version's tracker constants, from its `class_info` signature (run once; blocking).

        Raises:
            ServingError: FAILED_PRECONDITION for a model without them.
        """
        cached = self._constants.get(loaded)
        if cached is None:
            cached = self._constants[loaded] = self._read_constants(loaded)
        if isinstance(cached, ServingError):
            raise cached
        return cached

    def cached_constants(self, loaded: LoadedVersion) -> TrackerConstants | None:
        """The constants if already read (no blocking call), else None."""
        cached = self._constants.get(loaded)
        return cached if isinstance(cached, TrackerConstants) else None

    @staticmethod
    def _read_constants(loaded: LoadedVersion) -> TrackerConstants | ServingError:
        what = f"model '{loaded.model_name}' version {loaded.version} cannot follow a prior stream"
        info = loaded.signatures.get(CLASS_INFO_SIGNATURE)
        widths = {
            s.inputs[PRIOR_INPUT].shape[-1]
            for s in loaded.signatures.values()
            if PRIOR_INPUT in s.inputs and s.inputs[PRIOR_INPUT].shape
        }
        if info is None or len(widths) != 1 or None in widths:
            return ServingError(
                "FAILED_PRECONDITION",
                f"{what}: it needs a class_info signature and {PRIOR_INPUT} inputs of one known "
                "width (the number of classes)",
            )
        (num_classes,) = widths
        try:
            outputs = info.run({"class_ids": np.arange(num_classes, dtype=np.int64)})
            return TrackerConstants.from_class_info(outputs)
        except (ServingError, ValueError) as error:
            detail = error.message if isinstance(error, ServingError) else str(error)
            return ServingError("FAILED_PRECONDITION", f"{what}: {detail}")

    async def predict(
        self,
        inference: InferenceCore,
        loaded: LoadedVersion,
        signature: Signature,
        tensors: dict[str, np.ndarray],
        name: str,
    ) -> tuple[dict[str, np.ndarray], int]:
        """The outputs for a request of stream `name` and the stream's update count after it.

        Raises:
            ServingError: as `check_request`, `constants`, the signature's own errors.
        """
        self.check_request(loaded, signature, tensors, name)
        constants = self.cached_constants(loaded) or await inference.run(self.constants, loaded)
        rows = next((len(t) for t in tensors.values() if np.ndim(t) > 0), None)
        if rows is None:
            raise invalid_argument("a prior stream request needs inputs with a batch axis")
        sent = np.full(constants.num_classes, 1.0 / constants.num_classes, np.float32)
        feeds = {**tensors, PRIOR_INPUT: np.tile(sent, (rows, 1))}
        return await inference.predict(
            loaded,
            signature,
            feeds,
            lambda outputs: self.track(loaded, name, outputs, sent, constants),
        )

    def track(
        self,
        loaded: LoadedVersion,
        name: str,
        outputs: dict[str, np.ndarray],
        sent: np.ndarray,
        constants: TrackerConstants,
    ) -> tuple[dict[str, np.ndarray], int]:
        """The update of one request (blocking): the prior for it, the tracker updated, the
        outputs re-expressed for that prior, the state saved when saves are immediate."""
        started = time.perf_counter()
        model, version = loaded.model_name, loaded.version
        posteriors = np.asarray(outputs["posteriors"])
        registry = self.registry
        stream = registry.acquire(name, model)
        update = None
        try:
            with stream.lock:
                state = registry.version_state(stream, version, constants)
                try:
                    prior = track_batch(
                        state.tracker, posteriors, constants, self.options.batch_prior
                    )
                except ValueError as error:
                    raise ServingError("INTERNAL", f"prior stream update failed: {error}") from None
                state.updates += 1
                state.images += len(posteriors)
                state.updated = time.time()
                registry.persist(stream)
                update = (model, version, len(posteriors))
                updates = state.updates
        finally:
            registry.release(stream, update)
        result = reprior(outputs, sent, prior)
        if self.observe_tracking is not None:
            self.observe_tracking(time.perf_counter() - started)
        return result, updates

    def state_json(self, loaded: LoadedVersion, name: str) -> dict:
        """GET .../prior_streams/<name>: the stream's state for a version (blocking)."""
        check_stream_name(name)
        stream = self.registry.held(loaded.model_name, name)
        constants = self.constants(loaded)
        with stream.lock:
            if loaded.version not in stream.versions and loaded.version not in stream.saved:
                raise ServingError(
                    "NOT_FOUND",
                    f"prior stream '{name}' has no state for model '{loaded.model_name}' "
                    f"version {loaded.version} (it has for versions "
                    f"{sorted([*stream.versions, *stream.saved])})",
                )
            state = self.registry.version_state(stream, loaded.version, constants)
            return {
                "model_spec": {"name": loaded.model_name, "version": str(loaded.version)},
                "stream": name,
                **self.registry.settings,
                "updates": state.updates,
                "images": state.images,
                "last_update": timestamp(state.updated),
                "unsaved_updates": stream.unsaved,
                "class_names": list(constants.class_names),
                "prior": state.tracker.prior.tolist(),
                "state": state.tracker.state(),
            }
