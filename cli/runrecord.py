"""Where a running ``flowctl run`` (or ``dev``) serves NATS, so the other commands find it.

``run`` starts its embedded nats-server on a free port; once it is up, it writes
``<dir>/<pid>.json`` (its pid and start time, the server's URL, the flow, the command) and
removes it when it ends. ``<dir>`` is ``$XDG_RUNTIME_DIR/flowctl/runs``, else
``~/.flowctl/run``. A command given neither ``--nats-url`` nor ``NATS_URL`` connects to the
newest record whose process still lives (:func:`choose`, pure); the record of a process
that is gone (killed before it could remove it) is ignored and removed. Only embedded
servers are recorded: a URL the user gives may carry credentials, and they know it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRecord:
    pid: int
    create_time: float  # the process's start time: a reused pid is not mistaken for it
    url: str
    flow: str
    command: str  # run or dev


def run_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "flowctl" / "runs" if runtime else Path.home() / ".flowctl" / "run"


def choose(records: list[RunRecord], alive: Callable[[RunRecord], bool]
           ) -> tuple[RunRecord | None, int, list[RunRecord]]:
    """The newest living run, how many live, and the stale records."""
    living = sorted((r for r in records if alive(r)), key=lambda r: r.create_time)
    stale = [r for r in records if r not in living]
    return (living[-1] if living else None), len(living), stale


def _create_time(pid: int) -> float | None:
    import psutil  # (here: the help and reading commands need not load it)

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def _alive(record: RunRecord) -> bool:
    started = _create_time(record.pid)
    return started is not None and abs(started - record.create_time) < 0.05


def write_record(url: str, flow: str, command: str) -> Path | None:
    """Record this process's server; the file's path (None when it cannot be written: the
    run goes on, the other commands then need --nats-url)."""
    record = RunRecord(os.getpid(), _create_time(os.getpid()) or time.time(), url, flow,
                       command)
    directory = run_dir()
    path = directory / f"{record.pid}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(record)) + "\n")
        partial.chmod(0o600)
        partial.replace(path)
    except OSError:
        return None
    return path


def remove_record(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _read(path: Path) -> RunRecord | None:
    try:
        data = json.loads(path.read_text())
        return RunRecord(int(data["pid"]), float(data["create_time"]), str(data["url"]),
                         str(data["flow"]), str(data["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_run() -> tuple[RunRecord | None, int]:
    """The newest running ``flowctl run`` and how many run; stale records are removed."""
    directory = run_dir()
    if not directory.is_dir():
        return None, 0
    read = {path: _read(path) for path in directory.glob("*.json")}
    chosen, living, stale = choose([r for r in read.values() if r is not None], _alive)
    for path, record in read.items():
        if record is None or record in stale:
            remove_record(path)
    return chosen, living


def running_url() -> str | None:
    """The URL of the newest running ``flowctl run``, said on stderr; None when none runs."""
    from cli.output import info

    found, living = find_run()
    if found is None:
        return None
    more = f"; {living} run, the newest is used" if living > 1 else ""
    info(f"NATS: {found.url}, of `flowctl {found.command}` (pid {found.pid}, "
         f"flow/{found.flow}{more}; --nats-url picks another)")
    return found.url
