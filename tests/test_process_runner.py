"""ProcessReplica supervising real programs: restarts, readiness, environment, stopping.

A small real host records every ``changed()`` call and every log line
(:mod:`tests.process_context`); tests wait on those with deadlines, never blind sleeps
(except where they prove that something does *not* happen). The environment contract,
the SDK end to end and orphans are ``test_process_runner_contract.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from componentmanager.runners.process import ProcessReplica, pid_file
from flowstore.models import ComponentConfig, ReplicaState
from flowstore.nats import NatsOptions
from tests.process_context import PROGRAMS, Host, free_port, gone, make_cfg, until


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
        "FLOWCTL_HEARTBEAT_INTERVAL": "10s",  # a component's heartbeat (the notes')
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
