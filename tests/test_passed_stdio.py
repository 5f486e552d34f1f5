"""A `-T` session's stdin and stdout passed to the master (master_side.shell_socket.passed, the framed door's
descriptor handling): real pipes, a fake reactor and a fake view. What the master reads goes to the view within
its input window, what it writes is acknowledged only once the pipe took it, the exit waits for the last byte;
and the door takes descriptors only from an open that announces them, pipes and sockets only, within the
bounds, closing every other one at once."""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from master_side.shell_socket.door import WireDoor
from master_side.shell_socket.passed import PassedStdio, check_passed, probe_input
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest, ProtocolError
from tests.test_limits import ALICE, Peer, make_gate


class FakeView:
    """The door's handle on a session, as the passed streams call it."""

    def __init__(self, max_input: int = BULK_CHUNK, grant: int = 4 * BULK_CHUNK) -> None:
        self.max_input = max_input
        self.input_grant = grant
        self.session_id = "s1"
        self.inputs: list[bytes] = []
        self.eofs = 0
        self.acked = 0
        self.closed = 0
        self.stdout_closed_told = 0

    def input(self, data: bytes) -> None:
        self.inputs.append(data)

    def eof(self) -> None:
        self.eofs += 1

    def ack(self, nbytes: int) -> None:
        self.acked += nbytes

    def close(self) -> None:
        self.closed += 1

    def stdout_closed(self) -> None:
        self.stdout_closed_told += 1


def refusals() -> tuple[list[tuple[str, str]], Any]:
    seen: list[tuple[str, str]] = []

    def refused(view: object, method: str, error: ProtocolError) -> bool:
        seen.append((method, str(error)))
        return False

    return seen, refused


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def passed(reactor: MemoryReactorClock, fds: dict[str, int], first: bytes | None = None) -> PassedStdio:
    return PassedStdio(cast(Any, reactor), fds, refusals()[1], first_input=first)


# -- the checks ------------------------------------------------------------------------------------------------


def test_only_pipes_and_sockets_opened_the_right_way_are_taken():
    r, w = os.pipe()
    a, b = socket.socketpair()
    master, slave = os.openpty()
    directory = os.open(tempfile.gettempdir(), os.O_RDONLY)
    with tempfile.TemporaryFile() as f:
        try:
            assert check_passed(r, "in") is None and check_passed(w, "out") is None
            assert check_passed(a.fileno(), "in") is None and check_passed(a.fileno(), "out") is None
            assert check_passed(w, "in") == "its in descriptor is not open for reading"
            assert check_passed(r, "out") == "its out descriptor is not open for writing"
            assert "a terminal or device" in (check_passed(slave, "in") or "")
            assert "a regular file" in (check_passed(f.fileno(), "out") or "")
            assert "a directory" in (check_passed(directory, "in") or "")
            null = os.open(os.devnull, os.O_RDONLY)
            assert "a terminal or device" in (check_passed(null, "in") or "")
            os.close(null)
        finally:
            for fd in (r, w, master, slave, directory):
                os.close(fd)
            a.close()
            b.close()


def test_a_listening_or_datagram_socket_is_not_taken_nor_passed(tmp_path, monkeypatch):
    from slaveshell.client.connection import PASS_STDIO_ENV, not_a_stream, passable

    monkeypatch.delenv(PASS_STDIO_ENV, raising=False)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "listening"))
    listening.listen()
    dgram, dgram_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    packets, packets_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stream, stream_peer = socket.socketpair()
    request = OpenRequest(worker="w1", command="cat", pty=False)
    try:
        for sock, kind in ((listening, "a listening socket"), (dgram, "a datagram socket"),
                           (packets, "a packet socket")):
            for name in ("in", "out"):
                assert check_passed(sock.fileno(), name) == (f"its {name} descriptor is {kind}: only pipes and "
                                                             "stream sockets are taken")
            assert not_a_stream(sock.fileno()) == kind
            assert passable(request, (sock.fileno(), sock.fileno()), stderr=stream_peer.fileno()) == ()
        assert not_a_stream(stream.fileno()) is None
        assert passable(request, (stream.fileno(), stream.fileno()), stderr=stream_peer.fileno()) == ("in", "out")
    finally:
        for sock in (listening, dgram, dgram_peer, packets, packets_peer, stream, stream_peer):
            sock.close()


def test_stdout_stays_with_the_client_when_stderr_is_the_same_pipe(monkeypatch):
    """`2>&1 | ...`: the client writes stdout and stderr in the order they came; passed, stdout would go a hop
    ahead of stderr (docs/architecture.md). Another pipe for stderr, or stderr a terminal: stdout is passed."""
    from slaveshell.client.connection import PASS_STDIO_ENV, passable

    monkeypatch.delenv(PASS_STDIO_ENV, raising=False)
    request = OpenRequest(worker="w1", command="make", pty=False)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    merged = os.dup(w_out)
    try:
        assert passable(request, (r_in, w_out), stderr=merged) == ("in",)
        assert passable(request, (r_in, w_out), stderr=w_err) == ("in", "out")
        monkeypatch.setenv(PASS_STDIO_ENV, "0")
        assert passable(request, (r_in, w_out), stderr=w_err) == ()
    finally:
        for fd in (r_in, w_in, r_out, w_out, r_err, w_err, merged):
            os.close(fd)


def test_the_probe_keeps_the_first_byte_and_finds_a_fifo_opened_by_name(tmp_path):
    r, w = os.pipe()
    assert probe_input(r) == (True, None)
    os.write(w, b"xy")
    assert probe_input(r) == (True, b"x")
    os.close(w)
    assert probe_input(r) == (True, b"y")
    assert probe_input(r) == (True, b"")
    os.close(r)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert probe_input(reader) == (False, None)  # EOPNOTSUPP: the client reads it itself
    finally:
        os.close(reader)


# -- stdin -----------------------------------------------------------------------------------------------------


def test_stdin_is_read_within_the_input_window_and_its_end_is_the_sessions_eof():
    reactor = MemoryReactorClock()
    r, w = os.pipe()
    stdio = passed(reactor, {"in": r}, first=b"A")
    view = FakeView(max_input=BULK_CHUNK, grant=BULK_CHUNK)
    stdio.start(cast(Any, view))
    assert view.inputs == [b"A"]  # the probe's byte first
    assert stdio._reader in reactor.readers
    os.write(w, b"B" * 60000)
    stdio._read()
    assert view.inputs[1] == b"B" * 60000
    # The window (one bulk message here) is full: the pipe is not read until the session acknowledges.
    for _ in range(10):
        if stdio._reader not in reactor.readers:
            break
        os.write(w, b"C" * 60000)
        stdio._read()
    assert stdio._reader not in reactor.readers
    stdio.input_acked(sum(map(len, view.inputs)))
    assert stdio._reader in reactor.readers
    os.close(w)
    while stdio._reader is not None:
        stdio._read()
    assert view.eofs == 1 and not is_open(r)
    assert sum(map(len, view.inputs)) == stdio.read_bytes + 0


# -- stdout ----------------------------------------------------------------------------------------------------


def test_stdout_is_acknowledged_only_as_the_pipe_takes_it_and_the_exit_waits_for_the_last_byte():
    reactor = MemoryReactorClock()
    r, w = os.pipe()
    stdio = passed(reactor, {"out": w})
    view = FakeView()
    stdio.start(cast(Any, view))
    data = os.urandom(3 * 65536)  # more than the pipe holds (64 KiB)
    assert stdio.write(data)
    reactor.advance(0)
    assert 0 < view.acked < len(data)  # what the kernel took, no more: the worker's credit waits
    assert stdio._writer in reactor.writers
    exited: list[bool] = []
    stdio.finish(lambda: exited.append(True))
    assert not exited and is_open(w)  # output still waits: no exit status yet
    got = b""
    while len(got) < len(data):
        got += os.read(r, 1 << 20)
        stdio._write()
    assert got == data
    assert exited == [True] and not is_open(w)
    assert view.acked == len(data)
    os.close(r)


def test_a_stdout_reader_that_went_away_is_told_to_the_session_and_the_credit_returned():
    reactor = MemoryReactorClock()
    r, w = os.pipe()
    stdio = passed(reactor, {"out": w})
    view = FakeView()
    stdio.start(cast(Any, view))
    os.close(r)
    assert stdio.write(b"x" * 1000)
    reactor.advance(0)
    # The session is told (the worker closes the command's stdout, as OpenSSH's eow), not closed.
    assert view.stdout_closed_told == 1 and view.closed == 0 and view.acked == 1000 and not is_open(w)
    assert stdio.write(b"y" * 10)  # late output: nothing written, the credit back
    reactor.advance(0)
    assert view.acked == 1010


def test_a_lost_connection_closes_both_at_once_and_nothing_is_read_or_written_after():
    reactor = MemoryReactorClock()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    stdio = passed(reactor, {"in": r_in, "out": w_out})
    view = FakeView()
    stdio.start(cast(Any, view))
    stdio.write(os.urandom(200_000))
    stdio.close()
    assert not is_open(r_in) and not is_open(w_out)
    assert not reactor.readers and not reactor.writers
    stdio._read()
    stdio.write(b"late")
    assert view.inputs == [] and view.eofs == 0
    for fd in (w_in, r_out):
        os.close(fd)


# -- the door --------------------------------------------------------------------------------------------------


class OpeningAPI:
    """An API whose open answers with a FakeView (the request and sink kept)."""

    def __init__(self) -> None:
        self.opened: list[tuple[OpenRequest, Any]] = []
        self.view = FakeView()

    def open_anywhere(self, who: object, request: OpenRequest, sink: Any) -> defer.Deferred[Any]:
        self.opened.append((request, sink))
        return defer.succeed(self.view)


def framed_door(**bounds: Any) -> tuple[WireDoor, Peer, OpeningAPI, list[tuple[str, str, str]], MemoryReactorClock]:
    reactor = MemoryReactorClock()
    gate, audited = make_gate(reactor, **bounds)
    api = OpeningAPI()
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate, "api": api, "pass_stdio": True})))
    transport = Peer(ALICE)
    transport.reactor = reactor  # type: ignore[attr-defined]
    served.makeConnection(transport)
    return served, transport, api, audited, reactor


def open_frame(stdio: list[str] | None, pty: bool = False) -> bytes:
    request = OpenRequest(worker="w1", command="cat", pty=pty).to_wire()
    fields: dict[str, object] = {"request": request, "max_output": framing.MAX_OUTPUT}
    if stdio is not None:
        fields["stdio"] = stdio
    return framing.control(framing.Op.OPEN, id=1, **fields)


def answers(transport: Peer) -> list[dict[str, Any]]:
    decoder = framing.Decoder()
    out = []
    for frame in decoder.feed(transport.value()[len(framing.MAGIC):]):
        if frame.type is not framing.FrameType.CONTROL:
            continue
        message = framing.parse_control(frame.payload)
        out.append({"op": message.op.value, **{k: message.get(k) for k in ("ok", "error", "stdio", "text")}})
    return out


def test_an_open_that_announces_its_pipes_gets_them_served_by_the_master_and_the_exit_after_them():
    served, transport, api, audited, reactor = framed_door()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    served.fileDescriptorReceived(r_in)
    served.fileDescriptorReceived(w_out)
    assert served.service.gate.fds_held(ALICE.uid) == 2
    os.write(w_in, b"hello")
    served.dataReceived(open_frame(["in", "out"]))
    assert answers(transport)[-1] == {"op": "answer", "ok": True, "error": None, "stdio": ["in", "out"],
                                      "text": None}
    view = api.view
    assert view.inputs == [b"h"]  # the probe's byte; the rest when the reactor finds it readable
    sink = api.opened[0][1]
    sink.output(1, b"out!")  # the session's stdout: to the pipe, not to the client
    assert os.read(r_out, 100) == b"out!"
    sink.output(2, b"err!")  # stderr stays framed
    assert b"err!" in transport.value()
    os.close(w_in)
    passed_stdio = served.passed
    assert passed_stdio is not None
    while passed_stdio._reader is not None:
        passed_stdio._read()
    assert b"".join(view.inputs) == b"hello" and view.eofs == 1
    sink.exit(ExitStatus(code=3))
    assert answers(transport)[-1]["op"] == "exit"
    assert not is_open(w_out) and not is_open(r_in)
    assert served.service.gate.fds_held(ALICE.uid) == 0
    assert audited == []
    os.close(r_out)


def test_descriptors_that_are_not_pipes_or_sockets_are_closed_and_the_open_refused_and_audited():
    master, slave = os.openpty()
    with tempfile.TemporaryFile() as f:
        for fd, stdio, what in ((slave, ["in"], "a terminal or device"), (os.dup(f.fileno()), ["out"],
                                                                          "a regular file")):
            served, transport, api, audited, _ = framed_door()
            served.fileDescriptorReceived(fd)
            served.dataReceived(open_frame(stdio))
            answer = answers(transport)[-1]
            assert answer["ok"] is False and what in answer["error"]
            assert not is_open(fd) and api.opened == []
            assert audited and audited[0][0] == "refused" and what in audited[0][2]
            assert served.service.gate.fds_held() == 0
    os.close(master)


def test_a_count_that_is_not_the_announced_one_is_refused():
    served, transport, api, audited, _ = framed_door()
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    served.dataReceived(open_frame(["in", "out"]))
    answer = answers(transport)[-1]
    assert answer["ok"] is False and "announced 2 file descriptors and passed 1" in answer["error"]
    assert not is_open(r) and api.opened == [] and audited
    os.close(w)


def test_a_terminal_session_takes_no_descriptors():
    served, transport, api, audited, _ = framed_door()
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    served.dataReceived(open_frame(["in"], pty=True))
    assert answers(transport)[-1]["ok"] is False and not is_open(r)
    os.close(w)


def test_descriptors_on_a_frame_that_does_not_announce_them_cost_the_connection():
    served, transport, api, audited, _ = framed_door()
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    served.dataReceived(framing.control(framing.Op.WORKERS, id=1))
    assert not is_open(r) and transport.disconnecting
    assert audited and audited[0][0] == "dropped" and "did not announce" in audited[0][2]
    os.close(w)


def test_more_descriptors_than_two_or_after_the_open_are_closed_at_once():
    served, transport, api, audited, _ = framed_door()
    pipes = [os.pipe() for _ in range(3)]
    for r, _w in pipes:
        served.fileDescriptorReceived(r)
    assert not any(is_open(r) for r, _w in pipes)
    assert transport.disconnecting and audited[0][0] == "dropped"
    assert served.service.gate.fds_held() == 0
    # After an open (even one without descriptors), any descriptor is refused.
    served, transport, api, audited, _ = framed_door()
    served.dataReceived(open_frame(None))
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    assert not is_open(r) and transport.disconnecting
    for fd in [w] + [w2 for _r, w2 in pipes]:
        os.close(fd)


def test_descriptors_past_the_bound_per_user_are_declined_and_the_client_serves_its_streams():
    served, transport, api, audited, _ = framed_door(passed_fds_per_uid=1)
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    served.fileDescriptorReceived(w)
    assert not is_open(r) and not is_open(w) and not transport.disconnecting
    assert served.service.gate.fds_held() == 0
    assert audited[0][0] == "refused" and "descriptors passed to the master" in audited[0][2]
    served.dataReceived(open_frame(["in", "out"]))
    answer = answers(transport)[-1]
    assert answer["ok"] is True and answer["stdio"] is None  # opened; the client reads and writes them itself
    assert len(api.opened) == 1 and served.passed is None


def test_a_lost_connection_closes_what_was_passed():
    served, transport, api, audited, _ = framed_door()
    r_in, w_in = os.pipe()
    served.fileDescriptorReceived(r_in)
    served.dataReceived(open_frame(["in"]))
    assert is_open(r_in)
    served.connectionLost()
    assert not is_open(r_in)
    os.close(w_in)


def test_a_user_without_a_right_on_any_worker_passes_no_descriptors():
    reactor = MemoryReactorClock()
    gate, audited = make_gate(reactor)
    gate.has_right = lambda who: False  # type: ignore[method-assign]
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate, "api": OpeningAPI(), "pass_stdio": True})))
    transport = Peer(ALICE)
    transport.reactor = reactor  # type: ignore[attr-defined]
    served.makeConnection(transport)
    r, w = os.pipe()
    served.fileDescriptorReceived(r)
    assert not is_open(r) and transport.disconnecting and gate.fds_held() == 0
    assert audited[0][0] == "dropped" and "has no right on any worker here" in audited[0][2]
    os.close(w)
