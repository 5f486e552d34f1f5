"""The master's relay logic: validation of both peers and credit pass-through."""

import pytest

from master_side.relay import WINDOW_TOLERANCE, MasterSession, State
from slaveshell.policy import Identity
from slaveshell.protocol import MAX_CHUNK, OUTPUT_WINDOW, ExitStatus, OpenRequest, ProtocolError


@pytest.fixture
def relay():
    ended = []
    session = MasterSession(OpenRequest(worker="w1"), Identity(0, 0, 1, "root", frozenset()), ended.append)
    to_op, to_w = [], []
    session.attach(lambda *a: to_op.append(a), lambda *a: to_w.append(a))
    return session, to_op, to_w, ended


def test_output_and_credit_pass_through(relay):
    session, to_op, to_w, _ = relay
    session.worker_output(1, b"hello")
    assert to_op == [("output", 1, b"hello")]
    session.operator_ack(5)
    assert to_w == [("ack", 5)]


def test_operator_cannot_acknowledge_what_it_never_got(relay):
    session, to_op, to_w, _ = relay
    with pytest.raises(ProtocolError):
        session.operator_ack(1)
    assert to_w == []


def test_a_worker_ignoring_flow_control_is_stopped(relay):
    session, to_op, to_w, _ = relay
    for _ in range(OUTPUT_WINDOW * WINDOW_TOLERANCE // MAX_CHUNK + 1):
        session.worker_output(1, b"x" * MAX_CHUNK)
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        session.worker_output(1, b"x")


def test_bad_values_from_either_side_are_refused(relay):
    session, to_op, to_w, _ = relay
    with pytest.raises(ProtocolError):
        session.operator_input("not bytes")
    with pytest.raises(ProtocolError):
        session.operator_resize(0, 24)
    with pytest.raises(ProtocolError):
        session.operator_signal("SEGV")
    with pytest.raises(ProtocolError):
        session.worker_output(3, b"x")
    with pytest.raises(ProtocolError):
        session.worker_exit("7", None, "")
    assert to_w == [] and to_op == []


def test_controls_reach_the_worker(relay):
    session, to_op, to_w, _ = relay
    session.operator_input(b"ls\r")
    session.operator_resize(100, 30)
    session.operator_signal("INT")
    session.operator_eof()
    assert to_w == [("input", b"ls\r"), ("resize", 100, 30), ("signal", "INT"), ("eof",)]
    session.worker_input_ack(3, False)
    assert to_op == [("input_ack", 3, False)]
    with pytest.raises(ProtocolError, match="does not match"):
        session.worker_input_ack(3, False)


def test_exit_ends_the_session_once(relay):
    session, to_op, to_w, ended = relay
    session.worker_exit(None, 9, "")
    session.abort("late")
    session.worker_output(1, b"late output")
    assert to_op == [("exit", None, 9, "")]
    assert session.state is State.ENDED and session.status == ExitStatus(signal=9)
    assert ended == [session]


def test_operator_gone_closes_the_worker_side(relay):
    session, to_op, to_w, _ = relay
    session.operator_lost()
    assert to_w == [("close",)]
    session.worker_exit(0, None, "")
    assert to_op == []  # nobody left to tell
