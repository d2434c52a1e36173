"""What the lifecycle actions of :class:`~flowengine.lifecycle.FlowEngine` return.

:class:`ConfigChanges` (the keys an action wrote, removed or left alone), inside an
:class:`ApplyResult` (apply, rollback) or a :class:`TransitionResult` (deploy, start,
stop, undeploy, delete). Plain data with ``to_dict()`` for JSON output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from flowengine.issues import ValidationResult
from flowstore.models import FlowRecord, FlowState


@dataclass
class ConfigChanges:
    """What an action wrote. Keys are ``flowctl_config`` keys (``<flow>.<node>``) except
    ``pending``, ``status_removed`` and ``not_stopped``, which are ``flowctl_status`` keys,
    and ``streams_removed``, which names JetStream streams."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)  # status key -> reason
    status_removed: list[str] = field(default_factory=list)
    spec_changed: bool = False  # apply only: a new revision of the flow was written
    validation: ValidationResult | None = None
    #: stop (and undeploy/delete --force): replicas still running when stop stopped waiting
    not_stopped: list[str] = field(default_factory=list)
    streams_removed: list[str] = field(default_factory=list)  # JetStream streams deleted
    reset: list[str] = field(default_factory=list)  # apply --reset: configs started over

    @property
    def written(self) -> list[str]:
        return sorted([*self.added, *self.updated])

    def merge_removed(self, other: ConfigChanges) -> None:
        """Add the config and status keys ``other`` removed (each key listed once)."""
        self.removed += [k for k in other.removed if k not in self.removed]
        self.status_removed += [k for k in other.status_removed if k not in self.status_removed]
        self.streams_removed += [s for s in other.streams_removed if s not in self.streams_removed]
        self.unchanged = [k for k in self.unchanged if k not in self.removed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["validation"] = self.validation.to_dict() if self.validation else None
        return out


class ApplyResult(NamedTuple):
    flow: FlowRecord
    created: bool
    changes: ConfigChanges


@dataclass
class TransitionResult:
    """The outcome of deploy/start/stop/undeploy/delete: ``flow`` is the record written
    (for delete: the last one before deletion), ``previous`` the state before."""

    flow: FlowRecord
    action: str
    previous: FlowState
    changes: ConfigChanges

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow.name,
            "action": self.action,
            "from": self.previous.value,
            "to": None if self.action == "delete" else self.flow.state.value,
            "revision": self.flow.revision,
            "changes": self.changes.to_dict(),
        }


#: (action, desired state) pairs where a lifecycle action has nothing to do: the flow is
#: already there (the CLI and the API answer success and say so).
NOTHING_TO_DO = {
    ("deploy", "deployed_stopped"): "already deployed",
    ("deploy", "running"): "already deployed and running",
    ("start", "running"): "already running",
    ("stop", "deployed_stopped"): "already stopped",
    ("stop", "not_deployed"): "not deployed, so nothing runs",
    ("undeploy", "not_deployed"): "already not deployed",
}

#: The desired state from which each lifecycle action moves the flow (the engine refuses
#: it from the others, or has nothing to do: :data:`NOTHING_TO_DO`).
ACTION_APPLIES = {
    "deploy": "not_deployed",
    "start": "deployed_stopped",
    "stop": "running",
    "undeploy": "deployed_stopped",
}


def applicable_actions(state: str) -> list[str]:
    """The lifecycle actions that change a flow in desired ``state`` (the console enables
    only their buttons)."""
    return [action for action, applies in ACTION_APPLIES.items() if applies == state]
