"""`flowctl run`, the one-command mode, as the real executable: on Ctrl+C it stops,
undeploys, deletes its flow and shuts everything down (no process and no key left
behind), it never touches a flow it did not create, two runs at once work, failures exit
1, and a terminal gets a spinner and live status. What `--until-done` waits for and the
exit code of a run whose events failed: test_cli_run_done.py.
`--until-done` on every example (its nats-server gone afterwards): test_examples.py.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    EXAMPLES,
    FLOWCTL,
    Flowctl,
    cli_agent_fixture,
    cli_env,
    cli_processes_cleaned_up,
    flowctl,
    json_lines,
    ok,
    read_kv,
    read_terminal,
    table_rows,
    wait_for,
)

ENDLESS = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: endless}
spec:
  sources:
    - {id: ticks, type: generate, config: {rate: 40, template: {tick: "t{seq}"}}}
  processors:
    - {id: mark, type: transform, inputs: [ticks], config: {set: {marked: "true"}}}
  sinks:
    - {id: out, type: stdout, inputs: [mark]}
"""


def endless(tmp_path: Path) -> str:
    path = tmp_path / "endless.yaml"
    path.write_text(ENDLESS)
    return str(path)


def start_run(tmp_path: Path, *args: str, name: str = "run",
              nats_url: str | None = None) -> Flowctl:
    workdir = tmp_path / name
    workdir.mkdir(parents=True, exist_ok=True)
    return Flowctl(*(["--nats-url", nats_url] if nats_url else []), "run", *args,
                   log_dir=tmp_path / "logs", cwd=workdir, name=name)


def wait_for_events(run: Flowctl, n: int = 3) -> None:
    wait_for(lambda: len(json_lines(run.out())) >= n or run.proc.poll() is not None, 30,
             f"{n} events on stdout")
    assert run.proc.poll() is None, run.err()


def test_ctrl_c_leaves_no_process_and_no_config_key(nats_url: str, tmp_path: Path) -> None:
    run = start_run(tmp_path, endless(tmp_path), nats_url=nats_url)
    wait_for_events(run)
    assert read_kv(nats_url, "flowctl_config", "endless.*")  # deployed while it runs
    run.interrupt(group=True)  # what a terminal's Ctrl+C does
    assert run.wait(20) == 130, run.err()
    assert "interrupted (SIGINT): stopping" in run.err()
    assert "flow/endless stopped, undeployed and deleted" in run.err()
    run.assert_no_leftovers()
    assert read_kv(nats_url, "flowctl_config") == {}
    assert read_kv(nats_url, "flowctl_status") == {}
    assert read_kv(nats_url, "flowctl_agents") == {}
    assert read_kv(nats_url, "flowctl_flows") == {}


def test_sigint_to_run_with_embedded_server_leaves_no_nats_server(tmp_path: Path) -> None:
    run = start_run(tmp_path, endless(tmp_path))
    wait_for_events(run)
    assert run.descendant_names() == ["nats-server"]
    run.interrupt()  # kill -INT <pid>
    assert run.wait(20) == 130, run.err()
    assert "flow/endless stopped, undeployed and deleted" in run.err()
    run.assert_no_leftovers()  # the nats-server included


def test_terminal_ctrl_c_with_embedded_server(tmp_path: Path) -> None:
    run = start_run(tmp_path, endless(tmp_path))
    try:
        wait_for_events(run)
        run.interrupt(group=True)
        assert run.wait(10) == 130, run.err()
        assert "flow/endless stopped, undeployed and deleted" in run.err()
    finally:
        if run.proc.poll() is None:
            run.kill()
        run.assert_no_leftovers()


def test_run_with_nats_url_keeps_the_flow_on_its_own_agents(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    """Another agent on the same NATS (which even leads placement, being first) gets no
    replica of a `flowctl run --nats-url`: every node requires the run's label."""
    other = cli_agent("other-host")
    run = start_run(tmp_path, str(EXAMPLES / "hello.yaml"), "--until-done", "--timeout",
                    "60", nats_url=nats_url)
    seen_agents: set[str] = set()
    placements: list[dict[str, object]] = []

    def finished() -> bool:
        seen_agents.update(json.loads(v).get("agent") or "-"
                           for v in read_kv(nats_url, "flowctl_status").values())
        if not placements and (flow := read_kv(nats_url, "flowctl_flows").get("hello")):
            placements.append({n["id"]: n["placement"]
                               for n in json.loads(flow)["spec"]["nodes"]})
        return run.proc.poll() is not None

    wait_for(finished, 60, "the run to finish", interval=0.1)
    assert run.wait(5) == 0, run.err()
    assert [e["seq"] for e in json_lines(run.out())] == list(range(10))  # on its stdout
    assert json_lines(other.out()) == []
    run_id = f"run-{run.pid}"
    assert "other-host" not in seen_agents and seen_agents - {"-"} <= {f"{run_id}-0"}, \
        seen_agents
    assert placements == [{node: {"labels": {"flowctl.run": run_id}}
                           for node in ("gen", "shout", "out")}]
    assert read_kv(nats_url, "flowctl_flows") == {}  # the flow it created is gone
    run.assert_no_leftovers()


def test_two_runs_at_the_same_time(tmp_path: Path) -> None:
    runs = [start_run(tmp_path, str(EXAMPLES / "hello.yaml"), "--until-done", "--timeout",
                      "60", name=f"run{i}") for i in (1, 2)]
    wait_for(lambda: all(r.children_named("nats-server") or r.proc.poll() is not None
                         for r in runs), 15, "both embedded servers")
    servers = [s.pid for r in runs for s in r.children_named("nats-server")]
    for run in runs:
        assert run.wait(60) == 0, run.err()
        assert [e["seq"] for e in json_lines(run.out())] == list(range(10))
        run.assert_no_leftovers()
    assert len(set(servers)) == 2


def test_run_failures_exit_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(ENDLESS.replace("transform", "no-such-type"))
    failing = tmp_path / "failing.yaml"
    failing.write_text(ENDLESS.replace("rate: 40, ", "count: 3, ").replace(
        "type: transform, inputs: [ticks], config: {set: {marked: \"true\"}}",
        "type: python, inputs: [ticks], config: {function: \"no_such_fn:fn\"}"))
    (tmp_path / "no_such_fn.py").write_text("x = 1\n")  # found, but it has no fn
    runs = {
        "invalid": start_run(tmp_path, str(broken), "--until-done", name="invalid"),
        "replica": start_run(tmp_path, str(failing), "--until-done", name="replica"),
        "timeout": start_run(tmp_path, endless(tmp_path), "--until-done", "--timeout", "2",
                             name="timeout"),
    }
    for run in runs.values():
        assert run.wait(60) == 1, run.err()
        assert "Traceback" not in run.err()
        run.assert_no_leftovers()
    assert "no-such-type" in runs["invalid"].err()
    assert "a replica failed: mark.0" in runs["replica"].err()
    assert "no_such_fn:fn does not define a callable" in runs["replica"].err()
    assert "not done after 2s" in runs["timeout"].err()
    for name in ("replica", "timeout"):
        assert "stopped, undeployed and deleted" in runs[name].err()


def test_spinner_and_live_status_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, start-up shows a spinner and the status is redrawn."""
    flow = tmp_path / "slow.yaml"
    flow.write_text(ENDLESS.replace("rate: 40, ", "rate: 3, count: 8, "))
    master, slave = pty.openpty()
    with (tmp_path / "out.txt").open("w") as out:
        proc = subprocess.Popen([FLOWCTL, "run", str(flow), "--until-done"], stdout=out,
                                stderr=slave, stdin=subprocess.DEVNULL, cwd=tmp_path,
                                env=cli_env(), start_new_session=True)
    os.close(slave)
    try:
        seen = read_terminal(master, lambda _: False, 40)
        assert proc.wait(10) == 0, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "starting NATS and 1 agent(s)" in text
    assert "ticks.0:running" in text or "ticks.0:completed" in text
    assert len(json_lines((tmp_path / "out.txt").read_text())) == 8


SLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: slow}
spec:
  sources:
    - {id: gen, type: generate, config: {rate: 50}}
  processors:
    - id: slow
      type: python
      inputs: [gen]
      fuse: false  # (apart: events queue before it; fused, the source would wait for it)
      config:
        code: |
          import time
          def process(event):
              time.sleep(0.04)
              return event
  sinks:
    - {id: out, type: file, inputs: [slow], config: {path: "OUT"}}
"""


def test_ctrl_c_drains_then_names_what_was_left_per_node(tmp_path: Path) -> None:
    """Events queue behind a slow processor (50 ev/s into 25 ev/s). SIGINT: the source
    stops first, the rest drains for at most --drain-timeout, and every event the source
    generated is either in the sink's file or named LEFT in the summary (nothing goes
    unsaid); exit 130. SIGTERM with enough time: everything drains, nothing left; 143."""
    runs = {}
    for name, args in (("int", ["--drain-timeout", "1"]), ("term", [])):
        flow = tmp_path / f"{name}.yaml"
        flow.write_text(SLOW.replace("OUT", str(tmp_path / f"{name}.jsonl")))
        runs[name] = start_run(tmp_path, str(flow), *args, name=name)

    def written(name: str) -> list[dict[str, object]]:
        path = tmp_path / f"{name}.jsonl"
        return json_lines(path.read_text()) if path.exists() else []

    for name, enough in (("term", 15), ("int", 60)):
        wait_for(lambda n=name, k=enough: len(written(n)) >= k or runs[n].proc.poll(), 30,
                 f"{enough} events written by {name}")
        runs[name].interrupt(group=name == "int",
                             sig=signal.SIGINT if name == "int" else signal.SIGTERM)
    assert runs["int"].wait(30) == 130, runs["int"].err()
    assert runs["term"].wait(30) == 143, runs["term"].err()

    err = runs["int"].err()
    assert "interrupted (SIGINT): stopping" in err
    assert "not drained after 1s" in err
    rows = table_rows(err, "NODE")
    # NODE REPLICAS AGENTS STATE IN OUT FILTERED ERRORS DROPPED DEAD-LETTERED LEFT
    generated, lines = int(rows["gen"][5]), written("int")
    left = {node: int(rows[node][10]) for node in ("slow", "out")}
    assert rows["gen"][3] == "stopped" and rows["gen"][10] == "-", err
    assert int(rows["out"][5]) == len(lines) == len({e["seq"] for e in lines}), err
    assert all(rows[n][6:10] == ["0", "0", "0", "0"] for n in ("slow", "out")), err
    assert left["slow"] > 0, err
    assert generated == len(lines) + sum(left.values()), err  # nothing unsaid
    assert (f"flow/slow: {sum(left.values()):,} event(s) left unprocessed, deleted with the "
            f"flow (slow: {left['slow']:,} not taken in, ") in err
    assert "message(s) unacked in the stream" in err  # the stream's own count
    print(f"SIGINT: {generated} generated, {len(lines)} written, left {left}")

    err = runs["term"].err()
    assert "interrupted (SIGTERM): stopping" in err and "drained in" in err, err
    rows = table_rows(err, "NODE")
    lines = written("term")
    assert int(rows["gen"][5]) == int(rows["out"][5]) == len(lines), err
    assert rows["slow"][10] == rows["out"][10] == "0", err
    assert "left unprocessed" not in err
    print(f"SIGTERM: {len(lines)} generated and written")
    for run in runs.values():
        run.assert_no_leftovers()


def test_left_over_per_node_counts_events_and_stream_messages() -> None:
    """Pure: a counted node's LEFT is what its upstreams emitted that it never took in;
    a program without counters (and whatever follows it) is only known by the unacked
    messages of its inputs' consumers."""
    from cli.drain import left_over, left_sentence, outcome
    from flowengine import translate
    from flowstore.loader import parse_flow
    from flowstore.models import Counters, ReplicaStatus

    program_text = SLOW.split("  processors:")[0] + (
        "  processors:\n    - {id: slow, type: worker, command: w, inputs: [gen]}\n"
        "  sinks:" + SLOW.split("  sinks:")[1])
    for program in (False, True):
        spec = parse_flow(program_text if program else SLOW).spec
        configs = list(translate("slow", spec, flow_revision=1, enabled=False).values())

        def status(node: str, took: int, out: int) -> ReplicaStatus:
            return ReplicaStatus(flow="slow", node=node, replica=0, state="stopped",
                                 counters=Counters(**{"in": took}, out=out,
                                                   out_ports={"out": out} if out else {}))

        statuses = [status("gen", 0, 222), status("slow", 0 if program else 132,
                                                  0 if program else 132), status("out", 132, 132)]
        left = left_over(spec, configs, statuses, {"slow-in": 90, "out-in": 0, "other": 5})
        if program:
            assert [(n, w.waiting, w.messages) for n, w in left.items()] == \
                [("slow", None, 90), ("out", None, 0)]
            row = outcome(spec, statuses, {}, {"slow"}, left).rows[1]
            assert row[4:] == ["-"] * 5 + [0, "-", ""]
            assert left_sentence(left) == ("0 event(s) left unprocessed, deleted with the flow "
                                           "(slow: 90 message(s) unacked in the stream)")
        else:
            assert [(n, w.waiting, w.messages) for n, w in left.items()] == \
                [("slow", 90, 90), ("out", 0, 0)]
            result = outcome(spec, statuses, {}, set(), left)
            assert [r[10] for r in result.rows] == ["-", 90, 0] and not result.ok
