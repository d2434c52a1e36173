"""The ``sql`` connector against real databases, nothing mocked: SQLite through
``flowctl run examples/sqlite.yaml --until-done``; a real PostgreSQL server (started by
:mod:`tests.sql_servers` on a free port) under real agents with ``delivery:
exactly-once``: the agent holding the sql sink ``kill -9``'d mid-flow and restarted under
its name, and a row that violates a constraint: counted at the far end (the table's rows,
total and distinct, the sink's counters and its dead letters). The source: rows read by
the cursor, resumed after a restart with no repeat and no skip. A database down at the
sink's start: it waits (the status says why) and writes everything once it is up.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from flowstore.models import dlq_subject
from flowstore.streams import DLQ_STREAM
from tests.agents import flow_yaml, run_flow, statuses, wait_until
from tests.programs.cli_helpers import (  # noqa: F401  (an autouse fixture)
    EXAMPLES,
    Flowctl,
    cli_processes_cleaned_up,
    ok,
)
from tests.sql_servers import PostgresServer, postgres_bin, postgres_fixture  # noqa: F401
from tests.test_failover import HB

TOTAL = 6000
BAD_SEQ = 3333  # the CHECK constraint refuses it: one dead letter
OUTAGE_S = float(os.environ.get("FLOWCTL_SQL_OUTAGE_S", "3"))  # the run: 10


def check_sqlite(run: Flowctl, workdir: Path) -> None:
    """examples/sqlite.yaml's table (for test_examples.CHECKS as well)."""
    with sqlite3.connect(workdir / "out" / "orders.db") as db:
        rows = db.execute("SELECT id, customer, amount, vip, details FROM orders "
                          "ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(20))
    for seq, customer, amount, vip, details in rows:
        assert (customer, amount, vip) == (f"customer-{seq}", seq * 2.5, int(seq % 5 == 0))
        assert details == f'{{"seq":{seq},"doubled":{seq * 5.0}}}'


def test_sqlite_example_fills_the_table(tmp_path: Path) -> None:
    workdir = tmp_path / "examples"
    shutil.copytree(EXAMPLES, workdir)
    for attempt in range(2):  # a second run upserts: still 20 rows
        run = Flowctl("run", "sqlite.yaml", "--until-done", log_dir=tmp_path / "logs",
                      cwd=workdir, name=f"sqlite-{attempt}")
        assert run.wait(60) == 0, run.err()
        check_sqlite(run, workdir)


def eo_sql_flow(url: str, delivery: str = "exactly-once") -> str:
    return flow_yaml("sqleo", f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: {TOTAL + 1}, rate: 600}}
      placement: {{agent: a1}}
  processors:
    - id: work
      type: transform
      inputs: [gen]
      config: {{set: {{label: "'row-' + str(seq)", doubled: "seq * 2"}}}}
      placement: {{agent: a2}}
  sinks:
    - id: db
      type: sql
      inputs: [work]
      placement: {{agent: a3}}
      config:
        url: "{url}"
        table: eo_rows
        init:
          - CREATE TABLE IF NOT EXISTS eo_rows (seq int NOT NULL CHECK (seq <> {BAD_SEQ}),
            label text NOT NULL, doubled bigint, extra jsonb)
        columns: {{seq: seq, label: label, doubled: doubled, extra: "{{'s': seq}}"}}
""", delivery=delivery)


async def test_postgres_exactly_once_through_a_kill9(nc, agents, postgres) -> None:
    """6,001 events -> transform -> PostgreSQL, exactly-once; the sink's agent is kill -9'd
    mid-flow and restarted, after PostgreSQL was stopped for OUTAGE_S (the status says the
    sink waits) and started again: 6,000 rows, 6,000 distinct, the one the CHECK refuses is one
    dead letter with PostgreSQL's message; the sink's out is 6,000."""
    procs = {name: agents(name, "zone=a", heartbeat=HB) for name in ("a1", "a2", "a3")}
    dead: list[str] = []

    async def on_dead(msg) -> None:
        dead.append(msg.headers.get("Flowctl-Error", "") if msg.headers else "")

    await nc.subscribe(dlq_subject("sqleo", "db"), cb=on_dead)
    began = time.monotonic()
    await run_flow(nc, eo_sql_flow(postgres.url))

    def rows() -> int:
        try:
            return postgres.query("SELECT count(*) FROM eo_rows")[0][0]
        except Exception:
            return 0

    try:
        await wait_until(lambda: _true(rows() >= 1000), timeout=30, what="rows flowing")
    except AssertionError:
        print({k: (v.state, v.reason, v.last_error, v.counters) for k, v in
               (await statuses(nc, "sqleo")).items()})
        print(procs["a3"].output()[1][-3000:])
        raise
    outage_at = rows()
    await asyncio.to_thread(postgres.stop)  # the database goes away mid-flow

    async def waiting() -> bool:
        db = (await statuses(nc, "sqleo")).get("sqleo.db.0")
        return bool(db and (db.reason or "").startswith(
            f"waiting: postgresql at 127.0.0.1:{postgres.port} refused"))

    await wait_until(waiting, timeout=15, what="the status saying the sink waits")
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(postgres.start)
    await wait_until(lambda: _true(rows() >= outage_at + 1000), timeout=30,
                     what="rows flowing after the outage")
    procs["a3"].proc.kill()  # kill -9 of the agent holding the sink
    procs["a3"].proc.wait()
    killed_at = rows()
    assert killed_at < TOTAL - 500, "too late: no longer mid-flow"
    await asyncio.sleep(0.5)
    procs["a3"] = agents("a3", "zone=a", heartbeat=HB)

    async def complete() -> bool:
        st = await statuses(nc, "sqleo")
        db = st.get("sqleo.db.0")
        return (db is not None and db.counters.in_ >= TOTAL + 1 and rows() >= TOTAL)

    await wait_until(complete, timeout=60, what=f"all {TOTAL} rows")
    await asyncio.sleep(2.0)  # the last commit and status write
    seqs = collections.Counter(s for (s,) in postgres.query("SELECT seq FROM eo_rows"))
    st = (await statuses(nc, "sqleo"))["sqleo.db.0"]
    print(f"\ndatabase stopped {OUTAGE_S} s at {outage_at} rows, kill -9 at {killed_at}; "
          f"{sum(seqs.values())} rows, {len(seqs)} distinct; "
          f"sink in/out/errors {st.counters.in_}/{st.counters.out}/{st.counters.errors}; "
          f"{len(dead)} dead letter(s); {time.monotonic() - began:.1f} s")
    assert sum(seqs.values()) == len(seqs) == TOTAL
    assert BAD_SEQ not in seqs and set(seqs) == set(range(TOTAL + 1)) - {BAD_SEQ}
    assert (st.counters.in_, st.counters.out, st.counters.errors) == (TOTAL + 1, TOTAL, 1)
    # what the DLQ keeps (what `flowctl dlq` shows): one dead letter, even when the refused
    # row was dead-lettered again by the restarted sink before its first commit (the
    # stream drops the repeat by its Nats-Msg-Id; a plain subscriber sees both publishes)
    kept_letters = await nc.jetstream().stream_info(
        DLQ_STREAM, subjects_filter=dlq_subject("sqleo", "db"))
    assert kept_letters.state.messages == 1, dead
    assert dead and all("check constraint" in d for d in dead), dead
    assert postgres.query("SELECT extra->>'s' FROM eo_rows WHERE seq = 7") == [("7",)]
    kept = postgres.query("SELECT replica_key FROM flowctl_commits")
    assert kept == [("sqleo.db.0",)]


def _true(value: bool) -> asyncio.Future[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


async def test_postgres_down_at_start_then_up_at_least_once(nc, agents, tmp_path) -> None:
    """At-least-once, the server not up when the sink starts: the status says
    ``waiting: postgresql at ... refused``; once it is up every row is written (upserts on
    the key, so a repeat is no extra row), a refused row is one dead letter."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    server = PostgresServer(bindir)
    agents("b1", "zone=a", heartbeat=HB)
    try:
        await run_flow(nc, flow_yaml("sqlal", f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: 500, rate: 500}}
  sinks:
    - id: db
      type: sql
      inputs: [gen]
      config:
        url: "{server.url}"
        table: al_rows
        batch_size: 100
        key: [seq]
        init:
          - CREATE TABLE IF NOT EXISTS al_rows (seq int PRIMARY KEY CHECK (seq <> 77))
""", delivery="at-least-once"))

        async def waiting() -> bool:
            db = (await statuses(nc, "sqlal")).get("sqlal.db.0")
            return bool(db and db.reason and db.reason.startswith(
                f"waiting: postgresql at 127.0.0.1:{server.port} refused"))

        await wait_until(waiting, timeout=20, what="the status saying it waits")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)

        async def written() -> bool:
            try:
                return server.query("SELECT count(*) FROM al_rows")[0][0] >= 499
            except Exception:
                return False

        await wait_until(written, timeout=30, what="every row once the server is up")
        await asyncio.sleep(1.5)
        seqs = [s for (s,) in server.query("SELECT seq FROM al_rows")]
        st = (await statuses(nc, "sqlal"))["sqlal.db.0"]
        assert sorted(seqs) == [s for s in range(500) if s != 77]
        assert st.counters.errors == 1 and "check constraint" in (st.last_error or "")
        assert st.reason is None or not st.reason.startswith("waiting")
    finally:
        server.remove()


async def test_postgres_source_resumes_after_its_cursor(nc, agents, postgres, tmp_path) -> None:
    """Rows read by the cursor column; more rows inserted while the source's agent is
    gone: each row emitted once, none skipped."""
    postgres.query("CREATE TABLE src_rows (id serial PRIMARY KEY, name text, at timestamptz "
                   "DEFAULT now(), price numeric)")
    postgres.query("INSERT INTO src_rows (name, price) SELECT 'n' || g, g * 1.5 "
                   "FROM generate_series(1, 2500) g")
    out = tmp_path / "src.jsonl"
    procs = {"c1": agents("c1", "zone=a", heartbeat=HB)}
    await run_flow(nc, flow_yaml("sqlsrc", f"""\
  sources:
    - id: rows
      type: sql
      config: {{url: "{postgres.url}", table: src_rows, cursor: id, interval: 0.2,
                batch_size: 700}}
  sinks:
    - id: out
      type: file
      inputs: [rows]
      config: {{path: "{out}"}}
""", delivery="at-least-once"))
    from tests.agents import read_lines

    await wait_until(lambda: _true(len(read_lines(out)) >= 2500), timeout=30,
                     what="the first rows")
    await asyncio.sleep(1.0)  # its position stored
    procs["c1"].proc.kill()
    procs["c1"].proc.wait()
    postgres.query("INSERT INTO src_rows (name, price) SELECT 'm' || g, g "
                   "FROM generate_series(1, 1500) g")
    procs["c1"] = agents("c1", "zone=a", heartbeat=HB)
    await wait_until(lambda: _true(len({line for line in read_lines(out)}) >= 4000),
                     timeout=30, what="the rows inserted meanwhile")
    await asyncio.sleep(1.0)
    import json
    events = [json.loads(line) for line in read_lines(out)]
    ids = collections.Counter(e["id"] for e in events)
    assert set(ids) == set(range(1, 4001))
    assert all(n == 1 for n in ids.values()), "a row emitted twice after the restart"
    first = next(e for e in events if e["id"] == 2)
    assert first["name"] == "n2" and first["price"] == 3 and "T" in first["at"]
