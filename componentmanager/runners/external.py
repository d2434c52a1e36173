"""Supervision shared by external components: local processes and Docker containers.

:class:`ExternalReplica` is subclassed by :class:`~componentmanager.runners.process.ProcessReplica`
and :class:`~componentmanager.runners.container.ContainerReplica`, which only launch, wait
for and kill their program. ``start()`` only creates a supervisor task, which launches the
program, gates ``running`` on readiness, restarts it per ``restart_policy`` with
exponential backoff and streams its output line by line to
``<log_dir>/<flow>.<node>.<replica>.log`` and ``host.log_line``. A crash loop lives in
its own task and never blocks anything else.

* readiness: with ``health_port``, ``GET http://<host>:<port + replica><health_check>``
  (default ``/health``) must answer 200
  within ``health_timeout`` (else ``failed``, the program is killed and the policy
  decides); without, ``running`` once the program has lived ``ready_after`` seconds.
* restart: ``always`` | ``on-failure`` (non-zero exit, launch error, failed health) |
  ``never``; backoff ``backoff_initial`` doubling to ``backoff_max``, back to the start
  after a run that lasted ``backoff_reset`` seconds. A clean exit that is not restarted
  is ``completed``.
* ``depends_on``: each launch waits until the dependencies are up
  (:mod:`~componentmanager.runners.dependencies`).
* liveness once running: ``health_check`` probed every ``health_interval``, the heartbeats
  of a registered component (:mod:`~componentmanager.runners.health`); a program found
  dead is stopped and ``failed`` with why, and the policy decides.
* stop: the subclass's ``_terminate`` (a signal, ``stop_grace`` seconds, then a kill).

Also here, for both kinds: :class:`LaunchError`, :class:`LineSplitter`, :class:`LogSink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from componentmanager.runners.base import Replica, ReplicaHost
from componentmanager.runners.dependencies import wait_for_dependencies
from componentmanager.runners.env import (
    COMPONENT_HEARTBEAT_S,
    UndefinedVariableError,
    component_env,
    health_port,
    ready_subject,
)
from componentmanager.runners.health import Liveness, http_status
from flowstore.models import ComponentConfig, ExternalFields, ReplicaState

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 10.0
READY_AFTER_S = 0.5
#: Without a health port, how long a program may take to say it is ready (the SDK does)
#: before it is reported running anyway (a program without the SDK never says so).
SAID_READY_WAIT_S = 3.0
HEALTH_TIMEOUT_S = 30.0
MAX_LINE = 64 * 1024


class LaunchError(Exception):
    """The program could not be started; the message is the user-facing reason."""


def describe_exit(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(-rc).name}"
    return f"exited with code {rc}"


class LineSplitter:
    """Bytes in, complete text lines out; over-long lines are cut at ``max_line``."""

    def __init__(self, emit: Callable[[str], None], max_line: int = MAX_LINE) -> None:
        self.emit, self.max_line, self.buf = emit, max_line, b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            cut = self.buf.find(b"\n")
            if cut < 0:
                if len(self.buf) < self.max_line:
                    return
                cut = self.max_line
                line, self.buf = self.buf[:cut], self.buf[cut:]
            else:
                line, self.buf = self.buf[:cut], self.buf[cut + 1 :]
            self.emit(line.rstrip(b"\r").decode("utf-8", "replace"))

    def close(self) -> None:
        if self.buf:
            self.emit(self.buf.decode("utf-8", "replace"))
            self.buf = b""


class LogSink:
    """One replica's output: appended to ``<log_dir>/<key>.log`` and given to the host."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.path = Path(replica.host.log_dir) / f"{replica.key}.log"
        self._file: IO[str] | None = None

    def open(self) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, line: str, stream: str = "stdout") -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.write(line + "\n")
        with contextlib.suppress(Exception):
            self.replica.host.log_line(self.replica, line, stream)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ExternalReplica(Replica):
    """Supervision shared by processes and containers; subclasses launch and kill."""

    def __init__(
        self,
        cfg: ComponentConfig,
        index: int,
        host: ReplicaHost,
        *,
        grace: float | None = None,
        health_timeout: float = HEALTH_TIMEOUT_S,
        ready_after: float = READY_AFTER_S,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
        backoff_reset: float = BACKOFF_RESET_S,
        heartbeat_s: float | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(cfg, index, host)
        self.ext: ExternalFields = cfg.external or ExternalFields()
        self.grace = self.ext.stop_grace if grace is None else grace
        self.health_timeout, self.ready_after = health_timeout, ready_after
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.backoff_reset = backoff_reset
        self.heartbeat_s = COMPONENT_HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.sink = LogSink(self)
        self._stop_event = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._stop_event = asyncio.Event()
        try:
            env = component_env(
                self.cfg, self.index, self.host.nats_options.env(), self.environ, self.heartbeat_s
            )
        except UndefinedVariableError as exc:
            self.set_state(ReplicaState.FAILED, str(exc))
            return
        self.sink.open()
        self._supervisor = asyncio.create_task(self._supervise(env), name=f"replica {self.key}")

    async def stop(self) -> None:
        self._stop_event.set()
        task, self._supervisor = self._supervisor, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.grace + 15.0)
            except TimeoutError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.sink.close()
        if self.state != ReplicaState.COMPLETED:
            self.set_state(ReplicaState.STOPPED)

    async def _supervise(self, env: dict[str, str]) -> None:
        delay = self.backoff_initial
        try:
            while not self._stop_event.is_set():
                if not await wait_for_dependencies(self, self._stop_event):
                    return
                began = time.monotonic()
                rc, error = await self._run_once(env)
                self.exit_code = rc
                if self._stop_event.is_set():
                    return
                if time.monotonic() - began >= self.backoff_reset:
                    delay = self.backoff_initial
                policy = self.ext.restart_policy
                if policy == "never" or (policy == "on-failure" and error is None):
                    if error is None:
                        self.set_state(ReplicaState.COMPLETED)
                    else:
                        self.set_state(ReplicaState.FAILED, error)
                    return
                state = ReplicaState.FAILED if error else ReplicaState.COMPLETED
                reason = error or describe_exit(rc or 0)
                self.set_state(state, f"{reason}; restarting in {delay:g}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
                    return
                delay = min(delay * 2, self.backoff_max)
                self.restarts += 1
        except Exception as exc:  # a runner bug must show in the status, not vanish
            self.set_state(ReplicaState.FAILED, f"supervisor: {type(exc).__name__}: {exc}")

    async def _run_once(self, env: dict[str, str]) -> tuple[int | None, str | None]:
        """Launch, wait for readiness, wait for the exit (or a stop). Returns (rc, error)."""
        self.set_state(ReplicaState.STARTING)
        self._said_ready = asyncio.Event()
        said = None
        with contextlib.suppress(Exception):
            said = await self.host.nc.subscribe(
                ready_subject(self.cfg.flow, self.cfg.node, self.index),
                cb=self._on_said_ready)
        liveness = Liveness(self, env)
        await liveness.listen()
        try:
            await self._launch(env)
        except LaunchError as exc:
            await liveness.close()
            await self._cleanup()
            return None, str(exc)
        exit_task = asyncio.create_task(self._wait_exit())
        stop_task = asyncio.create_task(self._stop_event.wait())
        ready_task = asyncio.create_task(self._ready())
        alive_task: asyncio.Task[str] | None = None
        error: str | None = None
        try:
            first = asyncio.FIRST_COMPLETED
            await asyncio.wait({exit_task, stop_task, ready_task}, return_when=first)
            if ready_task.done() and not exit_task.done() and not stop_task.done():
                error = ready_task.result()
                if error is None:
                    self.set_state(ReplicaState.RUNNING)
                    alive_task = asyncio.create_task(self._alive(liveness))
                    await asyncio.wait({exit_task, stop_task, alive_task}, return_when=first)
                    if alive_task.done() and not exit_task.done() and not stop_task.done():
                        error = alive_task.result()  # dead while its process lives
                        self.sink.write(f"flowctl: {error}; stopping it (restart_policy "
                                        f"{self.ext.restart_policy})", "agent")
                        self.set_state(ReplicaState.FAILED, error)
                else:
                    self.set_state(ReplicaState.FAILED, error)
            if not exit_task.done():
                await self._terminate()
            rc = await exit_task
        finally:
            tasks = [t for t in (exit_task, stop_task, ready_task, alive_task) if t]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await liveness.close()
            await self._cleanup()
            if said is not None:
                with contextlib.suppress(Exception):
                    await said.unsubscribe()
        if error is None and rc != 0:
            error = describe_exit(rc)
        return rc, error

    async def _alive(self, liveness: Liveness) -> str:
        """Why the running program is dead (see :mod:`~componentmanager.runners.health`)."""
        ext = self.ext
        port = health_port(self.cfg, self.index)
        return await liveness.watch(self._health_host(), port, ext.health_check,
                                    ext.health_interval)

    async def _on_said_ready(self, _msg: Any) -> None:
        self._said_ready.set()

    async def _ready(self) -> str | None:
        """None once the program is ready, else why it is not (health timeout)."""
        port = health_port(self.cfg, self.index)
        if port is None:
            # ready when it says so (the SDK publishes on FLOWCTL_READY_SUBJECT once
            # subscribed), else once it has lived a while (a program without the SDK)
            with contextlib.suppress(TimeoutError):
                wait = SAID_READY_WAIT_S if self.ready_after == READY_AFTER_S else \
                    self.ready_after  # (tests set their own)
                async with asyncio.timeout(wait):
                    await self._said_ready.wait()
            return None
        host = self._health_host()
        path = self.cfg.external.health_check if self.cfg.external else "/health"
        deadline = time.monotonic() + self.health_timeout
        last = "no answer"
        while (left := deadline - time.monotonic()) > 0:
            code = await http_status(host, port, path, timeout=min(1.0, left))
            if code == 200:
                return None
            last = f"HTTP {code}" if code else "no answer"
            await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
        return (
            f"health check http://{host}:{port}{path} not ready within "
            f"{self.health_timeout:g}s (last: {last})"
        )

    # -- what a kind implements ------------------------------------------------------
    async def _launch(self, env: dict[str, str]) -> None:
        raise NotImplementedError

    async def _wait_exit(self) -> int:
        raise NotImplementedError

    async def _terminate(self) -> None:
        """Stop the program within ``grace`` (then force); return when it is gone."""
        raise NotImplementedError

    async def _cleanup(self) -> None:
        return None

    def _health_host(self) -> str:
        return "127.0.0.1"
