"""A replica restarted on the same agent repeats nothing it is sure of: a source resumes
after what the stream acknowledged even when its checkpoint writes were failing, and a
sink's inputs that it wrote but could not ack are acked again, not written again; a source
whose checkpoint cannot be written pauses (bounding what a failover would repeat).

The checkpoint runs against a real nats-server (the bucket deleted to make writes fail);
the teardown decision is driven with messages as nats-py builds them.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.msg import Msg

from componentmanager.dataplane import AckedPublisher, PublishFailed
from componentmanager.runners import checkpoint
from componentmanager.runners.acks import DoneInputs, InputAcks
from componentmanager.runners.checkpoint import SourceCheckpoint
from flowstore.models import ComponentConfig
from flowstore.names import HDR_META
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket

CFG = ComponentConfig(flow="f", node="gen", type="generate", config={"count": 1000},
                      queue="q")


async def test_a_source_restarted_while_checkpoint_writes_failed_resumes_after_the_stored(
        nc, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "CHECKPOINT_LAG_S", 0.3)
    stored = 0
    first = SourceCheckpoint(nc, CFG, 0, lambda: stored)
    await first.load()
    first.advance(64, 64)
    stored = 64
    await first.flush()  # the bucket has 64
    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)
    written = (await kv.get(first.key)).value
    await nc.jetstream().delete_key_value(CHECKPOINTS_BUCKET)  # writes fail from here
    first.advance(128, 128)
    stored = 128
    await first.flush()  # fails quietly
    mark = first.stored_mark()
    assert mark is not None and (mark.position, mark.events) == (128, 128)
    assert not first.too_far_behind()
    await asyncio.sleep(0.4)
    assert first.too_far_behind()  # the source pauses (in its emits) until written
    paused = asyncio.create_task(first.catch_up())
    await asyncio.sleep(0.5)
    assert not paused.done()

    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)  # back, with the stale checkpoint
    await asyncio.wait_for(paused, 5)  # written: the source goes on
    assert json.loads((await kv.get(first.key)).value)["position"] == 128
    await kv.put(first.key, written)
    again = SourceCheckpoint(nc, CFG, 0, lambda: 0)
    await again.load(mark)
    assert (again.position, again.events_before) == (128, 128)
    await again.flush()  # and the bucket catches up
    assert json.loads((await kv.get(first.key)).value)["position"] == 128

    elsewhere = SourceCheckpoint(nc, CFG, 0, lambda: 5)  # another agent: the bucket only
    await elsewhere.load()
    assert elsewhere.position == 128
    elsewhere.advance(5, 133)
    elsewhere.advance(10, 138)
    await elsewhere.flush()  # 133 is stored and written
    await nc.jetstream().delete_key_value(CHECKPOINTS_BUCKET)
    await elsewhere.complete(10)  # done for good, but the bucket does not answer
    done = elsewhere.stored_mark()
    assert done is not None and done.completed and done.position == 138
    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)
    await kv.put(first.key, written)  # (a stale, uncompleted checkpoint)
    restarted = SourceCheckpoint(nc, CFG, 0, lambda: 0)  # a restart on the same agent
    await restarted.load(done)
    assert restarted.completed and restarted.position == 138
    await elsewhere.flush()  # the completion is written when the bucket answers again
    assert json.loads((await kv.get(first.key)).value)["completed"] is True
    await elsewhere.flush()  # and never undone by a later flush
    assert json.loads((await kv.get(first.key)).value)["completed"] is True
    older = SourceCheckpoint(nc, CFG, 0, lambda: 0)
    await older.load(mark.__class__(position=64, events=64))  # never goes back
    assert older.position == 138 and older.completed


async def test_a_publisher_counts_what_it_gave_up(nc) -> None:
    """What teardown relies on to tell stored outputs from lost ones: a refused publish is
    counted (here the stream refuses a message over its size limit)."""
    js = nc.jetstream()
    await js.add_stream(name="tiny", subjects=["tiny.>"], max_msg_size=16)
    publisher = await AckedPublisher(nc).open()
    await publisher.publish("tiny.a", b"ok", {})
    await publisher.wait()
    assert publisher.given_up == 0
    await publisher.publish("tiny.a", b"x" * 100, {})
    with pytest.raises(PublishFailed):
        await publisher.wait()
    assert publisher.given_up == 1 and publisher.outstanding == 0
    await publisher.close()


async def test_a_source_publishes_what_the_stream_refuses_again_until_it_is_stored(nc) -> None:
    """A source never moves past an event that is not stored: a refused message (here
    over the stream's size limit) is published again until the operator makes room;
    its status says why meanwhile; nothing is given up."""
    js = nc.jetstream()
    await js.add_stream(name="small", subjects=["small.>"], max_msg_size=80)
    publisher = await AckedPublisher(nc, source_of="small").open()
    await publisher.publish("small.a", b"ok", {"Nats-Msg-Id": "m1"}, count=1)
    await publisher.publish("small.a", b"x" * 100, {"Nats-Msg-Id": "m2"}, count=5)
    for _ in range(50):
        if publisher.refused:
            break
        await asyncio.sleep(0.1)
    assert publisher.refused and "size" in publisher.refused
    assert publisher.stored_events() == 1 and publisher.outstanding == 1
    info = await js.stream_info("small")
    info.config.max_msg_size = -1
    await js.update_stream(info.config)
    await asyncio.wait_for(publisher.wait(), 10)
    assert publisher.stored_events() == 6 and publisher.refused is None
    assert publisher.given_up == 0
    assert (await js.stream_info("small")).state.messages == 2
    await publisher.close()


async def test_a_closed_source_publisher_stops_retrying_and_unblocks(nc) -> None:
    """A source stopped while its stream refuses it (an undeploy deleted the stream):
    closing its publisher ends the retries and what waited on them, so the stop ends."""
    js = nc.jetstream()
    await js.add_stream(name="gone", subjects=["gone.>"], max_msg_size=10)
    publisher = await AckedPublisher(nc, source_of="gone").open()
    await publisher.publish("gone.a", b"x" * 100, {"Nats-Msg-Id": "g1"})
    waiting = asyncio.ensure_future(publisher.wait())
    for _ in range(50):
        if publisher.refused:
            break
        await asyncio.sleep(0.1)
    assert publisher.refused and not waiting.done()
    await publisher.close()
    with pytest.raises(PublishFailed, match="closed"):
        await asyncio.wait_for(waiting, 3)
    assert publisher.stored_events() == 0  # its checkpoint stays before the refused event


async def test_a_processor_meeting_ack_silence_in_publish_fails_the_next_wait(
        nc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs abandoned while publishing (no ack for the silence bound) must not let the
    inputs behind them be acked: the next wait() raises, so they are delivered again."""
    import componentmanager.dataplane.streams as streams

    monkeypatch.setattr(streams, "ACK_SILENCE_S", 0.3)
    monkeypatch.setattr(streams, "ACK_WINDOW", 1)
    silent = await nc.subscribe("mute.>")  # takes the publishes, never acks
    publisher = await AckedPublisher(nc).open()
    await publisher.publish("mute.a", b"1", {})
    await publisher.publish("mute.a", b"2", {})  # abandons the first, does not raise
    assert publisher.given_up == 1
    with pytest.raises(PublishFailed, match="no JetStream ack"):
        await publisher.wait()
    assert publisher.given_up == 2 and publisher.outstanding == 0
    await publisher.close()
    await silent.unsubscribe()


class Settling(InputAcks):
    def __init__(self, msgs: list[Msg]) -> None:
        self._state = None
        self._done = DoneInputs()
        self._handled = {f"gen.0.a-{i}" for i in range(len(msgs) + 1)}
        self._in_hand = {"gen.0.a-9"}
        self._unacked = msgs
        self._unacked_since = 1.0


def _messages() -> list[Msg]:
    return [Msg(None, subject="flowctl.f.gen.out",  # type: ignore[arg-type]
                reply=f"$JS.ACK.s.c.1.{i + 1}.{i + 1}.0.0",
                headers={HDR_META: f"gen.0.a-{i} 1 1764080000.0"}) for i in range(3)]


def test_inputs_written_but_not_acked_at_a_restart_are_acked_again_not_written_again() -> None:
    kept = Settling(_messages())
    kept._settle_at_teardown(effects_kept=True)
    assert all(f"gen.0.a-{i}" in kept._done for i in range(3))
    assert kept._unacked == [] and kept._handled == set() == kept._in_hand

    lost = Settling(_messages())  # outputs not stored: processed again when redelivered
    lost._settle_at_teardown(effects_kept=False)
    assert not any(f"gen.0.a-{i}" in lost._done for i in range(3))
    assert lost._unacked == [] and lost._handled == set()
