"""The baselines of benchmarks/dataplane.py: hand-written nats-py programs, no flowctl.

Per message (the usual program), one event a message:

``pub URL N``: publish N JSON events to ``raw.in`` as fast as possible.
``relay URL``: decode each event on ``raw.in``, add a field, encode, publish to ``raw.out``.

Framed (what a careful hand-written program does), :data:`FRAME` JSON lines a message:

``fpub URL N``: generate N events ({"seq", "greeting"}) and publish them to ``raw.fin``
in frames.
``frelay URL``: decode each frame on ``raw.fin``, add a field to each event, encode the
frame, publish it to ``raw.fout``.
``fsink URL PATH``: append each frame on ``raw.fout`` to the file at PATH as JSON lines
(written through at once: the reader of the file sees every event as it arrives).

At-least-once by hand (``jpub``, ``jrelay``, ``jsink``): the same framed chain through a
JetStream stream (:data:`JSTREAM`, file storage, interest retention, created by the
benchmark): the publisher awaits its acks in a window, the relay and the writer fetch
batches and ack them once their outputs are stored (written).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats

#: Events a frame (flowctl's frames carry up to this many too).
FRAME = 128


async def pub(url: str, n: int) -> None:
    nc = await nats.connect(url)
    enc = msgspec.json.Encoder()
    for seq in range(n):
        await nc.publish("raw.in", enc.encode({"seq": seq, "greeting": "hello"}))
    await nc.flush()
    await nc.close()


async def fpub(url: str, n: int) -> None:
    nc = await nats.connect(url)
    enc = msgspec.json.Encoder()
    for first in range(0, n, FRAME):
        events = [{"seq": seq, "greeting": "hello"} for seq in range(first, min(n, first + FRAME))]
        await nc.publish("raw.fin", enc.encode_lines(events)[:-1])
        if first % (FRAME * 64) == 0:
            await asyncio.sleep(0)  # let the connection's writer run
    await nc.flush()
    await nc.close()


async def serve(url: str, subject: str, handle: Callable[[Any, Any], Awaitable[None]]) -> None:
    """Subscribe ``handle(nc, msg)`` to ``subject``, say ready, run until SIGTERM."""
    nc = await nats.connect(url)

    async def on_msg(msg: Any) -> None:
        await handle(nc, msg)

    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=2_000_000)
    await nc.flush()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.close()


def relay(url: str) -> Awaitable[None]:
    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()

    async def one(nc: Any, msg: Any) -> None:
        event = dec.decode(msg.data)
        event["double"] = event["seq"] * 2
        await nc.publish("raw.out", enc.encode(event))

    return serve(url, "raw.in", one)


def frelay(url: str) -> Awaitable[None]:
    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()

    async def frame(nc: Any, msg: Any) -> None:
        events = dec.decode_lines(msg.data)
        for event in events:
            event["double"] = event["seq"] * 2
        await nc.publish("raw.fout", enc.encode_lines(events)[:-1])

    return serve(url, "raw.fin", frame)


def fsink(url: str, path: str) -> Awaitable[None]:
    out = open(path, "ab", buffering=0)  # noqa: SIM115 (open while the program runs)

    async def frame(_nc: Any, msg: Any) -> None:
        out.write(msg.data + b"\n")

    return serve(url, "raw.fout", frame)



# -- at-least-once by hand: the same framed chain through a JetStream stream ---------------
#: The stream of the hand-written at-least-once chain (created by the benchmark, interest
#: retention, file storage: what a flowctl at-least-once flow has).
JSTREAM, JIN, JOUT = "RAWJ", "raw.jin", "raw.jout"


async def jpub(url: str, n: int) -> None:
    """Frames into the stream, acks awaited in a window (no round trip per frame)."""
    nc = await nats.connect(url)
    js, enc = nc.jetstream(), msgspec.json.Encoder()
    for first in range(0, n, FRAME):
        events = [{"seq": seq, "greeting": "hello"} for seq in range(first, min(n, first + FRAME))]
        await js.publish_async(JIN, enc.encode_lines(events)[:-1])
    await js.publish_async_completed()
    await nc.close()


async def pull_loop(url: str, subject: str, durable: str,
                    handle: Callable[[Any, list[Any]], Awaitable[None]]) -> None:
    """Fetch batches of ``subject`` (durable ``durable``), ``handle(js, msgs)``, then ack
    them: at-least-once. Says ready, runs until SIGTERM."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable=durable, stream=JSTREAM)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch=64, timeout=0.2)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        await handle(js, msgs)
        for msg in msgs:
            await msg.ack()
    await nc.close()


def jrelay(url: str) -> Awaitable[None]:
    enc, dec = msgspec.json.Encoder(), msgspec.json.Decoder()

    async def frames(js: Any, msgs: list[Any]) -> None:
        for msg in msgs:
            events = dec.decode_lines(msg.data)
            for event in events:
                event["double"] = event["seq"] * 2
            await js.publish_async(JOUT, enc.encode_lines(events)[:-1])
        await js.publish_async_completed()  # stored before the inputs are acked

    return pull_loop(url, JIN, "jrelay", frames)


def jsink(url: str, path: str) -> Awaitable[None]:
    out = open(path, "ab", buffering=0)  # noqa: SIM115 (open while the program runs)

    async def frames(_js: Any, msgs: list[Any]) -> None:
        out.write(b"".join(msg.data + b"\n" for msg in msgs))

    return pull_loop(url, JOUT, "jsink", frames)


if __name__ == "__main__":
    mode, url = sys.argv[1], sys.argv[2]
    if mode in ("pub", "fpub", "jpub"):
        asyncio.run({"pub": pub, "fpub": fpub, "jpub": jpub}[mode](url, int(sys.argv[3])))
    elif mode in ("fsink", "jsink"):
        asyncio.run({"fsink": fsink, "jsink": jsink}[mode](url, sys.argv[3]))
    else:
        asyncio.run({"relay": relay, "frelay": frelay, "jrelay": jrelay}[mode](url))
