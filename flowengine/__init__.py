"""flowengine: validation, translation to per-component configs and the flow lifecycle.

Public API: :func:`validate` (-> :class:`ValidationResult` of :class:`ValidationIssue`),
:func:`translate` (flow -> ``{"<flow>.<node>": ComponentConfig}``), and
:class:`FlowEngine` (apply/deploy/start/stop/undeploy/delete/rollback over NATS KV, built
on the config writes of :mod:`flowengine.sync` and the stop order of
:mod:`flowengine.stopping`; :meth:`FlowEngine.effective_state` -> :class:`EffectiveState`,
computed by the pure :func:`observe`). Errors:
:class:`ValidationFailed`, :class:`ConfigsNotConverged` (plus those of flowstore.errors).
"""

from flowstore.lazy import lazy_package

#: Imported on first use (:func:`flowstore.lazy.lazy_package`): a reading command that
#: needs only :class:`FlowEngine` does not load the validator and the component library.
lazy_package(__name__, {
    "errors": ["ConfigsNotConverged", "ValidationFailed"],
    "lifecycle": ["FlowEngine"],
    "observe": ["EffectiveState", "ObservedState", "observe"],
    "results": ["ApplyResult", "ConfigChanges", "TransitionResult"],
    "translate": ["infer_role", "resolve_type", "translate"],
    "issues": ["ValidationIssue", "ValidationResult"],
    "validate": ["validate", "validate_loaded"],
})
