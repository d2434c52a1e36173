"""`flowctl run` as the real executable, the promises a user relies on in scripts:
it never touches a flow it did not create; `--until-done` finishes for flows with
`command:` nodes (at-least-once: judged by the stream, at-most-once: by silence); the exit
code is 1 with a per-node summary when events failed, and the nodes are shown stopped.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    EXAMPLES,
    Flowctl,
    cli_agent_fixture,
    cli_processes_cleaned_up,
    failed,
    flowctl,
    ok,
    read_kv,
    table_rows,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent

WORKER = """\
from componentmanager.sdk import run_component

def handle(event, port):
    event["total"] = event["price"] * event["qty"]
    return event

run_component(handle)
"""


def orders_flow(tmp_path: Path, delivery: str) -> Path:
    (tmp_path / "worker.py").write_text(WORKER)
    flow = tmp_path / f"orders-{delivery}.yaml"
    flow.write_text(textwrap.dedent(f"""\
        apiVersion: flowctl/v1
        kind: Flow
        metadata: {{name: orders}}
        spec:
          delivery: {delivery}
          sources:
            - id: gen
              type: generate
              config: {{count: 200, template: {{price: 3, qty: 2}}}}
          processors:
            - id: total
              type: totals
              command: {sys.executable}
              args: [worker.py]
              working_dir: {tmp_path}
              env: {{PYTHONPATH: "{ROOT}"}}
              inputs: [gen]
          sinks:
            - id: out
              type: file
              config: {{path: "{tmp_path / f'out-{delivery}.jsonl'}"}}
              inputs: [total]
        """))
    return flow


def run(tmp_path: Path, *args: str, name: str = "run") -> Flowctl:
    return Flowctl("run", *args, log_dir=tmp_path / "logs", cwd=tmp_path, name=name)


def test_until_done_with_a_command_node(tmp_path: Path) -> None:
    runs = {d: run(tmp_path, str(orders_flow(tmp_path, d)), "--until-done", "--timeout", "60",
                   name=d) for d in ("at-least-once", "at-most-once")}
    for delivery, proc in runs.items():
        assert proc.wait(90) == 0, proc.err()
        lines = (tmp_path / f"out-{delivery}.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["seq"] for line in lines) == list(range(200))
        assert all(json.loads(line)["total"] == 6 for line in lines)
        rows = table_rows(proc.err(), "NODE")
        # NODE REPLICAS AGENTS STATE IN OUT FILTERED ERRORS DROPPED DEAD-LETTERED
        assert rows["gen"][3:6] == ["completed", "0", "200"], proc.err()
        assert rows["total"][3:5] == ["stopped", "-"], proc.err()  # reports no counters
        assert rows["out"][3:5] == ["stopped", "200"], proc.err()
        proc.assert_no_leftovers()
    assert "report no counters" in runs["at-most-once"].err()
    assert "report no counters" not in runs["at-least-once"].err()


def test_failed_events_exit_1_with_a_summary(tmp_path: Path) -> None:
    flow = tmp_path / "post.yaml"
    flow.write_text(textwrap.dedent("""\
        apiVersion: flowctl/v1
        kind: Flow
        metadata: {name: post}
        spec:
          sources:
            - {id: gen, type: generate, config: {count: 5}}
          sinks:
            - {id: post, type: http, config: {url: "http://127.0.0.1:9/nothing"}, inputs: [gen]}
        """))
    proc = run(tmp_path, str(flow), "--until-done", "--timeout", "60")
    assert proc.wait(90) == 1, proc.err()
    rows = table_rows(proc.err(), "NODE")
    # every event failed once (retried in place, never redelivered), dead-lettered once
    assert rows["post"][3:10] == ["stopped", "5", "0", "0", "5", "0", "5"], proc.err()
    assert "flow/post: 5 failed, 5 dead-lettered" in proc.err()
    assert "Connection refused" in proc.err()
    proc.assert_no_leftovers()


def test_run_never_touches_a_flow_it_did_not_create(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("host-1")
    hello = str(EXAMPLES / "hello.yaml")
    ok(flowctl("apply", "-f", hello, nats_url=nats_url))
    ok(flowctl("deploy", "hello", nats_url=nats_url))
    ok(flowctl("start", "hello", nats_url=nats_url))
    before = json.loads(read_kv(nats_url, "flowctl_flows")["hello"])

    refused = flowctl("run", hello, "--until-done", nats_url=nats_url, cwd=tmp_path)
    failed(refused, 1, "flow/hello already exists", "running", "--name")
    after = json.loads(read_kv(nats_url, "flowctl_flows")["hello"])
    assert after == before  # same revision, same placement, still running

    renamed = flowctl("run", hello, "--name", "hello-copy", "--until-done", "--timeout", "60",
                      nats_url=nats_url, cwd=tmp_path, timeout=90)
    assert renamed.returncode == 0, renamed.stderr
    assert [json.loads(line)["seq"] for line in renamed.stdout.splitlines()] == list(range(10))
    assert "flow/hello-copy stopped, undeployed and deleted" in renamed.stderr
    flows = read_kv(nats_url, "flowctl_flows")
    assert set(flows) == {"hello"} and json.loads(flows["hello"]) == before
    wait_for(lambda: all(json.loads(v)["state"] in ("running", "completed")
                         for k, v in read_kv(nats_url, "flowctl_status").items()
                         if k.startswith("hello.")), 10, "hello still running")


NEVER_DONE = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: never-done}
spec:
  sources:
    - {id: hook, type: http, config: {port: 0}}
    - {id: tail, type: file, config: {path: in.txt, follow: true}}
    - {id: once, type: generate, config: {count: 3}}
  sinks:
    - {id: out, type: stdout, inputs: [hook, tail, once]}
"""


def test_until_done_refuses_at_once_a_flow_that_can_never_be_done(tmp_path: Path) -> None:
    """A source that never finishes (the registry's word for its type and config) makes
    `--until-done` a usage error, before anything starts; `--timeout` lets it run."""
    import time

    compose = str(EXAMPLES / "compose-flow.yaml")
    flowctl("run", compose, "--until-done", cwd=tmp_path)  # warm (a fresh venv compiles)
    started = time.monotonic()
    ok(flowctl("validate", compose))  # the same start-up and checks: the baseline
    baseline = time.monotonic() - started
    started = time.monotonic()
    refused = flowctl("run", compose, "--until-done", cwd=tmp_path)
    took = time.monotonic() - started
    failed(refused, 2, "--until-done", "source 'gen' (generate) never finishes",
           "it has no count", "--timeout")
    assert took < max(2.0, 2 * baseline + 0.5), (took, baseline)  # (loaded: slower)
    flow = tmp_path / "never-done.yaml"
    flow.write_text(NEVER_DONE)
    (tmp_path / "in.txt").write_text("")
    refused = flowctl("run", str(flow), "--until-done", cwd=tmp_path)
    failed(refused, 2, "source 'hook' (http) never finishes: it serves requests until stopped",
           "source 'tail' (file) never finishes: follow is on")
    assert "'once'" not in refused.stderr
