#!/usr/bin/env python3
"""The processor of the orchestrator example: reads the source, serves what it makes.

Connects to ``LIVE_SOURCE_ENDPOINT`` (host:port), turns each ledger into a token transfer
event ``{"ledger": n, "ttp": "transfer-<n>"}`` and sends it to every client of its own
``GRPC_PORT``. ``/health`` answers 200 once it reads the source. Exits 1 when the source
goes away (its restart policy decides); stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os

from ttp_common import address, connect, serve_health, trace, until_stopped

NAME = "processor"


async def main() -> None:
    trace(NAME, "started")
    clients: set[asyncio.StreamWriter] = set()
    reading = False

    async def join(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.add(writer)

    async def pump() -> None:
        nonlocal reading
        reader, _ = await connect(*address("LIVE_SOURCE_ENDPOINT", "localhost:50051"))
        reading = True
        while line := await reader.readline():
            ledger = json.loads(line)["ledger"]
            out = json.dumps({"ledger": ledger, "ttp": f"transfer-{ledger}"}).encode() + b"\n"
            for writer in list(clients):
                try:
                    writer.write(out)
                    await writer.drain()
                except (OSError, ConnectionError):
                    clients.discard(writer)
        raise SystemExit(1)  # the source went away

    server = await asyncio.start_server(join, "0.0.0.0", int(os.environ["GRPC_PORT"]))
    health = await serve_health(NAME, lambda: reading)
    work = asyncio.ensure_future(pump())
    stop = asyncio.ensure_future(until_stopped())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        work.result()  # SystemExit(1): the source went away
    work.cancel()
    server.close()
    if health is not None:
        health.close()
    trace(NAME, "stopped")


if __name__ == "__main__":
    asyncio.run(main())
