"""Junk in every bucket (someone's `nats kv put`): every read command still answers and
lists the good records, saying which keys it skipped; an agent whose own record was
overwritten puts it back on its next heartbeat; a junked status key moves nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from flowstore import AgentRecord
from flowstore.nats import (
    AGENTS_BUCKET,
    CONFIG_BUCKET,
    FLOWS_BUCKET,
    STATUS_BUCKET,
    open_bucket,
)
from tests.agents import wait_until
from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    EXAMPLES,
    Flowctl,
    cli_agent_fixture,
    cli_processes_cleaned_up,
    flowctl,
    many,
    ok,
)


async def test_junk_in_every_bucket(nc, nats_url: str, tmp_path: Path,
                                    cli_agent: Callable[..., Flowctl]) -> None:
    agent = cli_agent("good-agent")
    ok(flowctl("up", "-f", str(EXAMPLES / "hello.yaml"), nats_url=nats_url))
    junk = {FLOWS_BUCKET: "broken", CONFIG_BUCKET: "hello.nope", STATUS_BUCKET: "hello.out.0",
            AGENTS_BUCKET: "ghost"}
    for bucket, key in junk.items():
        kv = await open_bucket(nc, bucket)
        await kv.put(key, b"this is not json")

    listed, got, status, agents, described, history = many(
        ["list", "-o", "json"], ["get"], ["status"], ["agents", "-o", "json"],
        ["describe", "hello", "-o", "json"], ["history", "hello"], nats_url=nats_url)
    assert [f["metadata"]["name"] for f in json.loads(ok(listed).stdout)] == ["hello"]
    assert "skipped flowctl_flows key 'broken': not a flowctl record (not JSON)" in \
        listed.stderr
    assert "hello" in ok(got).stdout
    assert "flow/hello" in ok(status).stdout and "Traceback" not in status.stderr
    assert [a["name"] for a in json.loads(ok(agents).stdout)] == ["good-agent"]
    assert "'ghost'" in agents.stderr
    assert json.loads(ok(described).stdout)["flow"]["name"] == "hello"
    ok(history)
    broken = flowctl("get", "broken", nats_url=nats_url)
    assert broken.returncode == 1 and "nats kv del flowctl_flows broken" in broken.stderr

    # The agent takes its own record back; the junked status key moved nothing.
    agents_kv = await open_bucket(nc, AGENTS_BUCKET)
    await agents_kv.put("good-agent", b"{\"oops\": 1}")

    async def repaired() -> bool:
        record, _ = AgentRecord.parse((await agents_kv.get("good-agent")).value)
        return record is not None and record.is_live()

    await wait_until(repaired, timeout=10, what="the agent's record rewritten")
    from flowstore import read_all

    statuses = await read_all(await open_bucket(nc, STATUS_BUCKET), "hello.>")
    assert "reassigned" not in agent.err()  # junk over its record moved nothing
    assert {json.loads(e.value).get("agent") for k, e in statuses.items()
            if k != "hello.nope.0"} == {"good-agent"}  # the junk status was written anew
    nope = json.loads(statuses["hello.nope.0"].value)  # a junk config is reported
    assert nope["state"] == "failed" and "invalid config record" in nope["last_error"]
