"""componentmanager: the agent that runs components, the data plane and the component library.

Public API: the registry (:func:`get_type`, :func:`all_types`, :class:`ComponentType`,
:class:`Port`), the component base (:class:`Component`) and the failures a component
raises to say how an event failed (:class:`EventError`: the event itself is wrong,
final; :class:`RetryableError`: try it again).
"""

from componentmanager.component import Component, Context, EventError, RetryableError
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
    "EventError",
    "Port",
    "RetryableError",
    "all_types",
    "get_type",
    "register",
    "types_named",
]
