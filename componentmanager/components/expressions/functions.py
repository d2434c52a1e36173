"""The run-time side of the expression language: what a compiled expression calls per event.

Errors are errors: a field the event does not have raises :class:`MissingField`
("field 'amont' is not in the event"), and an operator or function given the wrong kinds
of values raises ``TypeError`` ("'*' needs two numbers, got string and number"); both
fail that one event (counted, dead-lettered with the reason). Optional data is written
explicitly: ``has(x)``, ``get(x, default)``, ``coalesce(a, b, ...)`` (the compiler makes
their arguments lenient).

* :data:`FUNCTIONS`, the whitelist of callable functions (with their argument counts);
* :data:`CONSTANTS` (``true`` / ``false`` / ``null``);
* :data:`BINOPS` and :data:`CMPOPS`, the operators with those rules; ``*`` and ``**``
  refuse results over :data:`MAX_SEQUENCE` items / :data:`MAX_INT_BITS` bits;
* :func:`key_getter` and :func:`field_getter`, lookups that name the missing path.

Nothing here parses or checks expression text; that is :mod:`.compiler`.
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import time
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = [
    "BINOPS", "CMPOPS", "CONSTANTS", "FUNCTIONS", "LENIENT", "MAX_INT_BITS",
    "MAX_SEQUENCE", "Fn", "MissingField", "field_getter", "key_getter", "kind", "lenient",
    "lookup",
]

Fn = Callable[[Any], Any]

MAX_SEQUENCE = 1_000_000  # items/characters a `*` may produce
MAX_INT_BITS = 1_000_000  # bits an integer `**` may produce



class MissingField(LookupError):
    """An expression read a field (key, index) the event does not have."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        super().__init__(detail or f"field '{path}' is not in the event")

    def __str__(self) -> str:
        return str(self.args[0])


def kind(x: Any) -> str:
    """The name of a value's kind in messages: null, bool, number, string, list, object."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, int | float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list | tuple):
        return "list"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


_PLAIN_NUMBERS = (int, float)  # what JSON numbers decode to: the common case, checked first


def _is_number(x: Any) -> bool:
    return type(x) in _PLAIN_NUMBERS or (
        isinstance(x, int | float) and not isinstance(x, bool))


def _typed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a message that names the function and the kinds it was given."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except (TypeError, AttributeError):
            got = ", ".join(kind(a) for a in args)
            raise TypeError(f"{name}() cannot take ({got})") from None

    return call


def _to_str(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "null"
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


def _coalesce(*args: Any) -> Any:
    return next((x for x in args if x is not None), None)


def _str_fn(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(s: Any, *rest: Any) -> Any:
        if not isinstance(s, str):
            raise TypeError(f"{name}() needs a string, got {kind(s)}")
        return fn(s, *rest)

    return call


def _contains(container: Any, x: Any) -> bool:
    return _in(x, container)


#: name -> (function, minimum arguments, maximum arguments or None for any).
#: ``has``, ``get`` and ``coalesce`` read their arguments leniently (see the compiler).
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "len": (_typed("len", len), 1, 1),
    "str": (_to_str, 1, 1),
    "int": (_typed("int", int), 1, 1),
    "float": (_typed("float", float), 1, 1),
    "bool": (bool, 1, 1),
    "abs": (_typed("abs", abs), 1, 1),
    "min": (_typed("min", _extreme(min)), 1, None),
    "max": (_typed("max", _extreme(max)), 1, None),
    "round": (_typed("round", lambda x, n=None: round(x, n)), 1, 2),
    "lower": (_str_fn("lower", str.lower), 1, 1),
    "upper": (_str_fn("upper", str.upper), 1, 1),
    "startswith": (_str_fn("startswith", _typed("startswith", str.startswith)), 2, 2),
    "endswith": (_str_fn("endswith", _typed("endswith", str.endswith)), 2, 2),
    "contains": (_contains, 2, 2),
    "now": (time.time, 0, 0),
    "coalesce": (_coalesce, 1, None),
    "has": (lambda present: present, 1, 1),
    "get": (lambda value, default=None: default if value is None else value, 1, 2),
}
#: Functions whose arguments may name missing fields (a missing field reads as null;
#: ``has`` receives whether its field is there).
LENIENT = frozenset({"coalesce", "get", "has"})

CONSTANTS = {"true": True, "false": False, "null": None}


def _numbers(symbol: str, a: Any, b: Any) -> None:
    if type(a) in _PLAIN_NUMBERS and type(b) in _PLAIN_NUMBERS:
        return
    if not (_is_number(a) and _is_number(b)):
        raise TypeError(f"'{symbol}' needs two numbers, got {kind(a)} and {kind(b)}")


def _finite(symbol: str, value: Any) -> Any:
    """A float result that overflowed (inf) or is nan would be written as null: an error."""
    if type(value) is float and not math.isfinite(value):
        raise ValueError(f"result of '{symbol}' is not a finite number ({value})")
    return value


def _add(a: Any, b: Any) -> Any:
    if _is_number(a) and _is_number(b):
        return _finite("+", a + b)
    for cls in (str, list):
        if isinstance(a, cls) and isinstance(b, cls):
            if len(a) + len(b) > MAX_SEQUENCE:
                raise ValueError(f"result of + would exceed {MAX_SEQUENCE} items")
            return a + b
    raise TypeError(f"'+' needs two numbers, two strings or two lists, got {kind(a)} and "
                    f"{kind(b)}")


def _arith(symbol: str, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def fn(a: Any, b: Any) -> Any:
        if type(a) not in _PLAIN_NUMBERS or type(b) not in _PLAIN_NUMBERS:
            _numbers(symbol, a, b)  # the checks inline for plain numbers: run per event
        value = op(a, b)
        if type(value) is float and not math.isfinite(value):
            _finite(symbol, value)
        return value

    return fn


def _pow(a: Any, b: Any) -> Any:
    _numbers("**", a, b)
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > MAX_INT_BITS:
        raise ValueError("result of ** is too large")
    return a**b


#: Operators whose result for two plain numbers is the operator's own (no extra rule):
#: what :func:`field_with_constant` may compute inline.
PLAIN_ARITHMETIC: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
}


def field_with_constant(name: str, op_node: type[ast.operator], value: int | float) -> Fn:
    """``field <op> constant`` (``seq * 2``, ``price + 1``) as one function of the event:
    the same value and the same errors as the general form (a field getter, then
    :data:`BINOPS`), in one call per event rather than three (it runs per event per
    stage). For anything but a plain number in the field, the general operator decides."""
    symbol, op = PLAIN_ARITHMETIC[op_node]
    general = BINOPS[op_node]

    def fn(e: Any) -> Any:
        a = e[name] if type(e) is dict and name in e else lookup(e, name, name)
        if type(a) in _PLAIN_NUMBERS:
            result = op(a, value)
            if type(result) is float and not math.isfinite(result):
                _finite(symbol, result)
            return result
        return general(a, value)

    fn.frame = _field_with_constant_frame(name, op, value)  # type: ignore[attr-defined]
    return fn


_PLAIN = frozenset(_PLAIN_NUMBERS)


def _field_with_constant_frame(name: str, op: Callable[[Any, Any], Any],
                               value: int | float) -> Callable[[list[Any]], list[Any]]:
    """The values of ``field <op> constant`` for a frame of plain objects whose field is
    a plain number, in C-level passes (no Python call per event). Anything else raises
    (what the caller takes as: each event its own way, through the general form)."""
    get = operator.itemgetter(name)
    check = op is operator.truediv or type(value) is float

    def frame(events: list[Any]) -> list[Any]:
        values = list(map(get, events))
        kinds = set(map(type, values))
        if not kinds <= _PLAIN:
            raise TypeError("not plain numbers")
        results = list(map(op, values, itertools.repeat(value, len(values))))
        if (check or float in kinds) and not all(map(math.isfinite, results)):
            raise ValueError("not finite")
        return results

    return frame


BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: _arith("-", operator.sub),
    ast.Mult: _arith("*", operator.mul),
    ast.Div: _arith("/", operator.truediv),
    ast.FloorDiv: _arith("//", operator.floordiv),
    ast.Mod: _arith("%", operator.mod),
    ast.Pow: _pow,
}


def _ordering(symbol: str, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def fn(a: Any, b: Any) -> Any:
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return op(a, b)
        raise TypeError(f"cannot compare {kind(a)} {symbol} {kind(b)}")

    return fn


def _in(a: Any, b: Any) -> bool:
    if isinstance(b, str) and not isinstance(a, str):
        raise TypeError(f"'in' a string needs a string, got {kind(a)}")
    if not isinstance(b, str | list | tuple | dict):
        raise TypeError(f"'in' needs a list, string or object on the right, got {kind(b)}")
    return a in b


CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _ordering("<", operator.lt),
    ast.LtE: _ordering("<=", operator.le),
    ast.Gt: _ordering(">", operator.gt),
    ast.GtE: _ordering(">=", operator.ge),
    ast.In: _in,
    ast.NotIn: lambda a, b: not _in(a, b),
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


def lookup(obj: Any, key: Any, path: str) -> Any:
    """``obj[key]``, raising :class:`MissingField` that names ``path`` when it is not there."""
    if isinstance(obj, dict):
        try:
            return obj[key]
        except KeyError:
            raise MissingField(path) from None
        except TypeError:  # an unhashable key
            raise TypeError(f"'{path}': {kind(key)} is not a key") from None
    if isinstance(key, str):
        raise MissingField(path, f"field '{path}' is not in the event ({kind(obj)} has no fields)")
    if isinstance(obj, list | tuple | str):
        if not isinstance(key, int) or isinstance(key, bool):
            raise TypeError(f"'{path}': a {kind(obj)} is indexed by a number, not {kind(key)}")
        try:
            return obj[key]
        except IndexError:
            raise MissingField(path, f"'{path}' is out of range (length {len(obj)})") from None
    raise MissingField(path, f"field '{path}' is not in the event ({kind(obj)} has no fields)")


def key_getter(base: Fn, key: Any, path: str) -> Fn:
    """``base(e)[key]`` as a function of the event (``path`` names it in errors)."""
    return lambda e: lookup(base(e), key, path)


def field_getter(name: str) -> Fn:
    """The top-level field ``name`` of the event."""

    def field(e: Any) -> Any:
        if type(e) is dict and name in e:  # the common case without a second call
            return e[name]
        return lookup(e, name, name)

    return field


def lenient(name: str, fn: Any, args: list[Fn]) -> Fn:
    """``has``/``get``/``coalesce``: a missing field is not an error for these."""

    def soft(a: Fn) -> Fn:
        def read(e: Any) -> Any:
            try:
                return a(e)
            except MissingField:
                return None

        return read

    if name == "has":
        field = args[0]

        def has(e: Any) -> bool:
            try:
                field(e)
            except MissingField:
                return False
            return True

        return has
    softs = [soft(a) for a in args[:1]] + args[1:] if name == "get" else [soft(a) for a in args]
    return lambda e: fn(*[a(e) for a in softs])
