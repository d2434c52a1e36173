"""CPU per event of a keyed stage spread over agents: 1 replica against 3; and the
control plane of a large flow on many agents.

    python benchmarks/scale.py [--events 1000000] [--agents 1,2,4] [--keys 100]
                               [--delivery at-least-once] [--live]
    python benchmarks/scale.py --control-plane [--nodes 10000] [--cp-agents 20]

For each agent count A, A real `flowctl agent` processes (``keyed-<i>``, label
``role=keyed``) host a keyed ``transform`` (``partition_by``, 1 then 3 replicas, placed
by the leader over them), beside one more agent (``edge``) that hosts the ``generate``
source (``--events`` events, ``--keys`` keys) and the ``file`` sink. The source
partitions at the producer: each replica reads only its own keys' events. Each run has
its own server and agents.

By default the keyed agents join once every event waits in the flow's stream (the
keyed replicas were pending until then): the stage has more work than it can do at
once, the case more hosts are for. ``--live``: they run from the start and keep up.
Measured: the CPU seconds (user + system, from /proc) the keyed agents spent from when
they are live to the last event at the sink, per event; the same for every agent (the
edge too). Printed per A: 1 and 3 replicas and the ratio 3 / 1 (the target: at most
1.4; before partitioning at the producer every replica decoded every event).

``--control-plane``: instead, the rows of ``benchmarks/controlplane.py`` (one round) for
a flow of ``--nodes`` nodes on ``--cp-agents`` agents, beside the 2-node baseline:
deploy, start, all running, and the CPU seconds of the leader agent and of all agents.
The agents run with their own defaults (heartbeat and status refresh every 2 s): at
0.5 s, 10,000 replicas rewrite 20,000 status records a second, more than this 2-core
machine serves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import controlplane
from benchmarks.common import cpu_seconds, start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats

TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None


def flow(name: str, n: int, keys: int, replicas: int, delivery: str, out: Path) -> str:
    return f"""\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  sources:
    - id: gen
      type: generate
      config: {{count: {n}}}
      placement: {{agent: edge}}
  processors:
    - id: keyed
      type: transform
      inputs: [gen]
      replicas: {replicas}
      partition_by: "seq % {keys}"
      placement: {{labels: {{role: keyed}}}}
      config: {{set: {{k: "seq % {keys}"}}}}
  sinks:
    - id: out
      type: file
      inputs: [keyed]
      placement: {{agent: edge}}
      config: {{path: "{out}"}}
"""


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


async def produced(engine: FlowEngine, name: str, n: int) -> bool:
    return sum(s.counters.out for s in await engine.list_status(name) if s.node == "gen") >= n


async def wait_for(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 600
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def run(count: int, n: int, keys: int, replicas: int, delivery: str,
              backlog: bool) -> dict[str, float]:
    """CPU s per event with ``count`` keyed agents and ``replicas``: of the keyed
    agents (``keyed``) and of every agent (``all``), from when the keyed agents are
    live (backlog: every event waits in the stream by then) to the last event at the sink."""
    name = f"sc{count}x{replicas}"
    with EmbeddedNats() as server, tempfile.TemporaryDirectory(dir=TMP) as tmp:
        out = Path(tmp) / "out.jsonl"
        agents = [start_agent(server.url, "edge", "role=edge")]
        keyed: list[Any] = []
        try:
            nc = await connect(NatsOptions(url=server.url))
            engine = await FlowEngine.open(nc)
            loaded = parse_flow(flow(name, n, keys, replicas, delivery, out))

            async def live(k: int) -> bool:
                return len(await engine.live_agents()) >= k

            async def start_keyed() -> None:
                keyed.extend(start_agent(server.url, f"keyed-{i}", "role=keyed")
                             for i in range(count))
                await wait_for(lambda: live(count + 1), "the keyed agents live")

            await wait_for(lambda: live(1), "the edge agent live")
            if not backlog:
                await start_keyed()
            await engine.apply(loaded.name, loaded.spec)
            await engine.deploy(loaded.name)
            await engine.start(loaded.name)  # (backlog: the keyed replicas are pending)
            if backlog:
                await wait_for(lambda: produced(engine, name, n), "every event produced")
                await start_keyed()
            pids = [a.pid for a in keyed]
            before = {pid: cpu_seconds(pid) for pid in [*pids, agents[0].pid]}

            async def done() -> bool:
                return lines_in(out) >= n

            await wait_for(done, f"{n:,} events at the sink")
            spent = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
            await nc.close()
        finally:
            stop_all([*agents, *keyed])
    return {"keyed": sum(spent[p] for p in pids) / n, "all": sum(spent.values()) / n}


async def main(n: int, counts: list[int], keys: int, delivery: str, backlog: bool) -> None:
    print(f"events per run: {n:,}, keys: {keys}, delivery: {delivery}, "
          f"{'backlog' if backlog else 'live'}; CPU microseconds per event (user + system) "
          "of the keyed stage's agents and of every agent, 1 and 3 replicas, ratio 3 / 1")
    print(f"{'agents':>6} {'keyed x1':>9} {'keyed x3':>9} {'ratio':>6}   "
          f"{'all x1':>7} {'all x3':>7} {'ratio':>6}")
    for count in counts:
        one = await run(count, n, keys, 1, delivery, backlog)
        three = await run(count, n, keys, 3, delivery, backlog)
        print(f"{count:>6} {one['keyed'] * 1e6:>9.2f} {three['keyed'] * 1e6:>9.2f} "
              f"{three['keyed'] / one['keyed']:>6.2f}   {one['all'] * 1e6:>7.2f} "
              f"{three['all'] * 1e6:>7.2f} {three['all'] / one['all']:>6.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--agents", default="1,2,4", help="keyed agent counts, comma-separated")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--delivery", default="at-least-once",
                        choices=["at-least-once", "exactly-once"])
    parser.add_argument("--live", action="store_true",
                        help="the keyed agents run from the start (no backlog)")
    parser.add_argument("--control-plane", action="store_true",
                        help="print the control-plane rows of a large flow instead")
    parser.add_argument("--nodes", type=int, default=10_000,
                        help="--control-plane: nodes of the flow")
    parser.add_argument("--cp-agents", type=int, default=20,
                        help="--control-plane: agent processes")
    args = parser.parse_args()
    if args.control_plane:
        asyncio.run(controlplane.main([args.nodes], 1, args.cp_agents, heartbeat=2.0,
                                      status_interval=2.0))
        sys.exit(0)
    asyncio.run(main(args.events, [int(a) for a in args.agents.split(",")], args.keys,
                     args.delivery, not args.live))
