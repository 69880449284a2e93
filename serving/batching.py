"""Server-side batching of concurrent predict requests (TF Serving's --enable_batching).

Requests for the same model version and signature wait in a queue; a batch closes when it holds
`max_batch_size` rows or its oldest request has waited `batch_timeout_micros`, then runs as one
call once one of `num_batch_threads` is free (padded with copies of its first row up to the next
`allowed_batch_sizes` entry, if any), and each request gets its own rows back. Parameters
come from a text-proto `BatchingParameters` file, TF Serving's --batching_parameters_file format.

Merging is only correct for signatures whose rows are independent; the signatures named in
`BATCH_LEVEL_SIGNATURES` compute over the whole batch and are never batched (see `batchable`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from serving.errors import ServingError, invalid_argument
from serving.storage import read_text_file

Tensors = Mapping[str, np.ndarray]

# Signatures whose outputs depend on every row of the call, so merging two clients' requests
# would silently answer each with a result over the other's rows too. `estimate_prior`
# (lade_tf/export.py) runs EM over all its images and returns one target prior for the whole
# batch. Nothing in an exported model marks such signatures (the SignatureDefs and
# assets/lade_metadata.json list only inputs and outputs), hence the names here. TF Serving's
# own --enable_batching knows no such exception and would merge these requests.
BATCH_LEVEL_SIGNATURES = frozenset({"estimate_prior"})

# (name, kind) of BatchingParameters (tensorflow_serving/servables/tensorflow/
# session_bundle_config.proto); only the names matter for the text format.
_FIELDS = (
    ("max_batch_size", "Int64Value"),
    ("batch_timeout_micros", "Int64Value"),
    ("max_enqueued_batches", "Int64Value"),
    ("num_batch_threads", "Int64Value"),
    ("thread_pool_name", "StringValue"),
    ("allowed_batch_sizes", "repeated int64"),
    ("pad_variable_length_inputs", "bool"),
    ("enable_large_batch_splitting", "BoolValue"),
    ("max_execution_batch_size", "Int64Value"),
)


def _batching_parameters_class():
    """The BatchingParameters message, built at run time (tensorflow-serving-api lacks it)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="lade_serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    field_proto = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(_FIELDS, start=1):
        field = message.field.add(name=name, number=number, label=field_proto.LABEL_OPTIONAL)
        if kind.endswith("Value"):
            field.type = field_proto.TYPE_MESSAGE
            field.type_name = f".google.protobuf.{kind}"
        elif kind == "bool":
            field.type = field_proto.TYPE_BOOL
        else:
            field.type = field_proto.TYPE_INT64
            field.label = field_proto.LABEL_REPEATED
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.MessageFactory(pool).GetPrototype(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


@dataclass(frozen=True)
class BatchingOptions:
    """Batching parameters; defaults are TF Serving's when a field is omitted."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False


def parse_batching_parameters(text: str) -> BatchingOptions:
    """BatchingOptions from the text of a TF Serving batching parameters file.

    Raises:
        ValueError: unparsable text, an unknown field, or inconsistent values (sizes < 1,
            allowed_batch_sizes not increasing or not ending at max_batch_size).
    """
    try:
        proto = text_format.Parse(text, _batching_parameters_class()())
    except text_format.ParseError as error:
        raise ValueError(
            f"batching parameters are not a text BatchingParameters: {error}"
        ) from None
    defaults = BatchingOptions()

    def wrapped(name: str, default):
        return getattr(proto, name).value if proto.HasField(name) else default

    options = BatchingOptions(
        max_batch_size=int(wrapped("max_batch_size", defaults.max_batch_size)),
        batch_timeout_micros=int(wrapped("batch_timeout_micros", defaults.batch_timeout_micros)),
        max_enqueued_batches=int(wrapped("max_enqueued_batches", defaults.max_enqueued_batches)),
        num_batch_threads=int(wrapped("num_batch_threads", defaults.num_batch_threads)),
        allowed_batch_sizes=tuple(int(s) for s in proto.allowed_batch_sizes),
        enable_large_batch_splitting=bool(wrapped("enable_large_batch_splitting", False)),
    )
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, name) < 1:
            raise ValueError(f"batching parameter {name} = {getattr(options, name)}: expected >= 1")
    if options.batch_timeout_micros < 0:
        raise ValueError(f"batch_timeout_micros = {options.batch_timeout_micros}: expected >= 0")
    sizes = options.allowed_batch_sizes
    if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != options.max_batch_size):
        raise ValueError(
            f"allowed_batch_sizes = {list(sizes)}: expected increasing sizes whose "
            f"last entry equals max_batch_size ({options.max_batch_size})"
        )
    return options


def read_batching_parameters_file(path: str) -> BatchingOptions:
    """`parse_batching_parameters` of a file.

    Raises:
        ValueError: the file cannot be read (see `read_text_file`) or holds bad parameters.
    """
    return parse_batching_parameters(read_text_file(path))


def batchable(signature_name: str) -> bool:
    """Whether requests for this signature may be merged (False: BATCH_LEVEL_SIGNATURES)."""
    return signature_name not in BATCH_LEVEL_SIGNATURES


def batch_rows(tensors: Tensors) -> int:
    """The common 0th dimension of a request's inputs (TF Serving's batching preconditions)."""
    rows = set()
    for tensor in tensors.values():
        if np.ndim(tensor) == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        rows.add(tensor.shape[0])
    if len(rows) != 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return rows.pop()


@dataclass
class _Task:
    inputs: Tensors
    rows: int
    enqueued: float
    future: asyncio.Future


class Batcher:
    """Batches the requests of one (model version, signature, input shapes) queue.

    Args:
        run: the blocking signature call, inputs -> outputs (all batched on axis 0).
        options: batching parameters.
        executor: where `run` executes (off the event loop).
        threads: semaphore shared by all batchers, `num_batch_threads` batches at a time.
        idle_seconds: the queue's worker stops after this long without requests, so a batcher
            of an unloaded version does not keep the model alive.

    Attributes:
        requests: requests taken off the queue so far.
        batches: batches formed from them (a batch of several requests was merged).
    """

    def __init__(
        self,
        run: Callable[[Tensors], dict],
        options: BatchingOptions,
        executor: Executor,
        threads: asyncio.Semaphore,
        idle_seconds: float = 5.0,
    ):
        self._run = run
        self._options = options
        self._executor = executor
        self._threads = threads
        self._idle_seconds = idle_seconds
        self._pending: deque[_Task] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.requests = 0
        self.batches = 0

    def stop(self) -> None:
        """Stops the queue's worker (call on the event loop); requests still queued fail."""
        if self._worker is not None:
            self._worker.cancel()
        for task in self._pending:
            if not task.future.done():
                task.future.set_exception(ServingError("UNAVAILABLE", "The server is stopping"))
        self._pending.clear()

    async def submit(self, inputs: Tensors) -> dict:
        """Queues one request and waits for its outputs.

        Raises:
            ServingError: INVALID_ARGUMENT for inputs that cannot be batched or a request larger
                than max_batch_size (unless enable_large_batch_splitting), UNAVAILABLE when the
                queue is full, or the error of running the request.
        """
        rows = batch_rows(inputs)
        limit = self._options.max_batch_size
        if rows > limit and not self._options.enable_large_batch_splitting:
            raise invalid_argument(
                f"Task size {rows} is larger than maximum input batch size {limit}"
            )
        queued = sum(task.rows for task in self._pending)
        if queued + rows > limit * self._options.max_enqueued_batches:
            raise ServingError(
                "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full"
            )
        task = _Task(inputs, rows, time.monotonic(), asyncio.get_running_loop().create_future())
        self._pending.append(task)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await task.future

    async def _work(self) -> None:
        timeout = self._options.batch_timeout_micros / 1e6
        limit = self._options.max_batch_size
        while True:
            if not self._pending:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), self._idle_seconds)
                except asyncio.TimeoutError:
                    if not self._pending:
                        return
            # Wait for a full batch or for the oldest request's timeout, whichever comes first.
            while sum(task.rows for task in self._pending) < limit:
                remaining = self._pending[0].enqueued + timeout - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._threads.acquire()
            batch = [self._pending.popleft()]
            rows = batch[0].rows
            while self._pending and rows + self._pending[0].rows <= limit:
                rows += self._pending[0].rows
                batch.append(self._pending.popleft())
            self.requests += len(batch)
            self.batches += 1
            asyncio.create_task(self._execute(batch))

    async def _execute(self, batch: list[_Task]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, batch)
        except BaseException as error:  # noqa: BLE001 - handed to every waiting request
            results = [error] * len(batch)
        finally:
            self._threads.release()
        for task, result in zip(batch, results):
            if task.future.done():
                continue
            if isinstance(result, BaseException):
                task.future.set_exception(result)
            else:
                task.future.set_result(result)

    def _run_batch(self, batch: list[_Task]) -> list:
        if len(batch) == 1 and not self._options.allowed_batch_sizes:
            return [self._run_one(batch[0].inputs)]
        total = sum(task.rows for task in batch)
        padded = self._padded_size(total)
        merged = {}
        for name in batch[0].inputs:
            parts = [task.inputs[name] for task in batch]
            if padded > total:  # pad with copies of the first row, as TF Serving does
                parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
            merged[name] = np.concatenate(parts)
        try:
            outputs = self._run(merged)
        except ServingError:
            # One bad request (e.g. an invalid prior) must not fail its neighbours: rerun alone.
            return [self._run_one(task.inputs) for task in batch]
        for name, value in outputs.items():
            if np.ndim(value) == 0 or value.shape[0] != padded:
                error = ServingError(
                    "INTERNAL",
                    f"Batched output tensor {name}'s 0th dimension does not equal "
                    "the sum of the 0th dimension sizes of the input tensors",
                )
                return [error] * len(batch)
        results, start = [], 0
        for task in batch:
            results.append(
                {name: value[start : start + task.rows] for name, value in outputs.items()}
            )
            start += task.rows
        return results

    def _padded_size(self, rows: int) -> int:
        for size in self._options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _run_one(self, inputs: Tensors):
        try:
            return self._run(inputs)
        except ServingError as error:
            return error
