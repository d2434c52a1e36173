"""The `flowctl` commands, run as the real executable against a real nats-server (and a
real `flowctl agent` process where a command needs one): success and failure paths,
exit codes (0 ok, 1 failed, 2 usage, 3 NATS), and ``-o json`` parsed.

`flowctl run` is tested in test_cli_run.py, the examples in test_examples.py.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    EXAMPLES,
    FLOWCTL,
    ROOT,
    Flowctl,
    as_json,
    cli_agent_fixture,
    cli_env,
    cli_processes_cleaned_up,
    failed,
    flowctl,
    free_port,
    json_lines,
    many,
    ok,
    read_kv,
    read_terminal,
    startup_baseline,
    timed,
    wait_for,
)

HEAVY = ("nats", "pydantic", "flowengine", "flowstore", "componentmanager", "structlog", "yaml")
FLOW_TEMPLATE = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  sources:
    - {{id: gen, type: generate, config: {{count: {count}, template: {{greeting: "hi {{seq}}"}}}}}}
  processors:
    - {{id: enrich, type: python, inputs: [gen], config: {{function: "enrich:enrich"}}}}
  sinks:
    - {{id: out, type: stdout, inputs: [enrich]}}
"""


def write_flow(tmp: Path, name: str, count: int = 3) -> str:
    path = tmp / f"{name}-{count}.yaml"
    path.write_text(FLOW_TEMPLATE.format(name=name, count=count))
    return str(path)


# ----------------------------------------------------------------------- no server


def test_every_command_has_help_with_an_example() -> None:
    import typer

    import cli.agent
    import cli.dlq
    import cli.embedded
    import cli.files
    import cli.live_views
    import cli.logs
    import cli.observe
    import cli.server
    import cli.status  # noqa: F401  (registers the commands)
    from cli.main import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    contract = {"apply", "validate", "get", "list", "describe", "deploy", "start", "stop",
                "undeploy", "delete", "status", "agents", "components", "history", "rollback",
                "logs", "agent", "server", "run", "dlq", "tap", "top"}
    assert contract <= set(commands)
    for name, command in commands.items():
        assert f"Example: flowctl {name}" in (command.help or ""), name
    names = ("run", "status", "apply")  # and what the executable renders of it
    for name, result in zip(names, many(*([n, "--help"] for n in names)), strict=True):
        assert f"Example: flowctl {name}" in " ".join(ok(result).stdout.split())


def test_root_help_is_fast_and_imports_nothing_heavy() -> None:
    best = min(timed("--help")[1] for _ in range(3))
    if best >= 0.8:  # a loaded machine: compared with the start-up of a command now
        assert best < 0.8 + startup_baseline(), f"flowctl --help took {best:.2f}s"
    probe = ("import sys\nsys.argv = ['flowctl', '--help']\nfrom cli.main import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                            text=True, timeout=30, cwd=ROOT, env=cli_env())
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_validate_and_components(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(FLOW_TEMPLATE.format(name="bad", count=1).replace("stdout", "no-such-type")
                   .replace("inputs: [gen]", "inputs: [nowhere]"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: flowctl/v1\nkind: Flow\nmetadata: {name: x}\nspec: [\n")
    good, text, as_data, syntax, missing = many(
        ["validate", str(EXAMPLES / "hello.yaml")], ["validate", str(bad)],
        ["validate", str(bad), "-o", "json"], ["validate", str(broken)],
        ["validate", str(tmp_path / "missing.yaml")])
    assert "valid (0 error(s)" in ok(good).stdout
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "no-such-type" in text.stdout and "nowhere" in text.stdout
    assert as_data.returncode == 1
    data = yaml.safe_load(as_data.stdout)
    assert data["status"] == "errors" and len(data["errors"]) >= 2
    # A file that is not YAML, or not there, is reported like any other problem
    assert syntax.returncode == 1 and "Traceback" not in syntax.stderr
    assert "broken.yaml: line 5: not valid YAML" in syntax.stdout
    assert "[invalid_yaml]" in syntax.stdout
    assert missing.returncode == 1 and "missing.yaml: file not found [unreadable]" in \
        missing.stdout

    table, everything, one, unknown = many(
        ["components"], ["components", "-o", "json"], ["components", "route", "-o", "json"],
        ["components", "no-such-type"])
    assert "generate" in ok(table).stdout
    by_key = {(t["type"], t["role"]): t for t in as_json(everything)}
    assert {("generate", "source"), ("filter", "processor"), ("stdout", "sink")} <= set(by_key)
    flt = by_key[("filter", "processor")]
    assert [p["name"] for p in flt["inputs"]] == ["in"]
    assert "where" in flt["config_schema"]["properties"]
    assert [t["type"] for t in as_json(one)] == ["route"]
    failed(unknown, 1, "no-such-type")


# ---------------------------------------------------------------- the lifecycle


def test_lifecycle_with_a_real_agent(nats_url: str, tmp_path: Path,
                                     cli_agent: Callable[..., Flowctl]) -> None:
    agent = cli_agent("cli-agent", labels="zone=a")
    flow = write_flow(tmp_path, "greet", count=10)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return flowctl(*args, nats_url=nats_url)

    assert ok(cli("apply", "-f", flow)).stdout.strip() == \
        "flow/greet created (revision 1, not_deployed)"
    again, one, listed, table, start_early = many(
        ["apply", "-f", flow], ["get", "greet", "-o", "json"], ["list", "-o", "json"], ["get"],
        ["start", "greet"], nats_url=nats_url)
    assert "unchanged (revision 1" in ok(again).stdout
    record = as_json(one)
    assert (record["metadata"]["name"], record["status"]["state"],
            record["status"]["revision"]) == ("greet", "not_deployed", 1)
    assert [f["metadata"]["name"] for f in as_json(listed)] == ["greet"]
    rows = ok(table).stdout.splitlines()
    assert rows[0].split() == ["NAME", "STATE", "NODES", "REVISION", "UPDATED"]
    assert rows[1].split()[:4] == ["greet", "not_deployed", "3", "1"]
    failed(start_early, 1, "cannot start flow 'greet'", "deploy it first")

    deployed = ok(cli("deploy", "greet"))
    assert "flow/greet not_deployed -> deployed_stopped" in deployed.stdout
    assert "+ config greet.gen" in deployed.stderr and "+ config greet.out" in deployed.stderr
    again, delete_early = many(["deploy", "greet"], ["delete", "greet"], nats_url=nats_url)
    assert ok(again).stdout.strip() == "flow/greet is already deployed; nothing to do"
    failed(delete_early, 1, "undeploy it first")
    started = as_json(cli("start", "greet", "-o", "json"))
    assert (started["from"], started["to"]) == ("deployed_stopped", "running")

    def running() -> dict[str, Any] | None:
        data = as_json(cli("status", "greet", "-o", "json"))
        seen = {s["node"]: (s["state"], s["counters"]["in"]) for s in data["replicas"]}
        done = (data["effective"]["observed"] == "running"
                and seen == {"gen": ("completed", 0), "enrich": ("running", 10),
                             "out": ("running", 10)})
        return data if done else None

    status = wait_for(running, 20, "the flow running on the agent", interval=0.2)
    assert {s["agent"] for s in status["replicas"]} == {"cli-agent"}
    wait_for(lambda: len(json_lines(agent.out())) == 10, 10, "the sink output on the agent")
    events = json_lines(agent.out())
    assert [e["greeting"] for e in events] == [f"hi {i}" for i in range(10)]
    assert [e["score"] for e in events] == [i * i for i in range(10)]  # enrich.py ran

    text, agents, agents_table, described, described_yaml = many(
        ["status", "greet"], ["agents", "-o", "json"], ["agents"],
        ["describe", "greet", "-o", "json"], ["describe", "greet"], nats_url=nats_url)
    assert "flow/greet: running (desired running" in ok(text).stdout
    assert ("NODE REPLICA AGENT STATE IN OUT FILTERED ERRORS DROPPED IN/S OUT/S LAG "
            "REASON / LAST ERROR" in " ".join(text.stdout.split()))
    [me] = as_json(agents)
    assert (me["name"], me["labels"], me["live"]) == ("cli-agent", {"zone": "a"}, True)
    assert set(me["components"]) == {"greet.gen.0", "greet.enrich.0", "greet.out.0"}
    assert "cli-agent" in ok(agents_table).stdout and "zone=a" in agents_table.stdout
    data = as_json(described)
    assert data["flow"]["spec"]["nodes"][0]["config"]["count"] == 10
    nodes = {n["config"]["node"]: n for n in data["nodes"]}
    assert nodes["gen"]["config"]["assignments"] == ["cli-agent"]
    assert nodes["gen"]["status"][0]["state"] == "completed"
    assert yaml.safe_load(ok(described_yaml).stdout)["effective"]["observed"] == "running"

    failed(cli("undeploy", "greet"), 1, "use --force")
    assert "running -> deployed_stopped" in ok(cli("stop", "greet")).stdout
    wait_for(lambda: as_json(cli("status", "greet", "-o", "json"))["effective"]["observed"]
             == "stopped", 10, "the replicas stopped", interval=0.2)
    again = as_json(cli("stop", "greet", "-o", "json"))  # idempotent: exit 0, said so
    assert again == {"flow": "greet", "action": "stop", "state": "deployed_stopped",
                     "changed": False}
    ok(cli("undeploy", "greet"))
    assert "already not deployed" in ok(cli("undeploy", "greet")).stdout
    assert read_kv(nats_url, "flowctl_config") == {}
    assert read_kv(nats_url, "flowctl_status") == {}
    assert "-> deleted" in ok(cli("delete", "greet")).stdout
    for result in many(["get", "greet"], ["status", "greet"], ["deploy", "greet"],
                       nats_url=nats_url):
        failed(result, 1, "flow 'greet' not found")


def test_forced_undeploy_and_delete(nats_url: str, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return flowctl(*args, nats_url=nats_url)

    ok(cli("apply", "-f", write_flow(tmp_path, "forced")))
    ok(cli("deploy", "forced"))
    ok(cli("start", "forced"))
    result = as_json(cli("undeploy", "forced", "--force", "-o", "json"))
    assert (result["from"], result["to"]) == ("running", "not_deployed")
    ok(cli("deploy", "forced"))
    ok(cli("start", "forced"))
    ok(cli("delete", "forced", "--force"))
    assert read_kv(nats_url, "flowctl_config") == {}
    assert as_json(cli("list", "-o", "json")) == []


def test_history_and_rollback(nats_url: str, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return flowctl(*args, nats_url=nats_url)

    ok(cli("apply", "-f", write_flow(tmp_path, "hist", count=1)))
    assert "flow/hist configured (revision 2" in \
        ok(cli("apply", "-f", write_flow(tmp_path, "hist", count=2))).stdout
    history, as_yaml, table, unknown, far = many(
        ["history", "hist", "-o", "json"], ["history", "hist", "-o", "yaml"],
        ["history", "hist"], ["history", "nope"], ["rollback", "hist", "--revision", "99"],
        nats_url=nats_url)
    assert [r["revision"] for r in as_json(history)] == [1, 2]
    assert yaml.safe_load(ok(as_yaml).stdout) == as_json(history)
    assert ok(table).stdout.split()[:4] == ["REVISION", "STATE", "NODES", "UPDATED"]
    failed(unknown, 1, "flow 'nope' not found")
    failed(far, 1, "no revision 99")
    rolled = as_json(cli("rollback", "hist", "--revision", "1", "-o", "json"))
    assert (rolled["revision"], rolled["from_revision"]) == (3, 1)
    record = as_json(cli("get", "hist", "-o", "json"))
    assert record["spec"]["sources"][0]["config"]["count"] == 1


# ------------------------------------------------------------- live reading commands


def test_status_watch_redraws_until_ctrl_c(nats_url: str, tmp_path: Path) -> None:
    ok(flowctl("apply", "-f", write_flow(tmp_path, "watched"), nats_url=nats_url))
    master, slave = pty.openpty()
    proc = subprocess.Popen([FLOWCTL, "status", "watched", "--watch", "--interval", "0.2"],
                            stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                            env=cli_env(nats_url), cwd=ROOT)
    os.close(slave)
    try:
        read_terminal(master, lambda seen: seen.count(b"flow/watched: not_deployed") >= 3, 15)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_logs_follow_prints_component_log_lines(nats_url: str, tmp_path: Path,
                                                cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("log-agent")
    data = tmp_path / "events.jsonl"
    data.write_text('{"n": 1}\nthis is not json\n{"n": 2}\n')
    flow = tmp_path / "logged.yaml"
    flow.write_text(
        "apiVersion: flowctl/v1\nkind: Flow\nmetadata: {name: logged}\nspec:\n"
        f"  sources:\n    - {{id: src, type: file, config: {{path: '{data}', format: jsonl}}}}\n"
        "  sinks:\n    - {id: out, type: stdout, inputs: [src]}\n")
    ok(flowctl("apply", "-f", str(flow), nats_url=nats_url))
    human = Flowctl("logs", "logged", "--follow", log_dir=tmp_path, nats_url=nats_url,
                    name="logs")
    as_json_lines = Flowctl("logs", "logged", "src", "-f", "-o", "json", log_dir=tmp_path,
                            nats_url=nats_url, name="logs-json")
    for follow in (human, as_json_lines):
        follow.wait_output("following flowctl.logs.logged.")
    ok(flowctl("deploy", "logged", nats_url=nats_url))
    ok(flowctl("start", "logged", nats_url=nats_url))
    output = human.wait_output("skipping a line that is not JSON", stream="out")
    assert "src.0@log-agent" in output
    as_json_lines.wait_output("skipping a line that is not JSON", stream="out")
    records = json_lines(as_json_lines.out())
    [record] = [r for r in records if "skipping" in r["line"]]
    assert (record["flow"], record["node"], record["replica"], record["agent"]) == \
        ("logged", "src", 0, "log-agent")
    for follow in (human, as_json_lines):
        follow.interrupt()  # Ctrl+C is the normal end of --follow
        assert follow.wait(10) == 0
    quiet = ok(flowctl("logs", "logged", "out", nats_url=nats_url))  # stored: none
    assert quiet.stdout == ""  # said on stderr, exit 0: an empty log is an answer
    assert quiet.stderr.startswith("no log lines of flow/logged node out in what NATS keeps")
    later = ok(flowctl("logs", "logged", "--grep", "nothing-like-this", "--since", "1h",
                       nats_url=nats_url))
    assert later.stdout == "" and "no log lines of flow/logged matching 'nothing-like-this' " \
        "since 20" in later.stderr


def test_agent_log_formats_and_name_clash(nats_url: str,
                                          cli_agent: Callable[..., Flowctl]) -> None:
    structured = cli_agent("json-agent")
    events = json_lines(structured.err())
    assert any(e.get("event") == "agent started" and e.get("level") == "info" for e in events)
    human = cli_agent("human-agent", log_json=False)
    line = next(x for x in human.err().splitlines() if "agent started" in x)
    assert not line.lstrip().startswith("{") and "agent=human-agent" in line
    failed(flowctl("agent", "--name", "json-agent", nats_url=nats_url), 1, "already running")


def test_server_command(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    server = Flowctl("server", "--port", str(port), "--store-dir", str(tmp_path / "store"),
                     log_dir=tmp_path, name="server")
    try:
        server.wait_output(f"listening on {url}")
        ok(flowctl("apply", "-f", write_flow(tmp_path, "served"), nats_url=url))
        listed, clash = many(["list", "-o", "json"], ["server", "--port", str(port),
                                                      "--store-dir", str(tmp_path / "other")],
                             nats_url=url)
        assert [f["metadata"]["name"] for f in as_json(listed)] == ["served"]
        # In the foreground nats-server's own log comes first; flowctl's line ends it.
        assert clash.returncode == 1 and "Traceback" not in clash.stderr
        assert clash.stderr.strip().splitlines()[-1] == \
            f"error: nats-server exited with code 1 (is port {port} already in use?)"
        server.interrupt()
        assert server.wait(15) == 0
        server.assert_no_leftovers()
    finally:
        server.stop()
    assert (tmp_path / "store" / "jetstream").is_dir()


def test_server_config_file_is_passed_to_nats_server(tmp_path: Path) -> None:
    """`flowctl server --config FILE` runs nats-server -c FILE: the file's port and
    JetStream store are used; a broken file is one sentence after nats-server's own."""
    port = free_port()
    store = tmp_path / "configured-store"
    config = tmp_path / "node.conf"
    config.write_text(f'port: {port}\njetstream {{store_dir: "{store}"}}\n')
    url = f"nats://127.0.0.1:{port}"
    server = Flowctl("server", "--config", str(config), log_dir=tmp_path, name="configured")
    try:
        server.wait_output(f"nats-server listening on {url} (config {config})")
        ok(flowctl("apply", "-f", write_flow(tmp_path, "configured"), nats_url=url))
        assert (store / "jetstream").is_dir()
        server.interrupt()
        assert server.wait(15) == 0, server.err()
        server.assert_no_leftovers()
    finally:
        server.stop()
    broken = tmp_path / "broken.conf"
    broken.write_text("port: {{{\n")
    bad, missing = many(["server", "--config", str(broken)],
                        ["server", "--config", str(tmp_path / "missing.conf")])
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == \
        f"error: nats-server exited with code 1 with config {broken} (its message is above)"
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
