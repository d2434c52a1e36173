"""The ``sql`` sink: events as rows of a PostgreSQL or SQLite table, in transactions.

Each input's rows go at once into the open transaction (in a savepoint of their own), so
a row the database refuses (a constraint, a type) fails that event alone: raised from
``process`` with the database's message, the runtime dead-letters it. The rows written
since the last commit are kept in memory: when the connection is lost they are written
again on a new one (waited for with backoff, the status saying why), nothing is lost.

* at-least-once: the transaction is committed every ``batch_size`` rows and on
  ``flush()`` (every second, and before stop); ``held()`` is the rows not committed yet,
  so their inputs are acked only once they are.
* exactly-once (``exactly_once = "transactional"``): the transaction is committed in
  ``commit(prepared, record)`` with the replica's commit record written into
  ``flowctl_commits`` in the same transaction; ``recover()`` rolls back what is open and
  returns that record (it wins over the bucket's when newer). Rows of inputs taken
  between ``prepare_commit()`` and ``commit()`` wait for the commit, never join it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from componentmanager.component import Component, Context, EventError
from componentmanager.components.connectors.sql import (
    COMMITS_TABLE,
    IDENT_RE,
    ConnectionLost,
    Database,
    DataRefused,
    SqlConnection,
    quote,
)
from componentmanager.components.expressions import ExpressionStr, compile_expression
from componentmanager.registry import ComponentType, Port, register


class SqlSinkConfig(SqlConnection):
    table: str = Field(description="The table to write to (schema.table allowed).")
    columns: dict[str, ExpressionStr] | None = Field(
        default=None,
        description="Column -> expression over the event (e.g. {id: seq, name: user.name}); "
        "default: the event's top-level fields, each into the column of its name. Objects "
        "and arrays are written as JSON text.",
    )
    key: list[str] | None = Field(
        default=None,
        description="Columns of a unique key: a row whose key exists updates it (upsert).",
    )
    batch_size: int = Field(
        default=1000, ge=1,
        description="At-least-once: commit after this many rows (and every second).")
    init: list[str] = Field(
        default_factory=list,
        description="SQL statements run once at start (e.g. CREATE TABLE IF NOT EXISTS ...).")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not IDENT_RE.match(value):
            raise ValueError(f"{value!r} is not a table name (letters, digits, _; schema.table)")
        return value

    @model_validator(mode="after")
    def _columns(self) -> SqlSinkConfig:
        for name in [*(self.columns or {}), *(self.key or [])]:
            if not IDENT_RE.match(name) or "." in name:
                raise ValueError(f"{name!r} is not a column name (letters, digits, _)")
        if self.key and self.columns is not None:
            missing = [k for k in self.key if k not in self.columns]
            if missing:
                raise ValueError(f"key column(s) {missing} are not in columns")
        return self


Row = tuple[tuple[str, ...], tuple[Any, ...]]  # (columns, values)
#: Rows one INSERT takes at most, and its parameters at most (SQLite: 32,766).
ROWS_PER_STATEMENT, MAX_PARAMS = 1000, 30000
STATEMENTS_KEPT = 512  # INSERT texts kept (per column set and row count)


def sql_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return value


class SqlSink(Component):
    """Rows into a table, in transactions (see the module doc)."""

    flush_interval = 1.0
    exactly_once = "transactional"

    def __init__(self, config: SqlSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: SqlSinkConfig = config
        self._exprs = ({c: compile_expression(e) for c, e in config.columns.items()}
                       if config.columns is not None else None)
        self._db: Database | None = None
        self._lock = asyncio.Lock()
        self._uncommitted: list[Row] = []  # written since the last commit (for a reconnect)
        self._sql: dict[tuple[tuple[str, ...], int], str] = {}
        self._commit_done = asyncio.Event()
        self._commit_done.set()
        self._eo = bool(getattr(ctx, "exactly_once", False))
        self._replica_key = f"{ctx.flow}.{ctx.node}.{ctx.replica}"
        self._copy = False  # rows as COPY (set at start: PostgreSQL, no key)
        self._good_cols: set[tuple[str, ...]] = set()  # field names checked as columns

    async def start(self) -> None:
        self._db = Database(self.config.url, self.config.password_file, self.ctx, "sql sink")
        self._copy = self._db.kind == "postgresql" and not self.config.key
        await self._db.connect()
        async with self._lock:
            while True:
                try:
                    await self._db.begin()
                    for statement in self.config.init:
                        await self._db.run(statement)
                    if self._eo:
                        await self._db.run(f"CREATE TABLE IF NOT EXISTS {COMMITS_TABLE} "
                                           "(replica_key text primary key, record text)")
                    await self._db.commit()
                    return
                except ConnectionLost:
                    await self._db.connect()
                except DataRefused as exc:
                    raise RuntimeError(f"sql sink: init failed: {exc}") from None

    # -- rows ----------------------------------------------------------------------------
    def row(self, event: Any) -> Row:
        if self._exprs is None:
            if not isinstance(event, dict) or not event:
                raise EventError("sql sink: the event is not an object with fields "
                                 "(set columns to map it)")
            cols = tuple(event)
            if cols not in self._good_cols:
                for name in cols:
                    if not IDENT_RE.match(name) or "." in name:
                        raise EventError(f"sql sink: field {name!r} is not a column name")
                if len(self._good_cols) < STATEMENTS_KEPT:
                    self._good_cols.add(cols)
            return cols, tuple(map(sql_value, event.values()))
        try:
            values = tuple(sql_value(e.evaluate(event)) for e in self._exprs.values())
        except Exception as exc:
            raise EventError(f"sql sink: {exc}") from None
        return tuple(self._exprs), values

    def statement(self, cols: tuple[str, ...], count: int = 1) -> str:
        """One INSERT (an upsert with ``key``) of ``count`` rows of these columns."""
        sql = self._sql.get((cols, count))
        if sql is None:
            marks = "(" + ", ".join([self._db.param] * len(cols)) + ")"  # type: ignore[union-attr]
            sql = (f"INSERT INTO {quote(self.config.table)} "
                   f"({', '.join(quote(c) for c in cols)}) VALUES "
                   + ", ".join([marks] * count))
            if self.config.key:
                rest = [c for c in cols if c not in self.config.key]
                target = ", ".join(quote(k) for k in self.config.key)
                sql += (f" ON CONFLICT ({target}) DO UPDATE SET "
                        + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in rest)
                        if rest else f" ON CONFLICT ({target}) DO NOTHING")
            if len(self._sql) < STATEMENTS_KEPT:
                self._sql[(cols, count)] = sql
        return sql

    def copy_statement(self, cols: tuple[str, ...]) -> str:
        sql = self._sql.get((cols, 0))
        if sql is None:
            sql = (f"COPY {quote(self.config.table)} "
                   f"({', '.join(quote(c) for c in cols)}) FROM STDIN")
            if len(self._sql) < STATEMENTS_KEPT:
                self._sql[(cols, 0)] = sql
        return sql

    async def _insert(self, rows: list[Row]) -> None:
        """``rows`` in a savepoint of the open transaction: all or none (DataRefused).
        Rows of the same columns go as one ``COPY`` (PostgreSQL, no ``key``: an upsert
        can't be a COPY), else as multi-row INSERTs (one round trip per
        :data:`ROWS_PER_STATEMENT`). A refused COPY is rolled back to the savepoint like
        a refused INSERT: the batch is then written event by event (``process``), the
        bad row failing its event alone."""
        db = self._db
        assert db is not None
        await db.begin()
        await db.run("SAVEPOINT flowctl_rows")
        try:
            groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for cols, values in rows:
                groups.setdefault(cols, []).append(values)
            for cols, values in groups.items():
                if self._copy and len(values) > 1:  # one COPY: far fewer round trips
                    await db.copy(self.copy_statement(cols), values)
                    continue
                step = max(1, min(ROWS_PER_STATEMENT, MAX_PARAMS // len(cols)))
                for start in range(0, len(values), step):
                    chunk = values[start:start + step]
                    await db.run(self.statement(cols, len(chunk)),
                                 [v for row in chunk for v in row])
        except DataRefused:
            await db.run("ROLLBACK TO SAVEPOINT flowctl_rows")
            await db.run("RELEASE SAVEPOINT flowctl_rows")
            raise
        await db.run("RELEASE SAVEPOINT flowctl_rows")

    async def _reconnect(self) -> None:
        """A new connection with the rows since the last commit written again."""
        assert self._db is not None
        while True:
            await self._db.connect()
            try:
                if self._uncommitted:
                    await self._insert(self._uncommitted)
                return
            except ConnectionLost:
                continue
            except DataRefused:  # (changed meanwhile by something else): row by row
                pass
            try:
                await self._rewrite_one_by_one()
                return
            except ConnectionLost:
                continue

    async def _rewrite_one_by_one(self) -> None:
        """Rows the database took before and refuses now are dead-lettered, not lost."""
        kept: list[Row] = []
        for row in self._uncommitted:
            try:
                await self._insert([row])
                kept.append(row)
            except DataRefused as exc:
                event = dict(zip(row[0], row[1], strict=True))
                await self.ctx.reject(json.dumps(event, default=str).encode(),
                                      f"sql sink: {self.config.table}: {exc} (written again "
                                      "after a reconnection)")
        self._uncommitted = kept

    async def _write(self, rows: list[Row]) -> None:
        """``rows`` into the transaction (waiting out a lost connection); DataRefused."""
        await self._commit_done.wait()  # never into a transaction being committed
        async with self._lock:
            while True:
                try:
                    await self._insert(rows)
                    break
                except ConnectionLost as exc:
                    self.ctx.log(f"sql sink: connection lost ({exc}); reconnecting")
                    await self._reconnect()
            self._uncommitted.extend(rows)
            if self._eo:
                self.ctx.wrote(len(rows))

    async def process(self, port: str, event: Any) -> None:
        try:
            await self._write([self.row(event)])
        except DataRefused as exc:
            raise EventError(f"sql sink: {self.config.table}: {exc}") from None
        if not self._eo and len(self._uncommitted) >= self.config.batch_size:
            await self.flush()

    async def process_batch(self, port: str, events: list[Any]) -> bool:
        try:
            rows = [self.row(event) for event in events]
            await self._write(rows)
        except (EventError, DataRefused):
            return False  # nothing written: one by one, the bad one fails alone
        if not self._eo and len(self._uncommitted) >= self.config.batch_size:
            await self.flush()
        return True

    def held(self) -> int:
        return 0 if self._eo else len(self._uncommitted)

    async def flush(self) -> None:
        """At-least-once: commit what was written (the inputs are acked after)."""
        if self._eo or self._db is None:
            return
        async with self._lock:
            await self._commit_locked(None)

    async def _commit_locked(self, record: dict[str, Any] | None) -> None:
        db = self._db
        assert db is not None
        while True:
            if not self._uncommitted and record is None:
                return
            try:
                await db.begin()
                if record is not None:
                    p = db.param
                    await db.run(
                        f"INSERT INTO {COMMITS_TABLE} (replica_key, record) VALUES ({p}, {p}) "
                        "ON CONFLICT (replica_key) DO UPDATE SET record = excluded.record",
                        (self._replica_key, json.dumps(record, separators=(",", ":"))))
            except ConnectionLost:
                await self._reconnect()
                continue
            await db.commit()  # lost here: unknown whether it took; the replica restarts
            count, self._uncommitted = len(self._uncommitted), []
            if record is None:
                self.ctx.wrote(count)
            return

    # -- exactly-once --------------------------------------------------------------------
    def prepare_commit(self) -> Any:
        # Rows of inputs taken from now on wait for commit(): they are not in its record.
        # (The runner's very first commit, before start(), is stored without commit().)
        if self._db is not None:
            self._commit_done.clear()
        return None

    async def commit(self, prepared: Any, record: dict[str, Any]) -> None:
        try:
            async with self._lock:
                await self._commit_locked(record)
        finally:
            self._commit_done.set()

    async def recover(self, prepared: Any) -> dict[str, Any] | None:
        db = self._db
        assert db is not None
        self._commit_done.set()
        async with self._lock:
            while True:
                try:
                    await db.rollback()
                    self._uncommitted = []
                    rows = await db.run(f"SELECT record FROM {COMMITS_TABLE} WHERE replica_key = "
                                        f"{db.param}", (self._replica_key,), fetch=True)
                    await db.rollback()
                    return json.loads(rows[0]["record"]) if rows else None
                except ConnectionLost:
                    await db.connect()

    async def stop(self) -> None:
        if self._db is not None:
            if not self._eo and self._uncommitted:
                try:
                    await self.flush()
                except Exception as exc:
                    self.ctx.log(f"sql sink: last commit failed at stop: {exc}")
            await self._db.close()


_MOD = "componentmanager.components.connectors"

register(ComponentType(
    name="sql", role="sink", exactly_once="transactional", config_model=SqlSinkConfig,
    inputs=(Port("in", required=True, description="the events to write as rows"),),
    description="Write each event as a row of a PostgreSQL or SQLite table.",
    impl=f"{_MOD}.sql_sink:SqlSink",
    docs="Rows go in transactions (at-least-once: every batch_size rows and every second; "
         "exactly-once: with the replica's commit record, in flowctl_commits, in the same "
         "transaction, so a crash never repeats or loses a row). key makes it an upsert. A "
         "row the database refuses fails its event alone (dead-lettered with the database's "
         "message). An unreachable database is waited for (the status says so).",
))
