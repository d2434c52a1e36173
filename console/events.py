"""Server-sent events for the console, from NATS itself (KV watches, a stream), never polling.

* :class:`ChangeHub` watches ``flowctl_flows``, ``flowctl_status`` and ``flowctl_agents``
  once for the whole server and hands every change to each connected client's queue
  (bounded: a client that does not read loses changes, is told so with a ``resync``
  event, and refetches). A change is ``{"bucket", "key", "op": "put"|"del", "value"}``.
  A replica status is sent as readers show it (:func:`flowstore.liveness.as_seen`), and
  sent again when its agent falls silent or heartbeats again (the hub looks at the
  agents it already has every :data:`SILENCE_CHECK_S`: a dead agent changes no key).
  Every :data:`~console.series.SAMPLE_S` it samples each flow's figures from those
  records into :class:`~console.series.Series` (the charts' last minutes) and sends the
  sample to the clients that follow that flow (``event: sample``, ``op: "sample"``).
* :func:`log_events` reads a flow's stored log lines (FLOWCTL_LOGS) from a point (the
  ``Last-Event-ID`` a reconnecting browser sends, which is the stream sequence, or a
  time) and follows new ones: resumable without loss while the stream keeps them.
* :func:`sse` formats one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import structlog

from console.series import SAMPLE_S, Series
from flowstore.liveness import UNKNOWN, as_seen
from flowstore.models import AgentRecord, logs_subject
from flowstore.nats import AGENTS_BUCKET, FLOWS_BUCKET, STATUS_BUCKET, open_bucket
from flowstore.store import is_delete
from flowstore.streams import LOGS_STREAM

log = structlog.get_logger("flowctl.console")

WATCHED = (FLOWS_BUCKET, STATUS_BUCKET, AGENTS_BUCKET)
#: Changes waiting for one slow client before it is told to resync.
CLIENT_QUEUE = 1000
#: A comment line this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_S = 15.0
#: How often the hub looks for agents that fell silent or came back (no NATS I/O).
SILENCE_CHECK_S = 0.25


def sse(data: Any, event: str | None = None, event_id: str | int | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def change(bucket: str, entry: Any) -> dict[str, Any]:
    deleted = is_delete(entry)
    value: Any = None
    if not deleted and entry.value:
        try:
            value = json.loads(entry.value)
        except ValueError:
            value = None  # junk someone put there: the key changed, its value is not ours
    return {"bucket": bucket, "key": entry.key, "op": "del" if deleted else "put",
            "value": value}


def concerns(item: dict[str, Any], flow: str | None) -> bool:
    """Does a change concern a client that follows ``flow`` (None: everything)?"""
    if item["op"] == "sample":  # a flow's figures, every second: for its followers only
        return item["key"] == flow
    if flow is None or item["bucket"] == AGENTS_BUCKET:
        return True
    return item["key"] == flow or item["key"].startswith(flow + ".")


class ChangeHub:
    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        #: the last value of every key of flowctl_status and flowctl_agents, as watched
        self._status: dict[str, dict[str, Any]] = {}
        self._agents: dict[str, AgentRecord] = {}
        #: status key -> whether it was last sent as ``unknown``
        self._sent_unknown: dict[str, bool] = {}
        self.series = Series()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(b), name=f"watch {b}") for b in WATCHED]
        self._tasks.append(asyncio.create_task(self._silences(), name="silences"))
        self._tasks.append(asyncio.create_task(self._samples(), name="samples"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for queue in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _watch(self, bucket: str) -> None:
        while True:
            watcher = None
            try:
                kv = await open_bucket(self.nc, bucket)
                watcher = await kv.watchall(include_history=False)
                fresh: set[str] | None = set()  # keys replayed by this watch, until caught up
                while True:
                    entry = await watcher.updates(timeout=30.0)
                    if entry is None:  # caught up: keys not replayed were deleted meanwhile
                        if fresh is not None:
                            self._forget_all_but(bucket, fresh)
                        fresh = None
                        continue
                    if fresh is not None:
                        fresh.add(entry.key)
                    self._publish(self._remember(change(bucket, entry)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an idle timeout, or NATS away: watch again
                if "Timeout" not in type(exc).__name__:
                    log.warning("console watch failed; again", bucket=bucket, error=str(exc))
                    await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def _remember(self, item: dict[str, Any]) -> dict[str, Any]:
        """Keep the last status and agent records; a status as readers show it."""
        key, value = item["key"], item["value"]
        if item["bucket"] == AGENTS_BUCKET:
            record = AgentRecord.parse(json.dumps(value))[0] if value is not None else None
            if record is not None:
                self._agents[key] = record
            elif item["op"] == "del":
                self._agents.pop(key, None)
        elif item["bucket"] == STATUS_BUCKET:
            if item["op"] == "del" or not isinstance(value, dict):
                self._status.pop(key, None)
                self._sent_unknown.pop(key, None)
            else:
                self._status[key] = value
                seen = self._seen(value, datetime.now(UTC))
                self._sent_unknown[key] = seen["state"] == UNKNOWN
                return {**item, "value": seen}
        return item

    def _forget_all_but(self, bucket: str, keys: set[str]) -> None:
        if bucket == AGENTS_BUCKET:
            self._agents = {k: v for k, v in self._agents.items() if k in keys}
        elif bucket == STATUS_BUCKET:
            self._status = {k: v for k, v in self._status.items() if k in keys}
            self._sent_unknown = {k: v for k, v in self._sent_unknown.items() if k in keys}

    def _seen(self, status: dict[str, Any], now: datetime) -> dict[str, Any]:
        return as_seen(status, self._agents.get(status.get("agent") or ""), now)

    def silence_changes(self, now: datetime) -> list[dict[str, Any]]:
        """Status records whose agent fell silent or heartbeat again since they were last
        sent, as changes to send again (and taken as sent)."""
        out = []
        for key, status in self._status.items():
            seen = self._seen(status, now)
            unknown = seen["state"] == UNKNOWN
            if self._sent_unknown.get(key) != unknown:
                self._sent_unknown[key] = unknown
                out.append({"bucket": STATUS_BUCKET, "key": key, "op": "put", "value": seen})
        return out

    async def _silences(self) -> None:
        while True:
            await asyncio.sleep(SILENCE_CHECK_S)
            for item in self.silence_changes(datetime.now(UTC)):
                self._publish(item)

    def seen_statuses(self, now: datetime) -> list[dict[str, Any]]:
        """Every replica status record as readers show it now."""
        return [self._seen(s, now) for s in self._status.values()
                if isinstance(s.get("flow"), str) and isinstance(s.get("node"), str)]

    async def _samples(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            now = datetime.now(UTC)
            added = self.series.add(now.timestamp(), self.seen_statuses(now))
            for flow, sample in added.items():
                self._publish({"bucket": "", "key": flow, "op": "sample", "value": sample})

    def _publish(self, item: dict[str, Any]) -> None:
        for queue in list(self._clients):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                queue._queue.clear()  # type: ignore[attr-defined]
                queue.put_nowait({"bucket": "", "key": "", "op": "resync", "value": None})

    async def stream(self, flow: str | None) -> AsyncIterator[str]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(queue)
        try:
            yield sse({"op": "hello"}, "hello")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    return
                if concerns(item, flow):
                    yield sse(item, "sample" if item["op"] == "sample" else "change")
        finally:
            self._clients.discard(queue)


async def log_events(nc: Any, flow: str, node: str | None, after_seq: int | None,
                     since: datetime | None, follow: bool) -> AsyncIterator[str]:
    """Stored log lines of ``flow`` (each with its stream sequence as the event id), from
    after ``after_seq`` or from ``since`` (else everything kept), then new ones."""
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    try:
        await js.stream_info(LOGS_STREAM)
    except NotFoundError:
        yield sse({"note": "no logs are kept on this server yet"}, "note")
        return
    if since is not None and since > datetime.now(since.tzinfo):
        yield sse({"note": "end of stored lines"}, "end")  # nothing kept after a future time
        if not follow:
            return
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    elif after_seq is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=after_seq + 1)
    elif since is not None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                opt_start_time=since.isoformat().replace("+00:00", "Z"))
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    sub = await js.subscribe(logs_subject(flow, node or "*", "*"), stream=LOGS_STREAM,
                             ordered_consumer=True, config=config)
    try:
        state = await sub.consumer_info()
        more = bool(state.num_pending) or bool(state.delivered and state.delivered.consumer_seq)
        told_end = False
        while True:
            if not more and not told_end:
                told_end = True
                yield sse({"note": "end of stored lines"}, "end")
                if not follow:
                    return
            try:
                msg = await sub.next_msg(timeout=KEEPALIVE_S if told_end else 10)
            except TimeoutError:
                if not told_end:
                    return  # the stored lines stopped coming: end as if read
                yield ": keepalive\n\n"
                continue
            try:
                record = json.loads(msg.data)
            except ValueError:
                record = {"line": msg.data.decode("utf-8", "replace")}
            yield sse(record, "log", msg.metadata.sequence.stream)
            more = bool(msg.metadata.num_pending)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
