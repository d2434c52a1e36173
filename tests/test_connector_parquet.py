"""The ``parquet`` sink with real agents and a real nats-server (nothing mocked): the
example under ``flowctl run --until-done``; exactly-once with the sink's agent
``kill -9``'d mid-file and restarted under its name: only complete files, each row once;
at-least-once the same way: every row, in complete files."""

from __future__ import annotations

import asyncio
import collections
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flowstore.models import stream_name
from tests.agents import flow_yaml, run_flow, statuses, wait_until
from tests.component_context import Ctx, make, validate
from tests.programs.cli_helpers import (  # noqa: F401  (an autouse fixture)
    EXAMPLES,
    Flowctl,
    cli_processes_cleaned_up,
    wait_for,
)
from tests.test_failover import HB

TOTAL, RATE = 20_000, 4_000


def finals(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def read_seqs(directory: Path) -> tuple[collections.Counter, int]:
    """Every file in place read with pyarrow (each must be complete): seq counts, files."""
    files = finals(directory)
    seqs: collections.Counter = collections.Counter()
    for path in files:
        seqs.update(pq.read_table(path).column("seq").to_pylist())
    return seqs, len(files)


def test_example_runs_until_done(tmp_path: Path) -> None:
    workdir = tmp_path / "examples"
    workdir.mkdir()
    shutil.copy(EXAMPLES / "parquet.yaml", workdir)
    run = Flowctl("run", "parquet.yaml", "--until-done", "--timeout", "60",
                  log_dir=tmp_path, cwd=workdir, name="run")
    assert run.wait(90) == 0, run.err()
    assert "Traceback" not in run.err()
    out = workdir / "out" / "orders"
    assert temps(out) == []
    files = finals(out)
    assert len(files) == 4  # 1,000 rows, 250 a file
    table = pq.ParquetFile(files[0]).read()
    assert table.column_names == ["seq", "customer", "region", "amount", "cents"]
    assert str(table.schema.field("amount").type) == "double"
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert sorted(r["seq"] for r in rows) == list(range(1000))
    for r in rows:
        assert r["customer"] == f"c-{r['seq']}"
        assert r["cents"] == int((r["seq"] % 97) * 125)


def parquet_flow(name: str, out: Path, delivery: str) -> str:
    return flow_yaml(name, f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: {TOTAL}, rate: {RATE}}}
      placement: {{agent: a1}}
  sinks:
    - id: out
      type: parquet
      inputs: [gen]
      config: {{path: "{out}", rows: 1500, seconds: 2}}
      placement: {{agent: a2}}
""", delivery=delivery)


async def _drained(nc, flow: str) -> bool:
    info = await nc.jetstream().stream_info(stream_name(flow))
    return info.state.messages == 0


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
async def test_kill9_mid_file_leaves_only_complete_files(nc, agents, tmp_path,
                                                          delivery) -> None:
    procs = {name: agents(name, heartbeat=HB) for name in ("a1", "a2")}
    flow = "pq" + delivery.split("-")[1]
    out = tmp_path / "parquet"
    began = time.monotonic()
    engine = await run_flow(nc, parquet_flow(flow, out, delivery))
    # mid-file: some files in place, a journal being written
    # (the next journal opens with the next input after a file is rolled: wait for it)
    await wait_until(lambda: asyncio.sleep(0, len(finals(out)) >= 2 and bool(temps(out))),
                     timeout=30, what="two files in place and a journal being written")
    procs["a2"].kill()
    at_kill = read_seqs(out)  # what is in place now is whole (pyarrow reads every file)
    assert temps(out), "killed mid-file: a journal is left"
    await asyncio.sleep(0.5)
    procs["a2"] = agents("a2", heartbeat=HB)

    async def complete() -> bool:
        st = await statuses(nc, flow)
        gen = st.get(f"{flow}.gen.0")
        return (gen is not None and gen.state.value == "completed"
                and await _drained(nc, flow) and len(read_seqs(out)[0]) >= TOTAL)

    await wait_until(complete, timeout=45, what=f"all {TOTAL} rows in place")
    seqs_running, files_running = read_seqs(out)
    await engine.stop(flow)
    seqs, files = read_seqs(out)
    left = temps(out)
    print(f"\n{delivery}: {TOTAL:,} events at {RATE:,}/s, sink's agent kill -9'd with "
          f"{sum(at_kill[0].values()):,} rows in {at_kill[1]} file(s) in place: "
          f"{sum(seqs.values()):,} rows in {files} files, {len(seqs):,} distinct, "
          f"{sum(n - 1 for n in seqs.values())} repeats, temp files left {left}, "
          f"{time.monotonic() - began:.1f} s")
    said = [line for line in "\n".join(procs["a2"].output()).splitlines()
            if "parquet" in line or "resumed" in line or "deleted" in line]
    print("\n".join(said[-8:]))
    assert left == []
    assert set(seqs) == set(range(TOTAL))
    if delivery == "exactly-once":
        assert seqs == seqs_running and files == files_running  # the stop added nothing
        assert sum(seqs.values()) == TOTAL  # each row once
        assert all(p.name.split("-c")[-1].removesuffix(".parquet").isdigit()
                   for p in finals(out))


# ------------------------------------------------------------------ every crash point
# The commit protocol driven as the replica runner drives it (prepare_commit, commit,
# store the record, recover at the next start), with a crash (the instance abandoned,
# nothing more of it runs) injected at each point of a commit: the directory always
# ends with each row in exactly one complete file.


class Replica:
    """The runner's side: the bucket's record and the input position it keeps."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.bucket = directory, None
        self.serial, self.pos, self.sink = 0, 0, None

    async def start(self) -> None:
        ctx = Ctx()
        ctx.exactly_once, ctx.node = True, "out"
        self.sink = make("parquet", {"path": str(self.directory), "rows": 10}, ctx)
        loaded = self.bucket
        self.serial, self.pos = (loaded["serial"], loaded["pos"]) if loaded else (0, 0)
        if loaded is None:  # a first start: a commit before any output
            self.serial += 1
            self.bucket = {"serial": self.serial, "pos": 0, "sink": self.sink.initial_commit()}
        await self.sink.start()
        kept = await self.sink.recover(loaded["sink"] if loaded else None)
        if kept and kept["serial"] > self.serial:  # the sink's newer commit wins
            self.serial, self.pos = kept["serial"], kept["pos"]

    async def take(self, upto: int) -> None:
        """Inputs from the position up to ``upto`` (a replay after a restart included)."""
        for seq in range(self.pos, upto):
            await self.sink.process("in", {"seq": seq, "name": f"n{seq}"})
        self.pos = max(self.pos, upto)

    async def commit(self, store: bool = True) -> None:
        self.serial += 1
        prepared = self.sink.prepare_commit()
        record = {"serial": self.serial, "pos": self.pos, "sink": prepared}
        await self.sink.commit(prepared, record)
        if store:
            self.bucket = record

    def crash(self) -> None:
        """kill -9: nothing more of this instance runs (its open file is just closed)."""
        journal = self.sink._journal
        if journal is not None:
            journal.fh.flush()  # what prepare_commit flushed is in the OS already
            journal.fh.close()
        self.sink = None


async def _finish(replica: Replica, total: int) -> None:
    await replica.start()
    await replica.take(total)
    await replica.commit()
    await replica.sink.stop()


def _marker_fails(monkeypatch) -> None:
    from componentmanager.components.connectors import parquet_commit

    real_replace = parquet_commit.os.replace

    def marker_fails(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(parquet_commit.os, "replace", marker_fails)


@pytest.mark.parametrize("point", ["before the marker", "after the marker"])
async def test_a_crash_in_the_first_commit(tmp_path, monkeypatch, point) -> None:
    """The bucket holds only the replica's first commit (stored before any output): the
    files the crashed commit renamed are deleted, or kept with the marker's resume."""
    out, total = tmp_path / "pq", 57
    replica = Replica(out)
    await replica.start()
    await replica.take(25)  # 2 files complete, 5 rows in the open journal
    if point == "before the marker":
        _marker_fails(monkeypatch)
        with pytest.raises(OSError):
            await replica.commit()
        monkeypatch.undo()
    else:
        await replica.commit(store=False)  # the bucket write never happens
    assert len(finals(out)) == 2
    replica.crash()
    await _finish(replica, total)
    seqs, files = read_seqs(out)
    assert temps(out) == []
    assert sorted(seqs.elements()) == list(range(total)), point
    assert files == 6


@pytest.mark.parametrize("point", ["between renames", "before the marker",
                                   "after the marker", "after the stop's rename"])
async def test_a_crash_at_each_point_of_a_commit(tmp_path, monkeypatch, point) -> None:
    from componentmanager.components.connectors import parquet

    out, total = tmp_path / "pq", 97
    replica = Replica(out)
    await replica.start()
    await replica.take(15)  # 1 file complete, 5 rows in the open journal
    await replica.commit()
    await replica.take(42)  # 3 more complete (10..19, 20..29, 30..39), 2 rows open
    if point == "between renames":
        calls = []
        real = parquet.write_parquet

        def second_fails(*args):
            calls.append(args)
            if len(calls) == 2:
                raise OSError("killed")
            return real(*args)

        monkeypatch.setattr(parquet, "write_parquet", second_fails)
    elif point == "before the marker":
        _marker_fails(monkeypatch)
    if point == "after the stop's rename":
        await replica.commit()
        journal = replica.sink._journal.path
        kept = journal.read_bytes()
        await replica.sink.stop()  # in place under the last commit's serial
        journal.write_bytes(kept)  # ... and the crash came before the journal was deleted
    elif point == "after the marker":
        await replica.commit(store=False)  # the bucket write never happens
    else:
        with pytest.raises(OSError):
            await replica.commit()
        monkeypatch.undo()
        assert len(finals(out)) == (2 if point == "between renames" else 4)
    if replica.sink is not None:
        replica.crash()
    await _finish(replica, total)
    seqs, files = read_seqs(out)
    assert temps(out) == []
    assert sorted(seqs.elements()) == list(range(total)), point
    # 9 full, 1 of 7 rows (and the stop's file of 2 rows)
    assert files == (11 if point == "after the stop's rename" else 10)


# ------------------------------------------------------------------- schema and config


def test_config_needs_a_roll_and_valid_columns() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set rows, seconds or both"):
        validate("parquet", {"path": "x"})
    with pytest.raises(ValidationError, match="neither a type"):
        validate("parquet", {"path": "x", "rows": 5, "columns": {"a": "seq +"}})
    with pytest.raises(ValidationError):
        validate("parquet", {"path": "x", "rows": 5, "compression": "lzo"})
    assert validate("parquet", {"path": "x", "seconds": 0.5}).compression == "snappy"


async def test_schema_from_the_first_events_and_what_does_not_fit(tmp_path) -> None:
    from componentmanager.component import EventError

    ctx = Ctx()
    sink = make("parquet", {"path": str(tmp_path), "rows": 100}, ctx)
    await sink.start()
    first = [{"seq": 0, "name": "a", "score": None, "tags": ["x"]},
             {"seq": 1, "name": "b", "score": 2.5, "tags": []}]
    assert await sink.process_batch("in", first)
    await sink.process("in", {"seq": 2, "name": "c", "extra": True})  # extra: left out
    with pytest.raises(EventError, match="'seq' is int64: 'abc' does not fit"):
        await sink.process("in", {"seq": "abc"})
    assert not await sink.process_batch("in", [{"seq": 3}, {"seq": 4.5}])  # one by one
    await sink.process("in", {"seq": 3, "score": 1})  # an int in a float column: 1.0
    assert sink.held() == 4
    await sink.flush()
    assert sink.held() == 0 and ctx.written == 4
    assert finals(tmp_path) == []  # not complete yet: 4 of 100 rows
    await sink.stop()
    [path] = finals(tmp_path)
    table = pq.read_table(path)
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("seq", "int64"), ("name", "string"), ("score", "double"), ("tags", "string")]
    assert table.to_pylist()[3] == {"seq": 3, "name": None, "score": 1.0, "tags": None}
    assert table.column("tags").to_pylist()[:2] == ['["x"]', "[]"]
    assert any("extra are not in the schema" in m for m, _ in ctx.logs)
    assert temps(tmp_path) == []


async def test_typed_and_computed_columns(tmp_path) -> None:
    ctx = Ctx()
    sink = make("parquet", {"path": str(tmp_path), "rows": 2, "compression": "zstd",
                            "columns": {"seq": "int32", "at": "timestamp", "day": "date",
                                        "twice": "seq * 2", "ok": "bool"}}, ctx)
    await sink.start()
    await sink.process("in", {"seq": 1, "at": "2026-12-07T08:00:00Z", "day": "2026-12-07",
                              "ok": True, "other": 1})
    await sink.process("in", {"seq": 2, "at": 1796630400, "day": 20794, "ok": False})
    [path] = finals(tmp_path)  # full at 2 rows: in place at once
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = pq.read_table(path).to_pylist()
    assert [r["twice"] for r in rows] == [2, 4]
    assert str(rows[0]["at"]) == "2026-12-07 08:00:00+00:00"
    assert str(rows[0]["day"]) == "2026-12-07" and rows[1]["ok"] is False
    await sink.stop()
    assert temps(tmp_path) == [] and len(finals(tmp_path)) == 1
