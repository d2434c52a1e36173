"""Serving the console with uvicorn on the caller's event loop, next to its NATS work.

:class:`ConsoleServer` opens its own engine on the given NATS connection, starts the
change hub, serves until :meth:`close`. uvicorn's own signal handling is switched off:
the command that starts the console owns Ctrl+C/SIGTERM and closes it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from console.api import Console, create_app
from console.auth import Access
from console.events import ChangeHub


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the caller handles signals
        yield


class ConsoleServer:
    def __init__(self, nc: Any, host: str, port: int, access: Access,
                 kv_replicas: int = 1) -> None:
        self.nc, self.host, self.port, self.access = nc, host, port, access
        self.kv_replicas = kv_replicas
        self.hub = ChangeHub(nc)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Serve; the URL. Raises OSError when the address cannot be bound."""
        from flowengine import FlowEngine

        engine = await FlowEngine.open(self.nc, kv_replicas=self.kv_replicas)
        app = create_app(Console(engine=engine, access=self.access, hub=self.hub))
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False,
                                timeout_graceful_shutdown=3)  # idle keep-alive clients
        self._server = _Server(config)
        sock = _bind(self.host, self.port)  # our OSError, before uvicorn (it would exit)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done():
            self._task.result()
        self.hub.start()
        return self.url

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        await self.hub.close()  # ends every event stream, so shutdown does not wait
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
