"""Leader election through a KV lease, and the leader's job: placement and failover.

Every agent competes for the key ``leader`` in ``flowctl_leader``: ``create`` wins an
empty lease, the holder renews it with compare-and-set every tick. A challenger takes
over (compare-and-set on the revision it saw) a lease that has not been renewed for
:data:`DEAD_AFTER_HEARTBEATS` of the holder's heartbeat intervals, judged on the
challenger's own clock; the bucket's TTL (:data:`LEADER_LEASE_TTL_S`) is only a backstop.
No extra daemon to operate.

The leader declares an agent dead when its record has not changed for
:data:`DEAD_AFTER_HEARTBEATS` of its heartbeat intervals (measured on the leader's own
clock, so clock skew between hosts does not matter), runs the pure
:func:`flowstore.placement.place` over every config, and writes changed assignments with
compare-and-set on each config key, so two deciders can never both win. Replicas no
agent can take get a ``pending`` status with the reason; they are placed as soon as a
matching agent joins. Each move is said in the replica's stored log lines (``moved out.0
from a1 to a2: a1 silent 3.1 s``, see :mod:`componentmanager.agent.moves`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from componentmanager.agent.moves import move_lines
from flowstore.models import AgentRecord, ReplicaState, ReplicaStatus, utcnow
from flowstore.nats import LEADER_BUCKET, LEADER_LEASE_TTL_S, open_bucket
from flowstore.placement import place
from flowstore.store import read_all

if TYPE_CHECKING:
    from componentmanager.agent import Agent

log = structlog.get_logger("flowctl.leader")

LEASE_KEY = "leader"
DEAD_AFTER_HEARTBEATS = 2.5
#: How long agents that all went silent at once are still held live.
HOLD_ALL_SILENT_S = 30.0


class Leader:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.lease_rev: int | None = None
        self._lease_seen: tuple[int, float] | None = None  # (revision, monotonic)
        self._last_eval: float | None = None
        self._seen: dict[str, tuple[int, float]] = {}  # agent -> (revision, monotonic)
        #: since when this leader has watched the agents without interruption (None: not
        #: yet, or it could not reach NATS): only then is an agent's silence evidence
        self._watching_since: float | None = None
        self._live_before: set[str] = set()
        self._holding_since: float | None = None
        self._held: set[str] = set()  # agents held live after going silent together
        #: agent -> (revision, record) of its last record that parsed
        self._last_good: dict[str, tuple[int, AgentRecord]] = {}
        self._pending_written: dict[str, str] = {}
        self.kv = None

    @property
    def is_leader(self) -> bool:
        return self.lease_rev is not None

    @property
    def tick(self) -> float:
        return min(1.0, self.agent.settings.heartbeat / 2)

    async def run(self) -> None:
        while True:
            try:
                if self.kv is None:
                    self.kv = await open_bucket(
                        self.agent.nc, LEADER_BUCKET, replicas=self.agent.nats_options.kv_replicas
                    )
                await self._hold_lease()
                if self.is_leader:
                    await self.place_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._watching_since = None  # what we saw is no evidence any more
                log.warning("leader tick failed", error=str(exc) or repr(exc))
            await asyncio.sleep(self.tick)

    async def _hold_lease(self) -> None:
        assert self.kv is not None
        me = self.agent
        value = msgspec.json.encode(
            {
                "agent": me.agent_name,
                "instance": me.instance,
                "heartbeat_s": me.settings.heartbeat,
                "renewed_at": utcnow(),
            }
        )
        if self.lease_rev is not None:
            try:
                self.lease_rev = await self.kv.update(LEASE_KEY, value, last=self.lease_rev)
                return
            except KeyWrongLastSequenceError:
                log.warning("lost the leader lease", agent=self.agent.agent_name)
                self.lease_rev = None
        try:
            self.lease_rev = await self.kv.create(LEASE_KEY, value)
        except KeyWrongLastSequenceError:
            if not await self._take_over_stale_lease(value):
                return
        self._seen.clear()
        self._last_eval = None
        self._pending_written.clear()
        self._watching_since = None  # judge nobody before a full grace period
        log.info("became leader", agent=self.agent.agent_name)

    async def _take_over_stale_lease(self, value: bytes) -> bool:
        """Take the lease (CAS) when its holder has stopped renewing it."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(LEASE_KEY)
        except KeyNotFoundError:
            return False
        now = time.monotonic()
        if self._lease_seen is None or self._lease_seen[0] != entry.revision:
            self._lease_seen = (entry.revision, now)
            return False
        try:
            holder_hb = float(msgspec.json.decode(entry.value).get("heartbeat_s", 2.0))
        except Exception:
            holder_hb = 2.0
        if now - self._lease_seen[1] < DEAD_AFTER_HEARTBEATS * holder_hb:
            return False
        try:
            self.lease_rev = await self.kv.update(LEASE_KEY, value, last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        self._watching_since = None
        log.info("took over a stale leader lease", agent=self.agent.agent_name)
        return True

    async def resign(self) -> None:
        if self.kv is not None and self.lease_rev is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(LEASE_KEY, last=self.lease_rev)
        self.lease_rev = None

    def _all_silent_at_once(self, live: list[AgentRecord], silent: list[AgentRecord],
                            now: float) -> list[AgentRecord]:
        """Every other agent going silent in the same moment is more likely a cut between
        them and NATS (or this leader's own view) than a mass death: each of them is held
        live until it heartbeats again, for up to :data:`HOLD_ALL_SILENT_S` (one coming
        back first does not end the hold of the others: they went silent for the same
        reason). Returns the silent agents to keep treating as live."""
        me = self.agent.agent_name
        live_names = {r.name for r in live}
        if self._holding_since is not None:
            self._held -= live_names
            if self._held and now - self._holding_since < HOLD_ALL_SILENT_S:
                return [r for r in silent if r.name in self._held]
            self._holding_since, self._held = None, set()
        if any(r.name != me for r in live) or not silent:
            self._live_before = live_names
            return []
        newly = [r for r in silent if r.name in self._live_before]
        self._live_before = live_names
        if len(newly) < 2:
            return []  # one agent died (the others were gone already): fail over
        self._holding_since, self._held = now, {r.name for r in newly}
        log.warning("every other agent went silent at once; waiting for fresh "
                    "heartbeats before moving anything", agents=len(newly))
        return newly

    def live_agents(self, records: dict[str, tuple[int, AgentRecord]]) -> list[AgentRecord]:
        """Agents whose record changed recently, judged on this leader's clock."""
        now = time.monotonic()
        # If this leader itself was stalled (CPU starved, paused), the silence it sees is
        # its own: shift every observation forward by the stall instead of declaring
        # everyone dead at once.
        if self._last_eval is not None:
            stall = now - self._last_eval - 2 * self.tick
            if stall > 0:
                self._seen = {n: (rev, t + stall) for n, (rev, t) in self._seen.items()}
        self._last_eval = now
        if self._watching_since is None:
            # Just became leader, or could not reach NATS: nobody's silence is evidence
            # yet. Every agent gets a full grace period from now, on this leader's clock.
            self._watching_since = now
            self._seen = {n: (rev, now) for n, (rev, _) in self._seen.items()}
        live, silent = [], []
        for name, (revision, record) in records.items():
            seen = self._seen.get(name)
            if seen is None or seen[0] != revision:
                self._seen[name] = (revision, now)  # first sight or a heartbeat: alive now
            mine = name == self.agent.agent_name  # we are evidently alive
            if mine or now - self._seen[name][1] < DEAD_AFTER_HEARTBEATS * record.heartbeat_s:
                live.append(record)
            else:
                silent.append(record)
        live += self._all_silent_at_once(live, silent, now)
        for gone in self._seen.keys() - records.keys():
            del self._seen[gone]
        return live

    async def place_once(self) -> None:
        agent = self.agent
        entries = await read_all(agent.agents_kv)
        records: dict[str, tuple[int, AgentRecord]] = {}
        for name, entry in entries.items():
            record, _ = AgentRecord.parse(entry.value)
            if record is not None:
                records[name] = self._last_good[name] = (entry.revision, record)
            elif name in self._last_good:
                # Junk over an agent's record proves nothing: judge the agent by its last
                # good record (dead only if no heartbeat replaces the junk in time).
                records[name] = self._last_good[name]
        for gone in self._last_good.keys() - entries.keys():
            del self._last_good[gone]
        live = self.live_agents(records)
        now, live_names = time.monotonic(), {r.name for r in live}
        silent = {n: now - t for n, (_, t) in self._seen.items() if n not in live_names}
        # One consistent snapshot (no await in between): each body with its own revision,
        # so a CAS can only succeed on exactly the body that was placed.
        configs = dict(agent.view.configs)
        revisions = {key: agent.view.revisions[key] for key in configs}
        result = place(configs.values(), live)
        for key in result.changed(configs.values()):
            cfg = configs[key].model_copy(update={"assignments": result.assignments[key]})
            try:
                await agent.config_kv.update(key, cfg.to_json(), last=revisions[key])
                log.info("reassigned", config=key, assignments=cfg.assignments)
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile: the next tick decides again
            for replica, line in move_lines(configs[key], cfg.assignments,
                                            result.reasons.get(key, {}), silent, set(records)):
                self._say(cfg.flow, cfg.node, replica, line)
        for key, replica, reason in result.pending():
            cfg = configs[key]
            skey = f"{key}.{replica}"
            if self._pending_written.get(skey) == reason:
                continue
            status = ReplicaStatus(
                flow=cfg.flow, node=cfg.node, replica=replica,
                state=ReplicaState.PENDING, last_error=reason,
            )
            await self._write_pending(skey, status)
            self._pending_written[skey] = reason
        placed = {f"{k}.{i}" for k, a in result.assignments.items() for i, n in enumerate(a) if n}
        for skey in list(self._pending_written):
            if skey in placed or skey.rsplit(".", 1)[0] not in configs:
                del self._pending_written[skey]

    def _say(self, flow: str, node: str, replica: int, line: str) -> None:
        """A decision about a replica, in this agent's log and the replica's stored log
        lines (``flowctl logs``), as the stream ``leader``."""
        log.info(line, flow=flow)
        data = self.agent.data
        if data is not None:
            data.publish_log(flow, node, replica, line, "leader")

    async def _write_pending(self, key: str, status: ReplicaStatus) -> None:
        """Write ``pending`` (CAS, so a replica that just started there wins)."""
        kv = self.agent.status_kv
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            previous, _ = ReplicaStatus.parse(entry.value)
            if previous is not None:  # the counts belong to the replica: keep them
                status = status.model_copy(update={"counters": previous.counters,
                                                   "restarts": previous.restarts})
            with contextlib.suppress(KeyWrongLastSequenceError):
                await kv.update(key, status.to_json(), last=entry.revision)
            return
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(key, status.to_json())


__all__ = ["LEADER_LEASE_TTL_S", "Leader"]
