"""Column types of the ``parquet`` sink: the type names a ``columns`` entry can give, how
a value of each is checked and stored in the journal (``COERCE``), its Arrow type, and
the type inferred from a value (for a schema taken from the first events).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import msgspec

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _int(bounds: tuple[int, int]) -> Any:
    def coerce(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError("a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TypeError(f"a {type(value).__name__}")
        if not bounds[0] <= value <= bounds[1]:
            raise ValueError("out of range")
        return value
    return coerce


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a {type(value).__name__}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"a {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _timestamp(value: Any) -> int:
    """Microseconds since the epoch (UTC)."""
    if isinstance(value, bool):
        raise TypeError("a boolean")
    if isinstance(value, int | float):
        return round(value * 1_000_000)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return round(moment.timestamp() * 1_000_000)
    raise TypeError(f"a {type(value).__name__}")


def _date(value: Any) -> int:
    """Days since the epoch."""
    if isinstance(value, bool):
        raise TypeError("a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return (date.fromisoformat(value[:10]) - date(1970, 1, 1)).days
    raise TypeError(f"a {type(value).__name__}")


#: type name -> how a value is checked and stored in the journal
COERCE: dict[str, Any] = {
    "string": _text, "int64": _int(_INT64), "int32": _int(_INT32), "float64": _float,
    "float32": _float, "bool": _bool, "timestamp": _timestamp, "date": _date, "json": _json,
}
ALIASES = {"str": "string", "text": "string", "int": "int64", "integer": "int64",
           "long": "int64", "float": "float64", "double": "float64", "boolean": "bool"}


def type_name(text: str) -> str | None:
    """The canonical type a column spec names, or None (it is an expression)."""
    name = text.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in COERCE else None


def arrow_type(name: str) -> Any:
    import pyarrow as pa
    return {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
            "float64": pa.float64(), "float32": pa.float32(), "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32(),
            "json": pa.string()}[name]


def infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"
