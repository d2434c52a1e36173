"""What ProcessReplica promises programs and the agent, with real programs.

The environment contract (:func:`~componentmanager.runners.env.component_env`), events
through the Python SDK end to end (with a real nats-server), and no orphans: a SIGKILLed
agent's children die, and :func:`~componentmanager.runners.process.reap_orphans` kills
what pid files name. Supervision itself is ``test_process_runner.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from componentmanager.runners.env import UndefinedVariableError, component_env
from componentmanager.runners.process import ProcessReplica, pid_file, reap_orphans
from flowstore.models import ReplicaState
from flowstore.nats import NatsOptions
from tests.process_context import PROGRAMS, PY, Host, free_port, gone, make_cfg, until

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
        first, count, stamp = headers["Flowctl"].split(" ")  # one metadata header
        assert first.startswith("upper.0.") and count == "1" and float(stamp) > 0
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
