"""Several hosts on loopback: one NATS server, three real agent processes with labels.

Placement by label and by name, failover after SIGKILL within the bound, fencing of a
restarted agent, pending replicas placed when a matching agent joins, and an
at-least-once flow that loses nothing across the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.request

from flowengine import FlowEngine
from tests.agents import (
    all_in_state,
    flow_yaml,
    live_agent,
    read_lines,
    run_flow,
    statuses,
    wait_until,
)
from tests.programs.cli_helpers import (  # noqa: F401  (fixture)
    Flowctl,
    cli_processes_cleaned_up,
    flowctl,
    free_port,
    wait_for,
)

HB = 1.0  # heartbeat of the test agents, seconds


async def start_three(nc, agents) -> dict:
    started = {
        "a1": agents("a1", "zone=a", heartbeat=HB),
        "a2": agents("a2", "zone=b", heartbeat=HB),
        "a3": agents("a3", "zone=b", heartbeat=HB),
    }
    for name in started:
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    return started


def placed_flow(out, count: int = 0, rate: int = 200) -> str:
    source = (
        f"type: generate\n      config: {{count: {count}, rate: {rate}}}"
        if count
        else 'type: nats\n      config: {subject: "pf.in"}'
    )
    return f"""\
  sources:
    - id: src
      {source}
      placement: {{agent: a1}}
  processors:
    - id: work
      type: transform
      inputs: [src]
      replicas: 2
      placement: {{labels: {{zone: b}}}}
      config: {{set: {{worked: "true"}}}}
  sinks:
    - id: out
      type: file
      inputs: [work]
      placement: {{labels: {{zone: a}}}}
      config: {{path: "{out}"}}
"""


async def test_placement_by_label_and_name_and_failover_after_sigkill(
    nc, agents, tmp_path
) -> None:
    procs = await start_three(nc, agents)
    await run_flow(nc, flow_yaml("pf", placed_flow(tmp_path / "out.jsonl")))
    keys = ["pf.src.0", "pf.work.0", "pf.work.1", "pf.out.0"]
    await wait_until(lambda: all_in_state(nc, "pf", keys, "running"), what="all running")
    st = await statuses(nc, "pf")
    assert st["pf.src.0"].agent == "a1"  # by name
    assert st["pf.out.0"].agent == "a1"  # by label zone=a
    assert {st["pf.work.0"].agent, st["pf.work.1"].agent} == {"a2", "a3"}  # spread over zone=b
    victim = st["pf.work.0"].agent
    survivor = ({"a2", "a3"} - {victim}).pop()

    t0 = time.monotonic()
    procs[victim].kill()

    async def moved() -> bool:
        s = await statuses(nc, "pf")
        w = s["pf.work.0"]
        return w.agent == survivor and w.state.value == "running"

    await wait_until(moved, timeout=30, what="replica running elsewhere")
    elapsed = time.monotonic() - t0
    print(f"failover: SIGKILL -> replica running on {survivor} in {elapsed:.2f}s (hb {HB}s)")
    assert elapsed < 3 * HB + 3.0, f"failover took {elapsed:.2f}s"

    # The killed agent comes back under the same name: it must not run the moved replica.
    agents(victim, "zone=b", heartbeat=HB)
    await wait_until(lambda: _fresh(nc, victim), what="restarted agent")
    await wait_until(
        lambda: all_in_state(nc, "pf", keys, "running"), what="still running", timeout=10
    )
    for _ in range(10):  # watch it for a while: no duplicate replica appears
        rec = await live_agent(nc, victim)
        assert rec is not None and not rec.components, rec.components
        s = await statuses(nc, "pf")
        assert s["pf.work.0"].agent == survivor and s["pf.work.1"].agent == survivor
        await _sleep(0.3)


async def _fresh(nc, name: str):
    rec = await live_agent(nc, name)
    return rec if rec is not None and rec.is_live() else None


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


async def test_pending_until_a_matching_agent_joins(nc, agents, tmp_path) -> None:
    agents("a1", "zone=a", heartbeat=HB)
    await wait_until(lambda: live_agent(nc, "a1"), what="agent")
    body = """\
  sources:
    - id: src
      type: nats
      config: {subject: "pend.in"}
  sinks:
    - id: gpu
      type: stdout
      inputs: [src]
      placement: {labels: {gpu: "yes"}}
"""
    await run_flow(nc, flow_yaml("pend", body))

    async def pending():
        s = (await statuses(nc, "pend")).get("pend.gpu.0")
        return s if s and s.state.value == "pending" else None

    s = await wait_until(pending, what="pending status")
    assert "gpu=yes" in s.last_error
    engine = await FlowEngine.open(nc)
    eff = await engine.effective_state("pend")
    assert eff.observed.value in ("pending", "degraded")
    agents("g1", "gpu=yes", heartbeat=HB)

    async def placed():
        s = (await statuses(nc, "pend")).get("pend.gpu.0")
        return s if s and s.state.value == "running" and s.agent == "g1" else None

    await wait_until(placed, timeout=20, what="placed on the new agent")


async def test_at_least_once_loses_nothing_when_processor_agent_is_killed(
    nc, agents, tmp_path
) -> None:
    procs = await start_three(nc, agents)
    out = tmp_path / "out.jsonl"
    total = 1500
    await run_flow(
        nc, flow_yaml("alk", placed_flow(out, count=total, rate=150), delivery="at-least-once")
    )
    await wait_until(lambda: _count(out, 150), what="events flowing", timeout=30)
    st = await statuses(nc, "alk")
    procs[st["alk.work.0"].agent].kill()

    async def everything() -> bool:
        seen = {json.loads(x)["seq"] for x in read_lines(out)}
        return seen >= set(range(total))

    await wait_until(everything, timeout=120, what=f"all {total} events at least once")
    events = [json.loads(x) for x in read_lines(out)]
    assert all(e["worked"] is True for e in events)


async def _count(path, n: int) -> bool:
    return len(read_lines(path)) >= n


async def test_a_killed_agents_replicas_show_unknown_at_once_and_the_move_is_logged(
    nc, agents, nats_url, tmp_path
) -> None:
    """SIGKILL of an agent: `flowctl status`, the API and the console's event stream show
    its replica `unknown` ("agent a2 silent 2.3 s") before the leader moves it, and
    `flowctl logs` then says where it went and why."""
    # unknown after 2 heartbeats of silence, moved after 2.5: at 4 s the window between
    # is 2 s, so a `flowctl status` started in it finishes before the move, loaded or not
    hb = 4.0
    agents("a1", "zone=a", heartbeat=hb)  # first up: holds the lease
    await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
    await wait_until(lambda: _leader_is(nc, "a1"), what="a1 leads")
    procs = {"a2": agents("a2", "zone=b", heartbeat=hb), "a3": agents("a3", "zone=b", heartbeat=hb)}
    for name in procs:
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    body = f"""\
  sources:
    - {{id: src, type: nats, config: {{subject: "uk.in"}}, placement: {{agent: a1}}}}
  sinks:
    - id: out
      type: file
      inputs: [src]
      placement: {{labels: {{zone: b}}}}
      config: {{path: "{tmp_path / 'out.jsonl'}"}}
"""
    await run_flow(nc, flow_yaml("uk", body))
    await wait_until(lambda: all_in_state(nc, "uk", ["uk.src.0", "uk.out.0"], "running"),
                     what="all running")
    victim = (await statuses(nc, "uk"))["uk.out.0"].agent
    survivor = ({"a2", "a3"} - {victim}).pop()
    port = free_port()
    ui = Flowctl("ui", "--port", str(port), log_dir=tmp_path, nats_url=nats_url, name="ui")
    ui.wait_output("console: http://127.0.0.1:")
    api = f"http://127.0.0.1:{port}/api/flows/uk/status"
    events = _EventStream(f"http://127.0.0.1:{port}/api/events?flow=uk")
    await asyncio.to_thread(wait_for, lambda: events.lines, 10, "the event stream")

    t0 = time.monotonic()
    procs[victim].kill()
    seen: dict[str, float] = {}

    def read(where: str) -> dict:
        if where == "api":
            return _replica(_get_json(api), "out")
        cli = flowctl("status", "uk", "-o", "json", nats_url=nats_url)
        return _replica(json.loads(cli.stdout)["replicas"], "out")

    async def poll(where: str) -> None:
        """Until this reader shows the replica unknown; never moved before that. (Both
        read at once: the window between unknown and moved is half a heartbeat.)"""
        while time.monotonic() - t0 < 6 * hb:
            began = time.monotonic()
            row = await asyncio.to_thread(read, where)
            if row["state"] == "unknown":
                seen[where] = time.monotonic() - t0
                assert re.fullmatch(rf"agent {victim} silent \d+\.\d s", row["reason"]), row
                assert row["reported_state"] == "running" and row["agent"] == victim
                return
            if row["agent"] != victim and time.monotonic() - began > hb / 2:
                # a `flowctl status` slower than the whole window (a starved machine)
                # read after the move: inconclusive, not wrong (the API and the event
                # stream still check the order)
                print(f"\n{where}: one read took longer than the unknown window")
                seen.setdefault(where, float("nan"))
                return
            assert row["agent"] == victim, f"{where}: moved before shown unknown: {row}"

    await asyncio.gather(poll("api"), poll("cli"))
    shown = await asyncio.to_thread(flowctl, "status", "uk", nats_url=nats_url)
    agents_now = await asyncio.to_thread(flowctl, "agents", "-o", "json", nats_url=nats_url)
    assert {a["name"]: a["live"] for a in json.loads(agents_now.stdout)}[victim] is False
    assert len(seen) == 2, (seen, shown.stdout)
    # overdue 2 heartbeats after the last one, which was at most one before the kill;
    # plus the time a `flowctl status` takes to start and read
    assert not seen["cli"] >= 2 * hb + 2.0, seen  # (nan: inconclusive, see poll)

    async def moved_line() -> str | None:
        out = (await asyncio.to_thread(flowctl, "logs", "uk", nats_url=nats_url)).stdout
        return next((line for line in out.splitlines() if "[leader] moved" in line), None)

    line = await wait_until(moved_line, timeout=20, what="the leader's line in flowctl logs")
    moved_at = time.monotonic() - t0
    assert re.search(rf"out\.0@a1 \[leader\] moved out\.0 from {victim} to {survivor}: "
                     rf"{victim} silent \d+\.\d s$", line), line
    await wait_until(lambda: all_in_state(nc, "uk", ["uk.out.0"], "running"), what="running")
    sent = [e for e in events.changes() if e["key"] == "uk.out.0"]
    unknown = next(i for i, e in enumerate(sent) if e["value"]["state"] == "unknown")
    assert all(e["value"]["agent"] == victim for e in sent[:unknown]), sent
    print(f"\nSIGKILL of {victim} (hb {hb:g} s): unknown in the API after {seen['api']:.2f} s, "
          f"in flowctl status after {seen['cli']:.2f} s; the moved line read after "
          f"{moved_at:.2f} s: {line.split(' ', 1)[1]}")
    print(shown.stdout)
    events.close()
    assert ui.stop() == 0


async def _leader(nc) -> str | None:
    from flowstore.nats import LEADER_BUCKET, open_bucket

    try:
        entry = await (await open_bucket(nc, LEADER_BUCKET)).get("leader")
    except Exception:
        return None
    return json.loads(entry.value).get("agent")


async def _leader_is(nc, name: str) -> bool:
    return await _leader(nc) == name


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _replica(rows: list[dict], node: str) -> dict:
    return next(r for r in rows if r["node"] == node and r["replica"] == 0)


class _EventStream:
    """Reads a server-sent event stream on a thread; keeps its data lines."""

    def __init__(self, url: str) -> None:
        self.lines: list[str] = []
        self.response = urllib.request.urlopen(url, timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for raw in self.response:
                self.lines.append(raw.decode())

    def changes(self) -> list[dict]:
        data = [json.loads(x[6:]) for x in list(self.lines) if x.startswith("data: ")]
        return [d for d in data if d.get("bucket") == "flowctl_status"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.response.close()


async def test_the_leaders_death_moves_its_replicas_within_the_bound(nc, agents,
                                                                      tmp_path) -> None:
    """SIGKILL of the agent that holds the lease and runs a replica: another agent takes
    the lease over as soon as the server has not seen it renewed for 2 heartbeats, and
    judges the dead leader on the server's clock at once (no grace period of its own), so
    the replica runs again within the agents' bound (2.5 heartbeats) plus the start."""
    procs = await start_three(nc, agents)
    leader = await wait_until(lambda: _leader(nc), what="a leader")
    others = sorted(set(procs) - {leader})
    body = f"""\
  sources:
    - {{id: src, type: nats, config: {{subject: "ld.in"}}, placement: {{agent: {others[0]}}}}}
  processors:
    - {{id: work, type: filter, inputs: [src], replicas: 3, config: {{where: "true"}}}}
"""
    await run_flow(nc, flow_yaml("ld", body))
    keys = ["ld.work.0", "ld.work.1", "ld.work.2"]
    await wait_until(lambda: all_in_state(nc, "ld", keys, "running"), what="running")
    assert leader in {s.agent for s in (await statuses(nc, "ld")).values()}
    t0 = time.monotonic()
    procs[leader].kill()

    async def moved() -> bool:
        st = await statuses(nc, "ld")
        return all(st[k].agent in others and st[k].state.value == "running" for k in keys)

    await wait_until(moved, timeout=15, what="the dead leader's replica running elsewhere")
    took = time.monotonic() - t0
    said = "\n".join(procs[n].output()[1] for n in others)
    assert "took over a stale leader lease" in said, said[-2000:]
    print(f"\nleader {leader} killed: its replica running again after {took:.2f} s "
          f"(heartbeat {HB} s)")
    assert took < 4 * HB + 1.0, took  # 2.5 heartbeats at most after the last one, + load
