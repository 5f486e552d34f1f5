"""The worker session's life as an explicit state (slave_side.session.Phase), and the split between the worker's
logic and its PB adapter."""

import ast
import os
from pathlib import Path

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from slave_side.server import PbSessionSink
from slave_side.session import DRAIN_GRACE, Phase, WorkerOptions, WorkerSession
from slaveshell.vocabulary.protocol import LocalProtocolError, OpenRequest

from .fakes import ProcessReactor

ROOT = Path(__file__).resolve().parent.parent


def make(tmp_path):
    reactor = ProcessReactor()
    reports: list[tuple[object, ...]] = []
    session = WorkerSession(reactor, "w1", OpenRequest(worker="w1", pty=False), WorkerOptions(shell="/bin/sh"),
                            str(tmp_path), PbSessionSink(lambda *a: reports.append(a)))
    return session, reactor, reports


def test_a_session_goes_from_new_to_running_to_exited_to_ended(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: None)
    session, reactor, reports = make(tmp_path)
    assert session.phase is Phase.NEW and not session.ended
    session.start()
    proc = reactor.processes[0]
    assert session.phase is Phase.RUNNING and session.running
    proc.proto.processExited(Failure(error.ProcessDone(0)))
    assert session.phase is Phase.EXITED and not session.ended
    proc.proto.processEnded(Failure(error.ProcessDone(0)))
    assert session.phase is Phase.ENDED and session.ended
    assert reports == [("exit", 0, None, "")]
    reactor.advance(DRAIN_GRACE)  # the drain timer was cancelled: nothing more happens
    assert not proc.lost


def test_messages_too_late_for_the_phase_are_ignored(tmp_path):
    session, reactor, reports = make(tmp_path)
    session.start()
    proc = reactor.processes[0]
    proc.proto.processExited(Failure(error.ProcessDone(0)))
    session.input(b"after the exit")
    session.eof()
    assert proc.written == [] and not proc.stdin_closed
    proc.proto.processEnded(Failure(error.ProcessDone(0)))
    proc.proto.processEnded(Failure(error.ProcessDone(0)))  # a second end changes nothing
    session.close("late")
    assert [r for r in reports if r[0] == "exit"] == [("exit", 0, None, "")]


def test_an_illegal_transition_is_a_local_error(tmp_path):
    session, reactor, reports = make(tmp_path)
    with pytest.raises(LocalProtocolError, match="no transition from new to ended"):
        session._to(Phase.ENDED)
    session.start()
    with pytest.raises(LocalProtocolError, match="no transition from running to new"):
        session._to(Phase.NEW)


@pytest.mark.parametrize("module", ["slave_side/session.py", "slave_side/host.py", "slave_side/echo.py",
                                    "slave_side/pty.py"])
def test_the_workers_logic_imports_nothing_from_pb(module):
    tree = ast.parse((ROOT / module).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("twisted.spread") or m in ("slaveshell.plumbing.remote", "pb")]
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert "pb" not in names
