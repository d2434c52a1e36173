"""Errors are errors: a filter or transform on a missing or mistyped field fails that
event (counted in errors, dead-lettered with the reason, shown as the last error), and a
filter's "no" is counted in filtered. A real agent process and nats-server."""

from __future__ import annotations

import asyncio

from flowstore.models import dlq_subject
from tests.agents import flow_yaml, live_agent, run_flow, statuses, wait_until

BODY = """\
  sources:
    - id: gen
      type: generate
      config: {count: 6, template: {amount: 70, n: "str"}}
  processors:
    - id: typo
      type: filter
      inputs: [gen]
      config: {where: "amont > 50"}
    - id: keep
      type: filter
      inputs: [gen]
      config: {where: "seq < 2"}
    - id: calc
      type: transform
      inputs: [gen]
      config: {set: {double: "n * 2"}}
  sinks:
    - id: out
      type: file
      inputs: [typo, keep, calc]
      config: {path: "/dev/null"}
"""


async def test_missing_and_mistyped_fields_fail_events(nc, agents) -> None:
    agent = agents("acc")
    await wait_until(lambda: live_agent(nc, "acc"), what="agent")
    letters: dict[str, list[str]] = {"typo": [], "calc": []}

    def collect(node: str):  # type: ignore[no-untyped-def]
        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            letters[node].append((msg.headers or {}).get("Flowctl-Error", ""))
        return on_msg

    for node in letters:
        await nc.subscribe(dlq_subject("acct", node), cb=collect(node))
    await run_flow(nc, flow_yaml("acct", BODY))

    async def counted() -> bool:
        st = await statuses(nc, "acct")
        return all(k in st and st[k].counters.in_ == 6 for k in
                   ("acct.typo.0", "acct.keep.0", "acct.calc.0"))

    await wait_until(counted, what="every node took the 6 events")
    await asyncio.sleep(0.5)
    st = await statuses(nc, "acct")
    typo, keep, calc = (st[f"acct.{n}.0"] for n in ("typo", "keep", "calc"))
    assert (typo.counters.errors, typo.counters.filtered, typo.counters.out) == (6, 0, 0)
    assert "field 'amont' is not in the event" in (typo.last_error or "")
    assert (calc.counters.errors, calc.counters.out) == (6, 0)
    assert "'*' needs two numbers, got string and number" in (calc.last_error or "")
    assert (keep.counters.errors, keep.counters.filtered, keep.counters.out) == (0, 4, 2)
    assert len(letters["typo"]) == 6 and all(
        "field 'amont' is not in the event" in reason for reason in letters["typo"])
    assert len(letters["calc"]) == 6 and all("needs two numbers" in r for r in letters["calc"])
    _, err = agent.output()
    assert err.count("event failed") == 2, "identical failures: one line per interval"
