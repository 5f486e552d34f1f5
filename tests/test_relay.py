"""The master's relay logic: validation of every peer, credit pass-through, viewers, detach and limits."""

import json
import signal

import pytest

from master_side.audit.recorder import SessionRecorder
from master_side.sessions.model import LateEvent
from master_side.sessions.session import RECENT_BYTES, VIEWER_BUFFER, WINDOW_TOLERANCE, MasterSession, Role, State
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import MAX_CHUNK, OUTPUT_WINDOW, ExitStatus, OpenRequest, ProtocolError
from slaveshell.vocabulary.transcript import CastEncoder
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
BOB = Identity(1001, 1001, 2, "bob", frozenset())


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def relay():
    ended = []
    clock = Clock()
    session = MasterSession(OpenRequest(worker="w1"), ALICE, ended.append, clock=clock)
    to_op, to_w = [], []
    owner = session.start(ToViewer(lambda *a: to_op.append(a)), ToWorker(lambda *a: to_w.append(a)))
    return session, owner, to_op, to_w, ended, clock


def test_output_and_credit_pass_through_the_owner(relay):
    session, owner, to_op, to_w, _, _ = relay
    session.worker_output(1, b"hello")
    assert to_op == [("output", 1, b"hello")]
    session.viewer_ack(owner, 5)
    assert to_w == [("ack", 5)]


def test_a_bulk_streams_credit_goes_back_to_the_worker_per_message_or_once_the_owner_caught_up():
    session = MasterSession(OpenRequest(worker="w1", pty=False), ALICE, lambda s: None, clock=Clock())
    to_w: list[tuple] = []
    owner = session.start(ToViewer(), ToWorker(lambda *a: to_w.append(a)))
    chunk = session.limits.chunk
    session.worker_output(1, b"x" * chunk)
    session.worker_output(1, b"x" * chunk)
    for _ in range(chunk // MAX_CHUNK):  # the client acknowledges one 64 KiB piece at a time
        session.viewer_ack(owner, MAX_CHUNK)
    assert to_w == [("ack", chunk)]  # one ack for the worker's message, not one per piece
    session.viewer_ack(owner, chunk - MAX_CHUNK)
    assert to_w == [("ack", chunk)]  # still behind: held
    session.viewer_ack(owner, MAX_CHUNK)
    assert to_w == [("ack", chunk), ("ack", chunk)]  # caught up: everything goes back
    assert session.output_window.in_flight == 0


def test_an_operator_cannot_acknowledge_what_it_never_got(relay):
    session, owner, to_op, to_w, _, _ = relay
    with pytest.raises(ProtocolError):
        session.viewer_ack(owner, 1)
    assert to_w == []


def test_a_worker_ignoring_flow_control_is_stopped(relay):
    session, owner, to_op, to_w, _, _ = relay
    for _ in range(OUTPUT_WINDOW * WINDOW_TOLERANCE // MAX_CHUNK + 1):
        session.worker_output(1, b"x" * MAX_CHUNK)
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        session.worker_output(1, b"x")


def test_bad_values_from_the_worker_are_refused(relay):
    # A viewer's are refused at its door's edge: tests/test_operator_wire.py
    # (test_bad_values_from_a_viewer_are_refused_at_the_doors_edge), tests/test_web_door.py.
    session, owner, to_op, to_w, _, _ = relay
    with pytest.raises(ProtocolError):
        session.worker_output(3, b"x")
    with pytest.raises(ProtocolError):
        session.worker_exit("7", None, "")
    assert to_w == [] and to_op == []


def test_controls_reach_the_worker_and_input_acks_go_back_with_the_echo_decision(relay):
    session, owner, to_op, to_w, _, _ = relay
    session.viewer_input(owner, b"ls\r")
    session.viewer_resize(owner, 100, 30)
    session.viewer_signal(owner, signal.SIGINT)
    session.viewer_eof(owner)
    assert to_w == [("input", b"ls\r"), ("resize", 100, 30), ("signal", "INT"), ("eof",)]
    session.worker_input_ack(3, False)
    assert to_op == [("input_ack", 3, False)]
    with pytest.raises(ProtocolError, match="does not match"):
        session.worker_input_ack(3, False)


class Recording:
    def __init__(self):
        self.events = []

    def input(self, data, hidden, flush=True, recorded=None):
        self.events.append(("i", data, hidden))
        if recorded is not None:
            recorded()

    def output(self, data, stream=1, recorded=None):
        self.events.append(("o", data))
        if recorded is not None:
            recorded()


def test_an_input_ack_riding_on_the_echo_is_recorded_first_and_acknowledged_after_it(relay):
    session, owner, to_op, to_w, _, _ = relay
    session.recorder = recording = Recording()
    session.viewer_input(owner, b"a")
    session.viewer_input(owner, b"b")
    session.worker_output(1, b"ab", [[1, False], [1, False]])
    # The transcript keeps the keystrokes before their echo; the operator gets the echo first.
    assert recording.events == [("i", b"a", False), ("i", b"b", False), ("o", b"ab")]
    assert to_op == [("output", 1, b"ab"), ("input_ack", 1, False), ("input_ack", 1, False)]


@pytest.mark.parametrize("acks", [[[2, False]], [[1, "no"]], [(1, False)], "x", [[1, False], [1, False]]])
def test_input_acks_riding_on_output_are_checked_like_lone_ones(relay, acks):
    session, owner, to_op, to_w, _, _ = relay
    session.viewer_input(owner, b"a")
    with pytest.raises(ProtocolError):
        session.worker_output(1, b"a", acks)
    assert to_op == []


def test_exit_ends_the_session_once_for_every_viewer(relay):
    session, owner, to_op, to_w, ended, _ = relay
    seen = []
    session.add_viewer(BOB, Role.WATCH, ToViewer(lambda *a: seen.append(a)))
    session.worker_exit(None, 9, "")
    session.abort("late")
    with pytest.raises(LateEvent):  # a late event is the peer's, told apart; the PB adapter drops it
        session.worker_output(1, b"late output")
    assert to_op[-1] == ("exit", None, 9, "") and seen[-1] == ("exit", None, 9, "")
    assert session.state is State.ENDED and session.status == ExitStatus(signal=9)
    assert ended == [session]


def test_watchers_cannot_type_and_joiners_can(relay):
    session, owner, to_op, to_w, _, _ = relay
    watcher = session.add_viewer(BOB, Role.WATCH, ToViewer())
    for call in (lambda: session.viewer_input(watcher, b"rm -rf /\r"),
                 lambda: session.viewer_signal(watcher, signal.SIGINT), lambda: session.viewer_eof(watcher)):
        with pytest.raises(ProtocolError, match="read-only"):
            call()
    assert to_w == []
    joiner = session.add_viewer(BOB, Role.JOIN, ToViewer())
    session.viewer_input(joiner, b"ls\r")
    assert to_w == [("input", b"ls\r")]


def test_a_new_viewer_first_sees_recent_output_then_the_live_stream(relay):
    session, owner, to_op, to_w, _, _ = relay
    session.worker_output(1, b"x" * MAX_CHUNK)
    session.viewer_ack(owner, MAX_CHUNK)
    session.worker_output(1, b"x" * 100)
    session.worker_output(1, b"$ ")
    assert RECENT_BYTES < MAX_CHUNK + 102
    seen = []
    viewer = session.add_viewer(BOB, Role.WATCH, ToViewer(lambda *a: seen.append(a)))
    assert seen[0][0] == "output" and len(seen[0][2]) == RECENT_BYTES and seen[0][2].endswith(b"$ ")
    session.worker_output(1, b"live")
    assert seen[-1] == ("output", 1, b"live")
    # Acknowledging the replay is fine, and it is not the worker's credit.
    before = list(to_w)
    session.viewer_ack(viewer, RECENT_BYTES)
    assert to_w == before


def test_a_slow_watcher_is_dropped_without_slowing_the_session(relay):
    session, owner, to_op, to_w, _, _ = relay
    seen = []
    session.add_viewer(BOB, Role.WATCH, ToViewer(lambda *a: seen.append(a)))
    for _ in range(VIEWER_BUFFER // MAX_CHUNK + 1):
        session.worker_output(1, b"y" * MAX_CHUNK)
        session.viewer_ack(owner, MAX_CHUNK)  # the owner keeps up
    assert seen[-1][0] == "exit" and "too slow" in seen[-1][3]
    assert [v.identity.user for v in session.viewers] == ["alice"]
    assert session.state is State.ATTACHED


def test_losing_the_owner_detaches_and_the_grace_then_closes(relay):
    session, owner, to_op, to_w, _, clock = relay
    session.worker_output(1, b"unacked")
    session.viewer_lost(owner)
    assert session.state is State.DETACHED
    assert to_w == [("ack", 7)]  # nobody else will acknowledge it
    session.worker_output(1, b"while detached")
    assert to_w[-1] == ("ack", 14)  # the session keeps running at full speed
    clock.now += 299
    session.tick(clock.now, detach_grace=300, idle_timeout=None, max_duration=None)
    assert to_w[-1] == ("ack", 14)
    clock.now += 1
    session.tick(clock.now, detach_grace=300, idle_timeout=None, max_duration=None)
    assert to_w[-1] == ("close",)
    session.worker_exit(None, 1, "")
    assert session.end_reason == "detached for longer than 300 s (signal 1)"


def test_reattach_makes_a_new_owner(relay):
    session, owner, to_op, to_w, _, _ = relay
    session.viewer_detach(owner)
    seen = []
    again = session.add_viewer(ALICE, Role.OWNER, ToViewer(lambda *a: seen.append(a)))
    assert session.owner is again and session.state is State.ATTACHED
    with pytest.raises(ProtocolError, match="is attached by alice"):
        session.add_viewer(BOB, Role.OWNER, ToViewer())
    session.worker_output(1, b"abc")
    session.viewer_ack(again, 3)
    assert to_w[-1] == ("ack", 3)


def test_idle_timeout_warns_then_ends(relay):
    session, owner, to_op, to_w, _, clock = relay
    clock.now += 550
    session.tick(clock.now, detach_grace=None, idle_timeout=600, max_duration=None)
    assert b"ends in 50 s" in to_op[-1][2] and b"unless you type" in to_op[-1][2]
    session.viewer_input(owner, b"x")  # activity resets the clock
    clock.now += 100
    session.tick(clock.now, detach_grace=None, idle_timeout=600, max_duration=None)
    assert ("close",) not in to_w
    clock.now += 500
    session.tick(clock.now, detach_grace=None, idle_timeout=600, max_duration=None)
    assert to_w[-1] == ("close",)
    assert b"session ends: idle for 600 s" in to_op[-1][2]


def test_maximum_duration(relay):
    session, owner, to_op, to_w, _, clock = relay
    clock.now += 3600
    session.tick(clock.now, detach_grace=None, idle_timeout=None, max_duration=3600)
    assert to_w[-1] == ("close",)


def test_owner_close_ends_the_session_and_others_just_leave(relay):
    session, owner, to_op, to_w, _, _ = relay
    joiner = session.add_viewer(BOB, Role.JOIN, ToViewer())
    session.viewer_close(joiner)
    assert to_w == [] and [v.identity.user for v in session.viewers] == ["alice"]
    session.viewer_close(owner)
    assert to_w == [("close",)]


def test_a_silent_worker_is_declared_stalled_after_the_timeout(relay):
    session, owner, to_op, to_w, ended, clock = relay
    session.worker_output(1, b"still here")
    clock.now += 59
    assert not session.worker_stalled(clock.now, 60)
    session.worker_output(1, b"x")  # anything from the worker counts
    clock.now += 59
    assert not session.worker_stalled(clock.now, 60)
    clock.now += 1
    assert session.worker_stalled(clock.now, 60)
    assert to_w[-1] == ("close",) and ended == [session]
    assert to_op[-1][0] == "exit" and "stopped answering for 60 s" in to_op[-1][3]


def test_a_keystroke_and_its_echo_are_in_the_transcript_before_the_operator_sees_the_echo(tmp_path):
    path = str(tmp_path / "s.cast")
    session = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None, clock=Clock())
    session.recorder = rec = SessionRecorder(session.id, path, CastEncoder(), None, started=999.0, clock=Clock())
    rec.create(CastEncoder.header(80, 24, 0))
    seen = []

    def to_owner(*message):
        # Whatever the operator is sent, the file already holds it (record before relay).
        seen.append((message, [json.loads(line)[1:] for line in open(path).read().splitlines()[1:]]))

    owner = session.start(ToViewer(to_owner), ToWorker())
    session.viewer_input(owner, b"l")
    session.worker_output(1, b"l", [[1, False]])
    both = [["i", "l"], ["o", "l"]]
    assert seen == [(("output", 1, b"l"), both), (("input_ack", 1, False), both)]


class FlushingViewer(ToViewer):
    """A viewer's end that can tell a flushed input_ack (the framed door's WireViewerSink)."""

    def flushed_input_ack(self, nbytes: int, hidden: bool) -> None:
        self.send("flushed_input_ack", nbytes, hidden)


def _granted(pty: bool, budget, sink=None, tunes: bool = True):
    from slaveshell.vocabulary.protocol import INPUT_WINDOW
    ended: list = []
    session = MasterSession(OpenRequest(worker="w1", pty=pty), ALICE, ended.append, clock=Clock())
    session.grant_windows(budget, tunes)
    to_op: list = []
    owner = session.start(sink or ToViewer(lambda *a: to_op.append(a)), ToWorker())
    return session, owner, to_op, INPUT_WINDOW


def test_granted_windows_bound_what_the_worker_and_the_owner_may_have_in_flight():
    from slaveshell.vocabulary.windows import WindowBudget, allowed
    budget = WindowBudget(per_stream=2 * 1024 * 1024, total=64 * 1024 * 1024)
    session, owner, _, input_base = _granted(True, budget)
    assert session.output_grant == owner.input_grant == 2 * 1024 * 1024
    # The worker may now have the grant in flight (and the overshoot tolerated before), and no more.
    limit = allowed(session.output_grant, OUTPUT_WINDOW, WINDOW_TOLERANCE)
    for _ in range(limit // MAX_CHUNK + 1):
        session.worker_output(1, b"x" * MAX_CHUNK)
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        session.worker_output(1, b"x")
    # The owner's input likewise; a joiner keeps the base input window.
    for _ in range(allowed(owner.input_grant, input_base, WINDOW_TOLERANCE) // MAX_CHUNK + 1):
        session.viewer_input(owner, b"i" * MAX_CHUNK)
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        session.viewer_input(owner, b"i")
    joiner = session.add_viewer(BOB, Role.JOIN, ToViewer())
    assert joiner.input_grant == input_base


def test_a_worker_that_does_not_tune_keeps_the_base_window_and_grants_are_given_back_at_the_end():
    from slaveshell.vocabulary.windows import WindowBudget
    budget = WindowBudget(per_stream=2 * 1024 * 1024, total=3 * 1024 * 1024)
    old, _, _, input_base = _granted(True, budget, tunes=False)
    assert old.output_grant == OUTPUT_WINDOW and old.input_grant == 2 * 1024 * 1024
    second, _, _, _ = _granted(True, budget)
    third, _, _, _ = _granted(True, budget)
    assert budget.used <= budget.total  # in all: the budget, whatever the number of sessions
    assert third.output_grant == OUTPUT_WINDOW and third.input_grant == input_base  # spent: base windows
    for s in (old, second, third):
        s.abort("test")
    assert budget.used == 0


def test_a_flushed_input_ack_reaches_a_sink_that_can_tell_it_and_a_plain_ack_the_others():
    from slaveshell.vocabulary.windows import WindowBudget
    sent: list = []
    session, owner, _, _ = _granted(True, WindowBudget(1, 0), sink=FlushingViewer(lambda *a: sent.append(a)))
    with pytest.raises(ProtocolError, match="no input"):
        session.worker_flushed()
    session.viewer_input(owner, b"\x03")
    session.viewer_input(owner, b"ls\r")
    session.worker_flushed()
    session.worker_input_ack(1, False)
    session.worker_input_ack(3, False)
    assert sent == [("flushed_input_ack", 1, False), ("input_ack", 3, False)]
    plain, powner, to_op, _ = _granted(True, WindowBudget(1, 0))
    plain.viewer_input(powner, b"\x03")
    plain.worker_flushed()
    plain.worker_output(1, b"^C", [[1, False]])
    assert to_op == [("output", 1, b"^C"), ("input_ack", 1, False)]


@pytest.mark.parametrize(("pty", "worker_takes_it", "expected"), [
    (False, True, [("stdout_closed",)]),  # the worker closes the command's stdout
    (False, False, [("close",)]),  # an older worker: closed, as before
    (True, True, [("close",)]),  # a terminal has no half-close
])
def test_the_owners_stdout_reader_gone_reaches_the_worker_and_anyone_elses_leaves(pty, worker_takes_it, expected):
    session = MasterSession(OpenRequest(worker="w1", pty=pty), ALICE, lambda s: None, clock=Clock())
    to_w: list[tuple] = []
    owner = session.start(ToViewer(), ToWorker(lambda *a: to_w.append(a)))
    session.stdout_closes = worker_takes_it
    watcher = session.add_viewer(BOB, Role.WATCH, ToViewer())
    session.viewer_stdout_closed(watcher)
    assert to_w == [] and session.viewers == [owner]
    session.viewer_stdout_closed(owner)
    session.viewer_stdout_closed(owner)  # told once: an owner's repeats never reach the worker
    assert to_w == expected
    assert session.live and session.close_reason == (None if expected == [("stdout_closed",)] else "closed by alice")
    session.worker_exit(None, signal.SIGPIPE, "")
    with pytest.raises(LateEvent):
        session.viewer_stdout_closed(owner)
