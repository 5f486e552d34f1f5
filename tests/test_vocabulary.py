"""The typed session vocabulary of slaveshell.protocol: roles, and the wire encoders every sender uses."""

import signal

import pytest

from slaveshell.protocol import (
    STREAM_ERR,
    ExitStatus,
    OperatorControl,
    OperatorSink,
    ProtocolError,
    Role,
    WireControl,
    WireSink,
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


def test_control_messages_become_the_wire_calls_the_receivers_check():
    calls, send = recorder()
    control: OperatorControl = WireControl(send)
    control.input(b"ls\r")
    control.eof()
    control.resize(132, 43)
    control.signal(signal.SIGINT)
    control.ack(4096)
    control.close()
    control.detach()
    assert calls == [("input", b"ls\r"), ("eof",), ("resize", 132, 43), ("signal", "INT"), ("ack", 4096),
                     ("close",), ("detach",)]
    # The signal goes by name and comes back as the same number through the receiver's check.
    assert check_signal(calls[3][1]) == signal.SIGINT


def test_sink_messages_become_the_wire_calls_the_receivers_check():
    calls, send = recorder()
    sink: OperatorSink = WireSink(send)
    sink.output(1, b"hello")
    sink.input_ack(3, True)
    sink.exit(ExitStatus(signal=9))
    sink.exit(ExitStatus(reason="connection to worker w1 lost"))
    sink.waiting("waiting for build 7 to be held")
    assert calls == [("output", 1, b"hello"), ("input_ack", 3, True), ("exit", None, 9, ""),
                     ("exit", None, None, "connection to worker w1 lost"),
                     ("waiting", "waiting for build 7 to be held")]
    assert ExitStatus.from_wire(*calls[2][1:]) == ExitStatus(signal=9)


def test_a_notice_is_a_line_on_stderr_with_untrusted_text_escaped():
    calls, send = recorder()
    WireSink(send).notice("bob\x1b]52;c;Zm9v\x07 is now watching")
    assert calls == [("output", STREAM_ERR, b"\r\nslaveshell: bob\\x1b]52;c;Zm9v\\x07 is now watching\r\n")]
    assert notice_bytes("plain") == b"\r\nslaveshell: plain\r\n"
