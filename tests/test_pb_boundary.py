"""The remote_* boundaries over real PB brokers in memory: bad calls get plain errors and the connection
(on the worker side: the worker's link to its master, which carries its builds) stays up."""

import pytest
from twisted.spread import pb
from twisted.test import iosim

import slave_side
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.protocol import OpenRequest

from .fakes import ProcessReactor


class Sink(pb.Referenceable):
    def __init__(self):
        self.calls = []

    def remote_output(self, stream, data):
        self.calls.append(("output", stream, data))

    def remote_input_ack(self, n, hidden):
        self.calls.append(("input_ack", n, hidden))

    def remote_exit(self, code, sig, reason):
        self.calls.append(("exit", code, sig, reason))


class Bot(pb.Root):
    """Stands in for the worker's BotPb: the same remote method install() adds."""

    def __init__(self, server, basedir):
        self.server = server
        self.basedir = basedir

    def remote_slaveshell_open(self, sink, params):
        return self.server.open(self.basedir, sink, params)


@pytest.fixture
def wired(tmp_path):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=2), reactor=reactor)
    server_factory = pb.PBServerFactory(Bot(server, str(tmp_path)))
    client_factory = pb.PBClientFactory()
    server_broker = server_factory.buildProtocol(None)
    client_broker = client_factory.buildProtocol(None)
    pump = iosim.connect(server_broker, iosim.makeFakeServer(server_broker),
                         client_broker, iosim.makeFakeClient(client_broker))
    roots = []
    client_factory.getRootObject().addCallback(roots.append)
    pump.flush()
    return roots[0], pump, server, reactor, client_broker


def call(pump, ref, method, *args):
    results = []
    ref.callRemote(method, *args).addBoth(results.append)
    pump.flush()
    return results[0]


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
    for method, args in [("input", ("text",)), ("input", (b"x" * (64 * 1024 + 1),)), ("resize", (0, 0)),
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
