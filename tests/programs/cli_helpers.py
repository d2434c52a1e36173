"""Helpers for the CLI tests: run the real `flowctl` executable, track every process it
starts, wait for conditions with deadlines, read NATS KV after the fact.

:class:`Flowctl` runs ``flowctl`` in its own session (so a test can deliver a terminal's
Ctrl+C to the whole process group), sends its output to files (no pipe can fill up and
block it), and records the pids of its descendants while it runs, so a test can assert
that none of them outlives it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FLOWCTL = str(Path(sys.executable).parent / "flowctl")
STARTED: list[Flowctl] = []
#: Where the `flowctl run`s of this test session record their servers (cli.runrecord):
#: theirs alone, so a `flowctl list` without a URL never finds a run of someone else.
RUN_RECORDS = tempfile.mkdtemp(prefix="flowctl-runs-")
atexit.register(shutil.rmtree, RUN_RECORDS, True)


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    """A TCP port nobody uses now, picked below the kernel's ephemeral range (where
    outgoing connections of parallel tests take their ports)."""
    import random

    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def cli_env(nats_url: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"  # tables are not wrapped, so tests can read their rows
    env["XDG_RUNTIME_DIR"] = RUN_RECORDS
    if nats_url:
        env["NATS_URL"] = nats_url
    env.update(extra or {})
    return env


def flowctl(*args: str, nats_url: str | None = None, cwd: str | Path | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``flowctl ARGS`` to completion, as a user would."""
    return subprocess.run([FLOWCTL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env=cli_env(nats_url), stdin=subprocess.DEVNULL)


@pytest.fixture(autouse=True)
def cli_processes_cleaned_up() -> Iterator[None]:
    """Autouse (import it into a test module): whatever a test left running when it
    failed half-way is killed with its whole process group."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.proc.poll() is None:
            proc.kill()


class Flowctl:
    """A long-running ``flowctl`` subprocess (run, agent, server, logs --follow ...)."""

    def __init__(self, *args: str, log_dir: Path, nats_url: str | None = None,
                 cwd: str | Path | None = None, name: str = "flowctl",
                 program: list[str] | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self.seen: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [*(program or [FLOWCTL]), *args], stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, cwd=cwd or ROOT, env=cli_env(nats_url),
                start_new_session=True,
            )
        self.track()
        STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.stdout_path.read_text()

    def err(self) -> str:
        return self.stderr_path.read_text()

    def track(self) -> list[psutil.Process]:
        """Remember the process and its current descendants (call it while it runs).
        A name is refreshed while the process lives: a child seen between its fork and its
        exec still carries its parent's name."""
        with contextlib.suppress(psutil.Error):
            me = psutil.Process(self.proc.pid)
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    self.names[proc.pid] = proc.name()
                    self.seen.setdefault(proc.pid, proc)
        return [p for p in self.seen.values() if p.pid != self.proc.pid]

    def children_named(self, name: str) -> list[psutil.Process]:
        """Descendants seen so far (alive or not) whose program is ``name``."""
        self.track()
        return [p for p in self.seen.values() if self.names.get(p.pid) == name]

    def descendant_names(self) -> list[str]:
        """Programs of every descendant seen so far (alive or not)."""
        self.track()
        return sorted(self.names[pid] for pid in self.seen if pid != self.proc.pid)

    def wait_output(self, text: str, timeout: float = 20, stream: str = "err") -> str:
        """Wait until ``text`` appears in stderr (or stdout); fail early if it exits."""

        def check() -> str | None:
            self.track()
            content = self.err() if stream == "err" else self.out()
            if text in content:
                return content
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"flowctl exited ({self.proc.returncode}) before printing {text!r}:\n"
                    f"stdout: {self.out()[-2000:]}\nstderr: {self.err()[-2000:]}"
                )
            return None

        return wait_for(check, timeout, f"{text!r} in std{stream}")

    def wait(self, timeout: float = 60) -> int:
        """Wait for the exit (tracking descendants meanwhile); kill and fail on timeout."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"flowctl did not exit within {timeout}s:\nstderr: {self.err()[-3000:]}"
                )
            self.track()
            time.sleep(0.05)
        return self.proc.returncode

    def interrupt(self, group: bool = False, sig: int = signal.SIGINT) -> None:
        """Ctrl+C: to the process, or (``group``) to its whole process group, as a
        terminal does."""
        self.track()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def leftovers(self) -> list[str]:
        """Descendants seen earlier that still run (zombies count as gone)."""
        alive = []
        for proc in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{proc.pid} {self.names.get(proc.pid)}")
        return alive

    def assert_no_leftovers(self, timeout: float = 5) -> None:
        wait_for(lambda: not self.leftovers(), timeout, "no process left behind")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait (the finalizer of fixtures); kill the group when it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()


def read_kv(nats_url: str, bucket: str, keys: str = ">") -> dict[str, bytes]:
    """Every live key of a KV bucket (an empty dict when the bucket does not exist)."""
    from nats.js.errors import BucketNotFoundError

    from flowstore.nats import NatsOptions, connect
    from flowstore.store import read_all

    async def go() -> dict[str, bytes]:
        nc = await connect(NatsOptions(url=nats_url))
        try:
            try:
                kv = await nc.jetstream().key_value(bucket)
            except BucketNotFoundError:
                return {}
            return {k: e.value or b"" for k, e in (await read_all(kv, keys)).items()}
        finally:
            await nc.close()

    return asyncio.run(go())


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of ``text`` (other lines are skipped)."""
    import json

    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def table_rows(text: str, first_column: str) -> dict[str, list[str]]:
    """Rows of a printed table (whitespace-separated, first cell as key), from the header
    line that starts with ``first_column`` on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first_column])
    rows = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells:
            break
        rows[cells[0]] = cells
    return rows


@pytest.fixture(name="cli_agent")
def cli_agent_fixture(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., Flowctl]]:
    """Start real `flowctl agent` processes; each is stopped with SIGTERM afterwards and
    must exit 0, leaving no process behind."""
    started: list[Flowctl] = []

    def start(name: str = "cli-agent", labels: str = "", log_json: bool = True,
              extra: tuple[str, ...] = ()) -> Flowctl:
        args = [*(["--log-json"] if log_json else []), "agent", "--name", name, *extra,
                "--heartbeat", "0.5", "--status-interval", "0.5",
                "--log-dir", str(tmp_path / "component-logs"),
                "--python-path", str(EXAMPLES),  # enrich.py for `python` nodes
                "--allow-commands", "*", "--allow-images", "*"]
        agent = Flowctl(*args, *(["--labels", labels] if labels else []),
                        log_dir=tmp_path, nats_url=nats_url, name=f"agent-{name}")
        started.append(agent)
        agent.wait_output("agent started")
        return agent

    yield start
    for agent in started:
        assert agent.stop() == 0, agent.err()[-2000:]
        agent.assert_no_leftovers()


# ------------------------------------------------------------- assertions on results


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed(result: subprocess.CompletedProcess[str], code: int, *words: str,
           one_line: bool = True) -> str:
    """Assert the exit code and one clean error message (a single line unless a file's
    problems are listed under it) naming ``words``; no traceback."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 1 or not one_line, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    return result.stderr.strip()


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    import json

    return json.loads(ok(result).stdout)


def many(*commands: list[str], nats_url: str | None = None
         ) -> list[subprocess.CompletedProcess[str]]:
    """Run independent ``flowctl`` commands side by side (results in order)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda args: flowctl(*args, nats_url=nats_url), commands))


def timed(*args: str, nats_url: str | None = None
          ) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    result = flowctl(*args, nats_url=nats_url)
    return result, time.monotonic() - t0


def startup_baseline() -> float:
    """Seconds a local ``flowctl validate`` of the hello example takes now: the CLI's own
    start-up on this machine at this moment. Timed checks allow their bound on top of
    it, so a machine loaded by other tests is not taken for a slow command."""
    _, took = timed("validate", str(Path(__file__).resolve().parents[2] / "examples"
                                     / "hello.yaml"))
    return took


def read_terminal(master: int, until: Callable[[bytes], bool], timeout: float = 30) -> bytes:
    """Read a pty's master side until ``until(everything read)`` holds or the terminal
    closes (every process holding it exited); fail on timeout."""
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            return seen
        if not chunk:
            return seen
        seen += chunk
        if until(seen):
            return seen
    raise AssertionError(f"timed out after {timeout}s reading the terminal: {seen[-2000:]!r}")


# ------------------------------------------------------- servers with auth and TLS


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def nats_server(tmp: Path, *args: str) -> Iterator[str]:
    """A nats-server (JetStream on) with extra arguments (auth, TLS); yields host:port."""
    from flowstore.server import find_nats_server

    port = free_port()
    proc = subprocess.Popen(
        [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port),
         "-sd", str(tmp / f"store-{port}"), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _accepts(port) or proc.poll() is not None, 10, "nats-server to listen")
        assert proc.poll() is None, "nats-server did not start"
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def make_certs(tmp: Path) -> Path:
    """A CA, and server and client certificates signed by it (for 127.0.0.1), made with
    the openssl command; the test is skipped when there is none."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make test certificates")
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    commands = [["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.pem", "-days", "1", "-subj", "/CN=flowctl-test-ca"]]
    for who in ("server", "client"):
        commands += [
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out",
             f"{who}.csr", "-subj", f"/CN={who}"],
            ["x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{who}.pem", "-days", "1", "-extfile", str(ext)],
        ]
    for command in commands:
        subprocess.run(["openssl", *command], cwd=tmp, check=True, capture_output=True)
    return tmp
