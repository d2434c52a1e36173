"""Built-in sinks: ``stdout``, ``file``, ``http``, ``nats`` and ``kv``.

Each takes events on the required input port ``in`` and has no outputs; what it wrote
(printed, stored, sent) it counts with ``ctx.wrote()``, the sink's ``out``. Every event is
JSON-encoded once (msgspec). Raising from ``process`` means the event was not delivered:
the runtime counts the error (and dead-letters the event where the delivery mode allows).
Buffered sinks write out in ``flush()``, which the runtime calls every ``flush_interval``
seconds and once before ``stop()``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Component, Context, RetryableError, reject_each
from componentmanager.components.expressions import ExpressionStr, compile_expression
from componentmanager.components.sources import check_subject
from componentmanager.registry import ComponentType, Port, register

IN = (Port("in", required=True, description="the events to deliver"),)
KV_KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")

# ------------------------------------------------------------------------------- stdout


class StdoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(default="", description="Text written before each JSON line.")


class StdoutSink(Component):
    """Prints one compact JSON line per event and flushes stdout."""

    def __init__(self, config: StdoutConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._prefix = config.prefix

    async def process(self, port: str, event: Any) -> None:
        out = sys.stdout  # looked up per event: honours redirection
        out.write(self._prefix + msgspec.json.encode(event).decode() + "\n")
        out.flush()
        self.ctx.wrote()


# --------------------------------------------------------------------------------- file


class FileSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1,
        description="File to append JSON lines to (created with its parent directories).",
    )


_LINES = msgspec.json.Encoder()


class FileSink(Component):
    """Appends one JSON line per event; buffered, flushed when its input runs dry, every
    second and at stop.

    Exactly-once: each commit flushes, fsyncs and records the file's length with the
    input positions; a replica started after a crash cuts the file back to the last
    committed length (what came after is taken in again and written once more)."""

    flush_interval = 1.0
    flush_when_idle = True  # (a flush writes the buffer out, nothing else)
    exactly_once = "transactional"
    takes_raw_json = True  # lines written as they came (no decoding and encoding again)

    def __init__(self, config: FileSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FileSinkConfig = config
        self._fh: Any = None
        self._unflushed = 0

    async def start(self) -> None:
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")

    async def process(self, port: str, event: Any) -> None:
        self._fh.write(msgspec.json.encode(event) + b"\n")
        self._unflushed += 1

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        try:
            lines = _LINES.encode_lines(events)
        except Exception:
            return False  # one that cannot be written: each goes its own way
        self._fh.write(lines)
        self._unflushed += len(events)
        return True

    async def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            self.ctx.wrote(self._unflushed)
            self._unflushed = 0

    def held(self) -> int:
        return self._unflushed

    def initial_commit(self) -> Any:
        """The file as it is before this replica writes (an earlier flow's lines stay)."""
        try:
            return {"length": os.stat(self.config.path).st_size}
        except FileNotFoundError:
            return {"length": 0}

    def prepare_commit(self) -> Any:
        if self._fh is None:
            return None
        self._fh.flush()
        self.ctx.wrote(self._unflushed)
        self._unflushed = 0
        return {"length": self._fh.tell()}

    async def commit(self, prepared: Any, record: dict[str, Any]) -> None:
        if self._fh is not None:
            await asyncio.to_thread(os.fsync, self._fh.fileno())

    async def recover(self, prepared: Any) -> None:
        if not prepared or self._fh is None:
            return
        length, size = int(prepared["length"]), self._fh.seek(0, os.SEEK_END)
        if size > length:
            self._fh.truncate(length)
            self._fh.seek(length)
            self.ctx.log(f"cut {self.config.path} back to its last commit ({length:,} bytes; "
                         f"{size - length:,} bytes written after it are written again)")
        elif size < length:
            self.ctx.log(f"{self.config.path} is shorter ({size:,} bytes) than at its last "
                         f"commit ({length:,}): changed by something else")

    async def stop(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------------- http


class HttpSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", description="http:// or https:// URL to POST to.")
    batch_size: int = Field(
        default=1,
        ge=1,
        description="1: POST each event as a JSON object; more: POST JSON arrays of up to "
        "this many events.",
    )
    interval: float = Field(
        default=1.0, gt=0, description="With batch_size > 1: POST a partial batch this often."
    )
    timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for each request.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (e.g. Authorization)."
    )


#: Pauses before a failed batch is POSTed again (busy, down, unreachable).
BATCH_RETRY_PAUSES_S = (0.5, 1.0, 2.0)
#: No new attempt this long after the first one began.
BATCH_RETRY_BUDGET_S = 6.0


class HttpSink(Component):
    """POSTs JSON (per event or per batch) with urllib in a worker thread.

    A response other than 2xx, or no response within ``timeout``, raises: with
    ``batch_size`` 1 that fails the one event (the runtime retries a 429, 5xx or I/O
    error with at-least-once). A batch is POSTed again after :data:`BATCH_RETRY_PAUSES_S`
    on such errors (not after :data:`BATCH_RETRY_BUDGET_S`); when it still fails, each of
    its events is counted in ``errors`` and dead-lettered with the reason (replayable
    with ``flowctl dlq replay``). A batch stays in ``held()`` until it is sent or
    dead-lettered, so its inputs are not acked before; one batch is sent at a time.

    Every POST carries an ``Idempotency-Key``: the id of its event, or for a batch
    ``<first id>+<count>``; ids are stable across redeliveries and (exactly-once)
    restarts, so a receiver that drops repeated keys (or event ids) gets each event once.
    """

    exactly_once = "idempotent"

    def __init__(self, config: HttpSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: HttpSinkConfig = config
        self.flush_interval = config.interval if config.batch_size > 1 else None  # type: ignore[misc]
        self._pending: list[bytes] = []
        self._first_ids: list[str | None] = []  # the event id of each pending event
        self._sending = asyncio.Lock()
        self._headers = {"Content-Type": "application/json", **config.headers}

    async def process(self, port: str, event: Any) -> None:
        data = msgspec.json.encode(event)
        if self.config.batch_size == 1:
            await self._post(data, self.ctx.event_id())
            self.ctx.wrote()
            return
        self._pending.append(data)
        self._first_ids.append(self.ctx.event_id())
        if len(self._pending) >= self.config.batch_size:
            await self.flush()

    def held(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        async with self._sending:
            while self._pending:  # (process may add more meanwhile)
                batch = self._pending[: self.config.batch_size]  # held until sent or failed
                first = self._first_ids[0] if self._first_ids else None
                key = f"{first}+{len(batch)}" if first else None
                failure = await self._post_batch(b"[" + b",".join(batch) + b"]", key)
                del self._pending[: len(batch)]
                del self._first_ids[: len(batch)]
                if failure is None:
                    self.ctx.wrote(len(batch))
                else:
                    await reject_each(self.ctx, batch, f"{failure} (a batch of {len(batch)})")

    async def _post_batch(self, body: bytes, key: str | None) -> Exception | None:
        """POST ``body``, again on a failure worth it while the budget lasts; the final
        failure, or None."""
        began = time.monotonic()
        for pause in (*BATCH_RETRY_PAUSES_S, None):
            try:
                await self._post(body, key)
                return None
            except (RetryableError, ConnectionError) as exc:
                if pause is None or time.monotonic() - began + pause > BATCH_RETRY_BUDGET_S:
                    return exc
                await asyncio.sleep(pause)
            except Exception as exc:
                return exc
        return None

    async def _post(self, body: bytes, key: str | None) -> None:
        await asyncio.to_thread(self._post_sync, body, key)

    def _post_sync(self, body: bytes, key: str | None) -> None:
        headers = self._headers if key is None else {**self._headers, "Idempotency-Key": key}
        request = urllib.request.Request(
            self.config.url, data=body, method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            why = f"http sink: POST {self.config.url} answered {exc.code} {exc.reason}"
            if exc.code == 429 or exc.code >= 500:  # busy or down for now: worth a retry
                raise RetryableError(why) from None
            raise RuntimeError(why) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(f"http sink: POST {self.config.url} failed: {reason}") from None


# --------------------------------------------------------------------------------- nats


class NatsSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(description="Subject to publish each event to (no wildcards).")
    stream: str | None = Field(
        default=None,
        description="The JetStream stream that stores the subject: each event is then "
        "published with the stream's ack and a Nats-Msg-Id of its event id (required with "
        "delivery: exactly-once; the stream drops a repeat within its duplicate window).",
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_subject(value, wildcards=False)


class NatsSink(Component):
    """Publishes each event as JSON through ``ctx.nc``; with ``stream`` set, through
    JetStream (acked, with ``Nats-Msg-Id`` = the event's id)."""

    exactly_once = "idempotent"

    def __init__(self, config: NatsSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._subject = config.subject
        self._stream = config.stream

    async def process(self, port: str, event: Any) -> None:
        body = msgspec.json.encode(event)
        if self._stream is None:
            await self.ctx.nc.publish(self._subject, body)
        else:
            eid = self.ctx.event_id()
            await self.ctx.nc.jetstream().publish(
                self._subject, body, stream=self._stream,
                headers={"Nats-Msg-Id": eid} if eid else None)
        self.ctx.wrote()

    async def flush(self) -> None:
        await self.ctx.nc.flush()


# ----------------------------------------------------------------------------------- kv


class KvSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="KV bucket to write to (created if missing)."
    )
    key: ExpressionStr = Field(
        description="Expression giving each event's key, e.g. 'user.id' or "
        "'\"user.\" + str(id)'; keys may hold letters, digits and - / _ = ."
    )


class KvSink(Component):
    """Puts each event, as JSON, under the key its ``key`` expression gives.

    Exactly-once: the puts wait for the commit (the newest value per key), are kept in
    the commit record and applied once it is stored; a replica started after a crash
    applies its last commit's puts again. So a replay never puts an older value over a
    newer one: the bucket only ever gets committed values, in commit order."""

    exactly_once = "transactional"

    def __init__(self, config: KvSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: KvSinkConfig = config
        self._key = compile_expression(config.key)
        self._kv: Any = None
        self._deferred: dict[str, str] = {}  # exactly-once: key -> JSON, newest first

    async def start(self) -> None:
        js = self.ctx.nc.jetstream()
        try:
            self._kv = await js.key_value(self.config.bucket)
        except BucketNotFoundError:
            try:
                self._kv = await js.create_key_value(bucket=self.config.bucket)
            except Exception:  # another replica created it first
                self._kv = await js.key_value(self.config.bucket)

    def key_for(self, event: Any) -> str:
        value = self._key.evaluate(event)
        if value is None:
            raise ValueError(f"kv sink: key {self.config.key!r} is null for this event")
        key = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if not KV_KEY_RE.match(key) or key.startswith(".") or key.endswith("."):
            raise ValueError(f"kv sink: {key!r} is not a valid KV key (from {self.config.key!r})")
        return key

    async def process(self, port: str, event: Any) -> None:
        if getattr(self.ctx, "exactly_once", False):
            key = self.key_for(event)
            self._deferred.pop(key, None)
            self._deferred[key] = msgspec.json.encode(event).decode()
            self.ctx.wrote()
            return
        await self._kv.put(self.key_for(event), msgspec.json.encode(event))
        self.ctx.wrote()

    def prepare_commit(self) -> Any:
        return {"puts": dict(self._deferred)} if self._deferred else None

    async def committed(self, prepared: Any) -> None:
        puts = (prepared or {}).get("puts") or {}
        await self._apply(puts)
        for key, value in puts.items():
            if self._deferred.get(key) is value:  # not put anew meanwhile
                del self._deferred[key]

    async def recover(self, prepared: Any) -> None:
        await self._apply((prepared or {}).get("puts") or {})

    async def _apply(self, puts: dict[str, str]) -> None:
        items = list(puts.items())
        for start in range(0, len(items), 256):
            await asyncio.gather(*(self._kv.put(key, value.encode())
                                   for key, value in items[start:start + 256]))


_MOD = "componentmanager.components.sinks"

register(ComponentType(
    name="stdout", role="sink", config_model=StdoutConfig, inputs=IN,
    description="Print each event as one JSON line on standard output.",
    impl=f"{_MOD}:StdoutSink", extra={"fusable": True},
    docs="One compact JSON line per event, flushed at once; prefix is written before it.",
))
register(ComponentType(
    name="file", role="sink", exactly_once="transactional", config_model=FileSinkConfig, inputs=IN,
    description="Append each event as one JSON line to a file.",
    impl=f"{_MOD}:FileSink", extra={"fusable": True},
    docs="Opens path for appending at start (creating directories); writes are buffered "
         "and flushed every second and when the node stops.",
))
register(ComponentType(
    name="http", role="sink", exactly_once="idempotent", config_model=HttpSinkConfig, inputs=IN,
    description="POST events as JSON to an HTTP endpoint.",
    impl=f"{_MOD}:HttpSink",
    docs="batch_size 1 POSTs each event as an object; larger sizes POST arrays (partial "
         "batches every interval seconds). Non-2xx answers and timeouts are errors.",
))
register(ComponentType(
    name="nats", role="sink", exactly_once="idempotent", config_model=NatsSinkConfig, inputs=IN,
    description="Publish each event as JSON to a NATS subject.",
    impl=f"{_MOD}:NatsSink",
    docs="Publishes through the agent's NATS connection (core NATS, no acknowledgement).",
))
register(ComponentType(
    name="kv", role="sink", exactly_once="transactional", config_model=KvSinkConfig, inputs=IN,
    description="Store each event as JSON in a NATS KV bucket under a computed key.",
    impl=f"{_MOD}:KvSink",
    docs="key is an expression (e.g. user.id); a null or invalid key is an error for that "
         "event. The bucket is created with default settings if it does not exist.",
))
