"""A keyed node partitioned at its producer, with real agents (issue 28).

The producer sends each event to its partition's subject and every replica's consumer
reads only its own partition (beside the old partitions handed over after a rescale).
Rescaled 1 -> 3 -> 2 replicas mid-flow with the agent of a replica SIGKILLed: every
event reaches the sink, each key in order (at-least-once: repeats allowed; exactly-once:
none). An event whose key cannot be computed fails once, on replica 0: counted and
dead-lettered there.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from componentmanager.dataplane.partition import Route, key_text, partition_of, split_by_subject
from componentmanager.runners.commit import Floors
from componentmanager.runners.handover import Inherited, handover_from
from flowstore import parse_flow
from flowstore.streams import dead_letter_counts
from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until

HB = 1.0


def test_a_producer_splits_a_frame_by_partition_and_marks_an_event_without_a_key(
        ) -> None:
    route = Route(lambda e: e["k"], 3, "flowctl.f.p.out.r.3.*")
    events = [{"k": f"k{i}"} for i in range(20)] + [{"no": 1}]
    groups = split_by_subject([route], events)
    for (subject, why), group in groups.items():
        assert all(route.place(e) == (subject, why) for e in group)
    assert sum(map(len, groups.values())) == len(events)
    subject, why = route.place({"no": 1})  # to partition 0, marked: failed there
    assert subject == "flowctl.f.p.out.r.3.0" and why is not None and "partition_by" in why
    assert route.place({"k": "k5"}) == (
        f"flowctl.f.p.out.r.3.{partition_of(key_text('k5'), 3)}", None)
    one = Route(lambda e: e["k"], 1, "x.1.*")  # one partition: no key computed
    assert set(split_by_subject([one], events)) == {("x.1.0", None)}


def test_a_partitions_floor_takes_the_numbers_sent_elsewhere_as_passed() -> None:
    floors = Floors()
    assert floors.fresh("p", 1, 40) == list(range(40))
    assert floors.fresh("p", 129, 10, after=40) == list(range(10))  # 41-128: elsewhere
    assert floors.as_dict() == {"p": 138}  # one floor, no ranges
    assert floors.fresh("p", 100, 5) == []  # sent again: passed
    assert floors.passed("p", 50) and not floors.passed("p", 139)
    late = Floors()  # a message overtaken by the next one of its partition: still taken
    assert late.fresh("p", 60, 10, after=59) == list(range(10))
    assert late.fresh("p", 51, 9, after=20) == list(range(9))
    assert late.fresh("p", 1, 20) == list(range(20))
    assert late.as_dict() == {"p": 69}


def test_a_new_count_waits_for_the_sealed_records_of_the_one_before() -> None:
    one = {"partitions": 1, "commit": {"floors": {"p": 90}}}
    assert handover_from(3, None, [], final=False) == []  # a first deploy
    assert handover_from(3, None, [one], final=False) is None  # still running
    sealed = {**one, "sealed": True}
    gens = handover_from(3, None, [sealed], final=False)
    assert gens == [{"partitions": 1, "floors": [{"p": 90}]}]
    kept = {"partitions": 3, "generations": gens}
    assert handover_from(3, kept, [{"partitions": 3}], final=False) == gens
    three = [{"partitions": 3, "sealed": True, "commit": {"floors": {"p": 120 + i}}}
             for i in range(3)]
    chain = handover_from(2, kept, three, final=False)
    assert chain == [*gens, {"partitions": 3, "floors": [{"p": 120}, {"p": 121}, {"p": 122}]}]
    assert handover_from(2, kept, [three[0], {"partitions": 3}], final=True) is not None
    inherited = Inherited(lambda e: e["k"], chain)
    owner = partition_of(key_text("a"), 3)
    assert inherited.passed("p", 120 + owner, {"k": "a"})
    assert not inherited.passed("p", 123, {"k": "a"}) and not inherited.passed("q", 1, {"k": 1})


def _flow(name: str, out: Path, total: int, rate: int, replicas: int, delivery: str,
          partition_by: str = "key") -> str:
    """generate -> stamp (a key of 7) on the edge -> keyed (placed on role=keyed) -> file."""
    return flow_yaml(name, f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: {total}, rate: {rate}}}
      placement: {{agent: edge}}
  processors:
    - id: stamp
      type: transform
      inputs: [gen]
      placement: {{agent: edge}}
      config: {{set: {{key: "'k' + str(seq % 7)"}}}}
    - id: keyed
      type: transform
      inputs: [stamp]
      replicas: {replicas}
      partition_by: "{partition_by}"
      placement: {{labels: {{role: keyed}}}}
      config: {{set: {{seen: "true"}}}}
  sinks:
    - id: out
      type: file
      inputs: [keyed]
      placement: {{agent: edge}}
      config: {{path: "{out}"}}
""", delivery)


async def _start_agents(nc, agents, keyed: int) -> dict:
    procs = {"edge": agents("edge", "role=edge", heartbeat=HB)}
    procs.update({f"k{i}": agents(f"k{i}", "role=keyed", heartbeat=HB) for i in range(keyed)})
    for name in procs:
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    return procs


async def _at_least(out: Path, n: int) -> None:
    async def enough() -> bool:
        return len(read_lines(out)) >= n
    await wait_until(enough, timeout=60, what=f"{n} events at the sink")


async def _reads_own_partitions(nc, flow: str, replicas: int) -> None:
    """Every consumer of the keyed node reads its own partition (and old ones only)."""
    infos = await nc.jetstream().consumers_info(f"FLOWCTL_{flow}")
    found = {c.name: (c.config.filter_subjects or [c.config.filter_subject])
             for c in infos if c.name.startswith("keyed-")}
    assert set(found) == {f"keyed-in-p{i}of{replicas}" for i in range(replicas)}, found
    for i in range(replicas):
        subjects = found[f"keyed-in-p{i}of{replicas}"]
        own = f"flowctl.{flow}.stamp.out.keyed.{replicas}.{i}"
        assert own in subjects and all(s == own or s.endswith(".*") for s in subjects), subjects


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_rescaled_1_3_2_with_a_replica_agent_killed_keeps_order_and_counts(
        nc, agents, tmp_path, delivery) -> None:
    procs = await _start_agents(nc, agents, 3)
    flow, out, total = f"ks-{delivery[:5]}", tmp_path / "out.jsonl", 4000
    engine = await run_flow(nc, _flow(flow, out, total, 400, 1, delivery))
    await _at_least(out, 300)
    await engine.apply(flow, parse_flow(_flow(flow, out, total, 400, 3, delivery)).spec)
    await _reads_own_partitions(nc, flow, 3)
    await _at_least(out, len(read_lines(out)) + 600)
    victim = (await statuses(nc, flow))[f"{flow}.keyed.1"].agent
    assert victim != "edge"
    procs[victim].kill()

    async def failed_over() -> bool:  # (a rescale mid-failover: see handover)
        st = (await statuses(nc, flow)).get(f"{flow}.keyed.1")
        return st is not None and st.agent != victim and st.state.value == "running"

    await wait_until(failed_over, timeout=30, what="keyed.1 running again")
    await _at_least(out, len(read_lines(out)) + 300)
    await engine.apply(flow, parse_flow(_flow(flow, out, total, 400, 2, delivery)).spec)
    await _reads_own_partitions(nc, flow, 2)

    async def everything() -> bool:
        return {json.loads(x)["seq"] for x in read_lines(out)} >= set(range(total))

    await wait_until(everything, timeout=90, what=f"all {total} events")
    seqs = [json.loads(x)["seq"] for x in read_lines(out)]
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    firsts: set[int] = set()
    for seq in seqs:
        if seq not in firsts:  # a repeat (at-least-once) is not a reordering
            firsts.add(seq)
            by_key[f"k{seq % 7}"].append(seq)
    for key, keyed in by_key.items():
        assert keyed == sorted(keyed), f"{key} out of order"
    repeats = len(seqs) - total
    if delivery == "exactly-once":
        assert repeats == 0, collections.Counter(s for s in seqs if seqs.count(s) > 1)
    print(f"{delivery}: rescaled 1 -> 3 -> 2, killed {victim}: {total} events, each key in "
          f"order, repeated {repeats}")


@pytest.mark.parametrize("delivery", ["at-most-once", "at-least-once"])
async def test_an_event_without_a_key_fails_once_on_replica_0(nc, agents, tmp_path,
                                                              delivery) -> None:
    await _start_agents(nc, agents, 2)
    flow, out, total = f"ks-nokey-{delivery[3:7]}", tmp_path / "out.jsonl", 700
    # every 7th event (k0) has no key: 1 / 0 cannot be computed
    await run_flow(nc, _flow(flow, out, total, 2000, 3, delivery,
                             partition_by="1 / (seq % 7)"))
    unkeyed = len([s for s in range(total) if s % 7 == 0])
    await _at_least(out, total - unkeyed)

    async def counted() -> dict | None:
        st = await statuses(nc, flow)
        errors = {k: s.counters.errors for k, s in st.items() if ".keyed." in k}
        dead = (await dead_letter_counts(nc, flow)).get("keyed", 0)
        return errors if sum(errors.values()) == unkeyed and dead == unkeyed else None

    errors = await wait_until(counted, timeout=30, what=f"{unkeyed} errors, dead letters")
    assert errors[f"{flow}.keyed.0"] == unkeyed  # on replica 0, once each
    st = await statuses(nc, flow)
    taken = sum(s.counters.in_ for k, s in st.items() if ".keyed." in k)
    assert taken == total and len(read_lines(out)) == total - unkeyed  # each event once
    if delivery != "at-most-once":
        await _reads_own_partitions(nc, flow, 3)


def test_the_producer_of_a_keyed_node_keeps_its_own_outbox() -> None:
    from flowengine.plan import fusion_plan

    text = _flow("fp", Path("/tmp/x"), 10, 10, 3, "at-least-once").replace(
        "    - id: keyed\n", "    - id: more\n      type: transform\n      inputs: [stamp]\n"
        "      placement: {agent: edge}\n      config: {set: {x: '1'}}\n    - id: keyed\n"
    ).replace("      inputs: [stamp]\n      replicas: 3", "      inputs: [more]\n      replicas: 3")
    plan = fusion_plan(parse_flow(text).spec)
    assert plan.chains == [["gen", "stamp"]]
    assert ("stamp", "more", "more partitions its events for a keyed node") in plan.apart
