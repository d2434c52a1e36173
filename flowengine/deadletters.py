"""Dead letters: read, replay into a node's input, purge (``flowctl dlq``).

Every event a node fails is dead-lettered on ``flowctl.<flow>.<node>.dlq`` with the reason
(header ``Flowctl-Error``) and its event id (header ``Flowctl``). The FLOWCTL_DLQ stream
keeps them, for every flow and both delivery modes, for 7 days or up to 256 MiB (oldest
dropped first); undeploy and delete leave them there, so they can be replayed after a fix.

Replaying one publishes the event again on the subject the node reads (its input port's
first subject, an upstream node's output) with ``Flowctl-Replay-To: <node>``: the node
takes it in (counted in ``in`` and ``replayed``), every other reader of that subject lets
it pass. Once the publish is confirmed (stored in the flow's stream, at-least-once; sent,
at-most-once) the dead letter is deleted, so a replay interrupted halfway can simply be
run again. A replayed message has a new id (``replay.<dlq sequence>-1``; the original in
``Flowctl-Replay-Of``) and ``Nats-Msg-Id`` ``dlq-<sequence>``: replaying the same dead
letter twice within the stream's duplicate window stores it once.

:func:`replay_target` and :func:`replay_headers` decide; the rest is thin I/O.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from nats.js.errors import NotFoundError

from flowstore.models import (
    HDR_ERROR,
    HDR_META,
    HDR_REPLAY_OF,
    HDR_REPLAY_TO,
    ComponentConfig,
    dlq_subject,
    own_subject,
)
from flowstore.streams import DLQ_STREAM, dead_letter_counts


class ReplayRefused(Exception):
    """The dead letters cannot be replayed now; the message says why and what to do."""


@dataclass
class DeadLetter:
    seq: int
    node: str
    time: str
    error: str
    event_id: str | None
    data: bytes

    def to_dict(self) -> dict[str, Any]:
        import json

        try:
            event: Any = json.loads(self.data)
        except ValueError:
            event = self.data.decode("utf-8", "replace")
        return {"seq": self.seq, "node": self.node, "time": self.time, "error": self.error,
                "event_id": self.event_id, "event": event}


def replay_target(cfg: ComponentConfig, port: str | None) -> tuple[str, str]:
    """(input port, subject) a node's dead letters go back to; raises ReplayRefused. An
    input partitioned at its producer: partition 0's subject (replica 0 takes them)."""
    inputs = {p: subjects for p, subjects in cfg.inputs.items() if subjects}
    if not inputs:
        raise ReplayRefused(f"node '{cfg.node}' has no input (a source): its dead letters "
                            "can be read (`flowctl dlq show`) but not replayed")
    if port is None:
        port = next(iter(inputs))
    if port not in inputs:
        raise ReplayRefused(f"node '{cfg.node}' has no input port '{port}' (it has: "
                            f"{', '.join(inputs)})")
    return port, own_subject(inputs[port][0], 0)


def replay_headers(letter: DeadLetter, node: str, now: float) -> dict[str, str]:
    headers = {HDR_META: f"replay.{letter.seq}-1 1 {now:.6f}", HDR_REPLAY_TO: node,
               "Nats-Msg-Id": f"dlq-{letter.seq}"}
    if letter.event_id:
        headers[HDR_REPLAY_OF] = letter.event_id
    return headers


async def read(nc: Any, flow: str, node: str, limit: int | None = None
               ) -> AsyncIterator[DeadLetter]:
    """The node's dead letters, oldest first (at most ``limit``)."""
    js, subject, seq, found = nc.jetstream(), dlq_subject(flow, node), 1, 0
    while limit is None or found < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        headers = msg.headers or {}
        meta = headers.get(HDR_META, "")
        stamp = msg.time.astimezone(UTC).isoformat().replace("+00:00", "Z") if msg.time else ""
        yield DeadLetter(seq=int(msg.seq), node=node, time=stamp,
                         error=headers.get(HDR_ERROR, ""),
                         event_id=meta.split(" ", 1)[0] or None, data=msg.data or b"")
        found += 1
        seq = int(msg.seq) + 1


async def replay(nc: Any, flow: str, cfg: ComponentConfig, acked: bool, port: str | None,
                 limit: int | None = None) -> tuple[int, str]:
    """Re-inject the node's dead letters into its input; (how many, subject)."""
    port, subject = replay_target(cfg, port)
    js, done = nc.jetstream(), 0
    async for letter in read(nc, flow, cfg.node, limit):
        headers = replay_headers(letter, cfg.node, time.time())
        if acked:
            await js.publish(subject, letter.data, headers=headers)
        else:
            await nc.publish(subject, letter.data, headers=headers)
            await nc.flush()
        await js.delete_msg(DLQ_STREAM, letter.seq)
        done += 1
    return done, subject


@dataclass
class Replayed:
    """What :func:`replay_node` did: how many dead letters went back into ``subject``;
    ``waiting`` when the flow is stopped (they wait in its stream until it starts)."""

    flow: str
    node: str
    replayed: int
    subject: str
    waiting: bool

    def to_dict(self) -> dict[str, Any]:
        return {"flow": self.flow, "node": self.node, "replayed": self.replayed,
                "subject": self.subject}


def replay_refusal(name: str, state: str, delivery: str) -> str | None:
    """Why a flow in desired ``state`` cannot take replayed dead letters now, or None."""
    if state == "not_deployed":
        return (f"flow/{name} is not deployed: deploy it first (`flowctl deploy {name}`), "
                "then replay")
    if delivery == "at-most-once" and state != "running":
        return (f"flow/{name} is at-most-once and not running: replayed events would "
                f"reach nobody; start it first (`flowctl start {name}`)")
    return None


async def replay_node(engine: Any, name: str, node: str, port: str | None = None,
                      limit: int | None = None) -> Replayed:
    """Replay a node's dead letters into its input after the checks ``flowctl dlq
    replay`` and the console share; raises :class:`ReplayRefused` (and FlowNotFound)."""
    from flowstore.models import config_key

    record = await engine.flows.get(name)
    refused = replay_refusal(name, record.state.value, record.spec.delivery)
    if refused:
        raise ReplayRefused(refused)
    configs = {c.key: c for c in await engine.list_configs(name)}
    cfg = configs.get(config_key(name, node))
    if cfg is None:
        raise ReplayRefused(f"flow/{name} has no node '{node}' deployed (nodes: "
                            f"{', '.join(sorted(c.node for c in configs.values())) or 'none'})")
    done, subject = await replay(engine.nc, name, cfg, record.spec.delivery != "at-most-once",
                                 port, limit)
    return Replayed(name, node, done, subject, record.state.value != "running")


async def purge(nc: Any, flow: str, node: str | None) -> int:
    """Remove the dead letters of one node, or of every node of the flow; how many."""
    before = await dead_letter_counts(nc, flow)
    nodes = [node] if node else list(before)
    js = nc.jetstream()
    for one in nodes:
        if before.get(one):
            await js.purge_stream(DLQ_STREAM, subject=dlq_subject(flow, one))
    return sum(before.get(one, 0) for one in nodes)
