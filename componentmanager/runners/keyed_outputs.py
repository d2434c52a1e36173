"""Partitioning at the producer (mixin of
:class:`~componentmanager.runners.inprocess.InProcessReplica`): what an in-process replica
emits on a port with keyed readers (``ComponentConfig.keyed_outputs``, decided by
:func:`flowengine.translate.producer_partitions`).

Each event goes to its partition's subject of every keyed reader (the reader's
``partition_by`` evaluated here, once per event), and to the port's own subject when
some reader reads it whole; frames are split by partition (a partition's share of one
fills its pending frame before starting the next: :func:`fill_frames`). Each replica of
the reader then reads, and decodes, only its own partition. ``out`` counts each event
once (on the port's own subject, else on its first keyed reader's partitions).
"""

from __future__ import annotations

from typing import Any

from componentmanager.components.expressions import compile_expression
from componentmanager.dataplane import EventIds, Outbox
from componentmanager.dataplane.partition import HDR_NO_KEY, Route, split_by_subject
from componentmanager.dataplane.wire import encode, encode_lines
from flowstore.models import ComponentConfig


def routes_of(cfg: ComponentConfig) -> dict[str, list[Route]]:
    """Per output port, its keyed readers' routes."""
    return {port: [Route(compile_expression(r.key).evaluate, r.partitions, r.subjects)
                   for r in readers]
            for port, readers in cfg.keyed_outputs.items() if readers}


def framed_subjects(cfg: ComponentConfig, routes: dict[str, list[Route]]) -> set[str]:
    """The subjects whose readers all take frames: the ports' of ``frame_ports`` and
    every partition (its reader runs in-process)."""
    return ({cfg.outputs[p] for p in cfg.frame_ports if p in cfg.outputs}
            | {s for port_routes in routes.values() for route in port_routes
               for s in route.subjects})


def counted_subjects(cfg: ComponentConfig, routes: dict[str, list[Route]]) -> dict[str, str]:
    """subject -> port, for the subjects whose messages count in ``out`` (each event
    once: the port's own subject, else its first keyed reader's partitions)."""
    counted = {subject: port for port, subject in cfg.outputs.items()
               if port not in cfg.partitioned_only}
    for port in cfg.partitioned_only:
        if routes.get(port):
            counted.update(dict.fromkeys(routes[port][0].subjects, port))
    return counted


def fill_frames(group: list[Any], room: int) -> list[list[Any]]:
    """A partition's share of a frame, cut where its pending frame is full (``room``
    events left), so partition frames fill up to :data:`~.wire.FRAME_EVENTS` instead of
    each holding a whole number of shares."""
    if 0 < room < len(group):
        return [group[:room], group[room:]]
    return [group]


class KeyedOutputs:
    """Sends a port's events to their readers' partitions (see the module doc)."""

    cfg: Any
    counters: Any
    _outbox: Outbox
    _routes: dict[str, list[Route]]
    _port_of: dict[str, str]  # the subjects counted in ``out``, and their ports

    def _open_outbox(self, cfg: ComponentConfig, ids: EventIds) -> None:
        self._routes = routes_of(cfg)
        partitions = frozenset(s for port_routes in self._routes.values()
                               for route in port_routes for s in route.subjects)
        self._outbox = Outbox(ids, self._send, framed_subjects(cfg, self._routes), partitions)
        self._port_of = counted_subjects(cfg, self._routes)

    async def _send(self, subject: str, body: bytes, headers: dict[str, str],
                    count: int) -> None:  # the replica's
        raise NotImplementedError

    def _outbox_now(self) -> Any:  # FusedFeed's (earlier in the MRO): a node with keyed
        raise NotImplementedError  # readers is never fed (flowengine.plan), this is its own

    async def _put_event(self, port: str, subject: str, body: bytes, event: Any) -> None:
        routes = self._routes.get(port)
        if routes is None:
            await self._outbox_now().put(subject, body)
            return
        for route in routes:
            target, why = route.place(event)
            if why is None:
                await self._outbox.put(target, body)
            else:
                await self._outbox.put_alone(target, body, {HDR_NO_KEY: why[:1000]})
        if port not in self.cfg.partitioned_only:
            await self._outbox.put(subject, body)

    async def _put_events(self, port: str, subject: str, events: list[Any],
                          lines: bytes) -> None:
        """Events encoded as ``lines`` (one frame's worth), each to its partitions."""
        routes = self._routes.get(port)
        if routes is None:
            await self._outbox_now().put_lines(subject, lines, len(events))
            return
        for (target, why), group in split_by_subject(routes, events).items():
            if why is not None:
                for event in group:
                    await self._outbox.put_alone(target, encode(event), {HDR_NO_KEY: why[:1000]})
                continue
            if len(group) == len(events):
                await self._outbox.put_lines(target, lines, len(group))
                continue
            for part in fill_frames(group, self._outbox.room(target)):
                await self._outbox.put_lines(target, encode_lines(part), len(part))
        if port not in self.cfg.partitioned_only:
            await self._outbox.put_lines(subject, lines, len(events))
