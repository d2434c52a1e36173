#!/usr/bin/env python3
"""The source of the orchestrator example: serves ledgers over TCP.

Each client of ``GRPC_PORT`` gets ``{"ledger": 1}``, ``{"ledger": 2}``, ... one JSON
line every ``LEDGER_INTERVAL`` seconds (default 0.05). ``/health`` on ``HEALTH_PORT``
answers 200 once it listens. Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os

from ttp_common import serve_health, trace, until_stopped

NAME = "source"


async def main() -> None:
    trace(NAME, "started")
    interval = float(os.environ.get("LEDGER_INTERVAL", "0.05"))

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ledger = 1
        try:
            while True:
                writer.write(json.dumps({"ledger": ledger}).encode() + b"\n")
                await writer.drain()
                ledger += 1
                await asyncio.sleep(interval)
        except (OSError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(stream, "0.0.0.0", int(os.environ["GRPC_PORT"]))
    health = await serve_health(NAME, lambda: True)
    await until_stopped()
    server.close()
    if health is not None:
        health.close()
    trace(NAME, "stopped")


if __name__ == "__main__":
    asyncio.run(main())
