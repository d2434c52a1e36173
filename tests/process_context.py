"""The harness of the ProcessReplica tests: a real recording host and small helpers.

:class:`Host` is a real ReplicaHost that records every ``changed()`` call (time, state,
restarts, error, exit code) and every log line; :func:`until` waits on those with a
deadline (and shows them when it times out); :func:`gone` tells whether a process has
exited; :func:`make_cfg` builds the config of a process node. Shared by
``tests/test_process_runner*.py``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

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
