"""Shared by the three small programs of the orchestrator example (examples/ttp-pipeline.yaml):
a health endpoint, a trace of what happened when, a clean stop on SIGTERM/SIGINT.

Standard library only, so the programs run with any python3, on the host or in an image.
They talk to each other over plain TCP (one JSON object per line), wired by their own
environment, not through flowctl: flowctl only starts, watches and stops them.

``TRACE_FILE`` (optional): each program appends ``<time> <name> <what>`` lines there
(``started``, ``healthy`` when its first ``/health`` got 200, ``stopped``), so a test can
check the order in which things happened.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable


def trace(name: str, what: str) -> None:
    path = os.environ.get("TRACE_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.time():.6f} {name} {what}\n")
    print(f"{name}: {what}", flush=True)


def health_port() -> int | None:
    value = os.environ.get("HEALTH_PORT") or os.environ.get("FLOWCTL_HEALTH_PORT")
    return int(value) if value else None


async def serve_health(name: str, ready: Callable[[], bool]) -> asyncio.AbstractServer | None:
    """``GET /health`` on the health port: 200 once ``ready()``, else 503."""
    port = health_port()
    if port is None:
        return None
    answered = False

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            ok = b" /health" in request and ready()
            body = b"ok\n" if ok else b"not ready\n"
            status = "200 OK" if ok else "503 Service Unavailable"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body)
            await writer.drain()
            if ok and not answered:
                answered = True
                trace(name, "healthy")
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "0.0.0.0", port)


def address(variable: str, default: str) -> tuple[str, int]:
    host, _, port = os.environ.get(variable, default).rpartition(":")
    return host or "localhost", int(port)


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def connect(host: str, port: int, seconds: float = 30.0
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, retrying while nobody listens yet (up to ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await asyncio.open_connection(host, port)
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"cannot reach {host}:{port}: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            await asyncio.sleep(0.1)
