"""`flowctl dev`, the inner loop, as the real executable: an edited module or flow file is
re-applied live (only changed nodes restart), a broken one is shown with its line while
the last good version keeps running, and Ctrl+C leaves nothing behind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    Flowctl,
    cli_processes_cleaned_up,
    json_lines,
    wait_for,
)

FLOW = textwrap.dedent("""\
    apiVersion: flowctl/v1
    kind: Flow
    metadata: {name: inner}
    spec:
      sources:
        - {id: ticks, type: generate, config: {rate: 20, template: {n: 1}}}
      processors:
        - {id: mark, type: python, inputs: [ticks], config: {function: "marks:mark"}}
      sinks:
        - {id: out, type: stdout, inputs: [mark]}
    """)


def marks(version: str) -> str:
    return f"def mark(event):\n    event['version'] = {version!r}\n    return event\n"


def events_with(dev: Flowctl, key: str, value: object, n: int = 3) -> None:
    def seen() -> bool:
        matching = [e for e in json_lines(dev.out()) if e.get(key) == value]
        return len(matching) >= n

    wait_for(seen, 30, f"{n} events with {key}={value!r}")


def test_dev_reapplies_on_save_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "marks.py").write_text(marks("one"))
    dev = Flowctl("dev", "flow.yaml", log_dir=tmp_path / "logs", cwd=tmp_path, name="dev")
    try:
        events_with(dev, "version", "one")
        (tmp_path / "marks.py").write_text(marks("two"))  # an edited module
        dev.wait_output("marks.py changed: flow/inner configured")
        events_with(dev, "version", "two")

        (tmp_path / "marks.py").write_text("def mark(event:\n")  # a syntax error
        dev.wait_output("marks.py, line 1")
        count = len(json_lines(dev.out()))
        wait_for(lambda: len(json_lines(dev.out())) > count + 5, 20, "events still flowing")
        assert json_lines(dev.out())[-1]["version"] == "two"  # the last good version

        (tmp_path / "marks.py").write_text(marks("three"))
        (tmp_path / "flow.yaml").write_text(FLOW.replace("n: 1", "n: 2"))  # both at once
        events_with(dev, "n", 2)
        assert json_lines(dev.out())[-1]["version"] == "three"

        (tmp_path / "flow.yaml").write_text(FLOW.replace("type: stdout", "type: stdot"))
        dev.wait_output("did you mean 'stdout'")
        count = len(json_lines(dev.out()))
        wait_for(lambda: len(json_lines(dev.out())) > count + 5, 20, "events still flowing")

        dev.interrupt(group=True)
        assert dev.wait(30) == 130, dev.err()
    finally:
        if dev.proc.poll() is None:
            dev.kill()
    assert "flow/inner stopped, undeployed and deleted" in dev.err()
    assert "Traceback" not in dev.err()
    assert all(json.loads(line) for line in dev.out().splitlines())
    dev.assert_no_leftovers()
