"""at-least-once delivery: a NATS restart loses nothing; poison events go to the DLQ."""

from __future__ import annotations

import asyncio
import json

import pytest

from flowstore.models import dlq_subject
from tests.agents import (
    flow_yaml,
    gen_transform_file,
    live_agent,
    read_lines,
    run_flow,
    statuses,
    wait_until,
)


async def test_nats_restart_under_at_least_once_flow_loses_nothing(
    nats_server, nc, agents, tmp_path
) -> None:
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    body = gen_transform_file(out, "count: 1500, rate: 500", "sq", "seq * seq")
    await run_flow(nc, flow_yaml("alo", body, delivery="at-least-once"))
    await wait_until(lambda: _has_lines(out, 200), what="events flowing", timeout=20)
    # Restart the server mid-stream (same port, same store).
    await asyncio.to_thread(nats_server.restart)

    async def complete() -> bool:
        seen = {json.loads(x)["seq"] for x in read_lines(out)}
        return seen >= set(range(1500))

    await wait_until(complete, what="every event at least once", timeout=90)
    events = [json.loads(x) for x in read_lines(out)]
    assert all(e["sq"] == e["seq"] ** 2 for e in events)


async def _has_lines(path, n: int) -> bool:
    return len(read_lines(path)) >= n


async def test_poison_events_go_to_the_dlq(nc, agents, tmp_path) -> None:
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    dead: list = []

    async def on_dead(msg) -> None:
        dead.append(msg)

    await nc.subscribe(dlq_subject("poison", "work"), cb=on_dead)
    out = tmp_path / "out.jsonl"
    body = gen_transform_file(out, "count: 20", "inv", "100 / (seq % 10)")
    await run_flow(nc, flow_yaml("poison", body, delivery="at-least-once"))
    await wait_until(lambda: _has_lines(out, 18), what="the good events", timeout=20)
    await wait_until(lambda: _n(dead, 2), what="two dead letters", timeout=20)
    assert sorted(json.loads(m.data)["seq"] for m in dead) == [0, 10]
    assert "division by zero" in dead[0].headers["Flowctl-Error"].lower()

    async def every_failed_event_counted():
        st = await statuses(nc, "poison")
        work = st.get("poison.work.0")  # (its first status record may be still to come)
        return st if work is not None and work.counters.errors >= 2 else None

    # An expression error fails the same way every time: dead-lettered at once, one error
    # per event (a failure that may pass on a retry is retried in place first).
    st = await wait_until(every_failed_event_counted, what="errors counted")
    assert st["poison.work.0"].counters.errors == 2
    assert st["poison.work.0"].state.value == "running"
    assert sorted(json.loads(x)["seq"] for x in read_lines(out)) == [
        s for s in range(20) if s % 10
    ]


async def test_an_input_never_acked_is_dead_lettered_not_dropped(nc, agents, tmp_path) -> None:
    """The transform's outputs are refused by the flow's stream (over its message size
    limit) every time: its inputs are delivered again and again; the 10th delivery
    dead-letters them unprocessed (before, JetStream's max_deliver of 5 let them go
    unseen: no count, no dead letter, nothing in status)."""
    from flowstore.models import stream_name
    from flowstore.streams import DLQ_STREAM

    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    pad = "x" * 600
    body = gen_transform_file(out, "count: 3", "pad", f"'{pad}'", fuse=False)
    js = nc.jetstream()
    engine = await _deployed(nc, "stuck", body)
    await _limit_message_size(js, stream_name("stuck"), 500)  # the source's events fit,
    await engine.start("stuck")                                # the transform's do not

    async def dead_lettered() -> bool:
        st = await statuses(nc, "stuck")
        return st.get("stuck.work.0") is not None and st["stuck.work.0"].counters.errors >= 3

    await wait_until(dead_lettered, what="three inputs dead-lettered", timeout=60)
    st = await statuses(nc, "stuck")
    assert st["stuck.work.0"].counters.errors == 3
    assert "delivered 10 times without being acked" in (st["stuck.work.0"].last_error or "")
    dlq = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("stuck", "work"))
    assert dlq.state.messages == 3
    for durable in (await js.consumers_info(stream_name("stuck"))):
        assert durable.config.max_deliver in (-1, None)

    async def all_acked() -> bool:
        infos = await js.consumers_info(stream_name("stuck"))
        return all(c.num_ack_pending == 0 and c.num_pending == 0 for c in infos)

    await wait_until(all_acked, what="every input acked", timeout=20)
    assert read_lines(out) == []


async def test_a_dead_letter_not_stored_leaves_its_input_unacked(nc, agents, tmp_path) -> None:
    """FLOWCTL_DLQ refuses the dead letters (over its message size limit): the failing
    events' inputs are not acked; once it takes them, each is dead-lettered, once. (The
    transform apart: fused with its source, see the test after this one.)"""
    from flowstore.models import stream_name
    from flowstore.streams import DLQ_STREAM

    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    js = nc.jetstream()
    engine = await _deployed(nc, "nodlq", gen_transform_file(out, "count: 20", "inv",
                                                             "100 / (seq % 10)", fuse=False))
    await _limit_message_size(js, DLQ_STREAM, 64)
    try:
        await engine.start("nodlq")
        await wait_until(lambda: _has_lines(out, 18), what="the good events", timeout=20)

        async def delivered_again() -> bool:  # not acked: the failing inputs come back
            infos = await js.consumers_info(stream_name("nodlq"))
            return next(c for c in infos if "work" in c.name).num_redelivered >= 1

        await wait_until(delivered_again, what="the inputs delivered again", timeout=20)
        dlq = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("nodlq", "work"))
        assert dlq.state.messages == 0
    finally:
        await _limit_message_size(js, DLQ_STREAM, -1)

    async def stored() -> bool:
        info = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("nodlq", "work"))
        return info.state.messages >= 2

    await wait_until(stored, what="the dead letters stored", timeout=30)

    async def all_acked() -> bool:
        infos = await js.consumers_info(stream_name("nodlq"))
        return all(c.num_ack_pending == 0 and c.num_pending == 0 for c in infos)

    await wait_until(all_acked, what="every input acked", timeout=20)
    info = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("nodlq", "work"))
    assert info.state.messages == 2
    assert sorted(json.loads(x)["seq"] for x in read_lines(out)) == [
        s for s in range(20) if s % 10]


async def test_a_dead_letter_not_stored_in_a_fused_chain_takes_the_source_back(
        nc, agents, tmp_path) -> None:
    """The same, the transform fused with its source: the source stores no position
    past an event whose dead letter was refused; its replica fails and resumes from the
    last one stored, so once FLOWCTL_DLQ takes them both failing events are dead-lettered
    and every good event is written (some twice: at-least-once)."""
    from flowstore.streams import DLQ_STREAM

    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    js = nc.jetstream()
    engine = await _deployed(nc, "nodlqf", gen_transform_file(
        out, "count: 20, rate: 10", "inv", "100 / (seq % 10)"))
    await _limit_message_size(js, DLQ_STREAM, 64)
    try:
        await engine.start("nodlqf")

        async def source_failed() -> bool:
            gen = (await statuses(nc, "nodlqf")).get("nodlqf.gen.0")
            return gen is not None and gen.restarts >= 1

        await wait_until(source_failed, what="the source restarted", timeout=30)
        gen = (await statuses(nc, "nodlqf"))["nodlqf.gen.0"]
        assert "resuming from the last stored position" in (gen.last_error or ""), gen
    finally:
        await _limit_message_size(js, DLQ_STREAM, -1)

    async def stored() -> bool:
        info = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("nodlqf", "work"))
        return info.state.messages >= 2 and {
            json.loads(x)["seq"] for x in read_lines(out)} == {s for s in range(20) if s % 10}

    await wait_until(stored, what="dead letters stored, every good event written",
                     timeout=60)
    letters = await js.stream_info(DLQ_STREAM, subjects_filter=dlq_subject("nodlqf", "work"))
    assert letters.state.messages >= 2


async def _deployed(nc, name: str, body: str):  # type: ignore[no-untyped-def]
    """An at-least-once flow applied and deployed (its streams exist), not started."""
    from flowengine import FlowEngine
    from flowstore.loader import parse_flow

    engine = await FlowEngine.open(nc)
    loaded = parse_flow(flow_yaml(name, body, delivery="at-least-once"))
    await engine.apply(loaded.name, loaded.spec)
    await engine.deploy(loaded.name)
    return engine


async def _limit_message_size(js, stream: str, size: int) -> None:  # type: ignore[no-untyped-def]
    info = await js.stream_info(stream)
    info.config.max_msg_size = size
    await js.update_stream(info.config)


async def test_a_consumer_made_with_max_deliver_is_brought_up_to_date(nc) -> None:
    """Consumers of flows deployed by 0.1 let an input go after 5 deliveries: the next
    deploy or replica start lifts the limit, keeping the consumer's position."""
    from nats.js.api import ConsumerConfig

    from flowstore.models import stream_name
    from flowstore.streams import ensure_consumer, ensure_flow_stream

    await ensure_flow_stream(nc, "old", ["flowctl.old.gen.out"], 2**20)
    js = nc.jetstream()
    await js.add_consumer(stream_name("old"), ConsumerConfig(
        durable_name="old-work-in", filter_subject="flowctl.old.gen.out", ack_policy="explicit",
        max_deliver=5))
    await js.publish("flowctl.old.gen.out", b"{}")
    info = await ensure_consumer(nc, "old", "old-work-in", ["flowctl.old.gen.out"])
    assert info.config.max_deliver in (-1, None) and info.num_pending == 1


async def _n(items: list, n: int) -> bool:
    return len(items) >= n


@pytest.mark.parametrize("delivery", ["at-most-once"])
async def test_processing_errors_never_kill_a_component(nc, agents, tmp_path, delivery) -> None:
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    out = tmp_path / "out.jsonl"
    body = gen_transform_file(out, "count: 30", "inv", "100 / (seq % 3)")
    await run_flow(nc, flow_yaml("amo", body, delivery=delivery))
    await wait_until(lambda: _has_lines(out, 20), what="the good events")

    async def counted() -> bool:
        st = await statuses(nc, "amo")
        return st.get("amo.work.0") is not None and st["amo.work.0"].counters.errors == 10

    await wait_until(counted, what="10 errors counted")
    st = await statuses(nc, "amo")
    assert st["amo.work.0"].state.value == "running"
    assert "division by zero" in st["amo.work.0"].last_error.lower()
