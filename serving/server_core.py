"""The core both front ends serve (TF Serving's ServerCore): models, inference, polls, metrics.

The REST (`serving.rest_api`) and gRPC (`serving.grpc_server`) front ends are thin: they turn
their requests into calls on one `ServerCore`, which owns the model manager, the inference path
(`serving.inference`), the prior streams when they are on (`serving.prior_streams`), the
file-system and model-config polls that keep the served versions current, config reloads, and the
Prometheus metrics. Nothing here knows a transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from serving.batching import BatchingOptions
from serving.errors import ServingError
from serving.inference import InferenceCore
from serving.model_manager import ModelConfig, ModelManager, read_model_config_file
from serving.monitoring import Metrics, MonitoringOptions
from serving.prior_stream_registry import PriorStreamOptions
from serving.prior_streams import PriorStreams

if TYPE_CHECKING:
    from serving.servable import LoadedVersion, Signature

log = logging.getLogger("serving")


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs besides the models (the flags of `serving.flags`)."""

    host: str = "127.0.0.1"
    port: int = 8500  # gRPC; 0: no TCP port (grpc_socket_path only)
    rest_api_port: int = 8501  # 0: REST off
    grpc_socket_path: str = ""
    max_request_bytes: int = 64 * 2**20
    max_request_batch_size: int = 1024  # rows (images) per predict request
    rest_api_header_timeout_seconds: float = 10.0  # request line and headers; idle keep-alive
    rest_api_body_timeout_seconds: float = 30.0  # the whole body, once the headers are in
    num_threads: int = max(4, os.cpu_count() or 1)
    timeout_seconds: float = 30.0
    file_system_poll_wait_seconds: float = 1.0  # 0: no poll after the start-up load
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # 0: the file is never re-read
    batching: BatchingOptions | None = None
    monitoring: MonitoringOptions = MonitoringOptions()
    enable_cors_support: bool = False
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    serialize_as_tensor_content: bool = False
    prior_streams: PriorStreamOptions | None = None  # None: off


class ServerCore:
    """The served models, the shared inference path, the polls and the metrics.

    Each poll is a task only when its interval is > 0; with 0 (TF Serving's "exactly once"), the
    start-up load was the one poll and no task, thread or loop is started.

    Args:
        manager: the served models (loaded by the caller's start-up poll).
        options: the server options.
    """

    def __init__(self, manager: ModelManager, options: ServerOptions):
        self.manager = manager
        self.options = options
        self.inference = InferenceCore(
            manager,
            options.num_threads,
            options.timeout_seconds,
            options.batching,
            options.max_request_batch_size,
        )
        self.prior_streams = (
            PriorStreams(options.prior_streams) if options.prior_streams is not None else None
        )
        self.metrics = (
            Metrics(
                manager.loaded_versions,
                manager.load_attempts,
                None if self.prior_streams is None else self.prior_streams.registry.stats,
            )
            if options.monitoring.prometheus_path is not None
            else None
        )
        if self.prior_streams is not None and self.metrics is not None:
            self.prior_streams.observe_tracking = self.metrics.observe_prior_stream_tracking
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="model-poll")
        self._pollers: list[asyncio.Task] = []

    async def start(self) -> None:
        """Starts the inference path, the prior streams (their saved state read back) and the
        polls (call on the serving event loop, after the start-up load)."""
        self.inference.start()
        if self.prior_streams is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._poll_executor,
                self.prior_streams.registry.start,
                self.manager.available_versions(),
            )
        file_system_wait = self.options.file_system_poll_wait_seconds
        if file_system_wait > 0:
            self._pollers.append(asyncio.create_task(self._poll_file_system(file_system_wait)))
        else:
            log.info(
                "--file-system-poll-wait-seconds 0: the versions loaded at start-up are "
                "served; base paths are not polled again (new versions need a restart)"
            )
        config_wait = self.options.model_config_file_poll_wait_seconds
        if self.options.model_config_file and config_wait > 0:
            self._pollers.append(asyncio.create_task(self._poll_model_config_file(config_wait)))

    async def stop(self) -> None:
        """Cancels the polls and stops the inference threads."""
        for poller in self._pollers:
            poller.cancel()
        self.inference.shutdown()
        if self.prior_streams is not None:
            self.prior_streams.registry.stop()
        self._poll_executor.shutdown(wait=False, cancel_futures=True)

    async def _poll_file_system(self, wait: float) -> None:
        """Polls every base path each `wait` seconds (> 0), until cancelled."""
        while True:
            await asyncio.sleep(wait)
            await self._in_poll_executor(self._poll)

    def _poll(self) -> None:
        """One file-system poll; trackers of versions it unloaded are dropped."""
        self.manager.poll()
        self._retain_prior_streams()

    def _retain_prior_streams(self) -> None:
        if self.prior_streams is not None:
            self.prior_streams.registry.retain(self.manager.available_versions())

    async def _poll_model_config_file(self, wait: float) -> None:
        """Re-reads the model config file each `wait` seconds (> 0), until cancelled."""
        while True:
            await asyncio.sleep(wait)
            await self._in_poll_executor(self._reread_model_config)

    async def _in_poll_executor(self, function: Callable[[], None]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._poll_executor, function)
        except Exception:  # noqa: BLE001 - a failed poll must not stop serving
            log.exception("model poll failed; serving continues with the loaded versions")

    def _reread_model_config(self) -> None:
        """Applies the model config file again (blocking; in the poll thread, so never while a
        file-system poll runs); a bad file is logged in one line and ignored. A model the file
        adds is polled at once: its start-up load, so it is served even when the file-system
        poll is off (0).
        """
        path = self.options.model_config_file
        try:
            configs = read_model_config_file(path)
        except ValueError as error:
            log.error(
                "--model-config-file %s: %s; keeping the models of the previous config", path, error
            )
            return
        self._apply_configs(configs)

    def _apply_configs(self, configs: list[ModelConfig]) -> None:
        self.manager.reconfigure(configs)
        self.manager.poll(new_only=True)
        self._retain_prior_streams()

    async def reload(self, configs: list[ModelConfig]) -> None:
        """Serves `configs` from now on (gRPC HandleReloadConfigRequest), in the poll thread."""
        await asyncio.get_running_loop().run_in_executor(
            self._poll_executor, self._apply_configs, configs
        )

    def require_prior_streams(self) -> PriorStreams:
        """The prior streams, or FAILED_PRECONDITION when they are off."""
        if self.prior_streams is None:
            raise ServingError(
                "FAILED_PRECONDITION",
                "prior streams are off on this server: start it with --enable_prior_streams, or "
                "send target_prior without naming a stream",
            )
        return self.prior_streams

    async def predict(
        self,
        loaded: LoadedVersion,
        signature: Signature,
        tensors: dict[str, np.ndarray],
        stream: str | None = None,
    ) -> tuple[dict[str, np.ndarray], int | None]:
        """A signature's outputs for a request, and, for a request naming a prior stream, the
        stream's update count after it (None otherwise)."""
        if stream is None:
            return await self.inference.predict(loaded, signature, tensors), None
        streams = self.require_prior_streams()
        return await streams.predict(self.inference, loaded, signature, tensors, stream)

    def batching_stats(self) -> dict[tuple[str, int, str], dict[str, int]]:
        """See InferenceCore.batching_stats."""
        return self.inference.batching_stats()
