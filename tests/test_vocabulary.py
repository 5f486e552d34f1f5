"""The typed session vocabulary of slaveshell.vocabulary.protocol: roles, and the encoders of each hop (the operator's
frames, the worker's PB calls)."""

import signal

import pytest

from slave_side.server import PbSessionSink
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import Ack, Eof, FrameType, Input, Op, Resize, Signal, session_frame
from slaveshell.vocabulary.protocol import (
    ExitStatus,
    ProtocolError,
    Role,
    SessionSink,
    check_signal,
    notice_bytes,
)


def recorder():
    calls: list[tuple[object, ...]] = []
    return calls, lambda *a: calls.append(a)


def test_roles_are_spelt_as_on_the_wire_and_anything_else_is_refused():
    assert [Role.from_wire(v) for v in ("owner", "join", "watch")] == [Role.OWNER, Role.JOIN, Role.WATCH]
    with pytest.raises(ProtocolError, match="unknown role 'admin'"):
        Role.from_wire("admin")
    with pytest.raises(ProtocolError):
        Role.from_wire(None)


def test_a_clients_session_messages_become_the_frames_the_master_checks():
    frames = framing.Decoder().feed(b"".join(session_frame(m) for m in (
        Input(b"ls\r"), Eof(), Resize(132, 43), Signal(signal.SIGINT), Ack(4096))))
    assert frames[0] == framing.Frame(FrameType.INPUT, b"ls\r")
    assert [framing.parse_control(f.payload, framing.FROM_CLIENT) for f in frames[1:]] == [
        framing.Control(Op.EOF), framing.Control(Op.RESIZE, {"cols": 132, "rows": 43}),
        framing.Control(Op.SIGNAL, {"name": "INT"}), framing.Control(Op.ACK, {"n": 4096})]
    # The signal goes by name and comes back as the same number through the receiver's check.
    assert check_signal(framing.parse_control(frames[3].payload).get("name")) == signal.SIGINT
    with pytest.raises(ValueError):
        session_frame(Input(bytes(framing.MAX_CHUNK + 1)))


def test_a_worker_sessions_messages_become_the_pb_calls_the_master_checks():
    calls, send = recorder()
    sink: SessionSink = PbSessionSink(send)
    sink.output(1, b"hello")
    sink.output(1, b"echo", [(1, False), (2, True)])
    sink.input_ack(3, True)
    sink.exit(ExitStatus(signal=9))
    sink.exit(ExitStatus(reason="connection to worker w1 lost"))
    assert calls == [("output", 1, b"hello"), ("output", 1, b"echo", [[1, False], [2, True]]), ("input_ack", 3, True),
                     ("exit", None, 9, ""), ("exit", None, None, "connection to worker w1 lost")]
    assert ExitStatus.from_wire(*calls[3][1:]) == ExitStatus(signal=9)


def test_a_notice_is_a_line_on_stderr_with_untrusted_text_escaped():
    assert notice_bytes("bob\x1b]52;c;Zm9v\x07 is now watching") == \
        b"\r\nslaveshell: bob\\x1b]52;c;Zm9v\\x07 is now watching\r\n"
    assert notice_bytes("plain") == b"\r\nslaveshell: plain\r\n"
