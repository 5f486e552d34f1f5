"""Waiting for a running build to be held (`--build` a little early): master_side.holds.step.Holds.wait_for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from buildbot.process.buildstep import get_factory_from_step_or_factory
from twisted.internet import defer, task

from master_side.holds import step as H
from master_side.holds.step import Hold, HoldForShell, Holds, NotHeld, hold_ahead


def botmaster(*builds):
    return SimpleNamespace(builders={"b": SimpleNamespace(building=list(builds))})


def running_build(build_id, steps):
    return SimpleNamespace(buildid=build_id, finished=False, currentStep=None, steps=list(steps))


@pytest.fixture
def holds():
    # The service's holds (master_side.holds.step.Holds): HOLDS and WAITING before they moved off the module.
    return Holds()


def result(d):
    out = []
    d.addBoth(out.append)
    return out


def test_hold_ahead_looks_at_the_steps_still_to_run_and_the_factories_before_them():
    step = HoldForShell()
    bm = botmaster(running_build(7, [object(), step]), running_build(8, [object()]),
                   SimpleNamespace(buildid=9, finished=False, currentStep=None,
                                   stepFactories=[get_factory_from_step_or_factory(HoldForShell())]))
    assert hold_ahead(bm, 7) and not hold_ahead(bm, 8) and hold_ahead(bm, 9) and not hold_ahead(bm, 10)
    bm.builders["b"].building[0].finished = True
    assert not hold_ahead(bm, 7)


def test_a_waiter_gets_the_hold_once_registered_and_leaves_nothing_behind(holds):
    clock = task.Clock()
    bm = botmaster(running_build(7, [HoldForShell()]))
    got = result(holds.wait_for(bm, 7, 600, clock))
    assert got == [] and len(holds.waiting[7]) == 1
    hold = Hold(7, "b", 1, "w1", "b/build")
    holds.held[7] = hold
    holds.tell_waiters(7, hold)
    assert got == [hold] and holds.waiting == {} and clock.getDelayedCalls() == []


def test_a_build_that_goes_on_without_a_hold_or_takes_too_long_is_refused(holds):
    clock = task.Clock()
    build = running_build(7, [HoldForShell()])
    bm = botmaster(build)
    gone = result(holds.wait_for(bm, 7, 600, clock))
    late = result(holds.wait_for(botmaster(running_build(8, [HoldForShell()])), 8, 5, clock))
    bm.builders["b"].building.clear()  # finished (or stopped, or its worker lost) without holding
    clock.advance(H.WAIT_POLL)
    assert isinstance(gone[0].value, NotHeld) and "without being held" in str(gone[0].value)
    clock.advance(5)
    assert isinstance(late[0].value, NotHeld) and str(late[0].value) == "build 8 was not held within 5 s"
    assert holds.waiting == {} and clock.getDelayedCalls() == []


def test_cancelling_a_wait_the_operator_gave_up_leaves_nothing_behind(holds):
    clock = task.Clock()
    d = holds.wait_for(botmaster(running_build(7, [HoldForShell()])), 7, 600, clock)
    got = result(d)
    d.cancel()
    assert got[0].check(defer.CancelledError) and holds.waiting == {} and clock.getDelayedCalls() == []


# The client's side of the waiting line: tests/test_hop_client.py::
# test_the_waiting_line_is_checked_and_shown_once_without_controls_and_ctrl_c_stops_waiting
