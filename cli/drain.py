"""When is a flow done, and did it go well? Pure checks used by ``flowctl run --until-done``
(and by its drain after Ctrl+C), and what a stopped flow left unprocessed.

Done means: every source replica reports ``completed``; every node that counts (the
in-process ones) took in, summed over its replicas, at least what its upstreams emitted
on the connected ports; and, for an at-least-once flow, no input of any node (external
ones included) has a message waiting, delivered but unacked, or being redelivered. A node
of an at-most-once flow that reports no counters (a ``command:`` or ``image:`` node) can
only be judged by silence: :attr:`Progress.unjudged` names them, and the caller waits
for the counters to stay still a while longer. Failures are reported separately so the
caller can stop early.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    done: bool = False
    failed: list[str] = field(default_factory=list)
    #: why not done yet (one short phrase), for the progress line
    waiting: str = ""
    #: nodes whose consumption cannot be checked (no counters, no stream)
    unjudged: list[str] = field(default_factory=list)


def endless_sources(spec: Any) -> list[str]:
    """The sources of ``spec`` that never finish on their own, each as a phrase
    ("source 'gen' (generate) never finishes: it has no count ..."): with them the flow is
    never done. What can finish is each type's own word
    (:meth:`componentmanager.registry.ComponentType.endless_reason`); programs,
    containers and third-party types that do not say are not judged."""
    from flowengine.translate import resolve_type

    out = []
    for node in spec.nodes:
        ctype = resolve_type(node, spec) if node.kind == "inprocess" else None
        if ctype is None or ctype.role != "source":
            continue
        reason = ctype.endless_reason(node.config)
        if reason is not None:
            out.append(f"source '{node.id}' ({ctype.name}) never finishes: {reason}")
    return out


def reports_counters(config: Any) -> bool:
    return config.kind == "inprocess"


def drained(spec: Any, configs: list[Any], statuses: list[Any],
            backlog: dict[str, int] | None = None, sources_stopped: bool = False) -> Progress:
    """``backlog``: unacked messages per durable consumer (at-least-once flows).
    ``sources_stopped``: the sources were stopped on purpose (Ctrl+C): a stopped source
    counts as finished, and events held by windows and joins are not waited for (they
    wait for their time, not for a few seconds more)."""
    finished = ("completed", "stopped") if sources_stopped else ("completed",)
    if not configs:
        return Progress(waiting="no component configs yet")
    by_node = {c.node: c for c in configs}
    seen: dict[str, int] = defaultdict(int)
    took_in: dict[str, int] = defaultdict(int)
    emitted: dict[tuple[str, str], int] = defaultdict(int)
    progress = Progress()
    sources_running = []
    for s in statuses:
        seen[s.node] += 1
        took_in[s.node] += s.counters.in_ + s.counters.dropped
        for port, n in s.counters.out_ports.items():
            emitted[(s.node, port)] += n
        if s.state.value == "failed":
            progress.failed.append(f"{s.node}.{s.replica}: {s.last_error}")
        config = by_node.get(s.node)
        if config is not None and config.role == "source" and s.state.value not in finished:
            sources_running.append(s.node)
    if progress.failed:
        return progress
    missing = [n for n, c in by_node.items() if seen[n] < c.replicas]
    if missing:
        progress.waiting = f"waiting for {', '.join(missing)} to report"
        return progress
    if sources_running:
        progress.waiting = f"source {', '.join(dict.fromkeys(sources_running))} running"
        return progress
    expected_in: dict[str, int] = defaultdict(int)
    unknown_upstream: set[str] = set()
    for conn in spec.connections:
        (src, sport), (dst, _) = conn.source, conn.target
        expected_in[dst] += emitted[(src, sport)]
        if src in by_node and not reports_counters(by_node[src]):
            unknown_upstream.add(dst)
    for node, config in by_node.items():
        if config.role == "source" or not reports_counters(config):
            continue
        if node not in unknown_upstream and took_in[node] < expected_in[node]:
            progress.waiting = (f"{node} took in {took_in[node]:,} of "
                                f"{expected_in[node]:,} events")
            return progress
    holding = {f"{s.node}.{s.replica}": s.held for s in statuses
               if s.held and getattr(by_node.get(s.node), "stateful", False)}
    if holding and not sources_stopped:  # a window or join emits them when its time
        # comes (a batch at stop)
        progress.waiting = "holding events (open windows, unmatched joins): " + \
            ", ".join(f"{k} {n:,}" for k, n in sorted(holding.items()))
        return progress
    unacked = {k: n for k, n in (backlog or {}).items() if n}
    if unacked:
        progress.waiting = "unacked input messages: " + ", ".join(
            f"{k} {n:,}" for k, n in sorted(unacked.items()))
        return progress
    if backlog is None or not any(c.delivery != "at-most-once" for c in configs):
        progress.unjudged = [n for n, c in by_node.items()
                             if c.role != "source" and not reports_counters(c)]
    progress.done = True
    return progress


@dataclass
class Left:
    """What one node had not processed when its flow stopped (deleting the flow deletes
    it)."""

    #: events its upstreams emitted to it that it never took in, by the counters (None:
    #: unknown, the node or one of its upstreams reports no counters)
    waiting: int | None = 0
    #: events it held in open windows or unmatched joins (taken in, not emitted)
    held: int = 0
    #: messages (an event or a frame of events each) its inputs' durable consumers had
    #: not acked: in the flow's stream, delivered but unacked, or being redelivered
    messages: int = 0

    @property
    def events(self) -> int:
        return (self.waiting or 0) + self.held

    def __bool__(self) -> bool:
        return bool(self.events or self.messages)

    def cell(self) -> Any:
        """The LEFT column: events, or ``-`` when the counters cannot tell."""
        return "-" if self.waiting is None and not self.held else self.events

    def phrase(self) -> str:
        parts = [f"{self.waiting:,} not taken in" if self.waiting else "",
                 f"{self.held:,} held in open windows or joins" if self.held else "",
                 f"{self.messages:,} message(s) unacked in the stream" if self.messages else ""]
        return ", ".join(p for p in parts if p)


def left_over(spec: Any, configs: list[Any], statuses: list[Any],
              backlog: dict[str, int] | None = None) -> dict[str, Left]:
    """Per node that is not a source (flow order): what it had not processed. Read once
    the flow has stopped (final counters; ``backlog``: unacked messages per durable
    consumer, as :meth:`FlowEngine.input_backlog` gives them, before the stream goes)."""
    from flowstore.models import consumer_names

    by_node = {c.node: c for c in configs}
    took_in: dict[str, int] = defaultdict(int)
    emitted: dict[tuple[str, str], int] = defaultdict(int)
    held: dict[str, int] = defaultdict(int)
    for s in statuses:
        took_in[s.node] += s.counters.in_ + s.counters.dropped
        held[s.node] += s.held
        for port, n in s.counters.out_ports.items():
            emitted[(s.node, port)] += n
    expected: dict[str, int] = defaultdict(int)
    unknown: set[str] = set()
    for conn in spec.connections:
        (src, sport), (dst, _) = conn.source, conn.target
        expected[dst] += emitted[(src, sport)]
        if src not in by_node or not reports_counters(by_node[src]):
            unknown.add(dst)
    owner = {name: c.node for c in configs for name, _, _ in consumer_names(c)}
    messages: dict[str, int] = defaultdict(int)
    for consumer, n in (backlog or {}).items():
        if consumer in owner:
            messages[owner[consumer]] += n
    out = {}
    for node in (n.id for n in spec.nodes):
        config = by_node.get(node)
        if config is None or config.role == "source":
            continue
        counted = reports_counters(config) and node not in unknown
        out[node] = Left(max(0, expected[node] - took_in[node]) if counted else None,
                         held[node] if config.stateful else 0, messages[node])
    return out


def left_sentence(left: dict[str, Left]) -> str:
    """How many events were left unprocessed, and by which node what (empty: none)."""
    if not any(left.values()):
        return ""
    total = sum(w.events for w in left.values())
    nodes = "; ".join(f"{node}: {what.phrase()}" for node, what in left.items() if what)
    return f"{total:,} event(s) left unprocessed, deleted with the flow ({nodes})"


@dataclass
class Outcome:
    """What a finished run did, per node (replicas summed), and whether it lost anything."""

    rows: list[list[Any]]
    errors: int
    dropped: int
    dead_letters: int
    #: per node, what it had not processed when the flow stopped
    left: dict[str, Left] = field(default_factory=dict)

    @property
    def left_events(self) -> int:
        return sum(w.events for w in self.left.values())

    @property
    def ok(self) -> bool:
        return not (self.errors or self.dropped or self.dead_letters
                    or any(self.left.values()))

    def sentence(self) -> str:
        """What failed or was lost (what was left: :func:`left_sentence`)."""
        parts = [f"{n:,} {what}" for n, what in ((self.errors, "failed"),
                                                  (self.dropped, "dropped"),
                                                  (self.dead_letters, "dead-lettered"))
                 if n]
        return ", ".join(parts)


SUMMARY_COLUMNS = ["NODE", "REPLICAS", "AGENTS", "STATE", "IN", "OUT", "FILTERED", "ERRORS",
                   "DROPPED", "DEAD-LETTERED", "LEFT", "REASON / LAST ERROR"]


def outcome(spec: Any, statuses: list[Any], dead_letters: dict[str, int],
            uncounted: set[str] = frozenset(),  # type: ignore[assignment]
            left: dict[str, Left] | None = None) -> Outcome:
    """One row per node in flow order; ``dead_letters``: new dead letters per node;
    ``uncounted``: nodes that report no counters (shown as ``-``); ``left``: what each
    node had not processed (:func:`left_over`; a source's LEFT is ``-``)."""
    left = left or {}
    order = [n.id for n in spec.nodes]
    by_node: dict[str, list[Any]] = defaultdict(list)
    for s in statuses:
        by_node[s.node].append(s)
    rows = []
    errors = dropped = 0
    for node in order:
        group = by_node.get(node, [])
        states = sorted({s.state.value for s in group}) or ["-"]
        c = [sum(getattr(s.counters, f) for s in group)
             for f in ("in_", "out", "filtered", "errors", "dropped")]
        notes = [s.reason or s.last_error for s in group if s.reason or s.last_error]
        held = sum(s.held for s in group)
        if held and not notes:
            notes = [f"held {held:,} event(s) when stopped"]
        shown: list[Any] = ["-"] * 5 if node in uncounted else c
        agents = ",".join(sorted({s.agent for s in group if s.agent})) or "-"
        rows.append([node, len(group), agents, "/".join(states), *shown, dead_letters.get(node, 0),
                     left[node].cell() if node in left else "-", notes[0] if notes else ""])
        errors += c[3]
        dropped += c[4]
    return Outcome(rows, errors=errors, dropped=dropped, dead_letters=sum(dead_letters.values()),
                   left=left)


def unconfirmed(spec: Any, configs: list[Any], statuses: list[Any]) -> list[str]:
    """Nodes without counters (at-most-once programs) that handed on fewer events than
    they were given, as seen by the counted nodes right after them: a sign that events
    were lost or are still inside (a 1:1 worker would hand on as many). One sentence each."""
    by_node = {c.node: c for c in configs}
    took_in: dict[str, int] = defaultdict(int)
    emitted: dict[tuple[str, str], int] = defaultdict(int)
    for s in statuses:
        took_in[s.node] += s.counters.in_ + s.counters.dropped
        for port, n in s.counters.out_ports.items():
            emitted[(s.node, port)] += n
    given: dict[str, int] = defaultdict(int)
    for conn in spec.connections:
        (src, sport), (dst, _) = conn.source, conn.target
        given[dst] += emitted[(src, sport)]
    out = []
    for node, config in by_node.items():
        if reports_counters(config) or config.role == "source":
            continue
        after = {c.target[0] for c in spec.connections if c.source[0] == node}
        counted = [d for d in after if d in by_node and reports_counters(by_node[d])]
        if counted and given[node] and all(took_in[d] < given[node] for d in counted):
            reached = max(took_in[d] for d in counted)
            out.append(f"{node} (a program without counters) was given {given[node]:,} "
                       f"events and {reached:,} reached {', '.join(sorted(counted))}: events "
                       "may be lost or still inside it (at-least-once, the default, waits "
                       "for them)")
    return out


def still_held(configs: list[Any], statuses: list[Any]) -> list[str]:
    """Stateful nodes (window, join) that held events when the flow stopped: deleting
    the flow discards them. One sentence each."""
    stateful = {c.node for c in configs if c.stateful}
    out = []
    for node in dict.fromkeys(s.node for s in statuses if s.node in stateful):
        held = sum(s.held for s in statuses if s.node == node)
        if held:
            out.append(f"{node} held {held:,} event(s) in open windows or unmatched joins; "
                       "deleting the flow discards them (--until-done lets them out)")
    return out
