"""Built-in sources: ``generate``, ``file`` and ``nats``; each emits on port ``out``.

The ``http`` source (a small HTTP server) is :mod:`componentmanager.components.http_source`.

A source's ``run()`` returns when it is finished (``generate`` with a ``count``, ``file``
without ``follow``) and otherwise runs until it is cancelled; ``stop()`` releases what
``start()`` opened (it is safe to call even when ``start()`` failed half-way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Component, Context
from componentmanager.dataplane.wire import FRAME_EVENTS
from componentmanager.registry import RECEIVES_UNTIL_STOPPED, ComponentType, Port, register

OUT = (Port("out", description="the events this source produces"),)
PACE_TICK_S = 0.005  # a paced generator sleeps once per this much of its schedule
YIELD_EVERY = 1000  # an unpaced generator yields to the event loop this often
ADVANCE_EVERY = 64  # a source reports its position (ctx.advance) this often
BATCH = FRAME_EVENTS  # an unpaced generator emits this many events at once (a frame's worth)


def decode_body(data: bytes) -> Any:
    """A JSON message body as an event; a body that is not JSON becomes ``{"data": text}``."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {"data": data.decode("utf-8", "replace")}


# ------------------------------------------------------------------------------ generate


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(
        default=None, ge=0, description="How many events to emit; null (the default) = forever."
    )
    rate: float | None = Field(
        default=None, gt=0, description="Events per second; null = as fast as possible."
    )
    template: dict[str, Any] = Field(
        default_factory=dict,
        description='The JSON object every event starts from. In string values (nested too) '
        '"{seq}" is replaced by the sequence number; a value that is exactly "{seq}" becomes '
        "the number itself. The field seq is always set to the sequence number (0, 1, ...).",
    )


def _constant(value: Any) -> bool:
    """A template value every event shares as it is: a number, a bool, null, or a string
    without ``{seq}`` (immutable: no event can change another's)."""
    return value is None or isinstance(value, int | float | bool) or (
        isinstance(value, str) and "{seq}" not in value)


def _template(value: Any) -> Callable[[int], Any]:
    """Compile a template value once into a function of the sequence number."""
    if isinstance(value, str):
        if value == "{seq}":
            return lambda seq: seq
        if "{seq}" in value:
            parts = value.split("{seq}")
            return lambda seq: str(seq).join(parts)
        return lambda seq: value
    if isinstance(value, dict):
        if all(_constant(v) for v in value.values()):
            fixed = dict(value)  # (the usual template: a copy is all an event needs)
            return lambda seq: fixed.copy()
        items = [(k, _template(v)) for k, v in value.items()]
        return lambda seq: {k: f(seq) for k, f in items}
    if isinstance(value, list):
        fns = [_template(v) for v in value]
        return lambda seq: [f(seq) for f in fns]
    return lambda seq: value


class GenerateSource(Component):
    """Emits ``count`` events (or forever) built from ``template``, paced to ``rate``."""

    position_fields = ("template",)  # the sequence; count ends it, rate paces it

    def __init__(self, config: GenerateConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: GenerateConfig = config
        self._build = _template(config.template)

    def make_event(self, seq: int) -> dict[str, Any]:
        event = self._build(seq)
        event["seq"] = seq
        return event

    async def run(self) -> None:
        count, rate, emit = self.config.count, self.config.rate, self.ctx.emit
        emit_batch = getattr(self.ctx, "emit_batch", None)  # a context may lack it
        loop = asyncio.get_running_loop()
        begin = loop.time()
        first = seq = int(await self.ctx.resume_position() or 0)  # resume after a restart
        try:
            while count is None or seq < count:
                if rate is not None:
                    ahead = begin + (seq - first) / rate - loop.time()
                    if ahead >= PACE_TICK_S:  # sleep per batch, never per event when fast
                        await asyncio.sleep(ahead)
                    elif ahead < -1.0:  # fell behind by over a second: no burst to catch up
                        begin = loop.time() - (seq - first) / rate
                elif emit_batch is not None:
                    if seq and seq % YIELD_EVERY < BATCH:
                        await asyncio.sleep(0)
                    n = BATCH if count is None else min(BATCH, count - seq)
                    events = [self.make_event(s) for s in range(seq, seq + n)]
                    if n > 1 and await emit_batch("out", events):
                        seq += n
                    else:
                        for event in events:  # too large to go together: one by one
                            await emit("out", event)
                            seq += 1
                    self.ctx.advance(seq)
                    continue
                elif seq and seq % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                await emit("out", self.make_event(seq))
                seq += 1
                if seq % ADVANCE_EVERY == 0 or (rate is not None and rate < ADVANCE_EVERY):
                    self.ctx.advance(seq)  # the next sequence: where a restart resumes
        finally:  # also when stopped: a stopped source resumes exactly here
            self.ctx.advance(seq)


# ---------------------------------------------------------------------------------- file


class FileSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="The file to read.")
    format: Literal["lines", "jsonl"] | None = Field(
        default=None,
        description='lines: each line becomes {"line": text}; jsonl: each line is one JSON '
        "event (blank lines are skipped; a line that is not JSON is an error: counted, "
        "dead-lettered with the reason). Default: jsonl for .jsonl and .ndjson files, "
        "lines otherwise.",
    )

    def line_format(self) -> str:
        if self.format is not None:
            return self.format
        return "jsonl" if self.path.lower().endswith((".jsonl", ".ndjson")) else "lines"
    follow: bool = Field(
        default=False,
        description="Keep reading lines appended later (like tail -f; survives truncation "
        "and rotation) instead of finishing at the end of the file.",
    )
    poll_interval: float = Field(
        default=0.25, gt=0, description="Seconds between checks for new data when following."
    )


class FileSource(Component):
    """Reads a text file line by line (blocking reads happen in a worker thread)."""

    CHUNK = 1 << 16
    position_fields = ("path",)

    def __init__(self, config: FileSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: FileSourceConfig = config
        self._fh: Any = None
        self.lineno = 0
        self._format = config.line_format()

    async def start(self) -> None:
        try:
            self._fh = open(self.config.path, "rb")  # noqa: SIM115 - closed in stop()
        except FileNotFoundError:
            raise FileNotFoundError(f"file source: {self.config.path} does not exist") from None

    async def _resume(self) -> int:
        """Seek to the byte offset a restart resumes at (0: a fresh start, or the file
        is now shorter than that: truncated or replaced)."""
        offset = await self.ctx.resume_position()
        size = os.fstat(self._fh.fileno()).st_size
        if not isinstance(offset, int) or offset <= 0 or offset > size:
            return 0
        self._fh.seek(offset)
        return offset

    async def run(self) -> None:
        offset = await self._resume()  # of the first byte not emitted yet
        self._offset = offset
        try:
            await self._read_from(offset)
        finally:  # also when stopped: a stopped source resumes exactly here
            self.ctx.advance(self._offset)

    async def _read_from(self, offset: int) -> None:
        pending = b""
        while True:
            chunk = await asyncio.to_thread(self._fh.read, self.CHUNK)
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for i, line in enumerate(lines, 1):
                    await self._emit_line(line)
                    offset = self._offset = offset + len(line) + 1
                    if i % ADVANCE_EVERY == 0:
                        self.ctx.advance(offset)
                self.ctx.advance(offset)
                continue
            if not self.config.follow:
                if pending:
                    await self._emit_line(pending)
                    self._offset = offset + len(pending)
                return
            if self._replaced():
                if pending:
                    await self._emit_line(pending)
                    pending = b""
                self._fh.close()
                self._fh = open(self.config.path, "rb")  # noqa: SIM115
                offset = self._offset = 0
                self.ctx.advance(offset)
                continue
            await asyncio.sleep(self.config.poll_interval)

    def _replaced(self) -> bool:
        """True when the path now names another file (rotation) or was truncated."""
        try:
            st = os.stat(self.config.path)
        except FileNotFoundError:
            return False  # rotated away and not recreated yet: keep waiting
        cur = os.fstat(self._fh.fileno())
        return (st.st_ino, st.st_dev) != (cur.st_ino, cur.st_dev) or st.st_size < self._fh.tell()

    async def _emit_line(self, raw: bytes) -> None:
        self.lineno += 1
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        if self._format == "lines":
            await self.ctx.emit("out", {"line": text})
            return
        if not text.strip():
            return
        try:
            event = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            self.ctx.log("skipping a line that is not JSON", line=self.lineno, error=str(exc))
            await self.ctx.reject(raw, f"{self.config.path}:{self.lineno} is not JSON ({exc})")
            return
        await self.ctx.emit("out", event)

    async def stop(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------------------- nats


def check_subject(subject: str, wildcards: bool) -> str:
    """Validate a NATS subject (``wildcards``: ``*`` and a final ``>`` allowed)."""
    tokens = subject.split(".")
    if not subject or any(not t or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"invalid NATS subject {subject!r}: empty token or whitespace")
    for i, token in enumerate(tokens):
        wild = token in ("*", ">")
        if wild and not wildcards:
            raise ValueError(f"wildcards are not allowed in subject {subject!r}")
        if (token == ">" and i != len(tokens) - 1) or (not wild and ("*" in token or ">" in token)):
            raise ValueError(f"invalid wildcard in subject {subject!r}")
    return subject


class NatsSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(description="Subject to subscribe to; wildcards * and > are allowed.")
    queue: str | None = Field(
        default=None,
        description="Queue group: replicas sharing it split the messages. Without one every "
        "replica receives every message.",
    )

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_subject(value, wildcards=True)


class NatsSource(Component):
    """Subscribes through ``ctx.nc``; JSON bodies are emitted decoded, others as ``{"data"}``."""

    position_fields = ("subject",)

    def __init__(self, config: NatsSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: NatsSourceConfig = config
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.ctx.nc.subscribe(self.config.subject, queue=self.config.queue or "")
        count_drops_of = getattr(self.ctx, "count_drops_of", None)
        if count_drops_of is not None:  # messages its full queue refuses: ``dropped``
            count_drops_of(self._sub)

    async def run(self) -> None:
        async for msg in self._sub.messages:
            await self.ctx.emit("out", decode_body(msg.data))

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


_MOD = "componentmanager.components.sources"

register(ComponentType(
    name="generate", role="source", config_model=GenerateConfig, outputs=OUT,
    description="Generate events from a template, optionally paced and counted.",
    impl=f"{_MOD}:GenerateSource", extra={"fusable": True},
    runs_forever=lambda c: None if c.count is not None else "it has no count: it emits "
    "events forever",
    docs="Emits {**template, seq: n} for n = 0, 1, ...; count: null runs forever. "
         '"{seq}" inside template strings is replaced by n. rate paces to events/s '
         "(sleeping per batch, not per event). Finishes after count events.",
))
register(ComponentType(
    name="file", role="source", config_model=FileSourceConfig, outputs=OUT,
    description="Read a file as text lines or JSON lines, optionally following it.",
    impl=f"{_MOD}:FileSource", extra={"fusable": True},
    runs_forever=lambda c: "follow is on: it waits for more lines" if c.follow else None,
    docs='format lines emits {"line": text}; jsonl emits each decoded line. Without follow '
         "the source finishes at the end of the file; with follow it waits for more.",
))
register(ComponentType(
    name="nats", role="source", config_model=NatsSourceConfig, outputs=OUT,
    description="Subscribe to a NATS subject and emit each message.",
    impl=f"{_MOD}:NatsSource",
    runs_forever=RECEIVES_UNTIL_STOPPED,
    docs='JSON bodies are emitted decoded; other bodies as {"data": text}. Set queue to '
         "split messages between replicas.",
))
