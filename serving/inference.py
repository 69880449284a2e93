"""Running a signature for a request: the one code path the REST and gRPC front ends share.

A front end resolves the model version and signature (`InferenceCore.resolve`), turns its
request into NumPy tensors (JSON for REST, TensorProtos for gRPC), and awaits
`InferenceCore.predict`, which checks the tensors against the signature (names, dtypes, shapes),
then runs the signature in the thread pool, through a batcher when batching is on, under the
request deadline.
"""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, TypeVar

import numpy as np

from serving.batching import Batcher, BatchingOptions, batchable
from serving.json_tensor import _DTYPE_STRINGS, check_shape
from serving.model_manager import LoadedVersion, ModelManager, Signature
from serving.status import ServingError, invalid_argument

_T = TypeVar("_T")


def dtype_string(dtype: str) -> str:
    """TensorFlow's name for a dtype in messages (DataTypeString: float32 -> "float")."""
    return _DTYPE_STRINGS.get(dtype, dtype)


def check_inputs(signature: Signature, tensors: Mapping[str, np.ndarray]) -> None:
    """INVALID_ARGUMENT unless `tensors` are exactly the signature's inputs, with its dtypes and
    shapes (TF Serving's messages where it has one: VerifyRequestInputsSize, the session's
    "Expects arg[i] to be float but double is provided")."""
    expected = sorted(signature.inputs)
    sent = sorted(tensors)
    if sent != expected:
        extra = sorted(set(sent) - set(expected))
        missing = sorted(set(expected) - set(sent))
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )
    for index, name in enumerate(expected):
        spec, tensor = signature.inputs[name], tensors[name]
        got = "string" if tensor.dtype.kind in "OSU" else tensor.dtype.name
        if got != spec.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] ('{name}') to be {dtype_string(spec.dtype)} but "
                f"{dtype_string(got)} is provided"
            )
        check_shape(name, tensor, spec)


class InferenceCore:
    """Resolves versions and runs signatures for both front ends.

    Args:
        manager: the served models.
        num_threads: threads running signatures (and REST's JSON work).
        timeout_seconds: per-request deadline (DEADLINE_EXCEEDED after it).
        batching: batching options, or None for no batching.
    """

    def __init__(
        self,
        manager: ModelManager,
        num_threads: int,
        timeout_seconds: float,
        batching: BatchingOptions | None = None,
    ):
        self.manager = manager
        self.timeout_seconds = timeout_seconds
        self.batching = batching
        self.executor = ThreadPoolExecutor(num_threads, thread_name_prefix="inference")
        self._batchers: weakref.WeakKeyDictionary[LoadedVersion, dict] = weakref.WeakKeyDictionary()
        self._batch_threads: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Call on the event loop before serving (the batch-thread semaphore belongs to it)."""
        if self.batching is not None and self._batch_threads is None:
            self._batch_threads = asyncio.Semaphore(self.batching.num_batch_threads)

    def shutdown(self) -> None:
        """Stops the thread pool; queued work is cancelled."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def resolve(
        self, name: str, version: int | None, label: str | None, signature_name: str
    ) -> tuple[LoadedVersion, Signature]:
        """The loaded version and signature a request names ("" = serving_default).

        Raises:
            ServingError: NOT_FOUND / INVALID_ARGUMENT with TF Serving's messages.
        """
        loaded = self.manager.resolve(name, version, label)
        return loaded, loaded.signature(signature_name)

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
        self, loaded: LoadedVersion, signature: Signature, tensors: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The signature's outputs for `tensors`, checked by `check_inputs` first.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs the signature does not take, the
                signature's own errors with their codes, DEADLINE_EXCEEDED.
        """
        check_inputs(signature, tensors)
        if self.batching is None or not batchable(signature.name):
            return await self.run(signature.run, tensors)
        batcher = self._batcher(loaded, signature, tensors)
        try:
            return await asyncio.wait_for(batcher.submit(tensors), self.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None

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
