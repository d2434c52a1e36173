"""The baseline of benchmarks/dataplane.py: a raw nats-py relay with no flowctl at all.

``pub URL N``: publish N JSON events to ``raw.in`` as fast as possible.
``relay URL``: decode each event on ``raw.in``, add a field, encode, publish to ``raw.out``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import msgspec
import nats


async def pub(url: str, n: int) -> None:
    nc = await nats.connect(url)
    enc = msgspec.json.Encoder()
    for seq in range(n):
        await nc.publish("raw.in", enc.encode({"seq": seq, "greeting": "hello"}))
    await nc.flush()
    await nc.close()


async def relay(url: str) -> None:
    nc = await nats.connect(url)
    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        event = dec.decode(msg.data)
        event["double"] = event["seq"] * 2
        await nc.publish("raw.out", enc.encode(event))

    await nc.subscribe("raw.in", cb=on_msg, pending_msgs_limit=2_000_000)
    await nc.flush()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.close()


if __name__ == "__main__":
    if sys.argv[1] == "pub":
        asyncio.run(pub(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(relay(sys.argv[2]))
