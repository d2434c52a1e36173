"""How long the control plane takes for flows of 10, 100 and 1000 nodes on 3 agents.

    python benchmarks/controlplane.py [--sizes 10 100 1000] [--rounds 3]

Each flow is N/2 pairs of generate (count 1) -> file sink (/dev/null), so N nodes and
N/2 connections, spread by placement over three real `flowctl agent` processes. Per
size and round: ``apply``, ``deploy`` and ``start`` as the CLI calls them (the engine),
then the time from ``start`` returning until every replica reports running (sinks) or
completed (sources). Baseline in the same run: the same steps for a 2-node flow, so a
ratio tells how the cost grows with the size. Median and spread (min-max) printed.
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


def flow_text(name: str, nodes: int) -> str:
    pairs = max(1, nodes // 2)
    lines = ["apiVersion: flowctl/v1", "kind: Flow", f"metadata: {{name: {name}}}", "spec:",
             "  delivery: at-most-once", "  sources:"]
    lines += [f"    - {{id: g{i}, type: generate, config: {{count: 1}}}}" for i in range(pairs)]
    lines += ["  sinks:"]
    lines += [f'    - {{id: s{i}, type: file, inputs: [g{i}], config: {{path: "/dev/null"}}}}'
              for i in range(pairs)]
    return "\n".join(lines) + "\n"


async def one(engine: FlowEngine, name: str, nodes: int) -> dict[str, float]:
    loaded = parse_flow(flow_text(name, nodes))
    times: dict[str, float] = {}
    t = time.perf_counter()
    await engine.apply(loaded.name, loaded.spec)
    times["apply"] = time.perf_counter() - t
    t = time.perf_counter()
    await engine.deploy(loaded.name)
    times["deploy"] = time.perf_counter() - t
    t = time.perf_counter()
    await engine.start(loaded.name)
    times["start"] = time.perf_counter() - t
    t = time.perf_counter()
    while True:
        statuses = await engine.list_status(name)
        ok = sum(s.state.value in ("running", "completed") for s in statuses)
        if ok >= len(loaded.spec.nodes):
            break
        await asyncio.sleep(0.05)
    times["all running"] = time.perf_counter() - t
    await engine.undeploy(name, force=True)
    await engine.delete(name)
    return times


async def main(sizes: list[int], rounds: int) -> None:
    results: dict[int, list[dict[str, float]]] = {n: [] for n in [2, *sizes]}
    with EmbeddedNats() as server:
        agents = [start_agent(server.url, f"cp-{i}", f"n={i}") for i in range(3)]
        try:
            nc = await connect(NatsOptions(url=server.url))
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 3:
                await asyncio.sleep(0.1)
            for r in range(rounds):
                for n in results:
                    results[n].append(await one(engine, f"cp{r}-{n}", n))
            await nc.close()
        finally:
            stop_all(agents)
    steps = ["apply", "deploy", "start", "all running"]
    print(f"3 agents, rounds: {rounds}; seconds, median (min-max)")
    print(f"{'nodes':>6}  " + "  ".join(f"{s:>20}" for s in steps))
    for n, runs in results.items():
        cells = []
        for s in steps:
            v = [r[s] for r in runs]
            cells.append(f"{statistics.median(v):>7.2f} ({min(v):.2f}-{max(v):.2f})")
        print(f"{n:>6}  " + "  ".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.rounds))
