"""Agents run programs and containers only when allowed (--allow-commands,
--allow-images); `flowctl run` allows them on your own machine unless --no-commands."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from componentmanager.runners.permits import refusal
from flowstore.models import ComponentConfig, ExternalFields
from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    Flowctl,
    cli_processes_cleaned_up,
    flowctl,
    ok,
    wait_for,
)


def cfg(**external: str) -> ComponentConfig:
    fields = ExternalFields(**external)
    return ComponentConfig(flow="f", node="n", type="x", kind=fields.kind, queue="q",
                           external=fields)


def test_refusal_is_by_glob_on_the_executable_or_the_image() -> None:
    program, image = cfg(command="python3"), cfg(image="myorg/worker:1.2")
    assert "--allow-commands 'python3'" in (refusal(program, (), ()) or "")
    assert refusal(program, ("python3",), ()) is None
    assert refusal(program, ("*",), ()) is None
    assert refusal(program, ("python*",), ()) is None
    assert refusal(program, ("/usr/bin/*", "/usr/local/bin/*", "*/python3"), ()) is None
    assert refusal(program, ("node",), ("*",)) is not None  # images are another permit
    assert "--allow-images" in (refusal(image, ("*",), ()) or "")
    assert refusal(image, (), ("myorg/*",)) is None
    assert refusal(image, (), ("other/*",)) is not None
    assert refusal(cfg(), (), ()) is None  # in-process components always run


FLOW = textwrap.dedent(f"""\
    apiVersion: flowctl/v1
    kind: Flow
    metadata: {{name: programs}}
    spec:
      sources:
        - {{id: gen, type: generate, config: {{count: 3}}}}
      sinks:
        - {{id: out, command: {sys.executable}, args: [-c, "import time; time.sleep(30)"],
            inputs: [gen]}}
    """)


def test_an_agent_without_permits_refuses_programs(nats_url: str, tmp_path: Path) -> None:
    flow = tmp_path / "programs.yaml"
    flow.write_text(FLOW)
    agent = Flowctl("agent", "--name", "strict", log_dir=tmp_path, nats_url=nats_url,
                    name="strict")
    try:
        agent.wait_output("agent started")
        ok(flowctl("up", "-f", str(flow), nats_url=nats_url))

        def refused() -> dict | None:
            status = json.loads(ok(flowctl("status", "programs", "-o", "json",
                                           nats_url=nats_url)).stdout)
            out = [r for r in status["replicas"] if r["node"] == "out"]
            return out[0] if out and out[0]["state"] == "failed" else None

        row = wait_for(refused, 20, "the program refused")
        assert "does not run the program" in row["last_error"]
        assert "--allow-commands" in row["last_error"]
        ok(flowctl("delete", "programs", "--force", nats_url=nats_url))
    finally:
        assert agent.stop() == 0, agent.err()[-2000:]
    run = flowctl("run", str(flow), "--until-done", "--no-commands", "--timeout", "30",
                  cwd=tmp_path, timeout=60)
    assert run.returncode == 1 and "does not run the program" in run.stderr
