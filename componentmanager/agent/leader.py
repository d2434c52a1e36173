"""Leader election through a KV lease, and the leader's job: placement and failover.

Every agent competes for the key ``leader`` in ``flowctl_leader``: ``create`` wins an
empty lease, the holder renews it with compare-and-set every tick. A challenger takes
over (compare-and-set on the revision it saw) a lease the server has not seen renewed
for :data:`LEASE_EXPIRES_AFTER_HEARTBEATS` of the holder's heartbeat intervals; the
bucket's TTL (:data:`LEADER_LEASE_TTL_S`) is only a backstop. No extra daemon to operate.

The leader declares an agent dead when the server has stored no heartbeat of it for
:data:`DEAD_AFTER_HEARTBEATS` of its heartbeat intervals. Both are judged on the
server's clock (:mod:`componentmanager.agent.contact`): the timestamps the server gave
the heartbeats and renewals, against the server's time as anchored by this agent's own
heartbeats. So a leader that has just taken over acts at once on what the server saw,
and one that was itself frozen or cut off judges nobody until its own heartbeats get
through steadily again (silence from before that is no evidence). Each wakes exactly
when the next agent or the lease would cross its bound, not a tick later.

The leader runs the pure :func:`flowstore.placement.place` over every config and writes
changed assignments with compare-and-set on each config key, so two deciders can never
both win. Replicas no agent can take get a ``pending`` status with the reason; they are
placed as soon as a matching agent joins. Each move is said in the replica's stored log
lines (``moved out.0 from a1 to a2: a1 silent 2.6 s``, see
:mod:`componentmanager.agent.moves`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from componentmanager.agent.contact import silent_for
from componentmanager.agent.moves import move_lines
from flowstore.models import AgentRecord, ReplicaState, ReplicaStatus, utcnow
from flowstore.nats import LEADER_BUCKET, LEADER_LEASE_TTL_S, open_bucket
from flowstore.placement import place
from flowstore.store import read_all, stored_at

if TYPE_CHECKING:
    from componentmanager.agent import Agent

log = structlog.get_logger("flowctl.leader")

LEASE_KEY = "leader"
DEAD_AFTER_HEARTBEATS = 2.5
#: A lease the server has not seen renewed for this many of its holder's heartbeat
#: intervals is taken over (the holder renews it every tick: several times in that).
LEASE_EXPIRES_AFTER_HEARTBEATS = 2.0
#: How long agents that all went silent at once are still held live.
HOLD_ALL_SILENT_S = 30.0


class Leader:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.lease_rev: int | None = None
        self._live_before: set[str] = set()
        self._holding_since: float | None = None
        self._held: set[str] = set()  # agents held live after going silent together
        #: agent -> (revision, record, stored at) of its last record that parsed
        self._last_good: dict[str, tuple[int, AgentRecord, datetime]] = {}
        #: agent -> seconds the server has gone without its heartbeat, when dead
        self._silence: dict[str, float] = {}
        #: monotonic time at which the next agent (or the lease) would cross its bound
        self._wake_at: float | None = None
        self._pending_written: dict[str, str] = {}
        #: what the last placement that went through was decided from (the config view's
        #: version, the live agents' names and labels): the same again decides the same
        self._placed_from: tuple[object, ...] | None = None
        self.kv = None

    @property
    def is_leader(self) -> bool:
        return self.lease_rev is not None

    @property
    def tick(self) -> float:
        return min(1.0, self.agent.settings.heartbeat / 2)

    async def run(self) -> None:
        while True:
            self._wake_at = None
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
                log.warning("leader tick failed", error=str(exc) or repr(exc))
            await asyncio.sleep(self._pause())

    def _pause(self) -> float:
        """Until the next tick, or sooner when a bound is crossed before it."""
        if self._wake_at is None:
            return self.tick
        return min(self.tick, max(0.01, self._wake_at - time.monotonic() + 0.01))

    def _wake_by(self, at: float) -> None:
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)

    def _server_view(self, at: float) -> tuple[datetime, datetime] | None:
        """(server time at ``at``, since when silence is evidence), or None while this
        agent's own contact with the server is not steady: then nobody is judged."""
        contact = self.agent.contact
        now, since = contact.server_now(at), contact.evidence_since(at)
        return None if now is None or since is None else (now, since)

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
        self._pending_written.clear()
        log.info("became leader", agent=self.agent.agent_name)

    async def _take_over_stale_lease(self, value: bytes) -> bool:
        """Take the lease (CAS) when the server has not seen it renewed in time."""
        assert self.kv is not None
        at = time.monotonic()  # before the read: the silence seen is never overstated
        found = await stored_at(self.kv, LEASE_KEY)
        view = self._server_view(at)
        if found is None or view is None:
            return False  # gone (the next create wins) or no evidence yet
        data, revision, renewed = found
        try:
            holder_hb = float(msgspec.json.decode(data).get("heartbeat_s", 2.0))
        except Exception:
            holder_hb = 2.0
        quiet = silent_for(renewed, *view)
        bound = LEASE_EXPIRES_AFTER_HEARTBEATS * holder_hb
        if quiet < bound:
            self._wake_by(at + bound - quiet)
            return False
        try:
            self.lease_rev = await self.kv.update(LEASE_KEY, value, last=revision)
        except KeyWrongLastSequenceError:
            return False
        log.info("took over a stale leader lease", agent=self.agent.agent_name,
                 silent_s=round(quiet, 1))
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

    def live_agents(self, records: dict[str, tuple[int, AgentRecord, datetime]],
                    at: float) -> list[AgentRecord]:
        """Agents the server has heard from within their bound, judged at monotonic time
        ``at`` (taken before the records were read)."""
        view = self._server_view(at)
        live, silent = [], []
        self._silence = {}
        for name, (_, record, stored) in records.items():
            if name == self.agent.agent_name or view is None:
                live.append(record)  # we are evidently alive; no evidence: nobody judged
                continue
            quiet = silent_for(stored, *view)
            bound = DEAD_AFTER_HEARTBEATS * record.heartbeat_s
            if quiet < bound:
                live.append(record)
                self._wake_by(at + bound - quiet)
            else:
                silent.append(record)
                self._silence[name] = quiet
        live += self._all_silent_at_once(live, silent, at)
        return live

    async def place_once(self) -> None:
        agent = self.agent
        at = time.monotonic()  # before the read: the silence seen is never overstated
        entries = await read_all(agent.agents_kv)
        records: dict[str, tuple[int, AgentRecord, datetime]] = {}
        for name, entry in entries.items():
            record, _ = AgentRecord.parse(entry.value)
            if record is not None and entry.created is not None:
                records[name] = self._last_good[name] = (entry.revision, record,
                                                         entry.created)
            elif name in self._last_good:
                # Junk over an agent's record proves nothing: judge the agent by its last
                # good record (dead only if no heartbeat replaces the junk in time).
                records[name] = self._last_good[name]
        for gone in self._last_good.keys() - entries.keys():
            del self._last_good[gone]
        live = self.live_agents(records, at)
        live_names = {r.name for r in live}
        silent = {n: s for n, s in self._silence.items() if n not in live_names}
        placed_from = (agent.view.version,
                       tuple((r.name, tuple(sorted(r.labels.items()))) for r in live))
        if placed_from == self._placed_from:
            return  # nothing it decides from changed (a 10,000-node flow: no 50 ms per tick)
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
        self._placed_from = placed_from

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
