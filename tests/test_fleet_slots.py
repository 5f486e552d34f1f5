"""The places of fleet runs' sessions (master_side.fleet.run.Slots): bounded in total and per operator, given in the
order asked, and a waiting start dropped when its run is interrupted."""

from __future__ import annotations

from master_side.fleet.run import Slots

ALICE, BOB = ("alice", 1000), ("bob", 1001)


def test_places_are_bounded_in_total_and_per_operator_and_given_back_in_order() -> None:
    slots = Slots(total=3, per_operator=2)
    started: list[str] = []
    for name, key in (("a1", ALICE), ("a2", ALICE), ("a3", ALICE), ("b1", BOB), ("b2", BOB)):
        slots.take(key, lambda name=name: started.append(name))
    assert started == ["a1", "a2"]  # a3 waits for alice's places; b1 waits behind it (in order)
    slots.give_back(ALICE)
    assert started == ["a1", "a2", "a3", "b1"] and slots.in_use() == 3  # b2 waits for the total
    slots.give_back(BOB)
    assert started[-1] == "b2" and slots.used == {ALICE: 2, BOB: 1}


def test_a_waiting_start_is_dropped_and_never_runs() -> None:
    slots = Slots(total=1, per_operator=1)
    started: list[str] = []
    slots.take(ALICE, lambda: started.append("first"))
    second = lambda: started.append("second")  # noqa: E731
    slots.take(ALICE, second)
    assert slots.drop(second) and not slots.drop(second)
    slots.give_back(ALICE)
    assert started == ["first"] and slots.in_use() == 0
