"""The ``sql`` sink and source: PostgreSQL (psycopg 3, async) and SQLite (the standard
library's ``sqlite3`` in a worker thread), picked by the ``url``'s scheme.

Connections: :class:`Database` hides the two drivers (one connection, one transaction
at a time, ``SAVEPOINT`` for the rows of one call). An unreachable database, at start or
mid-flow, is waited for with backoff (:meth:`Database.connect`); meanwhile the
replica's status reason says ``waiting: postgresql at host:port refused: ...``.
Credentials come from ``${VAR}`` in the url (the agent's environment) or a
``password_file``; they never reach the logs, the status or an error.

The sink (:class:`SqlSink`) writes each input's rows at once into the open transaction
(its own savepoint), so a row the database refuses fails that event alone, raised from
``process`` with the database's message (dead-lettered); the rows since the last commit
are kept in memory, written again on a new connection when the old one is lost.
At-least-once: the transaction is committed every ``batch_size`` rows and on
``flush()`` (inputs are acked once their rows are committed: ``held()``). Exactly-once:
it is committed in ``commit(prepared, record)``, with the replica's commit record in
``flowctl_commits`` in the same transaction; ``recover()`` returns that record.

The source (:class:`SqlSource`): rows above the last ``cursor`` value, every
``interval`` seconds, ``ctx.advance(cursor)`` after each batch (sql_source.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from componentmanager.component import Context

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
URL_PATTERN = r"^(postgresql|postgres|sqlite)://"
#: Pauses between attempts to reach the database (the last one repeats).
RECONNECT_PAUSES_S = (0.2, 0.5, 1.0, 2.0, 5.0)
COMMITS_TABLE = "flowctl_commits"


def expand_env(value: str) -> str:
    """``${VAR}`` / ``${VAR:-default}`` from the agent's environment (secrets stay out of
    the flow and of NATS KV)."""
    from componentmanager.runners.env import expand
    return expand(value, os.environ, "url")


def quote(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


class DataRefused(Exception):
    """The database refused the rows (a constraint, a type): the rows' fault."""


class ConnectionLost(Exception):
    """The connection went away (or never came): not the rows' fault."""


class Database:
    """One connection to PostgreSQL or SQLite, with reconnection and a status note."""

    def __init__(self, url: str, password_file: str | None, ctx: Context, what: str) -> None:
        self.ctx, self.what = ctx, what
        self.url = expand_env(url)
        parts = urlsplit(self.url)
        self.kind = "sqlite" if parts.scheme == "sqlite" else "postgresql"
        self.password: str | None = None
        if password_file:
            self.password = Path(password_file).read_text().strip()
        if self.kind == "sqlite":
            self.path = self.url[len("sqlite:///"):]  # sqlite:////abs/path, sqlite:///rel
            self.where = self.path
        else:
            if parts.password and self.password is None:
                self.password = unquote(parts.password)
            netloc = parts.hostname or "localhost"
            self.where = f"{netloc}:{parts.port or 5432}"
            user = f"{parts.username}@" if parts.username else ""
            self.conninfo = f"postgresql://{user}{self.where}{parts.path}"
            if parts.query:
                self.conninfo += f"?{parts.query}"
        self.param = "?" if self.kind == "sqlite" else "%s"
        self._conn: Any = None
        self._waiting = False

    # -- connecting ---------------------------------------------------------------------
    async def connect(self) -> None:
        """Until it answers: waits with backoff, the status reason saying why."""
        attempt = 0
        while True:
            try:
                await self._open()
                break
            except (OSError, sqlite3.OperationalError, *self._lost_errors()) as exc:
                self._note(f"waiting: {self.kind} at {self.where} refused: "
                           f"{self._say(exc)}")
                await asyncio.sleep(RECONNECT_PAUSES_S[min(attempt,
                                                           len(RECONNECT_PAUSES_S) - 1)])
                attempt += 1
        if self._waiting:
            self._waiting = False
            self.ctx.log(f"{self.what}: {self.kind} at {self.where} answers again")
        if str(getattr(self.ctx, "note", None) or "").startswith(f"waiting: {self.kind} at "):
            self._set_note(None)  # (also one said before a restart of the replica)

    def _note(self, text: str) -> None:
        if not self._waiting or getattr(self.ctx, "note", None) != text:
            self.ctx.log(f"{self.what}: {text}")
        self._waiting = True
        self._set_note(text)

    def _set_note(self, text: str | None) -> None:
        if hasattr(self.ctx, "note"):  # the replica's status reason
            self.ctx.note = text  # type: ignore[attr-defined]
            host = getattr(self.ctx, "host", None)
            if host is not None and hasattr(host, "changed"):
                host.changed(self.ctx)

    def _say(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return text.replace(self.password, "***") if self.password else text

    def _lost_errors(self) -> tuple[type[BaseException], ...]:
        if self.kind == "sqlite":
            return ()
        import psycopg
        return (psycopg.OperationalError, psycopg.InterfaceError)

    async def _open(self) -> None:
        await self.close()
        if self.kind == "sqlite":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = await asyncio.to_thread(
                sqlite3.connect, self.path, isolation_level=None, check_same_thread=False,
                timeout=30)
            return
        import psycopg
        kwargs = {"password": self.password} if self.password else {}
        self._conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=False, connect_timeout=5, **kwargs)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self.kind == "sqlite":
                await asyncio.to_thread(conn.close)
            else:
                await conn.close()
        except Exception:
            pass

    # -- statements ----------------------------------------------------------------------
    def _classify(self, exc: BaseException) -> Exception:
        """ConnectionLost or DataRefused for a driver's error (others pass as they are)."""
        if self.kind == "sqlite":
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                return ConnectionLost(self._say(exc))
            if isinstance(exc, sqlite3.Error):
                return DataRefused(self._say(exc))
            return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
        import psycopg
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError) or (
                self._conn is not None and self._conn.broken):
            return ConnectionLost(self._say(exc))
        if isinstance(exc, psycopg.Error):
            return DataRefused(self._say(exc))
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    async def run(self, sql: str, params: Any = None, many: bool = False,
                  fetch: bool = False) -> list[Any]:
        """One statement (``many``: for each params); ConnectionLost / DataRefused."""
        if self._conn is None:
            raise ConnectionLost("not connected")
        try:
            if self.kind == "sqlite":
                return await asyncio.to_thread(self._sqlite_run, sql, params, many, fetch)
            if many:
                async with self._conn.cursor() as cur:
                    await cur.executemany(sql, params)
                return []
            cur = await self._conn.execute(sql, params)
            if fetch:
                names = [d.name for d in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]
            return []
        except (ConnectionLost, DataRefused):
            raise
        except Exception as exc:
            raise self._classify(exc) from None

    async def copy(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL only: ``COPY ... FROM STDIN`` of ``rows`` (text format, one round
        trip for all) in the open transaction; ConnectionLost / DataRefused."""
        if self._conn is None:
            raise ConnectionLost("not connected")
        try:
            async with self._conn.cursor() as cur, cur.copy(sql) as cp:
                for row in rows:
                    await cp.write_row(row)
        except (ConnectionLost, DataRefused):
            raise
        except Exception as exc:
            raise self._classify(exc) from None

    def _sqlite_run(self, sql: str, params: Any, many: bool, fetch: bool) -> list[Any]:
        if many:
            self._conn.executemany(sql, params)
            return []
        cur = self._conn.execute(sql, params or ())
        if fetch:
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return []

    async def begin(self) -> None:
        """Open a transaction when none is (PostgreSQL opens one by itself)."""
        if self.kind == "sqlite" and self._conn is not None and not self._conn.in_transaction:
            await self.run("BEGIN")

    async def commit(self) -> None:
        await self._end("commit")

    async def rollback(self) -> None:
        await self._end("rollback")

    async def _end(self, how: str) -> None:
        if self._conn is None:
            raise ConnectionLost("not connected")
        try:
            if self.kind == "sqlite":
                if self._conn.in_transaction:
                    await asyncio.to_thread(self._conn.execute, how.upper())
            else:
                await getattr(self._conn, how)()
        except Exception as exc:
            raise self._classify(exc) from None


class SqlConnection(BaseModel):
    """What the sink and the source share."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        pattern=URL_PATTERN,
        description="postgresql://user@host:port/db or sqlite:///relative/file.db "
        "(sqlite:////absolute/file.db). ${VAR} is taken from the agent's environment: "
        "put a password there (postgresql://user:${PGPASSWORD}@host/db), never in the flow.",
    )
    password_file: str | None = Field(
        default=None, description="A file holding the password (e.g. a mounted secret).")

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        """A password written in the flow would be kept in NATS KV: refused."""
        userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        secret = userinfo.partition(":")[2]
        if secret and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}", secret):
            raise ValueError("the url holds a password: write it as ${VAR} (from the agent's "
                             "environment) or use password_file, never in the flow")
        return value




# one import registers both (they import what they share from here)
from componentmanager.components.connectors import sql_sink, sql_source  # noqa: E402,F401
