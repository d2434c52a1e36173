"""The exactly-once commit's pure parts: which events of a message a replica takes
(floors with ranges, whatever the order and framing), who owns an event, ids."""

from __future__ import annotations

import random

from componentmanager.dataplane.wire import EventIds
from componentmanager.runners.commit import Floors, message_range, owner_of


def test_a_repeat_is_skipped_however_it_is_framed() -> None:
    floors = Floors()
    assert floors.fresh("gen.0.e", 1, 10) == list(range(10))
    assert floors.fresh("gen.0.e", 1, 10) == []  # the same message again
    assert floors.fresh("gen.0.e", 5, 10) == [6, 7, 8, 9]  # 11..14 are new
    assert floors.as_dict() == {"gen.0.e": 14}


def test_a_late_message_is_taken_not_skipped() -> None:
    floors = Floors()
    floors.fresh("p", 1, 10)
    assert floors.fresh("p", 21, 5) == list(range(5))  # 11..20 not seen yet
    assert floors.as_dict() == {"p": [10, 21, 25]}
    assert floors.fresh("p", 11, 10) == list(range(10))  # the late one: taken
    assert floors.as_dict() == {"p": 25}  # the range joined the floor


def test_any_order_any_framing_takes_each_event_once() -> None:
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(2, 400), 30))
        frames = [(a, b - a) for a, b in zip([1, *cuts], [*cuts, 401], strict=True)]
        replays = [(a, min(rng.randint(1, 40), 401 - a)) for a in rng.sample(range(1, 380), 20)]
        deliveries = frames + replays
        rng.shuffle(deliveries)
        floors, taken = Floors(), []
        for first, count in deliveries:
            restored = Floors(floors.as_dict())  # a commit and restart between any two
            taken += [first + i for i in restored.fresh("p", first, count)]
            floors = restored
        assert sorted(taken) == list(range(1, 401))


def test_ownership_is_a_function_of_the_id_alone() -> None:
    owners = [owner_of("gen.0.e", n, 2) for n in range(1, 5000)]
    assert set(owners) == {0, 1}
    assert owners == [owner_of("gen.0.e", n, 2) for n in range(1, 5000)]
    assert {owner_of("gen.0.e", n, 1) for n in range(1, 100)} == {0}


def test_ids_continue_from_a_commit() -> None:
    ids = EventIds("work", 1, "abc")
    ids.header(5)
    ids.continue_as("work", 1, "e1f2a3", 40)
    header = ids.header(3)["Flowctl"]
    assert header.startswith("work.1.e1f2a3-41 3 ")
    assert (ids.epoch, ids.emitted) == ("e1f2a3", 43)
    assert message_range({"Flowctl": header}, None, "in", 3) == ("work.1.e1f2a3", 41)
    reply = "$JS.ACK.FLOWCTL_f.c.1.77.5.1700000000.0"
    assert message_range(None, reply, "in", 1) == ("#in", 77)  # no header: stream seq
