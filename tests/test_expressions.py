"""The expression language: what it evaluates, what it refuses, and how it says so."""

from __future__ import annotations

import ast
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from componentmanager.components.expressions import (
    EvaluationError,
    ExpressionError,
    ExpressionStr,
    compile_expression,
)

EVENT: dict[str, Any] = {
    "user": {"name": "Ada", "tags": ["admin", "ops"], "address": {"city": "Paris"}},
    "level": "ERROR",
    "n": 7,
    "price": 2.5,
    "items": [10, 20, 30],
    "empty": None,
    "true": "shadowed",
    "a b": 1,
}


def ev(text: str, event: Any = EVENT) -> Any:
    return compile_expression(text).evaluate(event)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n", 7),
        ("user.name", "Ada"),
        ('user["name"]', "Ada"),
        ("user.address.city", "Paris"),
        ("user.tags[0]", "admin"),
        ("items[-1]", 30),
        ("items[1:]", [20, 30]),
        ('event["a b"]', 1),
        ("event.n", 7),
        ("true", True),
        ('event["true"]', "shadowed"),
        ("null", None),
        ("None", None),
        ("n * 2 + 1", 15),
        ("n / 2", 3.5),
        ("n // 2", 3),
        ("n % 4", 3),
        ("2 ** 10", 1024),
        ("-n", -7),
        ("not n", False),
        ("n > 5 and level == 'ERROR'", True),
        ("n > 8 or 'fallback'", "fallback"),
        ("1 < n < 10", True),
        ("1 < n < 5", False),
        ("'admin' in user.tags", True),
        ("'root' not in user.tags", True),
        ("'big' if n > 5 else 'small'", "big"),
        ("[n, price]", [7, 2.5]),
        ("(n, 1)", (7, 1)),
        ("{'k': n, 'v': [1]}", {"k": 7, "v": [1]}),
        ("empty is None", True),
        ("len(items)", 3),
        ("str(n) + '!'", "7!"),
        ("str(true)", "true"),
        ("str(user.tags)", '["admin","ops"]'),
        ("int('42')", 42),
        ("float('1.5')", 1.5),
        ("bool(items)", True),
        ("abs(-3)", 3),
        ("min(items)", 10),
        ("max(3, n, 5)", 7),
        ("round(price)", 2),
        ("round(2.345, 2)", 2.35),
        ("lower(level)", "error"),
        ("upper(user.name)", "ADA"),
        ("startswith(level, 'ERR')", True),
        ("endswith(level, 'x')", False),
        ("contains(user.tags, 'ops')", True),
        ("coalesce(missing, empty, n)", 7),
    ],
)
def test_evaluates(text: str, expected: Any) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("missing", "field 'missing' is not in the event"),
        ("amont > 50", "field 'amont' is not in the event"),
        ("user.missing.deeper", "field 'user.missing' is not in the event"),
        ("items[10]", "'items[10]' is out of range (length 3)"),
        ("n.field", "field 'n.field' is not in the event (number has no fields)"),
        ("missing + 1", "field 'missing' is not in the event"),
        ("empty + 1", "'+' needs two numbers, two strings or two lists, got null and number"),
        ("level * 2", "'*' needs two numbers, got string and number"),
        ("'x' + 1", "got string and number"),
        ("true + 1", "got bool and number"),
        ("-level", "unary '-' needs a number, got string"),
        ("empty > 3", "cannot compare null > number"),
        ("'x' in empty", "'in' needs a list, string or object on the right, got null"),
        ("1 in level", "'in' a string needs a string, got number"),
        ("len(empty)", "len() cannot take (null)"),
        ("lower(empty)", "lower() needs a string, got null"),
        ("startswith(n, 'a')", "startswith() needs a string, got number"),
        ("1e308 * 10", "result of '*' is not a finite number (inf)"),  # never a null
        ("1e308 + 1e308", "result of '+' is not a finite number (inf)"),
    ],
)
def test_missing_fields_and_wrong_types_are_errors(text: str, fragment: str) -> None:
    with pytest.raises(EvaluationError) as info:
        ev(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("has(n)", True),
        ("has(missing)", False),
        ("has(empty)", True),  # there, though null
        ("has(user.address.city)", True),
        ("has(user.address.zip)", False),
        ("has(items[7])", False),
        ("has(missing) and missing > 3", False),
        ("get(missing, 4) * 2", 8),
        ("get(empty, 'x')", "x"),
        ("get(n, 0)", 7),
        ("get(user.nick, user.name)", "Ada"),
        ("coalesce(missing, empty, n)", 7),
        ("coalesce(missing, 'dflt')", "dflt"),
        ("missing == None if false else 1", 1),
        ("empty == None", True),
        ("min(empty, 4)", 4),
        ("str(empty)", "null"),
    ],
)
def test_optional_data_is_written_explicitly(text: str, expected: Any) -> None:
    assert ev(text) == expected


def test_has_takes_a_field() -> None:
    with pytest.raises(ExpressionError, match="has\\(\\) takes a field"):
        compile_expression("has(1 + 2)")


def test_non_dict_events() -> None:
    with pytest.raises(EvaluationError, match="list has no fields"):
        ev("x", [1, 2])
    assert ev("event[0]", [1, 2]) == 1
    assert ev("event", "raw") == "raw"


def test_now_is_epoch_seconds() -> None:
    assert abs(ev("now()") - time.time()) < 5


@pytest.mark.parametrize(
    ("text", "fragment", "column"),
    [
        ("__import__('os')", "'__import__' is not allowed", 1),
        ("().__class__", "'__class__' is not allowed", 4),
        ("n.__class__.__bases__", "is not allowed", 3),
        ("user.name.upper()", "method calls are not allowed ('.upper()')", 10),
        ("'abc'.zfill", "attribute access on a literal", 6),
        ("lambda: 1", "lambda is not allowed", 1),
        ("n + (lambda x: x)(1)", "lambda is not allowed", 6),
        ("items[0](1)", "only calls of the built-in functions", 1),
        ("__import__('os').system('id')", "'__import__' is not allowed", 1),
        ("[x for x in items]", "list comprehension is not allowed", 1),
        ("{x: 1 for x in items}", "dict comprehension is not allowed", 1),
        ("sum(x for x in items)", "function 'sum' is not allowed", 1),
        ("any(x for x in items)", "function 'any' is not allowed", 1),
        ("n and (y := 2)", "assignment expression", 8),
        ("f'{n}'", "f-string is not allowed", 1),
        ("{1, 2}", "set literal is not allowed", 1),
        ("n << 2", "operator '<<' is not allowed", 3),
        ("~n", "operator '~' is not allowed", 1),
        ("open('/etc/passwd')", "function 'open' is not allowed", 1),
        ("eval('1')", "function 'eval' is not allowed", 1),
        ("len(items, 2)", "len() takes 1 argument(s), got 2", 1),
        ("round(n, ndigits=1)", "keyword arguments are not allowed", 1),
        ("max(*items)", "starred expression", 5),
        ("{**user}", "dict unpacking", 1),
        ("b'x'", "bytes literals are not allowed", 1),
        ("n +", "incomplete expression", 4),
        ("n n", "invalid syntax", 3),
    ],
)
def test_rejects_with_message_and_column(text: str, fragment: str, column: int) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    err = info.value
    assert fragment in str(err)
    assert err.column == column, str(err)
    assert f"(column {column})" in str(err)
    assert repr(text) in str(err)  # the message quotes the expression


def test_statements_and_imports_do_not_parse() -> None:
    for text in ("import os", "x = 1", "del x", "pass"):
        with pytest.raises(ExpressionError, match="invalid syntax"):
            compile_expression(text)


def test_empty_and_non_string() -> None:
    with pytest.raises(ExpressionError, match="empty"):
        compile_expression("   ")
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(3)  # type: ignore[arg-type]


def test_multiline_error_reports_the_line() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("(n +\n lambda: 1)")
    assert info.value.line == 2
    assert "(line 2, column 2)" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("level < 1", "cannot compare string < number"),
        ("int('x')", "invalid literal"),
        ("n / 0", "division by zero"),
        ("lower(n)", "lower() needs a string"),
        ("'a' + 'b' * 2", "needs two numbers"),
        ("9 ** 9999999", "too large"),
        ("'%s' % n", "'%' needs two numbers"),
    ],
)
def test_runtime_failures_raise_evaluation_error(text: str, fragment: str) -> None:
    expr = compile_expression(text)
    with pytest.raises(EvaluationError) as info:
        expr.evaluate(EVENT)
    assert fragment in str(info.value)
    assert text in str(info.value)


def test_compiled_once_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    expr = compile_expression("n * 3 > 20 and user.name == 'Ada'")
    assert compile_expression("n * 3 > 20 and user.name == 'Ada'") is expr

    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the AST must not be walked again per event")

    monkeypatch.setattr(ast, "parse", no_parsing)
    monkeypatch.setattr(ast, "walk", no_parsing)
    assert all(expr.evaluate({**EVENT, "n": i}) == (i * 3 > 20) for i in range(100))


class Rule(BaseModel):
    where: ExpressionStr
    set: dict[str, ExpressionStr] = {}


def test_pydantic_type_rejects_bad_expressions() -> None:
    assert Rule(where="n > 1", set={"x": "n + 1"}).where == "n > 1"
    with pytest.raises(ValidationError) as info:
        Rule(where="__import__('os').system('true')")
    error = info.value.errors()[0]
    assert error["loc"] == ("where",)
    assert "'__import__' is not allowed" in error["msg"]
    with pytest.raises(ValidationError) as info:
        Rule(where="n", set={"x": "lambda: 0"})
    assert info.value.errors()[0]["loc"] == ("set", "x")
    assert Rule.model_json_schema()["properties"]["where"]["format"] == "expression"


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "//", "%"])
@pytest.mark.parametrize("value", [7, -3, 2.5, 0, 1e308, True, "s", None, [1], {"k": 1},
                                   "missing"])
def test_a_field_and_a_constant_compute_as_the_general_form(op: str, value: Any) -> None:
    """``n * 2`` runs as one function per event: the same value or the same error as
    the general form (``n * (0 + 2)`` compiles the usual way)."""
    for constant in ("2", "0", "1.5", "1e308"):
        fast = compile_expression(f"n {op} {constant}")
        general = compile_expression(f"n {op} (0 + {constant})")
        event = {} if value == "missing" else {"n": value}

        def outcome(expr: Any, event: dict[str, Any] = event) -> Any:
            try:
                return ("value", expr.evaluate(event))
            except EvaluationError as exc:
                return ("error", str(exc).replace(expr.text, "<expr>"))

        assert outcome(fast) == outcome(general), (op, value, constant)
