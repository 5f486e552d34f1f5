"""A fleet run's edge at unit level: the RUN call's request checked at the framed door (every bad value one
answer, the connection kept), one run per connection, and the run's messages (slaveshell.fleet.events) round
trip and refuse what a client cannot trust."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from slaveshell.fleet.events import outcome_from_wire, outcome_to_wire, progress_from_wire
from slaveshell.fleet.outcome import Outcome, Output, State
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.checks import ProtocolError
from slaveshell.vocabulary.framing import Op
from tests.test_operator_wire import connect, frames, make_service


@pytest.fixture
def service(tmp_path: Any) -> Any:
    return make_service(tmp_path)


@pytest.mark.parametrize(("request_", "error"), [
    ("ls", "a run's request is a mapping"),
    ({"command": 5}, "command"),
    ({"script": "not base64!"}, "base64"),
    ({"command": "true", "timeout": True}, "timeout"),
    ({"command": "true", "env": ["A=1"]}, "env is a mapping"),
    ({"command": "true", "env": {"1X": "v"}}, "bad environment variable name '1X'"),
    ({"command": "true", "env": {"A": 1}}, "environment value of A"),
    ({"command": "true", "workers": "w*"}, "workers is a list"),
    ({"command": "true", "workers": ["w"] * 65}, "workers is a list of at most 64"),
    ({"command": "true", "include_offline": "yes"}, "true or false"),
    ({"command": "true", "until": 10**9}, "until"),
    ({"command": "true", "batch": "x" * 17}, "batch"),
])
def test_a_bad_run_request_is_one_answer_and_the_connection_stays(service: Any, request_: object,
                                                                  error: str) -> None:
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.RUN, id=1, request=request_))
    answer = frames(transport)[0]
    assert answer.op is Op.ANSWER and answer.get("ok") is False and answer.get("kind") == "bad request"
    assert error in str(answer.get("error")), answer
    assert not transport.disconnecting


def test_one_run_per_connection_and_a_close_without_a_run_is_a_session_message(service: Any) -> None:
    door, transport = connect(service)
    door.dataReceived(framing.control(Op.RUN, id=1, request={"command": "true"})
                      + framing.control(Op.RUN, id=2, request={"command": "true"}))
    answers = {a.get("id"): a for a in frames(transport) if a.op is Op.ANSWER}
    assert answers[2].get("ok") is False and "already has a session" in str(answers[2].get("error"))
    assert not transport.disconnecting


def test_outcomes_round_trip_with_their_output_kept_cut_and_digested() -> None:
    out = Output(limit=8)
    out.add(b"line one\nline two\n")
    o = Outcome("w1", State.FAILED, 2, 1.25, out, "abc123", "exit 2")
    back = outcome_from_wire(outcome_to_wire(o))
    assert (back.worker, back.state, back.exit_status, back.duration, back.session, back.reason) == (
        "w1", State.FAILED, 2, 1.25, "abc123", "exit 2")
    assert back.output is not None and bytes(back.output.kept) == b"line one" and back.output.cut
    assert back.output.size == 18 and back.output.digest == out.digest and back.output.last_line == b"line two"
    listed = outcome_from_wire(outcome_to_wire(Outcome("w2", State.PENDING, reason="runs when it attaches")))
    assert listed.state is State.PENDING and listed.output is None


@pytest.mark.parametrize(("change", "error"), [
    ({"state": "exploded"}, "state is unknown"),
    ({"worker": "w\x1b[2J" * 100}, "worker"),
    ({"output_sha256": "zz"}, "digest"),
    ({"output": "%%%"}, "base64"),
    ({"exit_status": "0"}, "exit status"),
    ({"duration": -1}, "duration"),
    ({"output": base64.b64encode(b"x" * (64 * 1024 + 3)).decode()}, "output"),
])
def test_an_outcome_a_client_cannot_trust_is_refused(change: dict[str, object], error: str) -> None:
    out = Output()
    out.add(b"hello\n")
    fields = {**outcome_to_wire(Outcome("w1", State.OK, 0, 0.5, out, "s1")), **change}
    with pytest.raises(ProtocolError, match=error):
        outcome_from_wire(fields)


def test_progress_is_checked() -> None:
    assert progress_from_wire({"worker": "w1", "phase": "running", "session": "s", "elapsed": 1.5,
                               "last_line": base64.b64encode(b"\x1b[31mred").decode()}) == (
        "w1", "running", "s", 1.5, b"\x1b[31mred")
    with pytest.raises(ProtocolError):
        progress_from_wire({"worker": "w1", "phase": "dancing"})
