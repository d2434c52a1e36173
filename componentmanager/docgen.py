"""docs/components.md, generated from the component registry, so it cannot drift.

    python -m componentmanager.docgen > docs/components.md

One section per built-in type: what it does, its ports, what it promises with
``delivery: exactly-once``, a skeleton of the node, and every config field with its type,
default and description, read from the type's pydantic config model (the same schema
``validate`` checks a flow against and ``flowctl components TYPE`` prints).
``tests/test_docs.py`` fails when the committed file differs from what this prints.
Pure: no I/O but the final print.
"""

from __future__ import annotations

import json
from typing import Any

from componentmanager.registry import ComponentType, all_types
from flowstore.programs import ExternalFields

ROLES = ("source", "processor", "sink")

EXACTLY_ONCE = {
    "transactional": "transactional: what it wrote is part of each commit; after a crash "
                     "it keeps what the last commit holds and writes what followed once",
    "idempotent": "idempotent: every write carries the event's id, so a repeat is dropped "
                  "by the receiver",
}


def _kind(spec: dict[str, Any]) -> str:
    """A JSON schema's type in a few words: ``string``, ``array of string``, ``"a" | "b"``."""
    if "enum" in spec:
        return " | ".join(json.dumps(v) for v in spec["enum"])
    if "anyOf" in spec:
        kinds = [_kind(s) for s in spec["anyOf"] if s.get("type") != "null"]
        return " | ".join(kinds) or "null"
    kind = spec.get("type") or spec.get("$ref", "").rsplit("/", 1)[-1] or "any"
    if kind == "array" and "items" in spec:
        return f"array of {_kind(spec['items'])}"
    if spec.get("format") == "expression":
        return "expression"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"object of {_kind(spec['additionalProperties'])}"
    return str(kind)


def config_fields(schema: dict[str, Any]) -> list[list[str]]:
    """One row per config field of a JSON schema: name (``*`` = required), type, default,
    description; internal fields (``"internal": true``, stamped by flowctl) left out."""
    required = set(schema.get("required", []))
    rows = []
    for field, spec in schema.get("properties", {}).items():
        if spec.get("internal"):  # stamped by flowctl, not for flow files
            continue
        default = json.dumps(spec["default"]) if "default" in spec else ""
        rows.append([field + ("*" if field in required else ""), _kind(spec),
                     default, spec.get("description", "")])
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(t: ComponentType) -> str:
    return f"{t.name}-{t.role}"


def _skeleton(t: ComponentType, schema: dict[str, Any]) -> str:
    """The node as a flow file holds it, its required config fields as placeholders."""
    section = {"source": "sources", "processor": "processors", "sink": "sinks"}[t.role]
    lines = [f"  {section}:", f"    - id: my-{t.name}", f"      type: {t.name}"]
    if t.inputs:
        lines.append("      inputs: [upstream]")
    required = [f for f in schema.get("required", []) if f in schema.get("properties", {})]
    if required:
        lines.append("      config:")
        lines += [f"        {f}: <{_kind(schema['properties'][f])}>" for f in required]
    return "```yaml\n" + "\n".join(lines) + "\n```"


def field_table(schema: dict[str, Any]) -> list[str]:
    """A markdown table of the fields of a JSON schema (``config_fields``)."""
    out = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, kind, default, description in config_fields(schema):
        shown = f"`{name.rstrip('*')}`" + (" (required)" if name.endswith("*") else "")
        out.append(f"| {shown} | {_cell(kind)} | {_cell(f'`{default}`' if default else '')} "
                   f"| {_cell(description)} |")
    return out


def programs_section() -> str:
    """The fields a node run as a program or a container takes beside its config."""
    return "\n".join([
        '<a id="programs-and-containers"></a>',
        "## Programs and containers",
        "",
        "A node with `command:` (or `binary:`) runs as a process of the agent, one with "
        "`image:` as a Docker container; `type:` is then any name. These fields sit beside "
        "`config:` on the node; what the program gets is in [external.md](external.md).",
        "",
        *field_table(ExternalFields.model_json_schema()),
        "",
    ])


def section(t: ComponentType) -> str:
    """The markdown section of one type."""
    schema = t.config_model.model_json_schema()
    out = [f'<a id="{_anchor(t)}"></a>', f"## `{t.name}` ({t.role})", "", t.description]
    if t.docs:
        out += ["", t.docs]
    ports = []
    if t.inputs:
        ports.append("inputs " + ", ".join(f"`{p.name}`" for p in t.inputs))
    if t.outputs or t.dynamic_outputs:
        names = [f"`{p.name}`" for p in t.outputs]
        if t.dynamic_outputs:
            names.append("the ports its config names")
        ports.append("outputs " + ", ".join(names))
    out += ["", "Ports: " + ("; ".join(ports) or "none") + "."]
    if t.role == "source":
        fields = getattr(t.load_class(), "position_fields", None)
        reads = ", ".join(f"`{f}`" for f in fields or ())
        out += ["", f"A config change that leaves {reads} alone goes on from where it was "
                "(its position and counts); `flowctl apply --reset NODE` starts it over."
                if fields else "Any change of its config starts it over, as `flowctl apply "
                "--reset NODE` does."]
    if t.role == "sink":
        promise = EXACTLY_ONCE.get(t.exactly_once or "", "refused by `validate` (use "
                                   "at-least-once)")
        out += ["", f"With `delivery: exactly-once`: {promise}."]
    out += ["", _skeleton(t, schema), ""]
    if not config_fields(schema):
        return "\n".join([*out, "No config fields.", ""])
    return "\n".join([*out, *field_table(schema), ""])


def render(types: list[ComponentType]) -> str:
    """The whole page for ``types`` (built-ins only: a plugin installed here or not must
    not change the committed file)."""
    builtin = [t for t in types if t.impl.startswith("componentmanager.")]
    ordered = sorted(builtin, key=lambda t: (ROLES.index(t.role), t.name))
    head = [
        "# Components",
        "",
        "<!-- Generated by `python -m componentmanager.docgen > docs/components.md` from the",
        "     component registry; edit the config models, not this file. -->",
        "",
        "Every built-in type a flow file's `type:` can name, with its config fields. The same",
        "is printed by `flowctl components` (all types) and `flowctl components TYPE` (one",
        "type's fields). Fields marked *required* must be set; the others take the default",
        "shown. An `expression` is written in the [expression language](flow-file.md#expressions).",
        "Third-party types added through the `flowctl.components` entry point and external",
        "programs (`command:`, `image:`) are described in [external.md](external.md).",
        "",
    ]
    for role in ROLES:
        names = [f"[`{t.name}`](#{_anchor(t)})" for t in ordered if t.role == role]
        head.append(f"- **{role}s**: " + ", ".join(names))
    head.append("- **programs and containers**: [the fields beside `config:`]"
                "(#programs-and-containers)")
    sections = [*(section(t) for t in ordered), programs_section()]
    return "\n".join([*head, "", *sections]).rstrip() + "\n"


def main() -> None:
    print(render(all_types()), end="")


if __name__ == "__main__":
    main()
