"""Every flow in examples/ runs with `flowctl run --until-done` (the real executable, in a
copy of examples/ as working directory) and produces exactly the expected sink output,
leaving no process behind. An example without a check here fails the suite.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.programs.cli_helpers import (  # noqa: F401  (an autouse fixture)
    EXAMPLES,
    Flowctl,
    cli_processes_cleaned_up,
    json_lines,
    many,
    ok,
    read_kv,
    table_rows,
    wait_for,
)
from tests.test_connector_sql import check_sqlite


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    assert path.exists(), f"{path} was not written"
    return json_lines(path.read_text())


def check_hello(run: Flowctl, workdir: Path) -> None:
    events = json_lines(run.out())
    assert [e["seq"] for e in events] == list(range(10))
    assert all(e["greeting"] == f"HELLO #{e['seq']}" and e["double"] == 2 * e["seq"]
               for e in events)


def check_route(run: Flowctl, workdir: Path) -> None:
    valid = [s for s in range(20) if s % 5]  # every fifth order is voided and dropped
    big = read_jsonl(workdir / "out" / "big-orders.jsonl")
    small = read_jsonl(workdir / "out" / "small-orders.jsonl")
    assert [e["seq"] for e in big] == [s for s in valid if (s * 37) % 100 >= 50]
    assert [e["seq"] for e in small] == [s for s in valid if (s * 37) % 100 < 50]
    assert all(e["status"] == "ok" and e["order"] == f"order-{e['seq']}" for e in big + small)
    assert run.out() == ""


def check_enrich(run: Flowctl, workdir: Path) -> None:
    events = json_lines(run.out())
    assert [e["seq"] for e in events] == [s for s in range(12) if s % 4 != 3]  # bots dropped
    tiers = ("bronze", "silver", "gold")
    for e in events:
        assert (e["tier"], e["score"]) == (tiers[e["seq"] % 3], e["seq"] ** 2)
        assert e["user"] == f"user-{e['seq'] % 3}"


def check_at_least_once(run: Flowctl, workdir: Path) -> None:
    events = read_jsonl(workdir / "out" / "readings.jsonl")
    assert sorted({e["seq"] for e in events}) == list(range(50))  # nothing lost
    for e in events:
        assert e["fahrenheit"] == e["celsius"] * 9 / 5 + 32


def check_two_agents(run: Flowctl, workdir: Path) -> None:
    events = read_jsonl(workdir / "out" / "stored.jsonl")
    assert [e["seq"] for e in events] == list(range(15))
    assert all(e["zone"] == "edge" and e["kw"] == 10 * e["seq"] for e in events)
    err = run.err()
    edge = next(line.split()[1] for line in err.splitlines() if line.endswith("(zone=edge)"))
    core = next(line.split()[1] for line in err.splitlines() if line.endswith("(zone=core)"))
    rows = table_rows(err, "NODE")  # the summary: NODE REPLICAS AGENTS STATE ...
    assert (rows["sensor"][2], rows["tag"][2], rows["store"][2]) == (edge, edge, core)


def check_window(run: Flowctl, workdir: Path) -> None:
    windows = read_jsonl(workdir / "out" / "clicks-per-user.jsonl")
    expected = {}
    for seq in range(600):  # what `stamp` makes of each click: 20 clicks a second
        key = (f"user-{seq % 3}", math.floor((1_700_000_000 + seq * 0.05) / 10) * 10)
        clicks, spent, biggest = expected.get(key, (0, 0, 0))
        expected[key] = (clicks + 1, spent + seq % 50, max(biggest, seq % 50))
    assert len(windows) == len(expected) == 9
    for w in windows:
        start = datetime.fromisoformat(w["start"]).timestamp()
        assert (w["clicks"], w["spent"], w["biggest"]) == expected[(w["key"], start)], w
    late = workdir / "out" / "late-clicks.jsonl"
    assert not late.exists() or late.read_text() == ""


def check_join(run: Flowctl, workdir: Path) -> None:
    paid = read_jsonl(workdir / "out" / "paid-orders.jsonl")
    assert sorted(p["key"] for p in paid) == list(range(25))
    assert all(p["orders"]["item"] == f"book-{p['key']}" and p["payments"]["paid"]
               for p in paid)
    unpaid = read_jsonl(workdir / "out" / "unpaid-orders.jsonl")
    assert sorted(u["key"] for u in unpaid) == list(range(25, 30))
    assert all(u["missing"] == ["payments"] for u in unpaid)


def check_partitions(run: Flowctl, workdir: Path) -> None:
    events = read_jsonl(workdir / "out" / "per-user.jsonl")
    assert sorted(e["seq"] for e in events) == list(range(300))
    for user in range(4):
        seqs = [e["seq"] for e in events if e["user"] == f"user-{user}"]
        assert seqs == sorted(seqs), f"user-{user} out of order"


def compose_events(run: Flowctl) -> list[dict[str, Any]]:
    prefix = "compose-demo "
    return json_lines("\n".join(line.removeprefix(prefix) for line in run.out().splitlines()
                                if line.startswith(prefix)))


def check_compose_flow(run: Flowctl, workdir: Path) -> None:
    events = compose_events(run)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["value"] == 10 * e["seq"] and e["zone"] == "b" for e in events)
    assert len([line for line in run.err().splitlines() if line.startswith("agent run-")]) == 3


def check_parquet(run: Flowctl, workdir: Path) -> None:
    import pyarrow.dataset as ds

    out = workdir / "out" / "orders"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert sorted(ds.dataset(out).to_table().column("seq").to_pylist()) == list(range(1000))


def check_inline_short(run: Flowctl, workdir: Path) -> None:
    assert json_lines(run.out()) == [{"data": "HELLO"}]


def check_custom(run: Flowctl, workdir: Path) -> None:
    squares = read_jsonl(workdir / "out" / "squares.jsonl")
    assert [(e["n"], e["square"]) for e in squares] == [(n, n * n) for n in range(5, 0, -1)]


CHECKS: dict[str, Callable[[Flowctl, Path], None]] = {
    "hello.yaml": check_hello,
    "route.yaml": check_route,
    "enrich.yaml": check_enrich,
    "at-least-once.yaml": check_at_least_once,
    "two-agents.yaml": check_two_agents,
    "window.yaml": check_window,
    "join.yaml": check_join,
    "partitions.yaml": check_partitions,
    "parquet.yaml": check_parquet,
    "sqlite.yaml": check_sqlite,
    "inline-short.yaml": check_inline_short,
    "custom.yaml": check_custom,
}
def ttp_events(workdir: Path) -> list[dict[str, Any]]:
    out = workdir / "ttp-output.jsonl"
    return json_lines(out.read_text()) if out.exists() else []


def check_ttp_pipeline(run: Flowctl, workdir: Path) -> None:
    ledgers = [e["ledger"] for e in ttp_events(workdir)]
    assert ledgers == list(range(ledgers[0], ledgers[0] + len(ledgers)))


# Flows that run until stopped: run them until they produced a few events, then Ctrl+C.
ENDLESS: dict[str, Callable[[Flowctl, Path], None]] = {
    "compose-flow.yaml": check_compose_flow,
    "ttp-pipeline.yaml": check_ttp_pipeline,
}
#: ... when they have: a few events seen; the options they run with
PRODUCED: dict[str, Callable[[Flowctl, Path], bool]] = {
    "compose-flow.yaml": lambda run, workdir: len(compose_events(run)) >= 3,
    "ttp-pipeline.yaml": lambda run, workdir: len(ttp_events(workdir)) >= 3,
}
OPTIONS = {"ttp-pipeline.yaml": ["--orchestrator", "process"]}


def test_every_example_is_checked_and_valid() -> None:
    files = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert files == sorted([*CHECKS, *ENDLESS]), "add a check for each example"
    for result in many(*(["validate", str(EXAMPLES / name)] for name in files[:2])):
        assert "valid (0 error(s)" in ok(result).stdout  # `flowctl run` validates the rest


@pytest.mark.parametrize("example", sorted(CHECKS))
def test_example_runs_until_done(example: str, tmp_path: Path) -> None:
    workdir = tmp_path / "examples"
    shutil.copytree(EXAMPLES, workdir, ignore=shutil.ignore_patterns("__pycache__", "out"))
    run = Flowctl("run", example, "--until-done", "--timeout", "60", log_dir=tmp_path,
                  cwd=workdir, name="run")
    wait_for(lambda: run.children_named("nats-server") or run.proc.poll() is not None, 15,
             "the embedded nats-server")
    assert run.wait(90) == 0, run.err()
    assert "Traceback" not in run.err()
    assert "stopped, undeployed and deleted" in run.err()
    assert run.descendant_names() == ["nats-server"]
    run.assert_no_leftovers()  # the nats-server included
    CHECKS[example](run, workdir)


@pytest.mark.parametrize("example", sorted(ENDLESS))
def test_endless_example_runs_until_ctrl_c(example: str, tmp_path: Path, nats_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "examples"
    shutil.copytree(EXAMPLES, workdir, ignore=shutil.ignore_patterns("__pycache__", "out"))
    shutil.copytree(EXAMPLES.parent / "tests" / "programs", tmp_path / "tests" / "programs",
                    ignore=shutil.ignore_patterns("__pycache__"))  # ttp-pipeline's programs
    monkeypatch.setenv("TTP_OUTPUT", str(workdir / "ttp-output.jsonl"))
    run = Flowctl("--nats-url", nats_url, "run", example, *OPTIONS.get(example, []),
                  log_dir=tmp_path, cwd=workdir, name="run")
    try:
        wait_for(lambda: PRODUCED[example](run, workdir) or run.proc.poll() is not None, 30,
                 "three events")
        run.interrupt(group=True)  # a terminal's Ctrl+C
        assert run.wait(30) == 130, run.err()
    finally:
        if run.proc.poll() is None:
            run.kill()
    assert "stopped, undeployed and deleted" in run.err()
    run.assert_no_leftovers()
    assert read_kv(nats_url, "flowctl_config") == {}
    ENDLESS[example](run, workdir)
