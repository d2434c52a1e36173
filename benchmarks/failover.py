"""Time from SIGKILL of an agent to every one of its replicas running elsewhere.

    python benchmarks/failover.py [--heartbeat 1.0] [--replicas 4] [--rounds 3]

Three real `flowctl agent` processes on one nats-server; a flow whose processor has
``--replicas`` replicas spread over them. Each round kills the agent that runs replica 0
(SIGKILL), measures until every replica reports running on a live agent, then starts a
replacement agent. The baseline, measured in the same run, is a fresh start: from
`flowctl start` of the same flow to every replica running. Ratios are to that baseline
and to the heartbeat interval (the contract: within 3 heartbeat intervals).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats

FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: fo}}
spec:
  sources:
    - id: src
      type: nats
      config: {{subject: "fo.in"}}
  processors:
    - id: work
      type: filter
      inputs: [src]
      replicas: {replicas}
      config: {{where: "true"}}
"""


async def all_running(engine: FlowEngine, live: set[str], replicas: int) -> bool:
    st = {s.key: s for s in await engine.list_status("fo")}
    keys = [f"fo.work.{i}" for i in range(replicas)] + ["fo.src.0"]
    return all(
        k in st and st[k].state.value == "running" and st[k].agent in live for k in keys
    )


async def wait_running(engine: FlowEngine, live: set[str], replicas: int) -> float:
    t0 = time.perf_counter()
    while not await all_running(engine, live, replicas):
        await asyncio.sleep(0.02)
    return time.perf_counter() - t0


async def main(hb: float, replicas: int, rounds: int) -> None:
    with EmbeddedNats() as server:
        url = server.url
        procs = {f"f{i}": start_agent(url, f"f{i}", "pool=x", hb) for i in range(3)}
        nc = await connect(NatsOptions(url=url))
        try:
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 3:
                await asyncio.sleep(0.05)
            loaded = parse_flow(FLOW.format(replicas=replicas))
            await engine.apply("fo", loaded.spec)
            await engine.deploy("fo")
            t0 = time.perf_counter()
            await engine.start("fo")
            await wait_running(engine, set(procs), replicas)
            fresh = time.perf_counter() - t0
            times = []
            for r in range(rounds):
                st = {s.key: s for s in await engine.list_status("fo")}
                victim = st["fo.work.0"].agent
                assert victim is not None
                t0 = time.perf_counter()
                procs.pop(victim).kill()
                live = set(procs)
                await wait_running(engine, live, replicas)
                times.append(time.perf_counter() - t0)
                name = f"g{r}"
                procs[name] = start_agent(url, name, "pool=x", hb)
                while name not in {a.name for a in await engine.live_agents()}:
                    await asyncio.sleep(0.05)
            await engine.undeploy("fo", force=True)
        finally:
            await nc.close()
            stop_all(list(procs.values()))
    med = statistics.median(times)
    print(f"heartbeat {hb}s, {replicas} replicas over 3 agents, {rounds} kills")
    print(f"fresh start (baseline):        {fresh:6.2f}s")
    print(f"SIGKILL -> all running again:  {med:6.2f}s median "
          f"(min {min(times):.2f}s, max {max(times):.2f}s)")
    print(f"ratio to fresh start: {med / fresh:.1f}x; "
          f"in heartbeat intervals: {med / hb:.2f} (bound: 3)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    asyncio.run(main(a.heartbeat, a.replicas, a.rounds))
