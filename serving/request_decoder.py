"""Decoding REST predict bodies without stalling the other requests.

Reading JSON builds one Python object per number and holds the interpreter lock throughout, so a
large body decoded in the server process would stall every other request, status calls included,
for as long as decoding takes. Bodies over INLINE_DECODE_MAX_BYTES are
therefore decoded in a separate process, which sends back only the NumPy tensors and keeps the
Python objects' memory to itself; smaller ones, where the round trip would cost more than the
decoding, are decoded in the inference thread pool. (TF Serving decodes on its REST threads, in
C++, with no such lock.)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Mapping

from serving.errors import ServingError
from serving.inference import InferenceCore
from serving.json_request import PredictRequest, decode_predict_request
from serving.signature_inputs import TensorSpec

log = logging.getLogger("serving")

#: Largest body decoded in the server process: a few milliseconds of parsing at most.
INLINE_DECODE_MAX_BYTES = 64 * 1024


class RequestDecoder:
    """Decodes predict bodies: small ones in the inference threads, large ones in one process.

    Args:
        inference: the inference path (its threads and request deadline).
        max_batch_size: the most rows a request may carry.
    """

    def __init__(self, inference: InferenceCore, max_batch_size: int):
        self.inference = inference
        self.max_batch_size = max_batch_size
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Starts the decoding process now, not on the first large request."""
        self._pool = self._new_pool()
        await asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)

    def stop(self) -> None:
        """Stops the decoding process; queued bodies are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        # Spawned, not forked: a fork of a process running TensorFlow's threads can deadlock.
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    async def decode(
        self,
        body: bytes,
        signatures: Mapping[str, Mapping[str, TensorSpec]] | ServingError,
        server_inputs: Mapping[str, str] | None = None,
    ) -> PredictRequest:
        """`decode_predict_request(body, signatures, max_batch_size, server_inputs)`, off the
        event loop and, for a large body, in the decoding process, under the request deadline.

        Raises:
            ServingError: the request's own errors (see `decode_predict_request`),
                DEADLINE_EXCEEDED, or UNAVAILABLE when the decoding process died (it is
                replaced for the next request).
        """
        if len(body) <= INLINE_DECODE_MAX_BYTES or self._pool is None:
            return await self.inference.run(
                decode_predict_request, body, signatures, self.max_batch_size, server_inputs
            )
        pool = self._pool
        work = asyncio.get_running_loop().run_in_executor(
            pool, decode_predict_request, body, signatures, self.max_batch_size, server_inputs
        )
        try:
            return await asyncio.wait_for(work, self.inference.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        except BrokenProcessPool:
            if self._pool is pool:
                log.error("the request decoding process stopped; starting another")
                self._pool = self._new_pool()
            raise ServingError(
                "UNAVAILABLE", "the request decoding process stopped while decoding this request"
            ) from None
