"""The flow lifecycle over NATS KV: apply, deploy, start, stop, undeploy, delete, rollback.

:class:`FlowEngine` is a thin shell around the pure cores (:func:`validate`,
:func:`translate`, :func:`~flowstore.placement.place`). Every action is level-triggered:
it computes the configs the flow should have, compares them with ``flowctl_config``
and writes only the difference (compare-and-set per key), so running an interrupted
action again converges. Config keys are written before the flow record's state flips,
and the flow record is always written with compare-and-set, so of two concurrent
actions on one flow exactly one succeeds.

The state in the flow record is *desired* state; :meth:`FlowEngine.effective_state`
observes what the agents report in ``flowctl_status`` (with the pure
:func:`~flowengine.observe.observe`). What the actions return is :mod:`flowengine.results`.
"""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from flowengine.errors import ConfigsNotConverged, ValidationFailed
from flowengine.observe import EffectiveState, observe
from flowengine.results import ApplyResult, ConfigChanges, TransitionResult
from flowengine.translate import translate
from flowengine.validate import validate
from flowstore.errors import FlowNotFound, InvalidTransition
from flowstore.models import (
    AgentRecord,
    ComponentConfig,
    FlowRecord,
    FlowSpec,
    FlowState,
    Record,
    ReplicaState,
    ReplicaStatus,
    status_key,
)
from flowstore.nats import AGENTS_BUCKET, CONFIG_BUCKET, STATUS_BUCKET, open_bucket
from flowstore.placement import place
from flowstore.store import FlowStore, read_all

_ATTEMPTS = 5

_HINTS = {
    ("deploy", FlowState.DEPLOYED_STOPPED): "it is already deployed; start it",
    ("deploy", FlowState.RUNNING): "it is already deployed and running",
    ("start", FlowState.NOT_DEPLOYED): "deploy it first",
    ("start", FlowState.RUNNING): "it is already running",
    ("stop", FlowState.NOT_DEPLOYED): "it is not deployed",
    ("stop", FlowState.DEPLOYED_STOPPED): "it is already stopped",
    ("undeploy", FlowState.NOT_DEPLOYED): "it is not deployed",
    ("undeploy", FlowState.RUNNING): "stop it first, or use --force",
    ("delete", FlowState.DEPLOYED_STOPPED): "undeploy it first, or use --force",
    ("delete", FlowState.RUNNING): "stop and undeploy it first, or use --force",
}


_R = TypeVar("_R", bound=Record)


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


class FlowEngine:
    """Flow lifecycle over the flowctl buckets. Construct with :meth:`open`."""

    def __init__(self, flows: FlowStore, configs: KeyValue, status: KeyValue,
                 agents: KeyValue) -> None:
        self.flows = flows
        self.configs = configs
        self.status = status
        self.agents = agents

    @classmethod
    async def open(cls, nc: NatsClient, kv_replicas: int = 1) -> FlowEngine:
        """Open (creating on first use) flowctl_flows, _config, _status and _agents."""
        return cls(
            await FlowStore.open(nc, replicas=kv_replicas),
            await open_bucket(nc, CONFIG_BUCKET, replicas=kv_replicas),
            await open_bucket(nc, STATUS_BUCKET, replicas=kv_replicas),
            await open_bucket(nc, AGENTS_BUCKET, replicas=kv_replicas),
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

    async def live_agents(self) -> list[AgentRecord]:
        """Agents whose last heartbeat is recent enough, sorted by name."""
        agents = (_decode(AgentRecord, e.value) for e in (await read_all(self.agents)).values())
        return sorted((a for a in agents if a and a.is_live()), key=lambda a: a.name)

    # -- the sync at the heart of every action ------------------------------------------

    async def _sync(self, name: str, spec: FlowSpec, *, enabled: bool, revision: int,
                    action: str, agents: list[AgentRecord] | None = None) -> ConfigChanges:
        """Make the flow's config keys match ``spec``; retried when a key CAS loses."""
        if agents is None:
            agents = await self.live_agents()
        changes = ConfigChanges()
        for _ in range(_ATTEMPTS):
            try:
                await self._sync_once(name, spec, enabled, revision, agents, changes)
                return changes
            except _Retry:
                continue
        raise ConfigsNotConverged(name, action, changes.written)

    async def _sync_once(self, name: str, spec: FlowSpec, enabled: bool, revision: int,
                         agents: list[AgentRecord], changes: ConfigChanges) -> None:
        desired = translate(name, spec, flow_revision=revision, enabled=enabled)
        everything = await read_all(self.configs)
        mine = {k: e for k, e in everything.items() if _flow_of(k) == name}
        current = {k: _decode(ComponentConfig, e.value) for k, e in mine.items()}
        changed = [k for k in desired if _differs(current.get(k), desired[k])]
        removed = sorted(current.keys() - desired.keys())
        others = []  # every config that stays as it is counts towards the agents' load
        for key, entry in everything.items():
            if key not in changed and key not in removed:
                other = current[key] if key in mine else _decode(ComponentConfig, entry.value)
                if other is not None:
                    others.append(other)
        for key in changed:
            old = current.get(key)
            desired[key].assignments = list(old.assignments) if old else []
        placed = place([desired[k] for k in changed], agents, others=others)
        for key in changed:
            cfg = desired[key]
            cfg.assignments = placed.assignments[key]
            try:
                if key in mine:
                    await self.configs.update(key, cfg.to_json(), last=mine[key].revision)
                else:
                    await self.configs.create(key, cfg.to_json())
            except KeyWrongLastSequenceError:
                raise _Retry from None
            if key not in changes.added and key not in changes.updated:
                (changes.updated if key in mine else changes.added).append(key)
        for key in removed:
            await self.configs.delete(key)
            changes.removed.append(key)
        changes.unchanged = [k for k in desired if k not in changes.written]

        statuses = await read_all(self.status, f"{name}.*.*")
        for key, replica, reason in placed.pending():
            cfg = desired[key]
            record = ReplicaStatus(flow=name, node=cfg.node, replica=replica,
                                   state=ReplicaState.PENDING, last_error=reason,
                                   flow_revision=revision)
            await self.status.put(record.key, record.to_json())
            changes.pending[record.key] = reason
        wanted = {status_key(name, c.node, r) for c in desired.values() for r in range(c.replicas)}
        for key, entry in sorted(statuses.items()):
            if _flow_of(key) != name or key in changes.pending:
                continue
            stale = key not in wanted  # a removed node, or a replica beyond the count
            if not stale and key.rsplit(".", 1)[0] in changed:  # pending before, placed now
                old = _decode(ReplicaStatus, entry.value)
                stale = old is not None and old.state == ReplicaState.PENDING
            if stale:
                await self.status.delete(key)
                changes.status_removed.append(key)

    async def _remove_all(self, name: str, action: str) -> ConfigChanges:
        """Delete every config key of the flow, verify none is left, then its status keys."""
        changes = ConfigChanges()
        for _ in range(_ATTEMPTS):
            entries = await self._config_entries(name)
            if not entries:
                break
            for key in sorted(entries):
                await self.configs.delete(key)
                if key not in changes.removed:
                    changes.removed.append(key)
        else:  # someone keeps writing them: verify, never flip the state over leftovers
            left = sorted(await self._config_entries(name))
            if left:
                raise ConfigsNotConverged(name, action, left)
        for key in sorted(await read_all(self.status, f"{name}.*.*")):
            if _flow_of(key) == name:
                await self.status.delete(key)
                changes.status_removed.append(key)
        return changes

    @staticmethod
    def _require(record: FlowRecord, action: str, *allowed: FlowState) -> None:
        if record.state not in allowed:
            hint = _HINTS.get((action, record.state), "")
            raise InvalidTransition(record.name, action, record.state.value, hint)

    # -- actions ---------------------------------------------------------------------------

    async def apply(self, name: str, spec: FlowSpec) -> ApplyResult:
        """Create the flow or store ``spec`` as its new revision (CAS); if it is deployed,
        sync its configs (only changed nodes are rewritten). Raises ValidationFailed."""
        try:
            record: FlowRecord | None = await self.flows.get(name)
        except FlowNotFound:
            record = None
        deployed = record is not None and record.state != FlowState.NOT_DEPLOYED
        agents = await self.live_agents() if deployed else None
        result = validate(spec, name=name, agents=agents)
        if not result.ok:
            raise ValidationFailed(result, name)
        if record is None:
            created = await self.flows.create(name, spec)  # FlowExists if we lost a race
            return ApplyResult(created, True, ConfigChanges(spec_changed=True, validation=result))
        changes = ConfigChanges()
        spec_changed = record.spec != spec
        if spec_changed:
            next_deployed = record.revision + 1 if deployed else None
            record = await self.flows.update(record, spec=spec, deployed_revision=next_deployed)
        if deployed:
            revision = record.deployed_revision or record.revision
            changes = await self._sync(name, spec, enabled=record.state == FlowState.RUNNING,
                                       revision=revision, action="apply", agents=agents)
        changes.spec_changed, changes.validation = spec_changed, result
        return ApplyResult(record, False, changes)

    async def deploy(self, name: str) -> TransitionResult:
        """not_deployed -> deployed_stopped: write every config (disabled), placed."""
        record = await self.flows.get(name)
        self._require(record, "deploy", FlowState.NOT_DEPLOYED)
        agents = await self.live_agents()
        result = validate(record.spec, name=name, agents=agents)
        if not result.ok:
            raise ValidationFailed(result, name)
        changes = await self._sync(name, record.spec, enabled=False, revision=record.revision,
                                   action="deploy", agents=agents)
        changes.validation = result
        new = await self.flows.update(record, state=FlowState.DEPLOYED_STOPPED,
                                      deployed_revision=record.revision)
        return TransitionResult(new, "deploy", record.state, changes)

    async def _switch(self, name: str, action: str, source: FlowState, target: FlowState,
                      ) -> TransitionResult:
        record = await self.flows.get(name)
        self._require(record, action, source)
        revision = record.deployed_revision or record.revision
        changes = await self._sync(name, record.spec, enabled=target == FlowState.RUNNING,
                                   revision=revision, action=action)
        new = await self.flows.update(record, state=target)
        return TransitionResult(new, action, record.state, changes)

    async def start(self, name: str) -> TransitionResult:
        """deployed_stopped -> running: every config gets enabled=true."""
        return await self._switch(name, "start", FlowState.DEPLOYED_STOPPED, FlowState.RUNNING)

    async def stop(self, name: str) -> TransitionResult:
        """running -> deployed_stopped: every config gets enabled=false."""
        return await self._switch(name, "stop", FlowState.RUNNING, FlowState.DEPLOYED_STOPPED)

    async def undeploy(self, name: str, force: bool = False) -> TransitionResult:
        """deployed_stopped -> not_deployed: delete every config and status key of the
        flow. Refused while running unless ``force`` (which stops it first)."""
        record = await self.flows.get(name)
        previous = record.state
        if record.state == FlowState.RUNNING and force:
            record = (await self.stop(name)).flow
        self._require(record, "undeploy", FlowState.DEPLOYED_STOPPED)
        changes = await self._remove_all(name, "undeploy")
        cleared = record.model_copy(update={"deployed_revision": None})
        new = await self.flows.update(cleared, state=FlowState.NOT_DEPLOYED)
        return TransitionResult(new, "undeploy", previous, changes)

    async def delete(self, name: str, force: bool = False) -> TransitionResult:
        """Delete a not_deployed flow (its history is kept); ``force`` undeploys first."""
        record = await self.flows.get(name)
        previous = record.state
        if record.state != FlowState.NOT_DEPLOYED:
            if not force:
                self._require(record, "delete", FlowState.NOT_DEPLOYED)
            undeployed = await self.undeploy(name, force=True)
            record, changes = undeployed.flow, undeployed.changes
        else:  # leftovers of an interrupted deploy must not outlive the flow
            changes = await self._remove_all(name, "delete")
        await self.flows.delete(record)
        return TransitionResult(record, "delete", previous, changes)

    async def rollback(self, name: str, revision: int) -> ApplyResult:
        """Apply the spec of history ``revision`` as a new revision."""
        old = await self.flows.at_revision(name, revision)
        return await self.apply(name, old.spec)

    async def effective_state(self, name: str) -> EffectiveState:
        """Observe the flow from what its replicas report (not from its record)."""
        record = await self.flows.get(name)
        return observe(record, await self.list_configs(name), await self.list_status(name),
                       {a.name for a in await self.live_agents()})
