"""The ``parquet`` sink's exactly-once commits: ``prepare_commit``, ``commit`` and
``recover``, a mixin of :class:`~componentmanager.components.connectors.parquet.ParquetSink`
(file names: :mod:`~componentmanager.components.connectors.parquet_files`).

Exactly-once (``exactly_once = "transactional"``). ``held()`` is 0: a row is in the
journal as soon as it is taken, and each commit keeps the journal's state.

* ``initial_commit()`` (the replica's first commit, stored before ``start()``): the same
  record with no journal open or complete, ``next`` past every file in the directory:
  a replica that dies before its next commit is stored deletes the files it made.
* ``prepare_commit()`` (between input messages): flushes the journal and returns
  ``{"run", "serial", "next", "open": {"id", "length", "rows", "since"}, "complete":
  [ids], "schema"}``: the open journal's committed length and the journals that were
  rolled (full or old) since the last commit. ``serial`` is the runner's next commit
  serial (both count the commits the same way: one per ``prepare_commit``); ``next`` is
  the id the next journal gets; ``run`` names this run of the flow (a marker left by an
  earlier flow in the same directory is not taken for this one's).
* ``commit(prepared, record)``: fsyncs the open journal; converts each complete journal
  to ``.parquet.tmp``, fsyncs it and renames it to ``<p><n>-c<serial>.parquet``
  (``serial`` = ``record["serial"]``); fsyncs the directory; then writes ``record`` to
  the marker (temp file, fsync, ``os.replace``, fsync of the directory); then deletes
  the converted journals.
* ``recover(prepared)`` (at start, with the bucket's last commit): the last commit it
  can prove is the marker's when it is of this run and at least as new as the bucket's
  (the marker is written before the bucket, so it is never older unless lost), else the
  bucket's. With that commit's state ``S``: every ``-c<c>`` file with ``c > S.serial``
  made from a journal opened after ``S`` (``n >= S.next``) or from ``S``'s open journal
  is deleted; ``S``'s open journal is cut back to its committed length and written on
  (unless a file of it with ``c <= S.serial`` exists: it was completed at stop, see
  below); every other journal and temp file of the replica is deleted. It returns the
  marker's record, so the runner resumes from the marker when it is newer than the
  bucket (its floors match the files).
* ``stop()``: after the runner's last commit, a journal whose whole content is in that
  commit is converted into ``<p><n>-c<serial>.parquet`` with that commit's serial, so a
  finished flow leaves no temp file. (A journal with rows after the last commit stays
  for ``recover``.)

Crash points (kill -9 anywhere; serial ``S`` committed, ``S+1`` being committed):

1. before ``commit(S+1)`` renames anything: marker and bucket say ``S``; the open
   journal is cut back to ``S``'s length, later journals deleted; the runner takes the
   inputs after ``S`` again and writes their rows again, once.
2. between two renames of ``S+1``: some ``-c(S+1)`` files are in place, the marker says
   ``S``: they are deleted (their journals are still there: deleted only after the
   marker), ``S``'s open journal cut back: as 1.
3. after the renames, before the marker: as 2.
4. during the marker write: ``os.replace`` is atomic: the old marker (as 2) or the new
   one (as 5), never half of one.
5. after the marker, before the bucket write: the marker says ``S+1``, newer than the
   bucket's ``S``: ``recover`` keeps the ``-c(S+1)`` files, deletes their journals if
   still there, cuts ``S+1``'s open journal back to its length, and returns the marker's
   record: the runner resumes from ``S+1`` (its floors), so those inputs are not taken
   again.
6. after the bucket write: both say ``S+1``: as 5 without the resume.
7. in ``stop()``'s conversion: before its rename the temp file is deleted and the
   journal resumed; after it, the file is in place with ``c = S`` and the journal is
   deleted (consumed, not resumed).

So a file in place holds only rows of inputs in a commit the runner will not take
again; a row is in exactly one file or in the committed part of one journal; and a
temp file never lasts past the next start of its replica.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from componentmanager.component import Context
from componentmanager.components.connectors.parquet_files import Journal, Names, fsync_path


class ExactlyOnceCommits:
    """The exactly-once half of the parquet sink (see the module doc). The sink's state it
    reads and sets is declared here; the sink sets it up and defines the methods below
    that raise NotImplementedError."""

    ctx: Context
    _names: Names
    _started: bool
    _journal: Journal | None
    _next: int
    _complete: list[int]
    _run: str
    _serial: int
    _committed: tuple[int, int] | None
    _committed_serial: int | None
    _schema: list[list[str]] | None

    def _due(self) -> bool:
        raise NotImplementedError

    def _count_flushed(self) -> None:
        raise NotImplementedError

    def _set_schema(self, schema: list[list[str]]) -> None:
        raise NotImplementedError

    def _convert(self, n: int, serial: int | None) -> int:
        raise NotImplementedError

    def initial_commit(self) -> Any:
        """The replica's first commit, before any output: the journals it opens from now
        on (``next`` on) are its own, so ``recover`` deletes their files when the replica
        dies before its next commit (an earlier flow's files in the directory stay)."""
        self._serial += 1
        self._next = max(self._next, self._names.next_id())
        return {"run": self._run, "serial": self._serial, "next": self._next,
                "open": None, "complete": [], "schema": None}

    def prepare_commit(self) -> Any:
        if not self._started:
            return self.initial_commit()
        self._serial += 1
        if self._due():  # (no awaiting here: exactly-once a roll does no I/O of its own)
            journal, self._journal = self._journal, None
            assert journal is not None
            journal.fh.close()
            self._complete.append(journal.id)
        self._count_flushed()
        journal = self._journal
        return {"run": self._run, "serial": self._serial, "next": self._next,
                "open": None if journal is None else {
                    "id": journal.id, "length": journal.fh.tell(), "rows": journal.rows,
                    "since": journal.since},
                "complete": list(self._complete), "schema": self._schema}

    async def commit(self, prepared: Any, record: dict[str, Any]) -> None:
        if not isinstance(prepared, dict) or not self._started:
            return
        serial = int(record["serial"])
        if serial != prepared.get("serial"):
            self.ctx.log(f"parquet sink: commit serial {serial} where {prepared.get('serial')}"
                         " was expected")
        await asyncio.to_thread(self._commit_files, prepared, serial, record)
        done = set(prepared["complete"])
        self._complete = [n for n in self._complete if n not in done]
        opened = prepared.get("open")
        self._committed = None if opened is None else (opened["id"], opened["length"])
        self._committed_serial = serial

    def _commit_files(self, prepared: dict[str, Any], serial: int,
                      record: dict[str, Any]) -> None:
        names = self._names
        opened = prepared.get("open")
        if opened is not None:
            fsync_path(names.journal(opened["id"]))
        for n in prepared["complete"]:
            if names.journal(n).exists():
                self._convert(n, serial)
        fsync_path(names.dir, directory=True)
        temp = names.dir / f".{names.marker.name}.tmp"
        with temp.open("w") as fh:  # the marker, after the renames
            json.dump(record, fh, separators=(",", ":"), default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, names.marker)
        fsync_path(names.dir, directory=True)
        for n in prepared["complete"]:
            names.journal(n).unlink(missing_ok=True)

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self._names.marker.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.ctx.log(f"parquet sink: {self._names.marker} unreadable ({exc}): ignored")
            return None
        return record if isinstance(record, dict) else None

    async def recover(self, prepared: Any) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._recover, prepared)

    def _recover(self, prepared: Any) -> dict[str, Any] | None:
        names = self._names
        finals, journals, temps = names.scan()
        for temp in temps:
            temp.unlink(missing_ok=True)
        if not isinstance(prepared, dict) or not prepared.get("run"):
            # a new flow: what an earlier one left here is not this one's (its complete
            # files stay; its journals were never committed by this flow)
            for path in journals.values():
                path.unlink(missing_ok=True)
            self._next = max(self._next, names.next_id())  # (past initial_commit's next)
            return None
        state, kept = prepared, None
        marker = self._read_marker()
        sink = (marker or {}).get("sink")
        if (isinstance(sink, dict) and sink.get("run") == prepared["run"]
                and int(marker.get("serial") or 0) >= int(prepared.get("serial") or 0)):
            state, kept = sink, marker
        serial, nxt = int(state["serial"]), int(state["next"])
        opened = state.get("open")
        open_id = None if opened is None else int(opened["id"])
        consumed = False
        for n, files in finals.items():
            for path, c in files:
                if c is not None and c > serial and (n == open_id or n >= nxt):
                    path.unlink(missing_ok=True)
                    self.ctx.log(f"deleted {path.name}: renamed by a commit that was not "
                                 f"completed (the last one is {serial}); its rows are "
                                 "written again")
                elif n == open_id and c is not None:
                    consumed = True  # completed at a stop after the commit
        for n, path in journals.items():
            if n != open_id or consumed:
                path.unlink(missing_ok=True)
        self._run, self._serial, self._next = str(state["run"]), serial, nxt
        self._complete, self._journal = [], None
        if state.get("schema"):
            self._set_schema(state["schema"])
        if opened is not None and not consumed:
            path = names.journal(open_id)  # type: ignore[arg-type]
            length = int(opened["length"])
            if not path.exists():
                self.ctx.log(f"parquet sink: {path.name} is missing: the {opened['rows']:,} "
                             "row(s) it held at the last commit are lost")
            else:
                fh = path.open("r+b")
                size = fh.seek(0, os.SEEK_END)
                if size > length:
                    fh.truncate(length)
                    fh.seek(length)
                self._journal = Journal(open_id, path, fh, int(opened["rows"]),  # type: ignore[arg-type]
                                        float(opened["since"]))
                self._committed = (open_id, length)  # type: ignore[assignment]
                self._committed_serial = serial
        if kept is not None and serial > int(prepared.get("serial") or 0):
            self.ctx.log(f"parquet sink: commit {serial}, kept in {names.marker.name}, is "
                         f"newer than the last stored one: resuming from it")
        return kept
