"""Prometheus metrics of one agent, served on ``--metrics-port`` (off by default).

Built on the official Python client (``prometheus_client``): a custom collector reads
the replicas' plain counters at scrape time, so the hot path pays nothing for metrics
and the figures are the very ones ``flowctl status`` shows (they continue across
restarts and moves, like the status record). Names follow the client's conventions
(``_total`` counters, ``_seconds`` units):

* ``flowctl_events_{in,out}_total{flow,node,replica,port}``: events taken in per input
  port, emitted per output port (a sink's written events have ``port=""``);
* ``flowctl_events_{filtered,errors,dropped,redelivered,replayed}_total{flow,node,replica}``;
* ``flowctl_processing_seconds{flow,node,replica}``: histogram of the time per event
  (a frame's handling time shared by its events);
* ``flowctl_consumer_pending{flow,node,port}``, ``flowctl_consumer_ack_pending``: the
  JetStream consumer of each at-least-once input (as of the last status interval);
  ``flowctl_input_lag_messages{flow,node,replica,port}``: what ``status`` shows as LAG;
* ``flowctl_agent_loop_lag_seconds``, ``flowctl_agent_heartbeat_age_seconds``,
  ``flowctl_replicas{state}`` (``unknown`` for up replicas while this agent's heartbeat
  is overdue, as readers show them), ``flowctl_log_lines_lost_total``, all with ``agent``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from flowstore.liveness import as_seen

REPLICA = ["flow", "node", "replica"]
PORTED = [*REPLICA, "port"]
PLAIN_COUNTERS = {
    "filtered": "Input events discarded on purpose (a filter said no)",
    "errors": "Events that failed (dead-lettered with the reason)",
    "dropped": "Events lost (overload, refused publish, stopped with events queued)",
    "redelivered": "Input messages delivered again after a lost ack, not processed twice",
    "replayed": "Dead letters re-injected by `flowctl dlq replay` and taken in",
}


class AgentCollector(Collector):
    """Reads ``agent`` (a :class:`~componentmanager.agent.Agent`) at each scrape."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        replicas = list(self.agent.replicas.values())
        yield from self._events(replicas)
        yield self._latency(replicas)
        yield from self._lag(replicas)
        yield from self._agent(replicas)

    def _events(self, replicas: list[Any]) -> Iterator[Metric]:
        taken = CounterMetricFamily("flowctl_events_in", "Events taken in, per input port",
                                    labels=PORTED)
        emitted = CounterMetricFamily(
            "flowctl_events_out", "Events emitted per output port (a sink: written)",
            labels=PORTED)
        plain = {name: CounterMetricFamily(f"flowctl_events_{name}", text, labels=REPLICA)
                 for name, text in PLAIN_COUNTERS.items()}
        for replica in replicas:
            c, ids = replica.counters, _ids(replica)
            for family, total, ports in ((taken, c.in_, dict(c.in_ports)),
                                         (emitted, c.out, dict(c.out_ports))):
                for port, count in ports.items():
                    family.add_metric([*ids, port], count)
                if total > sum(ports.values()):  # a sink's writes, events of no port
                    family.add_metric([*ids, ""], total - sum(ports.values()))
            for name, family in plain.items():
                family.add_metric(ids, getattr(c, name))
        yield taken
        yield emitted
        yield from plain.values()

    def _latency(self, replicas: list[Any]) -> Metric:
        family = HistogramMetricFamily(
            "flowctl_processing_seconds",
            "Time to process one event (a frame's handling time shared by its events)",
            labels=REPLICA)
        for replica in replicas:
            histogram = replica.counters.latency
            buckets = histogram.cumulative()
            family.add_metric(_ids(replica), buckets, histogram.sum)
        return family

    def _lag(self, replicas: list[Any]) -> Iterator[Metric]:
        labels = ["flow", "node", "port", "consumer"]  # a partitioned node: one per replica
        pending = GaugeMetricFamily(
            "flowctl_consumer_pending", "Messages stored for an input, not yet delivered",
            labels=labels)
        ack_pending = GaugeMetricFamily(
            "flowctl_consumer_ack_pending", "Messages delivered to an input, not yet acked",
            labels=labels)
        figures = getattr(self.agent, "figures", None)
        for key, lag in dict(figures.lags.latest if figures else {}).items():
            pending.add_metric(list(key), lag.pending)
            ack_pending.add_metric(list(key), lag.ack_pending)
        lag_gauge = GaugeMetricFamily(
            "flowctl_input_lag_messages",
            "Messages waiting for an input (the LAG of flowctl status)", labels=PORTED)
        for replica in replicas:
            for port, count in dict(replica.lag).items():
                lag_gauge.add_metric([*_ids(replica), port], count)
        yield pending
        yield ack_pending
        yield lag_gauge

    def _agent(self, replicas: list[Any]) -> Iterator[Metric]:
        name = [self.agent.agent_name]
        loop_lag = GaugeMetricFamily(
            "flowctl_agent_loop_lag_seconds",
            "Longest stall of the data-plane event loop in the last heartbeat interval",
            labels=["agent"])
        loop_lag.add_metric(name, self.agent.loop_lag_s())
        heartbeat = GaugeMetricFamily(
            "flowctl_agent_heartbeat_age_seconds", "Seconds since the last heartbeat written",
            labels=["agent"])
        heartbeat.add_metric(name, self.agent.heartbeat_age_s())
        states = GaugeMetricFamily(
            "flowctl_replicas", "Replicas on this agent by state (unknown: up, but this "
            "agent's heartbeat is overdue, so readers cannot vouch for them)",
            labels=["agent", "state"])
        by_state = Counter(self._state_seen(r.status().state.value) for r in replicas)
        for state, count in sorted(by_state.items()):
            states.add_metric([*name, state], count)
        lost = CounterMetricFamily(
            "flowctl_log_lines_lost", "Component log lines lost (publish queue full)",
            labels=["agent"])
        data = getattr(self.agent, "data", None)
        lost.add_metric(name, data.logs_lost if data is not None else 0)
        yield from (loop_lag, heartbeat, states, lost)


    def _state_seen(self, state: str) -> str:
        """A replica's state as readers see it: judged by this agent's record as last
        written (:func:`flowstore.liveness.as_seen`), so ``unknown`` while its
        heartbeats do not get through."""
        heard = getattr(self.agent, "last_heartbeat", None)
        if heard is None:  # not announced yet: nothing to judge by
            return state
        seen = as_seen({"state": state, "agent": heard.name}, heard, datetime.now(UTC))
        return str(seen["state"])


def _ids(replica: Any) -> list[str]:
    return [replica.cfg.flow, replica.cfg.node, str(replica.index)]


class MetricsServer:
    """The ``/metrics`` endpoint of one agent (a thread of the Prometheus client)."""

    def __init__(self, agent: Any, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = int(self._server.server_port)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
