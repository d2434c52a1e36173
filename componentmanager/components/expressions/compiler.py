"""A small, safe expression language over event fields (``filter``, ``transform``, ...).

Syntax is a subset of Python expressions, parsed with ``ast.parse(mode="eval")`` and
compiled once into a tree of closures (nothing re-walks the AST per event, nothing is
ever passed to ``eval``). Allowed:

* literals (str, int, float, bool, None) and list / tuple / dict literals;
* names: a top-level field of the event, ``event`` (the whole event), ``true``,
  ``false``, ``null``; these constants and ``event`` shadow fields of the same name
  (use ``event["true"]`` for those);
* ``user.name`` and ``user["name"]`` (dict-key access on event data, never Python
  attribute access), ``items[0]``, ``items[-1]``, slices;
* arithmetic ``+ - * / // % **``, unary ``- + not``, comparisons (also chained),
  ``in`` / ``not in``, ``is`` / ``is not``, ``and`` / ``or``, ``a if cond else b``;
* the functions in :data:`FUNCTIONS`: len str int float bool abs min max round lower
  upper startswith endswith contains now coalesce (positional arguments only).

Everything else (imports, lambdas, comprehensions, f-strings, method calls, attribute
access on literals, names starting with ``__``, keyword arguments, ...) is rejected at
compile time with an :class:`ExpressionError` that names the construct and its column.

Errors are errors (see :mod:`.functions`): reading a field, key or index the event does
not have, or combining the wrong kinds of values (``"str" * 2``, ``"x" + 1``,
``null > 3``), raises :class:`EvaluationError` with a reason ("field 'amont' is not in the
event"), which fails that one event. Optional data is written explicitly: ``has(x)``
(the field is there, even when null), ``get(x, default)`` (the default when x is missing
or null), ``coalesce(a, b, ...)`` (the first that is there and not null).

This module parses, checks and compiles; what the compiled closures call per event (the
functions, the operators with these rules, the lookups) is
:mod:`componentmanager.components.expressions.functions`. :data:`FUNCTIONS` is re-exported here.
"""

from __future__ import annotations

import ast
import functools
import operator
import warnings
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, Field

from componentmanager.component import EventError
from componentmanager.components.expressions.functions import (
    BINOPS,
    CMPOPS,
    CONSTANTS,
    FUNCTIONS,
    LENIENT,
    PLAIN_ARITHMETIC,
    Fn,
    MissingField,
    field_getter,
    field_with_constant,
    key_getter,
    kind,
    lenient,
    lookup,
)

__all__ = [
    "FUNCTIONS", "EvaluationError", "Expression", "ExpressionError", "ExpressionStr",
    "compile_expression", "validate_expression",
]

MAX_LENGTH = 10_000  # characters of expression text


class ExpressionError(ValueError):
    """An expression that is not allowed or does not parse (a ValueError, so pydantic
    validators turn it into a validation error)."""

    def __init__(self, message: str, column: int | None = None, text: str = "",
                 line: int | None = None) -> None:
        self.message = message
        self.column = column
        self.line = line
        self.text = text
        where = ""
        if column is not None:
            where = f" (column {column})"
            if line and line > 1:
                where = f" (line {line}, column {column})"
        super().__init__(f"{message}{where} in expression {text!r}" if text else message + where)


class EvaluationError(ExpressionError, EventError):
    """A valid expression that failed on one event (e.g. ``"a" < 1``)."""


_OPERATOR_SYMBOLS = {
    ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^",
    ast.MatMult: "@", ast.Invert: "~",
}

_FORBIDDEN_NAMES: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.JoinedStr: "f-string",
    ast.Set: "set literal",
    ast.Starred: "starred expression (*x)",
}


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.dispatch: dict[type[ast.AST], Callable[[Any], Fn]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.Attribute: self._attribute,
            ast.Subscript: self._subscript,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unaryop,
            ast.BoolOp: self._boolop,
            ast.Compare: self._compare,
            ast.IfExp: self._ifexp,
            ast.Call: self._call,
            ast.List: self._sequence,
            ast.Tuple: self._sequence,
            ast.Dict: self._dict,
            ast.Slice: self._slice,
        }

    def fail(self, node: ast.AST, message: str, offset: int | None = None) -> NoReturn:
        """Raise for ``node``; ``offset`` (a UTF-8 byte offset in its line) overrides its start."""
        lineno = getattr(node, "lineno", 1)
        if offset is None:
            offset = getattr(node, "col_offset", 0)
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        column = len(line.encode()[:offset].decode("utf-8", "replace")) + 1
        raise ExpressionError(message, column, self.text, lineno)

    def _end_offset(self, node: ast.AST, back: int) -> int | None:
        """The byte offset ``back`` bytes before the end of ``node`` (single-line nodes)."""
        if getattr(node, "end_lineno", None) != getattr(node, "lineno", None):
            return None
        end = getattr(node, "end_col_offset", None)
        return None if end is None else end - back

    def _operator_offset(self, node: ast.BinOp) -> int | None:
        """Where the operator of ``node`` is: after the left operand and any ``)``."""
        if node.left.end_lineno != node.lineno or node.left.end_col_offset is None:
            return None
        raw = self.lines[node.lineno - 1].encode()
        pos = node.left.end_col_offset
        while pos < len(raw) and raw[pos : pos + 1] in (b" ", b")", b"\t"):
            pos += 1
        return pos

    def compile(self, node: ast.AST) -> Fn:
        handler = self.dispatch.get(type(node))
        if handler is None:
            what = _FORBIDDEN_NAMES.get(type(node), f"{type(node).__name__} expression")
            hint = " (use str() and +)" if isinstance(node, ast.JoinedStr) else ""
            self.fail(node, f"{what} is not allowed{hint}")
        return handler(node)

    def _check_name(self, node: ast.AST, name: str, kind: str) -> None:
        if name.startswith("__"):
            offset = self._end_offset(node, len(name)) if kind == "attribute" else None
            self.fail(node, f"{kind} {name!r} is not allowed (names starting with '__' are "
                            "reserved)", offset)

    def _constant(self, node: ast.Constant) -> Fn:
        value = node.value
        if value is not None and not isinstance(value, str | int | float):
            self.fail(node, f"{type(value).__name__} literals are not allowed")
        return lambda e: value

    def _name(self, node: ast.Name) -> Fn:
        self._check_name(node, node.id, "name")
        if node.id in CONSTANTS:
            value = CONSTANTS[node.id]
            return lambda e: value
        if node.id == "event":
            return lambda e: e
        return field_getter(node.id)

    def _attribute(self, node: ast.Attribute) -> Fn:
        base = self.compile(node.value)  # report problems left to right
        self._check_name(node, node.attr, "attribute")
        if isinstance(node.value, ast.Constant | ast.List | ast.Tuple | ast.Dict):
            self.fail(node, f"attribute access on a literal ('.{node.attr}') is not allowed",
                      self._end_offset(node, len(node.attr) + 1))
        return key_getter(base, node.attr, _path_text(node))

    def _subscript(self, node: ast.Subscript) -> Fn:
        base = self.compile(node.value)
        key_node = node.slice
        path = _path_text(node)
        if isinstance(key_node, ast.Constant) and isinstance(key_node.value, str | int):
            return key_getter(base, key_node.value, path)
        if isinstance(key_node, ast.Slice):
            sl = self.compile(key_node)

            def cut(e: Any) -> Any:
                obj = base(e)
                if not isinstance(obj, list | tuple | str):
                    raise TypeError(f"'{path}': cannot slice {kind(obj)}")
                return obj[sl(e)]

            return cut
        key = self.compile(key_node)
        return lambda e: lookup(base(e), key(e), path)

    def _slice(self, node: ast.Slice) -> Fn:
        lo, hi, st = (self.compile(p) if p is not None else (lambda e: None)
                      for p in (node.lower, node.upper, node.step))
        return lambda e: slice(lo(e), hi(e), st(e))

    def _binop(self, node: ast.BinOp) -> Fn:
        op = BINOPS.get(type(node.op))
        if op is None:
            symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
            self.fail(node, f"operator {symbol!r} is not allowed", self._operator_offset(node))
        left, right = self.compile(node.left), self.compile(node.right)
        if (isinstance(node.left, ast.Name) and node.left.id not in CONSTANTS
                and node.left.id != "event" and isinstance(node.right, ast.Constant)
                and type(node.right.value) in (int, float)
                and type(node.op) in PLAIN_ARITHMETIC):  # `seq * 2`: one call per event
            return field_with_constant(node.left.id, type(node.op), node.right.value)
        if isinstance(node.right, ast.Constant):  # `price * 2`: one call fewer per event
            value = node.right.value
            return lambda e: op(left(e), value)
        return lambda e: op(left(e), right(e))

    def _unaryop(self, node: ast.UnaryOp) -> Fn:
        operand = self.compile(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda e: not operand(e)
        if isinstance(node.op, ast.USub | ast.UAdd):
            sign = operator.neg if isinstance(node.op, ast.USub) else operator.pos
            symbol = "-" if isinstance(node.op, ast.USub) else "+"

            def unary(e: Any) -> Any:
                v = operand(e)
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise TypeError(f"unary '{symbol}' needs a number, got {kind(v)}")
                return sign(v)

            return unary
        symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
        self.fail(node, f"operator {symbol!r} is not allowed")

    def _boolop(self, node: ast.BoolOp) -> Fn:
        fns = [self.compile(v) for v in node.values]
        done = operator.not_ if isinstance(node.op, ast.And) else operator.truth

        def boolop(e: Any) -> Any:  # short-circuits and returns the deciding value
            v = None
            for fn in fns:
                v = fn(e)
                if done(v):
                    return v
            return v

        return boolop

    def _compare(self, node: ast.Compare) -> Fn:
        first = self.compile(node.left)
        pairs = [(CMPOPS[type(op)], self.compile(c))
                 for op, c in zip(node.ops, node.comparators, strict=True)]
        if len(pairs) == 1:
            op, right = pairs[0]
            return lambda e: op(first(e), right(e))

        def chain(e: Any) -> bool:
            a = first(e)
            for op, fn in pairs:
                b = fn(e)
                if not op(a, b):
                    return False
                a = b
            return True

        return chain

    def _ifexp(self, node: ast.IfExp) -> Fn:
        test, body = self.compile(node.test), self.compile(node.body)
        orelse = self.compile(node.orelse)
        return lambda e: body(e) if test(e) else orelse(e)

    def _call(self, node: ast.Call) -> Fn:
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                self.compile(node.func.value)  # report problems left to right
                self.fail(node, f"method calls are not allowed ('.{node.func.attr}()'); "
                                "use functions like lower(x)",
                          self._end_offset(node.func, len(node.func.attr) + 1))
            self.compile(node.func)
            self.fail(node, "only calls of the built-in functions are allowed")
        name = node.func.id
        self._check_name(node, name, "name")
        if name not in FUNCTIONS:
            self.fail(node, f"function {name!r} is not allowed (allowed: {', '.join(FUNCTIONS)})")
        if node.keywords:
            self.fail(node, f"keyword arguments are not allowed in {name}()")
        fn, lo, hi = FUNCTIONS[name]
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            expected = str(lo) if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            self.fail(node, f"{name}() takes {expected} argument(s), got {n}")
        if name == "has" and not isinstance(node.args[0], ast.Name | ast.Attribute
                                                 | ast.Subscript):
            self.fail(node, "has() takes a field, e.g. has(user.name)")
        args = [self.compile(a) for a in node.args]
        if name in LENIENT:
            return lenient(name, fn, args)
        if n == 0:
            return lambda e: fn()
        if n == 1:
            a0 = args[0]
            return lambda e: fn(a0(e))
        if n == 2:
            a0, a1 = args
            return lambda e: fn(a0(e), a1(e))
        return lambda e: fn(*[a(e) for a in args])

    def _sequence(self, node: ast.List | ast.Tuple) -> Fn:
        items = [self.compile(x) for x in node.elts]
        make = list if isinstance(node, ast.List) else tuple
        return lambda e: make([f(e) for f in items])

    def _dict(self, node: ast.Dict) -> Fn:
        if any(k is None for k in node.keys):
            self.fail(node, "dict unpacking (**) is not allowed")
        pairs = [(self.compile(k), self.compile(v))  # type: ignore[arg-type]
                 for k, v in zip(node.keys, node.values, strict=True)]
        return lambda e: {k(e): v(e) for k, v in pairs}


def _path_text(node: ast.AST) -> str:
    """How a lookup is named in errors: ``user.name``, ``items[0]``."""
    return ast.unparse(node)


class Expression:
    """A compiled expression; :meth:`evaluate` is cheap and thread-safe."""

    __slots__ = ("_fn", "text")

    def __init__(self, text: str, fn: Fn) -> None:
        self.text = text
        self._fn = fn

    @property
    def unchecked(self) -> Fn:
        """The compiled function itself, raising whatever it raises (no
        :class:`EvaluationError`): for a path over many events that, on any exception,
        takes them again through :meth:`evaluate` one by one."""
        return self._fn

    def may_read(self, field: str) -> bool:
        """Whether the value may depend on the top-level field ``field`` (conservative:
        the name itself, the whole ``event``, or the name as a string anywhere)."""
        for node in ast.walk(ast.parse(self.text, mode="eval")):
            if isinstance(node, ast.Name) and node.id in (field, "event"):
                return True
            if isinstance(node, ast.Constant) and node.value == field:
                return True
        return False

    @property
    def frame(self) -> Callable[[list[Any]], list[Any]]:
        """The values for a frame of events at once: faster where the form allows
        (``field <op> constant``), else one call each. Raises whatever it raises, for
        any event (the caller then takes each through :meth:`evaluate`)."""
        frame = getattr(self._fn, "frame", None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
        fn = self._fn
        return lambda events: [fn(event) for event in events]

    def evaluate(self, event: Any) -> Any:
        """The value of the expression for ``event``; raises :class:`EvaluationError`."""
        try:
            return self._fn(event)
        except ExpressionError:
            raise
        except (MissingField, TypeError, ValueError) as exc:
            raise EvaluationError(str(exc), text=self.text) from exc
        except Exception as exc:
            raise EvaluationError(f"{type(exc).__name__}: {exc}", text=self.text) from exc

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def compile_expression(text: str) -> Expression:
    """Parse and compile ``text``; raises :class:`ExpressionError`. Results are cached."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, not {type(text).__name__}")
    return _compile(text.strip())


@functools.lru_cache(maxsize=2048)
def _compile(text: str) -> Expression:
    if not text:
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        if not exc.offset or exc.offset <= 0:  # the parser ran out of input
            last = text.split("\n")[-1]
            raise ExpressionError(f"incomplete expression ({exc.msg})", len(last) + 1, text,
                                  text.count("\n") + 1) from None
        raise ExpressionError(f"invalid syntax: {exc.msg}", exc.offset, text, exc.lineno) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"cannot parse: {exc}", text=text) from None
    try:
        fn = _Compiler(text).compile(tree.body)
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply", text=text) from None
    return Expression(text, fn)


def validate_expression(value: str) -> str:
    """A pydantic validator: accepts ``value`` only if it compiles; returns it unchanged."""
    compile_expression(value)
    return value


#: A config field holding an expression: a bad expression is a validation error.
ExpressionStr = Annotated[
    str, AfterValidator(validate_expression), Field(json_schema_extra={"format": "expression"})
]
