"""Where a running `flowctl run` records its server: the newest living run is found, a
record whose process is gone (or whose pid was reused) is ignored and removed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.runrecord import RunRecord, choose, find_run, remove_record, run_dir, write_record


def test_the_newest_living_run_is_chosen() -> None:
    old, new, dead = (RunRecord(1, 1.0, "nats://a", "f", "run"),
                      RunRecord(2, 2.0, "nats://b", "g", "dev"),
                      RunRecord(3, 3.0, "nats://c", "h", "run"))
    assert choose([old, new, dead], lambda r: r.pid != 3) == (new, 2, [dead])
    assert choose([dead], lambda r: False) == (None, 0, [dead])


def test_a_record_is_written_found_and_removed(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert run_dir() == tmp_path / "flowctl" / "runs" and find_run() == (None, 0)
    path = write_record("nats://127.0.0.1:4333", "demo", "run")
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    (run_dir() / "1.json").write_text(json.dumps(  # pid 1 lives, but it started long ago
        {"pid": 1, "create_time": 0.0, "url": "nats://x", "flow": "x", "command": "run"}))
    (run_dir() / "junk.json").write_text("{")
    found, living = find_run()
    assert found is not None and (found.pid, found.url, living) == (os.getpid(),
                                                                    "nats://127.0.0.1:4333", 1)
    assert sorted(p.name for p in run_dir().iterdir()) == [f"{os.getpid()}.json"]
    remove_record(path)
    assert find_run() == (None, 0)
