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

Files, per replica (``<p>`` = ``part-<node>-r<replica>-``; names starting with ``.`` or
``_`` are skipped by pyarrow.dataset, Spark, DuckDB and friends):

* ``.<p><n>.jsonl.tmp``: the journal of file ``n``: a header line (the schema) then one
  JSON array per row, appended as events come in. A Parquet file cannot be appended to
  or cut back, its journal can (exactly-once keeps its committed length).
* ``.<p><n>.parquet.tmp``: file ``n`` being converted;
* ``<p><n>.parquet`` (at-least-once, at-most-once) or ``<p><n>-c<serial>.parquet``
  (exactly-once: the commit that put it in place): a complete file, renamed into place
  (after an fsync) only once it is whole;
* ``_flowctl-commit-<node>-r<replica>.json`` (exactly-once): the last commit record.

At-least-once and at-most-once (``ctx.exactly_once`` False): rows go to the journal;
``flush()`` (every second, and before stop) hands them to the OS, after which
``held()`` is 0 and their inputs are acked. A journal full (``rows``) or old
(``seconds``) is converted and renamed into place at once, and the last one at
``stop()``. A replica killed leaves its journal: the next start of that replica
converts it (and deletes one whose file is already in place), so acked rows are never
lost; rows whose inputs were not yet acked are written again (at-least-once).

Exactly-once (``exactly_once = "transactional"``). ``held()`` is 0: a row is in the
journal as soon as it is taken, and each commit keeps the journal's state.

* ``prepare_commit()`` (between input messages): flushes the journal and returns
  ``{"run", "serial", "next", "open": {"id", "length", "rows", "since"}, "complete":
  [ids], "schema"}``: the open journal's committed length and the journals that were
  rolled (full or old) since the last commit. ``serial`` is the runner's next commit
  serial (both count the commits the same way: one per ``prepare_commit``); ``next`` is
  the id the next journal gets; ``run`` names this run of the flow (a marker left by an
  earlier flow in the same directory is not taken for this one's).
* ``commit(prepared, record)``: fsyncs the open journal; converts each complete journal
  to ``.parquet.tmp``, fsyncs it and renames it to ``<p><n>-c<serial>.parquet``
  (``serial`` = ``record["serial"]``); fsyncs the directory; then writes ``record`` to
  the marker (temp file, fsync, ``os.replace``, fsync of the directory); then deletes
  the converted journals.
* ``recover(prepared)`` (at start, with the bucket's last commit): the last commit it
  can prove is the marker's when it is of this run and at least as new as the bucket's
  (the marker is written before the bucket, so it is never older unless lost), else the
  bucket's. With that commit's state ``S``: every ``-c<c>`` file with ``c > S.serial``
  made from a journal opened after ``S`` (``n >= S.next``) or from ``S``'s open journal
  is deleted; ``S``'s open journal is cut back to its committed length and written on
  (unless a file of it with ``c <= S.serial`` exists: it was completed at stop, see
  below); every other journal and temp file of the replica is deleted. It returns the
  marker's record, so the runner resumes from the marker when it is newer than the
  bucket (its floors match the files).
* ``stop()``: after the runner's last commit, a journal whose whole content is in that
  commit is converted into ``<p><n>-c<serial>.parquet`` with that commit's serial, so a
  finished flow leaves no temp file. (A journal with rows after the last commit stays
  for ``recover``.)

Crash points (kill -9 anywhere; serial ``S`` committed, ``S+1`` being committed):

1. before ``commit(S+1)`` renames anything: marker and bucket say ``S``; the open
   journal is cut back to ``S``'s length, later journals deleted; the runner takes the
   inputs after ``S`` again and writes their rows again, once.
2. between two renames of ``S+1``: some ``-c(S+1)`` files are in place, the marker says
   ``S``: they are deleted (their journals are still there: deleted only after the
   marker), ``S``'s open journal cut back: as 1.
3. after the renames, before the marker: as 2.
4. during the marker write: ``os.replace`` is atomic: the old marker (as 2) or the new
   one (as 5), never half of one.
5. after the marker, before the bucket write: the marker says ``S+1``, newer than the
   bucket's ``S``: ``recover`` keeps the ``-c(S+1)`` files, deletes their journals if
   still there, cuts ``S+1``'s open journal back to its length, and returns the marker's
   record: the runner resumes from ``S+1`` (its floors), so those inputs are not taken
   again.
6. after the bucket write: both say ``S+1``: as 5 without the resume.
7. in ``stop()``'s conversion: before its rename the temp file is deleted and the
   journal resumed; after it, the file is in place with ``c = S`` and the journal is
   deleted (consumed, not resumed).

So a file in place holds only rows of inputs in a commit the runner will not take
again; a row is in exactly one file or in the committed part of one journal; and a
temp file never lasts past the next start of its replica.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.component import Component, Context, EventError
from componentmanager.components.expressions import compile_expression
from componentmanager.registry import ComponentType, Port, register

IN = (Port("in", required=True, description="the events to write as rows"),)

# ------------------------------------------------------------------------------ types

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _int(bounds: tuple[int, int]) -> Any:
    def coerce(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError("a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TypeError(f"a {type(value).__name__}")
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError("out of range")
        return value
    return coerce


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a {type(value).__name__}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"a {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _timestamp(value: Any) -> int:
    """Microseconds since the epoch (UTC)."""
    if isinstance(value, bool):
        raise TypeError("a boolean")
    if isinstance(value, int | float):
        return round(value * 1_000_000)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return round(moment.timestamp() * 1_000_000)
    raise TypeError(f"a {type(value).__name__}")


def _date(value: Any) -> int:
    """Days since the epoch."""
    if isinstance(value, bool):
        raise TypeError("a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return (date.fromisoformat(value[:10]) - date(1970, 1, 1)).days
    raise TypeError(f"a {type(value).__name__}")


#: type name -> how a value is checked and stored in the journal
COERCE: dict[str, Any] = {
    "string": _text, "int64": _int(_INT64), "int32": _int(_INT32), "float64": _float,
    "float32": _float, "bool": _bool, "timestamp": _timestamp, "date": _date, "json": _json,
}
ALIASES = {"str": "string", "text": "string", "int": "int64", "integer": "int64",
           "long": "int64", "float": "float64", "double": "float64", "boolean": "bool"}


def type_name(text: str) -> str | None:
    """The canonical type a column spec names, or None (it is an expression)."""
    name = text.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in COERCE else None


def arrow_type(name: str) -> Any:
    import pyarrow as pa
    return {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
            "float64": pa.float64(), "float32": pa.float32(), "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32(),
            "json": pa.string()}[name]


def infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"


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


# ------------------------------------------------------------------------------- files


@dataclass
class Journal:
    id: int
    path: Path
    fh: BinaryIO
    rows: int
    since: float


class Names:
    """The file names of one replica in the directory (see the module doc)."""

    def __init__(self, directory: Path, node: str, replica: int) -> None:
        self.dir = directory
        self.prefix = f"part-{node}-r{replica}-"
        self.marker = directory / f"_flowctl-commit-{node}-r{replica}.json"
        p = re.escape(self.prefix)
        self._final = re.compile(p + r"(\d+)(?:-c(\d+))?\.parquet")
        self._journal = re.compile(r"\." + p + r"(\d+)\.jsonl\.tmp")
        self._temp = re.compile(r"\." + p + r"\d+\.parquet\.tmp|\." + re.escape(
            self.marker.name) + r"\.tmp")

    def final(self, n: int, serial: int | None) -> Path:
        tail = "" if serial is None else f"-c{serial}"
        return self.dir / f"{self.prefix}{n:06d}{tail}.parquet"

    def journal(self, n: int) -> Path:
        return self.dir / f".{self.prefix}{n:06d}.jsonl.tmp"

    def temp(self, n: int) -> Path:
        return self.dir / f".{self.prefix}{n:06d}.parquet.tmp"

    def scan(self) -> tuple[dict[int, list[tuple[Path, int | None]]], dict[int, Path],
                            list[Path]]:
        """This replica's files: finals by id (with their serial), journals by id, temps."""
        finals: dict[int, list[tuple[Path, int | None]]] = {}
        journals: dict[int, Path] = {}
        temps: list[Path] = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if m := self._final.fullmatch(name):
                serial = int(m.group(2)) if m.group(2) else None
                finals.setdefault(int(m.group(1)), []).append((self.dir / name, serial))
            elif m := self._journal.fullmatch(name):
                journals[int(m.group(1))] = self.dir / name
            elif self._temp.fullmatch(name):
                temps.append(self.dir / name)
        return finals, journals, temps

    def next_id(self) -> int:
        finals, journals, _ = self.scan()
        return max([0, *finals, *journals]) + 1


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path, length: int | None = None) -> tuple[list[list[str]], list[list]]:
    """A journal's schema and rows (up to ``length`` bytes; a last line without its
    newline, cut by a crash, is left out)."""
    with path.open("rb") as fh:
        data = fh.read() if length is None else fh.read(length)
    data = data[: data.rfind(b"\n") + 1]
    lines = data.splitlines()
    if not lines:
        return [], []
    header = msgspec.json.decode(lines[0])
    rows = [msgspec.json.decode(line) for line in lines[1:] if line]
    return header["schema"], rows


def write_parquet(journal: Path, temp: Path, final: Path, compression: str) -> int:
    """Convert a journal into a complete Parquet file in place (temp, fsync, rename):
    its row count (0: nothing written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, rows = read_journal(journal)
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    arrays = [pa.array(list(col), type=arrow_type(kind))
              for col, (_, kind) in zip(columns, schema, strict=True)]
    table = pa.Table.from_arrays(
        arrays, schema=pa.schema([(name, arrow_type(kind)) for name, kind in schema]))
    pq.write_table(table, temp, compression=None if compression == "none" else compression)
    _fsync_path(temp)
    os.replace(temp, final)
    return len(rows)


# -------------------------------------------------------------------------------- sink

_LINES = msgspec.json.Encoder()


class ParquetSink(Component):
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

    def _finish(self, n: int, serial: int | None) -> int:
        """Convert journal ``n`` into its file in place, then delete the journal."""
        names = self._names
        rows = write_parquet(names.journal(n), names.temp(n), names.final(n, serial),
                             self.config.compression)
        _fsync_path(names.dir, directory=True)
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

    # -------------------------------------------------------------- exactly-once

    def prepare_commit(self) -> Any:
        self._serial += 1
        if not self._started:  # the first commit of a new flow, before any output
            return {"run": self._run, "serial": self._serial, "next": self._names.next_id(),
                    "open": None, "complete": [], "schema": None}
        if self._due():  # (no awaiting here: exactly-once a roll does no I/O of its own)
            journal, self._journal = self._journal, None
            assert journal is not None
            journal.fh.close()
            self._complete.append(journal.id)
        self._count_flushed()
        journal = self._journal
        return {"run": self._run, "serial": self._serial, "next": self._next,
                "open": None if journal is None else {
                    "id": journal.id, "length": journal.fh.tell(), "rows": journal.rows,
                    "since": journal.since},
                "complete": list(self._complete), "schema": self._schema}

    async def commit(self, prepared: Any, record: dict[str, Any]) -> None:
        if not isinstance(prepared, dict) or not self._started:
            return
        serial = int(record["serial"])
        if serial != prepared.get("serial"):
            self.ctx.log(f"parquet sink: commit serial {serial} where {prepared.get('serial')}"
                         " was expected")
        await asyncio.to_thread(self._commit_files, prepared, serial, record)
        done = set(prepared["complete"])
        self._complete = [n for n in self._complete if n not in done]
        opened = prepared.get("open")
        self._committed = None if opened is None else (opened["id"], opened["length"])
        self._committed_serial = serial

    def _commit_files(self, prepared: dict[str, Any], serial: int,
                      record: dict[str, Any]) -> None:
        names = self._names
        opened = prepared.get("open")
        if opened is not None:
            _fsync_path(names.journal(opened["id"]))
        for n in prepared["complete"]:
            if names.journal(n).exists():
                write_parquet(names.journal(n), names.temp(n), names.final(n, serial),
                              self.config.compression)
        _fsync_path(names.dir, directory=True)
        temp = names.dir / f".{names.marker.name}.tmp"
        with temp.open("w") as fh:  # the marker, after the renames
            json.dump(record, fh, separators=(",", ":"), default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, names.marker)
        _fsync_path(names.dir, directory=True)
        for n in prepared["complete"]:
            names.journal(n).unlink(missing_ok=True)

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self._names.marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.ctx.log(f"parquet sink: {self._names.marker} unreadable ({exc}): ignored")
            return None
        return record if isinstance(record, dict) else None

    async def recover(self, prepared: Any) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._recover, prepared)

    def _recover(self, prepared: Any) -> dict[str, Any] | None:
        names = self._names
        finals, journals, temps = names.scan()
        for temp in temps:
            temp.unlink(missing_ok=True)
        if not isinstance(prepared, dict) or not prepared.get("run"):
            # a new flow: what an earlier one left here is not this one's (its complete
            # files stay; its journals were never committed by this flow)
            for path in journals.values():
                path.unlink(missing_ok=True)
            self._next = names.next_id()
            return None
        state, kept = prepared, None
        marker = self._read_marker()
        sink = (marker or {}).get("sink")
        if (isinstance(sink, dict) and sink.get("run") == prepared["run"]
                and int(marker.get("serial") or 0) >= int(prepared.get("serial") or 0)):
            state, kept = sink, marker
        serial, nxt = int(state["serial"]), int(state["next"])
        opened = state.get("open")
        open_id = None if opened is None else int(opened["id"])
        consumed = False
        for n, files in finals.items():
            for path, c in files:
                if c is not None and c > serial and (n == open_id or n >= nxt):
                    path.unlink(missing_ok=True)
                    self.ctx.log(f"deleted {path.name}: renamed by a commit that was not "
                                 f"completed (the last one is {serial}); its rows are "
                                 "written again")
                elif n == open_id and c is not None:
                    consumed = True  # completed at a stop after the commit
        for n, path in journals.items():
            if n != open_id or consumed:
                path.unlink(missing_ok=True)
        self._run, self._serial, self._next = str(state["run"]), serial, nxt
        self._complete, self._journal = [], None
        if state.get("schema"):
            self._set_schema(state["schema"])
        if opened is not None and not consumed:
            path = names.journal(open_id)  # type: ignore[arg-type]
            length = int(opened["length"])
            if not path.exists():
                self.ctx.log(f"parquet sink: {path.name} is missing: the {opened['rows']:,} "
                             "row(s) it held at the last commit are lost")
            else:
                fh = path.open("r+b")
                size = fh.seek(0, os.SEEK_END)
                if size > length:
                    fh.truncate(length)
                    fh.seek(length)
                self._journal = Journal(open_id, path, fh, int(opened["rows"]),  # type: ignore[arg-type]
                                        float(opened["since"]))
                self._committed = (open_id, length)  # type: ignore[assignment]
                self._committed_serial = serial
        if kept is not None and serial > int(prepared.get("serial") or 0):
            self.ctx.log(f"parquet sink: commit {serial}, kept in {names.marker.name}, is "
                         f"newer than the last stored one: resuming from it")
        return kept


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
