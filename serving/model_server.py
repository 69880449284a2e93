"""The model server: one `ServerCore` behind its REST and gRPC front ends, bound to their ports.

TF Serving's server.cc (`Server::BuildAndStart`): the ports are bound first, so that a port in use
is reported before the models load; the models load; then both front ends start answering, on one
event loop (aiohttp and grpc.aio), with inference in a thread pool off the loop.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from serving.flag_values import StartupError
from serving.model_manager import ModelManager
from serving.rest_api import RestApiHandler
from serving.server_core import ServerCore, ServerOptions


def _bind_error(flag: str, host: str, port: int, error: OSError | None) -> str:
    if error is None or error.errno == errno.EADDRINUSE:
        return (
            f"{flag} {port}: {host}:{port} is already in use; stop what listens there or "
            "choose another port"
        )
    return f"--host {host} {flag} {port}: cannot listen there ({error.strerror or error})"


def bind_socket(host: str, port: int, flag: str = "--rest_api_port") -> socket.socket:
    """A socket bound to host:port but not listening yet, so that a port in use is reported
    before the models load, and connections are refused (not left waiting) until they have.

    Raises:
        StartupError: the host does not resolve, or the port is in use or not allowed.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise StartupError(
            f"--host {host}: not an address to listen on ({error.strerror})"
        ) from None
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise StartupError(_bind_error(flag, host, port, error)) from None
    return sock


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server: its core, front ends, addresses and start-up lines (`start_server`)."""

    core: ServerCore
    grpc_server: object
    runner: web.AppRunner | None
    grpc_address: str | None
    rest_url: str | None
    lines: list[str]

    async def stop(self) -> None:
        """Stops both front ends (gRPC gets a second to finish its calls), then the core."""
        await self.grpc_server.stop(grace=1.0)
        if self.runner is not None:
            await self.runner.cleanup()
        await self.core.stop()


async def start_server(
    manager: ModelManager, options: ServerOptions, sock: socket.socket | None = None
) -> RunningServer:
    """Binds the ports, loads the models, then starts answering REST and gRPC requests.

    Args:
        manager: the models to serve.
        options: host, ports and the rest.
        sock: the REST socket from `bind_socket` (default: bound here when REST is on).

    Raises:
        StartupError: a port is in use or cannot be listened on, or a model has versions but
            none of them loads.
    """
    # The gRPC API's protos import TensorFlow: not on import, so that `main` checks flags,
    # files and ports (and applies TensorFlow's settings) first.
    from serving.grpc_server import build_grpc_server

    if sock is None and options.rest_api_port:
        sock = bind_socket(options.host, options.rest_api_port)
    core = ServerCore(manager, options)
    grpc_server = build_grpc_server(core)
    lines, grpc_address = [], None
    if options.port:
        grpc_address = _grpc_address(options.host, options.port)
        try:
            bound = grpc_server.add_insecure_port(grpc_address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise StartupError(_bind_error("--port", options.host, options.port, None))
        lines.append(f"Running gRPC ModelServer at {grpc_address} ...")
    if options.grpc_socket_path:
        try:
            bound = grpc_server.add_insecure_port(f"unix:{options.grpc_socket_path}")
        except RuntimeError:
            bound = 0
        if not bound:
            raise StartupError(
                f"--grpc_socket_path {options.grpc_socket_path}: cannot listen there"
            )
        lines.append(f"Running gRPC ModelServer at unix:{options.grpc_socket_path} ...")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, manager.poll)  # initial load, before accepting requests
    unavailable = manager.unavailable_models()
    if unavailable:  # up but unable to answer: refuse to start, as TF Serving does
        raise StartupError(
            f"{len(unavailable)} model(s) did not become available: {'; '.join(unavailable)}"
        )
    await core.start()
    await grpc_server.start()
    runner, rest_url = None, None
    if sock is not None:
        runner = web.AppRunner(
            RestApiHandler(core).application(),
            access_log=None,
            handle_signals=False,
            # aiohttp's keep-alive timer runs from a connection's start or last response until
            # a whole request head is in, so it is the header timeout: a stalled half-sent
            # header is closed when it expires, as an idle connection is.
            keepalive_timeout=options.rest_api_header_timeout_seconds,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except OSError as error:
            await runner.cleanup()
            await grpc_server.stop(None)
            raise StartupError(
                _bind_error("--rest_api_port", options.host, options.rest_api_port, error)
            ) from None
        host, port = sock.getsockname()[:2]
        rest_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        lines.append(
            f"Exporting HTTP/REST API at {rest_url} (models: {', '.join(sorted(manager.models))})"
        )
    return RunningServer(core, grpc_server, runner, grpc_address, rest_url, lines)


async def serve(
    manager: ModelManager,
    options: ServerOptions,
    ready: Callable[[str], None] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """`start_server`, then serves until SIGINT/SIGTERM.

    Args:
        manager, options, sock: as for `start_server`.
        ready: called with the start-up lines once requests are answered (default: print them).

    Raises:
        StartupError: a port is in use or cannot be listened on.
    """
    server = await start_server(manager, options, sock)
    try:
        (ready or (lambda text: print(text, flush=True)))("\n".join(server.lines))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await stop.wait()
    finally:
        await server.stop()
