"""What the lenient load does with the parts of a flow file that fail its schema, so the
rest of the file is still checked in the same pass (:func:`flowstore.loader.parse_flow_lenient`).

Pure: works on the parsed data (dicts and lists) and pydantic's error list, reads nothing.

* A field of the file's frame that every later check needs (``apiVersion``, ``kind``,
  ``metadata``, ``metadata.name``, ``spec``) is *stood in* for (:data:`STAND_INS`): an
  invalid flow name (``name: Bad_Name``) is reported, and the nodes, their configs and the
  graph are still checked under a valid name.
* Any other offending field goes (its default applies); an entry of ``spec.sources``,
  ``processors`` or ``sinks`` that is not an object or misses a required field goes whole
  (set to None, then taken out by :func:`drop_removed`, which keeps the file index of each
  entry left).
* A problem found in a later round that only follows from a repair (a required field is
  missing because it was removed as invalid) is a *consequence* and not reported again.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

SECTIONS = ("sources", "processors", "sinks")

#: The flow name checks run under when the file's own name is invalid or missing (the
#: error about it is reported; nothing is ever stored under this name).
STAND_IN_NAME = "flow-with-an-invalid-name"

#: Values that let the rest of a file be checked when these fields are invalid.
STAND_INS: dict[tuple[str, ...], Any] = {
    ("apiVersion",): "flowctl/v1",
    ("kind",): "Flow",
    ("metadata",): {"name": STAND_IN_NAME},
    ("metadata", "name"): STAND_IN_NAME,
    ("spec",): {},
}

#: Fields of an entry whose removal makes the entry's own check (type, or command /
#: image) fail in the next round: that failure is a consequence.
_WHAT_IT_IS = ("type", "command", "image")

Loc = tuple[Any, ...]


def repair(data: Any, exc: ValidationError) -> list[Loc]:
    """Stand in for, or remove from ``data``, what ``exc`` complains about (see the module
    docstring); the locations repaired (empty: nothing could be)."""
    repaired: list[Loc] = []
    for err in sorted(exc.errors(), key=lambda e: len(e["loc"]), reverse=True):
        loc = tuple(err["loc"])
        if loc in STAND_INS and _set(data, loc, STAND_INS[loc]):
            repaired.append(loc)
            continue
        entry = loc[:3] if len(loc) >= 3 and loc[0] == "spec" else None
        target = loc if err["type"] != "missing" else entry
        if target and _remove(data, target):
            repaired.append(target)
    return repaired


def _parent(data: Any, loc: Loc) -> Any:
    parent = data
    for part in loc[:-1]:
        parent = parent[part]
    return parent


def _set(data: Any, loc: Loc, value: Any) -> bool:
    try:
        parent = _parent(data, loc)
    except (KeyError, IndexError, TypeError):
        return False
    if not isinstance(parent, dict) or parent.get(loc[-1]) == value:
        return False
    parent[loc[-1]] = value if not isinstance(value, dict) else dict(value)
    return True


def _remove(data: Any, loc: Loc) -> bool:
    try:
        parent = _parent(data, loc)
    except (KeyError, IndexError, TypeError):
        return False
    if isinstance(parent, dict) and loc[-1] in parent:
        del parent[loc[-1]]
        return True
    if isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent) \
            and parent[loc[-1]] is not None:
        parent[loc[-1]] = None  # keep the indices of the other entries
        return True
    return False


def drop_removed(data: Any, kept: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Take the entries :func:`repair` removed (None) out of ``data``; the file index of
    each entry left, per section (``kept``: the same of the previous round)."""
    out: dict[str, list[int]] = dict(kept or {})
    spec = data.get("spec") if isinstance(data, dict) else None
    for section in SECTIONS:
        entries = spec.get(section) if isinstance(spec, dict) else None
        if not isinstance(entries, list):
            continue
        before = out.get(section, list(range(len(entries))))
        out[section] = [before[i] for i, e in enumerate(entries) if e is not None]
        spec[section] = [e for e in entries if e is not None]
    return out


def file_loc(loc: Loc, kept: dict[str, list[int]] | None) -> Loc:
    """``loc`` in the data after repairs, as a location in the file."""
    if kept and len(loc) >= 3 and loc[0] == "spec" and loc[1] in kept \
            and isinstance(loc[2], int) and loc[2] < len(kept[loc[1]]):
        return (*loc[:2], kept[loc[1]][loc[2]], *loc[3:])
    return loc


def consequence(loc: Loc, kind: str, repaired: set[Loc]) -> bool:
    """Does an error at ``loc`` (a file location) found after repairs only follow from
    them? A required field missing because it was removed, or an entry that no longer says
    what it is because its type, command or image was."""
    if kind == "missing" and loc in repaired:
        return True
    return len(loc) == 3 and any((*loc, field) in repaired for field in _WHAT_IT_IS)


def left_out_ids(original: Any, kept: dict[str, list[int]] | None) -> set[str]:
    """The ids of the entries of ``original`` (the data before repairs) that repairs
    removed: connections to them are not "unknown nodes", the entry's own problem is
    reported."""
    spec = original.get("spec") if isinstance(original, dict) else None
    if not kept or not isinstance(spec, dict):
        return set()
    out = set()
    for section, left in kept.items():
        entries = spec.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if i not in left and isinstance(entry, dict) and isinstance(entry.get("id"), str):
                out.add(entry["id"])
    return out
