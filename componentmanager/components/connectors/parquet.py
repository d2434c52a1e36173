"""The ``parquet`` sink: rolling Parquet files in a directory (pyarrow).

Config: ``path`` (a directory, created), ``rows`` (a file is complete after this many
rows) and/or ``seconds`` (... this long after its first row), optional ``columns`` and
``compression`` (snappy by default).

Columns. ``columns`` maps a column name to a type (``string``, ``int64``/``int``,
``int32``, ``float64``/``float``/``double``, ``float32``, ``bool``, ``timestamp``
(microseconds, UTC, from ISO 8601 text or epoch seconds), ``date`` (ISO text or days),
``json`` (any value as JSON text)) for the event field of that name, or to an expression
(``seq * 2``, ``user.name``) whose type comes from its first non-null value. Without
``columns`` the schema is the first events': the top-level fields of the first event,
each typed by its first non-null value among the first input message's events (a field
null throughout is ``string``; objects and lists are ``json``). The schema is then fixed
for the node (exactly-once: it is kept in the commit, so a restart keeps it). A later
event's fields outside the schema are left out (said once per field name in the node's
log); a missing field is null; a value that does not fit its column's type (``"abc"``
for ``int64``) fails that event alone (counted in ``errors``, dead-lettered with the
reason where the delivery mode allows).

Files (journals, conversion, names):
:mod:`~componentmanager.components.connectors.parquet_files`; column types:
:mod:`~componentmanager.components.connectors.parquet_types`.

At-least-once and at-most-once (``ctx.exactly_once`` False): rows go to the journal;
``flush()`` (every second, and before stop) hands them to the OS, after which
``held()`` is 0 and their inputs are acked. A journal full (``rows``) or old
(``seconds``) is converted and renamed into place at once, and the last one at
``stop()``. A replica killed leaves its journal: the next start of that replica
converts it (and deletes one whose file is already in place), so acked rows are never
lost; rows whose inputs were not yet acked are written again (at-least-once).

Exactly-once (``exactly_once = "transactional"``): ``held()`` is 0, a row is in the
journal as soon as it is taken and each commit keeps the journal's state. The commit and
the recovery, with their crash points:
:mod:`~componentmanager.components.connectors.parquet_commit`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.component import Component, Context, EventError
from componentmanager.components.connectors.parquet_commit import ExactlyOnceCommits
from componentmanager.components.connectors.parquet_files import (
    Journal,
    Names,
    fsync_path,
    write_parquet,
)
from componentmanager.components.connectors.parquet_types import COERCE, infer_type, type_name
from componentmanager.components.expressions import compile_expression
from componentmanager.registry import ComponentType, Port, register

IN = (Port("in", required=True, description="the events to write as rows"),)


# ----------------------------------------------------------------------------- config


class ParquetSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="Directory the Parquet files go to "
                      "(created with its parents).")
    rows: int | None = Field(default=None, ge=1,
                             description="A file is complete after this many rows.")
    seconds: float | None = Field(default=None, gt=0, description="A file is complete "
                                  "this many seconds after its first row.")
    columns: dict[str, str] | None = Field(
        default=None,
        description="Column name -> a type (string, int64, int32, float64, float32, bool, "
        "timestamp, date, json) for the event field of that name, or an expression "
        "(e.g. 'seq * 2'). Default: the fields of the first events, typed by their values.")
    compression: Literal["snappy", "zstd", "gzip", "lz4", "brotli", "none"] = Field(
        default="snappy", description="Parquet compression codec.")

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if not value:
                raise ValueError("columns is empty: leave it out for the events' fields")
            for name, spec in value.items():
                if type_name(spec) is None:
                    try:
                        compile_expression(spec)
                    except Exception as exc:
                        raise ValueError(f"column {name!r}: {spec!r} is neither a type "
                                         f"({', '.join(COERCE)}) nor an expression: "
                                         f"{exc}") from None
        return value

    @model_validator(mode="after")
    def _rolls(self) -> ParquetSinkConfig:
        if self.rows is None and self.seconds is None:
            raise ValueError("set rows, seconds or both: when a file is complete")
        return self



_LINES = msgspec.json.Encoder()


class ParquetSink(ExactlyOnceCommits, Component):
    """Rolling Parquet files, each renamed into place once complete (see the module doc)."""

    flush_interval = 1.0
    exactly_once = "transactional"

    def __init__(self, config: ParquetSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: ParquetSinkConfig = config
        self._names = Names(Path(config.path), ctx.node, ctx.replica)
        self._eo = bool(getattr(ctx, "exactly_once", False))
        self._started = False
        self._journal: Journal | None = None
        self._next = 1
        self._complete: list[int] = []  # exactly-once: rolled journals awaiting a commit
        self._unflushed = 0
        self._run = uuid.uuid4().hex[:12]
        self._serial = 0  # exactly-once: the serial of the last commit prepared
        self._committed: tuple[int, int] | None = None  # (journal, length) at the last commit
        self._committed_serial: int | None = None
        self._schema: list[list[str]] | None = None  # [[column, type]]
        self._plan: list[tuple[str, str, Any, Any]] = []  # column, type, getter, coerce
        self._fields: set[str] | None = None  # inferred schema: the event fields taken
        self._left_out: set[str] = set()

    # ---------------------------------------------------------------------- schema

    def _set_schema(self, schema: list[list[str]]) -> None:
        specs = self.config.columns or {}
        plan = []
        for name, kind in schema:
            spec = specs.get(name)
            if spec is not None and type_name(spec) is None:
                getter = compile_expression(spec).evaluate
            else:
                getter = (lambda n: lambda event: event.get(n))(name)
            plan.append((name, kind, getter, COERCE[kind]))
        self._schema, self._plan = [list(c) for c in schema], plan
        self._fields = None if self.config.columns else {name for name, _ in schema}

    def _infer(self, events: list[Any]) -> None:
        first = next((e for e in events if isinstance(e, dict)), None)
        if first is None:
            return
        schema: list[list[str]] = []
        if self.config.columns:
            for name, spec in self.config.columns.items():
                kind = type_name(spec)
                if kind is None:
                    expression = compile_expression(spec)
                    kind = "string"
                    for event in events:
                        try:
                            value = expression.evaluate(event)
                        except Exception:
                            continue
                        if value is not None:
                            kind = infer_type(value)
                            break
                schema.append([name, kind])
        else:
            for name in first:
                value = next((e.get(name) for e in events
                              if isinstance(e, dict) and e.get(name) is not None), None)
                schema.append([name, "string" if value is None else infer_type(value)])
        self._set_schema(schema)
        self.ctx.log("parquet schema: " + ", ".join(f"{n} {k}" for n, k in schema))

    def _row(self, event: Any) -> list[Any]:
        if not isinstance(event, dict):
            raise EventError(f"parquet sink: an event must be a JSON object, not "
                             f"{type(event).__name__}")
        if self._schema is None:
            self._infer([event])
            if not self._schema:
                self._schema = None
                raise EventError("parquet sink: the schema is taken from the first event, "
                                 "and this one has no fields")
        row = []
        for name, kind, getter, coerce in self._plan:
            try:
                value = getter(event)
            except Exception as exc:
                raise EventError(f"parquet sink: column {name!r}: {exc}") from None
            try:
                row.append(None if value is None else coerce(value))
            except (TypeError, ValueError, OverflowError) as exc:
                raise EventError(f"parquet sink: column {name!r} is {kind}: {value!r} does "
                                 f"not fit ({exc})") from None
        if self._fields is not None and not self._fields.issuperset(event):
            extra = event.keys() - self._fields - self._left_out
            if extra:
                self._left_out |= extra
                self.ctx.log(f"parquet sink: field(s) {', '.join(sorted(extra))} are not "
                             "in the schema (taken from the first events): left out")
        return row

    # ---------------------------------------------------------------------- events

    async def start(self) -> None:
        self._names.dir.mkdir(parents=True, exist_ok=True)
        self._started = True
        if not self._eo:
            await asyncio.to_thread(self._adopt_leftovers)

    async def process(self, port: str, event: Any) -> None:
        await self._take([self._row(event)])

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        try:
            if self._schema is None:
                self._infer(events)
            rows = [self._row(e) for e in events]
        except Exception:
            return False  # each goes its own way (the bad ones fail alone)
        await self._take(rows)
        return True

    async def _take(self, rows: list[list[Any]]) -> None:
        limit = self.config.rows
        while rows:
            journal = self._journal or self._open_journal()
            room = len(rows) if limit is None else max(limit - journal.rows, 0)
            part, rows = rows[:room], rows[room:]
            journal.fh.write(_LINES.encode_lines(part))
            journal.rows += len(part)
            self._unflushed += len(part)
            if limit is not None and journal.rows >= limit:
                await self._roll()

    def _open_journal(self) -> Journal:
        assert self._schema is not None
        n, self._next = self._next, self._next + 1
        path = self._names.journal(n)
        fh = path.open("wb")
        fh.write(msgspec.json.encode({"flowctl_parquet": 1, "schema": self._schema}) + b"\n")
        self._journal = Journal(n, path, fh, 0, time.time())
        return self._journal

    def _due(self) -> bool:
        j, seconds = self._journal, self.config.seconds
        return j is not None and seconds is not None and time.time() - j.since >= seconds

    def _count_flushed(self) -> None:
        if self._journal is not None:
            self._journal.fh.flush()
        if self._unflushed:
            self.ctx.wrote(self._unflushed)
            self._unflushed = 0

    async def _roll(self) -> None:
        """The open journal is complete: exactly-once it waits for the next commit;
        otherwise it is converted and put in place now."""
        journal, self._journal = self._journal, None
        if journal is None:
            return
        journal.fh.flush()
        self._count_flushed()
        journal.fh.close()
        if self._eo:
            self._complete.append(journal.id)
            return
        await asyncio.to_thread(self._finish, journal.id, None)

    def _convert(self, n: int, serial: int | None) -> int:
        """Convert journal ``n`` into its file in place (the journal stays): its rows."""
        names = self._names
        return write_parquet(names.journal(n), names.temp(n), names.final(n, serial),
                             self.config.compression)

    def _finish(self, n: int, serial: int | None) -> int:
        """Convert journal ``n`` into its file in place, then delete the journal."""
        names = self._names
        rows = self._convert(n, serial)
        fsync_path(names.dir, directory=True)
        names.journal(n).unlink(missing_ok=True)
        return rows

    async def flush(self) -> None:
        self._count_flushed()
        if self._due():
            await self._roll()

    def held(self) -> int:
        return 0 if self._eo else self._unflushed

    async def stop(self) -> None:
        journal = self._journal
        if journal is None:
            return
        if not self._eo:
            await self._roll()
            return
        self._journal = None
        journal.fh.flush()
        length = journal.fh.tell()
        journal.fh.close()
        if (not self._complete and self._committed == (journal.id, length)
                and self._committed_serial is not None):
            # every row of it is in the last commit: in place under that commit's serial
            await asyncio.to_thread(self._finish, journal.id, self._committed_serial)

    # ------------------------------------------------------ at-least-once restarts

    def _adopt_leftovers(self) -> None:
        """A replica killed left journals: their rows were handed on (acked), so they
        are converted into files now (one whose file is already in place is deleted)."""
        finals, journals, temps = self._names.scan()
        for temp in temps:
            temp.unlink(missing_ok=True)
        for n, path in sorted(journals.items()):
            if n in finals:
                path.unlink(missing_ok=True)
                continue
            rows = self._finish(n, None)
            path.unlink(missing_ok=True)
            self.ctx.log(f"put {rows:,} row(s) left by the previous run in "
                         f"{self._names.final(n, None).name}")
        self._next = self._names.next_id()


register(ComponentType(
    name="parquet", role="sink", exactly_once="transactional",
    config_model=ParquetSinkConfig, inputs=IN,
    description="Write events as rows of rolling Parquet files in a directory.",
    impl="componentmanager.components.connectors.parquet:ParquetSink",
    docs="A file is complete after `rows` rows and/or `seconds` seconds; it is written "
         "under a hidden temporary name and renamed into place once complete "
         "(part-<node>-r<replica>-<n>.parquet; exactly-once -<n>-c<commit>.parquet, at the "
         "commit). Schema from `columns` (name -> type or expression) or the first "
         "events; fields outside it are left out, a value that does not fit fails its "
         "event. compression: snappy (default), zstd, gzip, lz4, brotli, none.",
))
