"""Waiting for a running build to be held (`--build` a little early): master_side.hold.Holds.wait_for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from buildbot.process.buildstep import get_factory_from_step_or_factory
from twisted.internet import defer, task

from master_side import hold as H
from master_side.hold import Hold, HoldForShell, Holds, NotHeld, hold_ahead


def botmaster(*builds):
    return SimpleNamespace(builders={"b": SimpleNamespace(building=list(builds))})


def running_build(build_id, steps):
    return SimpleNamespace(buildid=build_id, finished=False, currentStep=None, steps=list(steps))


@pytest.fixture
def holds():
    # The service's holds (master_side.hold.Holds): HOLDS and WAITING before they moved off the module.
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


def test_the_clients_waiting_line_is_checked_and_shown_once_without_controls():
    import os
    import signal

    from twisted.internet.testing import MemoryReactorClock
    from twisted.spread import pb

    from slaveshell.client import ClientSink, ShellClient
    from slaveshell.protocol import OpenRequest

    from .fakes import call, connected

    read_end, write_end = os.pipe()
    client = ShellClient(MemoryReactorClock(), OpenRequest(worker="w1", build=3), interactive=True,
                         stderr_fd=write_end)
    written = []

    class Writer:
        def write(self, data):
            written.append(data)

        def unregisterProducer(self):
            pass

        def loseConnection(self):
            client.childConnectionLost("err", None)

    client._writers["err"] = Writer()

    class Master(pb.Root):
        def remote_sink(self):
            return ClientSink(client)

    root, pump, client_broker = connected(Master())
    sink = call(pump, root, "sink")
    before = signal.getsignal(signal.SIGINT)
    try:
        for bad in (None, 3, b"bytes", ["x"]):
            call(pump, sink, "waiting", bad)
            assert not client_broker.disconnected
        call(pump, sink, "waiting", "build 3 is still running\x1b[2J\x07; waiting")
        assert written == [b"build 3 is still running[2J; waiting\r\n"]
        client.childDataReceived("in", b"ls\x03")  # Ctrl-C in a raw terminal: stop waiting
        assert client.status is not None and client.status.reason == "stopped waiting for build 3 to be held"
        assert client.status.cli_status() == 255
    finally:
        if client._stdin is not None:
            client._stdin.stopReading()
        os.close(read_end)
        os.close(write_end)
        assert signal.getsignal(signal.SIGINT) == before
