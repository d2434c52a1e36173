"""Read a flow file (YAML or JSON) into a FlowSpec, or fail with every problem located.

No I/O beyond reading the file. Problems are reported together in one
:class:`FlowFileError`, each with its path (``spec.processors[1].inputs[0]``) and, where
the YAML has them, its line number. A :class:`SourceMap` remembers where each node and
connection came from, so later checks (the engine's validation) can point at lines too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flowstore.flowfile import CanvasFlow, FlowFile
from flowstore.models import FlowSpec


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class FlowFileError(Exception):
    """A flow file that cannot be loaded. ``problems`` lists every located problem."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s):\n{lines}")


@dataclass
class SourceMap:
    """Where each node (by id) and connection (by index) came from in the file."""

    node_paths: dict[str, str] = field(default_factory=dict)
    connection_paths: list[str] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str | None) -> int | None:
        return self.lines.get(path) if path else None


@dataclass
class LoadedFlow:
    name: str
    spec: FlowSpec
    source: SourceMap
    file: str


def path_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_index(node: yaml.Node | None, prefix: tuple[Any, ...], into: dict[str, int]) -> None:
    """Record the 1-based line of every path in a composed YAML tree."""
    if node is None:
        return
    into[path_str(prefix)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            into[path_str((*prefix, key))] = key_node.start_mark.line + 1
            _line_index(value_node, (*prefix, key), into)
            # Keep the key's line for the key itself, values may start later.
            into[path_str((*prefix, key))] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*prefix, i), into)


def _parse(text: str, file: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise FlowFileError(file, [Problem("", f"not valid YAML: {problem}", line)]) from None
    _line_index(node, (), lines)
    return data, lines


def _message(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `flowctl schema` lists the fields)"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        return (
            f"{err.get('input')!r} is not a valid name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    if kind == "literal_error":
        return f"{msg} (got {err.get('input')!r})"
    return msg


def _problems(exc: ValidationError, lines: dict[str, int]) -> list[Problem]:
    out = []
    for err in exc.errors():
        path = path_str(tuple(err["loc"]))
        line = lines.get(path)
        probe = tuple(err["loc"])
        while line is None and probe:
            probe = probe[:-1]
            line = lines.get(path_str(probe))
        out.append(Problem(path, _message(err), line))
    return out


def _source_map_for_file(model: FlowFile, lines: dict[str, int]) -> SourceMap:
    smap = SourceMap(lines=lines)
    for section in ("sources", "processors", "sinks"):
        for i, entry in enumerate(getattr(model.spec, section)):
            smap.node_paths.setdefault(entry.id, f"spec.{section}[{i}]")
            for j in range(len(entry.inputs)):
                smap.connection_paths.append(f"spec.{section}[{i}].inputs[{j}]")
    return smap


def _source_map_for_canvas(model: CanvasFlow, lines: dict[str, int]) -> SourceMap:
    smap = SourceMap(lines=lines)
    for i, node in enumerate(model.nodes):
        smap.node_paths.setdefault(node.id, f"nodes[{i}]")
    smap.connection_paths = [f"connections[{i}]" for i in range(len(model.connections))]
    return smap


def parse_flow(text: str, file: str = "<flow>") -> LoadedFlow:
    """Parse flow text (YAML or JSON; flowctl file or canvas export)."""
    data, lines = _parse(text, file)
    if not isinstance(data, dict):
        raise FlowFileError(
            file,
            [
                Problem(
                    "",
                    "not a flow: expected a mapping with apiVersion, kind, metadata and spec "
                    "(or a canvas export with name, nodes and connections)",
                    1,
                )
            ],
        )
    model: BaseModel
    try:
        if "nodes" in data and "spec" not in data and "apiVersion" not in data:
            model = CanvasFlow.model_validate(data)
            assert isinstance(model, CanvasFlow)
            smap = _source_map_for_canvas(model, lines)
            return LoadedFlow(model.name, model.to_spec(), smap, file)
        model = FlowFile.model_validate(data)
        assert isinstance(model, FlowFile)
    except ValidationError as exc:
        raise FlowFileError(file, _problems(exc, lines)) from None
    return LoadedFlow(
        model.metadata.name, model.to_spec(), _source_map_for_file(model, lines), file
    )


def load_flow(path: str | Path) -> LoadedFlow:
    """Read and parse a flow file. Raises :class:`FlowFileError`, never anything else."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowFileError(str(p), [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowFileError(str(p), [Problem("", f"cannot read the file: {exc}")]) from None
    if p.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise FlowFileError(
                str(p), [Problem("", f"not valid JSON: {exc.msg}", exc.lineno)]
            ) from None
    return parse_flow(text, str(p))
