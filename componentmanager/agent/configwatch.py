"""A supervised view of ``flowctl_config``: a watcher that is rebuilt when it fails, plus
full resyncs, feeding one in-memory map of every config key.

Order at start: the watcher is created first, then the whole bucket is listed, so nothing
written in between is missed. Deleted keys keep their revision as a tombstone, so a
resync snapshot older than a delete (or than a create) never undoes it. Each change
only marks the view dirty; the agent then reconciles against the whole map
(level-triggered). A value that cannot be parsed is
kept in :attr:`ConfigView.broken` with the reason instead of the config.
:attr:`ConfigView.assigned` holds the configs that name this agent in their assignments,
so a reconcile looks at what may run here, not at every config of every flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from nats.js.kv import KeyValue
from pydantic import ValidationError

from componentmanager.agent.tasks import end_tasks
from flowstore.models import ComponentConfig
from flowstore.store import is_delete, read_all

log = structlog.get_logger("flowctl.configwatch")


class ConfigView:
    def __init__(self, kv: KeyValue, on_change: Callable[[], None], agent: str) -> None:
        self.kv = kv
        self.on_change = on_change
        self.agent = agent
        self.configs: dict[str, ComponentConfig] = {}
        #: the configs whose assignments name this agent (a subset of ``configs``)
        self.assigned: dict[str, ComponentConfig] = {}
        self.revisions: dict[str, int] = {}
        self.broken: dict[str, str] = {}
        self.deleted: set[str] = set()
        self._applied_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.rebuilds = 0
        #: counts the changes applied (the view is the same while it stays the same)
        self.version = 0

    def _apply(self, key: str, value: bytes | None, revision: int, deleted: bool) -> None:
        if revision and self.revisions.get(key, 0) >= revision:
            return  # not newer than what we have (a resync raced the watcher)
        self._applied_at[key] = time.monotonic()
        self.version += 1
        was = key in self.assigned or key in self.broken
        self._take(key, value, revision, deleted)
        # Only a change that may change what runs here wakes the reconcile: a config
        # assigned here (before or now), a deleted or unreadable one. (The others, most
        # of a large flow's on many agents, are kept for the leader and the periodic
        # reconcile; a 10,000-node start costs each agent 500 reconciles, not 10,000.)
        if was or deleted or key in self.assigned or key in self.broken:
            self.on_change()

    def owns(self, replica_key: str) -> bool:
        """Whether replica ``<flow>.<node>.<index>`` is assigned to this agent now."""
        config_key, _, index = replica_key.rpartition(".")
        cfg = self.assigned.get(config_key)
        if cfg is None or not index.isdigit():
            return False
        return int(index) < len(cfg.assignments) and cfg.assignments[int(index)] == self.agent

    def _take(self, key: str, value: bytes | None, revision: int, deleted: bool) -> None:
        if deleted or value is None:
            self.configs.pop(key, None)
            self.assigned.pop(key, None)
            self.broken.pop(key, None)
            if revision:  # a tombstone: an older snapshot cannot bring the key back
                self.revisions[key] = revision
            self.deleted.add(key)
        else:
            self.revisions[key] = revision
            self.deleted.discard(key)
            try:
                cfg = self.configs[key] = ComponentConfig.from_json(value)
                if self.agent in cfg.assignments:
                    self.assigned[key] = cfg
                else:
                    self.assigned.pop(key, None)
                self.broken.pop(key, None)
            except (ValidationError, ValueError) as exc:
                reason = _short(exc)
                if self.broken.get(key) != reason:
                    log.error("config cannot be parsed", key=key, error=reason)
                self.broken[key] = reason

    async def resync(self) -> None:
        """Replace the view with a full listing of the bucket."""
        started = time.monotonic()
        entries = await read_all(self.kv)
        for key in list(self.configs.keys() | self.broken.keys()):
            # Absent from the snapshot: gone, unless the watcher saw it after we started.
            if key not in entries and self._applied_at.get(key, 0.0) < started:
                self._apply(key, None, 0, True)
        for key, entry in entries.items():
            if self.revisions.get(key) != entry.revision:
                self._apply(key, entry.value, entry.revision, False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch_forever(), name="config watcher")

    async def _watch_forever(self) -> None:
        backoff = 0.2
        me = asyncio.current_task()
        while self._task is me:  # a replaced watcher (restart_watcher) ends even if a
            watcher = None       # cancel was swallowed (see componentmanager.agent.tasks)
            try:
                watcher = await self.kv.watchall()
                await self.resync()
                backoff = 0.2
                while self._task is me:
                    entry = await watcher.updates(timeout=30.0)
                    if entry is None or self._task is not me:
                        continue
                    self._apply(entry.key, entry.value, entry.revision, is_delete(entry))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, TimeoutError) and "Timeout" not in type(exc).__name__:
                    log.warning("config watcher failed; rebuilding", error=str(exc) or repr(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                self.rebuilds += 1
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def restart_watcher(self) -> None:
        """Rebuild the watcher now (after a reconnect)."""
        if self._task is not None:
            self._task.cancel()
        self.start()

    async def close(self) -> None:
        if self._task is not None:
            await end_tasks([self._task], 5.0)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid config record ({exc.error_count()} error(s)); {where}: {first['msg']}"
    return f"invalid config record: {exc}"
