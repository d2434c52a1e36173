"""When is a flow done? A pure check used by ``flowctl run --until-done``.

Done means: every source replica reports ``completed``, and every other node has taken
in (summed over its replicas) at least what its upstreams emitted on the connected
ports. Failures are reported separately so the caller can stop early.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def drained(spec: Any, configs: list[Any], statuses: list[Any]) -> tuple[bool, list[str]]:
    if not configs:
        return False, []
    roles = {c.node: c.role for c in configs}
    expected_replicas = {c.node: c.replicas for c in configs}
    seen: dict[str, int] = defaultdict(int)
    took_in: dict[str, int] = defaultdict(int)
    emitted: dict[tuple[str, str], int] = defaultdict(int)
    failed: list[str] = []
    sources_done = True
    for s in statuses:
        seen[s.node] += 1
        took_in[s.node] += s.counters.in_ + s.counters.dropped
        for port, n in s.counters.out_ports.items():
            emitted[(s.node, port)] += n
        if s.state.value == "failed":
            failed.append(f"{s.node}.{s.replica}: {s.last_error}")
        if roles.get(s.node) == "source" and s.state.value != "completed":
            sources_done = False
    if failed:
        return False, failed
    if any(seen[n] < k for n, k in expected_replicas.items()) or not sources_done:
        return False, []
    expected_in: dict[str, int] = defaultdict(int)
    for conn in spec.connections:
        (src, sport), (dst, _) = conn.source, conn.target
        expected_in[dst] += emitted[(src, sport)]
    for node, role in roles.items():
        if role != "source" and took_in[node] < expected_in[node]:
            return False, []
    return True, []
