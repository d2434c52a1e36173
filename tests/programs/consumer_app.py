#!/usr/bin/env python3
"""The consumer of the orchestrator example: ``consumer_app.py START END``.

Reads the processor's events from ``TTP_SERVICE_ADDRESS`` (host:port) and appends those
with ``START <= ledger`` (and ``<= END`` unless END is 0) to ``OUTPUT_FILE``, one JSON
line each. ``/health`` answers 200 once it reads the processor. Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from ttp_common import address, connect, serve_health, trace, until_stopped

NAME = "consumer"


async def main(start: int, end: int) -> None:
    trace(NAME, "started")
    reading = False

    async def consume() -> None:
        nonlocal reading
        reader, _ = await connect(*address("TTP_SERVICE_ADDRESS", "localhost:50052"))
        reading = True
        with open(os.environ["OUTPUT_FILE"], "a", encoding="utf-8") as out:
            while line := await reader.readline():
                ledger = json.loads(line)["ledger"]
                if ledger >= start and (end == 0 or ledger <= end):
                    out.write(line.decode())
                    out.flush()
        raise SystemExit(1)  # the processor went away

    health = await serve_health(NAME, lambda: reading)
    work = asyncio.ensure_future(consume())
    stop = asyncio.ensure_future(until_stopped())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        work.result()
    work.cancel()
    if health is not None:
        health.close()
    trace(NAME, "stopped")


if __name__ == "__main__":
    first, last = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (1, 0)
    asyncio.run(main(first, last))
