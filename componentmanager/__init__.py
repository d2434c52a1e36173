"""componentmanager: the agent that runs components, the data plane and the component library.

Public API: the registry (:func:`get_type`, :func:`all_types`, :class:`ComponentType`,
:class:`Port`) and the component base (:class:`Component`).
"""

from componentmanager.component import Component, Context
from componentmanager.registry import (
    ComponentType,
    Port,
    all_types,
    get_type,
    register,
    types_named,
)

__all__ = [
    "Component",
    "ComponentType",
    "Context",
    "Port",
    "all_types",
    "get_type",
    "register",
    "types_named",
]
