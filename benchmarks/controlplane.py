"""How long the control plane takes for flows of 10, 100 and 1000 nodes on 3 agents
(or any sizes on any number of agents), and what CPU it costs.

    python benchmarks/controlplane.py [--sizes 10 100 1000] [--rounds 3] [--agents 3]
                                      [--heartbeat 1] [--status-interval 0.5]

Each flow is N/2 pairs of generate (count 1) -> file sink (/dev/null), so N nodes and
N/2 connections, spread by placement over real `flowctl agent` processes. Per size and
round: ``apply``, ``deploy`` and ``start`` as the CLI calls them (the engine), then the
time from ``start`` returning until every replica reports running (sinks) or completed
(sources), seen through a watch on the flow's status records; "start to all" is the two
together (from typing ``flowctl start`` to the flow running in full, less the CLI's own
start-up). Baseline in the same run: the same steps for a 2-node flow, so a ratio tells
how the cost grows with the size. Median and spread (min-max) printed.

CPU seconds (user + system, from /proc) from ``deploy`` to all running: of the leader
agent (it places), of every agent together, of nats-server and of this process (the
engine and the watch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import cpu_seconds, start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import LEADER_BUCKET, STATUS_BUCKET, NatsOptions, connect, open_bucket
from flowstore.server import EmbeddedNats

STEPS = ["apply", "deploy", "start", "all running", "start to all"]
CPU = ["leader cpu", "agents cpu", "nats cpu", "engine cpu"]
DONE = ("running", "completed")


def flow_text(name: str, nodes: int) -> str:
    pairs = max(1, nodes // 2)
    lines = ["apiVersion: flowctl/v1", "kind: Flow", f"metadata: {{name: {name}}}", "spec:",
             "  delivery: at-most-once", "  sources:"]
    lines += [f"    - {{id: g{i}, type: generate, config: {{count: 1}}}}" for i in range(pairs)]
    lines += ["  sinks:"]
    lines += [f'    - {{id: s{i}, type: file, inputs: [g{i}], config: {{path: "/dev/null"}}}}'
              for i in range(pairs)]
    return "\n".join(lines) + "\n"


@dataclass
class Cluster:
    """A server, its agents (name -> process) and an engine on its own connection."""

    server: EmbeddedNats
    agents: dict[str, subprocess.Popen]
    engine: FlowEngine


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def leader_name(cluster: Cluster) -> str | None:
    kv = await open_bucket(cluster.engine.nc, LEADER_BUCKET)
    try:
        return json.loads((await kv.get("leader")).value or b"{}").get("agent")
    except Exception:
        return None


async def watch_all_running(cluster: Cluster, name: str, replicas: int,
                            started: asyncio.Event) -> float:
    """Watch the flow's status records from before ``start``; the time (perf_counter)
    at which every replica of it has reported running or completed."""
    kv = await open_bucket(cluster.engine.nc, STATUS_BUCKET)
    watcher = await kv.watch(f"{name}.*.*")
    done: set[str] = set()
    started.set()
    try:
        while len(done) < replicas:
            entry = await watcher.updates(timeout=600)
            if entry is None or not entry.value:
                continue
            try:
                state = json.loads(entry.value).get("state")
            except ValueError:
                continue
            (done.add if state in DONE else done.discard)(entry.key)
        return time.perf_counter()
    finally:
        await watcher.stop()


async def one(cluster: Cluster, name: str, nodes: int) -> dict[str, float]:
    """One flow of ``nodes`` nodes through apply, deploy, start, all running; undeployed
    and deleted after. Times in seconds and CPU seconds (see the module doc)."""
    engine = cluster.engine
    loaded = parse_flow(flow_text(name, nodes))
    times: dict[str, float] = {}
    t = time.perf_counter()
    await engine.apply(loaded.name, loaded.spec)
    times["apply"] = time.perf_counter() - t
    pids = {a: p.pid for a, p in cluster.agents.items()}
    leader = await leader_name(cluster)
    before = {a: cpu_seconds(pid) for a, pid in pids.items()}
    nats_pid = cluster.server.proc.pid if cluster.server.proc is not None else 0
    nats_before, own_before = cpu_seconds(nats_pid), own_cpu()
    t = time.perf_counter()
    await engine.deploy(loaded.name)
    times["deploy"] = time.perf_counter() - t
    watching = asyncio.Event()
    replicas = sum(n.replicas for n in loaded.spec.nodes)
    watch = asyncio.create_task(watch_all_running(cluster, name, replicas, watching))
    await watching.wait()
    t = time.perf_counter()
    await engine.start(loaded.name)
    returned = time.perf_counter()
    times["start"] = returned - t
    done_at = await watch
    times["all running"] = max(0.0, done_at - returned)
    times["start to all"] = max(done_at, returned) - t
    spent = {a: cpu_seconds(pid) - before[a] for a, pid in pids.items()}
    times["leader cpu"] = spent.get(leader or "", float("nan"))
    times["agents cpu"] = sum(spent.values())
    times["nats cpu"] = cpu_seconds(nats_pid) - nats_before
    times["engine cpu"] = own_cpu() - own_before
    print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in times.items()), flush=True)
    try:  # (the figures are taken: an overloaded machine failing the clean-up loses none)
        await engine.undeploy(name, force=True)
        await engine.delete(name)
    except Exception as exc:
        print(f"{name}: undeploy failed ({type(exc).__name__}: {exc}); left deployed",
              file=sys.stderr, flush=True)
    return times


async def run(sizes: list[int], rounds: int, agents: int = 3, baseline: bool = True,
              heartbeat: float = 1.0, status_interval: float = 0.5,
              ) -> dict[int, list[dict[str, float]]]:
    """Every size ``rounds`` times (and the 2-node baseline) on ``agents`` agents."""
    results: dict[int, list[dict[str, float]]] = {n: [] for n in [*([2] if baseline else []),
                                                                  *sizes]}
    with EmbeddedNats() as server:
        procs = {f"cp-{i}": start_agent(server.url, f"cp-{i}", f"n={i}", heartbeat,
                                        status_interval) for i in range(agents)}
        try:
            nc = await connect(NatsOptions(url=server.url))
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < agents:
                await asyncio.sleep(0.1)
            cluster = Cluster(server, dict(procs), engine)
            while await leader_name(cluster) is None:
                await asyncio.sleep(0.1)
            for r in range(rounds):
                for n in results:
                    results[n].append(await one(cluster, f"cp{r}-{n}", n))
            await nc.close()
        finally:
            stop_all(list(procs.values()))
    return results


def table(results: dict[int, list[dict[str, float]]], agents: int, rounds: int,
          heartbeat: float, status_interval: float) -> str:
    """The figures as printed: one row per size, median (min-max) per column."""
    lines = [f"{agents} agents (heartbeat {heartbeat:g} s, status interval "
             f"{status_interval:g} s), rounds: {rounds}; seconds, median (min-max); CPU "
             "seconds from deploy to all running"]
    for columns in (STEPS, CPU):
        lines.append(f"{'nodes':>6}  " + "  ".join(f"{s:>18}" for s in columns))
        for n, runs in results.items():
            cells = []
            for s in columns:
                v = [r[s] for r in runs]
                cells.append(f"{statistics.median(v):>6.2f} ({min(v):.2f}-{max(v):.2f})")
            lines.append(f"{n:>6}  " + "  ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


async def main(sizes: list[int], rounds: int, agents: int, heartbeat: float = 1.0,
               status_interval: float = 0.5) -> None:
    results = await run(sizes, rounds, agents, True, heartbeat, status_interval)
    print(table(results, agents, rounds, heartbeat, status_interval), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="the agents', seconds")
    parser.add_argument("--status-interval", type=float, default=0.5,
                        help="the agents' status refresh, seconds (their own default: 2)")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.rounds, args.agents, args.heartbeat,
                     args.status_interval))
