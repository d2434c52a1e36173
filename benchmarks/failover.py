"""Failover: from SIGKILL of an agent to all replicas running again and events flowing.

    python benchmarks/failover.py [--heartbeat 1.0] [--rounds 5] [--rate 200]

Three real `flowctl agent` processes on one nats-server run a flow generate (``--rate``
events/s) -> filter (3 replicas) -> nats sink; the benchmark counts the sink's events by
sequence number. Two kinds of round, measured separately, ``--rounds`` each:

* **agent**: SIGKILL of an agent that runs a filter replica and is not the leader;
* **leader**: SIGKILL of the agent that holds the leader lease.

Each round measures, from the kill: *all running* (every replica of every node reports
``running`` on a live agent) and *events back* (the sink holds every event, none
missing, up to some made after the kill: the work in flight on the dead replicas came
back and new events flow), then starts a replacement agent and lets the flow settle. The
baseline, measured in the same run, is a fresh start: from ``start`` to all running.
Printed: median and spread per kind, in seconds and in heartbeat intervals (the bound:
all running within 2.5 intervals, events back within 1 s of that).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import LEADER_BUCKET, NatsOptions, connect, open_bucket

FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: fo}}
spec:
  sources:
    - id: src
      type: generate
      config: {{rate: {rate}}}
  processors:
    - id: work
      type: filter
      inputs: [src]
      replicas: 3
      config: {{where: "true"}}
  sinks:
    - id: out
      type: nats
      inputs: [work]
      config: {{subject: "fo.out"}}
"""
KEYS = ["fo.src.0", "fo.work.0", "fo.work.1", "fo.work.2", "fo.out.0"]


class Arrivals:
    """The sink's events by sequence number: ``whole`` is the highest number up to which
    every event has arrived."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.top = -1
        self.whole = -1

    async def on_msg(self, msg: Any) -> None:
        seq = msgspec.json.decode(msg.data).get("seq")
        if isinstance(seq, int):
            self.seen.add(seq)
            self.top = max(self.top, seq)
            while self.whole + 1 in self.seen:
                self.whole += 1


async def all_running(engine: FlowEngine, live: set[str]) -> bool:
    st = {s.key: s for s in await engine.list_status("fo")}
    return all(k in st and st[k].state.value == "running" and st[k].agent in live
               for k in KEYS)


async def one_round(engine: FlowEngine, procs: dict[str, Any], victim: str,
                    arrivals: Arrivals, rate: float) -> tuple[float, float]:
    """Kill ``victim``; (seconds to all running, seconds to the events in flight back)."""
    t0 = time.perf_counter()
    procs.pop(victim).kill()
    # every event up to some made after the kill, none missing: in flight came back
    after_kill = arrivals.top + max(5, int(rate / 5))
    live, running_at, back_at = set(procs), None, None
    while running_at is None or back_at is None:
        now = time.perf_counter() - t0
        if now > 60:
            raise TimeoutError(f"after killing {victim}: running {running_at}, back {back_at}")
        if running_at is None and await all_running(engine, live):
            running_at = now
        if back_at is None and arrivals.whole >= after_kill:
            back_at = now
        await asyncio.sleep(0.02)
    return running_at, back_at


async def leader_of(nc: Any) -> str:
    kv = await open_bucket(nc, LEADER_BUCKET)
    return msgspec.json.decode((await kv.get("leader")).value)["agent"]


async def replace(engine: FlowEngine, procs: dict[str, Any], url: str, name: str,
                  hb: float, arrivals: Arrivals) -> None:
    """A replacement agent, live, and the flow running and flowing on every agent."""
    procs[name] = start_agent(url, name, "pool=x", hb)
    while name not in {a.name for a in await engine.live_agents()}:
        await asyncio.sleep(0.05)
    while not await all_running(engine, set(procs)):
        await asyncio.sleep(0.05)
    top = arrivals.top
    while arrivals.top < top + 50:
        await asyncio.sleep(0.05)


async def main(hb: float, rounds: int, rate: float) -> dict[str, list[tuple[float, float]]]:
    from flowstore.server import EmbeddedNats

    results: dict[str, list[tuple[float, float]]] = {"agent": [], "leader": []}
    with EmbeddedNats() as server:
        url = server.url
        procs = {f"f{i}": start_agent(url, f"f{i}", "pool=x", hb) for i in range(3)}
        nc = await connect(NatsOptions(url=url))
        arrivals = Arrivals()
        await nc.subscribe("fo.out", cb=arrivals.on_msg)
        try:
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 3:
                await asyncio.sleep(0.05)
            await engine.apply("fo", parse_flow(FLOW.format(rate=rate)).spec)
            await engine.deploy("fo")
            t0 = time.perf_counter()
            await engine.start("fo")
            while not await all_running(engine, set(procs)):
                await asyncio.sleep(0.02)
            fresh = time.perf_counter() - t0
            for r in range(2 * rounds):
                kind = "agent" if r % 2 == 0 else "leader"
                leader = await leader_of(nc)
                if kind == "leader":
                    victim = leader
                else:
                    st = {s.key: s for s in await engine.list_status("fo")}
                    victim = next(st[k].agent for k in KEYS[1:4]
                                  if st[k].agent not in (leader, None))
                results[kind].append(await one_round(engine, procs, victim, arrivals, rate))
                await replace(engine, procs, url, f"g{r}", hb, arrivals)
            await engine.undeploy("fo", force=True)
        finally:
            await nc.close()
            stop_all(list(procs.values()))
    print(f"heartbeat {hb}s, generate {rate:g}/s -> filter x3 -> nats sink, 3 agents, "
          f"{rounds} kills of each kind")
    print(f"fresh start (baseline): {fresh:5.2f}s")
    for kind, times in results.items():
        running = [t for t, _ in times]
        back = [b for _, b in times]
        after = [b - t for t, b in times]
        med, med_back = statistics.median(running), statistics.median(back)
        print(f"SIGKILL of {'an agent' if kind == 'agent' else 'the leader':9}: "
              f"all running {med:5.2f}s median (min {min(running):.2f}, max {max(running):.2f})"
              f" = {med / hb:.2f} heartbeats (bound 2.5); events back {med_back:.2f}s"
              f" median, {statistics.median(after):+.2f}s after all running "
              f"(max {max(after):+.2f}; bound +1.0)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=200.0)
    a = parser.parse_args()
    asyncio.run(main(a.heartbeat, a.rounds, a.rate))
