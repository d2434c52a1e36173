"""What a user sees when something goes wrong, from the real `flowctl` executable: usage
errors (exit 2) naming what a valid name is, NATS that cannot be reached or refuses
(exit 3), a failed request (exit 1) as one ``error:`` line and never a traceback unless
``FLOWCTL_DEBUG=1`` asks for one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.programs.cli_helpers import (  # noqa: F401  (an autouse fixture)
    EXAMPLES,
    FLOWCTL,
    ROOT,
    Flowctl,
    as_json,
    cli_env,
    cli_processes_cleaned_up,
    failed,
    flowctl,
    free_port,
    make_certs,
    many,
    nats_server,
    ok,
    startup_baseline,
    timed,
    wait_for,
)

PROGRAMS = Path(__file__).parent / "programs"
FLOW = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  sources:
    - {{id: gen, type: generate, config: {{count: {count}}}}}
  sinks:
    - {{id: out, type: stdout, inputs: [gen]}}
"""


def write_flow(tmp: Path, name: str, count: int = 1) -> str:
    path = tmp / f"{name}-{count}.yaml"
    path.write_text(FLOW.format(name=name, count=count))
    return str(path)


def usage_text(result: subprocess.CompletedProcess[str]) -> str:
    """A usage error's message, out of its box and unwrapped."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.replace("\u2502", " ").split())


# ------------------------------------------------------------------- usage (exit 2)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    usage = (["get", "--bogus"], ["rollback", "x", "-r", "one"], ["get", "-o", "xml"], ["nope"],
             ["--creds", str(tmp_path / "missing.creds"), "get"], ["apply"])
    for args, result in zip(usage, many(*usage), strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


BAD_NAMES = ("a b", "*", ">", "a.b", "Upper", "_a", "a-", "x" * 64, "a_b", "a\n")
NAME_RULE = "use lowercase letters, digits and '-' (a letter or digit first and last), " \
    "at most 63 characters"


def test_malformed_names_are_usage_errors_before_connecting() -> None:
    """Names become NATS subjects and KV keys: a malformed one is refused (exit 2) with
    what a valid name is, before any connection (no server runs here)."""
    commands = ("start", "status", "describe", "get", "deploy", "stop", "undeploy",
                "delete", "history", "logs", "rollback")
    cases = [([cmd, bad, *(["-r", "1"] if cmd == "rollback" else [])], bad, "flow")
             for cmd, bad in zip(commands, ("a b", "*", ">", "a.b") * 3, strict=False)]
    cases += [(["logs", "ok", "a.b"], "a.b", "node")]
    cases += [(["agent", "--name", bad], bad, "agent") for bad in ("X", "a.b")]
    url = f"nats://127.0.0.1:{free_port()}"
    results = many(*(args for args, _, _ in cases), nats_url=url)
    for (args, bad, kind), result in zip(cases, results, strict=True):
        text = usage_text(result)
        assert f"{bad!r} is not a valid {kind} name: {NAME_RULE}" in text, (args, text)
    # A valid name gets past the check (and then needs NATS: exit 3).
    failed(flowctl("get", "a-1", nats_url=url), 3, url)


def test_the_name_check_is_the_flow_file_rule() -> None:
    import typer

    from cli.main import valid_name

    check = valid_name("flow")
    for good in ("a", "a-1", "0", "x" * 63, "edge-1", None):
        assert check(good) == good
    for bad in BAD_NAMES:
        with pytest.raises(typer.BadParameter, match=re.escape(NAME_RULE)):
            check(bad)


def test_kv_replicas_on_a_single_server_is_one_sentence(nats_url: str, tmp_path: Path
                                                         ) -> None:
    """A bucket the server cannot create is named with the server's reason (exit 1),
    for each command that opens buckets; FLOWCTL_DEBUG=1 shows the traceback instead."""
    reason = "replicas > 1 not supported in non-clustered mode"
    single = "a single server supports --kv-replicas 1"
    get, agent, run = many(["--kv-replicas", "3", "get"],
                           ["--kv-replicas", "3", "agent", "--name", "r3", "--log-dir",
                            str(tmp_path)],
                           ["--kv-replicas", "3", "run", str(EXAMPLES / "hello.yaml")],
                           nats_url=nats_url)
    failed(get, 1, f"cannot create bucket flowctl_flows with 3 replicas: {reason}; {single}")
    failed(agent, 1, "cannot create bucket flowctl_agents with 3 replicas", reason, single)
    failed(run, 1, "cannot create bucket flowctl_", "with 3 replicas", reason, single)
    usage_text(flowctl("--kv-replicas", "0", "get", nats_url=nats_url))
    debug = subprocess.run([FLOWCTL, "--kv-replicas", "2", "get"], capture_output=True,
                           text=True, timeout=30, cwd=ROOT,
                           env=cli_env(nats_url, {"FLOWCTL_DEBUG": "1"}))
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ServerError" in debug.stderr
    assert "creating KV bucket flowctl_flows with 2 replica(s)" in debug.stderr
    assert as_json(flowctl("list", "-o", "json", nats_url=nats_url)) == []  # R1 works


def test_server_without_jetstream_is_exit_3(tmp_path: Path) -> None:
    from flowstore.server import find_nats_server

    port = free_port()
    proc = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"

        def answered() -> subprocess.CompletedProcess[str] | None:
            result = flowctl("get", nats_url=url)
            return None if "cannot reach" in result.stderr else result  # still starting

        result = wait_for(answered, 15, "the nats-server to listen")
        failed(result, 3, "NATS answered but JetStream did not", "nats-server -js")
    finally:
        proc.terminate()
        proc.wait(10)


def test_embedded_agents_not_ready_in_time_is_one_sentence(tmp_path: Path) -> None:
    """`flowctl run` whose agents never report ready: a sentence (exit 1), and the
    nats-server and agents it started are gone."""
    run = Flowctl("run", str(EXAMPLES / "hello.yaml"), log_dir=tmp_path, name="slow",
                  program=[sys.executable, str(PROGRAMS / "cli_slow_agents.py")])
    assert run.wait(60) == 1, run.err()
    assert "Traceback" not in run.err()
    assert run.err().strip().splitlines()[-1].startswith(
        "error: the embedded agents were not ready within 0.5s"), run.err()
    run.assert_no_leftovers()


def test_remaining_nats_errors_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """cli.errors.run maps what no command catches: JetStream refusals and other NATS
    errors exit 1, a lost or JetStream-less server exits 3, a bug is one line too."""
    from nats.errors import BadSubjectError, ConnectionClosedError, NoRespondersError
    from nats.js.errors import InvalidKeyError, ServerError

    from cli.errors import run

    async def raising(exc: Exception) -> None:
        raise exc

    cases = [
        (InvalidKeyError(), 1, "NATS refused the request (InvalidKeyError)"),
        (BadSubjectError(), 1, "NATS refused the request (BadSubjectError): invalid subject"),
        (ServerError(code=500, err_code=10052, description="invalid subject"), 1,
         "NATS JetStream refused the request: invalid subject"),
        (ConnectionClosedError(), 3, "lost NATS during the command (ConnectionClosedError"),
        (NoRespondersError(), 3, "JetStream did not"),
        (TimeoutError(), 1, "timed out"),
        (ZeroDivisionError("boom"), 1, "unexpected error ZeroDivisionError: boom "
         "(run with FLOWCTL_DEBUG=1 for the traceback)"),
    ]
    monkeypatch.delenv("FLOWCTL_DEBUG", raising=False)
    for exc, code, words in cases:
        with pytest.raises(SystemExit) as exit_:
            run(raising(exc))
        assert exit_.value.code == code, exc
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    monkeypatch.setenv("FLOWCTL_DEBUG", "1")
    with pytest.raises(InvalidKeyError):
        run(raising(InvalidKeyError()))


# ------------------------------------------------------------ NATS (exit 3 and 1)


def test_nats_unreachable_is_one_line_exit_3_within_2s(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    flow = str(EXAMPLES / "hello.yaml")
    for args in (["get"], ["apply", "-f", flow], ["run", flow]):
        result, secs = timed(*args, nats_url=url)
        failed(result, 3, url, "flowctl server")
        if secs >= 2.0:  # a loaded machine: 2 s on top of the CLI's own start-up now
            baseline = startup_baseline()
            assert secs < 2.0 + baseline, f"{args}: {secs:.2f}s (start-up {baseline:.2f}s)"
    # An agent is a daemon: it waits for NATS, saying so, until stopped (exit 0).
    agent = Flowctl("agent", "--name", "a", "--log-dir", str(tmp_path), log_dir=tmp_path,
                    nats_url=url, name="waiting")
    agent.wait_output("waiting for NATS")
    assert "retry_in_s" in agent.err() and "Traceback" not in agent.err()
    assert agent.stop() == 0
    for result in many(["list", "-o", "json"], ["deploy", "x"], ["status"], ["agents"],
                       ["history", "x"], ["logs", "x", "--follow"], nats_url=url):
        failed(result, 3, url, "flowctl server")


def test_credentials_options(tmp_path: Path) -> None:
    with nats_server(tmp_path, "--user", "u", "--pass", "p") as addr:
        url = f"nats://{addr}"
        good, wrong, none = many(["--user", "u", "--password", "p", "list", "-o", "json"],
                                 ["--user", "u", "--password", "wrong", "get"], ["get"],
                                 nats_url=url)
        assert as_json(good) == []
        failed(wrong, 3, url, "credentials")
        failed(none, 3, "credentials")
    with nats_server(tmp_path, "--auth", "s3cret") as addr:
        good, wrong = many(["--token", "s3cret", "list", "-o", "json"],
                           ["--token", "nope", "get"], nats_url=f"nats://{addr}")
        assert as_json(good) == []
        failed(wrong, 3, "credentials")


def test_tls_options(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    server_tls = ["--tls", "--tlscert", str(certs / "server.pem"), "--tlskey",
                  str(certs / "server.key"), "--tlscacert", str(certs / "ca.pem"), "--tlsverify"]
    with nats_server(tmp_path, *server_tls) as addr:
        url = f"tls://{addr}"
        ca = ["--tls-ca", str(certs / "ca.pem")]
        mutual, no_client_cert = many(
            [*ca, "--tls-cert", str(certs / "client.pem"), "--tls-key",
             str(certs / "client.key"), "list", "-o", "json"], [*ca, "list"], nats_url=url)
        assert as_json(mutual) == []
        assert mutual.stderr == ""
        failed(no_client_cert, 3, url)


def test_cas_conflict_is_one_message_exit_1(nats_url: str, tmp_path: Path) -> None:
    ok(flowctl("apply", "-f", write_flow(tmp_path, "cas", count=1), nats_url=nats_url))
    program = str(Path(__file__).parent / "programs" / "cli_conflict.py")
    result = subprocess.run(
        [sys.executable, program, "apply", "-f", write_flow(tmp_path, "cas", count=2)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=cli_env(nats_url))
    failed(result, 1, "changed by someone else")
    # Real concurrent writers: each one either wins or gets that same clean line.
    results = many(*(["apply", "-f", write_flow(tmp_path, "cas", count=n)] for n in (3, 4, 5)),
                   nats_url=nats_url)
    for result in results:
        if result.returncode:
            failed(result, 1, "changed by someone else")
    record = as_json(flowctl("get", "cas", "-o", "json", nats_url=nats_url))
    # the other writer changed no spec (no new revision); each winner's spec is one
    assert record["status"]["revision"] == 1 + sum(r.returncode == 0 for r in results)
