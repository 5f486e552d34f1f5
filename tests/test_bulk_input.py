"""Input as a bulk stream (slaveshell.vocabulary.flow.input_limits), at every place untrusted bytes arrive: the
framing's decoder, the master's framed door, the master's relay, the worker's PB handle, the worker's open reply as
the master reads it, and the client's reads of its stdin. A session without a terminal takes input messages of up
to BULK_CHUNK once its worker said so; a terminal's, and any session of a worker that did not say, stay at
MAX_CHUNK."""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

import pytest
from twisted.spread import pb

from master_side.operators.terms import View
from master_side.sessions.session import WINDOW_TOLERANCE, MasterSession, Role
from master_side.sessions.worker_link import ask_worker
from master_side.shell_socket.copy_door import TRANSFER_READ_SIZE
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.flow import (
    BULK_CHUNK,
    BULK_INPUT,
    BULK_WINDOW,
    INTERACTIVE_INPUT,
    announced_input,
    input_limits,
    worker_input_limits,
)
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.protocol import INPUT_WINDOW, MAX_CHUNK, OpenRequest, ProtocolError
from slaveshell.vocabulary.windows import WindowBudget, allowed

from .fakes import Bot, ProcessReactor, Sink, call, connected
from .recorded import ToViewer, ToWorker
from .test_hop_client import FakeLink, FakeLoop, calls
from .test_operator_wire import ROOT, connect, frames, make_service
from .test_relay import ALICE, Clock

MIB = 1024 * 1024


# -- the vocabulary ------------------------------------------------------------------------------------------------

def test_only_a_session_without_a_terminal_whose_worker_said_so_takes_bulk_input():
    assert input_limits(pty=False, worker_takes=BULK_CHUNK) == BULK_INPUT
    assert BULK_INPUT.chunk == BULK_CHUNK and BULK_INPUT.window == BULK_WINDOW
    assert input_limits(pty=True, worker_takes=BULK_CHUNK) == INTERACTIVE_INPUT  # a terminal: never
    assert input_limits(pty=False) == INTERACTIVE_INPUT  # a worker that said nothing
    assert input_limits(pty=False, worker_takes=BULK_CHUNK - 1) == INTERACTIVE_INPUT
    assert INTERACTIVE_INPUT.chunk == MAX_CHUNK and INTERACTIVE_INPUT.window == INPUT_WINDOW
    assert worker_input_limits(pty=False).chunk == BULK_CHUNK and worker_input_limits(pty=True).chunk == MAX_CHUNK


@pytest.mark.parametrize(("announced", "taken"), [
    (None, MAX_CHUNK), (BULK_CHUNK, BULK_CHUNK), (MAX_CHUNK, MAX_CHUNK), (100 * MIB, MAX_CHUNK), (1, MAX_CHUNK),
    (-BULK_CHUNK, MAX_CHUNK), (True, MAX_CHUNK), ("524288", MAX_CHUNK), (float(BULK_CHUNK), MAX_CHUNK),
    ([BULK_CHUNK], MAX_CHUNK),
])
def test_a_workers_announcement_outside_the_range_counts_as_none(announced, taken):
    assert announced_input(announced) == taken


# -- the framing ---------------------------------------------------------------------------------------------------

def test_the_decoder_takes_larger_input_frames_only_once_told_and_never_past_the_limit():
    decoder = framing.Decoder(refused=frozenset({FrameType.STDOUT}))
    with pytest.raises(framing.WireError, match="INPUT frame of 65537 bytes"):
        decoder.feed(struct.pack("!BI", FrameType.INPUT, MAX_CHUNK + 1))
    decoder = framing.Decoder()
    decoder.take_input(BULK_CHUNK)
    [frame] = decoder.feed(framing.encode(FrameType.INPUT, b"i" * BULK_CHUNK, BULK_CHUNK))
    assert len(frame.payload) == BULK_CHUNK
    with pytest.raises(framing.WireError, match=f"INPUT frame of {BULK_CHUNK + 1} bytes"):
        decoder.feed(struct.pack("!BI", FrameType.INPUT, BULK_CHUNK + 1))  # refused from its header alone
    for wrong in (MAX_CHUNK - 1, framing.MAX_INPUT + 1):
        with pytest.raises(ValueError):
            framing.Decoder().take_input(wrong)
    with pytest.raises(ValueError):  # our own bug: a frame over what the master said it takes
        framing.session_frame(framing.Input(b"i" * (MAX_CHUNK + 1)))


@pytest.mark.parametrize("value", [MAX_CHUNK - 1, framing.MAX_INPUT + 1, "65536", True, 1.5])
def test_a_masters_max_input_outside_the_range_is_a_protocol_error(value):
    assert framing.max_input(None) == MAX_CHUNK  # an older master says nothing
    assert framing.max_input(BULK_CHUNK) == BULK_CHUNK
    with pytest.raises(ProtocolError):
        framing.max_input(value)


# -- the master's relay ----------------------------------------------------------------------------------------------

def _session(pty: bool, worker_takes: int | None, budget: WindowBudget | None = None) -> tuple[MasterSession, Any,
                                                                                                 list[Any]]:
    session = MasterSession(OpenRequest(worker="w1", pty=pty), ALICE, lambda s: None, clock=Clock())
    if worker_takes is not None:
        session.grant_windows(budget or WindowBudget(2 * MIB, 64 * MIB), True, worker_takes)
    to_worker: list[Any] = []
    owner = session.start(ToViewer(), ToWorker(lambda *a: to_worker.append(a)))
    return session, owner, to_worker


@pytest.mark.parametrize(("pty", "worker_takes", "most"), [
    (True, BULK_CHUNK, MAX_CHUNK),  # a terminal: small messages, whatever the worker takes
    (False, MAX_CHUNK, MAX_CHUNK),  # a worker from before bulk input
    (False, None, MAX_CHUNK),  # windows never granted (a session made outside OperatorAPI.open)
    (False, BULK_CHUNK, BULK_CHUNK),
])
def test_the_relay_refuses_input_larger_than_the_sessions_kind_allows(pty, worker_takes, most):
    session, owner, to_worker = _session(pty, worker_takes)
    session.viewer_input(owner, b"i" * most)
    assert to_worker == [("input", b"i" * most)]  # relayed whole
    with pytest.raises(ProtocolError, match=f"input is {most + 1} bytes, over the limit of {most}"):
        session.viewer_input(owner, b"i" * (most + 1))
    assert len(to_worker) == 1


def test_bulk_input_in_flight_stays_within_the_grant_and_the_tolerance_and_the_budget_holds_in_all():
    budget = WindowBudget(per_stream=2 * MIB, total=3 * MIB)
    session, owner, _ = _session(False, BULK_CHUNK, budget)
    assert owner.input_grant == 2 * MIB
    # An owner that ignores its window is refused past the grant plus the tolerance (as before bulk input: the
    # tolerance is counted in the terminal's base window, not in bulk messages).
    limit = allowed(owner.input_grant, INPUT_WINDOW, WINDOW_TOLERANCE)
    sent = 0
    while sent <= limit:
        session.viewer_input(owner, b"i" * BULK_CHUNK)
        sent += BULK_CHUNK
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        session.viewer_input(owner, b"i")
    assert sent <= limit + BULK_CHUNK  # what the master holds for the worker: one message past the bound at most
    # The grant above the base window comes out of the budget: a second bulk session gets what is left, a third
    # only the base window; in all, never more than the budget.
    second, owner2, _ = _session(False, BULK_CHUNK, budget)
    third, owner3, _ = _session(False, BULK_CHUNK, budget)
    assert owner2.input_grant == INPUT_WINDOW + (3 * MIB - (2 * MIB - INPUT_WINDOW))
    assert owner3.input_grant == INPUT_WINDOW and budget.used <= budget.total
    for s in (session, second, third):
        s.abort("test")
    assert budget.used == 0


def test_the_worker_is_told_of_every_bulk_message_in_order_and_acks_must_match_them():
    session, owner, to_worker = _session(False, BULK_CHUNK)
    session.viewer_input(owner, b"a" * BULK_CHUNK)
    session.viewer_input(owner, b"b" * 10)
    with pytest.raises(ProtocolError, match="does not match"):
        session.worker_input_ack(10, False)  # out of order: the first message is the one acknowledged first
    session2, owner2, _ = _session(False, BULK_CHUNK)
    session2.viewer_input(owner2, b"a" * BULK_CHUNK)
    with pytest.raises(ProtocolError, match="does not match"):
        session2.worker_input_ack(MAX_CHUNK, False)  # a smaller ack than the message: refused
    session3, owner3, _ = _session(False, BULK_CHUNK)
    session3.viewer_input(owner3, b"a" * BULK_CHUNK)
    session3.worker_input_ack(BULK_CHUNK, False)
    assert owner3.input_window.in_flight == 0


# -- the master's framed door --------------------------------------------------------------------------------------

def _door_viewing(tmp_path: Any, pty: bool, worker_takes: int, role: Role = Role.OWNER) -> tuple[Any, Any, list[Any]]:
    service = make_service(tmp_path)
    door, transport = connect(service)
    session, owner, to_worker = _session(pty, worker_takes)
    viewer = owner if role is Role.OWNER else session.add_viewer(ROOT, role, ToViewer())
    door._take_view(View(session, viewer, lambda s, e: None))
    return door, transport, to_worker


def test_the_door_takes_bulk_input_frames_on_a_bulk_sessions_connection_only(tmp_path):
    door, transport, to_worker = _door_viewing(tmp_path / "bulk", False, BULK_CHUNK)
    door.dataReceived(framing.encode(FrameType.INPUT, b"i" * BULK_CHUNK, BULK_CHUNK))
    assert to_worker == [("input", b"i" * BULK_CHUNK)] and not transport.disconnecting
    door.dataReceived(struct.pack("!BI", FrameType.INPUT, BULK_CHUNK + 1))
    [error] = frames(transport)
    assert error.op is Op.ERROR and f"INPUT frame of {BULK_CHUNK + 1} bytes (at most {BULK_CHUNK})" in error.get(
        "text")
    assert transport.disconnecting


@pytest.mark.parametrize(("pty", "worker_takes", "read_size"), [
    (False, BULK_CHUNK, TRANSFER_READ_SIZE),  # a bulk stream's input: several frames per read
    (True, BULK_CHUNK, 65536),  # a terminal: Twisted's 64 KiB, as before
    (False, MAX_CHUNK, 65536),  # an older worker
])
def test_the_door_reads_a_bulk_sessions_input_in_larger_pieces_only(tmp_path, pty, worker_takes, read_size):
    service = make_service(tmp_path)
    door, transport = connect(service)
    transport.bufferSize = 65536
    session, owner, _ = _session(pty, worker_takes)
    door._take_view(View(session, owner, lambda s, e: None))
    assert transport.bufferSize == read_size


@pytest.mark.parametrize(("pty", "worker_takes", "role"), [
    (True, BULK_CHUNK, Role.OWNER),  # a terminal
    (False, MAX_CHUNK, Role.OWNER),  # an older worker
    (False, BULK_CHUNK, Role.WATCH),  # a watcher never types
])
def test_the_door_refuses_an_oversize_input_frame_from_its_header_and_drops_the_connection(tmp_path, pty,
                                                                                         worker_takes, role):
    door, transport, to_worker = _door_viewing(tmp_path, pty, worker_takes, role)
    door.dataReceived(struct.pack("!BI", FrameType.INPUT, MAX_CHUNK + 1))
    [error] = frames(transport)
    assert error.op is Op.ERROR and "INPUT frame of 65537 bytes (at most 65536)" in error.get("text")
    assert transport.disconnecting and to_worker == []


def test_a_connection_without_a_view_takes_no_more_than_a_terminals_frame(tmp_path):
    service = make_service(tmp_path)
    door, transport = connect(service)
    door.dataReceived(struct.pack("!BI", FrameType.INPUT, MAX_CHUNK + 1))
    assert frames(transport)[0].op is Op.ERROR and transport.disconnecting


# -- the worker ----------------------------------------------------------------------------------------------------

@pytest.fixture
def wired(tmp_path):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=4), reactor=reactor)
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    return root, pump, reactor, worker_broker


@pytest.mark.parametrize(("pty", "most"), [(False, BULK_CHUNK), (True, MAX_CHUNK)])
def test_the_worker_announces_and_holds_the_master_to_its_largest_input_message(wired, pty, most):
    root, pump, reactor, broker = wired
    reply = call(pump, root, "slaveshell_open", Sink(), OpenRequest(worker="w1", pty=pty).to_wire())
    assert reply["ok"] and reply["max_input"] == most
    handle = reply["session"]
    result = call(pump, handle, "input", b"x" * (most + 1))
    assert result.check(pb.RemoteError) or result.check(pb.Error), result
    assert f"input is {most + 1} bytes, over the limit of {most}" in str(result.value)
    assert not broker.disconnected
    call(pump, handle, "input", b"y" * most)
    assert b"".join(reactor.processes[-1].written) == b"y" * most


# -- the master reading the worker's open reply ------------------------------------------------------------------------

class _Mind:
    """A worker's connection as ask_worker sees it: its open call answers `reply` with a real reference."""

    def __init__(self, reply: dict[str, object]) -> None:
        self.reply = reply
        self.broker = None

    def callRemote(self, method: str, sink: object, params: object) -> object:
        from twisted.internet import defer
        return defer.succeed(self.reply)


class _Conn:
    def __init__(self, reply: dict[str, object]) -> None:
        self.mind = _Mind(reply)


@pytest.mark.parametrize(("announced", "taken"), [(BULK_CHUNK, BULK_CHUNK), (None, MAX_CHUNK),
                                                  (BULK_CHUNK * 4, MAX_CHUNK), ("big", MAX_CHUNK)])
def test_the_master_takes_the_workers_announcement_only_within_its_range(announced, taken, monkeypatch):
    from master_side.sessions import worker_link
    from master_side.sessions.worker_link import SESSION

    monkeypatch.setattr(worker_link, "set_nodelay", lambda mind: None)
    ref = pb.RemoteReference(None, None, 1, False)  # type: ignore[arg-type]
    reply: dict[str, object] = {"ok": True, "session": ref}
    if announced is not None:
        reply["max_input"] = announced
    got: list[Any] = []
    ask_worker(_Conn(reply), SESSION, pb.Referenceable(), {}, "w1", 30).addCallback(got.append)  # type: ignore[arg-type]
    [open_reply] = got
    assert open_reply.ref is ref and open_reply.max_input == taken


# -- the client ----------------------------------------------------------------------------------------------------

def _client_opened(fields: dict[str, object], stdin: int) -> Any:
    from slaveshell.client.shell_session import HopShell

    link = FakeLink()
    link.answer_calls = False
    client = HopShell(FakeLoop(), link, OpenRequest(worker="w1", pty=False), interactive=False,
                      fds=(stdin, 1, 2))
    link.client = client
    client.start()
    answer = framing.control(Op.ANSWER, id=1, ok=True, session="s1", **fields)
    client.frame(framing.Decoder(max_control=framing.MAX_ANSWER).feed(answer)[0])
    return client


def test_the_client_reads_a_pipe_in_bulk_pieces_when_the_master_takes_them():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # read only what is there, as the loop does once it is readable
    try:
        client = _client_opened({"input_window": 2 * MIB, "max_input": BULK_CHUNK}, read_end)
        assert client.max_input == BULK_CHUNK
        # The pipe was widened so that one read can take one message, and the window starts at four of them.
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) >= BULK_CHUNK
        assert client.input_window.size == BULK_WINDOW == 2 * MIB
        os.set_blocking(write_end, False)
        data = os.urandom(BULK_CHUNK + 100)
        written = os.write(write_end, data)
        assert written == len(data) or written >= BULK_CHUNK
        client.stdin_readable()
        client.stdin_readable()
        sent = [args[1] for args in calls(client) if args[0] == "input"]
        assert [len(piece) for piece in sent][:1] == [BULK_CHUNK]
        assert b"".join(sent) == data[:written]
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("fields", [{"input_window": 2 * MIB}, {}])
def test_the_client_of_an_older_master_or_worker_sends_no_more_than_a_terminals_pieces(fields):
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # read only what is there, as the loop does once it is readable
    try:
        client = _client_opened(fields, read_end)
        assert client.max_input == MAX_CHUNK
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == MAX_CHUNK  # not widened
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, 2 * MAX_CHUNK)  # so that the test can write it all at once
        os.write(write_end, b"z" * (MAX_CHUNK + 10))
        client.stdin_readable()
        client.stdin_readable()
        assert [len(args[1]) for args in calls(client) if args[0] == "input"] == [MAX_CHUNK, 10]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_master_answering_a_max_input_out_of_range_ends_the_client_with_a_line():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # read only what is there, as the loop does once it is readable
    try:
        client = _client_opened({"max_input": 100 * MIB}, read_end)
        assert client.status is not None and client.status.reason == "the master sent a malformed reply"
        assert calls(client) == []
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_flood_of_one_byte_input_messages_is_refused_long_before_the_window_is_spent():
    """The window counts bytes; what the master holds per message waiting for the worker is bounded by count."""
    from master_side.sessions.session import MAX_PENDING_INPUT

    session, owner, to_worker = _session(False, BULK_CHUNK)
    for _ in range(MAX_PENDING_INPUT):
        session.viewer_input(owner, b"k")
    with pytest.raises(ProtocolError, match="too many small messages"):
        session.viewer_input(owner, b"k")
    assert len(to_worker) == MAX_PENDING_INPUT and owner.input_window.in_flight == MAX_PENDING_INPUT
    session.worker_input_ack(1, False)  # one acknowledged: one more may go
    session.viewer_input(owner, b"k")
