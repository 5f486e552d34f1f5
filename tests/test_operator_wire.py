"""Issue 14, item 1, at unit level: the framing (slaveshell.vocabulary.framing) and the master's framed door
(master_side.shell_socket.door) with Twisted's in-memory transports: one socket for both doors, the gate's bounds,
and hostile clients (oversized frame, unknown type, bad JSON, unknown op, wrong direction, slowloris, a flood
without reading)."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from master_side.audit.refusals import RefusalAudit
from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer, Party
from master_side.operators.bounds import ResourceBounds
from master_side.operators.gate import ConnectionGate
from master_side.operators.terms import View
from master_side.sessions.session import MasterSession, Role
from master_side.shell_socket.door import WireDoor
from master_side.shell_socket.listener import DoorFactory, Sniffer
from master_side.shell_socket.viewer_sink import WireViewerSink
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.copying import UP, TransferRequest
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest
from tests.fakes import offline_service
from tests.recorded import ToViewer, ToWorker
from tests.test_cp import FakeRef
from tests.test_limits import ALICE, Peer, Refusals

ROOT = Identity(0, 0, 0, "root", frozenset())


@pytest.fixture
def service(tmp_path: Any) -> Any:
    return make_service(tmp_path)


def make_service(tmp_path: Any) -> Any:
    svc = offline_service(str(tmp_path))
    svc.clock = MemoryReactorClock()
    svc.audited = []
    refusals = Refusals(svc.audited)
    audit = RefusalAudit(lambda: refusals, svc.clock.seconds)
    svc.gate = ConnectionGate(lambda transport: transport.who, audit, svc.clock.seconds,
                              ResourceBounds(connections_per_uid=3, connection_buffer=1000))
    svc.api.gate = svc.gate
    return svc


def connect(service: Any, who: Identity = ROOT, first: bytes = framing.MAGIC) -> tuple[Any, Peer]:
    """A connection on the shell socket; `first` is what the client sends first. Returns its protocol (the
    door once the magic is in) and the transport."""
    broker = DoorFactory(service, service.gate, service.clock).buildProtocol(None)
    transport = Peer(who)
    transport.protocol = broker
    broker.makeConnection(transport)
    broker.dataReceived(first)
    return transport.protocol, transport


def frames(transport: Peer) -> list[Any]:
    """What the master sent, after its magic, as (type, payload or Control)."""
    data = transport.value()
    assert framing.MAGIC in data
    out = []
    for frame in framing.Decoder().feed(data[data.index(framing.MAGIC) + len(framing.MAGIC):]):
        out.append(framing.parse_control(frame.payload) if frame.type is FrameType.CONTROL else frame)
    return out


def test_the_framing_round_trips_and_decodes_byte_by_byte():
    stream = framing.control(Op.OPEN, id=1, request={"worker": "w1"}) + framing.encode(FrameType.INPUT, b"\x00\xffab")
    decoder = framing.Decoder()
    got = [f for i in range(len(stream)) for f in decoder.feed(stream[i:i + 1])]
    assert [f.type for f in got] == [FrameType.CONTROL, FrameType.INPUT]
    assert framing.parse_control(got[0].payload) == framing.Control(Op.OPEN, {"id": 1, "request": {"worker": "w1"}})
    assert got[1].payload == b"\x00\xffab" and decoder.pending == 0


@pytest.mark.parametrize(("data", "error"), [
    (struct.pack("!BI", FrameType.INPUT, framing.MAX_CHUNK + 1), "INPUT frame of 65537 bytes"),
    (struct.pack("!BI", FrameType.CONTROL, framing.MAX_CONTROL + 1), "CONTROL frame of 262145 bytes"),
    (struct.pack("!BI", 99, 0), "unknown type 99"),
    (struct.pack("!BI", FrameType.STDOUT, 1) + b"x", "STDOUT frame in the wrong direction"),
])
def test_the_decoder_refuses_a_bad_header_before_the_payload(data, error):
    decoder = framing.Decoder(refused=frozenset({FrameType.STDOUT}))
    with pytest.raises(framing.WireError, match=error):
        decoder.feed(data)
    assert decoder.broken and decoder.feed(b"more") == []


REFUSAL = (b"slaveshell: refused: this master serves slaveshell's framed protocol only, and this client does not "
           b"speak it (a slaveshell older than the master? upgrade it)\n")


def test_a_client_that_does_not_speak_the_framing_gets_one_line_and_the_close_and_is_audited(service):
    pb_side, pb_transport = connect(service, first=b"\x02\x82pb")  # a client speaking PB (Banana) first
    assert pb_transport.value() == REFUSAL and pb_transport.disconnecting
    silent, silent_transport = connect(service, first=b"")  # a PB client waits for the server to speak
    assert isinstance(silent, Sniffer) and not silent_transport.disconnecting
    service.clock.advance(Sniffer.SILENCE)
    assert silent_transport.value() == REFUSAL and silent_transport.disconnecting
    # Audited (the second within the audit interval is counted, and reported with the next).
    assert [a[2] for a in service.audited] == [
        "connection refused (not slaveshell's framed protocol): it began with b'\\x02\\x82pb'"]
    for protocol in (pb_side, silent):
        protocol.connectionLost(None)
    door, transport = connect(service)
    assert isinstance(door, WireDoor) and door.admitted
    assert service.gate.count() == 1  # counted once
    service.clock.advance(Sniffer.SILENCE)  # the sniffer's timer went with the hand-over
    assert not transport.disconnecting
    door.dataReceived(framing.control(Op.SESSIONS, id=7))
    assert frames(transport) == [framing.Control(Op.ANSWER, {"id": 7, "ok": True, "rows": []})]


def test_a_magic_in_pieces_still_reaches_the_door(service):
    broker, transport = connect(service, first=framing.MAGIC[:3])
    assert isinstance(transport.protocol, Sniffer)
    broker.dataReceived(framing.MAGIC[3:] + framing.control(Op.WORKERS, id=1))
    assert isinstance(transport.protocol, WireDoor)
    assert frames(transport) == [framing.Control(Op.ANSWER, {"id": 1, "ok": True, "rows": []})]


def test_operator_errors_are_answers_and_session_messages_without_a_session_are_refused(service):
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.KILL, id=1, session="nosuch") + framing.control(Op.ATTACH, id=2, session=5,
                                                                                    mode="x")
                      + framing.encode(FrameType.INPUT, b"ls\r") + framing.control(Op.RESIZE, cols=1, rows=1))
    assert frames(transport) == [
        framing.Control(Op.ANSWER, {"id": 1, "ok": False, "error": "no live session nosuch",
                                    "kind": "not found"}),
        framing.Control(Op.ANSWER, {"id": 2, "ok": False,
                                 "error": "bad request: attach needs a sink, a session id and a mode",
                                 "kind": "bad request"}),
        framing.Control(Op.REFUSED, {"method": "input", "error": "no session on this connection"}),
        framing.Control(Op.REFUSED, {"method": "resize", "error": "no session on this connection"}),
    ]
    assert not transport.disconnecting


def viewing(service: Any, role: Role) -> tuple[Any, Peer, MasterSession, list[Any], list[Any]]:
    """A framed connection viewing a session in `role` (the door's own end as the viewer's sink): the door, its
    transport, the session, what the worker was told and the protocol errors reported for the session."""
    door, transport = connect(service)
    to_worker: list[Any] = []
    errors: list[Any] = []
    session = MasterSession(OpenRequest(worker="w1"), ROOT, lambda s: None)
    sink = WireViewerSink(door)
    owner = session.start(sink if role is Role.OWNER else ToViewer(), ToWorker(lambda *a: to_worker.append(a)))
    viewer = owner if role is Role.OWNER else session.add_viewer(ROOT, role, sink)
    door.view = View(session, viewer, lambda s, e: errors.append(str(e)))
    return door, transport, session, to_worker, errors


BAD_VALUES = [
    (framing.control(Op.RESIZE, cols=0, rows=24), "resize", "cols must be between 1 and 10000, not 0"),
    (framing.control(Op.RESIZE, cols="80", rows=24), "resize", "cols must be an integer, not str"),
    (framing.control(Op.SIGNAL, name="SEGV"), "signal", "unknown signal 'SEGV'"),
    (framing.control(Op.SIGNAL, name=9), "signal", "signal must be a string, not int"),
    (framing.control(Op.ACK, n=-1), "ack", "ack must be between 0 and 1099511627776, not -1"),
    (framing.control(Op.ACK, n="5"), "ack", "ack must be an integer, not str"),
    (framing.control(Op.ACK), "ack", "ack must be an integer, not NoneType"),
]


@pytest.mark.parametrize(("frame", "method", "error"), BAD_VALUES)
def test_bad_values_from_a_viewer_are_refused_at_the_doors_edge(service, frame, method, error):
    """Decoded once, at the door: a bad value never reaches the session; the owner's costs its session (the error
    reported), a joiner's its view; the connection stays."""
    door, transport, session, to_worker, errors = viewing(service, Role.OWNER)
    door.dataReceived(frame)
    [refused] = frames(transport)
    assert refused.op is Op.REFUSED and refused.get("method") == method and error in refused.get("error")
    assert errors == [refused.get("error")] and to_worker == [] and not transport.disconnecting
    door, transport, session, to_worker, errors = viewing(service, Role.JOIN)
    door.dataReceived(frame)
    assert [f.op for f in frames(transport)] == [Op.REFUSED]
    assert errors == [] and [v.role for v in session.viewers] == [Role.OWNER] and not transport.disconnecting


def test_a_viewers_messages_reach_the_worker_typed_and_a_watchers_typing_is_refused_its_view_kept(service):
    door, transport, session, to_worker, errors = viewing(service, Role.OWNER)
    door.dataReceived(framing.encode(FrameType.INPUT, b"ls\r") + framing.control(Op.RESIZE, cols=100, rows=30)
                      + framing.control(Op.SIGNAL, name="sigint") + framing.control(Op.EOF))
    assert to_worker == [("input", b"ls\r"), ("resize", 100, 30), ("signal", "INT"), ("eof",)]
    assert frames(transport) == [] and errors == []
    door, transport, session, to_worker, errors = viewing(service, Role.WATCH)
    door.dataReceived(framing.encode(FrameType.INPUT, b"rm -rf /\r") + framing.control(Op.SIGNAL, name="INT"))
    assert frames(transport) == [
        framing.Control(Op.REFUSED, {"method": "input", "error": "watchers cannot type: this view is read-only"}),
        framing.Control(Op.REFUSED, {"method": "signal",
                                     "error": "watchers cannot send signals: this view is read-only"})]
    assert to_worker == [] and errors == [] and len(session.viewers) == 2


def test_a_viewers_stdout_closed_reaches_the_worker_when_it_takes_it_and_closes_the_session_otherwise(service):
    door, transport, session, to_worker, errors = viewing(service, Role.OWNER)
    session.request = OpenRequest(worker="w1", pty=False)
    session.stdout_closes = True
    door.dataReceived(framing.control(Op.STDOUT_CLOSED))
    assert to_worker == [("stdout_closed",)] and frames(transport) == [] and errors == []
    door, transport, session, to_worker, errors = viewing(service, Role.OWNER)  # a terminal: no half-close
    door.dataReceived(framing.control(Op.STDOUT_CLOSED))
    assert to_worker == [("close",)] and frames(transport) == [] and errors == []


def test_a_bad_open_request_is_a_bad_request_answer(service):
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.OPEN, id=3, request={"worker": "w1", "cols": "wide"}))
    [answer] = frames(transport)
    assert answer.get("ok") is False and answer.get("error").startswith("bad request: ")


@pytest.mark.parametrize(("data", "why"), [
    (struct.pack("!BI", FrameType.CONTROL, 10**9), "a CONTROL frame of 1000000000 bytes (at most 262144)"),
    (struct.pack("!BI", 200, 3) + b"abc", "a frame of unknown type 200"),
    (framing.encode(FrameType.CONTROL, b"{not json"), "a control message that is not JSON (JSONDecodeError)"),
    (framing.encode(FrameType.CONTROL, b"[1, 2]"), "a control message must be a JSON object"),
    (framing.encode(FrameType.CONTROL, b'{"op": "rm -rf"}'), "unknown control message 'rm -rf'"),
    (framing.encode(FrameType.CONTROL, json.dumps({"op": "exit", "code": 0}).encode()), "unknown control message"),
    (framing.encode(FrameType.STDOUT, b"x"), "a STDOUT frame in the wrong direction"),
    (framing.control(Op.OPEN, request={}), "open: a call needs an id"),
    (framing.control(Op.KILL, id=-1, session="x"), "kill: the id must be an integer"),
])
def test_a_broken_frame_costs_the_connection_with_an_error_frame_and_an_audit(service, data, why):
    door, transport = connect(service)
    door.dataReceived(data + framing.control(Op.SESSIONS, id=9))  # nothing after the break is served
    [error] = frames(transport)
    assert error.op is Op.ERROR and error.get("text").startswith(f"protocol error: {why}")
    assert transport.disconnecting
    assert service.audited == [("dropped", "root", f"connection dropped: {error.get('text')}")]


def test_slowloris_partial_frames_are_bounded_per_uid_and_hold_at_most_one_frame(service):
    doors = []
    for _ in range(3):  # the gate's bound per uid in this fixture
        door, transport = connect(service, who=ALICE, first=framing.MAGIC + struct.pack("!BI", FrameType.CONTROL,
                                                                                      framing.MAX_CONTROL))
        door.dataReceived(b"{" * 1000)  # and never the rest
        doors.append(door)
        assert door.decoder.pending <= framing.HEADER.size + framing.MAX_CONTROL
    _, refused = connect(service, who=ALICE)
    assert refused.value().startswith(framing.REFUSED_PREFIX) and refused.disconnecting
    assert b"alice already has 3 connections" in refused.value()


def test_a_flood_of_calls_without_reading_is_dropped_by_the_gate(service):
    door, transport = connect(service)
    for i in range(50):
        door.dataReceived(framing.control(Op.SESSIONS, id=i))
    transport.dataBuffer = transport.value()  # nothing of it taken by the peer
    assert len(transport.dataBuffer) > 1000
    service.gate.tick()
    assert transport.aborted
    assert service.audited[0][0] == "dropped" and "did not read" in service.audited[0][2]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.builds(lambda op, f: framing.control(op, **f), st.sampled_from(list(framing.FROM_CLIENT)),
                                    st.dictionaries(st.sampled_from(["id", "session", "mode", "n", "cols", "rows",
                                                                     "name", "build", "request", "path", "ok"]),
                                                    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=5),
                                                              st.lists(st.integers(), max_size=2)))),
                          st.builds(lambda b: framing.encode(FrameType.INPUT, b), st.binary(max_size=20)),
                          st.builds(lambda b: framing.encode(FrameType.DATA, b), st.binary(max_size=20))),
                max_size=8))
def test_a_rogue_client_cannot_break_the_door(tmp_path_factory, pieces):
    """Garbage and well-formed frames with garbage values: the door answers, refuses or closes, never raises."""
    svc = make_service(tmp_path_factory.mktemp("rogue"))
    door, transport = connect(svc)
    for piece in pieces:
        door.dataReceived(piece)
    if not transport.disconnecting:
        for item in frames(transport):
            assert item.op in (Op.ANSWER, Op.REFUSED)


def test_transfer_messages_without_a_transfer_are_refused_and_a_bad_copy_is_a_bad_request(service):
    door, transport = connect(service)
    door.dataReceived(framing.encode(FrameType.DATA, b"abc") + framing.control(Op.FINISH)
                      + framing.control(Op.COPY, id=1, request={"direction": "sideways"})
                      + framing.control(Op.COPY, id=2, request=TransferRequest(UP, "w1", ("f",), "/d").to_wire()))
    assert frames(transport) == [
        framing.Control(Op.REFUSED, {"method": "data", "error": "no transfer on this connection"}),
        framing.Control(Op.REFUSED, {"method": "finish", "error": "no transfer on this connection"}),
        framing.Control(Op.ANSWER, {"id": 1, "ok": False, "error": "bad request: sources must be a list of paths",
                                    "kind": "bad request"}),
        framing.Control(Op.ANSWER, {"id": 2, "ok": False, "error": "no worker named 'w1' on this master (it has "
                                                                   "no workers configured yet: still starting?)",
                                    "kind": "unavailable"}),
    ]
    assert not transport.disconnecting


def test_a_transfer_through_the_door_is_relayed_and_checked_by_the_masters_transfer(service, monkeypatch):
    """The client's frames reach MasterTransfer as slaveshell.vocabulary.copying's calls, and its calls back come out as
    frames; a bad message ends the transfer, not the connection."""
    made: dict[str, Any] = {}

    def copy(who, request, operator, waiting=None):
        transfer = MasterTransfer("t1", who, request, None, lambda t: None)
        transfer.parties[OPERATOR] = operator
        made["worker"] = FakeRef()
        transfer.parties[WORKER] = Party(made["worker"])
        made["transfer"] = transfer
        return defer.succeed((transfer, {"total": 0, "entries": 0, "recorded": False}))

    monkeypatch.setattr(service.api, "copy", copy)
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.COPY, id=1, request=TransferRequest(UP, "w1", ("f",), "/d").to_wire()))
    door.dataReceived(framing.control(Op.ENTRY, kind="file", path="f", mode=0o644, size=3, mtime=0.0)
                      + framing.encode(FrameType.DATA, b"abc")
                      + framing.control(Op.DONE_FILE, sha256=hashlib.sha256(b"abc").hexdigest())
                      + framing.control(Op.FINISH))
    assert [c[0] for c in made["worker"].calls] == ["entry", "data", "done_file", "finish"]
    assert made["worker"].calls[1] == ("data", (b"abc",))
    made["transfer"].received(WORKER, "ack", (1024,))
    made["transfer"].received(WORKER, "result", (True, ""))
    assert frames(transport) == [
        framing.Control(Op.ANSWER, {"id": 1, "ok": True, "transfer": "t1", "unclaimed": True, "total": 0, "entries": 0,
                                    "recorded": False}),
        framing.Control(Op.ACK, {"n": 1024}),
        framing.Control(Op.RESULT, {"ok": True, "reason": ""}),
    ]
    door.dataReceived(framing.control(Op.COPY, id=2, request=TransferRequest(UP, "w1", ("f",), "/d").to_wire()))
    assert frames(transport)[-1].get("error") == "bad request: this connection already has a session or a transfer"
    assert not transport.disconnecting


def test_a_bad_message_from_the_client_ends_its_transfer_not_its_connection(service, monkeypatch):
    made: dict[str, Any] = {}

    def copy(who, request, operator, waiting=None):
        transfer = made["transfer"] = MasterTransfer("t1", who, request, None, lambda t: None)
        transfer.parties[OPERATOR] = operator
        transfer.parties[WORKER] = Party(made.setdefault("worker", FakeRef()))
        return defer.succeed((transfer, {"total": 0, "entries": 0, "recorded": True}))

    monkeypatch.setattr(service.api, "copy", copy)
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.COPY, id=1, request=TransferRequest(UP, "w1", ("f",), "/d").to_wire())
                      + framing.encode(FrameType.DATA, b"no entry first"))
    last = frames(transport)[-1]
    assert last.op is Op.RESULT and last.get("ok") is False and "data came outside a file" in last.get("reason")
    assert made["worker"].calls[-1][0] == "cancel" and not transport.disconnecting


def test_an_answer_json_cannot_hold_is_an_error_answer_not_a_broken_connection(service, monkeypatch):
    monkeypatch.setattr(service.api, "sessions", lambda who: [{"started": object()}])
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.SESSIONS, id=4) + framing.control(Op.WORKERS, id=5))
    assert frames(transport) == [
        framing.Control(Op.ANSWER, {"id": 4, "ok": False, "error": "the answer is too large for this client"}),
        framing.Control(Op.ANSWER, {"id": 5, "ok": True, "rows": []}),
    ]
