"""The ``mqtt`` source and sink against a real mosquitto (started per test on a free port,
see :mod:`tests.mqtt_broker`) and real agents: 2,000 QoS 1 messages into a file; a
payload that is not JSON; a flow publishing to templated topics; the agent holding the
source ``kill -9``'d and restarted while messages are published (its persistent session
gets what came meanwhile: nothing lost); a broker that is not there at start; config
errors and the exactly-once refusal of the sink.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from flowengine.validate import validate
from flowstore import parse_flow
from flowstore.models import stream_name
from tests.agents import flow_yaml, live_agent, read_lines, run_flow, statuses, wait_until
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.skipif(not Mosquitto.available(), reason="mosquitto not installed")


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    broker = Mosquitto().start()
    try:
        yield broker
    finally:
        broker.close()


async def publish(broker: Mosquitto, messages: list[tuple[str, bytes]], qos: int = 1,
                  rate: float | None = None, window: int = 100,
                  auth: tuple[str, str] | None = None) -> None:
    """Publish ``messages`` (topic, payload) at ``qos``, acked by the broker, pipelined
    ``window`` at a time, paced to ``rate`` per second when given."""
    began = time.monotonic()
    user, password = auth or (None, None)
    tls = ssl.create_default_context(cafile=str(broker.cert)) if broker.cert else None
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier="test-publisher",
                            username=user, password=password, tls_context=tls)
    client.pending_calls_threshold = window + 1  # (a warning per publish beyond 50)
    async with client:
        for start in range(0, len(messages), window):
            chunk = messages[start:start + window]
            await asyncio.gather(*(client.publish(t, p, qos=qos) for t, p in chunk))
            if rate is not None:
                ahead = began + (start + len(chunk)) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)


def source_flow(name: str, broker: Mosquitto, out: Path, topic: str = "dev/#",
                placed: bool = False, extra: str = "",
                delivery: str = "at-least-once") -> str:
    """mqtt -> file; ``placed``: the source on agent a1, the file sink on a2."""
    source, sink = ("\n      placement: {agent: a1}", "\n      placement: {agent: a2}") \
        if placed else ("", "")
    return flow_yaml(name, f"""\
  sources:
    - id: mq
      type: mqtt
      config: {{url: "{broker.url}", topic: "{topic}", qos: 1{extra}}}{source}
  sinks:
    - id: out
      type: file
      inputs: [mq]
      config: {{path: "{out}"}}{sink}
""", delivery=delivery)


async def subscribed(broker: Mosquitto, out: Path, auth: tuple[str, str] | None = None) -> None:
    """Publish a non-JSON probe until the source's session passes one on (it is then
    subscribed: what follows is queued for it even while it is away)."""
    async def seen() -> bool:
        await publish(broker, [("dev/text", b"hello, not json")], auth=auth)
        await asyncio.sleep(0.2)
        return any('"hello, not json"' in line for line in read_lines(out))

    await wait_until(seen, timeout=30, what="the mqtt source subscribed")


def numbers(out: Path) -> collections.Counter[int]:
    return collections.Counter(json.loads(line)["n"] for line in read_lines(out)
                               if '"n":' in line)


def readings(first: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"dev/d{n % 5}", json.dumps({"n": n, "temp": 20 + n % 7}).encode())
            for n in range(first, first + count)]


async def test_2000_qos1_messages_reach_a_file_and_text_becomes_payload(
        nc, agents, mosquitto, tmp_path) -> None:
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
    out = tmp_path / "out.jsonl"
    await run_flow(nc, source_flow("mq1", mosquitto, out))
    await subscribed(mosquitto, out)
    began = time.monotonic()
    await publish(mosquitto, readings(0, 2000))
    await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 2000), timeout=30,
                     what="2,000 events in the file")
    seconds = time.monotonic() - began
    await asyncio.sleep(0.5)
    seen = numbers(out)
    lines = [json.loads(line) for line in read_lines(out)]
    print(f"\n2,000 QoS 1 messages -> mqtt source -> file in {seconds:.2f} s; "
          f"{sum(seen.values())} lines with n, {len(seen)} distinct")
    assert sorted(seen) == list(range(2000)) and sum(seen.values()) == 2000
    assert {"n": 7, "temp": 20, "topic": "dev/d2"} in lines
    text = [e for e in lines if "payload" in e]
    assert text and all(e == {"payload": "hello, not json", "topic": "dev/text"} for e in text)
    st = (await statuses(nc, "mq1"))["mq1.mq.0"]
    assert st.state.value == "running" and st.counters.out == len(lines)


@pytest.mark.parametrize(("protocol", "delivery"), [
    ("3.1.1", "at-least-once"), ("5", "at-least-once"), ("3.1.1", "exactly-once")])
async def test_the_agent_killed_and_restarted_loses_nothing(nc, agents, mosquitto, tmp_path,
                                                           protocol, delivery) -> None:
    """The agent holding the source (a1; the file sink is on a2) is kill -9'd while
    messages are published at QoS 1, and restarted under its name: the broker kept its
    session's messages (and those it had not acked: stored or not), so every one arrives;
    repeats are allowed (at most the ones stored but not acked yet). Exactly-once: a
    message is acked only once the source's checkpoint holds it and the broker sends the
    others again in their order, under the ids they had (acking on storage alone loses
    events here); a repeat remains possible where an ack was on its way at the kill
    (the broker sends that message again too, and the ids after it shift: 0 in 4 runs,
    13 in 1)."""
    total = 3000
    agent = agents("a1")
    agents("a2")
    for name in ("a1", "a2"):
        await wait_until(lambda n=name: live_agent(nc, n), what=f"agent {name}")
    out = tmp_path / "out.jsonl"
    await run_flow(nc, source_flow("mq2", mosquitto, out, placed=True,
                                   extra=f', protocol: "{protocol}"', delivery=delivery))
    await subscribed(mosquitto, out)
    publishing = asyncio.create_task(publish(mosquitto, readings(0, total), rate=1000,
                                             window=20))
    await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 500), timeout=20,
                     what="events flowing")
    agent.proc.kill()
    agent.proc.wait()
    at_kill = len(numbers(out))
    await asyncio.sleep(1.0)
    agents("a1")
    await publishing
    began = time.monotonic()
    await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= total), timeout=40,
                     what=f"all {total} events after the restart")
    seen = numbers(out)
    print(f"\nMQTT {protocol}, {delivery}: kill -9 at {at_kill:,} of {total:,}: after the restart "
          f"{len(seen):,} distinct "
          f"in {sum(seen.values()):,} lines ({sum(n - 1 for n in seen.values())} repeats), "
          f"the last {time.monotonic() - began:.1f} s after the publisher finished")
    assert sorted(seen) == list(range(total))


async def test_messages_not_stored_are_not_acked(nc, agents, mosquitto, tmp_path) -> None:
    """The flow's stream refuses every message (its max_msg_size cut to 16 bytes): what the
    source takes meanwhile is not stored, so it must not be acked; the agent is kill -9'd,
    the stream put right, the agent restarted: the broker delivers those messages again,
    nothing is lost (a client acking on receipt loses its in-flight window here)."""
    total = 1000
    agent = agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
    out = tmp_path / "out.jsonl"
    await run_flow(nc, source_flow("mq4", mosquitto, out))
    await subscribed(mosquitto, out)
    await publish(mosquitto, readings(0, 300))
    await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 300), timeout=20,
                     what="the first 300")
    js = nc.jetstream()
    config = (await js.stream_info(stream_name("mq4"))).config
    size, config.max_msg_size = config.max_msg_size, 16
    await js.update_stream(config)
    await publish(mosquitto, readings(300, total - 300))  # the broker has them all

    async def refused() -> str | None:
        st = (await statuses(nc, "mq4")).get("mq4.mq.0")
        return st.reason if st is not None and "refuses" in (st.reason or "") else None

    reason = await wait_until(refused, timeout=10, what="the source held up by the stream")
    agent.proc.kill()
    agent.proc.wait()
    config.max_msg_size = size
    await js.update_stream(config)
    agents("a1")
    await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= total), timeout=40,
                     what=f"all {total} after the restart")
    seen = numbers(out)
    print(f"\nstream refusing ({reason}), agent kill -9'd, restarted: {len(seen):,} "
          f"distinct of {total:,} in {sum(seen.values()):,} lines")
    assert sorted(seen) == list(range(total))


async def test_a_flow_publishes_to_templated_topics(nc, agents, mosquitto, tmp_path) -> None:
    got: list[tuple[str, dict]] = []
    ready = asyncio.Event()

    async def subscriber() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-sub") as c:
            await c.subscribe("out/#", qos=1)
            ready.set()
            async for message in c.messages:
                got.append((message.topic.value, json.loads(message.payload)))

    task = asyncio.create_task(subscriber())
    await asyncio.wait_for(ready.wait(), 10)
    agents("a1")
    await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
    await run_flow(nc, flow_yaml("mqout", f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: 300, template: {{device: "dev{{seq}}"}}}}
  sinks:
    - id: pub
      type: mqtt
      inputs: [gen]
      config: {{url: "{mosquitto.url}", topic: "out/{{seq % 3}}/{{device}}", qos: 1}}
""", delivery="at-least-once"))
    try:
        await wait_until(lambda: asyncio.sleep(0, len(got) >= 300), timeout=20,
                         what="300 messages at the subscriber")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(got) == 300
    assert ("out/2/dev5", {"device": "dev5", "seq": 5}) in got
    assert all(topic == f"out/{e['seq'] % 3}/dev{e['seq']}" for topic, e in got)

    async def counted() -> int:
        st = (await statuses(nc, "mqout")).get("mqout.pub.0")
        return st is not None and st.counters.out == 300

    await wait_until(counted, timeout=10, what="the sink's out counter at 300")


async def test_the_sink_waits_out_a_broker_restart(nc, agents, mosquitto, tmp_path) -> None:
    """mosquitto stopped 2 s mid-flow and started again (its store keeps the subscriber's
    session): the sink says it waits, publishes again, and every event arrives."""
    total, got = 1500, collections.Counter()

    async def subscriber(ready: asyncio.Event) -> None:
        while True:  # a persistent session, back after the broker's restart
            try:
                async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-sub",
                                          clean_session=False) as c:
                    await c.subscribe("out/#", qos=1)
                    ready.set()
                    async for message in c.messages:
                        got[json.loads(message.payload)["seq"]] += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    ready = asyncio.Event()
    task = asyncio.create_task(subscriber(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        agents("a1")
        await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
        await run_flow(nc, flow_yaml("mqsink", f"""\
  sources:
    - id: gen
      type: generate
      config: {{count: {total}, rate: 300}}
  sinks:
    - id: pub
      type: mqtt
      inputs: [gen]
      config: {{url: "{mosquitto.url}", topic: "out/{{seq % 3}}", qos: 1}}
""", delivery="at-least-once"))
        await wait_until(lambda: asyncio.sleep(0, len(got) >= 300), timeout=20,
                         what="300 at the subscriber")
        mosquitto.stop()

        async def waiting() -> str | None:
            st = (await statuses(nc, "mqsink")).get("mqsink.pub.0")
            reason = st.reason if st is not None else None
            return reason if reason and reason.startswith("waiting: mqtt broker") else None

        reason = await wait_until(waiting, timeout=10, what="the sink's waiting reason")
        await asyncio.sleep(1.0)
        mosquitto.start()
        await wait_until(lambda: asyncio.sleep(0, len(got) >= total), timeout=30,
                         what=f"all {total} at the subscriber")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    print(f"\nbroker restarted mid-flow ({reason}): {len(got):,} distinct of {total:,}, "
          f"{sum(got.values()) - len(got)} repeats")
    assert sorted(got) == list(range(total))


async def test_a_broker_missing_at_start_or_gone_is_waited_for(nc, agents, tmp_path) -> None:
    broker = Mosquitto()  # not started yet
    try:
        agents("a1")
        await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
        out = tmp_path / "out.jsonl"
        await run_flow(nc, source_flow("mq3", broker, out))

        async def waiting() -> str | None:
            st = (await statuses(nc, "mq3")).get("mq3.mq.0")
            reason = st.reason if st is not None else None
            return reason if reason and reason.startswith("waiting: mqtt broker") else None

        reason = await wait_until(waiting, timeout=15, what="the waiting reason")
        assert f"127.0.0.1:{broker.port}" in reason
        broker.start()
        await subscribed(broker, out)
        await publish(broker, readings(0, 100))
        await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 100), timeout=20,
                         what="100 events")

        async def connected() -> bool:  # (the status record is refreshed twice a second)
            st = (await statuses(nc, "mq3")).get("mq3.mq.0")
            return st is not None and not (st.reason or "").startswith("waiting")

        await wait_until(connected, timeout=10, what="the waiting reason gone")
        broker.stop()  # going away mid-flow (its store keeps the source's session)
        await wait_until(waiting, timeout=15, what="the waiting reason again")
        broker.start()
        await publish(broker, readings(100, 100))
        await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 200), timeout=30,
                         what="100 more after the broker's restart")
        assert sorted(numbers(out)) == list(range(200))
    finally:
        broker.close()


async def test_credentials_come_from_the_agents_environment_only(
        nc, agents, tmp_path, monkeypatch) -> None:
    user, secret = "sensor", "s3cret-Pa55word"
    broker = Mosquitto(users={user: secret}).start()
    try:
        monkeypatch.setenv("MQTT_TEST_USER", user)
        monkeypatch.setenv("MQTT_TEST_PASS", secret)
        agent = agents("a1")  # (it inherits this environment)
        await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
        out = tmp_path / "out.jsonl"
        await run_flow(nc, source_flow("mq5", broker, out, extra=(
            ', username: "${MQTT_TEST_USER}", password: "${MQTT_TEST_PASS}"')))
        await subscribed(broker, out, auth=(user, secret))
        await publish(broker, readings(0, 50), auth=(user, secret))
        await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 50), timeout=20,
                         what="50 events")
        kv = await nc.jetstream().key_value("flowctl_flows")
        stored = b"".join([(await kv.get(k)).value or b"" for k in await kv.keys()])
        assert b"${MQTT_TEST_PASS}" in stored and secret.encode() not in stored
        status = b"".join(s.to_json() for s in (await statuses(nc, "mq5")).values())
        assert b"mq5.mq" in status or b"mq5" in status
        assert secret.encode() not in status
        assert secret not in "".join(agent.output())
    finally:
        broker.close()


async def test_mqtts_with_a_ca_file(nc, agents, tmp_path) -> None:
    broker = Mosquitto(tls=True).start()
    try:
        agents("a1")
        await wait_until(lambda: live_agent(nc, "a1"), what="agent a1")
        out = tmp_path / "out.jsonl"
        await run_flow(nc, source_flow("mq6", broker, out, extra=f', ca_file: "{broker.cert}"'))
        await subscribed(broker, out)
        await publish(broker, readings(0, 100))
        await wait_until(lambda: asyncio.sleep(0, len(numbers(out)) >= 100), timeout=20,
                         what="100 events over TLS")
    finally:
        broker.close()


def check(body: str, delivery: str = "at-least-once"):
    loaded = parse_flow(flow_yaml("v", body, delivery=delivery))
    return validate(loaded.spec, source=loaded.source, name=loaded.name)


SINK = """\
  sources:
    - {{id: gen, type: generate, config: {{count: 1}}}}
  sinks:
    - {{id: pub, type: mqtt, inputs: [gen], config: {config}}}
"""


def test_validate_refuses_the_sink_in_an_exactly_once_flow_and_bad_config() -> None:
    good = '{url: "mqtt://h:1883", topic: "a/{seq}"}'
    assert check(SINK.format(config=good)).status == "valid"
    refused = check(SINK.format(config=good), delivery="exactly-once")
    codes = {i.code: i for i in refused.issues}
    assert "not_exactly_once" in codes and "'mqtt'" in codes["not_exactly_once"].message
    for config, words in [
        ('{url: "mqtt://u:secret@h", topic: a}', "no credentials in the url"),
        ('{url: "mqtt://h", topic: a, password: hunter2}', "${VAR}"),
        ('{url: "mqtt://h", topic: "a/#/b"}', "no wildcards"),
        ('{url: "mqtt://h", topic: "a/{seq"}', "without its }"),
        ('{url: "http://h", topic: a}', "mqtt://host:port"),
    ]:
        result = check(SINK.format(config=config))
        text = json.dumps(result.to_dict())
        assert result.status == "errors" and words in text, (config, text)
        assert "hunter2" not in text and "secret" not in text.replace("${VAR}", "")


async def test_an_undefined_variable_fails_the_replica_naming_it(monkeypatch) -> None:
    from types import SimpleNamespace

    from componentmanager.components.connectors.mqtt import MqttSource, MqttSourceConfig

    monkeypatch.delenv("MQTT_NOT_SET", raising=False)
    config = MqttSourceConfig(url="mqtt://h", topic="a", password="${MQTT_NOT_SET}")
    source = MqttSource(config, SimpleNamespace(flow="f", node="n", replica=0))
    with pytest.raises(RuntimeError, match=r"undefined variable \$\{MQTT_NOT_SET\}"):
        await source.start()


async def test_a_password_file_is_read_at_start(tmp_path) -> None:
    from types import SimpleNamespace

    from componentmanager.components.connectors.mqtt import MqttSink, MqttSinkConfig

    (tmp_path / "pw").write_text("s3cret\n")
    ctx = SimpleNamespace(flow="f", node="n", replica=0)
    sink = MqttSink(MqttSinkConfig(url="mqtt://h", topic="a", password_file=str(tmp_path / "pw")),
                    ctx)
    await sink.start()
    assert sink._broker is not None and sink._broker.password == "s3cret"
    missing = MqttSinkConfig(url="mqtt://h", topic="a", password_file=str(tmp_path / "none"))
    with pytest.raises(RuntimeError, match="cannot read it"):
        await MqttSink(missing, ctx).start()
    with pytest.raises(ValueError, match="not both"):
        MqttSinkConfig(url="mqtt://h", topic="a", password="${X}", password_file="/p")
