"""What users of kubectl, natscli and rpk expect from a CLI, driven as the real executable:
global options anywhere, --version, completion, -o wide, a closed pipe is a normal end,
idempotent lifecycle, apply from stdin or a directory, up, diff, `get -o yaml` round
trip, history counting spec changes, rollback to the previous spec, watches that ride out
a NATS restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from flowstore.server import EmbeddedNats
from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    FLOWCTL,
    Flowctl,
    cli_agent_fixture,
    cli_env,
    cli_processes_cleaned_up,
    failed,
    flowctl,
    many,
    ok,
    wait_for,
)

FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}, description: a counter}}
spec:
  sources:
    - id: gen
      type: generate
      config: {{count: {count}, template: {{greeting: "hi"}}}}
  processors:
    - {{id: up, type: transform, inputs: [gen], config: {{set: {{n: "seq + 1"}}}}}}
  sinks:
    - {{id: out, type: stdout, inputs: [up]}}
"""


def write(path: Path, name: str, count: int = 3) -> Path:
    path.write_text(FLOW.format(name=name, count=count))
    return path


def as_json(result: subprocess.CompletedProcess[str]) -> object:
    return json.loads(ok(result).stdout)


def test_without_a_server(tmp_path: Path) -> None:
    version, completion, http_url, bad_first = many(
        ["--version"], ["completion", "bash"],
        ["list", "--nats-url", "http://127.0.0.1:4222"],
        ["--nats-url", "https://x:1", "get"])
    assert ok(version).stdout.startswith("flowctl ")
    assert "_FLOWCTL_COMPLETE" in ok(completion).stdout
    for result in (http_url, bad_first):
        assert result.returncode == 2 and "which NATS does not speak" in result.stderr
    # What the shell asks for when completing `flowctl sta<TAB>`:
    env = {**cli_env(), "_FLOWCTL_COMPLETE": "complete_bash", "COMP_WORDS": "flowctl sta",
           "COMP_CWORD": "1"}
    done = subprocess.run([FLOWCTL], capture_output=True, text=True, env=env, timeout=30)
    assert set(done.stdout.split()) == {"start", "status"}


def test_global_options_anywhere_and_wide_output(nats_url: str, tmp_path: Path) -> None:
    flow = write(tmp_path / "f.yaml", "anywhere")
    # NATS_URL is unset (flowctl() without nats_url): only the option names the server
    ok(flowctl("apply", "-f", str(flow), "--nats-url", nats_url))
    after, before, output_first = many(
        ["list", "-o", "json", "--nats-url", nats_url],
        ["--nats-url", nats_url, "list", "-o", "json"],
        ["-o", "json", "--nats-url", nats_url, "list"])
    for result in (after, before, output_first):
        assert [f["metadata"]["name"] for f in json.loads(ok(result).stdout)] == ["anywhere"]
    wide, status_wide = many(["list", "-o", "wide"], ["status", "anywhere", "-o", "wide"],
                             nats_url=nats_url)
    header = ok(wide).stdout.splitlines()[0].split()
    assert header == ["NAME", "STATE", "NODES", "REVISION", "DEPLOYED", "DELIVERY", "UPDATED",
                      "DESCRIPTION"]
    assert "a counter" in wide.stdout
    assert "flow/anywhere: not_deployed" in ok(status_wide).stdout


def test_a_closed_pipe_is_a_normal_end(nats_url: str, tmp_path: Path) -> None:
    for i in range(40):  # enough rows to overflow a pipe's buffer
        write(tmp_path / f"f{i}.yaml", f"flow-{i:02d}")
    ok(flowctl("apply", "-f", str(tmp_path), nats_url=nats_url))
    for args in (["list", "-o", "yaml"], ["components", "-o", "json"]):
        proc = subprocess.Popen([FLOWCTL, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=cli_env(nats_url))
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        assert proc.wait(30) == 0
        assert proc.stderr.read() == b""


def test_lifecycle_is_idempotent_and_up_is_one_step(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("host-1")
    flow = write(tmp_path / "f.yaml", "steady", count=2)
    first = ok(flowctl("up", "-f", str(flow), nats_url=nats_url)).stdout
    assert first.startswith("flow/steady created (revision 1, running); deployed and started")
    again, start, deploy = many(["up", "-f", str(flow)], ["start", "steady"],
                                ["deploy", "steady"], nats_url=nats_url)
    assert ok(again).stdout.startswith("flow/steady unchanged (revision 1, running)")
    assert ok(start).stdout.strip() == "flow/steady is already running; nothing to do"
    assert "already deployed and running" in ok(deploy).stdout
    ok(flowctl("stop", "steady", nats_url=nats_url))
    stop_again = ok(flowctl("stop", "steady", nats_url=nats_url)).stdout
    assert stop_again.strip() == "flow/steady is already stopped; nothing to do"
    history = as_json(flowctl("history", "steady", "-o", "json", nats_url=nats_url))
    assert [r["revision"] for r in history] == [1]  # state changes are not revisions
    started = ok(flowctl("apply", "-f", str(flow), "--start", nats_url=nats_url)).stdout
    assert "unchanged (revision 1, running); started" in started


def test_files_from_stdin_and_directories_round_trip_and_diff(
        nats_url: str, tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    write(flows / "a.yaml", "alpha")
    write(flows / "b.yml", "beta")
    (flows / "notes.txt").write_text("not a flow")
    applied = ok(flowctl("apply", "-f", str(flows), nats_url=nats_url)).stdout
    assert "flow/alpha created" in applied and "flow/beta created" in applied

    # One bad file in a directory: nothing of it is applied.
    broken = tmp_path / "broken"
    broken.mkdir()
    write(broken / "a.yaml", "gamma")
    (broken / "b.yaml").write_text(FLOW.format(name="delta", count=1).replace("stdout",
                                                                              "nope"))
    failed(flowctl("apply", "-f", str(broken), nats_url=nats_url), 1, "nope",
           one_line=False)
    listed = as_json(flowctl("list", "-o", "json", nats_url=nats_url))
    assert [f["metadata"]["name"] for f in listed] == ["alpha", "beta"]

    # get -o yaml is a flow file apply takes back unchanged; diff shows nothing
    got = ok(flowctl("get", "alpha", "-o", "yaml", nats_url=nats_url)).stdout
    document = yaml.safe_load(got)
    assert document["status"]["state"] == "not_deployed"
    assert document["spec"]["processors"][0]["inputs"] == ["gen"]
    back = subprocess.run([FLOWCTL, "apply", "-f", "-"], input=got, capture_output=True,
                          text=True, env=cli_env(nats_url), timeout=30)
    assert ok(back).stdout.startswith("flow/alpha unchanged (revision 1")
    (tmp_path / "alpha.yaml").write_text(got)
    same = ok(flowctl("diff", "-f", str(tmp_path / "alpha.yaml"), "--exit-code",
                      nats_url=nats_url))
    assert same.stdout == "" and "0 of 1 flow(s) would change" in same.stderr

    changed = write(tmp_path / "alpha2.yaml", "alpha", count=9)
    diff = flowctl("diff", "-f", str(changed), "--exit-code", nats_url=nats_url)
    assert diff.returncode == 1, diff.stderr
    assert "-      count: 3" in diff.stdout and "+      count: 9" in diff.stdout
    assert ok(flowctl("diff", "-f", str(changed), nats_url=nats_url)).stdout == diff.stdout

    # History counts spec changes; rollback without --revision restores the previous spec
    ok(flowctl("apply", "-f", str(changed), nats_url=nats_url))
    rolled = ok(flowctl("rollback", "alpha", nats_url=nats_url)).stdout
    assert "rolled back to the spec before revision 2 (now revision 3)" in rolled
    final = yaml.safe_load(ok(flowctl("get", "alpha", "-o", "yaml", nats_url=nats_url)).stdout)
    assert final["spec"]["sources"][0]["config"]["count"] == 3
    history = as_json(flowctl("history", "alpha", "-o", "json", nats_url=nats_url))
    assert [r["revision"] for r in history] == [1, 2, 3]
    assert '"from":' in json.dumps(history[0]["spec"]["connections"])  # never from_


def test_watch_rides_out_a_nats_restart(tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = EmbeddedNats(store_dir=str(store)).start()
    port = int(server.url.rsplit(":", 1)[1])
    ok(flowctl("apply", "-f", str(write(tmp_path / "f.yaml", "watched")), nats_url=server.url))
    watch = Flowctl("get", "--watch", "--interval", "0.3", log_dir=tmp_path,
                    nats_url=server.url, name="watch")
    try:
        watch.wait_output("watched", stream="out")
        server.stop()
        watch.wait_output("unreachable", timeout=20)
        server = EmbeddedNats(store_dir=str(store), port=port).start()
        ok(flowctl("apply", "-f", str(write(tmp_path / "g.yaml", "after-restart")),
                   nats_url=server.url))
        watch.wait_output("after-restart", stream="out", timeout=30)
        assert watch.proc.poll() is None
        watch.interrupt()
        assert watch.wait(10) == 0
        assert "Traceback" not in watch.err()
    finally:
        if watch.proc.poll() is None:
            os.kill(watch.pid, signal.SIGKILL)
        server.stop()
