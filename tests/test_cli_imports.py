"""The reading commands stay fast: they import only what they use.

A profile of `flowctl list` once showed about 0.55 s importing the component library, the
engine's validator and structlog, none of which a reading command needs. Timing a command
in a test would be flaky on a busy machine, so these tests check the cause instead: the
modules a command leaves in ``sys.modules``, in a fresh interpreter, against a real
nats-server. `python benchmarks/cli_latency.py` prints the times themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.programs.cli_helpers import EXAMPLES, ROOT, cli_env, flowctl, ok

#: What a reading command must not import: the component library (and the connectors'
#: client libraries behind it), the validator, the flow file loader, structlog.
NOT_FOR_READERS = ("componentmanager.components", "flowengine.validate", "flowstore.loader",
                   "structlog", "psycopg", "pyarrow")

#: Runs ``flowctl ARGS`` in this interpreter, then prints the modules it imported.
PROBE = """\
import json, sys
sys.argv = ["flowctl", *json.loads(sys.argv[1])]
from cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def imported_by(*args: str) -> set[str]:
    """The modules `flowctl ARGS` imported (it must exit 0)."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=cli_env())
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr
    return set(report["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in NOT_FOR_READERS
                  or any(m == h or m.startswith(h + ".") for h in NOT_FOR_READERS))


def test_importing_the_cli_loads_no_component_library_nor_validator() -> None:
    modules = imported_by("--help")
    assert heavy(modules) == []
    assert {"cli.embedded", "cli.agent", "cli.files"} <= modules  # help lists every command
    assert "rich.markdown" not in modules  # the help is plain text, not rendered by rich


def test_reading_commands_import_only_what_they_read(nats_url: str) -> None:
    ok(flowctl("--nats-url", nats_url, "apply", "-f", str(EXAMPLES / "hello.yaml")))
    for command in (["list"], ["get", "hello"], ["status", "hello"], ["agents"],
                    ["describe", "hello"], ["history", "hello"]):
        modules = imported_by("--nats-url", nats_url, *command)
        assert "flowengine.lifecycle" in modules  # it did read the flows
        # describe shows the fusion plan, which asks the registry which types are
        # stateless (the component library); the others read records only
        allowed = ({"componentmanager.components", "structlog"} if command[0] == "describe"
                   else set())
        assert [m for m in heavy(modules)
                if not any(m == a or m.startswith(a + ".") for a in allowed)] == [], command
        others = {"cli.agent", "cli.embedded", "cli.dev", "cli.files", "cli.ui"} & modules
        assert others == set(), f"{command}: the other commands' modules {others}"


def test_the_subcommand_is_found_past_global_options() -> None:
    from cli.argv import hoist_globals, subcommand

    assert subcommand(hoist_globals(["status", "--nats-url", "nats://x:1", "hello"])) == "status"
    assert subcommand(hoist_globals(["-o", "json", "--nats-url=nats://x:1", "list"])) == "list"
    assert subcommand(["--log-json", "--kv-replicas", "3", "agents", "-o", "wide"]) == "agents"
    assert subcommand(["--nats-url", "nats://x:1"]) is None
