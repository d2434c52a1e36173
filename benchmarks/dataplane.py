"""Events per second through flowctl chains, next to a raw nats-py relay measured in the
same run.

    python benchmarks/dataplane.py [--events 200000] [--rounds 3] [--end-to-end]

Baseline: a raw nats-py publisher process -> a relay process (decode, add a field,
encode, publish) -> this process counting messages (one event each).

flowctl: real `flowctl agent` processes (bench-a, bench-b). "2 stages" is generate (on
bench-a) -> transform (bench-b) -> file sink (bench-a); "8 stages" is generate -> 7
transforms placed alternately on the two agents -> file sink (on the other agent than
the last transform), so every hop crosses NATS; "8 stages fused" runs all of it on
bench-a, where the 7 transforms run fused (one replica, events passed in memory) and
is compared with the chain's compute floor. Events are counted at the
sink: the file it writes (on tmpfs) is tailed and its lines counted, so frames are
unpacked and nothing is counted before it was really delivered. Throughput is measured
between the first event written and the moment 99 % of them were (the sink flushes its file
buffer every second: the last lines of a run would measure that tick); start-up is not
counted. For
at-most-once, events dropped under overload are counted by flowctl and reported (the
rate is of what was delivered).

``--end-to-end`` (600,000 events): the ceiling is the same chain written by hand with
nats-py and frames of 128 JSON lines (raw_relay.py: publisher -> relay -> file writer,
three processes); flowctl's 2-stage chains, at-most-once and at-least-once, are timed
against it from `flowctl start` (the publisher's launch) to the last event in the sink's
file (of what arrived: at-most-once drops under overload are counted and printed), and
ratios printed. An 8-stage chain with every node on one agent is measured at
the sink (as above) against its compute floor.

Every configuration runs ``--rounds`` times, interleaved, so the machine's noise is
shared; the median and the spread (min-max) are printed, with ratios of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Counter, stop_all, two_agents
from componentmanager.components.processors import Transform, TransformConfig
from componentmanager.components.sources import GenerateConfig, GenerateSource
from componentmanager.dataplane.wire import FRAME_EVENTS, encode_lines
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect

HERE = Path(__file__).resolve().parent
TMP = "/dev/shm" if os.path.isdir("/dev/shm") else None


def chain_flow(name: str, n: int, delivery: str, stages: int, out: Path,
               one_agent: bool = False) -> str:
    lines = [
        "apiVersion: flowctl/v1", "kind: Flow", f"metadata: {{name: {name}}}", "spec:",
        f"  delivery: {delivery}", "  sources:",
        "    - id: gen", "      type: generate",
        f"      config: {{count: {n}, template: {{greeting: hello}}}}",
        "      placement: {agent: bench-a}", "  processors:",
    ]
    upstream = "gen"
    for i in range(1, stages):
        agent = "bench-b" if i % 2 and not one_agent else "bench-a"
        lines += [f"    - id: t{i}", "      type: transform", f"      inputs: [{upstream}]",
                  f'      config: {{set: {{f{i}: "seq * 2"}}}}',
                  f"      placement: {{agent: {agent}}}"]
        upstream = f"t{i}"
    sink_agent = "bench-a" if (stages - 1) % 2 else "bench-b"  # not where the last stage is
    sink_agent = "bench-a" if one_agent else sink_agent
    lines += ["  sinks:", "    - id: out", "      type: file", f"      inputs: [{upstream}]",
              f'      config: {{path: "{out}"}}', f"      placement: {{agent: {sink_agent}}}"]
    return "\n".join(lines) + "\n"


class FileTail:
    """Counts the lines of a growing file: when the first arrived and when 99 % of
    ``n`` had (the last lines of a run wait in the sink's buffer for its next flush, up
    to a second: counted, that tick would be measured instead of the chain)."""

    def __init__(self, path: Path, n: int) -> None:
        self.path = path
        self.n = n
        self.count = 0
        self.first = self.last = 0.0
        self.latest = 0.0  # when the latest line came (the nth: the run's end)
        self._mark = max(2, int(n * 0.99))
        self._at_mark = 0

    async def until(self, done: asyncio.Event) -> None:
        while not self.path.exists():
            if done.is_set():
                return
            await asyncio.sleep(0.01)
        with open(self.path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 20)
                if chunk:
                    now = time.perf_counter()
                    if not self.count:
                        self.first = now
                    self.count += chunk.count(b"\n")
                    self.latest = now
                    if not self._at_mark and self.count >= self._mark:
                        self.last, self._at_mark = now, self.count
                    continue
                if done.is_set() or self.count >= self.n:
                    return
                await asyncio.sleep(0.002)

    def rate(self) -> float:
        span = self.last - self.first
        return (self._at_mark - 1) / span if self._at_mark > 1 and span > 0 else 0.0


async def raw(url: str, n: int) -> tuple[float, int]:
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
    return counter.rate(), 0


async def _helper(*args: str) -> subprocess.Popen:
    """A process of raw_relay.py, once it says it is ready."""
    proc = subprocess.Popen([sys.executable, str(HERE / "raw_relay.py"), *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


async def framed_relay(url: str, n: int, stored: bool = False) -> float:
    """The framed hand-written chain, end to end (events/s from launching its publisher
    to the last event in the sink's file): publisher -> relay -> file writer, frames of
    128 JSON lines, each its own process (the relay and the writer running already, as
    the agents and the deployed flow are for flowctl). ``stored``: through a JetStream
    stream, at-least-once (raw_relay.py's ``jpub``/``jrelay``/``jsink``)."""
    from benchmarks.raw_relay import JIN, JOUT, JSTREAM

    kind = "j" if stored else "f"
    nc = await connect(NatsOptions(url=url))
    js = nc.jetstream()
    if stored:
        from nats.js.api import RetentionPolicy, StreamConfig
        await js.add_stream(StreamConfig(name=JSTREAM, subjects=[JIN, JOUT],
                                         retention=RetentionPolicy.INTEREST))
    with tempfile.TemporaryDirectory(dir=TMP) as tmp:
        out = Path(tmp) / "out.jsonl"
        helpers = [await _helper(f"{kind}sink", url, str(out)), await _helper(f"{kind}relay", url)]
        done, tail = asyncio.Event(), FileTail(out, n)
        tailing = asyncio.create_task(tail.until(done))
        try:
            started = time.perf_counter()
            pub = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "raw_relay.py"), f"{kind}pub", url, str(n))
            await asyncio.wait_for(asyncio.shield(tailing), 300)
            await pub.wait()
        finally:
            done.set()
            await tailing
            stop_all(helpers)
            if stored:
                await js.delete_stream(JSTREAM)
            await nc.close()
    return tail.count / (tail.latest - started)


async def flowctl(url: str, n: int, delivery: str, stages: int, name: str,
                  one_agent: bool = False) -> tuple[float, int, float]:
    """(events/s at the sink, events not written, events/s end to end: from `flowctl
    start` to the last event in the sink's file)."""
    nc = await connect(NatsOptions(url=url))
    engine = await FlowEngine.open(nc)
    with tempfile.TemporaryDirectory(dir=TMP) as tmp:
        out = Path(tmp) / "out.jsonl"
        loaded = parse_flow(chain_flow(name, n, delivery, stages, out, one_agent))
        done = asyncio.Event()
        tail = FileTail(out, n)
        tailing = asyncio.create_task(tail.until(done))
        await engine.apply(loaded.name, loaded.spec)
        await engine.deploy(loaded.name)
        started = time.perf_counter()
        await engine.start(loaded.name)
        try:
            dropped = await asyncio.wait_for(_delivered(engine, name, tail, n), 600)
        finally:
            done.set()
            await tailing
            await engine.undeploy(loaded.name, force=True)
            await nc.close()
    return tail.rate(), dropped, tail.count / (tail.latest - started)


async def _delivered(engine: FlowEngine, name: str, tail: FileTail, n: int) -> int:
    """Wait until the sink wrote every event, or every event is written or counted as
    dropped somewhere along the chain, or nothing moved for 10 s (then what is missing
    was lost without being counted, which is reported); returns the events not written."""
    last, still = -1, 0.0
    while True:
        await asyncio.sleep(0.1)
        if tail.count >= n:
            return 0
        statuses = await engine.list_status(name)
        dropped = sum(s.counters.dropped + s.counters.errors for s in statuses)
        source_done = any(s.node == "gen" and s.state.value == "completed" for s in statuses)
        if source_done and dropped and tail.count + dropped >= n:
            await asyncio.sleep(0.5)  # the sink's last flush
            return dropped
        still = still + 0.1 if tail.count == last else 0.0
        last = tail.count
        if source_done and still >= 10:
            print(f"  {name}: {n - tail.count - dropped:,} events not accounted for "
                  f"(dropped {dropped:,}, written {tail.count:,})", file=sys.stderr)
            return n - tail.count


def compute_floor(stages: int, n: int) -> float:
    """Events/s of the chain's own work on one core with free hops: the source's
    ``make_event``, every transform's ``apply_owned_frame`` (as in a chain: each owns
    the events it decoded or a transform fed it) and the sink's encoding, called in this
    process frame by frame (no NATS, no decoding, no asyncio). What an N-stage chain can
    keep of a 2-stage one is bounded by the ratio of these floors whenever the chains are
    bound by CPU."""
    source = GenerateSource(GenerateConfig(count=n, template={"greeting": "hello"}), None)
    transforms = [Transform(TransformConfig(set={f"f{i}": "seq * 2"}), None)
                  for i in range(1, stages)]
    sink = io.BytesIO()
    started = time.perf_counter()
    for first in range(0, n, FRAME_EVENTS):
        events = [source.make_event(s) for s in range(first, min(n, first + FRAME_EVENTS))]
        for transform in transforms:  # what each does per frame: it owns its events
            events = transform.apply_owned_frame(events)  # (decoded, or a transform's)
        sink.write(encode_lines(events) + b"\n")
    return n / (time.perf_counter() - started)


def _fmt(values: list[float]) -> str:
    return (f"{statistics.median(values):>12,.0f} {min(values):>11,.0f} "
            f"{max(values):>11,.0f}")


async def main(n: int, rounds: int, delivery_only: bool = False,
               fused_only: bool = False) -> None:
    configs = [("raw nats-py relay (baseline)", None, 0)]
    for delivery in ("at-most-once", "at-least-once"):
        for stages in (2, 8):
            if not (delivery_only or fused_only) or (delivery, stages) == ("at-least-once", 2):
                configs.append((f"flowctl {delivery}, {stages} stages", delivery, stages))
        if not delivery_only:  # the 7 transforms on one agent run fused, in one replica
            configs.append((f"flowctl {delivery}, 8 stages fused", delivery, 8))
    configs.append(("flowctl exactly-once, 2 stages", "exactly-once", 2))
    results: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    drops: dict[str, list[int]] = {label: [] for label, _, _ in configs}
    floor_of: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    async with two_agents() as url:
        for r in range(rounds):
            for i, (label, delivery, stages) in enumerate(configs):
                if delivery is None:
                    rate, dropped = await raw(url, n)
                else:
                    rate, dropped, _ = await flowctl(url, n, delivery, stages, f"b{r}-{i}",
                                                     one_agent="fused" in label)
                if "fused" in label:  # its floor right after it: the same machine load
                    floor_of[label].append(compute_floor(stages, n))
                results[label].append(rate)
                drops[label].append(dropped)
    base = statistics.median(results[configs[0][0]])
    print(f"events per run: {n:,}, rounds: {rounds} (median, min, max events/s)")
    print(f"{'chain':<38}{'median':>12} {'min':>11} {'max':>11} {'ratio':>7}  dropped")
    for label, _, _ in configs:
        ratio = statistics.median(results[label]) / base
        lost = f"{max(drops[label]):,}" if any(drops[label]) else "0"
        print(f"{label:<38}{_fmt(results[label])} {ratio:>7.2f}  {lost}")
    once = statistics.median(results["flowctl exactly-once, 2 stages"])
    least = statistics.median(results["flowctl at-least-once, 2 stages"])
    per_round = sorted(a / b for a, b in zip(results["flowctl exactly-once, 2 stages"],
                                              results["flowctl at-least-once, 2 stages"],
                                              strict=True))
    print(f"exactly-once, 2 stages: {once / least:.2f}x the events/s of at-least-once "
          f"(per round: {', '.join(f'{r:.2f}' for r in per_round)})")
    if delivery_only:
        return
    for delivery in ("at-most-once", "at-least-once"):
        label = f"flowctl {delivery}, 8 stages fused"
        ratios = sorted(a / b for a, b in zip(results[label], floor_of[label], strict=True))
        print(f"{delivery}: 8 stages fused on one agent run at {statistics.median(ratios):.2f}x "
              f"their compute floor (per round, against the floor measured right after: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
    if fused_only:
        return
    floors = {stages: [compute_floor(stages, n) for _ in range(rounds)] for stages in (2, 8)}
    for delivery in ("at-most-once", "at-least-once"):
        two = statistics.median(results[f"flowctl {delivery}, 2 stages"])
        eight = statistics.median(results[f"flowctl {delivery}, 8 stages"])
        print(f"{delivery}: 8 stages keep {eight / two:.2f}x the events/s of 2 stages")
    print("compute floor (the chain's own work in one process, no NATS, one core):")
    for stages, rates in floors.items():
        print(f"  {stages} stages {_fmt(rates)}")
    bound = statistics.median(floors[8]) / statistics.median(floors[2])
    print(f"  8 stages can keep at most {bound:.2f}x of 2 when both are bound by CPU")


async def end_to_end(n: int, rounds: int) -> None:
    """flowctl against the framed hand-written chain, end to end, and an 8-stage chain on
    one agent against its compute floor (see the module doc)."""
    configs = [("hand-written framed relay", None, 0, False),
               ("hand-written framed relay, JetStream", "stored", 0, False),
               ("flowctl at-most-once, 2 stages", "at-most-once", 2, False),
               ("flowctl at-least-once, 2 stages", "at-least-once", 2, False),
               ("flowctl at-most-once, 8 stages, one agent", "at-most-once", 8, True),
               ("flowctl at-least-once, 8 stages, one agent", "at-least-once", 8, True)]
    results: dict[str, list[float]] = {label: [] for label, *_ in configs}
    lost: dict[str, int] = {label: 0 for label, *_ in configs}
    async with two_agents() as url:
        for r in range(rounds):
            for i, (label, delivery, stages, one) in enumerate(configs):
                if delivery in (None, "stored"):
                    results[label].append(await framed_relay(url, n, delivery == "stored"))
                    continue
                rate, dropped, whole = await flowctl(url, n, delivery, stages, f"e{r}-{i}", one)
                results[label].append(rate if one else whole)
                lost[label] = max(lost[label], dropped)
    floor = statistics.median([compute_floor(8, n) for _ in range(rounds)])
    base = statistics.median(results[configs[0][0]])
    print(f"events per run: {n:,}, rounds: {rounds} (median, min, max events/s)")
    print("end to end (from `flowctl start`, or launching the publisher, to the last event "
          "in the sink's file):")
    print(f"{'chain':<44}{'median':>12} {'min':>11} {'max':>11} {'ratio':>7}  dropped")
    for label, _, _, one in configs:
        if one:
            continue
        ratio = statistics.median(results[label]) / base
        print(f"{label:<44}{_fmt(results[label])} {ratio:>7.2f}  {lost[label]:,}")
        if label != configs[0][0]:  # the relay ran just before, in the same round
            rounds_ = sorted(a / b for a, b in zip(results[label], results[configs[0][0]],
                                                    strict=True))
            print(f"{'':<4}per round: {', '.join(f'{x:.2f}' for x in rounds_)}")
    stored = statistics.median(results["hand-written framed relay, JetStream"])
    print(f"at-least-once against the same chain by hand through JetStream ({stored:,.0f}): "
          f"{statistics.median(results['flowctl at-least-once, 2 stages']) / stored:.2f}x; "
          f"the JetStream chain itself: {stored / base:.2f}x of the core NATS one")
    print(f"one agent, at the sink (first to 99 %), against the chain's compute floor "
          f"({floor:,.0f} events/s):")
    for label, _, _, one in configs:
        if one:
            ratio = statistics.median(results[label]) / floor
            print(f"{label:<44}{_fmt(results[label])} {ratio:>7.2f}  {lost[label]:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delivery-only", action="store_true",
                        help="only the 2-stage chain, at-least-once against exactly-once")
    parser.add_argument("--fused-only", action="store_true",
                        help="only the 8-stage chains fused on one agent, against the floor")
    parser.add_argument("--end-to-end", action="store_true",
                        help="flowctl against the framed hand-written relay, end to end, "
                        "and 8 stages on one agent against their compute floor "
                        "(600,000 events unless --events says otherwise)")
    args = parser.parse_args()
    if args.end_to_end:
        events = 600_000 if "--events" not in sys.argv else args.events
        asyncio.run(end_to_end(events, args.rounds))
    else:
        asyncio.run(main(args.events, args.rounds, args.delivery_only, args.fused_only))
