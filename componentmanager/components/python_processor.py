"""The ``python`` processor: calls a user function per event.

Where a call runs (a sync function's first call and every call once one blocked on a
worker thread, an ``async`` function on the event loop) is :mod:`.usercode`'s, shared with
the ``custom`` components; a replica holding the loop is reported degraded with what to
do (:meth:`Python.blocking_advice`).

The module is imported from ``config.python_path`` first (``flowctl apply`` and ``run``
default it to the flow file's directory), then the agent's ``--python-path`` and
``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from componentmanager.component import Component, Context
from componentmanager.components.processors import IN, OUT
from componentmanager.components.usercode import UserCalls, check_compiles, load_inline
from componentmanager.registry import ComponentType, register


class PythonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    function: str | None = Field(
        default=None,
        description='"module:function" to import at start; it takes an event and returns an '
        "event, a list of events, or None (or []) to drop it: counted in filtered (may be async).",
    )
    code: str | None = Field(
        default=None,
        description="Inline Python source defining process(event) with the same contract "
        "(only where the agent allows inline code).",
    )
    module_hash: str | None = Field(
        default=None,
        description="Set by `flowctl apply`, `run` and `dev`: a hash of the module's file, so "
        "a changed module restarts the node (and is imported afresh).",
        json_schema_extra={"internal": True},
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="Directories to import the module from, before the agent's "
        "--python-path; `flowctl apply` and `run` default it to the flow file's directory.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PythonConfig:
        if (self.function is None) == (self.code is None):
            raise ValueError("set exactly one of 'function' or 'code'")
        return self

    @field_validator("function")
    @classmethod
    def _module_and_name(cls, function: str | None) -> str | None:
        if function is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", function):
            raise ValueError(f"function {function!r} must be module:function, e.g. "
                             "enrich:enrich (enrich.py next to the flow file)")
        return function

    @field_validator("code")
    @classmethod
    def _compiles(cls, code: str | None) -> str | None:
        return check_compiles(code, "python processor")


#: The module_hash each module was imported with (a new hash means: reload it).
_IMPORTED_AS: dict[str, str] = {}

class Python(Component):
    """Calls a user function per event: a module function or inline ``process(event)``."""

    #: names this processor in errors
    what = "python processor"

    def __init__(self, config: PythonConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.config: PythonConfig = config
        self._fn: Any = None
        self._calls = UserCalls(ctx)

    async def start(self) -> None:
        cfg = self.config
        if cfg.code is not None:
            self._fn = load_inline(self.ctx, cfg.code, self.what, "process")["process"]
        else:
            self._fn = self._imported(cfg)
        self._calls.prepare(self._fn)

    def _imported(self, cfg: PythonConfig) -> Any:
        module_name, _, attr = (cfg.function or "").partition(":")
        for directory in reversed(cfg.python_path):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        try:
            module = importlib.import_module(module_name)
            if cfg.module_hash and _IMPORTED_AS.get(module_name, cfg.module_hash) \
                    != cfg.module_hash:
                module = importlib.reload(module)  # the file changed since
            _IMPORTED_AS[module_name] = cfg.module_hash or ""
        except ImportError as exc:
            raise ImportError(f"{self.what}: cannot import {module_name}: {exc}") from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise TypeError(f"{self.what}: {cfg.function} does not define a callable")
        return fn

    def blocking_advice(self) -> str | None:
        """What to do when this replica holds the event loop: only an async function can
        (see :mod:`.usercode`); None: the general advice."""
        return self._calls.advice()

    async def process(self, port: str, event: Any) -> None:
        result = await self._calls.call(self._fn, event)
        if result is None or (isinstance(result, list) and not result):
            self.ctx.count_filtered()  # None and [] both drop the event on purpose
            return
        for item in result if isinstance(result, list) else [result]:
            await self.ctx.emit("out", item)

    async def stop(self) -> None:
        self._calls.close()


_MOD = "componentmanager.components.python_processor"

register(ComponentType(
    name="python", role="processor", config_model=PythonConfig, inputs=IN, outputs=OUT,
    description="Process events with a Python function.",
    impl=f"{_MOD}:Python", extra={"fusable": True},
    docs="function: module:function, or code: inline source defining process(event). "
         "Return an event, a list of events, or None to filter it out. A sync function's "
         "first call, and every call once one blocked (over 2 ms), runs on a worker thread, "
         "one call at a time (order kept); add replicas for parallelism. An async function "
         "runs on the agent's loop and must not block (await asyncio.to_thread(...)). "
         "Inline code needs an agent that allows it.",
))
