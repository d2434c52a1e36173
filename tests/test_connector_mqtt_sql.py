"""End to end, nothing mocked: a real mosquitto -> ``mqtt`` source -> transform -> ``sql``
sink into a real PostgreSQL, ``delivery: exactly-once``, on real agents. 6,000 messages
are published at QoS 1 (paced) while the agent holding the sql sink is ``kill -9``'d
mid-flow and restarted under its name: exactly 6,000 rows, 6,000 distinct, and the
sink's status counts 6,000 out.

The broker session of the source (a fixed client id, ``clean_session: false``) is made
and subscribed before the flow starts, so the broker queues every message for it from
the first one on: no probe message is needed to know the source is subscribed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator

import aiomqtt
import pytest

from tests.agents import all_in_state, flow_yaml, run_flow, statuses, wait_until
from tests.mqtt_broker import Mosquitto
from tests.sql_servers import postgres_fixture  # noqa: F401  (the postgres fixture)
from tests.test_failover import HB

pytestmark = pytest.mark.skipif(not Mosquitto.available(), reason="mosquitto not installed")

TOTAL = 6000
RATE = 1500  # messages per second published
CLIENT_ID = "flowctl-e2e-source"


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    broker = Mosquitto().start()
    try:
        yield broker
    finally:
        broker.close()


async def make_session(broker: Mosquitto) -> None:
    """The source's persistent session, subscribed: the broker queues for it from now on."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=CLIENT_ID,
                              clean_session=False) as client:
        await client.subscribe("dev/#", qos=1)


async def publish(broker: Mosquitto, total: int, rate: float, window: int = 50) -> None:
    """``total`` JSON messages at QoS 1 (each acked by the broker), paced to ``rate``/s."""
    began = time.monotonic()
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier="e2e-publisher")
    client.pending_calls_threshold = window + 1
    async with client:
        for start in range(0, total, window):
            ns = range(start, min(total, start + window))
            await asyncio.gather(*(client.publish(
                f"dev/d{n % 5}", json.dumps({"n": n, "temp": 20 + n % 7}).encode(), qos=1)
                for n in ns))
            ahead = began + ns[-1] / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


def e2e_flow(broker: Mosquitto, url: str) -> str:
    return flow_yaml("mqsql", f"""\
  sources:
    - id: mq
      type: mqtt
      config: {{url: "{broker.url}", topic: "dev/#", qos: 1, client_id: {CLIENT_ID}}}
      placement: {{agent: s1}}
  processors:
    - id: work
      type: transform
      inputs: [mq]
      config: {{set: {{label: "'m-' + str(n)", warm: "temp * 2"}}}}
      placement: {{agent: s1}}
  sinks:
    - id: db
      type: sql
      inputs: [work]
      placement: {{agent: k1}}
      config:
        url: "{url}"
        table: mq_rows
        init:
          - CREATE TABLE IF NOT EXISTS mq_rows (n int NOT NULL, label text NOT NULL,
            warm int, topic text)
        columns: {{n: n, label: label, warm: warm, topic: topic}}
""", delivery="exactly-once")


async def test_mqtt_to_postgres_exactly_once_through_a_kill9(nc, agents, mosquitto,
                                                            postgres) -> None:
    """6,000 QoS 1 messages -> mqtt (agent s1) -> transform -> sql sink (agent k1,
    exactly-once); k1 kill -9'd mid-flow and restarted: 6,000 rows, 6,000 distinct, the
    sink's out is 6,000."""
    began = time.monotonic()
    await make_session(mosquitto)
    agents("s1", heartbeat=HB)
    procs = {"k1": agents("k1", heartbeat=HB)}
    await run_flow(nc, e2e_flow(mosquitto, postgres.url))
    await wait_until(lambda: all_in_state(nc, "mqsql", ["mqsql.mq.0", "mqsql.work.0",
                                                        "mqsql.db.0"], "running"),
                     timeout=30, what="the flow running")

    def rows() -> int:
        try:
            return postgres.query("SELECT count(*) FROM mq_rows")[0][0]
        except Exception:
            return 0

    publishing = asyncio.create_task(publish(mosquitto, TOTAL, RATE))
    try:
        await wait_until(lambda: asyncio.sleep(0, rows() >= 1200), timeout=20,
                         what="rows committed")
        procs["k1"].proc.kill()  # kill -9 of the agent holding the sql sink
        procs["k1"].proc.wait()
        killed_at = rows()
        assert killed_at < TOTAL - 500, "too late: no longer mid-flow"
        await asyncio.sleep(0.5)
        procs["k1"] = agents("k1", heartbeat=HB)
    finally:
        await publishing
    published = time.monotonic()

    async def complete() -> bool:
        db = (await statuses(nc, "mqsql")).get("mqsql.db.0")
        return db is not None and db.counters.out >= TOTAL and rows() >= TOTAL

    try:
        await wait_until(complete, timeout=30, what=f"all {TOTAL} rows")
    except AssertionError:
        print({k: (v.state, v.reason, v.last_error, v.counters) for k, v in
               (await statuses(nc, "mqsql")).items()}, rows())
        print(procs["k1"].output()[1][-3000:])
        raise
    await asyncio.sleep(1.5)  # a repeat, if any, would be committed by now
    ns = collections.Counter(n for (n,) in postgres.query("SELECT n FROM mq_rows"))
    st = (await statuses(nc, "mqsql"))["mqsql.db.0"]
    print(f"\nMQTT -> transform -> PostgreSQL exactly-once: kill -9 of the sink's agent at "
          f"{killed_at:,} rows; {sum(ns.values()):,} rows, {len(ns):,} distinct; sink "
          f"in/out/errors {st.counters.in_}/{st.counters.out}/{st.counters.errors}; the last "
          f"row {time.monotonic() - published:.1f} s after the publisher finished; "
          f"{time.monotonic() - began:.1f} s in all")
    assert sum(ns.values()) == len(ns) == TOTAL
    assert set(ns) == set(range(TOTAL))
    assert st.counters.out == TOTAL and st.counters.errors == 0
    assert postgres.query("SELECT label, warm, topic FROM mq_rows WHERE n = 7") == [
        ("m-7", 40, "dev/d2")]
