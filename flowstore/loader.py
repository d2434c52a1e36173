"""Read a flow file (YAML or JSON) into a FlowSpec, or fail with every problem located.

No I/O beyond reading the file. Problems are reported together in one
:class:`FlowFileError`, each with its path (``spec.processors[1].inputs[0]``) and, where
the YAML has them, its line number. A :class:`SourceMap` remembers where each node and
connection came from, so later checks (the engine's validation) can point at lines too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flowstore.compat import from_go_flowctl
from flowstore.flowfile import CanvasFlow, FlowFile
from flowstore.located import FlowFileError, Problem, SourceMap, path_str
from flowstore.models import FlowSpec
from flowstore.repair import (
    SECTIONS,
    STAND_IN_NAME,
    consequence,
    drop_removed,
    file_loc,
    left_out_ids,
    repair,
)
from flowstore.shortform import from_short_form, is_short_form, lift_code
from flowstore.yamlguard import refusal

__all__ = ["FlowFileError", "LoadedFlow", "Problem", "SourceMap", "load_flow",
           "load_flow_lenient", "parse_flow", "parse_flow_lenient", "path_str", "plain",
           "read_flow_text", "split_documents"]


@dataclass
class LoadedFlow:
    name: str
    spec: FlowSpec
    source: SourceMap
    file: str


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


def _check_shape(text: str, file: str) -> None:
    """:class:`FlowFileError` for a hostile file (:func:`flowstore.yamlguard.refusal`)."""
    refused = refusal(text)
    if refused is not None:
        message, line = refused
        raise FlowFileError(file, [Problem("", message, line, "refused")])


def _parse(text: str, file: str) -> tuple[Any, dict[str, int]]:
    lines: dict[str, int] = {}
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise FlowFileError(file, [Problem("", f"not valid YAML: {problem}", line,
                                           "invalid_yaml")]) from None
    _line_index(node, (), lines)
    return data, lines


#: Prefixes pydantic puts before the message of a custom validator.
LIBRARY_PREFIXES = ("Value error, ", "Assertion failed, ")


def plain(message: str) -> str:
    """A validation message without the library's prefix."""
    for prefix in LIBRARY_PREFIXES:
        message = message.removeprefix(prefix)
    return message


def _fields_at(loc: tuple[Any, ...]) -> set[str]:
    """The field names the flow file allows where ``loc`` points (its parent object)."""
    from flowstore.flowfile import ComponentEntry, FileSpec, FlowFile, Metadata
    from flowstore.models import Placement

    parent = loc[:-1]
    model: type[BaseModel] | None = None
    if not parent:
        model = FlowFile
    elif parent == ("metadata",):
        model = Metadata
    elif parent == ("spec",):
        model = FileSpec
    elif len(parent) == 3 and parent[0] == "spec":
        model = ComponentEntry
    elif len(parent) == 4 and parent[0] == "spec" and parent[3] == "placement":
        model = Placement
    return set(model.model_fields) if model is not None else set()


def _problem(err: dict[str, Any], where: SourceMap) -> Problem:
    import difflib

    loc = tuple(err["loc"])
    path = where.in_file(path_str(loc))
    line = where.line_at(path_str(loc)) or where.lines.get("")  # (the file's first line)
    kind, msg = err["type"], plain(err["msg"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), sorted(_fields_at(loc)), n=1,
                                          cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "`flowctl schema` lists the fields"
        return Problem(path, "unknown field", line, "unknown_field", hint)
    if kind == "missing":
        return Problem(path, "required field is missing", line, "missing_field")
    if kind == "string_pattern_mismatch":
        return Problem(path, f"{err.get('input')!r} is not a valid name: use lowercase "
                       "letters, digits and '-', starting and ending with a letter or digit, "
                       "at most 63 characters", line)
    if kind == "literal_error":
        return Problem(path, f"{msg} (got {err.get('input')!r})", line)
    return Problem(path, msg, line)


def _problems(exc: ValidationError, where: SourceMap) -> list[Problem]:
    return [_problem(err, where) for err in exc.errors()]


def _source_map_for_file(model: FlowFile, where: SourceMap,
                         kept: dict[str, list[int]] | None = None) -> SourceMap:
    """``kept``: per section, the file index of each entry of ``model`` (entries removed
    by :func:`flowstore.repair.repair` leave gaps)."""
    smap = SourceMap(lines=where.lines, renames=where.renames)
    for section in SECTIONS:
        for n, entry in enumerate(getattr(model.spec, section)):
            i = kept[section][n] if kept else n
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


NOT_A_FLOW = ("not a flow: expected a mapping with apiVersion, kind, metadata and spec "
              "(or a canvas export with name, nodes and connections)")


def parse_flow_lenient(text: str, file: str = "<flow>"
                       ) -> tuple[LoadedFlow | None, list[Problem]]:
    """Parse flow text (YAML or JSON; flowctl file or canvas export). With problems, what
    they point at is left out and the rest is still loaded (when the name survives), so a
    validator can report the file's schema, config and graph problems in one pass."""
    data, lines = _parse(text, file)
    if not isinstance(data, dict):
        raise FlowFileError(file, [Problem("", NOT_A_FLOW, 1, "not_a_flow")])
    if "nodes" in data and "spec" not in data and "apiVersion" not in data:
        try:
            canvas = CanvasFlow.model_validate(data)
        except ValidationError as exc:
            return None, _problems(exc, SourceMap(lines=lines))
        return LoadedFlow(canvas.name, canvas.to_spec(), _source_map_for_canvas(canvas, lines),
                          file), []
    data, where, shaped = _long_form(data, lines, file)
    work, notes = from_go_flowctl(data)
    noted = [Problem(where.in_file(n.path), n.message, where.line_at(n.path),
                     "unsupported", None, n.severity) for n in notes]
    noted += [replace(p, path=where.in_file(p.path), line=where.line_at(p.path))
              for p in shaped]
    original = copy.deepcopy(work)
    model, problems, kept = _validate_repairing(work, where)
    if model is None:
        return None, [*noted, *problems]
    smap = _source_map_for_file(model, where, kept)
    smap.left_out = left_out_ids(original, kept)
    return LoadedFlow(_file_name(data, model), model.to_spec(), smap, file), [*noted,
                                                                            *problems]


def _long_form(data: dict[str, Any], lines: dict[str, int], file: str
               ) -> tuple[dict[str, Any], SourceMap, list[Problem]]:
    """The long form of ``data`` (see :mod:`flowstore.shortform`), where its paths are in
    the file, and the problems of its shape (their paths as checked)."""
    renames: list[tuple[str, str]] = []
    shaped: list[Problem] = []
    if is_short_form(data):
        data, renames, shaped = from_short_form(data, file)
    data, lifted, more = lift_code(data)
    return data, SourceMap(lines=lines, renames=[*lifted, *renames]), [*shaped, *more]


def _validate_repairing(work: Any, where: SourceMap
                        ) -> tuple[FlowFile | None, list[Problem], dict[str, list[int]] | None]:
    """Validate ``work`` against the flow file's schema, repairing it (stand-ins,
    removals: :mod:`flowstore.repair`) until it passes, so every schema problem is found
    whatever the first one is; a problem that only follows from a repair is not
    reported. (model or None when it cannot be repaired, problems, file index of each
    entry left per section)."""
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    repaired: set[tuple[Any, ...]] = set()
    kept: dict[str, list[int]] | None = None
    for _ in range(MAX_REPAIRS):
        try:
            return FlowFile.model_validate(work), problems, kept
        except ValidationError as exc:
            for err in exc.errors():
                loc = file_loc(tuple(err["loc"]), kept)
                if consequence(loc, err["type"], repaired):
                    continue
                problem = _problem({**err, "loc": loc}, where)
                if (problem.path, problem.message) not in seen:
                    seen.add((problem.path, problem.message))
                    problems.append(problem)
            done = repair(work, exc)
            if not done:
                break
            repaired.update(file_loc(loc, kept) for loc in done)
            kept = drop_removed(work, kept)
    return None, problems, kept


#: Rounds of repair before a file is given up (each round removes or stands in for at
#: least one value; the nesting of a flow file is shallow).
MAX_REPAIRS = 8


def _file_name(data: Any, model: FlowFile) -> str:
    """The flow's name as the file gives it: when it was invalid and stood in for (see
    :data:`flowstore.repair.STAND_IN_NAME`), the file's own text ("" when none), so no
    message names the stand-in."""
    if model.metadata.name != STAND_IN_NAME:
        return model.metadata.name
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else ""


def parse_flow(text: str, file: str = "<flow>") -> LoadedFlow:
    """Parse flow text; every problem raises :class:`FlowFileError`."""
    loaded, problems = parse_flow_lenient(text, file)
    errors = [p for p in problems if p.severity == "error"]
    if errors or loaded is None:
        raise FlowFileError(file, errors)
    return loaded


def read_flow_text(path: str | Path) -> str:
    """A flow file's text; :class:`FlowFileError` when it cannot be read (or a ``.json``
    file is not JSON)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowFileError(str(p), [Problem("", "file not found", None, "unreadable")]
                            ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowFileError(str(p), [Problem("", f"cannot read the file: {exc}", None,
                                             "unreadable")]) from None
    if p.suffix == ".json":
        try:
            json.loads(text)
        except RecursionError:
            pass  # nested too deep: refused with its line by the shape check
        except json.JSONDecodeError as exc:
            raise FlowFileError(str(p), [Problem("", f"not valid JSON: {exc.msg}", exc.lineno,
                                                 "invalid_json")]) from None
    return text


def load_flow_lenient(path: str | Path) -> tuple[LoadedFlow | None, list[Problem]]:
    """:func:`parse_flow_lenient` of a file (raises FlowFileError only when it cannot be
    read or parsed at all)."""
    return parse_flow_lenient(read_flow_text(path), str(path))


def load_flow(path: str | Path) -> LoadedFlow:
    """Read and parse a flow file. Raises :class:`FlowFileError`, never anything else."""
    return parse_flow(read_flow_text(path), str(path))


def split_documents(text: str, file: str = "<flow>") -> list[str]:
    """The flow documents of a text: YAML documents separated by ``---`` lines (each padded
    with blank lines, so line numbers stay those of the file), and the items of a
    top-level list of flow files (what `flowctl get -o yaml` prints for several flows)."""
    import re

    starts = [0] + [i for i, line in enumerate(text.splitlines())
                    if re.fullmatch(r"---\s*", line)]
    lines = text.splitlines(keepends=True)
    docs = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        body = lines[start + (1 if k else 0):end]
        if any(x.strip() and not x.lstrip().startswith("#") for x in body):
            docs.append("\n" * (start + (1 if k else 0)) + "".join(body))
    out = []
    for doc in docs or [text]:
        try:
            _check_shape(doc, file)
            data = yaml.safe_load(doc)
        except yaml.YAMLError:
            out.append(doc)  # reported with its line by the parse
            continue
        if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
            out += [yaml.safe_dump(d, sort_keys=False) for d in data]
        else:
            out.append(doc)
    return out
