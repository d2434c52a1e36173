"""Network partitions on loopback (a proxy that stops every byte, both ways, without
closing anything): a partition of every agent moves nothing; one agent cut off stops its
program before the leader starts it elsewhere, so two copies never run at once."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import sys
import time
from pathlib import Path

import pytest

from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until
from tests.programs.tcp_proxy import PartitionProxy

HB = 1.0
TICKER = """\
import os, sys, time
with open(sys.argv[1], "a", buffering=1) as out:
    while True:
        out.write(f"{os.getpid()} {time.time():.3f}\\n")
        time.sleep(0.05)
"""


def program_flow(ticks: Path, script: Path) -> str:
    return f"""\
  sources:
    - id: gen
      type: generate
      config: {{rate: 20}}
      placement: {{agent: a0}}
  sinks:
    - id: ticker
      command: {sys.executable}
      args: ["{script}", "{ticks}"]
      inputs: [gen]
      restart_policy: always
"""


def overlap_s(ticks: Path) -> float:
    """How long two copies of the program wrote at the same time (seconds)."""
    spans: dict[str, list[float]] = collections.defaultdict(list)
    for line in read_lines(ticks):
        pid, at = line.split()
        spans[pid].append(float(at))
    ranges = sorted((min(t), max(t)) for t in spans.values())
    return max([0.0] + [max(0.0, a[1] - b[0]) for a, b in itertools.pairwise(ranges)])


async def test_one_agent_cut_off_never_leaves_two_copies(nc, nats_server, agents,
                                                         tmp_path) -> None:
    script, ticks = tmp_path / "ticker.py", tmp_path / "ticks.txt"
    script.write_text(TICKER)
    agents("a0", heartbeat=HB)  # first: holds the lease, on the healthy side
    await wait_until(lambda: live_agent(nc, "a0"), what="agent a0")
    proxy = PartitionProxy(nats_server.port).start()
    try:
        cut = agents("a1", "side=cut", heartbeat=HB, url=proxy.url)
        await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
        body = program_flow(ticks, script).replace(
            "      restart_policy: always\n",
            "      restart_policy: always\n      placement: {labels: {side: cut}}\n")
        # only a1 has side=cut for now: the program starts there
        await run_flow(nc, flow_yaml("twice", body, delivery="at-least-once"))
        await wait_until(lambda: _where(nc, "a1"), what="the program on a1", timeout=30)
        await wait_until(lambda: _ticks(ticks, 10), what="the program ticking")
        agents("a2", "side=cut", heartbeat=HB)  # takes over the lease, can run it too
        await wait_until(lambda: live_agent(nc, "a2"), what="agent a2")
        cut_at = time.monotonic()
        proxy.cut()
        await wait_until(lambda: _where(nc, "a2"), what="the program moved to a2",
                         timeout=40)
        moved = time.monotonic() - cut_at
        await wait_until(lambda: _ticks_by_two(ticks), what="a2's copy ticking", timeout=20)
        proxy.heal()
        await asyncio.sleep(3)  # a1 back in touch: it must not start its copy again
        both = overlap_s(ticks)
        print(f"\none agent cut off: program moved after {moved:.1f} s, two copies ran "
              f"side by side for {both:.2f} s")
        assert both < 0.3  # a tick's granularity
    finally:
        proxy.stop()
    assert cut.proc.poll() is None


async def _where(nc, agent: str) -> bool:
    st = (await statuses(nc, "twice")).get("twice.ticker.0")
    return st is not None and st.agent == agent and st.state.value == "running"


async def _ticks(path: Path, n: int) -> bool:
    return len(read_lines(path)) >= n


async def _ticks_by_two(path: Path) -> bool:
    pids = collections.Counter(line.split()[0] for line in read_lines(path))
    return len(pids) >= 2 and min(pids.values()) >= 5


@pytest.mark.usefixtures("busy_loops")
async def test_a_partition_of_every_agent_moves_nothing(nc, nats_server, agents,
                                                        tmp_path) -> None:
    proxy = PartitionProxy(nats_server.port).start()
    out = tmp_path / "out.jsonl"
    try:
        for name in ("p1", "p2", "p3"):
            agents(name, heartbeat=HB, url=proxy.url)
        for name in ("p1", "p2", "p3"):
            await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
        body = f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: 2000, rate: 100}}, placement: {{agent: p1}}}}
  processors:
    - {{id: work, type: transform, inputs: [gen], config: {{set: {{w: "true"}}}},
       placement: {{agent: p2}}}}
  sinks:
    - {{id: out, type: file, inputs: [work], config: {{path: "{out}"}}, placement: {{agent: p3}}}}
"""
        await run_flow(nc, flow_yaml("parted", body, delivery="at-least-once"))
        await wait_until(lambda: _ticks(out, 100), what="events flowing", timeout=30)
        before = {k: s.agent for k, s in (await statuses(nc, "parted")).items()}
        proxy.cut()
        await asyncio.sleep(8)
        proxy.heal()
        await wait_until(lambda: _ticks(out, 2000), what="all 2000 events", timeout=60)
        seqs = collections.Counter(json.loads(x)["seq"] for x in read_lines(out))
        lost = sum(1 for s in range(2000) if s not in seqs)
        dup = sum(n - 1 for n in seqs.values())
        print(f"\nevery agent cut off 8 s: lost {lost}, duplicated {dup}")
        assert lost == 0
        assert {k: s.agent for k, s in (await statuses(nc, "parted")).items()} == before
    finally:
        proxy.stop()
