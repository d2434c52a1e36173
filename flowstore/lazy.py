"""Lazy package exports: a package's ``__init__`` names its public API without importing
every module behind it.

``from flowengine import FlowEngine`` still works, but imports only the module that
defines ``FlowEngine``: a reading command (``flowctl list``) then never pays for the
component library or the validator it does not use. Nothing else lives here.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class _LazyPackage(ModuleType):
    """A package whose public names are imported from their module on first use."""

    _homes: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        home = self._homes.get(name)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule sets it on its package. Where a public function shares the
        # submodule's name (flowengine.validate), the package keeps meaning the function,
        # as an eager ``from flowengine.validate import validate`` in __init__ did.
        if isinstance(value, ModuleType) and name in self._homes:
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._homes})


def lazy_package(package: str, where: dict[str, list[str]]) -> None:
    """Make ``package`` (already in ``sys.modules``: call from its ``__init__``) export the
    names ``where`` maps each submodule to (``{"store": ["FlowStore"]}``), imported on
    first use; sets its ``__all__``."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    homes = {name: f"{package}.{sub}" for sub, names in where.items() for name in names}
    object.__setattr__(module, "_homes", homes)
    module.__all__ = sorted(homes)
