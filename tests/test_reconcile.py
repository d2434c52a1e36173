"""The pure reconcile function: plain data in, actions out."""

from __future__ import annotations

from componentmanager.agent.reconcile import (
    Restart,
    Start,
    Stop,
    desired_replicas,
    reconcile,
    start_order,
    stop_reasons,
)
from flowstore.models import ComponentConfig


def cfg(
    node: str, assignments: list[str | None], enabled: bool = True, **config: object
) -> ComponentConfig:
    return ComponentConfig(
        flow="f",
        node=node,
        type="filter",
        queue=f"flowctl.f.{node}",
        replicas=len(assignments),
        assignments=assignments,
        enabled=enabled,
        config=config,
    )


def test_desired_replicas_only_enabled_and_assigned_here() -> None:
    configs = {
        "f.a": cfg("a", ["me", "other", "me"]),
        "f.b": cfg("b", ["me"], enabled=False),
        "f.c": cfg("c", [None]),
    }
    desired = desired_replicas(configs, "me")
    assert sorted(desired) == ["f.a.0", "f.a.2"]
    assert desired["f.a.2"][1] == 2


def test_start_stop_restart_and_nothing_for_unchanged() -> None:
    a = cfg("a", ["me"])
    b = cfg("b", ["me"])
    b_new = cfg("b", ["me"], where="x > 1")
    desired = desired_replicas({"f.a": a, "f.b": b_new}, "me")
    running = {
        "f.a.0": a.desired_fingerprint(),
        "f.b.0": b.desired_fingerprint(),
        "f.gone.0": "whatever",
    }
    actions = reconcile(desired, running, {"f.gone": "config deleted"})
    assert actions == [
        Stop("f.gone.0", "config deleted"),
        Restart("f.b.0", b_new, 0),
    ]
    assert reconcile(desired, {}) == [Start("f.a.0", a, 0), Start("f.b.0", b_new, 0)]


def test_enable_flag_and_assignment_changes_do_not_restart() -> None:
    a = cfg("a", ["me", "x"])
    moved = cfg("a", ["me", "y"])
    running = {"f.a.0": a.desired_fingerprint()}
    assert reconcile(desired_replicas({"f.a": moved}, "me"), running) == []


def test_stop_reasons() -> None:
    configs = {"f.a": cfg("a", ["me"], enabled=False), "f.b": cfg("b", ["other"])}
    assert stop_reasons(configs, {"f.c"}, "me") == {
        "f.c": "config deleted",
        "f.a": "disabled",
        "f.b": "assigned elsewhere",
    }


def test_start_order_consumers_first() -> None:
    """Sinks (and nodes of no known role), processors, then sources: an at-most-once
    source waits for what it feeds, so that starts first."""
    roles = {"gen": "source", "work": "processor", "out": "sink", "ext": None}
    starts = [Start(f"f.{n}.0", cfg(n, ["me"]).model_copy(update={"role": r}), 0)
              for n, r in sorted(roles.items())]
    assert [a.key for a in start_order(starts)] == ["f.ext.0", "f.out.0", "f.work.0",
                                                    "f.gen.0"]


def test_the_view_wakes_the_reconcile_only_for_changes_that_may_change_what_runs_here(
) -> None:
    """A config of other agents changes nothing here (a large flow on many agents); one
    assigned here before or now, a deleted one or an unreadable one does."""
    from componentmanager.agent.configwatch import ConfigView

    woken: list[int] = []
    view = ConfigView(None, lambda: woken.append(1), "me")  # type: ignore[arg-type]
    revision = iter(range(1, 100))

    def put(key: str, config: ComponentConfig | bytes | None) -> int:
        before = len(woken)
        value = config.to_json() if isinstance(config, ComponentConfig) else config
        view._apply(key, value, next(revision), config is None)
        return len(woken) - before

    assert put("f.a", cfg("a", ["other"])) == 0  # another agent's
    assert put("f.a", cfg("a", ["other"], enabled=False)) == 0
    assert put("f.b", cfg("b", ["me"])) == 1  # assigned here
    assert put("f.b", cfg("b", ["other"])) == 1  # moved away
    assert put("f.b", cfg("b", ["other"], enabled=False)) == 0
    assert put("f.a", None) == 1  # deleted
    assert put("f.c", b"{not json") == 1  # unreadable
    assert view.version == 7 and set(view.configs) == {"f.b"}
