"""The in-process component API: what a built-in or plugin component implements.

A component is constructed with its validated config and a :class:`Context`, then:

* ``await start()`` once (open files, servers, connections);
* sources: ``await run()`` produces events through ``await ctx.emit(port, event)`` and
  returns when the source is finished (a finite source) or runs until cancelled;
* processors and sinks: ``await process(port, event)`` per input event; they emit with
  ``await ctx.emit(port, event)``, or say ``ctx.count_filtered()`` for an event they
  discard on purpose. Raising counts an error (and dead-letters the event where the
  delivery mode allows); the component keeps running. ``process`` runs on the data
  plane's event loop: blocking work belongs in a thread (``asyncio.to_thread``); a
  component that holds the loop is reported ``degraded``;
* optionally ``await process_batch(port, events)``: all the events of one input message
  at once (a frame), emitted with ``await ctx.emit_batch(port, events)``. It returns
  True when it took them all, False, having done nothing, when any event needs the
  one-by-one path (it would fail, or be too large): the runner then calls ``process``
  per event; or a number n: it took the first n, the runner hands the next one to
  ``process`` and offers the rest again (``window`` and ``join`` stop at an event that
  fails, is late, closes windows or completes a pair). Built-in stateless and stateful
  components implement it; it saves the per-event calls on the hot path;
* ``await flush()`` every ``flush_interval`` seconds when that is set (time windows), and
  once before stop; with ``flush_when_idle = True`` (a flush that only writes out what is
  buffered, no batch closed early: the ``file`` sink) also whenever its input runs dry,
  so the last events of a burst are out at once, not at the next tick;
* ``await stop()`` once, at the end.
* ``takes_raw_json = True``: the component writes events out as the JSON they came as
  (the ``file`` sink): each event reaches it as a ``msgspec.Raw`` (its JSON bytes,
  checked to be JSON, not decoded; ``msgspec.json.encode`` writes it as it is), which
  saves decoding and encoding again. An event that is not JSON arrives as the runner
  makes it for everyone (``{"data": text}``); a ``partition_by`` node gets decoded events.
* sources: ``position_fields`` lists the config fields naming what the source reads;
  a config change that keeps them keeps its position (``ctx.resume_position()``).
* ``held()``: how many input events the component holds that are not yet emitted or
  written out (a batch being filled, unflushed file lines). With at-least-once delivery
  the runner acks those inputs only once ``held()`` is 0 again (after an emit or a
  ``flush()``); it forces a ``flush()`` when too many or too old inputs wait.
* stateful components (``stateful = True``: ``window``, ``join``) keep per-key state that
  outlives the replica instead: ``snapshot()`` returns it as JSON (``{"keys": {<key as
  key_text>: ...}, ...}``) and ``restore(parts)`` takes it back at start (a list of
  parts; one today). The runner checkpoints it with the input positions and acks inputs only once
  they are in a stored snapshot (see :mod:`componentmanager.runners.state`); ``held()``
  and forced flushes do not apply to them. ``flush()`` is their clock tick (close what
  is due).

* exactly-once (``delivery: exactly-once``): a sink that writes somewhere outside NATS
  declares how a replay is kept from repeating, with ``exactly_once``:
  ``"transactional"``: its writes after the last commit can be undone or finished.
  ``prepare_commit()`` (no awaiting; called between input messages) returns what the
  commit must remember of its output (a file's length, the puts not yet applied), and
  ``initial_commit()`` the same for the replica's first commit, stored before ``start()``;
  ``await commit(prepared, record)`` makes everything written so far durable before the
  commit record is stored in ``flowctl_checkpoints``; ``await committed(prepared)`` runs
  once it is stored (apply what was deferred); ``await recover(prepared)`` runs at start
  with the last commit's value (None on a first start) and undoes or re-applies what
  came after it (truncate the file, put the deferred values again). A database sink
  commits its transaction in ``commit`` and writes ``record`` (JSON, with its
  ``serial``) in that same transaction; its ``recover`` returns the record it holds: one
  with a higher ``serial`` than the bucket's (a crash between the two writes) wins, so
  its rows and its input positions are never apart. ``"idempotent"``: it writes under
  ``ctx.event_id()`` (stable across redeliveries and restarts) and the receiver drops
  repeats (an ``Idempotency-Key``, a ``Nats-Msg-Id``, an upsert). Validation refuses
  exactly-once for a sink that declares neither.

Events are JSON-compatible values (usually dicts). Components never see NATS directly
except through the context (``ctx.nc`` for the nats/kv sources and sinks).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from pydantic import BaseModel


class EventError(Exception):
    """An event this component cannot handle, with a message meant for the user (it
    becomes the dead letter's reason and the replica's last error as it is)."""


class RetryableError(Exception):
    """A failure that may pass when the event is tried again (a 503, a busy service).
    With at-least-once the runtime retries these, and I/O errors (``OSError``: a refused
    connection, a timeout), in place before dead-lettering; any other exception fails the
    event at once, since trying the same code on the same event again fails the same way
    while the events behind it wait."""


class EventTooLarge(EventError):
    """An emitted event is larger than the NATS server accepts (its ``max_payload``):
    the input that produced it fails, nothing else notices."""


class Context(Protocol):
    """What the runtime gives a component."""

    flow: str
    node: str
    replica: int
    nc: Any  # nats.aio.client.Client (for components that talk to NATS themselves)
    #: The largest encoded event ``emit`` accepts. A larger one fails the input that made
    #: it (EventTooLarge); from a source it is counted and dead-lettered as a preview.
    max_event_bytes: int
    #: the node's input ports (a ``join``'s are named after its upstream nodes)
    input_ports: list[str]

    #: the flow's delivery is exactly-once (see the module doc)
    exactly_once: bool
    #: read at the start of ``process_batch`` (before any await): True when its events
    #: were decoded for this call alone (nothing else holds them), so a processor may
    #: change them in place instead of copying (events fed from a fused node: False)
    batch_owned: bool

    async def emit(self, port: str, event: Any) -> None: ...

    def event_id(self) -> str | None:
        """The id of the input event being processed (stable across redeliveries and,
        exactly-once, restarts), None when unknown."""
        ...

    async def emit_batch(self, port: str, events: list[Any]) -> bool:
        """Emit ``events`` together, in as few frames as their count and size allow, when
        that can be done for all of them (else nothing is emitted and False is returned:
        emit them one by one; one event larger than the server takes is such a case)."""
        ...

    def log(self, message: str, **fields: Any) -> None:
        """A log line of this component (also published on flowctl.logs.<flow>.<node>)."""
        ...

    async def reject(self, data: bytes, reason: str) -> None:
        """Input this component cannot use (a source's unparsable line): counted in
        ``errors``, shown as the last error and dead-lettered with ``reason``."""
        ...

    async def resume_position(self) -> Any:
        """Sources: where to resume (the last position stored with the stream, see
        :meth:`advance`); None to start from the beginning."""
        ...

    def advance(self, position: Any) -> None:
        """Sources: everything emitted so far is covered by ``position`` (a JSON value:
        a sequence, a byte offset). At-least-once flows keep the latest position whose
        events are all stored, so a restarted source resumes there instead of replaying."""

    def wrote(self, count: int = 1) -> None:
        """Sinks: ``count`` events were written out (printed, stored, sent): the sink's
        ``out`` counter."""
        ...

    def inputs_quiet(self) -> bool:
        """Did the inputs run dry (nothing more to take, as the server says), as opposed
        to stalling (NATS unreachable)? What an idle timeout should wait for."""
        ...

    def count_filtered(self, count: int = 1) -> None:
        """Input events discarded on purpose (a filter said no, nothing matched): counted
        in ``filtered``, so every event is accounted for."""
        ...


async def reject_each(ctx: Context, events: list[bytes], reason: str) -> None:
    """Events a component held and cannot pass on (a batch that failed as a whole): each
    is counted in ``errors`` and dead-lettered with ``reason``, so none is lost unseen."""
    for data in events:
        await ctx.reject(data, reason)


class Component:
    """Base class with no-op lifecycle hooks; override what you need."""

    flush_interval: ClassVar[float | None] = None
    flush_when_idle: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    #: events arrive as ``msgspec.Raw`` (their JSON as received; see the module doc)
    takes_raw_json: ClassVar[bool] = False
    #: "transactional", "idempotent" or None (see the module doc: exactly-once)
    exactly_once: ClassVar[str | None] = None
    #: sources: the config fields naming what the source reads (a path, a subject); its
    #: position is kept across config changes that leave them alone. None: every field
    #: (any config change starts it over). See :mod:`componentmanager.runners.checkpoint`.
    position_fields: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: BaseModel, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx

    async def start(self) -> None:
        return None

    async def run(self) -> None:
        """Sources only: emit events; return when finished."""
        return None

    async def process(self, port: str, event: Any) -> None:
        """Processors and sinks: handle one event that arrived on input ``port``."""
        return None

    async def process_batch(self, port: str, events: list[Any]) -> bool | int:
        """Optional fast path (see the module doc): True when every event was handled,
        False when none was, n when the first n were."""
        return False

    async def flush(self) -> None:
        return None

    def held(self) -> int:
        """Input events buffered but not yet emitted/written (see the module docstring)."""
        return 0

    def snapshot(self) -> dict[str, Any]:
        """Stateful components: the state to checkpoint (see the module docstring)."""
        return {}

    def restore(self, parts: list[dict[str, Any]]) -> None:
        """Stateful components: resume from checkpointed state (see the module docstring)."""
        return None

    def blocking_advice(self) -> str | None:
        """What to do when this component holds the agent's event loop (shown in the
        replica's ``degraded`` reason), when it knows better than the general advice."""
        return None

    def initial_commit(self) -> Any:
        """Exactly-once sinks: their part of a replica's very first commit, stored before
        ``start()`` and before any output: what ``recover()`` cuts back to when the replica
        dies before its next commit is stored (a file's length now). None: nothing."""
        return None

    def prepare_commit(self) -> Any:
        """Exactly-once sinks: what the commit keeps of the output (see the module doc)."""
        return None

    async def commit(self, prepared: Any, record: dict[str, Any]) -> None:
        """Exactly-once sinks: make what was written so far durable (a transactional
        store keeps ``record``, the commit, with it)."""
        return None

    async def committed(self, prepared: Any) -> None:
        """Exactly-once sinks: the commit record holding ``prepared`` is stored."""
        return None

    async def recover(self, prepared: Any) -> dict[str, Any] | None:
        """Exactly-once sinks: at start, undo or finish what came after the last commit;
        return the commit record the sink keeps itself, if it does."""
        return None

    async def stop(self) -> None:
        return None
