"""Events per second through generate -> transform across two agent processes, next to
a raw nats-py publish -> relay -> subscribe chain measured in the same run.

    python benchmarks/dataplane.py [--events 100000] [--rounds 2]

Both chains have the same shape: a publishing process, a relaying process that decodes,
adds a field and re-encodes, and this process counting what comes out. flowctl's chain
is two real `flowctl agent`s (generate placed on one, transform on the other); its
events also carry the metadata headers. Throughput is measured between the first and
the last event received, so start-up is not counted. Prints the ratio flowctl / raw.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Counter, start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats

HERE = Path(__file__).resolve().parent

FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  sources:
    - id: gen
      type: generate
      config: {{count: {n}, template: {{greeting: hello}}}}
      placement: {{agent: bench-a}}
  processors:
    - id: work
      type: transform
      inputs: [gen]
      config: {{set: {{double: "seq * 2"}}}}
      placement: {{agent: bench-b}}
"""


async def raw(url: str, n: int) -> float:
    nc = await connect(NatsOptions(url=url))
    counter = Counter(n)
    await nc.subscribe("raw.out", cb=counter.on_msg, pending_msgs_limit=2_000_000)
    await nc.flush()
    relay = subprocess.Popen(
        [sys.executable, str(HERE / "raw_relay.py"), "relay", url], stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        pub = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "raw_relay.py"), "pub", url, str(n)
        )
        await asyncio.wait_for(counter.done.wait(), 300)
        await pub.wait()
    finally:
        stop_all([relay])
        await nc.close()
    return counter.rate()


async def flowctl(url: str, n: int, delivery: str, name: str) -> float:
    nc = await connect(NatsOptions(url=url))
    counter = Counter(n)
    await nc.subscribe(f"flowctl.{name}.work.out", cb=counter.on_msg,
                       pending_msgs_limit=2_000_000)
    await nc.flush()
    engine = await FlowEngine.open(nc)
    loaded = parse_flow(FLOW.format(name=name, n=n, delivery=delivery))
    await engine.apply(loaded.name, loaded.spec)
    await engine.deploy(loaded.name)
    await engine.start(loaded.name)
    try:
        await asyncio.wait_for(_drained(engine, name, counter), 600)
    finally:
        await engine.undeploy(loaded.name, force=True)
        await nc.close()
    return counter.rate()


async def _drained(engine: FlowEngine, name: str, counter: Counter) -> None:
    """Every event arrived, or (at-most-once under overload) every event the source
    emitted was either relayed or counted as dropped, and every relayed one arrived."""
    while not counter.done.is_set():
        st = {f"{s.node}": s for s in await engine.list_status(name)}
        gen, work = st.get("gen"), st.get("work")
        if gen and work and gen.state.value == "completed":
            c = work.counters
            if c.in_ + c.dropped >= gen.counters.out and counter.count >= c.out:
                if c.dropped:
                    print(f"  {name}: relay dropped {c.dropped:,} of {gen.counters.out:,} "
                          "(overload, counted)")
                return
        await asyncio.sleep(0.2)


async def main(n: int, rounds: int) -> None:
    with EmbeddedNats() as server:
        url = server.url
        agents = [start_agent(url, "bench-a", "role=a"), start_agent(url, "bench-b", "role=b")]
        try:
            nc = await connect(NatsOptions(url=url))
            engine = await FlowEngine.open(nc)
            while len(await engine.live_agents()) < 2:
                await asyncio.sleep(0.1)
            await nc.close()
            results: dict[str, list[float]] = {"raw": [], "at-most-once": [], "at-least-once": []}
            for r in range(rounds):
                results["raw"].append(await raw(url, n))
                results["at-most-once"].append(await flowctl(url, n, "at-most-once", f"amo{r}"))
                results["at-least-once"].append(
                    await flowctl(url, n, "at-least-once", f"alo{r}")
                )
        finally:
            stop_all(agents)
    best = {k: max(v) for k, v in results.items()}
    print(f"events per run: {n}, rounds: {rounds} (best of rounds shown)")
    print(f"{'chain':<34}{'events/s':>12}{'ratio to raw':>14}")
    print(f"{'raw nats-py relay (baseline)':<34}{best['raw']:>12,.0f}{1.0:>14.2f}")
    for mode in ("at-most-once", "at-least-once"):
        label = f"flowctl {mode}"
        print(f"{label:<34}{best[mode]:>12,.0f}{best[mode] / best['raw']:>14.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
