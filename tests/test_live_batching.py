"""A lightly loaded keyed stage does its work in runs, not message by message: idle
settles at most every SETTLE_EVERY_S (acks of a run together), partition frames filled
up to FRAME_EVENTS, and a busy source's partial partition frames sent after a short
linger. Pure decisions with plain data; the puller against a real NATS server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from componentmanager.dataplane import EventIds, Outbox
from componentmanager.dataplane.emit import PARTITION_LINGER_S, partition_linger
from componentmanager.dataplane.pull import SETTLE_EVERY_S, Puller, settle_delay
from componentmanager.dataplane.wire import FRAME_EVENTS, frame_count
from componentmanager.runners.keyed_outputs import fill_frames


def test_an_idle_input_settles_at_once_unless_it_settled_just_now() -> None:
    assert settle_delay(now=10.0, settled_at=0.0) == 0.0
    assert settle_delay(now=10.0, settled_at=10.0 - SETTLE_EVERY_S) == 0.0
    assert settle_delay(now=10.0, settled_at=10.0) == pytest.approx(SETTLE_EVERY_S)
    assert settle_delay(now=10.0, settled_at=10.0 - SETTLE_EVERY_S / 4) == pytest.approx(
        SETTLE_EVERY_S * 3 / 4)


def test_partial_partition_frames_linger_only_while_events_keep_coming() -> None:
    assert partition_linger(since_flush=1.0, partial=True) == 0.0  # a lone event: at once
    assert partition_linger(since_flush=0.0, partial=False) == 0.0  # nothing partitioned
    assert partition_linger(since_flush=0.0, partial=True) == pytest.approx(PARTITION_LINGER_S)
    assert 0 < partition_linger(since_flush=PARTITION_LINGER_S / 2, partial=True) \
        <= PARTITION_LINGER_S / 2


def test_a_partition_share_fills_the_pending_frame_first() -> None:
    share = list(range(10))
    assert fill_frames(share, 4) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert fill_frames(share, FRAME_EVENTS) == [share]  # an empty frame takes it all
    assert fill_frames(share, 10) == [share]
    assert fill_frames(share, 0) == [share]  # (a full frame is sent before it is added to)


async def test_a_busy_source_sends_full_partition_frames_and_a_lone_event_at_once() -> None:
    sent: list[tuple[str, int, float]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str], count: int) -> None:
        assert frame_count(headers) == count
        sent.append((subject, count, time.monotonic()))

    box = Outbox(EventIds("t", 0, "x"), publish, {"p.0", "p.1", "own"},
                 partitions=frozenset({"p.0", "p.1"}))
    flusher = asyncio.create_task(box.run_flusher())
    try:
        began = time.monotonic()
        await box.put("p.0", b"1")  # the first: no flush lately, it leaves at once
        while not sent:
            await asyncio.sleep(0.001)
        assert sent[0][:2] == ("p.0", 1) and sent[0][2] - began < PARTITION_LINGER_S
        sent.clear()
        for _ in range(3):  # a busy source: a turn of the loop between its emits
            await box.put_lines("p.1", b"1\n2", 2)
            await asyncio.sleep(0)
        while not sent:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.002)
        assert [(s, c) for s, c, _ in sent] == [("p.1", 6)]  # together, after the linger
        assert sent[0][2] - began <= 2 * PARTITION_LINGER_S + 0.05
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)


async def _consumer(nc: Any, stream: str) -> None:
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    await js.add_consumer(stream, durable_name="c", ack_policy="explicit", ack_wait=30)


async def _pull(nc: Any, stream: str, gap_s: float, n: int) -> tuple[int, list[int]]:
    """``n`` messages published ``gap_s`` apart into a puller that acks in its settle:
    (settles until all were acked, the consumer's acked count)."""
    await _consumer(nc, stream)
    handled: list[Any] = []
    settles = 0

    async def handle(msg: Any) -> None:
        handled.append(msg)

    async def settle() -> None:
        nonlocal settles
        settles += 1
        batch, handled[:] = list(handled), []
        for msg in batch:
            await msg.ack()

    puller = Puller(nc, stream, "c", handle, settle)
    await puller.start()
    js = nc.jetstream()
    try:
        for i in range(n):
            await js.publish(f"{stream}.x", str(i).encode())
            if gap_s:
                await asyncio.sleep(gap_s)
        deadline = time.monotonic() + 5
        while True:
            info = await js.consumer_info(stream, "c")
            if info.ack_floor.stream_seq >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        return settles, [info.ack_floor.stream_seq, info.num_ack_pending]
    finally:
        await puller.stop()


async def test_a_run_of_messages_is_acked_together_and_a_lone_one_at_once(nc: Any) -> None:
    settles, (floor, pending) = await _pull(nc, "RUN", gap_s=0.001, n=60)
    assert (floor, pending) == (60, 0)  # every message acked, none forgotten
    assert settles < 30  # not one settle (ack round trip) per message
    settles, (floor, pending) = await _pull(nc, "SLOW", gap_s=SETTLE_EVERY_S * 3, n=4)
    assert (floor, pending) == (4, 0)
    assert settles >= 4  # at a low rate each is acked at once


def test_a_producer_remembers_key_partitions_and_places_each_key_as_computed() -> None:
    from componentmanager.dataplane.partition import Route, key_text, partition_of

    route = Route(lambda e: e["k"], 5, "flowctl.f.p.out.r.5.*")
    keys: list[Any] = [1, "1", True, 1.0, None, [1], {"a": 1}, "k7", 7, 10**30]
    for _ in range(2):  # computed, then remembered: the same subject either way
        for key in keys:
            assert route.place({"k": key}) == (
                f"flowctl.f.p.out.r.5.{partition_of(key_text(key), 5)}", None)
