"""External components run as local processes, supervised like in-process replicas.

:class:`ProcessReplica` is an :class:`~componentmanager.runners.external.ExternalReplica`
(readiness, restarts with backoff, the log file: see there) whose program is a local
command. It starts the program in its own session (process group) with
``PR_SET_PDEATHSIG`` (:func:`flowstore.server.die_with_parent`), so a SIGKILLed agent's
*direct* children die with it. Stop: SIGTERM to the process group, ``grace`` seconds,
then SIGKILL of the group. Grandchildren a program starts are killed with the group
when the replica stops or its leader exits, but not on an agent SIGKILL: that is the
program's responsibility (or use ``exec``). As a second line, each running replica has a
pid file ``<log_dir>/pids/<key>.pid`` (:func:`pid_file`); the agent calls
:func:`reap_orphans` at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from componentmanager.runners.base import ReplicaHost
from componentmanager.runners.external import ExternalReplica, LaunchError, LineSplitter
from flowstore.models import ComponentConfig
from flowstore.server import die_with_parent


def _child_setup() -> None:
    """``preexec_fn``: the child gets SIGKILL when the agent dies (own session already)."""
    die_with_parent()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _create_time(pid: int) -> float | None:
    """The start time of a live (non-zombie) process, else None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.Error, OSError):
        return None


def pid_file(log_dir: str, key: str) -> Path:
    return Path(log_dir) / "pids" / f"{key}.pid"


class ProcessReplica(ExternalReplica):
    """One replica of a node whose ``command`` is a local program."""

    def __init__(self, cfg: ComponentConfig, index: int, host: ReplicaHost, **kwargs: Any) -> None:
        super().__init__(cfg, index, host, **kwargs)
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []

    def _resolve(self, env: Mapping[str, str]) -> str:
        command = self.ext.program or ""  # binary, else command
        if not command:
            raise LaunchError("no command configured")
        if os.sep in command and not os.path.isabs(command) and self.ext.working_dir:
            command = os.path.join(self.ext.working_dir, command)
        found = shutil.which(command, path=env.get("PATH", os.defpath))
        if found is None:
            raise LaunchError(f"command not found: {command}")
        return found

    async def _launch(self, env: dict[str, str]) -> None:
        full = {**self.environ, **env}
        program = self._resolve(full)
        if self.ext.working_dir and not os.path.isdir(self.ext.working_dir):
            raise LaunchError(f"working_dir not found: {self.ext.working_dir}")
        try:
            proc = await asyncio.create_subprocess_exec(
                program,
                *self.ext.args,
                env=full,
                cwd=self.ext.working_dir or None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {program}: {exc.strerror or exc}") from None
        self._proc, self.pid = proc, proc.pid
        self._write_pid_file(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, "stderr")),
        ]

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        lines = LineSplitter(lambda line: self.sink.write(line, name))
        while chunk := await stream.read(65536):
            lines.feed(chunk)
        lines.close()

    async def _wait_exit(self) -> int:
        proc = self._proc
        assert proc is not None
        waiter = asyncio.ensure_future(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=0.2)
                if done:
                    break
                if proc.returncode is not None:
                    # The leader is gone but someone still holds its output pipes: the
                    # rest of its group goes too. A setsid'ed holder: stop waiting.
                    _killpg(proc.pid, signal.SIGKILL)
                    await asyncio.wait({waiter}, timeout=1.0)
                    break
            _killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
            assert proc.returncode is not None
            return proc.returncode
        finally:
            waiter.cancel()

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for sig, patience in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 5.0)):
            if proc.returncode is not None:
                return
            _killpg(proc.pid, sig)
            deadline = time.monotonic() + patience
            while proc.returncode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    async def _cleanup(self) -> None:
        if self._pumps:
            _, pending = await asyncio.wait(self._pumps, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            self._pumps = []
        if self._proc is not None:
            with contextlib.suppress(OSError):
                pid_file(self.host.log_dir, self.key).unlink()
            self._proc = None

    def _write_pid_file(self, pid: int) -> None:
        record = {
            "pid": pid,
            "create_time": _create_time(pid),
            "agent_pid": os.getpid(),
            "agent_create_time": _create_time(os.getpid()),
            "agent": self.host.agent_name,
        }
        path = pid_file(self.host.log_dir, self.key)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record) + "\n")


def _same_process(pid: int | None, created: float | None) -> bool:
    if not pid or created is None:
        return False
    now = _create_time(pid)
    return now is not None and abs(now - created) < 0.05


async def reap_orphans(log_dir: str, grace: float = 2.0) -> list[int]:
    """Kill replicas a previous agent left running; returns the pids it killed.

    For every pid file under ``<log_dir>/pids`` whose process still exists with the
    recorded start time, its process group gets SIGTERM, then SIGKILL after ``grace``.
    Files whose agent is still alive (another agent sharing the log dir) are left alone;
    every other file is removed. Call it once at agent startup, before starting replicas.
    """
    killed: list[int] = []
    directory = Path(log_dir) / "pids"
    if not directory.is_dir():
        return killed
    for path in sorted(directory.glob("*.pid")):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        agent_pid = record.get("agent_pid")
        if agent_pid not in (None, os.getpid()) and _same_process(
            agent_pid, record.get("agent_create_time")
        ):
            continue  # its agent is alive: not an orphan
        if _same_process(pid, record.get("create_time")):
            try:
                group = pid if os.getpgid(pid) == pid else None
            except OSError:
                group = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if group is not None:
                    _killpg(group, sig)
                else:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while _create_time(pid) is not None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            killed.append(pid)
        path.unlink(missing_ok=True)
    return killed
