"""An external component written against the bare contract (no SDK, no frames: true):
writes the body of every message it receives as one line to config ``path``."""

import asyncio
import json
import os
import signal

import nats


async def main() -> None:
    inputs = json.loads(os.environ["FLOWCTL_INPUTS"])
    path = json.loads(os.environ["FLOWCTL_CONFIG"])["path"]
    nc = await nats.connect(os.environ["NATS_URL"])
    out = open(path, "ab", buffering=0)  # noqa: SIM115

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        out.write(msg.data + b"\n")

    for subjects in inputs.values():
        for subject in subjects:
            await nc.subscribe(subject, queue=os.environ["FLOWCTL_QUEUE"], cb=on_msg)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.drain()


asyncio.run(main())
