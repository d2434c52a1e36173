"""at-least-once with a buffering component: inputs stay unacked while held, so killing
the agent mid-batch loses nothing; a clean stop flushes and acks."""

from __future__ import annotations

import asyncio
import json

from flowstore.models import consumer_name, stream_name
from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until

BODY = """\
  sources:
    - id: gen
      type: generate
      config: {{count: {count}}}
  processors:
    - id: b
      type: batch
      inputs: [gen]
      config: {{size: 1000, interval: 3600}}
  sinks:
    - id: out
      type: file
      inputs: [b]
      config: {{path: "{out}"}}
"""


async def _consumer(nc, flow: str):
    return await nc.jetstream().consumer_info(stream_name(flow), consumer_name("b", "in"))


async def test_held_inputs_are_not_acked_and_survive_a_kill(nc, agents, tmp_path) -> None:
    first = agents("h1")
    await wait_until(lambda: live_agent(nc, "h1"), what="agent")
    out = tmp_path / "out.jsonl"
    await run_flow(nc, flow_yaml("held", BODY.format(count=50, out=out), "at-least-once"))

    async def all_in_held() -> bool:
        st = await statuses(nc, "held")
        b = st.get("held.b.0")
        return b is not None and b.counters.in_ >= 50

    await wait_until(all_in_held, what="the batch took all 50 events")
    info = await _consumer(nc, "held")
    # 50 events, in however many frames: every one of those messages stays unacked
    assert info.num_ack_pending >= 1 and info.ack_floor.consumer_seq == 0, \
        "held inputs must stay unacked"
    first.kill()  # the batch of 50 in memory dies with the agent
    agents("h2")

    async def delivered() -> bool:
        lines = read_lines(out)
        return bool(lines) and sum(json.loads(x)["count"] for x in lines) >= 50

    # The source had completed (its checkpoint says so): it does not run again; the 50
    # unacked events come back after the consumer's ack_wait and the batch holds them
    # until stop flushes.
    await wait_until(lambda: _in_again(nc), what="redelivered to the new agent", timeout=40)
    from flowengine import FlowEngine

    await (await FlowEngine.open(nc)).stop("held")
    await wait_until(delivered, what="the batch written after a clean stop", timeout=20)
    events = [e for x in read_lines(out) for e in json.loads(x)["events"]]
    # the 50 that the killed agent held, redelivered: none lost, none twice
    assert sorted(e["seq"] for e in events) == list(range(50))

    async def all_acked() -> bool:
        info = await _consumer(nc, "held")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await wait_until(all_acked, what="every input acked after the flush")


async def _in_again(nc) -> bool:
    st = await statuses(nc, "held")
    b = st.get("held.b.0")
    # counts belong to the replica: h2 continues from h1's 50 and takes the 50 again
    return b is not None and b.agent == "h2" and b.counters.in_ >= 100


SLOW = """\
  sources:
    - {{id: gen, type: generate, config: {{count: 4}}}}
  processors:
    - id: slow
      type: python
      inputs: [gen]
      replicas: 2
      config: {{function: "udfs:slower_than_the_ack_wait", python_path: ["{programs}"]}}
  sinks:
    - {{id: out, type: file, inputs: [slow], config: {{path: "{out}"}}}}
"""


async def test_work_slower_than_the_ack_wait_is_kept_alive_not_delivered_again(
        nc, agents, tmp_path) -> None:
    """Each event takes 2.5 s, longer than the consumers' 2 s ack wait, on two replicas
    that share the input: what a replica has in hand is reported in progress, so no input
    is delivered again to the other replica (at-least-once would then repeat it)."""
    from pathlib import Path

    agents("s1")
    await wait_until(lambda: live_agent(nc, "s1"), what="agent")
    out = tmp_path / "out.jsonl"
    programs = Path(__file__).parent / "programs"
    await run_flow(nc, flow_yaml("slow", SLOW.format(out=out, programs=programs),
                                 "at-least-once"))
    async def all_four() -> bool:
        return len(read_lines(out)) >= 4

    await wait_until(all_four, timeout=40, what="all 4 events")
    await asyncio.sleep(2.5)  # a repeat, if any, would be handled by now
    st = await statuses(nc, "slow")
    took = sum(st[f"slow.slow.{i}"].counters.in_ for i in range(2))
    again = sum(st[f"slow.slow.{i}"].counters.redelivered for i in range(2))
    seqs = sorted(json.loads(x)["seq"] for x in read_lines(out))
    assert seqs == [0, 1, 2, 3] and took == 4 and again == 0, (seqs, took, again)
