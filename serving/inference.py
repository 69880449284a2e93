"""Running a signature for a request: the one code path the REST and gRPC front ends share.

A front end resolves the model version (`ModelManager.resolve`) and signature, turns its request
into NumPy tensors (JSON for REST, TensorProtos for gRPC), and awaits `InferenceCore.predict`,
which checks the tensors against the signature (`serving.signature_inputs.check_inputs`: names,
dtypes, shapes, rows, target priors), then runs the signature in the thread pool, through a
batcher when batching is on, under the request deadline.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

from serving.batching import Batcher, BatchingOptions, batchable
from serving.errors import ServingError
from serving.model_manager import ModelManager
from serving.servable import LoadedVersion, Signature
from serving.signature_inputs import check_inputs

_T = TypeVar("_T")


class InferenceCore:
    """Resolves versions and runs signatures for both front ends.

    Args:
        manager: the served models.
        num_threads: threads running signatures (and REST's JSON work).
        timeout_seconds: per-request deadline (DEADLINE_EXCEEDED after it).
        batching: batching options, or None for no batching.
        max_batch_size: the most rows (images) a request may carry.
    """

    def __init__(
        self,
        manager: ModelManager,
        num_threads: int,
        timeout_seconds: float,
        batching: BatchingOptions | None = None,
        max_batch_size: int | None = None,
    ):
        self.manager = manager
        self.timeout_seconds = timeout_seconds
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.executor = ThreadPoolExecutor(num_threads, thread_name_prefix="inference")
        self._batchers: weakref.WeakKeyDictionary[LoadedVersion, dict] = weakref.WeakKeyDictionary()
        self._batch_threads: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Call on the event loop before serving (the batch-thread semaphore belongs to it)."""
        if self.batching is not None and self._batch_threads is None:
            self._batch_threads = asyncio.Semaphore(self.batching.num_batch_threads)

    def shutdown(self) -> None:
        """Stops the batchers and the thread pool (call on the event loop); queued work is
        cancelled."""
        for per_version in list(self._batchers.values()):
            for batcher in per_version.values():
                batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, function: Callable[..., _T], *args) -> _T:
        """`function(*args)` in the thread pool, under the request deadline."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self.executor, function, *args), self.timeout_seconds
            )
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

    async def predict(
        self,
        loaded: LoadedVersion,
        signature: Signature,
        tensors: dict[str, np.ndarray],
        then: Callable[[dict[str, np.ndarray]], _T] | None = None,
    ) -> dict[str, np.ndarray] | _T:
        """The signature's outputs for `tensors`, checked by `check_inputs` first; with
        `then`, `then(outputs)`, run in the thread that ran the signature when it ran alone.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs the signature does not take, the
                signature's own errors with their codes, DEADLINE_EXCEEDED.
        """
        check_inputs(signature.inputs, tensors, self.max_batch_size)
        if self.batching is None or not batchable(signature.name):
            if then is None:
                return await self.run(signature.run, tensors)
            return await self.run(lambda: then(signature.run(tensors)))
        batcher = self._batcher(loaded, signature, tensors)
        try:
            outputs = await asyncio.wait_for(batcher.submit(tensors), self.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        return outputs if then is None else await self.run(then, outputs)

    def _batcher(self, loaded: LoadedVersion, signature: Signature, tensors) -> Batcher:
        shapes = tuple(sorted((name, tensor.shape[1:]) for name, tensor in tensors.items()))
        per_version = self._batchers.setdefault(loaded, {})
        key = (signature.name, shapes)
        if key not in per_version:
            self.start()
            per_version[key] = Batcher(
                signature.run, self.batching, self.executor, self._batch_threads
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
