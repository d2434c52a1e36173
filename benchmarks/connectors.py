"""Rows per second into SQL tables through the ``sql`` sink, next to a plain psycopg
``COPY`` of the same rows measured in the same run.

    python benchmarks/connectors.py [--rows 200000] [--rounds 3]

A real PostgreSQL (tests.sql_servers: initdb in a temporary directory, a free port,
fsync off) and a SQLite file in a temporary directory; an EmbeddedNats server and two
``flowctl agent`` processes: ``generate`` (count N, no rate, on bench-a) -> ``sql`` sink
(on bench-b, so every event crosses NATS). Every run writes into a fresh table
``(seq bigint PRIMARY KEY, greeting text NOT NULL)``, created before the flow starts.

Timing: ``SELECT count(*)`` every 0.1 s sees only committed rows; the rate is the rows
committed after the first poll that saw any, over the time from that poll to the one
that saw all N (start-up is not counted; the whole run, from ``start`` to the last row,
is printed next to it). The sink's status counters are not used for timing: exactly-once
counts rows when written into the open transaction, before they are committed.

Baseline: psycopg ``COPY ... FROM STDIN`` of the same N rows (``write_row`` each) into an
identical table, one transaction, timed from the first row to the commit.

Every configuration runs ``--rounds`` times, interleaved, so the machine's noise is
shared; the median and the spread (min-max) are printed, with ratios to COPY's median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import start_agent, stop_all
from flowengine import FlowEngine
from flowstore import parse_flow
from flowstore.nats import NatsOptions, connect
from flowstore.server import EmbeddedNats
from tests.sql_servers import PostgresServer, postgres_bin

DDL = "CREATE TABLE {} (seq bigint PRIMARY KEY, greeting text NOT NULL)"
COPY = "psycopg COPY (baseline)"
CONFIGS: list[tuple[str, str | None, str]] = [  # label, delivery, database
    (COPY, None, "postgresql"),
    ("sql sink PostgreSQL exactly-once", "exactly-once", "postgresql"),
    ("sql sink PostgreSQL at-least-once", "at-least-once", "postgresql"),
    ("sql sink SQLite exactly-once", "exactly-once", "sqlite"),
]
GOAL = 50_000  # rows/s into PostgreSQL exactly-once (the issue's)
STALL_S = 30.0


def sink_flow(name: str, n: int, delivery: str, url: str, table: str) -> str:
    return f"""\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  delivery: {delivery}
  sources:
    - id: gen
      type: generate
      config: {{count: {n}, template: {{greeting: hello}}}}
      placement: {{agent: bench-a}}
  sinks:
    - id: db
      type: sql
      inputs: [gen]
      config: {{url: "{url}", table: {table}}}
      placement: {{agent: bench-b}}
"""


def copy_rows(url: str, table: str, n: int) -> float:
    """Rows/s of one ``COPY`` of ``n`` rows into a new table (checked: all there)."""
    with psycopg.connect(url) as conn:
        conn.execute(DDL.format(table))
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {table} (greeting, seq) FROM STDIN") as cp:
            for seq in range(n):
                cp.write_row(("hello", seq))
        conn.commit()
        elapsed = time.perf_counter() - started
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None and row[0] == n, row
        conn.execute(f"DROP TABLE {table}")
    return n / elapsed


async def committed(poll: Callable[[], Awaitable[int]], engine: FlowEngine, name: str,
                    n: int, started: float) -> tuple[float, float]:
    """Poll until all ``n`` rows are committed: (rows/s first row -> last, whole run s).
    All rows in one commit (nothing to time between a first and a last): rows/s over the
    whole run instead, from ``start``."""
    first_at, first_count, last, still = 0.0, 0, -1, 0.0
    while True:
        count = await poll()
        now = time.perf_counter()
        if count and not first_at:
            first_at, first_count = now, count
        if count >= n:
            span = now - first_at
            rate = (count - first_count) / span if span > 0 else count / (now - started)
            return rate, now - started
        still = still + 0.1 if count == last else 0.0
        last = count
        if still >= STALL_S:
            states = [(s.node, s.state.value, s.counters) for s in await engine.list_status(name)]
            raise RuntimeError(f"{name}: {count:,} of {n:,} rows after {STALL_S:.0f} s "
                               f"without progress: {states}")
        await asyncio.sleep(0.1)


async def sink_run(engine: FlowEngine, name: str, n: int, delivery: str, kind: str,
                   pg: PostgresServer, sqlite_dir: Path) -> tuple[float, float]:
    table = name.replace("-", "_")
    if kind == "postgresql":
        url = pg.url
        conn = await psycopg.AsyncConnection.connect(pg.url, autocommit=True)
        await conn.execute(DDL.format(table))

        async def poll() -> int:
            row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
            return int(row[0]) if row else 0

        async def close() -> None:
            await conn.execute(f"DROP TABLE {table}")
            await conn.close()
    else:
        path = sqlite_dir / f"{table}.db"
        url = f"sqlite:///{path}"  # an absolute path: sqlite:////tmp/...
        lite = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        lite.execute(DDL.format(table))

        async def poll() -> int:
            return await asyncio.to_thread(
                lambda: int(lite.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))

        async def close() -> None:
            lite.close()
            path.unlink(missing_ok=True)
    loaded = parse_flow(sink_flow(name, n, delivery, url, table))
    try:
        await engine.apply(loaded.name, loaded.spec)
        await engine.deploy(loaded.name)
        started = time.perf_counter()
        await engine.start(loaded.name)
        return await asyncio.wait_for(committed(poll, engine, name, n, started), 900)
    finally:
        await asyncio.wait_for(engine.undeploy(loaded.name, force=True), 60)
        await close()


def _fmt(values: list[float]) -> str:
    return (f"{statistics.median(values):>10,.0f} {min(values):>10,.0f} "
            f"{max(values):>10,.0f}")


async def measure(n: int, rounds: int, pg: PostgresServer, sqlite_dir: Path
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    rates: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    whole: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    with EmbeddedNats() as server:
        agents = [start_agent(server.url, "bench-a", "role=a"),
                  start_agent(server.url, "bench-b", "role=b")]
        try:
            nc = await connect(NatsOptions(url=server.url))
            try:
                engine = await FlowEngine.open(nc)
                while len(await engine.live_agents()) < 2:
                    await asyncio.sleep(0.1)
                for r in range(rounds):
                    for i, (label, delivery, kind) in enumerate(CONFIGS):
                        if delivery is None:
                            started = time.perf_counter()
                            rate = await asyncio.to_thread(copy_rows, pg.url, f"c{r}_{i}", n)
                            took = time.perf_counter() - started
                        else:
                            rate, took = await sink_run(engine, f"s{r}-{i}", n, delivery,
                                                        kind, pg, sqlite_dir)
                        rates[label].append(rate)
                        whole[label].append(took)
            finally:
                await nc.close()
        finally:
            stop_all(agents)
    return rates, whole


async def main(n: int, rounds: int) -> None:
    bindir = postgres_bin()
    if bindir is None:
        sys.exit("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    load = os.getloadavg()  # other work on the machine (it is shared)
    pg = PostgresServer(bindir)
    try:
        pg.start()
        with tempfile.TemporaryDirectory(prefix="flowctl-sqlite-") as sqlite_dir:
            rates, whole = await measure(n, rounds, pg, Path(sqlite_dir))
    finally:
        pg.remove()
    base = statistics.median(rates[COPY])
    print("load average before the run (1, 5, 15 min): "
          + ", ".join(f"{x:.2f}" for x in load))
    print(f"rows per run: {n:,}, rounds: {rounds} (rows/s first row -> last committed; "
          "whole run s: start -> last row, incl. start-up)")
    print(f"{'into':<36}{'median':>10} {'min':>10} {'max':>10} {'ratio':>7} {'whole s':>8}")
    for label, _, _ in CONFIGS:
        ratio = statistics.median(rates[label]) / base
        print(f"{label:<36}{_fmt(rates[label])} {ratio:>7.3f} "
              f"{statistics.median(whole[label]):>8.2f}")
    eo = statistics.median(rates["sql sink PostgreSQL exactly-once"])
    print(f"PostgreSQL exactly-once: {eo:,.0f} rows/s median, goal {GOAL:,}: "
          f"{'met' if eo >= GOAL else 'NOT met'} (per round: "
          f"{', '.join(f'{r:,.0f}' for r in rates['sql sink PostgreSQL exactly-once'])})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.rows, args.rounds))
    except KeyboardInterrupt:  # everything started is stopped by the finally blocks
        sys.exit(130)
