"""Inline Python and the one-command run, as a user drives the real executable: the short
form with `flowctl run --until-done` and `flowctl dev` (an edited sink reloads), program
output in run's terminal, and the running run found by `flowctl list` without a URL."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    EXAMPLES,
    RUN_RECORDS,
    Flowctl,
    cli_processes_cleaned_up,
    flowctl,
    json_lines,
    wait_for,
)

TICKING = textwrap.dedent("""\
    source:
      type: custom
      code: |
        import asyncio
        async def events():
            n = 0
            while True:
                yield {"n": n}
                n += 1
                await asyncio.sleep(0.05)
    sink:
      type: custom
      code: |
        import json
        VERSION = "one"
        def write(event):
            print(json.dumps({**event, "version": VERSION}), flush=True)
    """)


def ticking(version: str) -> str:
    return TICKING.replace('VERSION = "one"', f"VERSION = {version!r}")


def test_the_short_form_runs_until_done() -> None:
    result = flowctl("run", str(EXAMPLES / "inline-short.yaml"), "--until-done",
                     timeout=60)
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [{"data": "HELLO"}]
    assert "flow/inline-short created" in result.stderr


def test_dev_reloads_an_edited_inline_sink(tmp_path: Path) -> None:
    (tmp_path / "ticks.yaml").write_text(ticking("one"))
    dev = Flowctl("dev", "ticks.yaml", log_dir=tmp_path / "logs", cwd=tmp_path, name="dev")
    try:
        wait_for(lambda: any(e.get("version") == "one" for e in json_lines(dev.out())), 30,
                 "events written by the first sink")
        (tmp_path / "ticks.yaml").write_text(ticking("two"))
        dev.wait_output("ticks.yaml changed: flow/ticks configured")
        wait_for(lambda: any(e.get("version") == "two" for e in json_lines(dev.out())), 30,
                 "events written by the edited sink")
        (tmp_path / "ticks.yaml").write_text(ticking("two").replace("def write(", "def write(("))
        dev.wait_output("sink.code")  # located: the path the file has, and its line
        dev.interrupt(group=True)
        assert dev.wait(30) == 130, dev.err()
    finally:
        if dev.proc.poll() is None:
            dev.kill()
    assert "Traceback" not in dev.err()
    dev.assert_no_leftovers()


PROGRAM = textwrap.dedent("""\
    name: talkative
    source:
      command: [python3, -c, "import sys, time; print('hello from a program', flush=True);
                print('a warning', file=sys.stderr, flush=True); time.sleep(60)"]
    sink:
      type: stdout
    """)


def test_list_finds_the_running_run_and_program_output_is_prefixed(tmp_path: Path) -> None:
    stale = Path(RUN_RECORDS) / "flowctl" / "runs" / "999999999.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps({"pid": 999999999, "create_time": 1.0, "url":
                                 "nats://127.0.0.1:1", "flow": "gone", "command": "run"}))
    (tmp_path / "talk.yaml").write_text(PROGRAM)
    run = Flowctl("run", "talk.yaml", log_dir=tmp_path / "logs", cwd=tmp_path, name="run")
    try:
        run.wait_output("[source.0] hello from a program", 30)
        run.wait_output("[source.0] a warning")
        listed = flowctl("list", "-o", "json")  # no --nats-url, no NATS_URL
        assert listed.returncode == 0, listed.stderr
        assert [f["metadata"]["name"] for f in json.loads(listed.stdout)] == ["talkative"]
        assert f"`flowctl run` (pid {run.pid}, flow/talkative" in listed.stderr
        assert not stale.exists()  # its process is gone: ignored and removed
        status = flowctl("status", "talkative")
        assert status.returncode == 0 and "source" in status.stdout, status.stderr
        records = list(stale.parent.glob("*.json"))
        assert [r.name for r in records] == [f"{run.pid}.json"]
        assert os.stat(records[0]).st_mode & 0o077 == 0  # the user's alone
        run.interrupt(group=True)
        assert run.wait(30) == 130, run.err()
    finally:
        if run.proc.poll() is None:
            run.kill()
    assert run.out() == ""  # program output goes to the terminal's stderr, not the data
    assert not list(stale.parent.glob("*.json"))  # removed when the run ended


def test_quiet_hides_program_output(tmp_path: Path) -> None:
    (tmp_path / "talk.yaml").write_text(PROGRAM.replace("; time.sleep(60)", ""))
    quiet = flowctl("run", "-q", "talk.yaml", "--until-done", cwd=tmp_path, timeout=60)
    assert quiet.returncode == 0, quiet.stderr
    assert "hello from a program" not in quiet.stderr + quiet.stdout
    assert "a warning" not in quiet.stderr
