"""The ``parquet`` sink's files: their names, the journals, and a journal's conversion
into a Parquet file put in place.

Files, per replica (``<p>`` = ``part-<node>-r<replica>-``; names starting with ``.`` or
``_`` are skipped by pyarrow.dataset, Spark, DuckDB and friends):

* ``.<p><n>.jsonl.tmp``: the journal of file ``n``: a header line (the schema) then one
  JSON array per row, appended as events come in. A Parquet file cannot be appended to
  or cut back, its journal can (exactly-once keeps its committed length).
* ``.<p><n>.parquet.tmp``: file ``n`` being converted;
* ``<p><n>.parquet`` (at-least-once, at-most-once) or ``<p><n>-c<serial>.parquet``
  (exactly-once: the commit that put it in place): a complete file, renamed into place
  (after an fsync) only once it is whole;
* ``_flowctl-commit-<node>-r<replica>.json`` (exactly-once): the last commit record.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from componentmanager.components.connectors.parquet_types import arrow_type


@dataclass
class Journal:
    id: int
    path: Path
    fh: BinaryIO
    rows: int
    since: float


class Names:
    """The file names of one replica in the directory (see the module doc)."""

    def __init__(self, directory: Path, node: str, replica: int) -> None:
        self.dir = directory
        self.prefix = f"part-{node}-r{replica}-"
        self.marker = directory / f"_flowctl-commit-{node}-r{replica}.json"
        p = re.escape(self.prefix)
        self._final = re.compile(p + r"(\d+)(?:-c(\d+))?\.parquet")
        self._journal = re.compile(r"\." + p + r"(\d+)\.jsonl\.tmp")
        self._temp = re.compile(r"\." + p + r"\d+\.parquet\.tmp|\." + re.escape(
            self.marker.name) + r"\.tmp")

    def final(self, n: int, serial: int | None) -> Path:
        tail = "" if serial is None else f"-c{serial}"
        return self.dir / f"{self.prefix}{n:06d}{tail}.parquet"

    def journal(self, n: int) -> Path:
        return self.dir / f".{self.prefix}{n:06d}.jsonl.tmp"

    def temp(self, n: int) -> Path:
        return self.dir / f".{self.prefix}{n:06d}.parquet.tmp"

    def scan(self) -> tuple[dict[int, list[tuple[Path, int | None]]], dict[int, Path],
                            list[Path]]:
        """This replica's files: finals by id (with their serial), journals by id, temps."""
        finals: dict[int, list[tuple[Path, int | None]]] = {}
        journals: dict[int, Path] = {}
        temps: list[Path] = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if m := self._final.fullmatch(name):
                serial = int(m.group(2)) if m.group(2) else None
                finals.setdefault(int(m.group(1)), []).append((self.dir / name, serial))
            elif m := self._journal.fullmatch(name):
                journals[int(m.group(1))] = self.dir / name
            elif self._temp.fullmatch(name):
                temps.append(self.dir / name)
        return finals, journals, temps

    def next_id(self) -> int:
        finals, journals, _ = self.scan()
        return max([0, *finals, *journals]) + 1


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: Path, length: int | None = None) -> tuple[list[list[str]], list[list]]:
    """A journal's schema and rows (up to ``length`` bytes; a last line without its
    newline, cut by a crash, is left out)."""
    with path.open("rb") as fh:
        data = fh.read() if length is None else fh.read(length)
    data = data[: data.rfind(b"\n") + 1]
    lines = data.splitlines()
    if not lines:
        return [], []
    header = msgspec.json.decode(lines[0])
    rows = [msgspec.json.decode(line) for line in lines[1:] if line]
    return header["schema"], rows


def write_parquet(journal: Path, temp: Path, final: Path, compression: str) -> int:
    """Convert a journal into a complete Parquet file in place (temp, fsync, rename):
    its row count (0: nothing written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, rows = read_journal(journal)
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    arrays = [pa.array(list(col), type=arrow_type(kind))
              for col, (_, kind) in zip(columns, schema, strict=True)]
    table = pa.Table.from_arrays(
        arrays, schema=pa.schema([(name, arrow_type(kind)) for name, kind in schema]))
    pq.write_table(table, temp, compression=None if compression == "none" else compression)
    fsync_path(temp)
    os.replace(temp, final)
    return len(rows)
