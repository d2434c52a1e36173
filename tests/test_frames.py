"""Data plane v2 through real agents: frames and single events mixed on one input, a
program without ``frames: true`` getting single events, a slow stage behind an unpaced
source at-least-once (nothing lost, the stream within its buffer), and SIGKILL of an
agent mid-frame (nothing lost)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from flowstore.models import stream_name
from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until

PROGRAMS = Path(__file__).parent / "programs"


async def _lines(path: Path, n: int) -> bool:
    return len(read_lines(path)) >= n


async def test_frames_and_single_events_mixed_on_one_input(nc, agents, tmp_path) -> None:
    agents("m1")
    await wait_until(lambda: live_agent(nc, "m1"), what="agent")
    out = tmp_path / "out.jsonl"
    body = f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: 0}}}}
  processors:
    - {{id: t, type: transform, inputs: [gen], config: {{set: {{ok: "n + 1"}}}}}}
  sinks:
    - {{id: out, type: file, inputs: [t], config: {{path: "{out}"}}}}
"""
    await run_flow(nc, flow_yaml("mix", body))

    async def running() -> bool:
        st = await statuses(nc, "mix")
        return all(st.get(f"mix.{n}.0") and st[f"mix.{n}.0"].state.value == "running"
                   for n in ("t", "out"))

    await wait_until(running, what="t and out running")
    subject = "flowctl.mix.gen.out"
    await nc.publish(subject, b'{"n": 1}')  # plain JSON, no header: one event
    await nc.publish(subject, b'{"n": 2}\n{"n": 3}\n{"n": 4}',
                     headers={"Flowctl": "ext.0.x-1 3 1764080000.0"})  # a frame of three
    await nc.publish(subject, b'{"n": 5}', headers={"Flowctl": "ext.0.x-4 1 1764080000.0"})
    await wait_until(lambda: _lines(out, 5), what="five events")
    assert sorted(json.loads(x)["ok"] for x in read_lines(out)) == [2, 3, 4, 5, 6]
    # A frame with an event the transform cannot take: the others pass, that one fails.
    await nc.publish(subject, b'{"n": 6}\n"junk"\n{"n": 7}',
                     headers={"Flowctl": "ext.0.x-5 3 1764080000.0"})
    await wait_until(lambda: _lines(out, 7), what="seven events")
    assert sorted(json.loads(x)["ok"] for x in read_lines(out)) == [2, 3, 4, 5, 6, 7, 8]

    async def counted() -> bool:
        t = (await statuses(nc, "mix"))["mix.t.0"].counters
        return (t.in_, t.out, t.errors) == (8, 7, 1)

    await wait_until(counted, what="t: in 8, out 7, errors 1")


async def test_a_program_without_frames_gets_single_events(nc, agents, tmp_path) -> None:
    agents("p1")
    await wait_until(lambda: live_agent(nc, "p1"), what="agent")
    out = tmp_path / "raw.txt"
    body = f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: 300}}}}
  sinks:
    - id: raw
      type: raw-lines
      command: {sys.executable}
      args: ["{PROGRAMS / 'raw_lines.py'}"]
      config: {{path: "{out}"}}
      inputs: [gen]
"""
    await run_flow(nc, flow_yaml("single", body, delivery="at-most-once"))
    await wait_until(lambda: _lines(out, 300), timeout=30, what="300 messages")
    events = [json.loads(line) for line in read_lines(out)]  # every line one JSON object
    assert sorted(e["seq"] for e in events) == list(range(300))


SLOW = """\
  buffer: 1MiB
  sources:
    - {{id: gen, type: generate, placement: {{agent: s1}},
       config: {{count: {count}, template: {{pad: "{pad}"}}}}}}
  processors:
    - {{id: slow, type: python, placement: {{agent: s2}}, inputs: [gen],
       config: {{function: "udfs:spin"}}}}
  sinks:
    - {{id: out, type: file, placement: {{agent: s2}}, inputs: [slow],
       config: {{path: "{out}"}}}}
"""


async def test_slow_stage_behind_an_unpaced_source_loses_nothing(nc, agents, tmp_path) -> None:
    count = 12_000
    for name in ("s1", "s2"):
        agents(name, extra=["--python-path", str(PROGRAMS)])
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    out = tmp_path / "out.jsonl"
    text = flow_yaml("slow", SLOW.format(count=count, pad="x" * 300, out=out))
    await run_flow(nc, text.replace("  delivery: at-most-once\n", "  delivery: at-least-once\n"))
    peak = 0
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + 90
    while len(read_lines(out)) < count:
        assert asyncio.get_running_loop().time() < deadline, "not delivered in 90 s"
        info = await js.stream_info(stream_name("slow"))
        peak = max(peak, info.state.bytes)
        assert info.config.max_bytes == 2**20
        await asyncio.sleep(0.2)
    seqs = sorted(json.loads(x)["seq"] for x in read_lines(out))
    assert seqs == list(range(count)), "every event exactly once"
    assert 0 < peak <= 2**20, f"the stream held {peak} bytes"
    print(f"slow stage: stream peak {peak / 2**20:.2f} MiB of a 1 MiB buffer")


KILL = """\
  sources:
    - {{id: gen, type: generate, placement: {{agent: k1}}, config: {{count: {count}}}}}
  processors:
    - {{id: work, type: python, placement: {{labels: {{zone: w}}}}, inputs: [gen],
       config: {{function: "udfs:spin"}}}}
  sinks:
    - {{id: out, type: file, placement: {{agent: k1}}, inputs: [work],
       config: {{path: "{out}"}}}}
"""


async def test_sigkill_of_an_agent_mid_frame_loses_nothing(nc, agents, tmp_path) -> None:
    count = 6000
    procs = {name: agents(name, "zone=w" if name != "k1" else "", heartbeat=0.5,
                          extra=["--python-path", str(PROGRAMS)])
             for name in ("k1", "k2", "k3")}
    for name in procs:
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    out = tmp_path / "out.jsonl"
    text = flow_yaml("kill", KILL.format(count=count, out=out))
    await run_flow(nc, text.replace("  delivery: at-most-once\n", "  delivery: at-least-once\n"))

    async def busy() -> str | None:  # (the sink's lines: the status record lags, its
        w = (await statuses(nc, "kill")).get("kill.work.0")  # agent holds the GIL busy)
        return w.agent if w and w.agent and len(read_lines(out)) > 500 else None

    victim = await wait_until(busy, what="the work replica busy")
    procs[victim].kill()  # mid-frame: its unacked inputs are delivered again elsewhere
    print(f"killed {victim} with {len(read_lines(out))} of {count} events at the sink")

    async def all_there() -> bool:
        return len({json.loads(x)["seq"] for x in read_lines(out)}) >= count

    await wait_until(all_there, timeout=60, what="every event, after the failover")
    seqs = {json.loads(x)["seq"] for x in read_lines(out)}
    assert seqs == set(range(count))

    async def moved() -> bool:  # (the status reached 500 late: the work may be all done)
        return (await statuses(nc, "kill"))["kill.work.0"].agent in {"k2", "k3"} - {victim}

    await wait_until(moved, timeout=30, what="the work replica on the other agent")
