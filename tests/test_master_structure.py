"""The master side's structure: the session's transition table, the one authorization question
(`Policy.may`), the config object, the operator API's error convention, and the relay's independence from
PB."""

from __future__ import annotations

import ast
import pathlib

import pytest

from master_side.config import ShellConfig
from master_side.holds.step import Hold, Holds, StopReason
from master_side.operators.api import ErrorKind, OperatorAPI, OperatorError
from master_side.sessions.model import TRANSITIONS, IllegalTransition, State
from master_side.sessions.session import MasterSession
from slaveshell.vocabulary.policy import Action, Identity, Policy, Rule
from slaveshell.vocabulary.protocol import OpenRequest
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
BOB = Identity(1001, 1001, 2, "bob", frozenset({"ops"}))
ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_a_session_moves_only_along_its_transition_table():
    s = MasterSession(OpenRequest(worker="w1"), ALICE, lambda _s: None)
    assert s.state is State.OPENING
    owner = s.start(ToViewer(), ToWorker())
    s.remove_viewer(owner, "gone")
    assert s.state is State.DETACHED and State.DETACHED in TRANSITIONS[State.ATTACHED]
    s.abort("lost")
    assert s.state is State.ENDED and not TRANSITIONS[State.ENDED]
    s.abort("again")  # ending twice is not a transition: the first end stands
    assert s.status is not None and s.status.reason == "lost"
    with pytest.raises(IllegalTransition):
        s.start(ToViewer(), ToWorker())


def test_may_gives_operators_their_own_sessions_and_asks_the_rules_for_the_rest():
    policy = Policy([Rule(users=("bob",), rights=("join",)), Rule(groups=("nobody",), rights=("shell",))])
    # Bob has only 'join': he may watch and kill his own sessions, not Alice's.
    assert policy.may(BOB, Action.WATCH, "w1", owner=BOB).allowed
    assert policy.may(BOB, Action.KILL, "w1", owner=BOB).allowed
    assert not policy.may(BOB, Action.KILL, "w1", owner=ALICE).allowed
    assert not policy.may(BOB, Action.WATCH, "w1", owner=ALICE).allowed
    # Resuming: one's own needs 'shell', anybody else's 'join'; releasing a build needs 'shell'.
    assert not policy.may(BOB, Action.RESUME, "w1", owner=BOB).allowed
    assert policy.may(BOB, Action.RESUME, "w1", owner=ALICE).allowed
    assert not policy.may(BOB, Action.RELEASE, "w1").allowed
    assert "bob (uid 1001) may not shell on worker w1" in policy.may(BOB, Action.SHELL, "w1").reason


def test_quotas_count_live_sessions_per_worker_and_per_operator():
    policy = Policy.default()
    live = [MasterSession(OpenRequest(worker="w1"), ALICE, lambda _s: None) for _ in range(2)]
    assert policy.quota(ALICE, "w2", live, per_worker=2, per_operator=None) is None
    assert policy.quota(BOB, "w1", live, per_worker=2, per_operator=None) == \
        "worker w1 already has 2 sessions (the master's limit)"
    assert policy.quota(ALICE, "w2", live, per_worker=None, per_operator=2) == \
        "alice already has 2 sessions (the master's limit)"


def test_the_config_is_one_object_checked_once():
    assert ShellConfig().errors() == []
    errors = ShellConfig(max_connections=0, idle_timeout=-1, on_record_error="maybe").errors()
    assert "max_connections must be a whole number of at least 1" in errors
    assert "idle_timeout must be a non-negative number or None" in errors
    assert any(e.startswith("on_record_error must be one of") for e in errors)
    options = ShellConfig(max_sessions_per_worker=3, max_viewers_per_session=5)
    assert options.limits().per_worker == 3 and options.bounds().viewers_per_session == 5


def test_a_hold_tells_its_listeners_why_it_ended_by_an_enum():
    hold = Hold(1, "b", 1, "w1", "build")
    heard: list[StopReason] = []
    hold.listeners.append(heard.append)
    assert hold.release("build stopped: by a user", StopReason.STOPPED)
    assert not hold.release("released by alice")
    assert heard == [StopReason.STOPPED] and hold.reason is StopReason.STOPPED


def test_the_operator_api_refuses_with_one_error_type():
    class Registry:
        limits = None

        def get(self, session_id):
            return None

    api = OperatorAPI(Registry(), None, None, lambda: None, lambda: None, Holds())  # type: ignore[arg-type]
    with pytest.raises(OperatorError) as e:
        api.kill(ALICE, 42)
    assert e.value.kind is ErrorKind.BAD_REQUEST and str(e.value) == "kill needs a session id"
    with pytest.raises(OperatorError) as e:
        api.kill(ALICE, "abc")
    assert e.value.kind is ErrorKind.NOT_FOUND and str(e.value) == "no live session abc"
    with pytest.raises(OperatorError) as e:
        api.release(ALICE, 999)
    assert e.value.kind is ErrorKind.NOT_FOUND and str(e.value) == "build 999 is not held"


@pytest.mark.parametrize("module", ["master_side/sessions/session.py", "master_side/operators/api.py",
                                    "master_side/sessions/registry.py"])
def test_the_session_logic_imports_nothing_from_pb(module):
    tree = ast.parse((ROOT / module).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith("twisted.spread") for name in imported)
    assert not any("twisted.spread" in line for line in (ROOT / module).read_text().splitlines()
                   if line.startswith(("from", "import")))



def test_a_late_event_is_told_apart_and_dropped_by_the_adapter_without_blame():
    from master_side.operators.terms import View
    from master_side.sessions.model import LateEvent
    from master_side.sessions.worker_sink import WorkerSink

    errors: list[object] = []
    s = MasterSession(OpenRequest(worker="w1"), ALICE, lambda _s: None)
    owner = s.start(ToViewer(), ToWorker())
    s.abort("worker lost")
    with pytest.raises(LateEvent):
        s.worker_output(1, b"late")
    # Through the worker's PB adapter: no error for the peer, no protocol error reported for the session.
    assert WorkerSink(s, lambda *a: errors.append(a)).remote_output(1, b"late") is None
    # Through a door's view: nothing to refuse (no answer for the operator), nobody blamed.
    view = View(s, owner, lambda *a: errors.append(a))
    with pytest.raises(LateEvent) as late:
        view.input(b"late")
    assert view.refused(late.value) is None
    assert errors == [] and s.state is State.ENDED


# The session's path from a door to the worker and back, in the modules that carry it.
SESSION_PATH = ["sessions/session.py", "sessions/model.py", "operators/terms.py", "shell_socket/door.py",
                "shell_socket/viewer_sink.py", "sessions/worker_link.py", "sessions/worker_sink.py",
                "www/terminal_ws.py"]


@pytest.mark.parametrize("module", SESSION_PATH)
def test_the_session_path_is_typed_method_calls_not_names_dispatched_at_run_time(module):
    """A keystroke can be followed by reading: each hop is a method of slaveshell.vocabulary.protocol's typed vocabulary
    (SessionControl, OperatorSink, the door's View), not a message's name matched by a sink or a method found by
    name (`getattr(handle, "remote_" + method)`); PB stays on the worker's link."""
    tree = ast.parse((ROOT / "master_side" / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            assert not any(isinstance(a, ast.BinOp) for a in node.args), f"{module}: getattr of a built name"
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "method":
            raise AssertionError(f"{module}: a switch on a message's name (line {node.lineno})")
    if module not in ("sessions/worker_link.py", "sessions/worker_sink.py"):
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(name.startswith("twisted.spread") for name in imported), module


def test_the_session_holds_its_peers_by_the_typed_vocabulary():
    import typing

    from master_side.sessions import model as session_model
    from master_side.sessions import session as relay
    from slaveshell.vocabulary.protocol import OperatorSink, SessionControl

    assert typing.get_type_hints(relay.MasterSession.start, vars(relay)) == {
        "to_owner": OperatorSink, "to_worker": SessionControl, "return": session_model.Viewer}
    assert typing.get_type_hints(session_model.Viewer.__init__, vars(session_model))["sink"] is OperatorSink


def test_a_transcripts_fsync_and_close_can_run_off_the_reactor_thread(tmp_path):
    import hashlib

    from master_side.audit.transcripts import TranscriptFile

    f = TranscriptFile(str(tmp_path / "t.cast"))
    f.add(['{"version": 2}', '[0.1, "o", "hi"]'])
    later: list = []
    sha = f.close(later.append)
    # Written (os.write) and hashed at once; the fsync and the close wait for whoever runs them.
    data = (tmp_path / "t.cast").read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() and f.closed and len(later) == 1
    later[0]()
    assert (tmp_path / "t.cast").read_bytes() == data
