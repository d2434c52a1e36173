"""Keyed partitions, joins and windows with real agents (issue 16).

Per-key order holds under ``partition_by`` while an agent is SIGKILLed; a join of two
sources emits exactly the expected pairs and sends the unmatched to ``timeout``; a
tumbling count per key per second matches a reference computed here, also when the
window's agent is SIGKILLed mid-window (at-least-once: no window lost; a window emitted
twice carries the same figures).
"""

from __future__ import annotations

import collections
import json
import math
from datetime import UTC, datetime
from pathlib import Path

from tests.agents import (
    all_in_state,
    flow_yaml,
    live_agent,
    read_lines,
    run_flow,
    statuses,
    wait_until,
)

HB = 1.0
T0 = 1_700_000_000  # event time of seq 0 (epoch seconds)


async def _three_agents(nc, agents) -> dict:
    started = {"a1": agents("a1", "zone=a", heartbeat=HB),
               "a2": agents("a2", "zone=b", heartbeat=HB),
               "a3": agents("a3", "zone=b", heartbeat=HB)}
    for name in started:
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    return started


def _keyed_flow(out: Path, total: int, rate: int, keyed: str) -> str:
    """generate (a1) -> stamp: key and event time (a1) -> <keyed> (zone b) -> file (a1)."""
    return f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: {total}, rate: {rate}}}
      placement: {{agent: a1}}
  processors:
    - id: stamp
      type: transform
      inputs: [gen]
      placement: {{agent: a1}}
      config: {{set: {{key: "'k' + str(seq % 7)", ts: "{T0} + seq * 0.01"}}}}
{keyed}
  sinks:
    - id: out
      type: file
      inputs: [keyed]
      placement: {{agent: a1}}
      config: {{path: "{out}"}}
"""


async def _kill_the_agent_of(nc, procs, flow: str, key: str, out: Path, after: int) -> str:
    await wait_until(lambda: _lines(out, after), timeout=60, what=f"{after} results")
    victim = (await statuses(nc, flow))[key].agent
    procs[victim].kill()
    return victim


async def _lines(path: Path, n: int) -> bool:
    return len(read_lines(path)) >= n


async def test_per_key_order_holds_with_three_partitions_while_an_agent_is_killed(
        nc, agents, tmp_path) -> None:
    procs = await _three_agents(nc, agents)
    out, total = tmp_path / "out.jsonl", 3000
    keyed = """\
    - id: keyed
      type: transform
      inputs: [stamp]
      replicas: 3
      partition_by: key
      placement: {labels: {zone: b}}
      config: {set: {seen: "true"}}"""
    await run_flow(nc, flow_yaml("po", _keyed_flow(out, total, 300, keyed), "at-least-once"))
    victim = await _kill_the_agent_of(nc, procs, "po", "po.keyed.0", out, 600)

    async def everything() -> bool:
        return {json.loads(x)["seq"] for x in read_lines(out)} >= set(range(total))

    await wait_until(everything, timeout=120, what=f"all {total} events")
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    firsts: set[int] = set()
    for line in read_lines(out):
        event = json.loads(line)
        if event["seq"] not in firsts:  # a repeat (at-least-once) is not a reordering
            firsts.add(event["seq"])
            by_key[event["key"]].append(event["seq"])
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"{key} out of order: {_first_disorder(seqs)}"
    st = await statuses(nc, "po")
    assert all(s.agent != victim for k, s in st.items() if k.startswith("po.keyed."))
    repeats = len(read_lines(out)) - total
    print(f"partitions: {total} events, 7 keys in order after killing {victim}; "
          f"repeated {repeats}")


def _first_disorder(seqs: list[int]) -> str:
    for i in range(1, len(seqs)):
        if seqs[i] < seqs[i - 1]:
            return f"{seqs[i - 1]} then {seqs[i]} (at {i})"
    return ""


async def test_a_join_emits_the_pairs_and_sends_the_unmatched_to_timeout(
        nc, agents, tmp_path) -> None:
    agents("j1", heartbeat=HB)
    await wait_until(lambda: live_agent(nc, "j1"), what="agent")
    body = f"""\
  sources:
    - id: orders
      type: generate
      config: {{count: 30, rate: 100, template: {{item: "book-{{seq}}"}}}}
    - id: payments
      type: generate
      config: {{count: 20, rate: 50, template: {{paid: true}}}}
  processors:
    - id: match
      type: join
      inputs: [orders, payments]
      replicas: 2
      config: {{key: seq, within: 2s}}
  sinks:
    - id: paired
      type: file
      inputs: [match]
      config: {{path: "{tmp_path / 'paired.jsonl'}"}}
    - id: unpaid
      type: file
      inputs: [match.timeout]
      config: {{path: "{tmp_path / 'unpaid.jsonl'}"}}
"""
    await run_flow(nc, flow_yaml("shop", body, "at-least-once"))

    async def settled() -> bool:
        return (len(read_lines(tmp_path / "paired.jsonl")) >= 20
                and len(read_lines(tmp_path / "unpaid.jsonl")) >= 10)

    await wait_until(settled, timeout=30, what="20 pairs and 10 timeouts")
    paired = [json.loads(x) for x in read_lines(tmp_path / "paired.jsonl")]
    assert sorted(p["key"] for p in paired) == list(range(20))
    for p in paired:
        assert p["orders"] == {"item": f"book-{p['key']}", "seq": p["key"]}
        assert p["payments"] == {"paid": True, "seq": p["key"]}
    unpaid = [json.loads(x) for x in read_lines(tmp_path / "unpaid.jsonl")]
    assert sorted(u["key"] for u in unpaid) == list(range(20, 30))
    assert all(u["input"] == "orders" and u["missing"] == ["payments"] for u in unpaid)
    await wait_until(lambda: all_in_state(nc, "shop", ["shop.match.0", "shop.match.1"],
                                          "running"), what="join running")


    async def counted() -> bool:  # (the sinks write at once: the status record follows)
        st = await statuses(nc, "shop")
        match = [st["shop.match.0"], st["shop.match.1"]]
        return sum(s.counters.out_ports.get("timeout", 0) for s in match) >= 10

    await wait_until(counted, what="the timeouts counted")
    st = await statuses(nc, "shop")
    match = [st["shop.match.0"], st["shop.match.1"]]
    assert sum(s.counters.in_ for s in match) == 50  # each event taken by one partition
    assert sum(s.counters.out_ports.get("timeout", 0) for s in match) == 10
    assert all(s.held == 0 for s in match)


def _reference(total: int) -> dict[tuple[str, str], tuple[int, int]]:
    """(count, sum of seq) per key per event-time second of what `stamp` makes of
    seq 0..total-1, computed with the same float arithmetic."""
    figures: dict[tuple[str, str], tuple[int, int]] = {}
    for seq in range(total):
        second = math.floor(T0 + seq * 0.01)
        start = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        count, total_seq = figures.get((f"k{seq % 7}", start), (0, 0))
        figures[(f"k{seq % 7}", start)] = (count + 1, total_seq + seq)
    return figures


async def test_a_tumbling_count_per_key_survives_sigkill_of_its_agent(
        nc, agents, tmp_path) -> None:
    procs = await _three_agents(nc, agents)
    out, total = tmp_path / "out.jsonl", 3000
    keyed = """\
    - id: keyed
      type: window
      inputs: [stamp]
      placement: {labels: {zone: b}}
      config: {kind: tumbling, size: 1s, key: key, time: ts,
               aggregate: {count: count, total: sum(seq)}}"""
    await run_flow(nc, flow_yaml("tw", _keyed_flow(out, total, 300, keyed), "at-least-once"))
    reference = _reference(total)
    victim = await _kill_the_agent_of(nc, procs, "tw", "tw.keyed.0", out, 20)

    def emitted() -> list[dict]:
        return [json.loads(x) for x in read_lines(out)]

    async def every_window() -> bool:
        return {(w["key"], w["start"]) for w in emitted()} >= set(reference)

    await wait_until(every_window, timeout=120, what=f"all {len(reference)} windows")
    seen: dict[tuple[str, str], list[tuple[int, int]]] = collections.defaultdict(list)
    for w in emitted():
        seen[(w["key"], w["start"])].append((w["count"], w["total"]))
    assert set(seen) == set(reference)
    for window, figures in seen.items():
        assert set(figures) == {reference[window]}, (window, figures, reference[window])
    twice = sum(len(c) - 1 for c in seen.values())
    st = await statuses(nc, "tw")
    assert st["tw.keyed.0"].agent != victim
    print(f"window: {len(reference)} windows of {total} events exact after killing "
          f"{victim}; emitted twice: {twice}")


async def test_the_replicas_of_a_deployed_window_cannot_change(nc) -> None:
    import pytest

    from flowengine import FlowEngine
    from flowengine.errors import ValidationFailed
    from flowstore import parse_flow

    def text(replicas: int) -> str:
        return flow_yaml("rs", f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: 1}}}}
  processors:
    - {{id: tally, type: window, inputs: [gen], replicas: {replicas},
       config: {{size: 1s, key: seq}}}}
  sinks:
    - {{id: out, type: stdout, inputs: [tally]}}
""", "at-least-once")

    engine = await FlowEngine.open(nc)
    await engine.apply("rs", parse_flow(text(2)).spec)
    await engine.apply("rs", parse_flow(text(3)).spec)  # not deployed: any change goes
    await engine.deploy("rs")
    with pytest.raises(ValidationFailed) as failed:
        await engine.apply("rs", parse_flow(text(2)).spec)
    assert [i.code for i in failed.value.result.errors] == ["stateful_rescale"]
    assert "cannot change while the flow is deployed (3 -> 2)" in str(failed.value.result.errors[0])
    await engine.undeploy("rs")
    await engine.apply("rs", parse_flow(text(2)).spec)


async def test_a_stopped_source_and_window_resume_exactly_where_they_stopped(
        nc, agents, tmp_path) -> None:
    agents("s1", heartbeat=HB)
    await wait_until(lambda: live_agent(nc, "s1"), what="agent")
    raw, windows = tmp_path / "raw.jsonl", tmp_path / "windows.jsonl"
    body = f"""\
  sources:
    - {{id: gen, type: generate, config: {{count: 1500, rate: 300}}}}
  processors:
    - id: stamp
      type: transform
      inputs: [gen]
      config: {{set: {{key: "'k' + str(seq % 3)", ts: "{T0} + seq * 0.01"}}}}
    - id: tally
      type: window
      inputs: [stamp]
      config: {{size: 1s, key: key, time: ts, aggregate: {{n: count}}}}
  sinks:
    - {{id: raw, type: file, inputs: [stamp], config: {{path: "{raw}"}}}}
    - {{id: out, type: file, inputs: [tally], config: {{path: "{windows}"}}}}
"""
    engine = await run_flow(nc, flow_yaml("ss", body, "at-least-once"))
    await wait_until(lambda: _lines(raw, 400), timeout=30, what="400 events")
    await engine.stop("ss")
    held = (await statuses(nc, "ss"))["ss.tally.0"].held
    await engine.start("ss")

    async def everything() -> bool:
        return len(read_lines(raw)) >= 1500 and sum(
            json.loads(w)["n"] for w in read_lines(windows)) >= 1500

    await wait_until(everything, timeout=60, what="1500 events and their windows")
    seqs = [json.loads(x)["seq"] for x in read_lines(raw)]
    st = await statuses(nc, "ss")
    figures = {k: (s.counters.in_, s.counters.out) for k, s in st.items()}
    assert sorted(seqs) == list(range(1500)), (f"{len(seqs) - len(set(seqs))} repeated", figures)
    counts = [json.loads(w)["n"] for w in read_lines(windows)]
    assert sum(counts) == 1500 and len(counts) == 45
    print(f"stop/start: 1500 events once each; the window held {held} at stop")


async def test_a_partitioned_node_scaled_while_running_loses_nothing_and_keeps_order(
        nc, agents, tmp_path) -> None:
    from flowstore import parse_flow

    agents("p1", heartbeat=HB)
    await wait_until(lambda: live_agent(nc, "p1"), what="agent")
    out, total = tmp_path / "out.jsonl", 3000

    def text(replicas: int) -> str:
        keyed = f"""\
    - id: keyed
      type: transform
      inputs: [stamp]
      replicas: {replicas}
      partition_by: key
      config: {{set: {{seen: "true"}}}}"""
        return flow_yaml("sc", _keyed_flow(out, total, 400, keyed).replace(
            "      placement: {agent: a1}\n", ""), "at-least-once")

    engine = await run_flow(nc, text(2))
    for replicas in (3, 1, 2):  # more partitions, fewer, then back
        more = len(read_lines(out)) + 300
        await wait_until(lambda n=more: _lines(out, n), timeout=30, what="events flowing")
        await engine.apply("sc", parse_flow(text(replicas)).spec)

    async def everything() -> bool:
        return {json.loads(x)["seq"] for x in read_lines(out)} >= set(range(total))

    try:
        await wait_until(everything, timeout=60, what=f"all {total} events")
    except AssertionError:
        missing = sorted(set(range(total)) - {json.loads(x)["seq"] for x in read_lines(out)})
        raise AssertionError(f"{len(missing)} missing, first {missing[:20]}; keys "
                             f"{collections.Counter(f'k{s % 7}' for s in missing)}") from None
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    firsts: set[int] = set()
    for line in read_lines(out):
        event = json.loads(line)
        if event["seq"] not in firsts:
            firsts.add(event["seq"])
            by_key[event["key"]].append(event["seq"])
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"{key} out of order: {_first_disorder(seqs)}"
    consumers = {c.name for c in await nc.jetstream().consumers_info("FLOWCTL_sc")}
    assert consumers == {"stamp-in", "keyed-in-p0of2", "keyed-in-p1of2", "out-in"}
    print(f"rescaled 2 -> 3 -> 1 -> 2 while running: {total} events, none lost, each key "
          f"in order; repeated {len(read_lines(out)) - total}")


async def test_a_state_larger_than_a_message_is_kept_in_the_object_store(
        nc, agents, tmp_path) -> None:
    from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket

    first = agents("o1", "role=window", heartbeat=HB)
    agents("s1", "role=edge", heartbeat=HB)  # the source and sink: not killed here
    for name in ("o1", "s1"):
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    out = tmp_path / "out.jsonl"
    body = f"""\
  sources:
    - {{id: gen, type: generate, placement: {{labels: {{role: edge}}}},
       config: {{count: 1200, rate: 300, template: {{pad: "{'x' * 2000}"}}}}}}
  processors:
    - id: all
      type: window
      inputs: [gen]
      placement: {{labels: {{role: window}}}}
      config: {{size: 1000s, key: seq, time: "seq / 100", idle_timeout: 2s,
               aggregate: {{n: count, pads: collect(pad)}}}}
  sinks:
    - {{id: out, type: file, inputs: [all], config: {{path: "{out}"}},
       placement: {{labels: {{role: edge}}}}}}
"""
    await run_flow(nc, flow_yaml("big", body, "at-least-once"))
    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)

    async def spilled() -> bool:
        try:
            entry = await kv.get("big.all.0")
        except Exception:
            return False
        pointer = json.loads(entry.value)
        return "object" in pointer and pointer["bytes"] > 1_000_000

    await wait_until(spilled, timeout=30, what="a state over 1 MB in the object store")
    first.kill()  # mid-window: the state is restored from the object
    agents("o2", "role=window", heartbeat=HB)

    async def windows() -> list[dict]:
        return [json.loads(x) for x in read_lines(out)]

    await wait_until(lambda: _lines(out, 1200), timeout=90, what="a window per key")
    got = {w["key"]: (w["n"], len(w["pads"])) for w in await windows()}
    assert got == {seq: (1, 1) for seq in range(1200)}
