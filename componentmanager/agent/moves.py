"""What the leader says when it moves a replica: one log line per changed assignment.

Pure: :func:`move_lines` compares a config's assignments before and after placement and
says, for each replica that changed, where it went and why, e.g. ``moved out.0 from a1
to a2: a1 silent 3.1 s`` (seconds on the leader's own clock since it last saw the agent's
record change). The leader publishes each line, once the new assignments are written,
to the replica's log subject ``flowctl.logs.<flow>.<node>.<replica>`` with the stream
``leader``, so ``flowctl logs`` and the console show it beside the replica's own lines.
"""

from __future__ import annotations

from flowstore.models import ComponentConfig


def why_not_there(agent: str, silent: dict[str, float], known: set[str]) -> str:
    """Why a replica may no longer stay on ``agent``."""
    if agent in silent:
        return f"{agent} silent {silent[agent]:.1f} s"
    if agent not in known:
        return f"{agent} is gone (no heartbeat record)"
    return f"{agent} no longer matches the node's placement"


def move_lines(cfg: ComponentConfig, decided: list[str | None], pending: dict[int, str],
               silent: dict[str, float], known: set[str]) -> list[tuple[int, str]]:
    """``(replica, line)`` for each replica of ``cfg`` whose agent changed in
    ``decided``. ``pending``: replica -> why no agent can take it; ``silent``: agent ->
    seconds the leader has seen it silent; ``known``: every agent with a record."""
    lines = []
    for replica, new in enumerate(decided):
        old = cfg.assignments[replica] if replica < len(cfg.assignments) else None
        if old == new:
            continue
        name = f"{cfg.node}.{replica}"
        if old is None:
            lines.append((replica, f"placed {name} on {new}"))
        elif new is None:
            why = pending.get(replica, "no eligible agent")
            lines.append((replica, f"could not move {name} from {old}: "
                                   f"{why_not_there(old, silent, known)}; {why}"))
        else:
            lines.append((replica, f"moved {name} from {old} to {new}: "
                                   f"{why_not_there(old, silent, known)}"))
    return lines


__all__ = ["move_lines", "why_not_there"]
