"""The component registry: static metadata of every component type.

A :class:`ComponentType` declares its role, its ports (pure data) and a pydantic config
model, plus the class that implements it (imported only when a component is created).
Validation reads this without constructing anything or touching NATS.

Types are keyed by (role, name): a source and a sink may share a name (``file``,
``http``, ``nats``); the node's role (its file section, or its connections for
canvas exports) picks one. Built-in types live in :mod:`componentmanager.components`
and register on import; third-party packages add types through the entry point group
``flowctl.components`` (each entry point names a :class:`ComponentType` or a list).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

Role = Literal["source", "processor", "sink"]
ENTRY_POINT_GROUP = "flowctl.components"

log = structlog.get_logger("flowctl.registry")


@dataclass(frozen=True)
class Port:
    name: str
    required: bool = False
    description: str = ""


class EmptyConfig(BaseModel):
    """For types that take no config."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ComponentType:
    """What a component type is, as data. ``impl`` is "module:Class", loaded lazily.

    ``dynamic_outputs``: the output ports are named by the config (``route``); any port
    name is then accepted at validation and the config check decides.

    ``extra["fusable"]``: nodes of the type may run fused with their neighbours in one
    replica (:mod:`flowengine.plan`): a stateless processor; a source; a sink whose
    ``flush()`` is cheap (the chain's first replica flushes it before every ack or stored
    source position) and whose ``held()`` counts what it has not written yet.
    """

    name: str
    role: Role
    description: str
    config_model: type[BaseModel] = EmptyConfig
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()
    impl: str = ""
    dynamic_outputs: bool = False
    docs: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: sinks: how a replay is kept from repeating with ``delivery: exactly-once``:
    #: "transactional" or "idempotent" (see :mod:`componentmanager.component`); None:
    #: it cannot take part (validation refuses it)
    exactly_once: str | None = None
    #: sources: why a node of this type with this config (its validated model) never
    #: finishes on its own, or None when it does (its ``run()`` returns: ``generate`` with
    #: a ``count``, ``file`` without ``follow``); ``flowctl run --until-done`` refuses a
    #: flow with a source that never finishes. Not set: the type does not say (a
    #: third-party source): it is not judged.
    runs_forever: Callable[[Any], str | None] | None = None

    def endless_reason(self, config: dict[str, Any]) -> str | None:
        """Why a node of this type with ``config`` never finishes (see
        :attr:`runs_forever`); None when it finishes, does not say, or the config is
        invalid (validation reports that)."""
        if self.runs_forever is None:
            return None
        try:
            model = self.config_model.model_validate(config)
        except ValidationError:
            return None
        return self.runs_forever(model)

    def input_port(self, name: str) -> Port | None:
        return next((p for p in self.inputs if p.name == name), None)

    def output_port(self, name: str) -> Port | None:
        return next((p for p in self.outputs if p.name == name), None)

    def output_names(self, config: dict[str, Any]) -> list[str]:
        """The output ports of a node of this type with this config."""
        names = [p.name for p in self.outputs]
        if self.dynamic_outputs:
            hook = self.extra.get("outputs_from_config")
            if hook is not None:
                names = [*names, *(n for n in hook(config) if n not in names)]
        return names

    def load_class(self) -> type:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for `flowctl components -o json`)."""
        return {
            "type": self.name,
            "role": self.role,
            "description": self.description,
            "inputs": [p.__dict__ for p in self.inputs],
            "outputs": [p.__dict__ for p in self.outputs],
            "dynamic_outputs": self.dynamic_outputs,
            "config_schema": self.config_model.model_json_schema(),
        }


def endless(reason: str) -> Callable[[Any], str]:
    """:attr:`ComponentType.runs_forever` of a source that never finishes, whatever its
    config (``reason`` says why)."""
    return lambda _config: reason


#: ... of a source that subscribes (nats, mqtt).
RECEIVES_UNTIL_STOPPED = endless("it receives messages until stopped")

_TYPES: dict[tuple[str, str], ComponentType] = {}
#: name -> its types sorted by role (what :func:`types_named` returns), and the
#: registrations it was built from (tests register types straight into _TYPES)
_BY_NAME: dict[str, list[ComponentType]] = {}
_INDEXED: dict[tuple[str, str], ComponentType] = {}
_loaded = False


def register(component_type: ComponentType) -> ComponentType:
    _TYPES[(component_type.role, component_type.name)] = component_type
    return component_type


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("componentmanager.components")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not break the registry
            log.warning("component plugin failed to load", entry_point=ep.name, error=str(exc))
            continue
        for item in loaded if isinstance(loaded, list | tuple) else [loaded]:
            if isinstance(item, ComponentType):
                register(item)


def types_named(name: str) -> list[ComponentType]:
    """Every registered type called ``name`` (one per role)."""
    _load()
    if _INDEXED != _TYPES:  # (translate asks once per node: 10,000 nodes ask a lot)
        _BY_NAME.clear()
        for (_, n), t in sorted(_TYPES.items()):
            _BY_NAME.setdefault(n, []).append(t)
        _INDEXED.clear()
        _INDEXED.update(_TYPES)
    return list(_BY_NAME.get(name, []))


def get_type(name: str, role: str | None = None) -> ComponentType | None:
    """The type ``name`` in ``role``; without a role, only when the name is unambiguous."""
    _load()
    if role is not None:
        return _TYPES.get((role, name))
    found = types_named(name)
    return found[0] if len(found) == 1 else None


def all_types() -> list[ComponentType]:
    """Every registered type, sorted by name then role."""
    _load()
    return sorted(_TYPES.values(), key=lambda t: (t.name, t.role))
