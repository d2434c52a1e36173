"""ProcessReplica against real programs (and a real nats-server for the SDK test).

A small real host records every ``changed()`` call (time, state, restarts, error, exit
code) and every log line; tests wait on those with deadlines, never blind sleeps
(except where they prove that something does *not* happen).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from componentmanager.runners.env import UndefinedVariableError, component_env
from componentmanager.runners.process import ProcessReplica, pid_file, reap_orphans
from flowstore.models import ComponentConfig, ExternalFields, ReplicaState
from flowstore.nats import NatsOptions

PROGRAMS = Path(__file__).parent / "programs"
PY = sys.executable


@dataclass
class Change:
    t: float
    state: ReplicaState
    restarts: int
    error: str | None
    exit_code: int | None


class Host:
    """A real ReplicaHost: records transitions and log lines."""

    def __init__(self, log_dir: Path, nats_options: NatsOptions, nc: Any = None) -> None:
        self.agent_name = "test-agent"
        self.nc = nc
        self.nats_options = nats_options
        self.log_dir = str(log_dir)
        self.allow_inline_code = False
        self.heartbeat_s = 1.0
        self.changes: list[Change] = []
        self.lines: list[tuple[str, str]] = []

    def changed(self, r: Any) -> None:
        change = Change(time.monotonic(), r.state, r.restarts, r.last_error, r.exit_code)
        self.changes.append(change)

    def log_line(self, replica: Any, line: str, stream: str = "stdout") -> None:
        self.lines.append((stream, line))

    def has_line(self, text: str) -> bool:
        return any(text in line for _, line in self.lines)


async def until(
    cond: Callable[[], bool], what: str, timeout: float = 10.0, host: Host | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            seen = f"; changes {host.changes}; output {host.lines[-20:]}" if host else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
        await asyncio.sleep(0.02)


def gone(pid: int | None) -> bool:
    """No such process, or only its zombie is left."""
    try:
        return pid is None or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cfg(
    node: str = "p", *, flow: str = "f1", command: str = PY, **ext: Any
) -> ComponentConfig:
    return ComponentConfig(
        flow=flow,
        node=node,
        type="external",
        kind="process",
        queue=f"flowctl.{flow}.{node}",
        inputs=ext.pop("inputs", {}),
        outputs=ext.pop("outputs", {}),
        config=ext.pop("config", {}),
        external=ExternalFields(command=command, **ext),
    )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "logs", NatsOptions(url="nats://127.0.0.1:4222"))


@pytest.fixture
async def spawn(host: Host) -> AsyncIterator[Callable[..., ProcessReplica]]:
    """Builds replicas on ``host`` and stops every one of them at the end."""
    made: list[ProcessReplica] = []

    def make(cfg: ComponentConfig, **kwargs: Any) -> ProcessReplica:
        replica = ProcessReplica(cfg, 0, kwargs.pop("host", host), **kwargs)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.stop()


# -- the environment contract ----------------------------------------------------------


def test_component_env_contract() -> None:
    cfg = make_cfg(
        "enrich",
        inputs={"in": ["flowctl.f1.src.out"]},
        outputs={"out": "flowctl.f1.enrich.out"},
        config={"k": [1, 2]},
        env={"A": "x-${SECRET}-y", "B": "$${KEEP}", "C": "${MISSING:-dflt}", "FLOWCTL_QUEUE": "q"},
        health_port=8088,
    )
    nats_env = NatsOptions(url="nats://h:1", token="t").env()
    env = component_env(cfg, 2, nats_env, {"SECRET": "s"}, 2.5)
    assert env["FLOWCTL_FLOW"] == "f1" and env["FLOWCTL_COMPONENT_ID"] == "enrich"
    assert env["FLOWCTL_REPLICA"] == "2" and env["FLOWCTL_SERVICE_ID"] == "f1.enrich.2"
    assert env["NATS_URL"] == "nats://h:1" and env["NATS_TOKEN"] == "t"
    assert json.loads(env["FLOWCTL_INPUTS"]) == {"in": ["flowctl.f1.src.out"]}
    assert json.loads(env["FLOWCTL_OUTPUTS"]) == {"out": "flowctl.f1.enrich.out"}
    assert json.loads(env["FLOWCTL_CONFIG"]) == {"k": [1, 2]}
    assert env["FLOWCTL_DELIVERY"] == "at-most-once" and env["ENABLE_FLOWCTL"] == "true"
    assert env["FLOWCTL_HEARTBEAT_INTERVAL"] == "2.5s"
    assert env["FLOWCTL_HEALTH_PORT"] == "8090"  # health_port + replica
    assert env["A"] == "x-s-y" and env["B"] == "${KEEP}" and env["C"] == "dflt"
    assert env["FLOWCTL_QUEUE"] == "q"  # the user's env goes on top
    with pytest.raises(UndefinedVariableError, match=r"\$\{SECRET\}"):
        component_env(cfg, 0, nats_env, {}, 2.0)


# -- events through the SDK ------------------------------------------------------------


async def test_sdk_program_moves_events(nc: Any, nats_opts: NatsOptions, tmp_path: Path) -> None:
    host = Host(tmp_path / "logs", nats_opts, nc)
    cfg = make_cfg(
        "upper",
        args=[str(PROGRAMS / "sdk_upper.py")],
        inputs={"in": ["flowctl.f1.src.out"]},
        outputs={"out": "flowctl.f1.upper.out", "alt": "flowctl.f1.upper.alt"},
        health_port=free_port(),
    )
    replica = ProcessReplica(cfg, 0, host)
    outs: list[Any] = []
    alts: list[Any] = []
    dlq: list[Any] = []

    def collect(into: list[Any]) -> Callable[[Any], Any]:
        async def cb(msg: Any) -> None:
            into.append(msg)

        return cb

    await nc.subscribe("flowctl.f1.upper.out", cb=collect(outs))
    await nc.subscribe("flowctl.f1.upper.alt", cb=collect(alts))
    await nc.subscribe("flowctl.f1.upper.dlq", cb=collect(dlq))
    try:
        await replica.start()
        await until(lambda: replica.state == ReplicaState.RUNNING, "running (health 200)", 20, host)
        events = [{"text": "hello"}, {"drop": True}, {"split": 2}, {"route": "alt"}, {"boom": 1}]
        for event in events:
            await nc.publish("flowctl.f1.src.out", json.dumps(event).encode())
        await until(lambda: len(outs) >= 3 and alts and dlq, "outputs and a dead letter", host=host)
        assert json.loads(alts[0].data) == {"route": "alt"}
        bodies = [json.loads(m.data) for m in outs]
        assert bodies[0] == {"text": "HELLO", "port": "in"}
        assert bodies[1:] == [{"part": 0}, {"part": 1}]
        headers = outs[0].headers
        assert headers["Flowctl-Source"] == "upper" and headers["Flowctl-Id"]
        assert float(headers["Flowctl-Time"]) > 0
        assert "boom requested" in dlq[0].headers["Flowctl-Error"]
        await until(lambda: host.has_line("boom requested"), "the error on stderr")
        assert ("stderr", next(x for s, x in host.lines if "boom" in x)) in host.lines
        pid = replica.pid
        assert pid_file(host.log_dir, replica.key).exists()
    finally:
        await replica.stop()
    assert replica.state == ReplicaState.STOPPED
    assert replica.exit_code == 0  # the SDK drains and exits 0 on SIGTERM
    assert gone(pid)
    assert not pid_file(host.log_dir, replica.key).exists()
    log = (tmp_path / "logs" / "f1.upper.0.log").read_text()
    assert "f1.upper.0: ready" in log and "boom requested" in log


async def test_sdk_source_emits_and_completes(
    nc: Any, nats_opts: NatsOptions, tmp_path: Path
) -> None:
    host = Host(tmp_path / "logs", nats_opts, nc)
    cfg = make_cfg(
        "src", args=[str(PROGRAMS / "sdk_source.py")], config={"count": 5},
        outputs={"out": "flowctl.f1.src.out"},
    )
    got: list[Any] = []

    async def on_msg(msg: Any) -> None:
        got.append(json.loads(msg.data))

    await nc.subscribe("flowctl.f1.src.out", cb=on_msg)
    replica = ProcessReplica(cfg, 0, host)
    try:
        await replica.start()
        await until(lambda: replica.state == ReplicaState.COMPLETED, "completed", 20, host)
        await until(lambda: len(got) == 5, "5 events")
        assert got == [{"n": i} for i in range(5)]
        assert replica.exit_code == 0 and replica.restarts == 0
    finally:
        await replica.stop()


# -- restarts ----------------------------------------------------------------------------


async def test_crash_loop_restarts_with_growing_backoff(spawn: Any, host: Host) -> None:
    cfg = make_cfg(args=["-c", "import sys; sys.exit(1)"], restart_policy="on-failure")
    replica = spawn(cfg, backoff_initial=0.1, backoff_max=5.0, ready_after=5.0)
    await replica.start()
    await until(lambda: replica.restarts >= 3, "3 restarts")
    await replica.stop()
    failed = [c for c in host.changes if c.state == ReplicaState.FAILED]
    starting = [c for c in host.changes if c.state == ReplicaState.STARTING]
    assert [c.error for c in failed[:3]] == [
        "exited with code 1; restarting in 0.1s",
        "exited with code 1; restarting in 0.2s",
        "exited with code 1; restarting in 0.4s",
    ]
    assert all(c.exit_code == 1 for c in failed)
    gaps = [s.t - f.t for f, s in zip(failed, starting, strict=False)][:3]
    for i, gap in enumerate(gaps):
        assert gap >= 0.1 * 2**i * 0.9, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert [s.restarts for s in starting[:3]] == [1, 2, 3]


async def test_backoff_resets_after_a_long_enough_run(spawn: Any, host: Host) -> None:
    cfg = make_cfg(args=["-c", "import sys, time; time.sleep(0.3); sys.exit(2)"])
    replica = spawn(cfg, backoff_initial=0.1, backoff_reset=0.2)
    await replica.start()
    await until(lambda: replica.restarts >= 2, "2 restarts")
    errors = [c.error for c in host.changes if c.state == ReplicaState.FAILED]
    assert errors[:2] == ["exited with code 2; restarting in 0.1s"] * 2


async def test_never_policy_stays_failed_with_exit_code(spawn: Any, host: Host) -> None:
    replica = spawn(make_cfg(args=["-c", "raise SystemExit(3)"], restart_policy="never"))
    await replica.start()
    await until(lambda: replica.state == ReplicaState.FAILED, "failed")
    await asyncio.sleep(0.6)  # proving that no restart happens
    status = replica.status()
    assert status.state == ReplicaState.FAILED and status.exit_code == 3
    assert status.restarts == 0 and status.last_error == "exited with code 3"


async def test_clean_exit_is_completed(spawn: Any, host: Host) -> None:
    replica = spawn(make_cfg(args=["-c", "print('done')"]))
    await replica.start()
    await until(lambda: replica.state == ReplicaState.COMPLETED, "completed")
    assert replica.exit_code == 0 and replica.restarts == 0
    await until(lambda: host.has_line("done"), "its output")
    await replica.stop()
    assert replica.state == ReplicaState.COMPLETED


async def test_missing_binary_fails_without_spamming(spawn: Any, host: Host) -> None:
    replica = spawn(make_cfg(command="flowctl-no-such-binary-xyz"))
    began = time.monotonic()
    await replica.start()
    await until(lambda: replica.state == ReplicaState.FAILED, "failed")
    assert replica.last_error is not None
    assert replica.last_error.startswith("command not found: flowctl-no-such-binary-xyz")
    await until(lambda: replica.restarts >= 1, "a retry after the backoff")
    assert time.monotonic() - began >= 0.45
    assert len(host.changes) <= 4


# -- readiness -------------------------------------------------------------------------


async def test_health_port_gates_running(spawn: Any, host: Host) -> None:
    cfg = make_cfg(args=[str(PROGRAMS / "late_health.py"), "1.0"], health_port=free_port())
    replica = spawn(cfg)
    began = time.monotonic()
    await replica.start()
    await until(lambda: host.has_line("health server up"), "the program's health server")
    await until(lambda: replica.state == ReplicaState.RUNNING, "running")
    assert time.monotonic() - began >= 1.0
    assert [c.state for c in host.changes] == [ReplicaState.RUNNING]  # starting until then


async def test_health_never_answering_fails_after_timeout(spawn: Any, host: Host) -> None:
    sleeper = ["-c", "import time; time.sleep(1000)"]
    cfg = make_cfg(args=sleeper, health_port=free_port(), restart_policy="never")
    replica = spawn(cfg, health_timeout=1.0)
    began = time.monotonic()
    await replica.start()
    await until(lambda: replica.state == ReplicaState.FAILED, "failed")
    assert 1.0 <= time.monotonic() - began < 5.0
    assert replica.last_error is not None and "not ready within 1s" in replica.last_error
    await until(lambda: gone(replica.pid), "the unhealthy program killed")


# -- environment -----------------------------------------------------------------------


async def test_env_vars_are_expanded_from_the_agent(spawn: Any, host: Host) -> None:
    script = (
        "import json, os, time; keys = ['GREETING', 'LITERAL', 'FLOWCTL_SERVICE_ID', "
        "'FLOWCTL_HEARTBEAT_INTERVAL', 'ENABLE_FLOWCTL', 'NATS_URL', 'FLOWCTL_OUTPUTS']; "
        "print(json.dumps({k: os.environ.get(k) for k in keys}), flush=True); time.sleep(1000)"
    )
    cfg = make_cfg(
        "envp",
        args=["-c", script],
        outputs={"out": "flowctl.f1.envp.out"},
        env={"GREETING": "hi ${FLOWCTL_TEST_SECRET}", "LITERAL": "$${NOPE}"},
    )
    replica = spawn(cfg, environ={**os.environ, "FLOWCTL_TEST_SECRET": "s3cret"})
    await replica.start()
    await until(lambda: host.has_line("GREETING"), "the program's env dump")
    seen = json.loads(next(line for _, line in host.lines if "GREETING" in line))
    assert seen == {
        "GREETING": "hi s3cret",
        "LITERAL": "${NOPE}",
        "FLOWCTL_SERVICE_ID": "f1.envp.0",
        "FLOWCTL_HEARTBEAT_INTERVAL": "1s",
        "ENABLE_FLOWCTL": "true",
        "NATS_URL": "nats://127.0.0.1:4222",
        "FLOWCTL_OUTPUTS": '{"out":"flowctl.f1.envp.out"}',
    }
    log = Path(host.log_dir, "f1.envp.0.log").read_text()
    assert "hi s3cret" in log


async def test_undefined_variable_fails_with_its_name(spawn: Any, host: Host) -> None:
    cfg = make_cfg(args=["-c", "pass"], env={"X": "${FLOWCTL_SURELY_UNDEFINED_VAR}"})
    replica = spawn(cfg)
    await replica.start()
    assert replica.state == ReplicaState.FAILED
    assert "${FLOWCTL_SURELY_UNDEFINED_VAR}" in (replica.last_error or "")
    assert replica.pid is None
    assert replica.status().last_error == replica.last_error


# -- stopping --------------------------------------------------------------------------


async def test_stop_is_quick_for_a_well_behaved_program(spawn: Any, host: Host) -> None:
    replica = spawn(make_cfg(args=["-c", "import time; time.sleep(1000)"]))
    await replica.start()
    await until(lambda: replica.state == ReplicaState.RUNNING, "running")
    pid = replica.pid
    assert json.loads(pid_file(host.log_dir, replica.key).read_text())["pid"] == pid
    began = time.monotonic()
    await replica.stop()
    assert time.monotonic() - began < 1.5
    assert replica.state == ReplicaState.STOPPED and gone(pid)
    assert not pid_file(host.log_dir, replica.key).exists()
    await replica.stop()  # idempotent
    assert replica.state == ReplicaState.STOPPED


async def test_stop_kills_a_sigterm_ignoring_program_after_grace(spawn: Any, host: Host) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(1000)"
    )
    replica = spawn(make_cfg(args=["-c", script]), grace=1.0)
    await replica.start()
    await until(lambda: host.has_line("ignoring"), "SIGTERM ignored")
    pid = replica.pid
    began = time.monotonic()
    await replica.stop()
    assert 0.9 <= time.monotonic() - began < 3.0
    assert replica.state == ReplicaState.STOPPED and gone(pid)


async def test_stop_kills_the_whole_process_group(spawn: Any, host: Host) -> None:
    script = (
        "import subprocess; p = subprocess.Popen(['sleep', '1000']); "
        "print('grandchild', p.pid, flush=True); p.wait()"
    )
    replica = spawn(make_cfg(args=["-c", script]))
    await replica.start()
    await until(lambda: host.has_line("grandchild"), "the grandchild's pid")
    grandchild = int(next(line for _, line in host.lines if "grandchild" in line).split()[1])
    await replica.stop()
    await until(lambda: gone(grandchild), "the grandchild gone", 5)


# -- orphans -----------------------------------------------------------------------------


async def test_sigkilled_agent_leaves_no_child(tmp_path: Path) -> None:
    agent = await asyncio.create_subprocess_exec(
        PY, str(PROGRAMS / "mini_agent.py"), str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), 20)
        assert line.startswith(b"child "), line
        child = int(line.split()[1])
        assert not gone(child)
    finally:
        agent.send_signal(signal.SIGKILL)
        await agent.wait()
    await until(lambda: gone(child), "the agent's child gone after SIGKILL", 5)


async def test_reap_orphans_kills_leftovers_from_pid_files(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    orphan = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    other = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        created = psutil.Process(orphan.pid).create_time()
        (pids / "f.a.0.pid").write_text(json.dumps({"pid": orphan.pid, "create_time": created}))
        # Same pid but another start time: a recycled pid, never killed.
        (pids / "f.b.0.pid").write_text(json.dumps({"pid": other.pid, "create_time": 1.0}))
        (pids / "f.c.0.pid").write_text("not json")
        # Owned by a live agent (our parent process): left alone.
        parent = psutil.Process(os.getppid())
        live = {"pid": other.pid, "create_time": psutil.Process(other.pid).create_time(),
                "agent_pid": parent.pid, "agent_create_time": parent.create_time()}
        (pids / "f.d.0.pid").write_text(json.dumps(live))
        killed = await reap_orphans(str(tmp_path), grace=1.0)
        assert killed == [orphan.pid]
        assert orphan.wait(5) == -signal.SIGTERM
        assert other.poll() is None
        assert sorted(p.name for p in pids.iterdir()) == ["f.d.0.pid"]
    finally:
        for proc in (orphan, other):
            proc.kill()
            proc.wait()
