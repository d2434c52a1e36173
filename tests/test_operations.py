"""Operating a running flow, as an operator does it, with the real `flowctl` executable,
a real agent process and a real nats-server: Prometheus metrics read from the agent's
`/metrics` and parsed by the official text-format parser, live rates and lag in `status`,
counters that continue across a restart, stored logs read after the flow stopped, dead
letters listed, replayed after the function was fixed and delivered, `tap` and `top`.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.agents import read_lines
from tests.programs.cli_helpers import (  # noqa: F401  (fixtures)
    Flowctl,
    as_json,
    cli_agent_fixture,
    cli_processes_cleaned_up,
    flowctl,
    free_port,
    json_lines,
    ok,
    wait_for,
)

PACED = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {{name: {name}}}
spec:
  sources:
    - {{id: gen, type: generate,
       config: {{count: {count}, rate: {rate}, template: {{n: "{{seq}}"}}}}}}
  processors:
    - {{id: pick, type: filter, inputs: [gen], config: {{where: "seq % 2 == 0"}}}}
  sinks:
    - {{id: out, type: file, inputs: [pick], config: {{path: "{out}"}}}}
"""


def paced(tmp: Path, name: str, count: int, rate: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(PACED.format(name=name, count=count, rate=rate, out=tmp / f"{name}.jsonl"))
    return path


def scrape(port: int) -> dict[str, Any]:
    """``{sample name: {labels as a sorted tuple: value}}`` of one scrape, parsed by the
    Prometheus client's own text-format parser (it raises on anything malformed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def one(samples: dict[str, Any], name: str, **labels: str) -> float:
    found = [v for k, v in samples.get(name, {}).items() if set(labels.items()) <= set(k)]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def status(nats_url: str, flow: str) -> dict[str, Any]:
    return {r["node"]: r for r in as_json(flowctl("status", flow, "-o", "json",
                                                  nats_url=nats_url))["replicas"]}


def test_metrics_move_while_a_flow_runs(nats_url: str, tmp_path: Path,
                                        cli_agent: Callable[..., Flowctl]) -> None:
    port = free_port()
    agent = cli_agent("metrics-agent", extra=("--metrics-port", str(port)))
    assert f"metrics: http://127.0.0.1:{port}/metrics" in agent.err()
    ok(flowctl("up", "-f", str(paced(tmp_path, "metered", 100_000, 300)), nats_url=nats_url))
    ids = {"flow": "metered", "replica": "0"}

    def moving() -> Any:
        samples = scrape(port)
        taken = samples.get("flowctl_events_in_total", {})
        return samples if any(v > 0 for v in taken.values()) else None

    first = wait_for(moving, 20, "events counted in the metrics")
    rising = (("flowctl_events_in_total", "pick", {"port": "in"}),
              ("flowctl_events_out_total", "gen", {"port": "out"}),
              ("flowctl_events_filtered_total", "pick", {}),
              ("flowctl_processing_seconds_count", "pick", {}))

    def all_rose() -> Any:
        later = scrape(port)
        return later if all(one(later, name, node=node, **ids, **extra)
                            > one(first, name, node=node, **ids, **extra)
                            for name, node, extra in rising) else None

    second = wait_for(all_rose, 10, "every counter and the histogram rising")
    # the histogram: cumulative buckets, ending at +Inf with the count
    buckets = {dict(k)["le"]: v for k, v in second["flowctl_processing_seconds_bucket"].items()
               if dict(k)["node"] == "pick"}
    values = [buckets[le] for le in sorted(buckets, key=float)]
    assert values == sorted(values) and buckets["+Inf"] == one(
        second, "flowctl_processing_seconds_count", node="pick", **ids)
    # a sink's OUT is what it wrote (the file sink writes on its 1 s flush); lag and
    # consumer gauges appear with the agent's first status interval
    def written() -> Any:
        later = scrape(port)
        found = later.get("flowctl_events_out_total", {})
        wrote = any(dict(k).get("node") == "out" and dict(k).get("port") == "" and v > 0
                    for k, v in found.items())
        return later if wrote and "flowctl_consumer_pending" in later else None

    second = wait_for(written, 10, "the sink's written events and the lag gauges")
    assert ("flowctl_consumer_pending" in second and "flowctl_consumer_ack_pending" in second
            and "flowctl_input_lag_messages" in second)
    assert one(second, "flowctl_replicas", agent="metrics-agent", state="running") == 3
    assert 0 <= one(second, "flowctl_agent_heartbeat_age_seconds", agent="metrics-agent") < 5
    assert one(second, "flowctl_agent_loop_lag_seconds", agent="metrics-agent") >= 0
    ok(flowctl("delete", "metered", "--force", nats_url=nats_url))


def test_status_rates_and_lag_fall_to_zero_and_counters_continue(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("rates-agent")
    ok(flowctl("up", "-f", str(paced(tmp_path, "rated", 1500, 250)), nats_url=nats_url))
    running = wait_for(lambda: (s := status(nats_url, "rated")).get("pick", {}).get(
        "rate", {}).get("in", 0) > 50 and s, 20, "a rate while the source runs")
    assert running["gen"]["rate"]["out"] > 50
    assert set(running["pick"]["lag"]) == {"in"}  # per input port

    def settled() -> Any:
        s = status(nats_url, "rated")
        done = (s["gen"]["state"] == "completed" and s["out"]["counters"]["out"] == 750
                and all(r["rate"].get("in", 0) == 0 and r["rate"].get("out", 0) == 0
                        and not any(r["lag"].values()) for n, r in s.items() if n != "gen"))
        return s if done else None

    final = wait_for(settled, 30, "rates and lag at 0 after the source finished")
    assert [final[n]["counters"]["in"] for n in ("pick", "out")] == [1500, 750]
    table = ok(flowctl("status", "rated", nats_url=nats_url)).stdout
    assert [line.split()[0] for line in table.splitlines()[2:5]] == ["gen", "pick", "out"]

    # a restart (stop, start) continues the counts: they belong to the replica
    ok(flowctl("stop", "rated", nats_url=nats_url))
    ok(flowctl("start", "rated", nats_url=nats_url))
    again = wait_for(lambda: (s := status(nats_url, "rated"))["pick"]["state"] == "running"
                     and s["pick"]["started_at"] != final["pick"]["started_at"] and s,
                     20, "the restarted replicas")
    assert again["pick"]["counters"]["in"] == 1500 and again["out"]["counters"]["out"] == 750
    ok(flowctl("delete", "rated", "--force", nats_url=nats_url))


BROKEN = """\
def handle(event):
    if event["seq"] == 3:
        raise ValueError("cannot price order 3")
    return event
"""
FIXED = """\
def handle(event):
    event["priced"] = True
    return event
"""
PICKY = """\
apiVersion: flowctl/v1
kind: Flow
metadata: {name: picky}
spec:
  sources:
    - {id: gen, type: generate, config: {count: 6, template: {n: "{seq}"}}}
  processors:
    - {id: price, type: python, inputs: [gen], config: {function: "pricing:handle"}}
  sinks:
    - {id: out, type: file, inputs: [price], config: {path: out.jsonl}}
"""


def test_failure_in_the_logs_and_its_dead_letter_replayed_after_a_fix(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("dlq-agent")
    (tmp_path / "pricing.py").write_text(BROKEN)
    (tmp_path / "picky.yaml").write_text(PICKY)
    ok(flowctl("up", "-f", "picky.yaml", nats_url=nats_url, cwd=tmp_path))
    sink = tmp_path / "out.jsonl"
    wait_for(lambda: len(read_lines(sink)) == 5 and status(nats_url, "picky")["price"][
        "counters"]["errors"] == 1, 30, "5 events written, 1 failed")
    ok(flowctl("stop", "picky", nats_url=nats_url))

    # after the flow stopped, the failure is in the stored logs, with its event id
    logged = json_lines(ok(flowctl("logs", "picky", "--since", "1m", "-o", "json",
                                   nats_url=nats_url)).stdout)
    [failure] = [r for r in logged if r["stream"] == "error"]
    assert (failure["node"], failure["replica"]) == ("price", 0)
    assert "cannot price order 3" in failure["line"] and failure["event_id"]
    text = ok(flowctl("logs", "picky", "--node", "price", "--grep", "order \\d",
                      nats_url=nats_url)).stdout
    assert "cannot price order 3" in text and failure["event_id"] in text
    assert ok(flowctl("logs", "picky", "out", nats_url=nats_url)).stdout == ""

    # listed and shown
    assert as_json(flowctl("dlq", "list", "picky", "-o", "json", nats_url=nats_url)) == [
        {"node": "price", "dead_letters": 1}]
    [letter] = as_json(flowctl("dlq", "show", "picky", "price", "-o", "json",
                               nats_url=nats_url))
    assert letter["event"] == {"n": 3, "seq": 3} and "cannot price" in letter["error"]
    assert letter["event_id"] == failure["event_id"]

    # fixed, applied, started; replayed: it reaches the sink and is counted
    (tmp_path / "pricing.py").write_text(FIXED)
    ok(flowctl("apply", "-f", "picky.yaml", nats_url=nats_url, cwd=tmp_path))
    ok(flowctl("start", "picky", nats_url=nats_url))
    wait_for(lambda: status(nats_url, "picky")["price"]["state"] == "running", 20,
             "the fixed function running")
    replayed = ok(flowctl("dlq", "replay", "picky", "price", nats_url=nats_url)).stdout
    assert "replayed 1 dead letter(s) of 'price' into flowctl.picky.gen.out" in replayed
    wait_for(lambda: len(read_lines(sink)) == 6, 20, "the replayed event written")
    assert json.loads(read_lines(sink)[-1]) == {"n": 3, "seq": 3, "priced": True}
    counters = wait_for(lambda: (c := status(nats_url, "picky")["price"]["counters"])[
        "replayed"] == 1 and c, 10, "the replay counted")
    assert counters["in"] == 7 and counters["errors"] == 1
    assert as_json(flowctl("dlq", "list", "picky", "-o", "json", nats_url=nats_url)) == []
    assert "purged 0" in ok(flowctl("dlq", "purge", "picky", nats_url=nats_url)).stdout
    ok(flowctl("delete", "picky", "--force", nats_url=nats_url))


def test_tap_prints_a_ports_events_and_top_sums_nodes(
        nats_url: str, tmp_path: Path, cli_agent: Callable[..., Flowctl]) -> None:
    cli_agent("tap-agent")
    ok(flowctl("up", "-f", str(paced(tmp_path, "tapped", 100_000, 200)), nats_url=nats_url))
    wait_for(lambda: status(nats_url, "tapped").get("out", {}).get("counters", {}).get("in"),
             20, "events flowing")
    events = json_lines(ok(flowctl("tap", "tapped", "pick.out", "--count", "5",
                                   nats_url=nats_url)).stdout)
    assert len(events) == 5 and all(e["seq"] % 2 == 0 for e in events)
    reaching_sink = ok(flowctl("tap", "tapped", "out", "--count", "2", nats_url=nats_url))
    assert "a sink: its inputs" in reaching_sink.stderr and len(
        json_lines(reaching_sink.stdout)) == 2
    wrong = flowctl("tap", "tapped", "gen.nope", nats_url=nats_url)
    assert wrong.returncode == 1 and "ports: dlq, out" in wrong.stderr
    rows = as_json(flowctl("top", "--once", "-o", "json", nats_url=nats_url))
    assert [r["node"] for r in rows if r["flow"] == "tapped"] == ["gen", "pick", "out"]
    ok(flowctl("delete", "tapped", "--force", nats_url=nats_url))
