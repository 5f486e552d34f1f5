"""Hostile peers at the remote_* boundaries (the start of the hardening work): whatever a rogue master sends
a worker, or a rogue worker or operator sends the master (or its socket), the answer is a plain error or an
ended session, never an exception into the broker, and the connection that carries a worker's builds stays up."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import formatEvent, globalLogPublisher
from twisted.spread import pb

from master_side.operators.terms import View
from master_side.sessions.registry import SessionRegistry
from master_side.sessions.session import MasterSession, Role
from master_side.sessions.worker_sink import WorkerSink
from master_side.shell_socket.door import WireDoor
from master_side.shell_socket.listener import Sniffer
from master_side.shell_socket.viewer_sink import WireViewerSink
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.plumbing import lean_calls
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import MAX_CHUNK, OpenRequest, ProtocolError

from .fakes import Bot, ProcessReactor, Sink, call, connected
from .recorded import ToViewer, ToWorker
from .test_operator_wire import connect, frames, make_service

ROOT = Identity(0, 0, 1, "root", frozenset())

# Anything jelly can carry, including the sizes around our own chunk limit.
plain = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=50) | st.binary(max_size=50)
    | st.sampled_from([b"x" * MAX_CHUNK, b"x" * (MAX_CHUNK + 1), "INT", "KILL", 0, -1, 2**40 + 1]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
session_methods = st.sampled_from(["input", "eof", "resize", "signal", "ack", "close", "nosuch", "detach",
                                   "deflate"])


@given(params=plain, calls=st.lists(st.tuples(session_methods, st.lists(plain, max_size=3)), max_size=8))
def test_a_rogue_master_cannot_break_the_worker(tmp_path, params, calls):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=2), reactor=reactor)
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    reply = call(pump, root, "slaveshell_open", Sink(), params)
    assert isinstance(reply, dict) and reply["ok"] is False or isinstance(params, dict)
    good = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1", pty=False).to_wire())
    handle = good["session"]
    for method, args in calls:
        call(pump, handle, method, *args)
        assert not worker_broker.disconnected
    # The worker still serves its master: a fresh well-formed call works.
    assert call(pump, root, "slaveshell_open", Sink(), {"bad": 1})["ok"] is False
    assert not worker_broker.disconnected


class Host(pb.Root):
    """Stands in for the master: hands a worker a WorkerSink for one session."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.ended: list[MasterSession] = []
        self.to_worker: list[tuple[Any, ...]] = []
        self.to_owner: list[tuple[Any, ...]] = []
        self.session = MasterSession(OpenRequest(worker="w1"), ROOT, self.ended.append)
        self.owner = self.session.start(ToViewer(lambda *a: self.to_owner.append(a)),
                                        ToWorker(lambda *a: self.to_worker.append(a)))

    def _error(self, session: MasterSession, error: ProtocolError) -> None:
        self.errors.append(str(error))
        session.abort(f"protocol error: {error}")

    def remote_sink(self) -> WorkerSink:
        return WorkerSink(self.session, self._error)


@given(calls=st.lists(st.tuples(st.sampled_from(["output", "output_z", "input_ack", "exit", "nosuch"]),
                                st.lists(plain, max_size=4)), max_size=10), deflated=st.booleans())
def test_a_rogue_worker_cannot_break_the_master(calls, deflated):
    host = Host()
    host.session.deflated_output = deflated
    root, pump, master_broker = connected(host)
    sink = call(pump, root, "sink")
    for method, args in calls:
        call(pump, sink, method, *args)
        assert not master_broker.disconnected
    # Whatever it sent, the session either runs or ended once, with the operator told.
    exits = [c for c in host.to_owner if c[0] == "exit"]
    assert len(exits) <= 1 and len(host.ended) == len(exits)


banana_items = st.recursive(
    st.integers(min_value=-(2**40), max_value=2**40) | st.binary(max_size=40) | st.floats(allow_nan=False)
    | st.sampled_from([b"x" * MAX_CHUNK, b"x" * (MAX_CHUNK + 1), 0, 1, 2]),
    lambda children: st.lists(children, max_size=4), max_leaves=8)


@given(calls=st.lists(st.tuples(st.sampled_from(["sink", 0, 7, b"root", -1]),
                                st.sampled_from([b"output", b"output_z", b"input_ack", b"exit", b"input", b"",
                                                 b"\xfe"]),
                                st.lists(banana_items, max_size=4)), max_size=10))
def test_a_rogue_worker_sending_lean_calls_cannot_break_the_master(calls):
    host = Host()
    root, pump, master_broker = connected(host)
    lean_calls.accept(master_broker)
    sink = call(pump, root, "sink")
    for luid, method, items in calls:
        root.broker.sendEncoded([b"slaveshell", sink.luid if luid == "sink" else luid, method, *items])
        pump.flush()
        assert not master_broker.disconnected
    exits = [c for c in host.to_owner if c[0] == "exit"]
    assert len(exits) <= 1 and len(host.ended) == len(exits)
    # A malformed lean call costs the session, as the same PB call would.
    assert bool(host.errors) == bool(host.ended)


def test_a_rogue_workers_flood_of_bad_calls_is_a_few_lines_of_the_masters_log():
    """2,000 lean calls to an object the master never exported, 2,000 malformed lean outputs and 2,000 bad PB
    outputs on its session's sink: one line per call before (6,000 lines; a flood would rotate the master's log
    history away), now the session ends once with its reason logged and the drops are counted."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    host = Host()
    registry = SessionRegistry(None, lambda: None, lambda: 0.0)  # type: ignore[arg-type]
    host._error = registry.peer_error  # type: ignore[method-assign]
    root, pump, master_broker = connected(host)
    lean_calls.accept(master_broker)
    sink = call(pump, root, "sink")
    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(2000):
            root.broker.sendEncoded([b"slaveshell", 999, b"output", 1, [], b"x"])
            root.broker.sendEncoded([b"slaveshell", sink.luid, b"output", b"not a stream"])
            sink.callRemote("output", 9, b"x").addErrback(lambda f: None)
            pump.flush()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not master_broker.disconnected and len(host.ended) == 1
    errors = [line for line in lines if line.startswith("slaveshell session")]
    assert errors == [f"slaveshell session {host.session.id}: protocol error: output: expected stream, "
                      "[nbytes, hidden, ...], data"]
    drops = [line for line in lines if "takes none" in line]
    assert len(drops) == 11 and drops[-1].startswith("slaveshell: 1024 lean call(s) to an object that takes none")
    assert len(lines) < 20


# What a framed client can put in a session message's fields: any JSON value, around the checks' bounds.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
    | st.sampled_from(["INT", "KILL", "sigint", 0, -1, 1, 2**40 + 1, MAX_CHUNK, MAX_CHUNK + 1]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
# The session messages of the framed door and their fields (any other op breaks the framing, which costs the
# connection: tests/test_operator_wire.py).
SESSION_FIELDS = {Op.RESIZE: ("cols", "rows"), Op.SIGNAL: ("name",), Op.ACK: ("n",), Op.EOF: (), Op.CLOSE: (),
                  Op.DETACH: (), Op.STDOUT_CLOSED: ()}


@settings(deadline=None)
@given(role=st.sampled_from(["owner", "join", "watch"]), pty=st.booleans(),
       calls=st.lists(st.one_of(st.tuples(st.just("input"), st.binary(max_size=50) | st.just(b"x" * MAX_CHUNK)),
                                st.tuples(st.sampled_from(list(SESSION_FIELDS)),
                                          st.lists(json_values, max_size=3))), max_size=10))
def test_a_rogue_operator_cannot_break_the_master_and_a_watcher_never_types(tmp_path_factory, role, pty, calls):
    door, transport = connect(make_service(tmp_path_factory.mktemp("rogue")))
    ended: list[MasterSession] = []
    to_worker: list[tuple[Any, ...]] = []
    session = MasterSession(OpenRequest(worker="w1", pty=pty), ROOT, ended.append)
    session.stdout_closes = True  # a worker that takes stdout_closed
    sink = WireViewerSink(door)
    owner = session.start(sink if role == "owner" else ToViewer(), ToWorker(lambda *a: to_worker.append(a)))
    viewer = owner if role == "owner" else session.add_viewer(ROOT, Role(role), sink)
    door.view = View(session, viewer, lambda s, error: s.abort(f"protocol error: {error}"))
    for call_id, (what, values) in enumerate(calls):
        if what == "input":
            door.dataReceived(framing.encode(FrameType.INPUT, values))
        else:
            fields = dict(zip(SESSION_FIELDS[what], values, strict=False))  # extra values: not sent
            door.dataReceived(framing.control(what, **({"id": call_id} if what in framing.CALLS else {}), **fields))
        assert not transport.disconnecting
    # Each call was answered (nothing raised into the connection's handling).
    answered = [f.get("id") for f in frames(transport) if isinstance(f, framing.Control) and f.op is Op.ANSWER]
    assert answered == [i for i, (what, _) in enumerate(calls) if what in framing.CALLS]
    if role == "watch":
        assert not [c for c in to_worker if c[0] in ("input", "signal", "eof", "stdout_closed")]
    assert len([c for c in to_worker if c[0] == "stdout_closed"]) <= 1  # the worker is told once at most
    if role != "owner":  # only the owner may end the session; others can only leave it
        assert ended == []


@settings(max_examples=150, deadline=None)
@given(first=st.lists(st.binary(max_size=30) | st.sampled_from([b"\x02\x80\x02\x82pb\x04\x82none", b"SLAVESHELL/",
                                                                 b"SLAVESHELL/1\n", b"GET / HTTP/1.1\r\n"]),
                      max_size=4),
       silent=st.booleans())
def test_whatever_a_client_sends_first_the_socket_refuses_it_or_hands_it_to_the_door(tmp_path_factory, first,
                                                                                         silent):
    """PB (the operator-side PB door is gone), HTTP, garbage, the magic in pieces, silence: the sniffer never
    raises; a connection ends up either refused with one line and the close, or served by the framed door."""
    service = make_service(tmp_path_factory.mktemp("first"))
    protocol, transport = connect(service, first=b"")
    for piece in first:
        transport.protocol.dataReceived(piece)
    if silent:
        service.clock.advance(Sniffer.SILENCE)
    refused = transport.value().startswith(framing.REFUSED_PREFIX)
    if refused:
        assert transport.value().count(b"\n") == 1 and transport.disconnecting
    elif isinstance(transport.protocol, WireDoor):
        assert transport.value().startswith(framing.MAGIC)
    else:  # still within its first bytes: a prefix of the magic, not yet silent for long
        assert isinstance(transport.protocol, Sniffer) and not silent and not transport.disconnecting


# The operator's client against a rogue master:
# tests/test_hop_client.py::test_a_rogue_master_cannot_crash_the_operators_client
