"""Fusion: a source, consecutive stateless processors and a sink run in one replica, each
still its own node.

The plan (pure), its translation and placement with plain data; then real agents: a
fused chain whose middle node fails some events and whose last filters some, with every
node's counters and dead letters exact; ``fuse: false`` keeping nodes apart; the plan in
``flowctl describe``; and an at-least-once fused chain losing nothing across a
``kill -9`` of its agent.
"""

from __future__ import annotations

import json

import pytest
import yaml

from componentmanager.agent.reconcile import stop_groups
from componentmanager.components.sources import GenerateSource
from componentmanager.runners.checkpoint import SourceCheckpoint
from flowengine.plan import describe_plan, fusion_plan
from flowengine.translate import translate
from flowstore import parse_flow
from flowstore.models import AgentRecord, ComponentConfig, utcnow
from flowstore.nats import CHECKPOINTS_BUCKET, open_bucket
from flowstore.placement import place
from flowstore.streams import dead_letter_counts
from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until
from tests.conftest import run_cli

CHAIN = """\
  sources:
    - id: gen
      type: generate
      config: {{count: {count}{rate}}}
  processors:
    - id: a
      type: transform
      inputs: [gen]
      config: {{set: {{a: "seq * 2"}}}}
    - id: b
      type: transform
      inputs: [a]
      config: {{set: {{b: "100 / (seq % 5)"}}}}{fuse_b}
    - id: c
      type: filter
      inputs: [b]
      config: {{where: "seq % 2 == 0"}}
  sinks:
    - id: out
      type: file
      inputs: [c]
      config: {{path: "{out}"}}
"""


def chain(out: object, count: int, fuse_b: bool = True, rate: int = 0, b2: str = "") -> str:
    text = CHAIN.format(count=count, out=out, rate=f", rate: {rate}" if rate else "",
                        fuse_b="" if fuse_b else "\n      fuse: false")
    return text.replace('b: "100 / (seq % 5)"', f'b: "100 / (seq % 5)"{b2}')


def spec(text: str, delivery: str = "at-least-once"):  # type: ignore[no-untyped-def]
    return parse_flow(flow_yaml("f", text, delivery)).spec


# -- the plan, pure ---------------------------------------------------------------------
def test_a_chain_from_source_to_sink_fuses_and_fuse_false_keeps_a_node_apart() -> None:
    plan = fusion_plan(spec(chain("/tmp/x", 1)))
    assert plan.chains == [["gen", "a", "b", "c", "out"]]
    assert plan.port == {"gen": "out", "a": "out", "b": "out", "c": "out"}
    apart = fusion_plan(spec(chain("/tmp/x", 1, fuse_b=False)))
    assert apart.chains == [["gen", "a"], ["c", "out"]]
    assert describe_plan(apart)["apart"] == ["a -> b: b says fuse: false",
                                             "b -> c: b says fuse: false"]
    # sources and sinks with I/O of their own (a subscription, a database) stay apart
    own = chain("/tmp/x", 1).replace("type: generate\n      config: {count: 1}",
                                     "type: nats\n      config: {subject: x.in}")
    own = own.replace('type: file\n      inputs: [c]\n      config: {path: "/tmp/x"}',
                      "type: kv\n      inputs: [c]\n      config: {bucket: b, key: seq}")
    plan = fusion_plan(spec(own))
    assert plan.chains == [["a", "b", "c"]]
    assert describe_plan(plan)["apart"] == [
        "gen -> a: gen (nats) keeps its own replica (its own I/O)",
        "c -> out: out (kv) keeps its own replica (its own I/O)"]


def test_no_fusion_across_replicas_placement_branches_keys_or_exactly_once() -> None:
    body = """\
  sources:
    - {id: gen, type: generate}
  processors:
    - {id: a, type: transform, inputs: [gen]}
    - {id: b, type: transform, inputs: [a], replicas: 2}
    - {id: c, type: transform, inputs: [b], replicas: 2, placement: {agent: x}}
    - {id: d, type: transform, inputs: [c], replicas: 2, placement: {agent: x}}
    - {id: e, type: transform, inputs: [c], replicas: 2, placement: {agent: x}}
    - {id: k, type: transform, inputs: [e], replicas: 2, placement: {agent: x},
       partition_by: user}
    - {id: w, type: batch, inputs: [k], replicas: 2, placement: {agent: x}}
  sinks:
    - {id: out, type: file, inputs: [d, w], config: {path: /tmp/x}}
"""
    plan = fusion_plan(spec(body))
    assert plan.chains == [["gen", "a"]]
    assert dict(((u, d), why) for u, d, why in plan.apart) == {
        ("a", "b"): "replicas differ (1 and 2)",
        ("b", "c"): "placements differ",
        ("c", "d"): "c has other consumers",
        ("c", "e"): "c has other consumers",
        ("e", "k"): "k is partitioned",
        ("k", "w"): "k is partitioned",
        ("d", "out"): "out has other inputs",
        ("w", "out"): "w (batch) keeps its own replica (stateful or buffering)",
    }
    once = fusion_plan(spec(chain("/tmp/x", 1), "exactly-once"))
    assert once.chains == [] and "exactly-once" in once.apart[0][2]


def test_translate_names_the_chain_and_placement_keeps_it_on_one_agent() -> None:
    configs = translate("f", spec(chain("/tmp/x", 1)), flow_revision=1, enabled=True)
    assert configs["f.gen"].fused == configs["f.out"].fused == ["gen", "a", "b", "c", "out"]
    assert (configs["f.gen"].fused_next, configs["f.a"].fused_next,
            configs["f.c"].fused_next, configs["f.out"].fused_next) == ("a", "b", "out", None)
    assert (configs["f.gen"].fused_head, configs["f.b"].fused_head) == (None, "gen")
    assert configs["f.out"].fused_port is None
    for cfg in configs.values():
        cfg.replicas = 3
    agents = [AgentRecord(name=n, host="h", pid=1, version="0", started_at=utcnow(),
                          instance=n) for n in ("x", "y", "z")]
    placed = place(configs.values(), agents)
    assert placed.assignments["f.b"] == placed.assignments["f.out"] == placed.assignments["f.gen"]
    assert len(set(placed.assignments["f.gen"])) == 3  # the head's replicas still spread
    # a member placed alone (its head unchanged) follows the head's current assignments
    configs["f.gen"].assignments = ["z", "y", "x"]
    alone = place([configs["f.b"]], agents, others=[configs["f.gen"]])
    assert alone.assignments["f.b"] == ["z", "y", "x"]


def test_an_at_most_once_source_waits_only_for_what_is_not_fused_with_it() -> None:
    whole = translate("f", spec(chain("/tmp/x", 1), "at-most-once"), flow_revision=1,
                      enabled=True)
    assert whole["f.gen"].downstream == {}  # all in its chain: waited for on its agent
    apart = translate("f", spec(chain("/tmp/x", 1, fuse_b=False), "at-most-once"),
                      flow_revision=1, enabled=True)
    assert apart["f.gen"].downstream == {"b": 1, "c": 1, "out": 1}


def test_a_chain_stops_head_first() -> None:
    configs = translate("f", spec(chain("/tmp/x", 1)), flow_revision=1, enabled=True)
    known = [(f"f.{n}.0", configs[f"f.{n}"].role, 0) for n in ("out", "c", "b", "a", "gen")]
    chain_at = {f"f.{n}.0": configs[f"f.{n}"].fused_at for n in ("out", "c", "b", "a", "gen")}
    assert stop_groups(known, chain_at) == [["f.gen.0"], ["f.a.0"], ["f.b.0"], ["f.c.0"],
                                            ["f.out.0"]]


# -- real agents --------------------------------------------------------------------------
def _expected(count: int) -> dict[str, tuple[int, int, int, int]]:
    """node -> (in, out, filtered, errors) for the chain over ``count`` events."""
    failing = sum(1 for s in range(count) if s % 5 == 0)
    passed = [s for s in range(count) if s % 5]
    even = sum(1 for s in passed if s % 2 == 0)
    return {"a": (count, count, 0, 0), "b": (count, len(passed), 0, failing),
            "c": (len(passed), even, len(passed) - even, 0)}


async def _counted(nc, flow: str, count: int):  # type: ignore[no-untyped-def]
    want = _expected(count)

    async def exact():  # type: ignore[no-untyped-def]
        st = await statuses(nc, flow)
        got = {n: (c.in_, c.out, c.filtered, c.errors)
               for n in want if (s := st.get(f"{flow}.{n}.0")) and (c := s.counters)}
        return st if got == want else None

    return await wait_until(exact, timeout=30, what=f"exact counters {want}")


@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
async def test_fused_chain_counts_and_dead_letters_per_node(
        nc, agents, tmp_path, delivery: str) -> None:
    agents("f1")
    await wait_until(lambda: live_agent(nc, "f1"), what="agent")
    out, count = tmp_path / "out.jsonl", 2000
    published: set[str] = set()  # events passed in memory make no hop

    async def seen(msg) -> None:  # type: ignore[no-untyped-def]
        published.add(msg.subject)

    await nc.subscribe("flowctl.fz.*.out", cb=seen)
    await run_flow(nc, flow_yaml("fz", chain(out, count), delivery))
    st = await _counted(nc, "fz", count)
    assert {st[f"fz.{n}.0"].agent for n in "abc"} == {"f1"}
    assert {st[f"fz.{n}.0"].state.value for n in "abc"} == {"running"}
    assert st["fz.b.0"].last_error and "ZeroDivisionError" in st["fz.b.0"].last_error
    await wait_until(lambda: _lines(out, _expected(count)["c"][1]), what="sink lines")
    events = [json.loads(x) for x in read_lines(out)]
    assert sorted(e["seq"] for e in events) == [s for s in range(count)
                                                if s % 5 and s % 2 == 0]
    assert all(e["a"] == 2 * e["seq"] for e in events)
    assert not published  # source to sink in one replica: no hop at all
    counts = await dead_letter_counts(nc, "fz")
    assert counts == {"b": count // 5}  # the middle node's, nobody else's
    dlq = run_cli("dlq", "show", "fz", "b", "-o", "json", nats_url=_url(nc))
    letters = json.loads(dlq.stdout)
    assert letters and all(x["event"]["seq"] % 5 == 0 and "a" in x["event"] for x in letters)
    assert not any("b" in x["event"] for x in letters)  # (b sets its field in place: the
    # frame it failed in was taken one by one, each as it came, nothing set before)

    described = run_cli("describe", "fz", nats_url=_url(nc))
    assert described.returncode == 0, described.stderr
    assert yaml.safe_load(described.stdout)["plan"]["fused"] == ["gen -> a -> b -> c -> out"]
    if delivery == "at-most-once":
        return
    # a fused node's dead letters go back to it (its own input, idle while fused)
    replayed = run_cli("dlq", "replay", "fz", "b", "--limit", str(count // 5),  # they fail
                       nats_url=_url(nc))  # again: without a limit, replayed once more
    assert replayed.returncode == 0, replayed.stderr

    async def taken_again():  # type: ignore[no-untyped-def]
        b = (await statuses(nc, "fz"))["fz.b.0"].counters
        return b.replayed == count // 5 and b.errors == 2 * (count // 5)

    await wait_until(taken_again, what="b took its dead letters again (and failed them)")
    assert await dead_letter_counts(nc, "fz") == {"b": count // 5}


async def test_fuse_false_runs_the_node_apart_with_the_same_results(
        nc, agents, tmp_path) -> None:
    agents("f2")
    await wait_until(lambda: live_agent(nc, "f2"), what="agent")
    out, count = tmp_path / "out.jsonl", 500
    engine = await run_flow(nc, flow_yaml("fa", chain(out, count, fuse_b=False),
                                          "at-least-once"))
    await _counted(nc, "fa", count)
    assert {c.node: c.fused for c in await engine.list_configs("fa")}["b"] is None
    described = run_cli("describe", "fa", nats_url=_url(nc))
    plan = yaml.safe_load(described.stdout)["plan"]
    assert plan["fused"] == ["gen -> a", "c -> out"]
    assert "a -> b: b says fuse: false" in plan["apart"]
    assert await dead_letter_counts(nc, "fa") == {"b": count // 5}


async def test_at_least_once_fused_chain_loses_nothing_across_kill_9(
        nc, agents, tmp_path) -> None:
    first = agents("k1")
    await wait_until(lambda: live_agent(nc, "k1"), what="agent")
    out, count = tmp_path / "out.jsonl", 3000
    await run_flow(nc, flow_yaml("fk", chain(out, count, rate=1500), "at-least-once"))
    await wait_until(lambda: _lines(out, 100), what="events flowing", timeout=30)
    first.kill()
    agents("k2")
    want = {s for s in range(count) if s % 5 and s % 2 == 0}

    async def everything() -> bool:
        return {json.loads(x)["seq"] for x in read_lines(out)} >= want

    await wait_until(everything, timeout=90, what=f"all {len(want)} events at least once")
    st = await statuses(nc, "fk")
    assert {st[f"fk.{n}.0"].agent for n in ("gen", "a", "b", "c", "out")} == {"k2"}
    for node in "abc":  # every event taken in is accounted for, per node
        c = st[f"fk.{node}.0"].counters
        assert c.in_ >= c.out + c.filtered + c.errors, (node, c)


def _url(nc) -> str:  # type: ignore[no-untyped-def]
    return f"nats://{nc.connected_url.netloc}"


async def test_a_fused_node_restarted_alone_loses_nothing(nc, agents, tmp_path) -> None:
    agents("r1")
    await wait_until(lambda: live_agent(nc, "r1"), what="agent")
    out, count = tmp_path / "out.jsonl", 3000
    engine = await run_flow(nc, flow_yaml("fr", chain(out, count, rate=1500),
                                          "at-least-once"))
    await wait_until(lambda: _lines(out, 100), what="events flowing", timeout=30)
    before = {c.node: c.desired_fingerprint() for c in await engine.list_configs("fr")}
    changed = parse_flow(flow_yaml("fr", chain(out, count, rate=1500, b2=', b2: "1"'),
                                   "at-least-once"))
    await engine.apply("fr", changed.spec)  # only b's config changes: b restarts alone
    after = {c.node: c.desired_fingerprint() for c in await engine.list_configs("fr")}
    assert [n for n in before if before[n] != after[n]] == ["b"]
    want = {s for s in range(count) if s % 5 and s % 2 == 0}

    async def everything() -> bool:
        return {json.loads(x)["seq"] for x in read_lines(out)} >= want

    await wait_until(everything, timeout=60, what=f"all {len(want)} events at least once")
    assert any("b2" in json.loads(x) for x in read_lines(out))


async def _lines(path, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(read_lines(path)) >= n


async def test_a_source_position_is_stored_only_once_its_chains_sinks_are_flushed(nc) -> None:
    seals: list[bool] = []

    async def seal() -> bool:  # the chain's sinks flushed: whether all was written
        return seals.pop(0)

    cfg = ComponentConfig(flow="fseal", node="gen", type="generate", config={"count": 9},
                          queue="q")
    checkpoint = SourceCheckpoint(nc, cfg, 0, lambda: 0, seal=seal,
                                  position_fields=GenerateSource.position_fields)
    await checkpoint.load()
    checkpoint.advance(0, 3)  # (the chain published nothing: its sink took them)
    assert checkpoint.stored_mark() is None  # not flushed yet
    seals.append(True)
    await checkpoint.flush()
    assert checkpoint.stored_mark().position == 3  # type: ignore[union-attr]
    checkpoint.advance(0, 6)
    seals.append(False)  # the sink was replaced with events in its buffer
    await checkpoint.flush()
    assert checkpoint.broken and checkpoint.stored_mark().position == 3  # type: ignore[union-attr]
    await checkpoint.flush()  # (no seal asked again: nothing later is ever stored)
    with pytest.raises(RuntimeError, match="resuming from the last stored position"):
        await checkpoint.complete(0)
    kv = await open_bucket(nc, CHECKPOINTS_BUCKET)
    assert json.loads((await kv.get(checkpoint.key)).value)["position"] == 3


async def test_a_fused_sink_restarted_alone_loses_nothing(nc, agents, tmp_path) -> None:
    agents("s1")
    await wait_until(lambda: live_agent(nc, "s1"), what="agent")
    first, second, count = tmp_path / "one.jsonl", tmp_path / "two.jsonl", 3000
    engine = await run_flow(nc, flow_yaml("fs", chain(first, count, rate=1500),
                                          "at-least-once"))
    await wait_until(lambda: _lines(first, 300), what="events flowing", timeout=30)
    moved = parse_flow(flow_yaml("fs", chain(second, count, rate=1500), "at-least-once"))
    await engine.apply("fs", moved.spec)  # only the sink's path changes: it restarts alone
    want = {s for s in range(count) if s % 5 and s % 2 == 0}

    async def everything() -> bool:
        seen = read_lines(first) + read_lines(second)
        return {json.loads(x)["seq"] for x in seen} >= want

    await wait_until(everything, timeout=60, what=f"all {len(want)} events at least once")
    assert read_lines(second)  # (the sink went on in its new file)
