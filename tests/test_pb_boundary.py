"""The remote_* boundaries over real PB brokers in memory: bad calls get plain errors and the connection
(on the worker side: the worker's link to its master, which carries its builds) stays up."""

import pytest
from twisted.spread import pb

import slave_side
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.vocabulary.protocol import OpenRequest

from .fakes import Bot, ProcessReactor, Sink, call, connected


@pytest.fixture
def wired(tmp_path):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=2), reactor=reactor)
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    return root, pump, server, reactor, worker_broker


def test_open_refuses_bad_requests_with_a_message(wired):
    root, pump, server, reactor, broker = wired
    reply = call(pump, root, "slaveshell_open", Sink(), {"worker": "w1", "version": 1, "cols": "wide"})
    assert reply == {"ok": False, "error": "bad request: cols must be an integer, not str"}
    reply = call(pump, root, "slaveshell_open", "not a sink", OpenRequest(worker="w1").to_wire())
    assert reply["ok"] is False and "remote reference" in reply["error"]
    assert not broker.disconnected


def test_sessions_are_limited_by_the_worker_owner(wired):
    root, pump, server, reactor, broker = wired
    for _ in range(2):
        assert call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1").to_wire())["ok"]
    reply = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1").to_wire())
    assert reply == {"ok": False, "error": "the worker allows at most 2 shell sessions at once"}


def test_bad_session_calls_get_plain_errors_and_the_link_stays(wired):
    root, pump, server, reactor, broker = wired
    sink = Sink()
    reply = call(pump, root, "slaveshell_open", sink, OpenRequest(worker="w1", pty=False).to_wire())
    handle = reply["session"]
    # Without a terminal, input messages of up to 512 KiB (slaveshell.vocabulary.flow.BULK_CHUNK) are taken.
    for method, args in [("input", ("text",)), ("input", (b"x" * (512 * 1024 + 1),)), ("resize", (0, 0)),
                         ("signal", ("SEGV",)), ("ack", (10**6,))]:
        result = call(pump, handle, method, *args)
        assert result.check(pb.RemoteError) or result.check(pb.Error), (method, result)
    assert not broker.disconnected
    call(pump, handle, "input", b"fine")
    assert reactor.processes[0].written == [b"fine"]
    assert ("input_ack", 4, False) in sink.calls


def test_output_reaches_the_master_sink(wired):
    root, pump, server, reactor, broker = wired
    sink = Sink()
    call(pump, root, "slaveshell_open", sink, OpenRequest(worker="w1", pty=False).to_wire())
    proc = reactor.processes[0]
    proc.proto.childDataReceived(1, b"\xe2\x82")
    reactor.advance(0)
    proc.proto.childDataReceived(1, b"\xac")
    reactor.advance(0)
    pump.flush()
    assert b"".join(c[2] for c in sink.calls if c[0] == "output") == "€".encode()


def test_install_registers_the_opt_in_and_uninstall_removes_it():
    from buildbot_worker.commands import registry
    from buildbot_worker.pb import BotPb

    try:
        slave_side.install(max_sessions=3)
        assert "slaveshell" in registry.getAllCommandNames()
        assert hasattr(BotPb, "remote_slaveshell_open")
    finally:
        slave_side.uninstall()
    assert "slaveshell" not in registry.getAllCommandNames()
    assert not hasattr(BotPb, "remote_slaveshell_open")
    assert slave_side.install(enabled=False) is None
    assert "slaveshell" not in registry.getAllCommandNames()


def test_the_worker_owner_can_refuse_operators_whatever_the_master_allows(tmp_path):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", allowed_users=frozenset({"alice"})), reactor=reactor)

    class FakeSink(pb.RemoteReference):
        def __init__(self):
            self.doRefCount = False  # never registered with a broker: nothing to release

        def notifyOnDisconnect(self, callback):
            pass

    assert server.open(str(tmp_path), FakeSink(), OpenRequest(worker="w1", operator="alice").to_wire())["ok"]
    reply = server.open(str(tmp_path), FakeSink(), OpenRequest(worker="w1", operator="mallory").to_wire())
    assert reply == {"ok": False, "error": "this worker's owner does not allow mallory to open shells here"}
    reply = server.open(str(tmp_path), FakeSink(), OpenRequest(worker="w1").to_wire())
    assert reply["ok"] is False


def test_a_window_grant_is_checked_and_held_to_the_owners_max(wired):
    root, pump, server, reactor, broker = wired
    reply = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1", pty=True).to_wire())
    assert reply["window"] is True  # the master learns the session tunes its window and takes a grant
    handle = reply["session"]
    for args in [("big",), (0,), (True,), (2**41,)]:
        result = call(pump, handle, "window", *args)
        assert result.check(pb.RemoteError) or result.check(pb.Error), args
    assert not broker.disconnected
    call(pump, handle, "window", 2**40)  # as large as the wire allows: the owner's max_window holds
    [session] = server.sessions.values()
    assert session.window.cap == WorkerOptions().max_window
