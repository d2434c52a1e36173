"""flowengine: validation, translation to per-component configs and the flow lifecycle.

Public API: :func:`validate` (-> :class:`ValidationResult` of :class:`ValidationIssue`),
:func:`translate` (flow -> ``{"<flow>.<node>": ComponentConfig}``), and
:class:`FlowEngine` (apply/deploy/start/stop/undeploy/delete/rollback over NATS KV, built
on the config writes of :mod:`flowengine.sync` and the stop order of
:mod:`flowengine.stopping`; :meth:`FlowEngine.effective_state` -> :class:`EffectiveState`,
computed by the pure :func:`observe`). Errors:
:class:`ValidationFailed`, :class:`ConfigsNotConverged` (plus those of flowstore.errors).
"""

from flowengine.errors import ConfigsNotConverged, ValidationFailed
from flowengine.lifecycle import FlowEngine
from flowengine.observe import EffectiveState, ObservedState, observe
from flowengine.results import ApplyResult, ConfigChanges, TransitionResult
from flowengine.translate import infer_role, resolve_type, translate
from flowengine.validate import ValidationIssue, ValidationResult, validate, validate_loaded

__all__ = [
    "ApplyResult",
    "ConfigChanges",
    "ConfigsNotConverged",
    "EffectiveState",
    "FlowEngine",
    "ObservedState",
    "TransitionResult",
    "ValidationFailed",
    "ValidationIssue",
    "ValidationResult",
    "infer_role",
    "observe",
    "resolve_type",
    "translate",
    "validate",
    "validate_loaded",
]
