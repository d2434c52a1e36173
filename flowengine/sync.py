"""Keeping ``flowctl_config`` in step with a flow record: what every action is built from.

:class:`FlowKV` holds the flowctl buckets (and the NATS client, for a flow's stream), the
reads, and the level-triggered writes that the actions of
:class:`~flowengine.lifecycle.FlowEngine` are made of:

* :meth:`FlowKV._sync` makes a flow's config keys match a spec: only what differs is
  written, compare-and-set per key, placed on the live agents; status keys follow. A
  config keeps the ``reset`` token stored with it unless the action renews it
  (``apply --reset``, see :mod:`flowengine.resets`).
* :meth:`FlowKV._remove_all` deletes every config key of a flow, then its status keys
  and its at-least-once stream (with the durable consumers in it).
* :meth:`FlowKV._settle` runs after every action that wrote configs, whether its record
  compare-and-set won or lost: it makes the configs match the flow record *as it is now*
  (whichever concurrent action won: not_deployed or deleted -> no keys; otherwise every
  key, enabled exactly when running), and repeats until the record stayed the same while
  it wrote. Each action writes its configs before its record and settles after it, so
  once racing actions have returned, the config keys follow the final record. (A deploy
  or start whose record won and is still the flow's skips it: whoever raced it lost and
  settles.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Self, TypeVar

from nats.aio.client import Client as NatsClient
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServerError,
)
from nats.js.kv import KeyValue

from flowengine.errors import ConfigsNotConverged
from flowengine.results import ConfigChanges
from flowengine.translate import translate
from flowstore.errors import FlowNotFound, RevisionConflict
from flowstore.models import (
    AgentRecord,
    ComponentConfig,
    FlowRecord,
    FlowSpec,
    FlowState,
    Record,
    ReplicaState,
    ReplicaStatus,
    start_rank,
    status_key,
    stream_name,
)
from flowstore.nats import (
    AGENTS_BUCKET,
    CHECKPOINTS_BUCKET,
    CONFIG_BUCKET,
    STATUS_BUCKET,
    delete_flow_stream,
    delete_state_objects,
    open_bucket,
)
from flowstore.placement import place
from flowstore.store import FlowStore, delete_keys, is_delete, pipelined, read_all
from flowstore.streams import (
    dead_letter_counts,
    ensure_dlq_stream,
    ensure_flow_streams,
    ensure_logs_stream,
    input_backlog,
)

ATTEMPTS = 5

_R = TypeVar("_R", bound=Record)
_T = TypeVar("_T")


class _Retry(Exception):
    """A per-key compare-and-set lost: recompute and try again."""


def _flow_of(key: str) -> str:
    return key.split(".", 1)[0]


def _decode(model: type[_R], value: bytes | None) -> _R | None:
    """A stored record, or None when the value is not one (never trust a bucket blindly)."""
    try:
        return model.model_validate_json(value or b"")
    except ValueError:
        return None


def _differs(current: ComponentConfig | None, desired: ComponentConfig) -> bool:
    """Whether the stored config must be rewritten (assignments and revision ignored)."""
    return (
        current is None
        or current.enabled != desired.enabled
        or current.desired_fingerprint() != desired.desired_fingerprint()
    )


def consumers_first(configs: dict[str, ComponentConfig], keys: list[str]) -> list[str]:
    """``keys`` in the order their configs are written (agents start what they see
    first): by :func:`~flowstore.models.start_rank`, each rank in flow order."""
    return sorted(keys, key=lambda k: start_rank(configs[k].role))


def _kv_revision(record: FlowRecord | None) -> int | None:
    return None if record is None else record.kv_revision


class FlowKV:
    """The flowctl buckets of one connection, and the config writes under every action."""

    def __init__(self, flows: FlowStore, configs: KeyValue, status: KeyValue,
                 agents: KeyValue, *, nc: NatsClient, kv_replicas: int = 1,
                 checkpoints: KeyValue | None = None) -> None:
        self.flows = flows
        self.checkpoints = checkpoints
        self.kv_replicas = kv_replicas
        self.configs = configs
        self.status = status
        self.agents = agents
        self.nc = nc  # for the flows' JetStream streams
        #: the last translation: (name, revision, enabled, the spec as JSON) -> configs
        self._translation: tuple[tuple[str, int, bool, str],
                                 dict[str, ComponentConfig]] | None = None

    @classmethod
    async def open(cls, nc: NatsClient, kv_replicas: int = 1) -> Self:
        """Open (creating on first use) flowctl_flows, _config, _status and _agents."""
        return cls(
            await FlowStore.open(nc, replicas=kv_replicas),
            await open_bucket(nc, CONFIG_BUCKET, replicas=kv_replicas),
            await open_bucket(nc, STATUS_BUCKET, replicas=kv_replicas),
            await open_bucket(nc, AGENTS_BUCKET, replicas=kv_replicas),
            nc=nc, kv_replicas=kv_replicas,
            checkpoints=await open_bucket(nc, CHECKPOINTS_BUCKET, replicas=kv_replicas),
        )

    # -- reads -----------------------------------------------------------------------------

    async def _config_entries(self, name: str) -> dict[str, KeyValue.Entry]:
        # "a.*" matches a.x but never a-b.x: NATS wildcards match whole tokens.
        entries = await read_all(self.configs, f"{name}.*")
        return {k: e for k, e in entries.items() if _flow_of(k) == name}

    async def list_configs(self, name: str) -> list[ComponentConfig]:
        """The flow's configs in ``flowctl_config``, sorted by node."""
        entries = await self._config_entries(name)
        configs = [c for c in (_decode(ComponentConfig, e.value) for e in entries.values()) if c]
        return sorted((c for c in configs if c.flow == name), key=lambda c: c.node)

    async def list_status(self, name: str) -> list[ReplicaStatus]:
        """The flow's replica records in ``flowctl_status``, sorted by node and replica."""
        out = []
        for entry in (await read_all(self.status, f"{name}.*.*")).values():
            status = _decode(ReplicaStatus, entry.value)
            if status is not None and status.flow == name:
                out.append(status)
        return sorted(out, key=lambda s: (s.node, s.replica))

    async def input_backlog(self, name: str) -> dict[str, int]:
        """Unacked messages per durable consumer (``<node>-<port>``) of an at-least-once
        flow's stream; empty for at-most-once."""
        return await input_backlog(self.nc, name)

    async def dead_letters(self, name: str) -> dict[str, int]:
        """Dead letters of the flow kept in FLOWCTL_DLQ, per node."""
        return await dead_letter_counts(self.nc, name)

    async def agent_records(self) -> dict[str, AgentRecord]:
        """Every agent record that parses, by name, live or not (readers judge them with
        :func:`flowstore.liveness.as_seen`)."""
        agents = (_decode(AgentRecord, e.value) for e in (await read_all(self.agents)).values())
        return {a.name: a for a in agents if a}

    async def live_agents(self) -> list[AgentRecord]:
        """Agents whose last heartbeat is recent enough, sorted by name."""
        agents = (_decode(AgentRecord, e.value) for e in (await read_all(self.agents)).values())
        return sorted((a for a in agents if a and a.is_live()), key=lambda a: a.name)

    @staticmethod
    async def _get(kv: KeyValue, model: type[_R], key: str) -> _R | None:
        """One record read by key (exact, unlike a snapshot of keys being rewritten)."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # KeyDeletedError too
            return None
        return None if is_delete(entry) else _decode(model, entry.value)

    async def _record(self, name: str) -> FlowRecord | None:
        try:
            return await self.flows.get(name)
        except FlowNotFound:
            return None

    async def _revision(self, name: str) -> int | None:
        """The KV revision of the flow's record, None when there is none: whether it
        changed, without parsing it (a spec of 10,000 nodes takes 0.2 s to parse)."""
        try:
            entry = await self.flows.kv.get(name)
        except KeyNotFoundError:
            return None
        return None if entry.value is None or is_delete(entry) else entry.revision

    async def _unchanged(self, record: FlowRecord) -> None:
        """Raise RevisionConflict when the flow record changed since ``record`` was read."""
        if await self._revision(record.name) != record.kv_revision:
            raise RevisionConflict(record.name, record.kv_revision)

    # -- writes ----------------------------------------------------------------------------

    async def _sync(self, name: str, spec: FlowSpec, *, enabled: bool | frozenset[str],
                    revision: int, action: str, agents: list[AgentRecord] | None = None,
                    changes: ConfigChanges | None = None, guard: FlowRecord | None = None,
                    resets: dict[str, str] | None = None) -> ConfigChanges:
        """Make the flow's config keys match ``spec``; retried when a key CAS loses.

        ``enabled``: for every node, or the set of nodes to enable (the rest disabled).
        ``guard``: the record the write is based on; a key is only ever created while
        the record is still that one (else RevisionConflict, before creating anything).
        ``resets``: node -> the new reset token of each node to start over.
        """
        if agents is None:
            agents = await self.live_agents()
        changes = ConfigChanges() if changes is None else changes
        for attempt in range(ATTEMPTS):
            try:
                await self._sync_once(name, spec, enabled, revision, agents, changes, guard,
                                      resets or {})
                return changes
            except _Retry:
                # a key changed under us (or a busy server's snapshot lagged a write):
                # read again after a short, growing pause
                await asyncio.sleep(0.02 * 2**attempt)
        raise ConfigsNotConverged(name, action, changes.written)

    async def _sync_once(self, name: str, spec: FlowSpec, enabled: bool | frozenset[str],
                         revision: int, agents: list[AgentRecord], changes: ConfigChanges,
                         guard: FlowRecord | None, resets: dict[str, str]) -> None:
        desired = self._translate(name, spec, revision, enabled is True)
        if isinstance(enabled, frozenset):
            for cfg in desired.values():
                cfg.enabled = cfg.node in enabled
        everything = await read_all(self.configs)
        mine = {k: e for k, e in everything.items() if _flow_of(k) == name}
        current = {k: _decode(ComponentConfig, e.value) for k, e in mine.items()}
        for key, cfg in desired.items():
            old = current.get(key)
            cfg.reset = resets.get(cfg.node, old.reset if old is not None else None)
            if cfg.node in resets and key not in changes.reset:
                changes.reset.append(key)
        changed = [k for k in desired if _differs(current.get(k), desired[k])]
        removed = sorted(current.keys() - desired.keys())
        if guard is not None and any(k not in mine for k in changed):
            await self._unchanged(guard)  # never create keys behind a record that moved on
        changed_now = set(changed)
        touched = changed_now | set(removed)
        others = []  # every config that stays as it is counts towards the agents' load
        for key, entry in everything.items():
            if key not in touched:
                other = current[key] if key in mine else _decode(ComponentConfig, entry.value)
                if other is not None:
                    others.append(other)
        for key in changed:
            old = current.get(key)
            desired[key].assignments = list(old.assignments) if old else []
        if changed:  # the streams and consumers exist before any replica may publish
            await self._ensure_streams(name, spec, list(desired.values()))
        placed = place([desired[k] for k in changed], agents, others=others)

        async def write(key: str) -> None:
            cfg = desired[key]
            cfg.assignments = placed.assignments[key]
            try:
                if key in mine:
                    await self.configs.update(key, cfg.to_json(), last=mine[key].revision)
                else:
                    await self.configs.create(key, cfg.to_json())
            except KeyWrongLastSequenceError:
                raise _Retry from None
            written.add(key)

        written: set[str] = set()
        try:
            await pipelined(write(key) for key in consumers_first(desired, changed))
        finally:  # in the flow's order, whatever order the writes completed in
            listed = {*changes.added, *changes.updated}
            for key in changed:
                if key in written and key not in listed:
                    (changes.updated if key in mine else changes.added).append(key)
        await pipelined(self.configs.delete(key) for key in removed)
        was_removed = set(changes.removed)
        changes.removed += [key for key in removed if key not in was_removed]
        listed = {*changes.added, *changes.updated}
        changes.unchanged = [k for k in desired if k not in listed]

        statuses = await read_all(self.status, f"{name}.*.*")
        pending = [ReplicaStatus(flow=name, node=desired[key].node, replica=replica,
                                 state=ReplicaState.PENDING, last_error=reason,
                                 flow_revision=revision)
                   for key, replica, reason in placed.pending()]
        await pipelined(self.status.put(r.key, r.to_json()) for r in pending)
        changes.pending.update({r.key: r.last_error or "" for r in pending})
        wanted = {status_key(name, c.node, r) for c in desired.values() for r in range(c.replicas)}
        stale = []
        for key, entry in sorted(statuses.items()):
            if _flow_of(key) != name or key in changes.pending:
                continue
            gone = key not in wanted  # a removed node, or a replica beyond the count
            if not gone and key.rsplit(".", 1)[0] in changed_now:  # pending before, placed now
                old = _decode(ReplicaStatus, entry.value)
                gone = old is not None and old.state == ReplicaState.PENDING
            if gone:
                stale.append(key)
        await pipelined(self.status.delete(key) for key in stale)
        changes.status_removed += [k for k in stale if k not in changes.status_removed]

    def _translate(self, name: str, spec: FlowSpec, revision: int,
                   enabled: bool) -> dict[str, ComponentConfig]:
        """:func:`translate`, remembered for the last spec: an action's settle syncs the
        spec it has just written once more (a flow of 1,000 nodes: 60 ms saved). Each call
        gets copies of its own (a sync sets enabled, reset and assignments on them)."""
        key = (name, revision, enabled, spec.model_dump_json())
        if self._translation is None or self._translation[0] != key:
            self._translation = (key, translate(name, spec, flow_revision=revision,
                                                enabled=enabled))
        return {k: cfg.model_copy() for k, cfg in self._translation[1].items()}

    async def _ensure_streams(self, name: str, spec: FlowSpec,
                              configs: list[ComponentConfig]) -> None:
        try:
            if spec.delivery != "at-most-once":  # acked: the flow's stream
                await ensure_flow_streams(self.nc, name, configs, spec.buffer, self.kv_replicas)
            else:
                await ensure_dlq_stream(self.nc, self.kv_replicas)
            await ensure_logs_stream(self.nc, self.kv_replicas)
        except (NotFoundError, ServerError):  # an undeploy racing us removed the stream
            await asyncio.sleep(0.05)         # (or is removing it): decide again
            raise _Retry from None

    async def _remove_all(self, name: str, action: str) -> ConfigChanges:
        """Delete every config key of the flow and verify none is left; then its status
        keys and its stream (the agents stop the replicas once their keys are gone)."""
        changes = ConfigChanges()
        for _ in range(ATTEMPTS):
            entries = await self._config_entries(name)
            if not entries:
                break
            await delete_keys(self.configs, sorted(entries), changes.removed)
        else:  # someone keeps writing them: verify, never flip the state over leftovers
            left = sorted(await self._config_entries(name))
            if left:
                raise ConfigsNotConverged(name, action, left)
        statuses = await read_all(self.status, f"{name}.*.*")
        await delete_keys(self.status, sorted(k for k in statuses if _flow_of(k) == name),
                          changes.status_removed)
        if self.checkpoints is not None:  # a redeployed flow's sources start over
            positions = await read_all(self.checkpoints, f"{name}.*.*")
            await delete_keys(self.checkpoints,
                              sorted(k for k in positions if _flow_of(k) == name), [])
        await delete_state_objects(self.nc, name)  # operator states too large for KV
        if await delete_flow_stream(self.nc, name):
            changes.streams_removed.append(stream_name(name))
        return changes

    async def _settle(self, name: str, action: str, changes: ConfigChanges) -> None:
        """Make the flow's configs match its record as it is now (see the module doc);
        what this writes is added to ``changes``."""
        for _ in range(ATTEMPTS):
            record = await self._record(name)
            try:
                if record is None or record.state == FlowState.NOT_DEPLOYED:
                    changes.merge_removed(await self._remove_all(name, action))
                else:
                    await self._sync(name, record.spec,
                                     enabled=record.state == FlowState.RUNNING,
                                     revision=record.deployed_revision or record.revision,
                                     action=action, changes=changes, guard=record)
            except RevisionConflict:
                continue  # the record moved on while we wrote: settle on the new one
            if _kv_revision(await self._record(name)) == _kv_revision(record):
                return
        raise ConfigsNotConverged(name, action, sorted(await self._config_entries(name)))

    async def _settled(self, name: str, action: str, changes: ConfigChanges,
                       work: Awaitable[_T], written_first: bool = False) -> _T:
        """Run an action's writes, then :meth:`_settle`, also when it lost a race (the
        loser's error is raised after its configs were made to follow the winner).

        ``written_first``: the action wrote all its configs before the compare-and-set
        of the record it returns (deploy, start). While that record is still the flow's,
        there is nothing to settle: every action that raced it lost that compare-and-set
        (or came after it) and settles itself afterwards. (A flow of 1,000 nodes: a
        second read of every config and status record saved, half of ``start``.)"""
        try:
            result = await work
        except (RevisionConflict, ConfigsNotConverged):
            await self._settle(name, action, changes)
            raise
        if (written_first and isinstance(result, FlowRecord)
                and await self._revision(name) == result.kv_revision):
            return result
        await self._settle(name, action, changes)
        return result
