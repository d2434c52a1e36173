"""The ``sql`` source: incremental reads of a table (or a query) by a cursor column.

Every ``interval`` seconds it reads the rows whose ``cursor`` is above the last one
emitted, in cursor order, ``batch_size`` at a time, emits each as an event (column ->
value; dates as ISO text, decimals as numbers, bytes as hex) and reports the cursor of
the batch's last row with ``ctx.advance``: a restarted (or moved) source resumes after it
(``ctx.resume_position()``), no repeat, no skip. The cursor must only grow (a serial id,
an insertion time); rows sharing a cursor value are never split between two batches.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import uuid
from typing import Any

from pydantic import Field, field_validator, model_validator

from componentmanager.component import Component, Context
from componentmanager.components.connectors.sql import (
    IDENT_RE,
    ConnectionLost,
    Database,
    DataRefused,
    SqlConnection,
    quote,
)
from componentmanager.registry import ComponentType, Port, endless, register


class SqlSourceConfig(SqlConnection):
    table: str | None = Field(default=None, description="The table to read (or query).")
    query: str | None = Field(
        default=None,
        description="A SELECT to read instead of a table (it must return the cursor column).")
    cursor: str = Field(description="The column whose value only grows (id, inserted_at).")
    interval: float = Field(default=1.0, gt=0, description="Seconds between reads.")
    batch_size: int = Field(default=1000, ge=1, description="Rows read at once.")

    @field_validator("table", "cursor")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is not None and not IDENT_RE.match(value):
            raise ValueError(f"{value!r} is not a name (letters, digits, _; schema.table)")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of table and query")
        return self


def json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID | datetime.timedelta):
        return str(value)
    return value


class SqlSource(Component):
    """Polls for rows above the cursor (see the module doc)."""

    position_fields = ("url", "table", "query", "cursor")

    def __init__(self, config: SqlSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: SqlSourceConfig = config
        self._db: Database | None = None

    async def start(self) -> None:
        self._db = Database(self.config.url, self.config.password_file, self.ctx, "sql source")
        await self._db.connect()

    def _select(self, first: bool) -> str:
        c, db = self.config, self._db
        assert db is not None
        source = quote(c.table) if c.table else f"({c.query}) AS flowctl_q"
        where = "" if first else f" WHERE {quote(c.cursor)} > {db.param}"
        return (f"SELECT * FROM {source}{where} ORDER BY {quote(c.cursor)} "
                f"LIMIT {c.batch_size}")

    async def _read(self, position: Any) -> list[dict[str, Any]]:
        db = self._db
        assert db is not None
        while True:
            try:
                rows = await db.run(self._select(position is None),
                                    None if position is None else (position,), fetch=True)
                await db.rollback()  # (no snapshot held between reads)
                return rows
            except ConnectionLost as exc:
                self.ctx.log(f"sql source: connection lost ({exc}); reconnecting")
                await db.connect()
            except DataRefused as exc:
                raise RuntimeError(f"sql source: {exc}") from None

    async def run(self) -> None:
        position = await self.ctx.resume_position()
        cursor = self.config.cursor
        while True:
            rows = await self._read(position)
            if rows and cursor not in rows[0]:
                raise RuntimeError(f"sql source: the rows have no column {cursor!r}")
            if len(rows) == self.config.batch_size and rows[0][cursor] != rows[-1][cursor]:
                last = rows[-1][cursor]  # the next read takes all rows of the last value
                rows = [r for r in rows if r[cursor] != last]
            for row in rows:
                await self.ctx.emit("out", {k: json_value(v) for k, v in row.items()})
            if rows:
                position = json_value(rows[-1][cursor])
                self.ctx.advance(position)
            if len(rows) < self.config.batch_size - 1 or not rows:
                await asyncio.sleep(self.config.interval)

    async def stop(self) -> None:
        if self._db is not None:
            await self._db.close()


register(ComponentType(
    name="sql", role="source", config_model=SqlSourceConfig,
    outputs=(Port("out", description="one event per row"),),
    description="Read new rows of a PostgreSQL or SQLite table (or query) by a cursor column.",
    impl="componentmanager.components.connectors.sql_source:SqlSource",
    runs_forever=endless("it polls for new rows until stopped"),
    docs="Every interval seconds, the rows whose cursor is above the last one emitted, in "
         "cursor order; the cursor is checkpointed like other sources' positions (no repeat, "
         "no skip after a restart). The cursor column must only grow.",
))
