"""What travels on a data subject, as pure functions: events, frames and the one header.

A data message carries **one event** or a **frame** of N events:

* one event: its JSON (msgspec, never containing a newline), e.g. ``{"seq":1}``;
* a frame: the events' JSON joined by newlines (JSON lines, readable in ``nats sub``).

Every message a flowctl component publishes has one metadata header, :data:`HDR_META`
(``Flowctl``): ``<id of the first event> <count> <unix time>``, e.g.
``gen.0.a1b2c3-1025 64 1764080000.123456``. Event ``i`` of the frame has the id
``gen.0.a1b2c3-<1025+i>`` (``<node>.<replica>.<instance>-<n>``). A message without the
header is one event (anything that publishes JSON to a subject can feed a flow); a
message with a count of 1 is one event too. Dead letters carry the reason in
:data:`HDR_ERROR` and the failed event's own id in :data:`HDR_META` (count 1).

No I/O here; publishing and consuming are :mod:`.emit`, :mod:`.streams` and the runners.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

# The header names are the contract every package shares: defined in flowstore.models.
from flowstore.models import HDR_ERROR as HDR_ERROR
from flowstore.models import HDR_META as HDR_META
from flowstore.models import HDR_REPLAY_TO as HDR_REPLAY_TO
from flowstore.streams import DEAD_AFTER_DELIVERIES

#: A frame is cut at this many events or bytes (whichever comes first).
FRAME_EVENTS = 512
FRAME_BYTES = 128 * 1024

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode(event: Any) -> bytes:
    return _encoder.encode(event)


def encode_lines(events: list[Any]) -> bytes:
    """Events as the body of a frame: their JSON joined by newlines."""
    return _encoder.encode_lines(events)[:-1]


def frame_chunks(events: list[Any], max_event_bytes: int
                 ) -> list[tuple[list[Any], bytes]] | None:
    """``events`` as consecutive frames, each with its JSON lines: at most
    :data:`FRAME_EVENTS` events and :data:`FRAME_BYTES` bytes, or ``max_event_bytes`` when
    the server takes less (an event larger than that alone). None when one event is
    larger than ``max_event_bytes`` (what the server takes): then each goes its own way,
    and that one fails alone."""
    out: list[tuple[list[Any], bytes]] = []
    for start in range(0, len(events), FRAME_EVENTS):
        part = events[start:start + FRAME_EVENTS]
        lines = encode_lines(part)
        if len(lines) <= min(FRAME_BYTES, max_event_bytes):
            out.append((part, lines))
            continue
        first, size = 0, 0
        pieces = lines.split(b"\n")  # one per event: an encoded event has no newline
        for i, piece in enumerate(pieces):
            if len(piece) > max_event_bytes:
                return None
            if i > first and size + len(piece) > min(FRAME_BYTES, max_event_bytes):
                out.append((part[first:i], b"\n".join(pieces[first:i])))
                first, size = i, 0
            size += len(piece) + 1
        out.append((part[first:], b"\n".join(pieces[first:])))
    return out


def decode(data: bytes) -> Any:
    """A JSON body as a value; a body that is not JSON becomes ``{"data": text}``."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return {"data": data.decode("utf-8", "replace")}


def frame_count(headers: dict[str, str] | None) -> int:
    """How many events a message carries (1 without a flowctl header)."""
    meta = headers.get(HDR_META) if headers else None
    if not meta:
        return 1
    try:
        return max(1, int(meta.split(" ", 2)[1]))
    except (IndexError, ValueError):
        return 1


def decode_frame(data: bytes, count: int) -> list[Any]:
    """The events of a message (one JSON array decode for a well-formed frame; a frame
    with a line that is not JSON falls back to line by line, that line becoming
    ``{"data": text}`` as a single event would)."""
    if count <= 1:
        return [decode(data)]
    try:  # (msgspec's decode_lines is no faster and takes "1 2" as two events)
        events = _decoder.decode(b"[" + data.replace(b"\n", b",") + b"]")
        if len(events) == data.count(b"\n") + 1:  # ("[1" and "2]", "1, 2": not one a line)
            return events
    except msgspec.DecodeError:
        pass
    return [decode(line) for line in data.split(b"\n")]


_raw_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def _utf8(data: bytes) -> bool:
    """Is ``data`` UTF-8 (what JSON is; the Raw decoder does not check it)?"""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def raw_frame(data: bytes, count: int) -> list[Any]:
    """The events of a message as ``msgspec.Raw`` (each one's JSON as received, checked to
    be JSON, not decoded: for a component that writes them out as they are). A frame
    with a line that is not JSON, an event over several lines, a carriage return or
    bytes that are not UTF-8 is decoded as :func:`decode_frame` does (so written as every
    other node sees it). A number beyond a float's range is written as it came."""
    lines = data.count(b"\n") + 1 if count > 1 else 1
    if (lines == 1 and b"\n" in data) or b"\r" in data or not _utf8(data):
        return decode_frame(data, count)  # not as one line each, or not UTF-8: as everyone
    try:
        events = _raw_decoder.decode(b"[" + (data.replace(b"\n", b",") if lines > 1 else data)
                                     + b"]")
    except msgspec.DecodeError:
        events = None
    if events is None or len(events) != lines:  # ("1, 2" on a line is not two events)
        return decode_frame(data, count)
    return events


def event_as_received(data: bytes, count: int, index: int) -> bytes:
    """Event ``index`` of a message as it arrived (what a dead letter keeps: the handler
    may have changed the decoded event, even made it too large to store)."""
    if count <= 1:
        return data
    lines = data.split(b"\n")
    return lines[index] if index < len(lines) else data


def event_id(headers: dict[str, str] | None, index: int) -> str | None:
    """The id of event ``index`` of a message, derived from its header."""
    meta = headers.get(HDR_META) if headers else None
    if not meta:
        return None
    first = meta.split(" ", 1)[0]
    prefix, _, n = first.rpartition("-")
    return f"{prefix}-{int(n) + index}" if n.isdigit() else first


class EventIds:
    """Ids for one emitting replica: ``<node>.<replica>.<instance>-<n>``, n from 1."""

    __slots__ = ("_n", "_prefix")

    def __init__(self, node: str, replica: int, instance: str) -> None:
        self._prefix = f"{node}.{replica}.{instance}-"
        self._n = 0

    def continue_as(self, node: str, replica: int, epoch: str, emitted: int) -> None:
        """Number on from ``emitted`` under ``epoch`` (exactly-once: the ids an event
        emitted again after a crash had the first time)."""
        self._prefix = f"{node}.{replica}.{epoch}-"
        self._n = emitted

    @property
    def epoch(self) -> str:
        """The part of the ids between the replica and the number."""
        return self._prefix[:-1].rsplit(".", 1)[1]

    @property
    def emitted(self) -> int:
        """How many events were numbered (the next is ``emitted + 1``)."""
        return self._n

    def header(self, count: int) -> dict[str, str]:
        """The header of the next message, carrying ``count`` events."""
        first = self._n + 1
        self._n += count
        return {HDR_META: f"{self._prefix}{first} {count} {time.time():.6f}"}


def dead_letter_headers(headers: dict[str, str] | None, index: int, error: str) -> dict[str, str]:
    """Headers of the dead letter of event ``index`` of a message."""
    out = {HDR_ERROR: error[:1000]}
    eid = event_id(headers, index)
    if eid is not None:
        meta = headers.get(HDR_META, "") if headers else ""
        stamp = meta.split(" ")[2] if meta.count(" ") >= 2 else f"{time.time():.6f}"
        out[HDR_META] = f"{eid} 1 {stamp}"
    return out


#: What a dead letter keeps of an event too large to store with its reason.
PREVIEW_BYTES = 1024


def fit_dead_letter(data: bytes, headers: dict[str, str],
                    max_payload: int) -> tuple[bytes, dict[str, str]]:
    """A dead letter the server takes: an event that does not fit beside its headers
    (the server counts both against ``max_payload``) is kept as a preview, and says so."""
    room = max_payload - sum(len(k) + len(v) + 4 for k, v in headers.items()) - 128
    if len(data) <= room:
        return data, headers
    note = f" (an event of {len(data):,} bytes: its first {PREVIEW_BYTES:,} kept)"
    return data[:PREVIEW_BYTES], {**headers, HDR_ERROR: headers.get(HDR_ERROR, "") + note}


def delivery_of(reply: str | None) -> tuple[int, int] | None:
    """(stream sequence, times delivered) of a JetStream delivery, from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or the longer form with a domain and an account hash); None for anything else."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[5]), int(tokens[4])
        if len(tokens) >= 11:
            return int(tokens[7]), int(tokens[6])
    except ValueError:
        return None
    return None


def undeliverable(delivered: int) -> str | None:
    """Why an input delivered ``delivered`` times is dead-lettered unprocessed (None:
    it is handled as usual); see :data:`flowstore.streams.DEAD_AFTER_DELIVERIES`."""
    if delivered < DEAD_AFTER_DELIVERIES:
        return None
    return (f"delivered {delivered} times without being acked (its replica crashed on it "
            "or could not store its outputs each time): dead-lettered unprocessed")


def redelivery_delay(delivered: int) -> float:
    """How long an input that must be taken again waits first: longer each time."""
    return min(2.0 * max(delivered, 1), 30.0)


def message_identity(headers: dict[str, str] | None, reply: str | None) -> str | None:
    """What names a message across redeliveries and re-stores: the id of its first event
    (the same when a publish retried after a lost ack was stored twice), else its stream
    sequence; None when neither is known."""
    meta = headers.get(HDR_META) if headers else None
    if meta:
        return meta.split(" ", 1)[0]
    delivery = delivery_of(reply)
    return f"#{delivery[0]}" if delivery else None
