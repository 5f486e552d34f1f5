"""The shell socket serves what a client sent before it closed (master_side.shell_socket.port), on a real socket pair:
Ctrl-C while a command opens sends CLOSE and exits; when the master's reactor meets the closed socket on a write
(the open's answer) before it reads, Twisted ends the connection with the CLOSE unread, and the command was left
detached for its grace (seen beside two CPU-bound processes, about 1 time in 100)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from master_side.operators.terms import View
from master_side.sessions.session import MasterSession, State
from master_side.shell_socket.listener import DoorFactory
from master_side.shell_socket.port import Server
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import Op
from slaveshell.vocabulary.protocol import OpenRequest
from tests.recorded import ToWorker
from tests.test_operator_wire import ROOT, make_service


def serve(service: Any) -> tuple[Server, socket.socket]:
    """A shell-socket connection on a real socket pair: the master's `Server` (its reactor a fake one: the test
    turns it) and the client's end."""
    master_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_end.setblocking(False)
    protocol = DoorFactory(service, service.gate, service.clock).buildProtocol(None)
    transport = Server(master_end, protocol, None, None, 1, MemoryReactorClock())
    transport.who = ROOT  # type: ignore[attr-defined]  # the identity the test gate reads
    protocol.makeConnection(transport)
    return transport, client_end


def opening(service: Any, monkeypatch: Any) -> tuple[list[Any], defer.Deferred[View | None]]:
    """OperatorAPI.open as a session the worker has started (the sink bound as `open` binds it), fired when the
    test says: what the worker was told, and the Deferred to fire with the View."""
    told: list[Any] = []
    d: defer.Deferred[View | None] = defer.Deferred()

    def open_(who: Any, request: OpenRequest, sink: Any) -> defer.Deferred[View | None]:
        session = MasterSession(request, who, lambda s: None)
        owner = session.start(sink, ToWorker(lambda *a: told.append(a)))
        service.api._bind(session, owner, sink)
        return d.addCallback(lambda _: View(session, owner, lambda s, e: None))

    monkeypatch.setattr(service.api, "open", open_)
    return told, d


def test_a_close_sent_before_the_client_went_is_served_when_a_write_meets_the_close_first(tmp_path, monkeypatch):
    service = make_service(tmp_path)
    told, opened = opening(service, monkeypatch)
    transport, client = serve(service)
    request = OpenRequest(worker="w1", command="sleep 377").to_wire()
    client.sendall(framing.MAGIC + framing.control(Op.OPEN, id=1, request=request))
    assert transport.doRead() is None
    # The worker started it: the answer waits in the transport for the reactor's write.
    opened.callback(None)
    door = transport.protocol
    session = door.view.session
    # Ctrl-C: the client says CLOSE and exits before it has read the answer.
    client.sendall(framing.control(Op.CLOSE, id=2))
    client.close()
    # The reactor's turn that found the socket writable: its write meets the close (EPIPE) before any read.
    why = transport.doWrite()
    assert isinstance(why, error.ConnectionLost)
    transport.connectionLost(Failure(why))
    assert door.disconnected
    # The CLOSE was served: the command ends now, not after the detach grace.
    assert session.close_reason == "closed by root" and ("close",) in told
    assert session.state is State.DETACHED and session.closing_since is not None


def test_a_connection_the_master_drops_is_not_read_to_its_end(tmp_path, monkeypatch):
    service = make_service(tmp_path)
    transport, client = serve(service)
    client.sendall(framing.MAGIC)
    assert transport.doRead() is None
    door = transport.protocol
    seen: list[bytes] = []
    monkeypatch.setattr(door, "dataReceived", seen.append)
    client.sendall(framing.control(Op.SESSIONS, id=1))
    client.close()
    transport.connectionLost(Failure(error.ConnectionAborted()))  # the gate dropped it (abortConnection)
    assert seen == [] and door.disconnected


def test_a_failure_while_serving_the_last_input_still_ends_the_connection(tmp_path, monkeypatch):
    service = make_service(tmp_path)
    transport, client = serve(service)
    client.sendall(framing.MAGIC)
    assert transport.doRead() is None
    door = transport.protocol

    def broken(data: bytes) -> None:
        raise RuntimeError("a bug of the door's")

    monkeypatch.setattr(door, "dataReceived", broken)
    client.sendall(framing.control(Op.SESSIONS, id=1))
    client.close()
    transport.connectionLost(Failure(error.ConnectionLost()))
    assert door.disconnected and transport.disconnected and not hasattr(transport, "socket")
