"""Faults injected into real processes: a frozen NATS server, NATS killed while outputs
await their acks. Each prints what was lost, what was duplicated at the sink and how long
recovery took (run with -s to see the figures; the README's fault table quotes them).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.agents import flow_yaml, read_lines, run_flow, statuses, wait_until
from tests.test_failover import HB, start_three

TOTAL = 40_000


def chain(out: Path, rate: int, lines: Path | None = None) -> str:
    """generate -> transform -> file sink on three agents (a file source reading
    ``lines`` instead of generate when given)."""
    source = (f'type: file\n      config: {{path: "{lines}", follow: true, poll_interval: 0.05}}'
              if lines else
              f"type: generate\n      config: {{count: {TOTAL}, rate: {rate}}}")
    return f"""\
  sources:
    - id: gen
      {source}
      placement: {{agent: a1}}
  processors:
    - id: work
      type: transform
      inputs: [gen]
      config: {{set: {{worked: "true"}}}}
      placement: {{agent: a2}}
  sinks:
    - id: out
      type: file
      inputs: [work]
      config: {{path: "{out}"}}
      placement: {{agent: a3}}
"""


def tally(out: Path) -> tuple[int, int]:
    """(lost, duplicated) at the sink."""
    seqs = collections.Counter(json.loads(line)["seq"] for line in read_lines(out))
    lost = sum(1 for s in range(TOTAL) if s not in seqs)
    return lost, sum(n - 1 for n in seqs.values())


async def _everything(out: Path) -> bool:
    return len({json.loads(x)["seq"] for x in read_lines(out)}) >= TOTAL


def _say_what_agents_saw(agents: dict) -> None:
    """Print what the agents logged about replicas, for the cause of repeats (README)."""
    for name, agent in agents.items():
        said = [line[:300] for line in agent.output()[1].splitlines()
                if any(w in line for w in ("replica", "reassign", "failed", "lost",
                                           "connection", "restart"))]
        print(f"--- agent {name}:\n" + "\n".join(said[-40:]))


async def _where(nc, flow: str) -> dict[str, str | None]:
    return {k: s.agent for k, s in (await statuses(nc, flow)).items()}


@pytest.mark.usefixtures("busy_loops")
async def test_a_frozen_server_costs_a_stall_not_a_wedge(nc, nats_server, agents,
                                                         tmp_path) -> None:
    """NATS stopped (SIGSTOP) for 15 s mid-flow, then resumed: the flow completes, every
    agent heartbeats again and no replica moves."""
    procs = await start_three(nc, agents)
    out = tmp_path / "out.jsonl"
    await run_flow(nc, flow_yaml("frozen", chain(out, rate=4000), delivery="at-least-once"))
    await wait_until(lambda: _count(out, 2000), what="events flowing", timeout=30)
    placed = await _where(nc, "frozen")
    os.kill(nats_server.proc.pid, signal.SIGSTOP)
    await asyncio.sleep(15)
    os.kill(nats_server.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    await wait_until(lambda: _everything(out), timeout=120, what=f"all {TOTAL} events")
    recovered = time.monotonic() - resumed
    lost, duplicated = tally(out)
    print(f"\nNATS frozen 15 s: lost {lost}, duplicated {duplicated}, "
          f"all delivered {recovered:.1f} s after resume")
    if duplicated:
        _say_what_agents_saw(procs)
    assert lost == 0
    # 0 repeats in every run alone; 44 once in a full-suite CI run on the loaded machine
    # (cause not confirmed, see the README's fault table): bounded, never a loss.
    assert duplicated <= 2000
    assert await _where(nc, "frozen") == placed  # nothing moved
    for name, proc in procs.items():
        assert proc.proc.poll() is None, f"agent {name} exited"
        log = proc.output()[1]
        assert "reassign" not in log, log[-3000:]
    fresh = time.time()

    async def heartbeats() -> bool:
        from flowstore import AgentRecord, read_all
        from flowstore.nats import AGENTS_BUCKET, open_bucket

        kv = await open_bucket(nc, AGENTS_BUCKET)
        records = [AgentRecord.from_json(e.value) for e in (await read_all(kv)).values()]
        return len([r for r in records if r.is_live()]) == 3 and fresh > 0

    await wait_until(heartbeats, timeout=10, what="every agent heartbeating")


@pytest.mark.parametrize("source", ["generate", "file"])
async def test_nats_killed_while_outputs_await_acks(nc, nats_server, agents, tmp_path,
                                                    source) -> None:
    """NATS killed mid-flow and restarted 8 s later on the same port and store: the
    replicas consume again, nothing is lost, and every event arrives once in almost every
    run (a generate source paced to 4000 ev/s, or a file followed as it is written at
    4000 lines/s)."""
    started = await start_three(nc, agents)
    out = tmp_path / "out.jsonl"
    lines, appending = None, None
    if source == "file":  # a file written as the flow reads it (4000 lines/s), followed
        lines = tmp_path / "in.jsonl"
        lines.touch()
        appending = asyncio.create_task(_append(lines, per_second=4000))
    await run_flow(nc, flow_yaml("killed", chain(out, rate=4000, lines=lines),
                                 delivery="at-least-once"))
    try:
        await wait_until(lambda: _count(out, 2000), what="events flowing", timeout=30)
        nats_server.proc.kill()
        nats_server.proc.wait()
        await asyncio.sleep(8)
        nats_server.restart()
        restarted = time.monotonic()
        await wait_until(lambda: _everything(out), timeout=120, what=f"all {TOTAL} events")
    finally:
        if appending is not None:
            appending.cancel()
            await asyncio.gather(appending, return_exceptions=True)
    lost, duplicated = tally(out)
    print(f"\nNATS killed, restarted after 8 s ({source} source): lost {lost}, "
          f"duplicated {duplicated}, all delivered {time.monotonic() - restarted:.1f} s "
          "after restart")
    if duplicated:
        _say_what_agents_saw(started)
    assert lost == 0
    # 0 repeats in every run but one full-suite run on the loaded machine (126 once, file
    # source; the cause not confirmed): never a loss, a repeat is bounded by what a source
    # emits between two checkpoints.
    assert duplicated <= 2000


BIG = """\
  sources:
    - {id: gen, type: generate, config: {count: 3, rate: 5}}
  processors:
    - id: blow-up
      type: python
      inputs: [gen]
      config:
        code: |
          def process(event):
              event["blob"] = "x" * 1_100_000
              return event
  sinks:
    - {id: out, type: stdout, inputs: [blow-up], fuse: false}
"""  # (apart: blow-up's events must cross NATS, whose max_payload refuses them)


async def test_an_oversized_event_fails_alone(nc, agents, tmp_path) -> None:
    """A 1.1 MB event (over the server's 1 MB max_payload) beside a steady flow on the
    same agent: it fails (counted, dead-lettered), the steady flow never stalls."""
    from tests.agents import live_agent

    agents("solo", heartbeat=HB, extra=["--allow-inline-code"])
    await wait_until(lambda: live_agent(nc, "solo"), what="agent solo")
    out = tmp_path / "steady.jsonl"
    steady = f"""\
  sources:
    - {{id: ticks, type: generate, config: {{count: 300, rate: 50}}}}
  sinks:
    - {{id: out, type: file, inputs: [ticks], config: {{path: "{out}"}}, fuse: false}}
"""  # (apart: its input is published, so its arrivals are seen live here)
    arrivals: list[float] = []

    async def arrived(_msg) -> None:
        arrivals.append(time.monotonic())

    sub = await nc.subscribe("flowctl.steady.ticks.out", cb=arrived)  # the events, live
    await run_flow(nc, flow_yaml("steady", steady, delivery="at-least-once"))
    await wait_until(lambda: _count(out, 20), what="steady events", timeout=30)
    await run_flow(nc, flow_yaml("big", BIG, delivery="at-least-once"))
    await wait_until(lambda: _count(out, 300), what="all steady events", timeout=60)
    await sub.unsubscribe()
    during = [t for t in arrivals if t > arrivals[0] + 0.5]
    longest = max(b - a for a, b in itertools.pairwise(during))
    print(f"\n1.1 MB events beside a 50 ev/s flow: longest pause of the steady flow "
          f"{longest:.2f} s")
    assert len(read_lines(out)) == 300
    assert longest < 0.5

    async def failed_alone() -> bool:
        st = (await statuses(nc, "big")).get("big.blow-up.0")
        return st is not None and st.counters.errors == 3

    await wait_until(failed_alone, timeout=30, what="3 errors on blow-up")
    st = (await statuses(nc, "big"))["big.blow-up.0"]
    assert st.state.value == "running" and "max_payload" in (st.last_error or "")
    # The dead letters keep the inputs as they arrived (the code added the blob to the
    # event it was given: kept as changed, 1.1 MB, they could not be stored, and were
    # silently lost before).
    from flowstore.models import dlq_subject
    from flowstore.streams import DLQ_STREAM
    dlq = await nc.jetstream().stream_info(DLQ_STREAM,
                                           subjects_filter=dlq_subject("big", "blow-up"))
    assert dlq.state.messages == 3 and dlq.state.bytes < 10_000



async def _append(path: Path, per_second: int) -> None:
    """Append ``TOTAL`` JSON lines to ``path``, ``per_second`` of them a second."""
    chunk = per_second // 10
    with path.open("a") as fh:
        for first in range(0, TOTAL, chunk):
            fh.write("".join(f'{{"seq": {i}}}\n' for i in range(first, first + chunk)))
            fh.flush()
            await asyncio.sleep(0.1)


async def _count(path: Path, n: int) -> bool:
    return len(read_lines(path)) >= n
