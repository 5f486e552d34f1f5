import pytest

from slaveshell.vocabulary.flow import CreditWindow, chunks
from slaveshell.vocabulary.protocol import (
    MAX_CHUNK,
    ExitStatus,
    LocalProtocolError,
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_signal,
    check_size,
)


def test_open_request_round_trips_through_the_wire_form():
    req = OpenRequest(worker="w1", command="ls -l", pty=False, term="xterm-256color", cols=120, rows=40,
                      env={"LANG": "C.UTF-8"}, cwd="build")
    assert OpenRequest.from_wire(req.to_wire()) == req


@pytest.mark.parametrize(
    "change, message",
    [
        ({"worker": ""}, "worker name is empty"),
        ({"worker": 7}, "worker name must be a string"),
        ({"cols": 0}, "cols must be between"),
        ({"rows": True}, "rows must be an integer"),
        ({"term": "xterm; rm -rf /"}, "TERM"),
        ({"env": {"1BAD": "x"}}, "bad environment variable name"),
        ({"env": {"A": "x\0y"}}, "NUL"),
        ({"command": "x" * (64 * 1024 + 1)}, "longer than"),
        ({"version": 99}, "protocol version 99"),
        ({"surprise": 1}, "unknown request fields: surprise"),
    ],
)
def test_a_bad_request_from_the_wire_is_the_peers_error(change, message):
    wire = OpenRequest(worker="w1").to_wire()
    wire.update(change)
    with pytest.raises(ProtocolError, match=message):
        OpenRequest.from_wire(wire)


def test_a_bad_request_built_locally_is_our_bug():
    with pytest.raises(LocalProtocolError):
        OpenRequest(worker="w1", cols=-1)


def test_non_dict_request_is_refused():
    with pytest.raises(ProtocolError):
        OpenRequest.from_wire(["w1"])


def test_checks_refuse_wrong_types_and_sizes():
    assert check_bytes(b"x" * MAX_CHUNK) == b"x" * MAX_CHUNK
    with pytest.raises(ProtocolError, match="over the limit"):
        check_bytes(b"x" * (MAX_CHUNK + 1))
    with pytest.raises(ProtocolError, match="must be bytes"):
        check_bytes("text")
    assert check_size(80, 24) == (80, 24)
    with pytest.raises(ProtocolError):
        check_size(80, 10**6)


def test_signals_by_name():
    assert check_signal("INT") == 2
    assert check_signal("sigterm") == 15
    with pytest.raises(ProtocolError, match="unknown signal"):
        check_signal("SEGV")


@pytest.mark.parametrize(
    "status, code",
    [
        (ExitStatus(code=0), 0),
        (ExitStatus(code=7), 7),
        (ExitStatus(code=256 + 3), 3),
        (ExitStatus(signal=9), 137),
        (ExitStatus(reason="connection to worker w1 lost"), 255),
    ],
)
def test_cli_status_follows_shell_and_ssh_conventions(status, code):
    assert status.cli_status() == code


def test_exit_status_from_the_wire_is_checked():
    assert ExitStatus.from_wire(None, 9, "") == ExitStatus(signal=9)
    with pytest.raises(ProtocolError):
        ExitStatus.from_wire("0", None, "")
    with pytest.raises(ProtocolError):
        ExitStatus.from_wire(None, 0, "")


def test_credit_window_counts_and_refuses_over_acknowledgement():
    w = CreditWindow(100)
    w.sent(60)
    assert w.is_open
    w.sent(50)
    assert not w.is_open
    w.acked(30)
    assert w.is_open and w.in_flight == 80
    with pytest.raises(ProtocolError, match="only 80 are unacknowledged"):
        w.acked(81)
    with pytest.raises(ProtocolError):
        w.acked(-1)


def test_chunks():
    assert chunks(b"", 3) == []
    assert chunks(b"abcdefg", 3) == [b"abc", b"def", b"g"]
