"""Pure reconciliation: desired configs vs running replicas -> actions. No I/O.

Level-triggered: the agent calls :func:`reconcile` with the whole desired state (every
config it can see) and the whole actual state (what it runs), on every change and on a
timer. Missing an event costs latency, never correctness.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstore.models import ComponentConfig, Role, start_rank, status_key

ROLE_ORDER: tuple[Role | None, ...] = ("source", "processor", "sink", None)


@dataclass(frozen=True)
class Start:
    key: str
    cfg: ComponentConfig
    index: int


@dataclass(frozen=True)
class Stop:
    key: str
    reason: str


@dataclass(frozen=True)
class Restart:
    key: str
    cfg: ComponentConfig
    index: int


Action = Start | Stop | Restart


def desired_replicas(
    configs: dict[str, ComponentConfig], agent: str
) -> dict[str, tuple[ComponentConfig, int]]:
    """The replicas this agent should run: enabled configs whose assignment names it."""
    out: dict[str, tuple[ComponentConfig, int]] = {}
    for cfg in configs.values():
        if not cfg.enabled:
            continue
        for index, assigned in enumerate(cfg.assignments[: cfg.replicas]):
            if assigned == agent:
                out[status_key(cfg.flow, cfg.node, index)] = (cfg, index)
    return out


def reconcile(
    desired: dict[str, tuple[ComponentConfig, int]],
    running: dict[str, str],
    why_gone: dict[str, str] | None = None,
) -> list[Action]:
    """Actions turning ``running`` (replica key -> config fingerprint) into ``desired``.

    ``why_gone`` optionally explains, per config key, why a running replica is no longer
    desired (for the log); the default reason is "no longer assigned here".
    """
    actions: list[Action] = []
    why_gone = why_gone or {}
    for key in sorted(running.keys() - desired.keys()):
        config_key = key.rsplit(".", 1)[0]
        actions.append(Stop(key, why_gone.get(config_key, "no longer assigned here")))
    for key in sorted(desired):
        cfg, index = desired[key]
        if key not in running:
            actions.append(Start(key, cfg, index))
        elif running[key] != cfg.desired_fingerprint():
            actions.append(Restart(key, cfg, index))
    return actions


def start_order(starts: list[Start | Restart]) -> list[Start | Restart]:
    """Replicas to start, consumers before producers (see
    :func:`~flowstore.models.start_rank`), each rank by key."""
    return sorted(starts, key=lambda a: (start_rank(a.cfg.role), a.key))


def stop_reasons(
    configs: dict[str, ComponentConfig], deleted: set[str], agent: str
) -> dict[str, str]:
    """Why replicas of each config key would stop here (for readable logs)."""
    reasons = {key: "config deleted" for key in deleted}
    for key, cfg in configs.items():
        if not cfg.enabled:
            reasons[key] = "disabled"
        elif agent not in cfg.assignments:
            reasons[key] = "assigned elsewhere"
    return reasons


def stop_groups(replicas: list[tuple[str, Role | None, int]],
                chain_at: dict[str, int] | None = None) -> list[list[str]]:
    """(key, role, dependency depth) of replicas to stop -> groups to stop one after the
    other (each group concurrently): the deepest in ``depends_on`` first (a node stops
    before what it depends on), then by role (sources, processors, sinks: what upstream
    flushes on stop still finds its consumers running), then by place in a fused chain
    (``chain_at``: replica key -> 0 for the chain's head, 1, 2, ...: a head never waits
    on a stopped peer)."""
    at = chain_at or {}

    def rank(key: str, role: Role | None, depth: int) -> tuple[int, int, int]:
        return -depth, ROLE_ORDER.index(role if role in ROLE_ORDER else None), at.get(key, 0)

    order = sorted({rank(*replica) for replica in replicas})
    return [[key for key, role, depth in replicas if rank(key, role, depth) == r]
            for r in order]
