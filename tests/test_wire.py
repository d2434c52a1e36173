"""The wire format as pure functions: one event or a frame of JSON lines, one header."""

from __future__ import annotations

from componentmanager.dataplane import (
    HDR_ERROR,
    HDR_META,
    EventIds,
    dead_letter_headers,
    decode_frame,
    event_id,
    frame_count,
)


def test_a_message_without_the_header_is_one_event() -> None:
    assert frame_count(None) == frame_count({}) == 1
    assert decode_frame(b'{"a": 1}', 1) == [{"a": 1}]
    assert decode_frame(b"not json", 1) == [{"data": "not json"}]


def test_ids_and_counts_ride_in_one_header() -> None:
    ids = EventIds("gen", 0, "abc")
    first, second = ids.header(64), ids.header(1)
    assert list(first) == [HDR_META]
    assert first[HDR_META].startswith("gen.0.abc-1 64 ")
    assert second[HDR_META].startswith("gen.0.abc-65 1 ")
    assert frame_count(first) == 64
    assert event_id(first, 0) == "gen.0.abc-1" and event_id(first, 63) == "gen.0.abc-64"
    assert event_id(None, 3) is None


def test_frames_are_json_lines_and_a_bad_line_does_not_spoil_the_rest() -> None:
    assert decode_frame(b'{"n": 1}\n{"n": 2}\n[3]', 3) == [{"n": 1}, {"n": 2}, [3]]
    assert decode_frame(b'{"n": 1}\nnope\n{"n": 3}', 3) == [{"n": 1}, {"data": "nope"},
                                                             {"n": 3}]
    # a blank line is an event too (the count says so): never silently one event fewer
    assert decode_frame(b'{"n": 1}\n\n{"n": 3}', 3) == [{"n": 1}, {"data": ""}, {"n": 3}]
    assert decode_frame(b'1 2\n\n3', 3) == [{"data": "1 2"}, {"data": ""}, 3]  # a line each
    # lines that are JSON only together are not one event, nor is one line two
    assert decode_frame(b'[1\n2]', 2) == [{"data": "[1"}, {"data": "2]"}]
    assert decode_frame(b'1, 2\n3', 2) == [{"data": "1, 2"}, 3]


def test_a_dead_letter_names_its_event_and_the_reason() -> None:
    header = {HDR_META: "gen.0.abc-10 3 1764080000.5"}
    dl = dead_letter_headers(header, 2, "field 'x' is not in the event")
    assert dl == {HDR_ERROR: "field 'x' is not in the event",
                  HDR_META: "gen.0.abc-12 1 1764080000.5"}
    assert list(dead_letter_headers(None, 0, "bad line")) == [HDR_ERROR]


async def test_lines_and_single_events_share_a_frame_within_its_bounds() -> None:
    from componentmanager.dataplane import Outbox
    from componentmanager.dataplane.wire import FRAME_EVENTS, encode_lines

    sent: list[tuple[bytes, int]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str], count: int) -> None:
        assert frame_count(headers) == count
        sent.append((body, count))

    box = Outbox(EventIds("t", 0, "x"), publish, {"s"})
    async with box.handling():
        await box.put("s", b'{"a":1}')
        await box.put_lines("s", encode_lines([{"b": 1}, {"b": 2}]), 2)
        assert box.pending == 3
    assert sent == [(b'{"a":1}\n{"b":1}\n{"b":2}', 3)]
    sent.clear()
    many = [{"i": i} for i in range(FRAME_EVENTS)]
    async with box.handling():
        await box.put("s", b'{"a":1}')
        await box.put_lines("s", encode_lines(many), FRAME_EVENTS)  # would overfill: next
    assert [c for _, c in sent] == [1, FRAME_EVENTS]
    assert decode_frame(sent[1][0], FRAME_EVENTS) == many


async def test_inputs_are_handled_one_at_a_time_and_a_broken_one_sends_nothing() -> None:
    import asyncio

    from componentmanager.dataplane import Outbox

    sent: list[tuple[str, bytes]] = []

    async def publish(subject: str, body: bytes, headers: dict[str, str], count: int) -> None:
        sent.append((headers.get("Nats-Msg-Id", ""), body))

    box = Outbox(EventIds("t", 0, "x"), publish, {"s"})

    async def handle(origin: str) -> None:
        async with box.handling(origin):
            for i in range(3):
                await box.put("s", f'{{"from":"{origin}","i":{i}}}'.encode())
                await asyncio.sleep(0)  # another input's handler may run here

    await asyncio.gather(handle("A"), handle("B"))
    # each input's outputs under its own ids, never mixed into another's frame
    assert [(ident, body.count(b'"from":"' + ident[2:3].encode())) for ident, body in sent] \
        == [("s:A:0", 3), ("s:B:0", 3)]
    sent.clear()
    try:
        async with box.handling("C"):
            await box.put("s", b'{"from":"C"}')
            raise RuntimeError("stopped halfway")
    except RuntimeError:
        pass
    await box.flush()
    assert sent == []  # delivered again: the partial frame must not take "s:C:0"


def test_a_dead_letter_takes_the_event_as_it_arrived() -> None:
    from componentmanager.dataplane import event_as_received

    assert event_as_received(b'{"a":1}', 1, 0) == b'{"a":1}'
    assert event_as_received(b'{"a":1}\n{"b":2}\n{"c":3}', 3, 1) == b'{"b":2}'


def test_a_dead_letter_too_large_beside_its_headers_keeps_a_preview() -> None:
    from componentmanager.dataplane import fit_dead_letter
    from componentmanager.dataplane.wire import HDR_ERROR

    headers = {HDR_ERROR: "boom " * 200}
    data, kept = fit_dead_letter(b"x" * 1500, headers, 2000)
    assert len(data) == 1024 and "an event of 1,500 bytes: its first 1,024 kept" in kept[HDR_ERROR]
    assert fit_dead_letter(b"x" * 100, headers, 2000) == (b"x" * 100, headers)



def test_a_component_that_writes_events_out_gets_their_json_as_it_came() -> None:
    """``raw_frame`` (for ``takes_raw_json``, the file sink): each event's JSON, checked,
    not decoded; written out it is the line that came. What is not one JSON value per
    line is decoded as ``decode_frame`` does (so written as everyone sees it)."""
    import msgspec

    from componentmanager.dataplane import raw_frame

    frame = b'{"n":1,"s":"\\u00e9"}\n[2]\n"three"'
    events = raw_frame(frame, 3)
    assert all(isinstance(e, msgspec.Raw) for e in events)
    assert msgspec.json.Encoder().encode_lines(events)[:-1] == frame
    assert raw_frame(b'{"n": 1}\nnope', 2) == [{"n": 1}, {"data": "nope"}]
    assert raw_frame(b"1, 2", 1) == [{"data": "1, 2"}]  # not two events
    assert raw_frame(b'{"a":\n 1}', 1) == [{"a": 1}]  # one event over lines: one line
    assert raw_frame(b"", 1) == [{"data": ""}]


def test_many_events_emitted_at_once_travel_in_frames_within_the_bounds() -> None:
    """An emit of more than a frame's worth is cut into frames (never taken one by one
    for being large): at most FRAME_EVENTS events and FRAME_BYTES bytes each, an event
    larger than FRAME_BYTES alone; one larger than the server takes: None."""
    from componentmanager.dataplane.wire import FRAME_BYTES, FRAME_EVENTS, frame_chunks

    small = [{"i": i} for i in range(FRAME_EVENTS * 2 + 5)]
    frames = frame_chunks(small, 1 << 20)
    assert frames is not None and [len(p) for p, _ in frames] == [FRAME_EVENTS, FRAME_EVENTS, 5]
    assert [e for p, _ in frames for e in p] == small
    assert all(decode_frame(lines, len(p)) == p for p, lines in frames)
    big = [{"i": i, "pad": "x" * 1000} for i in range(FRAME_EVENTS)]  # over FRAME_BYTES
    frames = frame_chunks(big, 1 << 20)
    assert frames is not None and len(frames) > 1
    assert all(len(lines) <= FRAME_BYTES for _, lines in frames)
    assert [e for p, _ in frames for e in p] == big
    huge = [{"i": 0}, {"pad": "x" * (FRAME_BYTES + 10)}, {"i": 2}]
    frames = frame_chunks(huge, 1 << 20)
    assert frames is not None and [len(p) for p, _ in frames] == [1, 1, 1]
    assert frame_chunks(huge, FRAME_BYTES) is None
