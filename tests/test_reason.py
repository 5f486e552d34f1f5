"""A reason on every session: the request's check, its journey (what the master keeps, what the worker is not
told), the policy's `require_reason`, search by reason, and the tables that show it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given

from master_side.audit import search as transcript_search
from slaveshell.client import cli
from slaveshell.vocabulary.copying import DOWN, TransferRequest
from slaveshell.vocabulary.policy import Identity, Policy, Rule
from slaveshell.vocabulary.protocol import MAX_REASON, LocalProtocolError, OpenRequest, ProtocolError, check_reason

from .test_display import assert_table_shown_intact, no_control_left, run_cli, separators_of, untrusted


def who(user: str = "alice", uid: int = 1000) -> Identity:
    return Identity(uid=uid, gid=uid, pid=1, user=user, groups=frozenset({user}))


@pytest.mark.parametrize("text", [
    "INC-4711", "JIRA OPS-12: disk full on w1", "été – 工单 #7", "a\u00a0b\u3000c", "x" * MAX_REASON,
    "C:\\path\\x1b literal backslashes",
])
def test_a_reason_is_one_line_of_printable_text(text):
    assert check_reason(text) == text


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("x" * (MAX_REASON + 1), "longer than"),
    ("INC-1\nrm -rf /", "U\\+000A"), ("INC-1\r", "U\\+000D"), ("\x1b]0;owned\x07", "U\\+001B"),
    ("a\u009bb", "U\\+009B"), ("a\u202eb", "U\\+202E"), ("a\u2028b", "U\\+2028"), ("a\x00b", "NUL"),
    ("tab\there", "U\\+0009"), ("bad\udc9bbyte", "U\\+DC9B"), (7, "must be a string"),
])
def test_a_reason_that_is_not_one_printable_line_is_refused(text, message):
    with pytest.raises(ProtocolError, match=message):
        check_reason(text)


def test_the_open_request_carries_the_reason_and_checks_it_like_its_other_fields():
    req = OpenRequest(worker="w1", command="ls", reason="INC-4711")
    assert req.to_wire()["reason"] == "INC-4711"
    assert OpenRequest.from_wire(req.to_wire()) == req
    # Without one, the wire form has no such field: a master that does not know it still takes the request.
    assert "reason" not in OpenRequest(worker="w1").to_wire()
    wire = OpenRequest(worker="w1").to_wire()
    wire["reason"] = "INC-1\n\x1b[2J"
    with pytest.raises(ProtocolError, match="reason contains"):
        OpenRequest.from_wire(wire)
    with pytest.raises(LocalProtocolError):
        OpenRequest(worker="w1", reason="x" * (MAX_REASON + 1))


def test_the_worker_is_not_told_the_reason():
    # master_side.sessions.worker_link sends the worker this form of the request (the master's own fields cleared).
    import inspect

    from master_side.sessions import worker_link as worker_pb

    source = inspect.getsource(worker_pb.open_on_worker)
    assert "reason=None" in source
    req = OpenRequest(worker="w1", reason="INC-4711", build=3)
    assert "reason" not in replace(req, pause=False, builder=None, build=None, reason=None).to_wire()


def test_a_transfer_request_carries_the_reason_to_the_master_only():
    req = TransferRequest(DOWN, "w1", ("a",), "here", reason="INC-4711")
    assert TransferRequest.from_wire(req.to_wire()) == req
    assert "reason" not in req.to_pb()  # the worker's form
    assert "reason" not in TransferRequest(DOWN, "w1", ("a",), "here").to_wire()
    wire = req.to_wire()
    wire["reason"] = "x\ny"
    with pytest.raises(ProtocolError, match="reason contains"):
        TransferRequest.from_wire(wire)


def test_a_rule_can_require_a_reason_on_some_workers():
    policy = Policy([Rule(users=["alice"], workers=["prod-*"], require_reason=True), Rule(users=["alice"])])
    on_prod = policy.check(who(), "shell", "prod-1")
    assert on_prod.allowed and on_prod.require_reason
    refused = on_prod.without_reason("prod-1")
    assert not refused.allowed and refused.reason == "worker prod-1 requires a reason (--reason TEXT)"
    elsewhere = policy.check(who(), "shell", "dev-1")
    assert elsewhere.without_reason("dev-1") == elsewhere and elsewhere.allowed
    # A refusal stays the refusal it was.
    denied = policy.check(who("bob", 1001), "shell", "prod-1")
    assert denied.without_reason("prod-1") == denied
    with pytest.raises(ValueError, match="require_reason"):
        Rule(users=["alice"], require_reason="yes")  # type: ignore[arg-type]


def row(session_id: str, reason: str | None) -> Any:
    return {"id": session_id, "worker": "w1", "operator": "alice", "started": "2026-12-07T03:00:00+00:00",
            "reason": reason, "hidden_bytes": 0, "hidden_spans": 0, "hidden_flag": False, "term": "xterm"}


def test_search_finds_sessions_by_their_reason_in_any_case():
    rows = [(row("s1", "INC-4711: disk full"), None), (row("s2", None), None), (row("s3", "inc-4711 again"), None)]
    hits = transcript_search.search(rows, "Inc-4711", limit=10)
    assert [(h["session"], h["stream"], h["context"], h["time"]) for h in hits] == [
        ("s1", "reason", "INC-4711: disk full", 0.0), ("s3", "reason", "inc-4711 again", 0.0)]
    assert len(transcript_search.search(rows, "inc", limit=1)) == 1


@given(untrusted, untrusted)
def test_a_reason_in_the_history_and_sessions_tables_is_shown_inert_and_in_its_column(monkeypatch, reason, other):
    history = [{"id": "s1", "started": "2026-11-29T05:00:00+00:00", "ended": None, "operator": "alice",
                "worker": "w1", "end_reason": None, "state": "running", "command": other, "reason": reason}]
    text = run_cli(monkeypatch, history, cli.cmd_history, worker=None, user=None, since=None, limit=10,
                   build=None, reason=None)
    header = text.splitlines()[0]
    assert header.split()[-2:] == ["REASON", "COMMAND"]
    assert_table_shown_intact(text, header, separators_of(13, 20, 9, 12, 16, 14, 9, 20))
    live = [{"id": "s1", "worker": "w1", "operator": "alice", "started": 0.0, "state": "attached", "idle": 1.0,
             "viewers": [{"user": other, "role": "watch"}], "command": None, "reason": reason}]
    text = run_cli(monkeypatch, live, cli.cmd_sessions)
    no_control_left(text)
    header = text.splitlines()[0]
    assert header.split()[-2:] == ["REASON", "VIEWERS"]
    x = header.index("REASON")
    assert_table_shown_intact(text, header, separators_of(13, 16, 12, 20, 9) + [x + 20])


def test_history_asks_for_the_reason_and_its_json_keeps_it_exact(monkeypatch):
    rows = [{"id": "s1", "reason": "INC-1 \u202e\x1b", "command": None}]
    asked: list[Any] = []
    monkeypatch.setattr(cli, "call_master", lambda *a, **k: asked.append(k) or {"rows": rows})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.cmd_history(argparse.Namespace(socket="/x", master=None, json=True, worker=None, user=None, since=None,
                                           limit=10, build=None, reason="inc"))
    assert asked[0]["filters"]["reason"] == "inc"
    assert json.loads(out.getvalue())[0]["reason"] == "INC-1 \u202e\x1b"
    assert "\x1b" not in out.getvalue()  # JSON escapes it


def test_the_consoles_shell_takes_a_reason_and_its_tables_show_reasons():
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from slaveshell.client.console import Console

    from .test_console import FakeBackend

    backend = FakeBackend()
    backend.sessions_live[0]["reason"] = "INC-7 \x1b[2Jlive"
    out: list[str] = []
    with create_pipe_input() as inp, create_app_session(input=inp, output=DummyOutput()):
        inp.send_text("shell --reason 'INC-7 disk full' linux-1\rsessions\rhistory\rquit\r")
        Console(backend, input=inp, output=DummyOutput(), write=out.append).run()
    assert backend.ran == [["buildbot-shell", "--reason", "INC-7 disk full", "linux-1"]]
    text = "".join(out)
    assert "INC-7 \\x1b[2Jlive" in text and "\x1b" not in text
    header = next(line for line in text.splitlines() if line.startswith("SESSION "))
    assert header.split()[-2:] == ["REASON", "VIEWERS"]
