"""`--batch` as Salt's -b, and the scheduler of a fleet run: batches, timeouts, Ctrl-C."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.fleet.batch import Ask, Batch, BatchError, End, Reason, Scheduler, Start
from slaveshell.fleet.outcome import Output, State

W = [f"w{i}" for i in range(1, 6)]


def out(data: bytes = b"") -> Output:
    o = Output()
    o.add(data)
    return o


@pytest.mark.parametrize(("text", "targets", "size"), [
    ("3", 40, 3), ("1", 1, 1), ("100", 5, 100), ("10%", 40, 4), ("25%", 10, 2), ("1%", 40, 1),
    ("100%", 40, 40), ("29%", 100, 29), ("50%", 1, 1), ("5%", 0, 1),
])
def test_batch_is_a_number_or_a_percentage_rounded_down_and_at_least_one(text, targets, size):
    assert Batch.parse(text).size(targets) == size


@pytest.mark.parametrize("text", ["0", "0%", "-1", "101%", "abc", "3.5", "%10", "", "10%%", "1e3", "9999999999"])
def test_a_malformed_batch_is_one_line(text):
    with pytest.raises(BatchError) as e:
        Batch.parse(text)
    assert str(e.value).startswith("--batch ") and str(e.value).endswith(
        ": expected a number of workers (at least 1) or a percentage of the targets (1% to 100%)")


def test_a_batch_message_shows_hostile_text_escaped():
    with pytest.raises(BatchError, match=r"^--batch \\x1b\[2J: "):
        Batch.parse("\x1b[2J")


def test_at_most_a_batch_runs_and_the_next_starts_when_one_ends():
    s = Scheduler(W, batch=2)
    assert s.begin() == [Start("w1"), Start("w2")]
    assert s.started("w1", 10.0, "s1") == [] and s.started("w2", 10.0, "s2") == []
    assert s.ended("w2", 0, out(b"ok\n"), 11.5) == [Start("w3")]
    assert s.ended("w1", 3, out(b"no\n"), 12.0) == [Start("w4")]
    s.started("w3", 12.0)
    assert s.failed("w4", State.ERROR, "the worker went away") == [Start("w5")]
    s.started("w5", 13.0)
    assert s.ended("w3", 0, out(), 13.0) == [] and not s.done
    assert s.ended("w5", 0, out(), 14.0) == [] and s.done
    got = {o.worker: o for o in s.outcomes()}
    assert [(o.worker, o.state, o.exit_status) for o in s.outcomes()] == [
        ("w1", State.FAILED, 3), ("w2", State.OK, 0), ("w3", State.OK, 0), ("w4", State.ERROR, None),
        ("w5", State.OK, 0)]
    assert got["w2"].duration == 1.5 and got["w2"].session == "s2" and got["w4"].reason == "the worker went away"


def test_a_session_past_its_timeout_is_ended_and_listed_as_timed_out():
    s = Scheduler(W[:2], batch=2, timeout=30)
    s.begin()
    s.started("w1", 0.0)
    s.started("w2", 5.0)
    assert s.deadline("w1") == 30.0 and s.deadline("w2") == 35.0
    assert s.expired(29.9) == []
    assert s.expired(31.0) == [End("w1", Reason.TIMEOUT)]
    assert s.expired(32.0) == []  # already ending
    assert s.timed_out("w2") == [End("w2", Reason.TIMEOUT)]
    s.ended("w1", -15, out(b"partial"), 31.2)
    s.ended("w2", None, out(), 36.0)
    states = [(o.state, o.exit_status) for o in s.outcomes()]
    assert states == [(State.TIMED_OUT, -15), (State.TIMED_OUT, None)] and s.done


def test_ctrl_c_starts_nothing_more_ends_the_running_ones_and_remembers_which_ran():
    s = Scheduler(W, batch=2)
    s.begin()
    s.started("w1", 0.0)
    s.ended("w1", 0, out(b"done\n"), 1.0)  # w3 starts
    s.started("w2", 0.5)
    assert s.interrupted() == [End("w2", Reason.INTERRUPT)]
    assert s.interrupted() == []  # again: the caller escalates the signals
    # w3 was still opening: it is ended as soon as it starts; nothing else starts when sessions end.
    assert s.started("w3", 1.1) == [End("w3", Reason.INTERRUPT)]
    assert s.ended("w2", -2, out(), 2.0) == [] and s.ended("w3", None, out(), 2.0) == []
    assert s.done
    assert [(o.worker, o.state) for o in s.outcomes()] == [
        ("w1", State.OK), ("w2", State.INTERRUPTED), ("w3", State.INTERRUPTED), ("w4", State.NOT_STARTED),
        ("w5", State.NOT_STARTED)]


def test_late_and_unknown_events_change_nothing():
    s = Scheduler(["w1"], batch=1)
    assert s.started("w1", 0.0) == []  # not started yet: no Start decided
    s.begin()
    s.started("w1", 0.0)
    s.ended("w1", 0, out(), 1.0)
    assert s.ended("w1", 1, out(), 2.0) == [] and s.timed_out("w1") == [] and s.started("zz", 0.0) == []
    assert [(o.state, o.exit_status) for o in s.outcomes()] == [(State.OK, 0)]


def test_a_moderated_workers_approval_is_asked_without_a_place_in_the_batch():
    """--batch 1 with w1 four-eyes: its approval is asked while the others run one at a time; once approved it
    starts at the next free place, before the workers still waiting."""
    s = Scheduler(W[:4], batch=1, approvals=["w1"])
    assert s.begin() == [Ask("w1"), Start("w2")]
    assert s.asked == ["w1"] and s.running == ["w2"]
    s.started("w2", 1.0)
    assert s.ended("w2", 0, out(), 2.0) == [Start("w3")]
    s.started("w3", 2.0)
    assert s.approved("w1") == [] and s.approved("w1") == []  # the batch is full; approved once
    assert s.ended("w3", 0, out(), 3.0) == [Start("w1")]
    s.started("w1", 3.0, "s1")
    assert s.ended("w1", 0, out(), 4.0) == [Start("w4")]
    s.started("w4", 4.0)
    assert not s.done and s.ended("w4", 0, out(), 5.0) == [] and s.done
    assert [(o.worker, o.state) for o in s.outcomes()] == [("w1", State.OK), ("w2", State.OK), ("w3", State.OK),
                                                          ("w4", State.OK)]


def test_approvals_asked_at_once_are_bounded_and_a_denied_one_is_listed():
    s = Scheduler(W, batch=2, approvals=W[:4], asking=2)
    assert s.begin() == [Ask("w1"), Ask("w2"), Start("w5")]
    assert s.started("w1", 1.0) == []  # not started by the scheduler: nothing
    assert s.failed("w1", State.REFUSED, "request 1 denied by moderator bob") == [Ask("w3")]
    assert s.approved("w2") == [Ask("w4"), Start("w2")]
    assert s.approved("w3") == []  # w5 and w2 run
    s.started("w5", 1.0)
    assert s.ended("w5", 0, out(), 2.0) == [Start("w3")]
    assert not s.done
    got = {o.worker: o for o in s.outcomes()}
    assert got["w1"].state is State.REFUSED and got["w1"].reason == "request 1 denied by moderator bob"


def test_ctrl_c_while_approvals_wait_ends_once_they_are_withdrawn():
    s = Scheduler(W[:3], batch=1, approvals=["w1", "w2"])
    assert s.begin() == [Ask("w1"), Ask("w2"), Start("w3")]
    s.started("w3", 1.0)
    assert s.approved("w2") == []
    assert s.interrupted() == [End("w3", Reason.INTERRUPT)]
    assert s.ended("w3", None, out(), 2.0) == [] and not s.done  # w1's request is still asked
    assert s.failed("w1", State.NOT_STARTED, "withdrawn") == [] and s.done
    assert [(o.worker, o.state) for o in s.outcomes()] == [
        ("w1", State.NOT_STARTED), ("w2", State.NOT_STARTED), ("w3", State.INTERRUPTED)]


def test_bad_scheduler_settings_are_refused():
    with pytest.raises(ValueError):
        Scheduler(W, batch=0)
    with pytest.raises(ValueError):
        Scheduler(W, batch=1, asking=0)
    with pytest.raises(ValueError):
        Scheduler(W, batch=1, timeout=0)


events = st.lists(st.tuples(st.sampled_from(["start", "end", "fail", "tick", "timer", "ctrl-c"]),
                            st.integers(0, 5), st.integers(-9, 3)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), events)
def test_any_order_of_events_keeps_the_batch_and_ends_with_every_target_accounted_for(n, batch, script):
    targets = [f"w{i}" for i in range(n)]
    s = Scheduler(targets, batch=batch, timeout=5)
    now = 0.0
    decided = s.begin()
    since_interrupt: int | None = None
    for kind, index, status in script:
        now += 1
        worker = targets[index % n]
        if kind == "start":
            decided += s.started(worker, now)
        elif kind == "end":
            decided += s.ended(worker, status, out(), now)
        elif kind == "fail":
            decided += s.failed(worker, State.ERROR, "lost")
        elif kind == "tick":
            decided += s.expired(now)
        elif kind == "timer":
            decided += s.timed_out(worker)
        else:
            since_interrupt = len(decided) if since_interrupt is None else since_interrupt
            decided += s.interrupted()
        assert len(s.running) <= batch
    if since_interrupt is not None:
        assert not [d for d in decided[since_interrupt:] if isinstance(d, Start)]
    # Draining: every session that runs ends, then the run is done.
    for _ in range(2 * n):
        for worker in s.running:
            s.started(worker, now)
            decided += s.ended(worker, 0, out(), now)
    assert s.done
    starts = [d.worker for d in decided if isinstance(d, Start)]
    assert len(starts) == len(set(starts))  # never started twice
    outcomes = s.outcomes()
    assert [o.worker for o in outcomes] == targets
    for o in outcomes:
        assert (o.worker in starts) == (o.state is not State.NOT_STARTED)
        assert (o.state is State.NOT_STARTED) <= (since_interrupt is not None)
        if o.state is State.OK:
            assert o.exit_status == 0


moderated_events = st.lists(st.tuples(st.sampled_from(["start", "end", "fail", "approve", "ctrl-c"]),
                                      st.integers(0, 5), st.integers(-9, 3)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.integers(1, 3), st.integers(1, 3), st.sets(st.integers(0, 7)), moderated_events)
def test_approvals_never_take_a_place_and_every_target_is_accounted_for(n, batch, asking, gated, script):
    targets = [f"w{i}" for i in range(n)]
    moderated = {targets[i] for i in gated if i < n}
    s = Scheduler(targets, batch=batch, approvals=moderated, asking=asking)
    decided = s.begin()
    now = 0.0
    for kind, index, status in script:
        now += 1
        worker = targets[index % n]
        if kind == "start":
            decided += s.started(worker, now)
        elif kind == "end":
            decided += s.ended(worker, status, out(), now)
        elif kind == "fail":
            decided += s.failed(worker, State.REFUSED, "denied")
        elif kind == "approve":
            decided += s.approved(worker)
        else:
            decided += s.interrupted()
        assert len(s.running) <= batch and len(s.asked) <= asking
        assert not set(s.asked) & set(s.running)
    for _ in range(3 * n):
        for worker in s.asked:
            decided += s.approved(worker)
        for worker in s.running:
            s.started(worker, now)
            decided += s.ended(worker, 0, out(), now)
    assert s.done
    starts = [d.worker for d in decided if isinstance(d, Start)]
    asks = [d.worker for d in decided if isinstance(d, Ask)]
    assert len(starts) == len(set(starts)) and len(asks) == len(set(asks))
    assert set(asks) <= moderated and all(w in asks for w in starts if w in moderated)
    assert [o.worker for o in s.outcomes()] == targets
