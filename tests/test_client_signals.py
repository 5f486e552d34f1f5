"""What buildbot-shell does with SIGINT, SIGTERM and SIGHUP of its own, and with `~^Z`: driven with a fake session
and a memory reactor clock."""

import signal

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from slaveshell.client import DUPLICATE_WITHIN, GIVE_UP_WITHIN, SIGNAL_GRACE, ShellClient
from slaveshell.protocol import ExitStatus, OpenRequest, Role


class FakeSession:
    def __init__(self):
        self.calls = []

    def callRemote(self, method, *args, **kw):
        self.calls.append((method, *args))
        return defer.succeed(None)


def make(interactive=False, role="owner", suspend=None):
    client = ShellClient(MemoryReactorClock(), OpenRequest(worker="w1", pty=interactive), interactive=interactive,
                         suspend=suspend)
    client.session = FakeSession()
    client.session_id = "s1"
    client.role = Role(role)
    return client


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGINT, "INT"), (signal.SIGTERM, "TERM"),
                                              (signal.SIGHUP, "HUP")])
def test_command_mode_forwards_the_signal_and_waits_for_the_remote_status(signum, name):
    client = make()
    client.signalled(signum)
    assert client.session.calls == [("signal", name)]
    assert client.status is None
    client.finish(ExitStatus(signal=signum))
    assert client.status.cli_status() == 128 + signum
    client.reactor.advance(SIGNAL_GRACE * 2)  # the grace timer is gone with the session
    assert client.session.calls == [("signal", name)]


def test_a_second_signal_within_a_second_gives_up_at_once():
    client = make()
    client.signalled(signal.SIGINT)
    client.reactor.advance(GIVE_UP_WITHIN / 2)
    client.signalled(signal.SIGINT)
    assert client.session.calls == [("signal", "INT"), ("close",)]
    assert client.done.called
    assert client.status.cli_status() == 255
    assert client.status.reason == "second SIGINT: closed the session without waiting for the remote command"


def test_the_same_signal_delivered_twice_at_once_counts_once():
    # timeout(1) sends SIGTERM to its child and then to the child's process group.
    client = make()
    client.signalled(signal.SIGTERM)
    client.reactor.advance(DUPLICATE_WITHIN / 10)
    client.signalled(signal.SIGTERM)
    assert client.session.calls == [("signal", "TERM")]
    assert client.status is None


def test_a_later_second_sigint_is_forwarded_again():
    client = make()
    client.signalled(signal.SIGINT)
    client.reactor.advance(GIVE_UP_WITHIN * 2)
    client.signalled(signal.SIGINT)
    assert client.session.calls == [("signal", "INT"), ("signal", "INT")]
    assert client.status is None


def test_sigterm_ignored_remotely_closes_the_session_after_the_grace():
    client = make()
    client.signalled(signal.SIGTERM)
    client.reactor.advance(SIGNAL_GRACE + 0.1)
    assert client.session.calls == [("signal", "TERM"), ("close",)]
    assert client.status.cli_status() == 255 and "within 5 s of SIGTERM" in client.status.reason


def test_pty_mode_sigterm_ends_the_session_and_sighup_detaches_it():
    term = make(interactive=True)
    term.signalled(signal.SIGTERM)
    assert term.session.calls == [("close",)]
    assert term.farewell == "Connection to w1 closed (SIGTERM)."
    hup = make(interactive=True)
    hup.signalled(signal.SIGHUP)
    assert hup.session.calls == [("detach",)]
    assert "slaveshell attach s1" in hup.farewell
    # SIGINT by kill(1): what Ctrl-C does there, the remote foreground job's.
    intr = make(interactive=True)
    intr.signalled(signal.SIGINT)
    assert intr.session.calls == [("signal", "INT")]


def test_a_watcher_leaves_instead_of_signalling_someone_elses_session():
    client = make(role="watch")
    client.signalled(signal.SIGINT)
    assert client.session.calls == [("close",)]
    assert client.farewell == "Left session s1 on w1." and client.status.cli_status() == 130


def test_a_signal_before_the_session_is_open_ends_the_client():
    client = make()
    client.session = None
    client.signalled(signal.SIGTERM)
    assert client.status.cli_status() == 255 and "before the session opened" in client.status.reason


def test_tilde_ctrl_z_suspends_then_sends_the_window_size_again(monkeypatch):
    stops = []
    client = make(interactive=True, suspend=lambda: stops.append("stopped"))
    monkeypatch.setattr("slaveshell.client.window_size", lambda fd: (100, 30))
    client._size = (100, 30)  # unchanged: sent anyway, the remote may have missed a change while we were stopped
    client.childDataReceived("in", b"\r~\x1a")
    assert stops == ["stopped"]
    assert client.session.calls == [("input", b"\r"), ("resize", 100, 30)]
