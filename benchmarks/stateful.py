"""Events per second through a keyed window (1 and 3 replicas), next to a plain transform
measured in the same run.

    python benchmarks/stateful.py [--events 200000] [--rounds 3] [--keys 100]

Each flow is generate (on bench-a) -> the measured node -> file sink, at-least-once, on
two real `flowctl agent` processes (bench-a, bench-b; the measured node's replicas are
placed by the leader, spread over both). The measured node is:

* ``transform``: sets one field (the baseline: no state, no partitions);
* ``window x1``: a tumbling 1 s processing-time window counting per key (``seq % keys``),
  one replica: its state checkpointed every second with its input positions;
* ``window x3``: the same with 3 replicas, partitioned by the key (each replica reads
  every input and takes its own keys);
* ``transform, fused``: the transform with its sink in one replica (what a flow gets by
  default: a window cannot fuse, so the rows above keep the sink apart with
  ``fuse: false`` and compare the nodes over the same hops; this row is for reference).

Throughput is the measured node's ``in`` counter (from the agents' status records,
written every 0.1 s) between its first event and its last: what the node took in, not
what the sink wrote (a window writes one event per key per second). Every configuration
runs ``--rounds`` times, interleaved; median and spread (min-max) are printed, with the
ratio of medians to the transform.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats

TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None
NODES = {
    "transform": ("transform", 1, '{set: {k: "seq % KEYS"}}'),
    "window x1": ("window", 1, '{size: 1s, key: "seq % KEYS", aggregate: {n: count}}'),
    "window x3": ("window", 3, '{size: 1s, key: "seq % KEYS", aggregate: {n: count}}'),
    "transform, fused": ("transform", 1, '{set: {k: "seq % KEYS"}}'),
}


def flow(name: str, n: int, kind: str, replicas: int, config: str, out: Path,
         fuse: bool = False) -> str:
    return f"""\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  sources:
    - {{id: gen, type: generate, config: {{count: {n}}}, placement: {{agent: bench-a}}}}
  processors:
    - {{id: node, type: {kind}, inputs: [gen], replicas: {replicas}, config: {config}}}
  sinks:
    - {{id: out, type: file, inputs: [node], config: {{path: "{out}"}}, fuse: {str(fuse).lower()}}}
"""


async def measure(engine: FlowEngine, name: str, n: int, label: str, keys: int) -> float:
    kind, replicas, config = NODES[label]
    with tempfile.TemporaryDirectory(dir=TMP) as tmp:
        text = flow(name, n, kind, replicas, config.replace("KEYS", str(keys)),
                    Path(tmp) / "out.jsonl", fuse="fused" in label)
        loaded = parse_flow(text)
        await engine.apply(loaded.name, loaded.spec)
        await engine.deploy(loaded.name)
        await engine.start(loaded.name)
        first = last = 0.0
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                taken = sum(s.counters.in_ for s in await engine.list_status(name)
                            if s.node == "node")
                now = time.perf_counter()
                if taken and not first:
                    first = now
                if taken >= n:
                    last = now
                    break
                await asyncio.sleep(0.05)
        finally:
            await engine.undeploy(loaded.name, force=True)
        return n / (last - first) if last > first else 0.0


async def main(n: int, rounds: int, keys: int) -> None:
    results: dict[str, list[float]] = {label: [] for label in NODES}
    with EmbeddedNats() as server:
        agents = [start_agent(server.url, "bench-a", "role=a", status_interval=0.1),
                  start_agent(server.url, "bench-b", "role=b", status_interval=0.1)]
        try:
            nc = await connect(NatsOptions(url=server.url))
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 2:
                await asyncio.sleep(0.1)
            for r in range(rounds):
                for i, label in enumerate(NODES):
                    results[label].append(await measure(engine, f"s{r}-{i}", n, label, keys))
            await nc.close()
        finally:
            stop_all(agents)
    base = statistics.median(results["transform"])
    print(f"events per run: {n:,}, keys: {keys}, rounds: {rounds} (median, min, max events/s "
          "taken in by the node)")
    print(f"{'node':<18}{'median':>12} {'min':>11} {'max':>11} {'ratio':>7}")
    for label, values in results.items():
        print(f"{label:<18}{statistics.median(values):>12,.0f} {min(values):>11,.0f} "
              f"{max(values):>11,.0f} {statistics.median(values) / base:>7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds, args.keys))
