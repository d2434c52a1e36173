"""The run-time side of the expression language: what a compiled expression calls per event.

* :data:`FUNCTIONS`, the whitelist of callable functions (with their argument counts);
* :data:`CONSTANTS` (``true`` / ``false`` / ``null``);
* :data:`BINOPS` and :data:`CMPOPS`, the operators with the rules of
  :mod:`.compiler`: ``None`` propagates through arithmetic, an ordering
  comparison with ``None`` is false, ``x in None`` is false, ``*`` and ``**`` refuse results
  over :data:`MAX_SEQUENCE` items / :data:`MAX_INT_BITS` bits, ``%`` refuses strings;
* :func:`key_getter` and :func:`field_getter`, lookups where a missing key, index or field
  is ``None``.

Nothing here parses or checks expression text; that is :mod:`.compiler`.
"""

from __future__ import annotations

import ast
import operator
import time
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = [
    "BINOPS", "CMPOPS", "CONSTANTS", "FUNCTIONS", "LOOKUP_ERRORS", "MAX_INT_BITS",
    "MAX_SEQUENCE", "Fn", "field_getter", "key_getter",
]

Fn = Callable[[Any], Any]

MAX_SEQUENCE = 1_000_000  # items/characters a `*` may produce
MAX_INT_BITS = 1_000_000  # bits an integer `**` may produce

LOOKUP_ERRORS = (KeyError, IndexError, TypeError)


def _none_safe(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda x: None if x is None else fn(x)


def _to_str(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, dict | list | tuple):
        return msgspec.json.encode(x).decode()
    return str(x)


def _extreme(pick: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        items = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else args
        values = [v for v in items if v is not None]
        return pick(values) if values else None

    return fn


#: name -> (function, minimum arguments, maximum arguments or None for any)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "len": (_none_safe(len), 1, 1),
    "str": (_none_safe(_to_str), 1, 1),
    "int": (_none_safe(int), 1, 1),
    "float": (_none_safe(float), 1, 1),
    "bool": (bool, 1, 1),
    "abs": (_none_safe(abs), 1, 1),
    "min": (_extreme(min), 1, None),
    "max": (_extreme(max), 1, None),
    "round": (lambda x, n=None: None if x is None else round(x, n), 1, 2),
    "lower": (_none_safe(str.lower), 1, 1),
    "upper": (_none_safe(str.upper), 1, 1),
    "startswith": (lambda s, p: s is not None and str.startswith(s, p), 2, 2),
    "endswith": (lambda s, p: s is not None and str.endswith(s, p), 2, 2),
    "contains": (lambda c, x: c is not None and x in c, 2, 2),
    "now": (time.time, 0, 0),
    "coalesce": (lambda *a: next((x for x in a if x is not None), None), 1, None),
}

CONSTANTS = {"true": True, "false": False, "null": None}


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
        if sized and len(seq) * n > MAX_SEQUENCE:
            raise ValueError(f"result of * would exceed {MAX_SEQUENCE} items")
    return a * b


def _pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > MAX_INT_BITS:
        raise ValueError("result of ** is too large")
    return a**b


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        raise TypeError("string formatting with % is not supported; use str() and +")
    return a % b


BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
}


def _ordering(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda a, b: False if a is None or b is None else op(a, b)


CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _ordering(operator.lt),
    ast.LtE: _ordering(operator.le),
    ast.Gt: _ordering(operator.gt),
    ast.GtE: _ordering(operator.ge),
    ast.In: lambda a, b: b is not None and a in b,
    ast.NotIn: lambda a, b: b is None or a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


def key_getter(base: Fn, key: Any) -> Fn:
    """``base(e)[key]`` as a function of the event; None when it is missing."""

    def get(e: Any) -> Any:
        obj = base(e)
        try:
            return obj[key]
        except LOOKUP_ERRORS:
            return None

    return get


def field_getter(name: str) -> Fn:
    """The top-level field ``name`` of the event; None when it is missing."""

    def get(e: Any) -> Any:
        try:
            return e[name]
        except LOOKUP_ERRORS:
            return None

    return get
