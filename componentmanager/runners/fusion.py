"""Fused chains at run time: mixin of
:class:`~componentmanager.runners.inprocess.InProcessReplica` (the plan is
:mod:`flowengine.plan`).

Every node of a chain is still a replica of its own on the agent (its status, counters,
logs and dead letters are its own), but only the chain's first replica (the *root*)
takes the chain's inputs: what a node emits on its ``fused_port`` is handed to the next
node's replica in memory (:meth:`FusedFeed.take_fed`), and what the chain emits on any
other port goes out through the root's outbox and publisher. So the root acks an input
(at-least-once) only once the whole chain's outputs for it are stored, exactly as it
would its own; outputs are counted in ``out`` of the node that emitted them.

A node fed in memory keeps its own inputs open: nothing arrives there while it is fused
but a dead letter sent back by ``flowctl dlq replay`` (or events published before the
chain was fused); it takes them as any replica does, and feeds the rest of the chain as
their root. A failing event is retried (at-least-once, when a retry may help) and
dead-lettered as the failing node's, with the event it received; a dead letter that
cannot be stored has the root's input delivered again.

The agent stops a chain head first (``agent.reconcile.stop_groups``), so a root never waits on a
stopped peer; a peer that restarts alone is waited for (its inputs are not acked
meanwhile).

A chain may begin with a source and end with a sink. A source root's checkpoint counts
the chain's published outputs as its emitted events (a position is stored once they
are). A sink in a chain buffers what it is fed; the root flushes it
(:meth:`FusedFeed._flush_chain`) before it acks an input or stores a source position, and
when the sink was replaced meanwhile (it stopped or failed with events in its buffer) or
an event could not be handed on, the root does not go past them: a processor root's
inputs are delivered again, a source root's replica fails and resumes from its last
stored position (at-least-once: repeats, never losses).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from componentmanager.dataplane import encode

#: How often a root waiting for the next replica of its chain looks whether it stops
#: (the replica's arrival wakes it at once).
PEER_POLL_S = 0.2


@dataclass(frozen=True)
class Feeding:
    """The root an event passed in memory came from, and the frame it is in: its header
    (as the node that fed it would have published it) and its index there."""

    root: Any  # the root InProcessReplica
    headers: dict[str, str] | None
    index: int


#: Set while a root's replica feeds its chain (within the task handling the input).
FEEDING: ContextVar[Feeding | None] = ContextVar("flowctl_feeding", default=None)


class FusedPeers:
    """The replicas of this agent fed in memory, by replica key (kept on the host)."""

    def __init__(self) -> None:
        self._peers: dict[str, Any] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    def add(self, replica: Any) -> None:
        self._peers[replica.key] = replica
        if (arrived := self._waiting.pop(replica.key, None)) is not None:
            arrived.set()

    async def arrival(self, key: str, within: float) -> None:
        """Until replica ``key`` is added (at most ``within`` seconds)."""
        arrived = self._waiting.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), within)

    def remove(self, replica: Any) -> None:
        if self._peers.get(replica.key) is replica:
            del self._peers[replica.key]

    def get(self, key: str) -> Any:
        """The replica ``key`` while it can be fed (started, not stopping), else None."""
        peer = self._peers.get(key)
        ready = peer is not None and peer.component is not None and not peer._stopping
        return peer if ready else None


class FusedFeed:
    """Feeding the next node of a chain, and being fed (see the module doc)."""

    # provided by the replica
    cfg: Any
    key: str
    host: Any
    nc: Any
    counters: Any
    component: Any
    _acked: bool
    _stopping: bool
    _outbox: Any
    _port_of: dict[str, str]
    _current_event: tuple[Any, int] | None
    _failures: int
    _peer: Any = None
    #: a root: the sinks of its chain it fed since its last flush of them (key -> the
    #: component fed), and whether an event of a source root was not handed on
    _fed_sinks: dict[str, Any]
    _chain_lost = False
    #: subject -> (replica, port): outputs of fed nodes sent through this root's outbox
    _fed_outputs: dict[str, tuple[Any, str]]

    # -- feeding ---------------------------------------------------------------------
    async def _next_peer(self) -> Any:
        """The next node's replica on this agent (waited for while it (re)starts); None
        when this replica stops meanwhile."""
        peer = self._peer
        if peer is not None and peer.component is not None and not peer._stopping:
            return peer
        key = f"{self.cfg.flow}.{self.cfg.fused_next}.{self.key.rsplit('.', 1)[1]}"
        while (peer := self.host.fused.get(key)) is None:
            if self._stopping or self.component is None:
                return None
            await self.host.fused.arrival(key, PEER_POLL_S)
        self._peer = peer
        return peer

    async def _feed(self, events: list[Any], batch: bool) -> None:
        """Hand what was emitted on the fused port to the next node, in memory, numbered
        as this node would have published it (the ids its dead letters and logs name)."""
        peer = await self._next_peer()
        if peer is None:  # stopping: the input is taken again (at-most-once: lost)
            self._not_fed(len(events))
            return
        port = self.cfg.fused_port
        if self.host.taps.watched(self.cfg.flow, self.cfg.node, port):  # (before the
            await self.host.taps.copy(self.nc, self.cfg.flow, self.cfg.node, port, events)
        feeding = FEEDING.get()  # next node may change the events in place)
        root = self if feeding is None else feeding.root
        if peer.cfg.role == "sink":
            root._fed_sinks[peer.key] = peer.component
        fed = Feeding(root, self._outbox.ids.header(len(events)), 0)
        token = FEEDING.set(fed)
        try:
            if batch:
                owned = getattr(self.component, "emits_owned", False)
                await peer.take_fed_batch(events, fed, owned)
            else:
                await peer.take_fed(events[0], fed)
        finally:
            FEEDING.reset(token)
        counters = self.counters
        counters.out += len(events)
        counters.out_ports[port] = counters.out_ports.get(port, 0) + len(events)

    def _not_fed(self, count: int) -> None:
        if self._acked:
            self._redo()
        else:
            self.counters.drop(count, "replica stopped")

    def _redo(self) -> None:
        """A root: what it is handling did not all get through its chain. Its input is
        delivered again (see _taken_or_again); a source's position stops short of it."""
        self._failures += 1
        if self.cfg.role == "source":
            self._chain_lost = True

    def _root_now(self) -> Any:
        """The replica whose input (or source read) is being handled: the root while fed."""
        feeding = FEEDING.get()
        return self if feeding is None else feeding.root

    async def _flush_chain(self) -> bool:
        """A root: flush the sinks of its chain it fed since the last call; whether
        everything it handed on is written (False: a sink's flush failed, a sink was
        replaced meanwhile with what it buffered, or an event was not handed on)."""
        fed, self._fed_sinks = self._fed_sinks, {}
        whole, self._chain_lost = not self._chain_lost, False
        for key, comp in fed.items():
            peer = self.host.fused.get(key)
            if peer is None or peer.component is not comp:  # stopped or restarted:
                whole = whole and not comp.held()  # its buffer was written (or not)
                continue
            if comp.held():
                try:
                    await comp.flush()
                except Exception as exc:
                    peer.counters.errors += 1
                    peer.last_error = f"flush: {exc}"
                    whole = False
        return whole

    def _outbox_now(self) -> Any:
        """Where an output goes: this replica's outbox, or the root's while fed."""
        feeding = FEEDING.get()
        if feeding is None or feeding.root is self:
            return self._outbox
        return feeding.root._outbox

    def _sent_by(self, subject: str) -> tuple[Any, str | None]:
        """The replica whose output ``subject`` is, and its port (for the counters); no
        port for a copy not counted (a keyed reader's partition beside the counted one)."""
        port = self._port_of.get(subject)
        if port is not None:
            return self, port
        return self._fed_outputs.get(subject, (self, None))

    def _sends_through(self, subject: str, port: str) -> None:
        """While fed: ``subject`` goes out through the root's outbox, counted here."""
        feeding = FEEDING.get()
        if feeding is None or feeding.root is self:
            return
        root = feeding.root
        if root._fed_outputs.get(subject, (None,))[0] is not self:
            root._fed_outputs[subject] = (self, port)
            if port in self.cfg.frame_ports:
                root._outbox.also_framed(subject)

    # -- being fed -------------------------------------------------------------------
    @property
    def _fed_port(self) -> str:
        return next(iter(self.cfg.inputs), "in")

    async def take_fed(self, event: Any, feeding: Feeding) -> None:
        """One event from the previous node of the chain."""
        comp, port, counters = self.component, self._fed_port, self.counters
        if comp is None:  # stopped meanwhile (mid-frame): the root's input is taken again
            feeding.root._not_fed(1)
            return
        counters.in_ += 1
        counters.in_ports[port] = counters.in_ports.get(port, 0) + 1
        began = perf_counter()
        self._current_event = (feeding.headers, feeding.index)
        try:
            await comp.process(port, event)
        except Exception as exc:
            await self._fed_failed(comp, port, event, exc, feeding)
        counters.latency.observe(perf_counter() - began, 1)

    async def take_fed_batch(self, events: list[Any], feeding: Feeding,
                             owned: bool = False) -> None:
        """Events from the previous node, at once when the component takes a batch,
        else one by one. ``owned``: the previous node holds nothing of them (it
        ``emits_owned``): this one's component sees ``batch_owned``."""
        comp, port, counters = self.component, self._fed_port, self.counters
        began = perf_counter()
        self.batch_owned = owned  # (read by the component before its first await)
        try:
            taken = await comp.process_batch(port, events)
        except Exception:  # each event its own way (counted, dead-lettered one by one)
            taken = False
        finally:
            self.batch_owned = False
        took = len(events) if taken is True else int(taken or 0)  # (n: the first n)
        if took:
            counters.in_ += took
            counters.in_ports[port] = counters.in_ports.get(port, 0) + took
            counters.latency.observe(perf_counter() - began, took)
        for index in range(took, len(events)):
            await self.take_fed(events[index], Feeding(feeding.root, feeding.headers, index))

    async def _fed_failed(self, comp: Any, port: str, event: Any, exc: Exception,
                          feeding: Feeding) -> None:
        """Retried in place when that may help (at-least-once), then dead-lettered as
        this node's; a dead letter not stored has the root's input delivered again."""
        from componentmanager.runners.delivery import retry_in_place

        last = await retry_in_place(
            comp, port, event, exc,
            going_on=lambda _: self._acked and self.component is not None)
        if last is None:
            return
        stored = await self._event_failed(port, feeding.headers, feeding.index,
                                          encode(event), last)
        if not stored and self._acked:
            feeding.root._redo()
