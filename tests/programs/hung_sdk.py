"""An SDK source that registers, heartbeats, then hangs its event loop (process alive)."""

import asyncio
import time

from componentmanager.sdk import Component, run_component


async def produce(c: Component) -> None:
    await asyncio.sleep(0.5)  # a few heartbeats
    print("hanging", flush=True)
    time.sleep(60)  # blocks the loop: no more heartbeats


run_component(source=produce)
