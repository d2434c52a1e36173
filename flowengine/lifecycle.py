"""The flow lifecycle over NATS KV: apply, deploy, start, stop, undeploy, delete, rollback.

:class:`FlowEngine` is a thin shell around the pure cores (:func:`validate`,
:func:`translate`, :func:`~flowstore.placement.place`, :func:`stop_waves`) and the config
writes of :class:`~flowengine.sync.FlowKV`. Every action is level-triggered: it computes
the configs the flow should have, compares them with ``flowctl_config`` and writes only the
difference (compare-and-set per key), so running an interrupted action again converges.
Config keys are written before the flow record's state flips, and the flow record is
always written with compare-and-set, so of two concurrent actions on one flow exactly one
succeeds; every action that wrote configs then *settles* them on the record that won
(the loser raises its RevisionConflict afterwards; a deploy or start whose record is
still the flow's has nothing to settle), so config keys never outlive or contradict the
final record. ``stop`` disables the nodes in flow order (sources first,
sinks last, waiting bounded for each wave to stop); ``stop_sources`` does its first wave
alone (``flowctl run`` on Ctrl+C: the rest drains, then ``stop``); ``undeploy`` also
deletes the flow's at-least-once stream.

The state in the flow record is *desired* state; :meth:`FlowEngine.effective_state`
observes what the agents report in ``flowctl_status`` (with the pure
:func:`~flowengine.observe.observe`). What the actions return is :mod:`flowengine.results`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from flowengine.errors import ValidationFailed
from flowengine.issues import ValidationResult
from flowengine.observe import EffectiveState, observe
from flowengine.resets import reset_targets
from flowengine.results import ApplyResult, ConfigChanges, TransitionResult
from flowengine.stopping import ACTIVE, still_running, stop_waves
from flowengine.sync import FlowKV
from flowengine.translate import translate
from flowstore.errors import FlowNotFound, InvalidTransition
from flowstore.models import (
    AgentRecord,
    ComponentConfig,
    FlowRecord,
    FlowSpec,
    FlowState,
    ReplicaStatus,
    status_key,
)

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


class FlowEngine(FlowKV):
    """Flow lifecycle over the flowctl buckets. Construct with :meth:`open`."""

    #: How long ``stop`` waits in all for each wave of nodes to report stopped (seconds),
    #: and how often it looks.
    stop_timeout: float = 10.0
    stop_poll: float = 0.1

    @staticmethod
    def _require(record: FlowRecord, action: str, *allowed: FlowState) -> None:
        if record.state not in allowed:
            hint = _HINTS.get((action, record.state), "")
            raise InvalidTransition(record.name, action, record.state.value, hint)

    # -- actions ---------------------------------------------------------------------------

    async def apply(self, name: str, spec: FlowSpec, reset: Iterable[str] = ()) -> ApplyResult:
        """Create the flow or store ``spec`` as its new revision (CAS); if it is deployed,
        sync its configs (only changed nodes are rewritten). Raises ValidationFailed.

        ``reset``: nodes to start over (a source's position, a stateful node's state; see
        :mod:`flowengine.resets`); CannotReset, before any write, for a name that is no
        such node. A flow that is not deployed keeps nothing: there is nothing to reset."""
        try:
            record: FlowRecord | None = await self.flows.get(name)
        except FlowNotFound:
            record = None
        deployed = record is not None and record.state != FlowState.NOT_DEPLOYED
        agents = await self.live_agents() if deployed else None
        from flowengine.validate import rescale_issues, validate  # heavy: not for readers

        result = validate(spec, name=name, agents=agents)
        if deployed and record is not None:
            result = ValidationResult.from_issues([*result.issues,
                                                   *rescale_issues(record.spec, spec)])
        if not result.ok:
            raise ValidationFailed(result, name)
        token = secrets.token_hex(4)  # one per apply: a retried write renews nothing twice
        resets = {node: token for node in reset_targets([(name, spec)], reset)[name]}
        if record is None:
            created = await self.flows.create(name, spec)  # FlowExists if we lost a race
            return ApplyResult(created, True, ConfigChanges(spec_changed=True, validation=result))
        changes = ConfigChanges()
        spec_changed = record.spec != spec
        if spec_changed:  # a lost CAS here raises before any config was written
            next_deployed = record.revision + 1 if deployed else None
            record = await self.flows.update(record, spec=spec, deployed_revision=next_deployed)
        if deployed:
            revision = record.deployed_revision or record.revision
            await self._settled(name, "apply", changes, self._sync(
                name, spec, enabled=record.state == FlowState.RUNNING, revision=revision,
                action="apply", agents=agents, changes=changes, guard=record, resets=resets))
        changes.spec_changed, changes.validation = spec_changed, result
        return ApplyResult(record, False, changes)

    async def deploy(self, name: str) -> TransitionResult:
        """not_deployed -> deployed_stopped: write every config (disabled), placed."""
        record = await self.flows.get(name)
        self._require(record, "deploy", FlowState.NOT_DEPLOYED)
        agents = await self.live_agents()
        from flowengine.validate import validate  # heavy: not for readers

        result = validate(record.spec, name=name, agents=agents)
        if not result.ok:
            raise ValidationFailed(result, name)
        changes = ConfigChanges(validation=result)

        async def work() -> FlowRecord:
            await self._sync(name, record.spec, enabled=False, revision=record.revision,
                             action="deploy", agents=agents, changes=changes, guard=record)
            return await self.flows.update(record, state=FlowState.DEPLOYED_STOPPED,
                                           deployed_revision=record.revision)

        new = await self._settled(name, "deploy", changes, work(), written_first=True)
        return TransitionResult(new, "deploy", record.state, changes)

    async def start(self, name: str) -> TransitionResult:
        """deployed_stopped -> running: every config gets enabled=true."""
        record = await self.flows.get(name)
        self._require(record, "start", FlowState.DEPLOYED_STOPPED)
        changes = ConfigChanges()

        async def work() -> FlowRecord:
            await self._sync(name, record.spec, enabled=True,
                             revision=record.deployed_revision or record.revision,
                             action="start", changes=changes, guard=record)
            return await self.flows.update(record, state=FlowState.RUNNING)

        new = await self._settled(name, "start", changes, work(), written_first=True)
        return TransitionResult(new, "start", record.state, changes)

    async def stop(self, name: str) -> TransitionResult:
        """running -> deployed_stopped: every config gets enabled=false, in flow order.

        The sources are disabled first; once their replicas have stopped, the nodes all of
        whose upstream nodes are disabled, and so on, sinks last, so what a node emits as
        it stops (a batch's last partial batch) still reaches running consumers. The waits
        together last at most :attr:`stop_timeout`; replicas still running then are listed
        in ``changes.not_stopped``.
        """
        record = await self.flows.get(name)
        self._require(record, "stop", FlowState.RUNNING)
        changes = ConfigChanges()
        new = await self._settled(name, "stop", changes, self._stop_in_waves(record, changes))
        return TransitionResult(new, "stop", record.state, changes)

    async def stop_sources(self, name: str) -> TransitionResult:
        """The first wave of :meth:`stop` alone: disable the sources (and any node nothing
        feeds) of a running flow and wait, at most :attr:`stop_timeout`, for their
        replicas to stop (those still running are in ``changes.not_stopped``). Every other
        node keeps running, so what the sources emitted can drain; :meth:`stop` finishes.

        The flow record stays ``running`` and is not written: an action that rewrites the
        configs from the record (apply, start, a settle after a lost race) enables the
        sources again. Raises RevisionConflict when the record changed meanwhile.
        """
        record = await self.flows.get(name)
        self._require(record, "stop", FlowState.RUNNING)
        changes = ConfigChanges()
        revision = record.deployed_revision or record.revision
        configs = list(translate(name, record.spec, flow_revision=revision,
                                 enabled=False).values())
        first = stop_waves(record.spec, configs)[0] if configs else []
        await self._sync(name, record.spec,
                         enabled=frozenset(c.node for c in configs) - frozenset(first),
                         revision=revision, action="stop", changes=changes, guard=record)
        changes.not_stopped = await self._wait_stopped(
            record, configs, first, time.monotonic() + self.stop_timeout)
        return TransitionResult(record, "stop-sources", record.state, changes)

    async def _stop_in_waves(self, record: FlowRecord, changes: ConfigChanges) -> FlowRecord:
        name, revision = record.name, record.deployed_revision or record.revision
        configs = list(translate(name, record.spec, flow_revision=revision,
                                 enabled=False).values())
        enabled = frozenset(c.node for c in configs)
        agents = await self.live_agents()
        deadline = time.monotonic() + self.stop_timeout
        for wave in stop_waves(record.spec, configs):
            enabled -= frozenset(wave)
            await self._sync(name, record.spec, enabled=enabled, revision=revision,
                             action="stop", agents=agents, changes=changes, guard=record)
            if not changes.not_stopped:  # after one timeout, the rest is not waited for
                changes.not_stopped = await self._wait_stopped(record, configs, wave,
                                                               deadline)
        return await self.flows.update(record, state=FlowState.DEPLOYED_STOPPED)

    async def _wait_stopped(self, record: FlowRecord, configs: list[ComponentConfig],
                            wave: list[str], deadline: float) -> list[str]:
        """Wait until no replica of ``wave`` runs or ``deadline`` passes; what still runs.
        Raises RevisionConflict as soon as the record changes (the stop lost a race)."""
        keys = [status_key(record.name, c.node, r) for c in configs if c.node in wave
                for r in range(c.replicas)]
        while True:
            await self._unchanged(record)
            # Key by key: a snapshot may miss a status or agent record being rewritten.
            statuses = {k: s for k in keys if (s := await self._get(self.status, ReplicaStatus, k))}
            agents = {s.agent for s in statuses.values() if s.state in ACTIVE and s.agent}
            live = {a for a in agents
                    if (rec := await self._get(self.agents, AgentRecord, a)) and rec.is_live()}
            running = still_running(configs, wave, statuses, live)
            if not running or time.monotonic() >= deadline:
                return running
            await asyncio.sleep(self.stop_poll)

    async def undeploy(self, name: str, force: bool = False) -> TransitionResult:
        """deployed_stopped -> not_deployed: delete every config and status key of the
        flow, and its stream. Refused while running unless ``force`` (which stops it
        first)."""
        record = await self.flows.get(name)
        previous = record.state
        changes = ConfigChanges()
        if record.state == FlowState.RUNNING and force:
            stopped = await self.stop(name)
            record, changes.not_stopped = stopped.flow, stopped.changes.not_stopped
        self._require(record, "undeploy", FlowState.DEPLOYED_STOPPED)

        async def work() -> FlowRecord:
            await self._unchanged(record)  # never delete what a winning action just wrote
            changes.merge_removed(await self._remove_all(name, "undeploy"))
            cleared = record.model_copy(update={"deployed_revision": None})
            return await self.flows.update(cleared, state=FlowState.NOT_DEPLOYED)

        new = await self._settled(name, "undeploy", changes, work())
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
        else:
            changes = ConfigChanges()

        async def work() -> None:
            # leftovers of an interrupted deploy (or a stream) must not outlive the flow
            await self._unchanged(record)
            changes.merge_removed(await self._remove_all(name, "delete"))
            await self.flows.delete(record)

        await self._settled(name, "delete", changes, work())
        return TransitionResult(record, "delete", previous, changes)

    async def rollback(self, name: str, revision: int | None = None) -> ApplyResult:
        """Apply the spec of history ``revision`` (default: the previous spec) as a new
        revision."""
        if revision is None:
            old = await self.flows.previous_spec(name, await self.flows.get(name))
        else:
            old = await self.flows.at_revision(name, revision)
        return await self.apply(name, old.spec)

    async def effective_state(self, name: str) -> EffectiveState:
        """Observe the flow from what its replicas report (not from its record)."""
        record = await self.flows.get(name)
        return observe(record, await self.list_configs(name), await self.list_status(name),
                       await self.agent_records(), datetime.now(UTC))

