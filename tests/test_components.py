"""The built-in component library as registered: every type's metadata and config model.

The behaviour of each type is tested by role: ``test_components_sources.py``,
``test_components_processors.py`` and ``test_components_sinks.py``.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from componentmanager import Component, all_types
from tests.component_context import validate

EXPECTED = {
    "generate": "source", "file-source": "source", "http-source": "source",
    "nats-source": "source", "filter": "processor", "transform": "processor",
    "route": "processor", "batch": "processor", "python": "processor", "window": "processor",
    "join": "processor", "stdout": "sink",
    "file-sink": "sink", "http-sink": "sink", "nats-sink": "sink", "kv": "sink",
    "sql-source": "source", "sql-sink": "sink", "mqtt-source": "source", "mqtt-sink": "sink",
    "parquet": "sink", "custom-source": "source", "custom-processor": "processor",
    "custom-sink": "sink",
}


def test_every_builtin_is_registered_with_complete_metadata() -> None:
    types = {(t.name, t.role): t for t in all_types()}
    assert len(types) == len(EXPECTED)
    for qualified, role in EXPECTED.items():
        name = qualified.removesuffix(f"-{role}")
        ctype = types[(name, role)]
        assert ctype.role == role
        assert ctype.description and ctype.docs
        assert issubclass(ctype.load_class(), Component)
        assert ctype.config_model.model_config.get("extra") == "forbid"
        for field_name, field in ctype.config_model.model_fields.items():
            assert field.description, f"{name}.{field_name} has no description"
        if role == "source":
            assert [p.name for p in ctype.outputs] == ["out"] and not ctype.inputs
        else:
            assert [(p.name, p.required) for p in ctype.inputs] == [("in", True)]
        if role == "sink":
            assert not ctype.outputs
        ctype.describe()  # JSON schema renders


def test_unknown_config_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        validate("filter", {"where": "x", "wher": "y"})
