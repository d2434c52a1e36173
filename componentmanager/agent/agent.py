"""The component-manager agent: one per host. Announces itself, watches configs, runs the
replicas assigned to it, reports their status, and (when it holds the lease) places
replicas for everyone.

Control and data do not share fate: this module's work (heartbeats, lease, config watch,
reconcile, status writes) runs on the caller's event loop with its own NATS connection;
the replicas run on the :class:`~componentmanager.agent.dataloop.DataLoop`'s thread, loop
and connection. A replica that blocks its loop or floods its connection is found
(:mod:`componentmanager.agent.health`) and reported ``degraded``; the agent stays live.

Usable as a library::

    agent = Agent(AgentSettings(name="a1", labels={"zone": "a"}), NatsOptions(url))
    await agent.run(stop_event)     # returns after a clean shutdown

Shutdown (SIGINT/SIGTERM in the CLI, or ``stop_event``): every replica is stopped
cleanly, its final status written, and the agent's entry removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import structlog
from nats.js.errors import KeyWrongLastSequenceError

from componentmanager.agent.configwatch import ConfigView
from componentmanager.agent.contact import Contact
from componentmanager.agent.cutoff import CutOff, StopWhenCutOff
from componentmanager.agent.dataloop import DataLoop
from componentmanager.agent.identity import (
    AgentFenced,
    announce,
    check_fenced,
)
from componentmanager.agent.keeping import ReplicaKeeping
from componentmanager.agent.leader import Leader
from componentmanager.agent.metrics import MetricsServer
from componentmanager.agent.rates import LiveFigures
from componentmanager.agent.reconcile import (
    Restart,
    Start,
    Stop,
    desired_replicas,
    reconcile,
    start_order,
    stop_reasons,
)
from componentmanager.agent.shutdown import shut_down
from componentmanager.agent.startup import start_when_nats_is_ready
from componentmanager.agent.statuswriter import StatusWriter
from componentmanager.agent.watch import HealthWatch
from componentmanager.runners import reap_leftovers, warm_up
from componentmanager.runners.base import Replica
from flowstore.models import AgentRecord, utcnow
from flowstore.nats import (
    AGENTS_BUCKET,
    CHECKPOINTS_BUCKET,
    CONFIG_BUCKET,
    STATUS_BUCKET,
    NatsOptions,
    connect,
    open_bucket,
)
from flowstore.programs import Orchestrator
from flowstore.store import stored_at
from flowstore.streams import ensure_logs_stream

log = structlog.get_logger("flowctl.agent")

VERSION = "0.1.0"
#: Replicas a reconcile starts at once (their last status records read together, then
#: started in one call to the data loop).
STARTS_AT_ONCE = 64


@dataclass
class AgentSettings:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat: float = 2.0
    status_interval: float = 2.0
    resync_interval: float = 5.0
    log_dir: str = field(default_factory=lambda: str(Path.home() / ".flowctl" / "logs"))
    allow_inline_code: bool = False
    #: globs of the programs and images this agent runs (none by default: permits.py)
    allow_commands: tuple[str, ...] = ()
    allow_images: tuple[str, ...] = ()
    #: which form runs a node that has both a program and an image (None: the image)
    orchestrator: Orchestrator | None = None
    #: wait (with backoff) while NATS is not reachable at start, instead of failing
    wait_for_nats: bool = False
    #: what to stop while cut off from NATS (see agent.cutoff)
    stop_when_cut_off: StopWhenCutOff = "external"
    lead: bool = True  # take part in leader election (placement and failover)
    #: serve Prometheus metrics on this port (0: any free port; None: off)
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    #: ``(line, stream)``: shows each output line of a program or container, prefixed
    #: ``[node.replica]`` (`flowctl run`), instead of logging it
    echo_output: Callable[[str, str], None] | None = None


class Agent(ReplicaKeeping):
    """Runs the replicas assigned to ``settings.name`` (on its :class:`DataLoop`)."""

    def __init__(self, settings: AgentSettings, nats_options: NatsOptions) -> None:
        self.settings = settings
        self.agent_name = settings.name
        self.nats_options = nats_options
        self.log_dir = settings.log_dir
        self.allow_inline_code = settings.allow_inline_code
        self.instance = secrets.token_hex(4)
        self.cut_off = CutOff(settings.heartbeat, settings.stop_when_cut_off)
        self.contact = Contact(settings.heartbeat)
        self.started_at = utcnow()
        self.nc: Any = None
        self.replicas: dict[str, Replica] = {}
        self.fingerprints: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._agent_rev = 0
        self._proc = psutil.Process()
        self._broken_reported: dict[str, str] = {}
        self.fenced = False
        self.ready = asyncio.Event()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._reconcile_lock = asyncio.Lock()
        self._closing = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.health: HealthWatch | None = None
        self._loop_lag_s = 0.0
        self.data: DataLoop | None = None
        self._heartbeat_at = time.monotonic()
        #: the record as last written to flowctl_agents: what readers judge this agent by
        self.last_heartbeat: AgentRecord | None = None
        self.metrics: MetricsServer | None = None
        #: shutdown steps that did not finish in time (the process must exit regardless)
        self.left_behind: list[str] = []

    def dump_tasks(self, out: Any) -> None:
        """Print every task of the control and the data loop with its stack (SIGUSR1)."""
        loops = [("control", self._control_loop)]
        if self.data is not None and self.data.loop is not None:
            loops.append(("data", self.data.loop))
        for name, loop in loops:
            for task in list(asyncio.all_tasks(loop)):
                print(f"--- {name} loop: {task.get_name()}", file=out)
                task.print_stack(limit=12, file=out)
        out.flush()

    def changed_configs(self) -> None:
        """Something decides what runs here differently now: reconcile soon."""
        self._dirty.set()

    def changed(self, replica: Replica) -> None:
        """A replica's status changed (any thread): the status writer writes it."""
        if threading.get_ident() == self._control_thread:
            self.status.changed(replica)
            return
        with contextlib.suppress(RuntimeError):  # the agent's loop is closing
            self._control_loop.call_soon_threadsafe(self.status.changed, replica)

    # -- lifecycle --------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Start, run until ``stop`` is set (or the agent is fenced), shut down cleanly."""
        if self.settings.metrics_port is not None and self.metrics is None:
            self.serve_metrics(self.settings.metrics_host, self.settings.metrics_port)
        if self.settings.wait_for_nats:
            if not await start_when_nats_is_ready(self, stop):
                return  # stopped while waiting
        else:
            await self.start()
        try:
            stop_wait = asyncio.create_task(stop.wait())
            fenced_wait = asyncio.create_task(self._fenced_event.wait())
            await asyncio.wait({stop_wait, fenced_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            fenced_wait.cancel()
        finally:
            await self.shutdown()
        if self.fenced:
            raise AgentFenced(
                f"agent '{self.agent_name}' was declared dead and its name taken over"
            )

    async def start(self) -> None:
        self._fenced_event = asyncio.Event()
        self._control_loop = asyncio.get_running_loop()
        self._control_thread = threading.get_ident()
        self.nc = await connect(
            self.nats_options,
            name=f"flowctl-agent-{self.agent_name}",
            reconnect=True,
            reconnected_cb=self._on_reconnect,
        )
        replicas = self.nats_options.kv_replicas
        self.agents_kv = await open_bucket(self.nc, AGENTS_BUCKET, replicas=replicas)
        self.config_kv = await open_bucket(self.nc, CONFIG_BUCKET, replicas=replicas)
        self.status_kv = await open_bucket(self.nc, STATUS_BUCKET, replicas=replicas)
        await open_bucket(self.nc, CHECKPOINTS_BUCKET, replicas=replicas)  # for sources
        with contextlib.suppress(Exception):  # logs are kept from now on (best effort)
            await ensure_logs_stream(self.nc, replicas)
        try:
            await self._announce()
            self.data = DataLoop(
                self.nats_options, self.agent_name, instance=self.instance, log_dir=self.log_dir,
                allow_inline_code=self.allow_inline_code, heartbeat_s=self.settings.heartbeat,
                allow_commands=self.settings.allow_commands,
                allow_images=self.settings.allow_images,
                orchestrator=self.settings.orchestrator,
                on_changed=self.changed, echo=self.settings.echo_output)
            await self.data.start()
        except BaseException:
            if self._agent_rev:  # we announced: take our record back (never another's)
                with contextlib.suppress(Exception):
                    await self.agents_kv.delete(self.agent_name, last=self._agent_rev)
            await self.nc.close()
            raise
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        await reap_leftovers(self.log_dir, self.agent_name)
        warm_up()
        # Watch first, then list (inside ConfigView), so nothing is missed in between.
        self.view = ConfigView(self.config_kv, self._dirty.set, self.agent_name)
        self.status = StatusWriter(self.status_kv, self.agent_name, owns=self.view.owns)
        self.status.start()
        self.view.start()
        self._dirty.set()  # reconcile once at start even when there is nothing to watch
        self.leader = Leader(self) if self.settings.lead else None
        self.figures = LiveFigures(self.nc)
        self._spawn(self._reconcile_loop, "reconcile")
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        self._spawn(lambda: self.cut_off.watch(self), "cut-off watch")
        self._spawn(self._status_refresh_loop, "status refresh")
        self.health = HealthWatch(self.data)
        self._spawn(self.health.run, "stall watch")
        if self.leader is not None:
            self._spawn(self.leader.run, "leader")
        log.info("agent started", agent=self.agent_name, labels=self.settings.labels)

    def _spawn(self, make: Any, name: str) -> None:
        """Run ``make()`` as a supervised task: these loops never end on their own, so one
        that does (a bug, an unexpected error) is logged and started again."""
        task = asyncio.create_task(make(), name=f"agent {name}")
        self._tasks.append(task)

        def ended(done: asyncio.Task[None]) -> None:
            if self._closing or done.cancelled():
                return
            error = done.exception()
            log.error("agent task ended; restarting it", task=name,
                      error=f"{type(error).__name__}: {error}" if error else "returned")
            with contextlib.suppress(ValueError):
                self._tasks.remove(done)
            self._spawn(make, name)

        task.add_done_callback(ended)

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS; rebuilding the config watcher")
        self.view.restart_watcher()
        self._dirty.set()

    def record(self) -> AgentRecord:
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent()
            mem = self._proc.memory_info().rss / 2**20
        return AgentRecord(
            name=self.agent_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            labels=self.settings.labels,
            version=VERSION,
            started_at=self.started_at,
            heartbeat_s=self.settings.heartbeat,
            instance=self.instance,
            components=sorted(self.replicas),
            cpu_percent=round(cpu, 1),
            memory_mb=round(mem, 1),
            loop_lag_ms=round(self._loop_lag_s * 1000, 1),
        )

    async def _announce(self) -> None:
        await announce(self)
        self.last_heartbeat = self.record()
        await self._anchor_server_clock()

    async def _heartbeat_loop(self) -> None:
        """A heartbeat every ``heartbeat`` seconds on a fixed cadence: a slow write does
        not push the next one later (the leader judges the gaps between them)."""
        beat_at = time.monotonic()
        while True:
            beat_at = max(beat_at + self.settings.heartbeat, time.monotonic())
            await asyncio.sleep(beat_at - time.monotonic())
            if self.data is not None:
                self._loop_lag_s = self.data.take_max_lag()
            try:
                try:
                    record = self.record()
                    self._agent_rev = await self.agents_kv.update(
                        self.agent_name, record.to_json(), last=self._agent_rev
                    )
                    self._heartbeat_at = time.monotonic()
                    self.last_heartbeat = record
                except KeyWrongLastSequenceError:
                    await self._check_fenced()
                await self._anchor_server_clock()
            except Exception as exc:  # never let the heartbeat die: retry next interval
                log.warning("heartbeat failed", error=str(exc) or repr(exc))

    async def _anchor_server_clock(self) -> None:
        """A heartbeat (or the announcement) was acked: in contact (not cut off), steady
        contact, and the server's time of it read back (see
        :mod:`componentmanager.agent.contact`)."""
        acked_at = time.monotonic()
        self.cut_off.contact()
        self.contact.acked(acked_at)
        found = await stored_at(self.agents_kv, revision=self._agent_rev)
        if found is not None:
            self.contact.anchored(found[2], acked_at)

    def serve_metrics(self, host: str, port: int) -> str:
        """Serve ``/metrics`` (raises OSError when the port is taken); returns its URL."""
        self.metrics = MetricsServer(self, host, port)
        log.info("serving metrics", url=self.metrics.url)
        return self.metrics.url

    def loop_lag_s(self) -> float:
        return self._loop_lag_s

    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self._heartbeat_at

    async def _check_fenced(self) -> None:
        await check_fenced(self)

    # -- reconciliation ---------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
        # arrives as the event fires, and this loop would then wait on the lock forever.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.resync_interval):
                    await self._dirty.wait()
            if not self._dirty.is_set():
                with contextlib.suppress(Exception):
                    await self.view.resync()  # periodic full resync: never trust the watch
            self._dirty.clear()
            await self.reconcile_now()
            if self._closing:
                return
            self.ready.set()

    async def reconcile_now(self) -> None:
        """Reconcile at once (the loop's step, and a cut-off's beside the loop, which may
        be waiting on NATS): from what this agent knows, with no NATS request unless a
        replica starts. Under the lock: shutdown never cancels a reconcile midway."""
        async with self._reconcile_lock:
            if self._closing:
                return
            try:
                await self.reconcile_once()
            except Exception as exc:
                log.error("reconcile failed", error=str(exc) or repr(exc))

    async def reconcile_once(self) -> None:
        # What runs here and what may: not every config of every flow (a reconcile per
        # change of a 10,000-node flow would otherwise look at 10,000 configs each time).
        desired = desired_replicas(self.view.assigned, self.agent_name)
        here = {key.rsplit(".", 1)[0] for key in self.fingerprints}
        why = stop_reasons({k: c for k in here if (c := self.view.configs.get(k)) is not None},
                           self.view.deleted & here, self.agent_name)
        # A config that can't be parsed: keep what runs here (reporting the problem in its
        # status), or, when nothing runs here, say so once in a status record of its own.
        for config_key, reason in list(self.view.broken.items()):
            running_here = [k for k in self.fingerprints if k.rsplit(".", 1)[0] == config_key]
            if running_here:
                self._broken_reported[config_key] = reason
            for rkey in running_here:
                desired[rkey] = (self.replicas[rkey].cfg, self.replicas[rkey].index)
                if self.replicas[rkey].last_error != reason:
                    self.replicas[rkey].last_error = reason
                    self.changed(self.replicas[rkey])
            if not running_here:
                await self._report_broken(config_key, reason)
        for config_key in list(self._broken_reported):
            if config_key not in self.view.broken:  # parses again (or is gone)
                reason = self._broken_reported.pop(config_key)
                for replica in self.replicas.values():
                    if replica.cfg.key == config_key and replica.last_error == reason:
                        replica.last_error = None
                        self.changed(replica)
        await self.cut_off.filter(desired, why, self.config_kv)
        actions = reconcile(desired, self.fingerprints, why)
        await self._stop_in_flow_order(
            [(a.key, _reason(a)) for a in actions if isinstance(a, Stop | Restart)]
        )
        starts = [(a.cfg, a.index) for a in
                  start_order([a for a in actions if isinstance(a, Start | Restart)])]
        for at in range(0, len(starts), STARTS_AT_ONCE):
            await self._start_replicas(starts[at:at + STARTS_AT_ONCE])

    # -- shutdown ---------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop cleanly, in bounded steps (see :mod:`componentmanager.agent.shutdown`)."""
        self.left_behind = await shut_down(self)


def _reason(action: Stop | Restart) -> str:
    return action.reason if isinstance(action, Stop) else "config changed"
