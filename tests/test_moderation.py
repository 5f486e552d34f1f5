"""Four-eyes sessions without I/O: the policy's `moderated_by` and who may moderate, the relay holding input
until a moderator watches (master_side.sessions.moderation), and the reporters' notice of a session waiting for
one (master_side.holds.moderator_notices). Against real processes: tests/e2e/test_moderated_e2e.py."""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace
from typing import Any

import pytest
from buildbot.util.tuplematch import matchTuple

from master_side import ModeratorNoticeFormatter, ModeratorNoticeGenerator
from master_side.holds.moderator_notices import (
    APPROVALS_PER_MINUTE,
    OPENED,
    PER_MINUTE,
    REPEAT_AFTER,
    ModeratorWanted,
    NoticePace,
)
from master_side.sessions.moderation import DROPPED, HELD, MODERATE_END, MODERATE_START
from master_side.sessions.session import MasterSession, Role
from slaveshell.policy import Action, Policy, Rule, WebIdentity
from slaveshell.vocabulary.policy import ClusterIdentity, Identity, person_name, same_operator, same_person
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset({"ops"}))
BOB = Identity(1001, 1001, 2, "bob", frozenset({"ops", "leads"}))
CAROL = Identity(1002, 1002, 3, "carol", frozenset({"ops"}))
ALICE_LEAD = Identity(1000, 1000, 4, "alice", frozenset({"ops", "leads"}))  # a second connection of alice's
WEB_ALICE = WebIdentity.from_web("alice", ["leads"])

POLICY = Policy([
    Rule(groups=["leads"], workers=["prod-*"], rights=["watch", "kill"]),
    Rule(groups=["ops"], workers=["prod-*"], rights=["shell", "watch", "copy"], moderated_by=["leads", "web:leads"]),
    Rule(groups=["ops"], rights=["shell", "watch", "copy"]),
])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.moderation_events: list[tuple[str, str, str]] = []

    def viewer_joined(self, session, viewer):
        pass

    def viewer_left(self, session, viewer, why):
        pass

    def viewer_attached(self, session, viewer):
        pass

    def viewer_detached(self, session, viewer, why):
        pass

    def moderation(self, session, kind, who, detail):
        self.moderation_events.append((kind, who.user, detail))


def test_the_rule_that_allows_the_session_says_who_moderates_it() -> None:
    decision = POLICY.may(ALICE, Action.SHELL, "prod-1")
    assert decision.allowed and decision.moderated_by == ("leads", "web:leads")
    assert POLICY.may(ALICE, Action.SHELL, "dev-1").moderated_by == ()
    # bob's own rule comes first: he may not shell on prod-1 at all, and moderates instead
    assert not POLICY.may(BOB, Action.SHELL, "prod-1").allowed
    # A copy the rule allows is moderated too (it waits for an approval: tests/test_approvals.py).
    assert POLICY.may(ALICE, Action.COPY, "prod-1").moderated_by == ("leads", "web:leads")
    assert POLICY.may(ALICE, Action.COPY, "dev-1").moderated_by == ()


def test_who_may_moderate() -> None:
    groups = ("leads", "web:leads")
    assert POLICY.may_moderate(BOB, ALICE, "prod-1", groups) is None
    assert POLICY.may_moderate(WebIdentity.from_web("dave", ["leads"]), ALICE, "prod-1", groups) is not None  # no rule
    assert "own operator" in (POLICY.may_moderate(ALICE_LEAD, ALICE, "prod-1", groups) or "")
    assert "own operator" in (POLICY.may_moderate(WEB_ALICE, ALICE, "prod-1", groups) or "")  # the other door
    assert "none of its moderators' groups" in (POLICY.may_moderate(CAROL, ALICE, "prod-1", groups) or "")
    no_watch = Policy([Rule(groups=["leads"], rights=["kill"])])
    assert "may not watch" in (no_watch.may_moderate(BOB, ALICE, "prod-1", groups) or "")


# The same user name under another door's or master's prefix: one person for four eyes (docs/multi-master.md).
SAME_NAME = [
    ClusterIdentity.vouched("A", "alice", ["leads"]),
    ClusterIdentity.vouched("C", "web:alice", ["leads"]),
    ClusterIdentity.vouched("C", "cluster:A/Alice", ["leads"]),  # a name a hostile master makes up
    WebIdentity.from_web("ALICE", ["leads"]),
]


@pytest.mark.parametrize("who", SAME_NAME, ids=lambda w: w.user)
def test_the_same_user_name_through_another_master_or_door_is_one_person(who: Identity) -> None:
    groups = ("leads", "web:leads", "cluster:A/leads", "cluster:C/leads")
    policy = Policy([Rule(groups=["leads", "web:leads", "cluster:A/leads", "cluster:C/leads"], rights=["watch"]),
                     *POLICY.rules])
    assert person_name(who) == "alice" and same_person(who, ALICE) and same_person(ALICE, who)
    assert not same_operator(who, ALICE)  # one person, not one operator: no right on each other's sessions
    why = policy.may_moderate(who, ALICE, "prod-1", groups) or ""
    assert why == (f"the session's own operator cannot moderate it: {who.user} and alice share the user name "
                   "'alice', taken as one person (four eyes need another person, whatever door or master each "
                   "came through)")
    # Either way round: local alice does not moderate what alice asked through another master.
    assert "own operator cannot moderate it" in (policy.may_moderate(ALICE_LEAD, who, "prod-1", groups) or "")
    # Another person of the same master moderates them all.
    bob = ClusterIdentity.vouched("A", "bob", ["leads"])
    assert policy.may_moderate(bob, who, "prod-1", groups) is None
    assert policy.may_moderate(BOB, who, "prod-1", groups) is None


def test_a_moderator_with_the_same_user_name_releases_nothing(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    # Admitted as a moderator by mistake (the operators' API refuses it: may_moderate), it still releases nothing.
    session.add_viewer(ClusterIdentity.vouched("A", "alice", ["leads"]), Role.WATCH, ToViewer(), moderator=True)
    session.viewer_input(owner, b"x")
    assert to_worker == []


@pytest.mark.parametrize("bad", ["", "*", "web:", None, True, ["leads"]])
def test_moderated_by_takes_groups_and_web_roles_only(bad: object) -> None:
    with pytest.raises(ValueError):
        Rule(groups=["ops"], moderated_by=[bad])  # type: ignore[list-item]


@pytest.fixture
def moderated():
    clock = Clock()
    session = MasterSession(OpenRequest(worker="prod-1"), ALICE, lambda s: None, clock=clock)
    events = Events()
    session.viewer_events = events
    to_owner: list[tuple] = []
    to_worker: list[tuple] = []
    owner = session.start(ToViewer(lambda *a: to_owner.append(a)), ToWorker(lambda *a: to_worker.append(a)))
    session.hold_input(("leads",))
    return session, owner, to_owner, to_worker, events, clock


def notices(sent: list[tuple]) -> list[bytes]:
    return [m[2] for m in sent if m[0] == "output" and m[1] == 2]


def test_input_is_held_until_a_moderator_watches_and_again_once_the_last_left(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    assert b"input is held until a moderator watches (moderated_by: leads)" in notices(to_owner)[0]
    to_owner.clear()
    session.viewer_input(owner, b"rm -rf /\r")
    session.viewer_input(owner, b"x")
    session.viewer_eof(owner)
    session.viewer_signal(owner, signal.SIGINT)
    assert to_worker == []  # nothing reached the worker
    assert ("input_ack", 9, False) in to_owner and ("input_ack", 1, False) in to_owner  # credit back at once
    assert len(notices(to_owner)) == 1  # told once per held span
    session.worker_output(1, b"output flows")
    assert ("output", 1, b"output flows") in to_owner

    watcher: list[tuple] = []
    bob = session.add_viewer(BOB, Role.WATCH, ToViewer(lambda *a: watcher.append(a)), moderator=True)
    assert not session.moderation.held
    assert (DROPPED, "alice", "10 bytes in 2 messages, 1 EOF, 1 signals dropped while input was held") \
        in events.moderation_events
    session.viewer_input(owner, b"ls\r")
    assert to_worker == [("input", b"ls\r")]
    clock.now += 12
    session.remove_viewer(bob, "left")
    assert session.moderation.held
    assert (MODERATE_START, "bob", "input released") in events.moderation_events
    assert (MODERATE_END, "bob", "moderated 12.0 s (left)") in events.moderation_events
    assert (HELD, "alice", "the last moderator (bob) left") in events.moderation_events
    session.viewer_input(owner, b"again\r")
    assert to_worker == [("input", b"ls\r")]


def test_a_moderator_does_not_release_their_own_input(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    bob_join = session.add_viewer(BOB, Role.JOIN, ToViewer())
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    session.viewer_input(bob_join, b"bob types\r")
    assert to_worker == []  # nobody else moderates bob
    session.viewer_input(owner, b"alice types\r")
    assert to_worker == [("input", b"alice types\r")]


def test_a_watcher_not_admitted_as_moderator_releases_nothing(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    session.add_viewer(CAROL, Role.WATCH, ToViewer(), moderator=False)
    session.viewer_input(owner, b"x")
    assert to_worker == [] and session.moderation.held


def test_a_flood_while_held_is_counted_not_kept(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    for _ in range(10_000):
        session.viewer_input(owner, b"y" * 100)
    assert to_worker == [] and len(notices(to_owner)) == 2  # the open's notice and one for the span
    assert session.moderation.dropped[owner].nbytes == 1_000_000 and owner.input_window.in_flight == 0
    session.end(ExitStatus(code=0))
    assert (DROPPED, "alice", "1000000 bytes in 10000 messages dropped while input was held") \
        in events.moderation_events


def test_the_end_closes_every_moderators_span(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    clock.now += 3
    session.end(ExitStatus(code=0))
    assert events.moderation_events[-1] == (MODERATE_END, "bob", "moderated 3.0 s (the session ended)")
    assert not any(kind == HELD and "left" in detail for kind, _, detail in events.moderation_events)


@pytest.fixture
def moderated_bulk():
    """A four-eyes session without a terminal (`buildbot-shell -T prod-1`, a login shell: its input is held), on a
    worker that takes stdout_closed."""
    return _bulk()


def test_the_owners_stdout_closed_waits_for_a_moderator_as_its_input_does_and_comes_before_later_input(
        moderated_bulk) -> None:
    """OpenSSH's eow@openssh.com is a message of the client's channel, in order with its data, EOF and signals; it
    makes the command's next write fail, as a signal would. Held, it reaches the worker only at the release, once,
    before whatever the owner sends after it; the owner is told why its command goes on meanwhile."""
    session, owner, to_owner, to_worker, clock = moderated_bulk
    to_owner.clear()
    session.viewer_input(owner, b"typed blind\n")
    session.viewer_stdout_closed(owner)
    session.viewer_stdout_closed(owner)  # a repeat changes nothing
    session.viewer_signal(owner, signal.SIGINT)
    assert to_worker == []  # nothing reached the worker while held
    told = notices(to_owner)
    assert any(b"the close of your output reaches the worker once one does" in n for n in told), told
    assert session.live
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    session.viewer_input(owner, b"after\n")
    assert to_worker == [("stdout_closed",), ("input", b"after\n")]  # the close first, once; the held input never
    bob2 = session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    session.remove_viewer(bob2, "left")
    session.viewer_stdout_closed(owner)
    assert to_worker.count(("stdout_closed",)) == 1


def test_a_held_stdout_closed_goes_with_the_client_it_came_from_or_the_sessions_end(moderated_bulk) -> None:
    session, owner, to_owner, to_worker, clock = moderated_bulk
    session.viewer_stdout_closed(owner)
    session.viewer_lost(owner)  # detached: the reader that went away was that client's
    again = session.add_viewer(ALICE, Role.OWNER, ToViewer())
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    assert to_worker == []  # the new client reads its output: nothing is closed
    session.viewer_stdout_closed(again)
    assert to_worker == [("stdout_closed",)]  # released now: at once
    session2, owner2, _, to_worker2, _ = _bulk()
    session2.viewer_stdout_closed(owner2)
    session2.end(ExitStatus(code=0))
    assert to_worker2 == []


def test_without_four_eyes_or_once_released_stdout_closed_goes_at_once(moderated_bulk) -> None:
    session, owner, to_owner, to_worker, clock = moderated_bulk
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    session.viewer_stdout_closed(owner)
    assert to_worker == [("stdout_closed",)]


def test_on_a_terminal_the_owners_stdout_closed_still_ends_its_own_session_while_held(moderated) -> None:
    """A terminal session has no half-close: the owner's reader gone closes it, as before, held or not (the
    operator may always end their own session)."""
    session, owner, to_owner, to_worker, events, clock = moderated
    session.stdout_closes = True
    session.viewer_stdout_closed(owner)
    assert to_worker == [("close",)] and not session.moderation.passes(owner)


def _bulk() -> tuple:
    clock = Clock()
    session = MasterSession(OpenRequest(worker="prod-1", pty=False), ALICE, lambda s: None, clock=clock)
    session.viewer_events = Events()
    session.stdout_closes = True
    to_owner: list[tuple] = []
    to_worker: list[tuple] = []
    owner = session.start(ToViewer(lambda *a: to_owner.append(a)), ToWorker(lambda *a: to_worker.append(a)))
    session.hold_input(("leads",))
    return session, owner, to_owner, to_worker, clock


# -- the reporters' notice (master_side.holds.moderator_notices) ---------------------------------------------

WANTED = ModeratorWanted("5f6645fe7bc5", "prod-1", "alice", "leads, web:leads", 1_800_000_000.0, OPENED,
                         "INC-7", None, None)


def notice(message: object, generator: ModeratorNoticeGenerator | None = None) -> Any:
    master = SimpleNamespace(config=SimpleNamespace(title="CI", buildbotURL="http://ci/"))
    done: list[Any] = []
    (generator or ModeratorNoticeGenerator()).generate(
        master, SimpleNamespace(), ("slaveshell", "sessions", "5f6645fe7bc5", "moderator_wanted"), message
    ).addBoth(done.append)
    (result,) = done
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_the_notice_comes_back_whole_through_json_and_a_forged_one_is_refused() -> None:
    message = json.loads(json.dumps(WANTED.to_message()))
    assert ModeratorWanted.from_message(message) == WANTED
    for bad in ({**message, "started": "now"}, {**message, "worker": ""}, {**message, "extra": 1},
                {k: v for k, v in message.items() if k != "why"}, [message], {**message, "reason": 3}):
        assert ModeratorWanted.from_message(bad) is None
        assert notice(bad) is None
    key = ("slaveshell", "sessions", WANTED.session_id, "moderator_wanted")
    assert any(matchTuple(key, wanted) for wanted in ModeratorNoticeGenerator.wanted_event_keys)


def test_the_plain_notice_says_who_waits_who_moderates_and_how_with_untrusted_text_made_visible() -> None:
    forged = {**WANTED.to_message(), "operator": "mallory\x1b[2J", "why": "the last moderator (bob) left"}
    r = notice(forged)
    body = r["body"]
    assert body.startswith("Session 5f6645fe7bc5 on worker prod-1 waits for a second person.\n")
    assert "mallory\\x1b[2J opened it at 2027-01-15 08:00:00 UTC (INC-7)" in body and "\x1b" not in body
    assert "held until a moderator watches again: the last moderator (bob) left." in body
    assert "    slaveshell watch 5f6645fe7bc5\n" in body and "`slaveshell kill 5f6645fe7bc5`" in body
    assert r["subject"] == "Buildbot (CI): session 5f6645fe7bc5 on prod-1 waits for a second person"
    html = notice({**forged, "reason": "<script>"},
                  ModeratorNoticeGenerator(message_formatter=ModeratorNoticeFormatter(template_type="html")))["body"]
    assert "(&lt;script&gt;)" in html and "<script>" not in html


def test_filters_by_worker_and_never_by_builder() -> None:
    assert notice(WANTED.to_message(), ModeratorNoticeGenerator(workers=["prod-2"])) is None
    assert notice(WANTED.to_message(), ModeratorNoticeGenerator(builders=["any"])) is None
    assert notice(WANTED.to_message(), ModeratorNoticeGenerator(workers=["prod-1"])) is not None


def test_notices_are_paced_per_session_and_in_all() -> None:
    clock = Clock()
    pace = NoticePace(clock)
    assert pace.take("s1", first=True)
    assert not pace.take("s1", first=False)  # the last moderator left soon after: not again yet
    clock.now += REPEAT_AFTER
    assert pace.take("s1", first=False)
    assert sum(pace.take(f"n{i}", first=True) for i in range(100)) == PER_MINUTE - 1  # one already this minute
    clock.now += 60
    assert pace.take("later", first=True)
    assert len(pace._last) <= 4 * PER_MINUTE + 1


def test_approval_notices_have_a_pace_of_their_own() -> None:
    """A burst of four-eyes sessions' notices does not hold back an approval request's notice, nor the other way
    round; each stays bounded a minute."""
    from master_side.holds.step import Holds
    from master_side.operators.api import OperatorAPI

    clock = Clock()
    api = OperatorAPI(SimpleNamespace(clock=clock, limits=None), None, None, lambda: None, lambda: None,
                      Holds())  # type: ignore[arg-type]
    sessions: list[str] = []
    requests: list[str] = []
    api.moderator_wanted = lambda session, why: sessions.append(session.id)
    api.approval_wanted = lambda request: requests.append(request.id)
    for i in range(100):
        api._wanted(SimpleNamespace(id=f"s{i}"), OPENED)  # type: ignore[arg-type]
    assert len(sessions) == PER_MINUTE
    for i in range(100):
        api.approvals.wanted(SimpleNamespace(id=f"r{i}"))  # type: ignore[arg-type]
    assert requests[:1] == ["r0"] and len(requests) == APPROVALS_PER_MINUTE
    clock.now += 61
    for i in range(100):
        api.approvals.wanted(SimpleNamespace(id=f"again{i}"))  # type: ignore[arg-type]
    api._wanted(SimpleNamespace(id="after"), OPENED)  # type: ignore[arg-type]
    assert sessions[-1] == "after" and len(requests) == 2 * APPROVALS_PER_MINUTE


def test_a_moderator_coming_and_going_cannot_flood_the_operator(moderated) -> None:
    session, owner, to_owner, to_worker, events, clock = moderated
    to_owner.clear()
    for _ in range(50):
        bob = session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
        session.remove_viewer(bob, "left")
    changes = [n for n in notices(to_owner) if b"moderat" in n]
    assert len(changes) == 5  # NoticeBudget's five a minute (and five of "bob is now watching", the joins')
    clock.now += 61
    session.viewer_input(owner, b"x")  # held again, and told so once
    session.add_viewer(BOB, Role.WATCH, ToViewer(), moderator=True)
    last = notices(to_owner)[-1]
    assert b"bob moderates this session" in last and b"more changes not shown" in last
