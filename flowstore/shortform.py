"""The short form of a flow file, and ``code:`` beside ``type:``: pure translations of the
parsed file into the long form, with the renames that tell problems in the file's terms.

The short form is a line: one source, processors in order, one sink::

    source:
      type: custom
      code: |
        def events():
            yield {"data": "hello"}
    process:
      - type: transform
        code: |
          def process(event):
              event["data"] = event["data"].upper()
              return event
    sink:
      type: stdout

* node ids: ``source``, ``process-1``, ``process-2``, ..., ``sink`` (an entry's own ``id``
  wins); each entry reads the one before it (``inputs`` is refused: the long form wires
  anything else);
* the flow's name: the top-level ``name``, else the file's name (``inline-short.yaml``:
  ``inline-short``; lowercased, other characters become ``-``), else ``flow``;
* top-level ``description``, ``delivery`` and ``buffer`` as in the long form; an entry
  takes the fields of a long-form entry (``type``, ``config``, ``replicas``, ...).

In both forms an entry's ``code:`` (inline Python) is its ``config.code``, and a
``transform`` processor with ``code:`` is a ``custom`` one (:mod:`componentmanager.
components.custom`).
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import PurePath
from typing import Any

from flowstore.located import Problem

SECTIONS = ("sources", "processors", "sinks")
SHORT_FIELDS = ("name", "description", "delivery", "buffer", "source", "process", "sink")
Renames = list[tuple[str, str]]


def is_short_form(data: Any) -> bool:
    """A parsed file in the short form: ``source``/``process``/``sink`` at the top, no
    ``spec``, ``apiVersion`` or canvas ``nodes``."""
    return (isinstance(data, dict) and not {"spec", "apiVersion", "nodes"} & data.keys()
            and bool({"source", "process", "sink"} & data.keys()))


def flow_name(file: str) -> str:
    """The name of a short-form flow without ``name:``, from its file's name."""
    stem = "" if file.startswith("<") else PurePath(file).stem
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].strip("-") or "flow"


def _unknown(key: str) -> Problem:
    close = difflib.get_close_matches(key, SHORT_FIELDS, n=1, cutoff=0.6)
    hint = (f"did you mean '{close[0]}'?" if close else
            "the short form has " + ", ".join(SHORT_FIELDS))
    return Problem(key, "unknown field", code="unknown_field", suggestion=hint)


def _entries(data: dict[str, Any], problems: list[Problem]) -> list[tuple[str, str, str, Any]]:
    """(section, path in the file, default id, entry) in the order of the line."""
    process = data.get("process")
    if process is None:
        process = []
    elif not isinstance(process, list):
        problems.append(Problem("process", "expected a list of processors (- type: ...)"))
        process = []
    out = [("sources", "source", "source", data.get("source"))]
    out += [("processors", f"process[{i}]", f"process-{i + 1}", e) for i, e in enumerate(process)]
    return [*out, ("sinks", "sink", "sink", data.get("sink"))]


def from_short_form(data: dict[str, Any], file: str) -> tuple[dict[str, Any], Renames,
                                                               list[Problem]]:
    """The long form of a short-form file, the renames back, and the problems of its shape
    (paths as the file writes them)."""
    problems = [_unknown(str(key)) for key in data if key not in SHORT_FIELDS]
    spec: dict[str, Any] = {section: [] for section in SECTIONS}
    renames: Renames = []
    upstream: Any = None
    for section, path, default_id, entry in _entries(data, problems):
        if entry is None and section != "processors":
            problems.append(Problem(path, "required field is missing", code="missing_field",
                                    suggestion=f"a {path} is required: {path}: {{type: ...}}"))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(path, "expected a mapping (type: ..., config: ...)"))
            continue
        entry = {"id": default_id, **entry}
        if "inputs" in entry:
            problems.append(Problem(f"{path}.inputs", "the short form is a line: each entry "
                                    "reads the one before it", code="unknown_field",
                                    suggestion="remove inputs, or write the long form "
                                    "(spec.sources, spec.processors, spec.sinks)"))
            del entry["inputs"]
        if upstream is not None and section != "sources":
            entry["inputs"] = [upstream]
        upstream = entry["id"]
        renames.append((f"spec.{section}[{len(spec[section])}]", path))
        spec[section].append(entry)
    metadata = {"name": data.get("name", flow_name(file))}
    if "description" in data:
        metadata["description"] = data["description"]
    spec.update({k: data[k] for k in ("delivery", "buffer") if k in data})
    renames += [("metadata", ""), ("spec", "")]
    return ({"apiVersion": "flowctl/v1", "kind": "Flow", "metadata": metadata, "spec": spec},
            renames, problems)


def lift_code(data: dict[str, Any]) -> tuple[dict[str, Any], Renames, list[Problem]]:
    """``data`` (the long form) with each entry's ``code:`` moved into its config (a
    ``transform`` processor with code becomes ``custom``), the renames back, and the
    problems (paths as checked)."""
    spec = data.get("spec")
    if not isinstance(spec, dict) or not any(
            isinstance(e, dict) and "code" in e
            for s in SECTIONS if isinstance(spec.get(s), list) for e in spec[s]):
        return data, [], []
    data = copy.deepcopy(data)
    renames: Renames = []
    problems: list[Problem] = []
    for section in SECTIONS:
        entries = data["spec"].get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict) or "code" not in entry:
                continue
            path = f"spec.{section}[{i}]"
            config = entry.get("config")
            if config is None:
                config = entry["config"] = {}
            if not isinstance(config, dict):
                continue  # the schema says what config must be
            if "code" in config:
                problems.append(Problem(f"{path}.code", "code is given twice, here and in "
                                        "config", suggestion="keep one"))
                continue
            config["code"] = entry.pop("code")
            if section == "processors" and entry.get("type") == "transform":
                entry["type"] = "custom"  # inline Python, where transform takes expressions
            renames.append((f"{path}.config.code", f"{path}.code"))
    return data, renames, problems
