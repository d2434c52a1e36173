"""Hostile YAML refused before anything is built from it. Pure: one pass over the parser's
events of a text, nothing constructed; :func:`refusal` says why a text is refused (with
its line), :mod:`flowstore.loader` turns that into a located problem.
"""

from __future__ import annotations

from typing import Any

import yaml

#: Hostile files are refused before anything is built from them: YAML aliases expand
#: (nine lines can stand for a billion nodes), nesting recurses, and an alias inside the
#: collection it names (``base: &b {<<: *b}``) would be a value that contains itself.
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 4 * 2**20


def refusal(text: str) -> tuple[str, int | None] | None:
    """Why (message, line) to refuse a file too large, that would expand (through
    aliases) to more than MAX_NODES values, nested too deep, or with an alias to a
    collection it is inside (a value that contains itself: building or walking it would
    never end): one pass over the parser's events, counting what each anchor stands for;
    nothing is constructed."""
    if len(text) > MAX_BYTES:
        return (f"the file is {len(text):,} bytes; a flow file may have at most "
                f"{MAX_BYTES:,}", None)
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    stack: list[list[Any]] = [[0, None]]  # per open collection: [values, anchor]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        added = 0
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append([1, event.anchor])
            if len(stack) > MAX_DEPTH:
                return (f"nested more than {MAX_DEPTH} levels deep: refused",
                        event.start_mark.line + 1)
            continue
        if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            added, anchor = stack.pop()
            if anchor:
                sizes[anchor] = added
        elif isinstance(event, yaml.ScalarEvent):
            added = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for _, anchor in stack):
                return (f"its YAML alias *{event.anchor} is inside the collection it names "
                        f"(&{event.anchor}): a value that contains itself is refused; write "
                        "the values out", event.start_mark.line + 1)
            added = sizes.get(event.anchor, 1)
            total += added
            if total > MAX_NODES:
                return (f"its YAML aliases (*{event.anchor}) expand to more than "
                        f"{MAX_NODES:,} values: refused; write the values out",
                        event.start_mark.line + 1)
        stack[-1][0] += added
    return None
