"""Approvals without I/O (master_side.operators.approvals): who may approve (another person, in the moderators'
groups, with 'watch'; a web user not the operator of the same name), the bounds per operator and in total, the
expiry on the reactor's clock, a withdrawal when the operator leaves, and the audit events of each step. Against
real processes: tests/e2e/test_approvals_e2e.py."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from master_side.holds.moderator_notices import APPROVAL, ModeratorNoticeFormatter, ModeratorWanted
from master_side.operators.approvals import (
    APPROVED,
    ASKED,
    DENIED,
    EXPIRED,
    LISTED_WHAT,
    MAX_WHAT,
    WITHDRAWN,
    ApprovalLimits,
    Approvals,
    Approved,
    Kind,
)
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.worker_link import subscribe
from slaveshell.policy import Policy, Rule, WebIdentity
from slaveshell.vocabulary.policy import ClusterIdentity, Identity

ALICE = Identity(1000, 1000, 1, "alice", frozenset({"ops"}))
BOB = Identity(1001, 1001, 2, "bob", frozenset({"ops", "leads"}))
CAROL = Identity(1002, 1002, 3, "carol", frozenset({"ops"}))
DAVE = Identity(1003, 1003, 4, "dave", frozenset({"leads"}))  # a lead without 'watch' on prod-1
WEB_ALICE = WebIdentity.from_web("alice", ["leads"])

POLICY = Policy([
    Rule(groups=["ops"], workers=["prod-*"], rights=["shell", "watch", "copy"], moderated_by=["leads", "web:leads"]),
    Rule(users=["web:alice"], rights=["watch"]),
    Rule(groups=["cluster:A/leads", "cluster:C/leads"], rights=["watch"]),
])


class Record:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def approval(self, kind: str, worker: str, who: Identity, detail: str, record_id: str | None = None) -> None:
        self.events.append((kind, who.user, detail))


class Harness:
    def __init__(self, limits: ApprovalLimits | None = None) -> None:
        self.clock = task.Clock()
        self.record = Record()
        self.refused: list[tuple[str, str]] = []
        self.told: list[str] = []
        self.wanted: list[str] = []
        self.gone: list[list] = []

        def refuse(who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError:
            self.refused.append((who.user, message))
            return OperatorError(kind, message)

        self.approvals = Approvals(lambda: POLICY, lambda: self.clock, lambda: self.record, refuse)
        self.approvals.limits = limits or ApprovalLimits()
        self.approvals.wanted = lambda request: self.wanted.append(request.id)

    def ask(self, who: Identity = ALICE, what: str = "cp up: a -> prod-1:/srv/a") -> tuple[defer.Deferred, str, list]:
        callbacks: list = []
        self.gone.append(callbacks)
        d = self.approvals.ask(who, "prod-1", Kind.COPY, what, "INC-1", ("leads", "web:leads"), self.told.append,
                               [lambda cb: subscribe(callbacks, cb)])
        results: list = []
        d.addBoth(results.append)
        return d, self.told[-1].split("request ")[1].split()[0], results


def test_a_moderator_approves_and_the_operator_is_told_what_it_waits_for() -> None:
    h = Harness()
    _, request_id, results = h.ask()
    assert h.told[-1] == (f"worker prod-1 is moderated: request {request_id} waits for a moderator's approval "
                          f"(moderated_by: leads, web:leads, with the watch right, not you: slaveshell approve "
                          f"{request_id}); at most 15 min; Ctrl-C or a cancel withdraws it")
    assert h.wanted == [request_id] and results == []
    assert [r["id"] for r in h.approvals.listing(BOB)] == [request_id]
    assert h.approvals.listing(CAROL) == []  # not a moderator, not hers
    assert h.approvals.listing(ALICE)[0]["mine"] is True and h.approvals.listing(ALICE)[0]["may_approve"] is False
    assert h.approvals.approve(BOB, request_id).endswith("approved: it starts now")
    (done,) = results
    assert isinstance(done, Approved) and done.moderator == BOB and done.request.what == "cp up: a -> prod-1:/srv/a"
    assert [(k, who) for k, who, _ in h.record.events] == [(ASKED, "alice"), (APPROVED, "bob")]
    assert h.record.events[0][2] == f"request {request_id} of alice on prod-1, copy: cp up: a -> prod-1:/srv/a " \
                                    "(reason: INC-1)"
    assert h.record.events[1][2] == f"request {request_id} of alice on prod-1, copy"
    assert not h.approvals.pending and not h.clock.getDelayedCalls()


@pytest.mark.parametrize(("who", "why"), [
    (ALICE, "the request's own operator cannot approve or deny it"),
    (WEB_ALICE, "the request's own operator cannot approve or deny it"),  # the same person through the web
    # The same user name through another master of the site (or a name a hostile master makes up): one person.
    (ClusterIdentity.vouched("A", "alice", ["leads"]), "cannot approve or deny it: cluster:A/alice and alice share "
     "the user name 'alice', taken as one person"),
    (ClusterIdentity.vouched("C", "web:Alice", ["leads"]), "share the user name 'alice'"),
    (CAROL, "carol is in none of its moderators' groups"),
    (DAVE, "may not watch on worker prod-1"),
])
def test_who_may_not_decide_is_refused_and_the_refusal_audited(who: Identity, why: str) -> None:
    h = Harness()
    _, request_id, results = h.ask()
    for decide in (lambda: h.approvals.approve(who, request_id), lambda: h.approvals.deny(who, request_id, "no")):
        with pytest.raises(OperatorError) as e:
            decide()
        assert e.value.kind is ErrorKind.DENIED and why in e.value.message
    assert len(h.refused) == 2 and all(m.startswith("not a moderator: ") for _, m in h.refused)
    assert results == [] and request_id in h.approvals.pending


def test_a_request_through_another_master_is_decided_by_another_person_only() -> None:
    """alice asks through master A (B names her cluster:A/alice): B's local alice is refused with the line and the
    refusal audited; bob, another person, approves (local, or vouched for by A when B's rule names A's group)."""
    h = Harness()
    vouched = ClusterIdentity.vouched("A", "alice", ["ops"])
    d = h.approvals.ask(vouched, "prod-1", Kind.COMMAND, "command: make deploy", None, ("leads", "cluster:A/leads"),
                        h.told.append, [])
    results: list = []
    d.addBoth(results.append)
    request_id = h.told[-1].split("request ")[1].split()[0]
    alice_lead = Identity(1000, 1000, 9, "alice", frozenset({"ops", "leads"}))
    assert h.approvals.listing(alice_lead) == []  # not hers to decide, not hers as an operator here either
    with pytest.raises(OperatorError) as e:
        h.approvals.approve(alice_lead, request_id)
    assert e.value.kind is ErrorKind.DENIED
    assert e.value.message == (f"not a moderator: approve {request_id}: the request's own operator cannot approve or "
                               "deny it: alice and cluster:A/alice share the user name 'alice', taken as one person "
                               "(four eyes need another person, whatever door or master each came through)")
    assert h.refused == [("alice", e.value.message)]  # audited (OperatorAPI.refuse: a `refused` event)
    assert results == [] and request_id in h.approvals.pending
    bob_of_a = ClusterIdentity.vouched("A", "bob", ["leads"])
    assert h.approvals.approve(bob_of_a, request_id).endswith("approved: it starts now")
    assert isinstance(results[0], Approved) and results[0].moderator == bob_of_a
    assert [(k, who) for k, who, _ in h.record.events] == [(ASKED, "cluster:A/alice"), (APPROVED, "cluster:A/bob")]


def test_a_denial_tells_the_operator_the_moderators_reason() -> None:
    h = Harness()
    _, request_id, results = h.ask()
    h.approvals.deny(BOB, request_id, "not now")
    (failure,) = results
    assert failure.value.kind is ErrorKind.DENIED
    assert failure.value.message == f"request {request_id} denied by moderator bob: not now"
    assert h.record.events[-1][0] == DENIED and h.record.events[-1][2].endswith("; denied: not now")
    with pytest.raises(OperatorError) as e:
        h.approvals.approve(BOB, request_id)
    assert e.value.kind is ErrorKind.NOT_FOUND


def test_bounds_per_operator_and_in_total_are_refused_and_audited() -> None:
    h = Harness(ApprovalLimits(per_operator=2, total=3, wait=60))
    h.ask()
    h.ask()
    with pytest.raises(OperatorError) as e:
        h.ask()
    assert e.value.kind is ErrorKind.LIMIT and "alice already waits for 2 approvals" in e.value.message
    h.ask(CAROL)
    with pytest.raises(OperatorError) as e:
        h.ask(BOB)
    assert "3 requests already wait for a moderator's approval (the master's limit)" in e.value.message
    assert [who for who, _ in h.refused] == ["alice", "bob"]
    assert len(h.approvals.pending) == 3


def test_an_unanswered_request_expires_and_a_leaving_operator_withdraws_it() -> None:
    h = Harness(ApprovalLimits(wait=60))
    _, expiring, expired = h.ask()
    _, leaving, withdrawn = h.ask(CAROL)
    for callback in list(h.gone[1]):
        callback()  # carol's connection closes
    assert withdrawn[0].value.kind is ErrorKind.STOPPED and h.record.events[-1][:2] == (WITHDRAWN, "carol")
    h.clock.advance(59)
    assert expired == []
    h.clock.advance(1)
    assert expired[0].value.kind is ErrorKind.LIMIT
    assert expired[0].value.message.startswith(f"request {expiring}: no moderator approved it within 60 s")
    assert h.record.events[-1][:2] == (EXPIRED, "alice") and not h.approvals.pending
    assert not h.gone[0]  # its subscription undone


def test_the_service_stopping_withdraws_every_request() -> None:
    h = Harness()
    results = [h.ask()[2], h.ask(CAROL)[2]]
    h.approvals.stop()
    assert all(r[0].value.kind is ErrorKind.STOPPED for r in results) and not h.approvals.pending


def test_the_reporters_notice_asks_for_an_approval() -> None:
    event = ModeratorWanted("ab12cd34", "prod-1", "alice", "leads", 1e9, APPROVAL, "INC-1", None, None, "copy")
    assert ModeratorWanted.from_message(event.to_message()) == event
    formatter = ModeratorNoticeFormatter()
    assert "Request {{ session }} on worker" in formatter.default_templates["plain"]


def test_a_long_request_is_cut_only_in_the_listing_of_all_and_a_longer_one_refused() -> None:
    h = Harness()
    what = "command: echo " + " " * 3000 + "; rm -rf /srv"
    _, request_id, _ = h.ask(what=what)
    (row,) = h.approvals.listing(BOB)
    assert row["what"] == what[:LISTED_WHAT] and row["what_chars"] == len(what)
    (whole,) = h.approvals.listing(BOB, request_id)
    assert whole["what"] == what  # nothing a moderator approves is hidden from them
    with pytest.raises(OperatorError) as e:
        h.approvals.listing(CAROL, request_id)
    assert e.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(OperatorError) as e:
        h.ask(CAROL, what="x" * (MAX_WHAT + 1))
    assert e.value.kind is ErrorKind.LIMIT and "longer than" in e.value.message


def test_an_operator_gone_before_the_request_is_asked_leaves_nothing_pending() -> None:
    """A subscription that fires at once (the run was interrupted, the page's socket closed, while the request
    was being routed): withdrawn at once, not left to expire."""
    h = Harness()

    def gone(callback):  # type: ignore[no-untyped-def]
        callback()
        return lambda: None

    results: list = []
    h.approvals.ask(ALICE, "prod-1", Kind.RUN, "fleet run r1, command: true", None, ("leads",), h.told.append,
                    [gone], "r1").addBoth(results.append)
    assert results[0].value.kind is ErrorKind.STOPPED
    assert not h.approvals.pending and not h.clock.getDelayedCalls() and h.wanted == []
    assert [k for k, _, _ in h.record.events] == [ASKED, WITHDRAWN]


def ask_part(h: Harness, who: Identity = ALICE, run: str = "r1") -> tuple[list, list]:
    """A fleet run's part: it may wait for a free place. Its results, and its leaving callbacks."""
    callbacks: list = []
    results: list = []
    h.approvals.ask(who, "prod-1", Kind.RUN, f"fleet run {run}, command: true", None, ("leads",), h.told.append,
                    [lambda cb: subscribe(callbacks, cb)], run, place=True).addBoth(results.append)
    return results, callbacks


def test_a_runs_part_past_the_operators_bound_waits_for_a_free_place_and_is_asked_once_one_is_free() -> None:
    h = Harness(ApprovalLimits(per_operator=2, total=32, wait=60))
    _, own_command, own_results = h.ask(what="command: make deploy")  # alice's own, waiting on another worker
    first, _ = ask_part(h)
    queued, _ = ask_part(h)
    # Not refused: it waits, and alice is told why; the bound holds (nothing past it is pending, or audited).
    assert queued == [] and h.refused == []
    assert h.told[-1] == ("worker prod-1 is moderated: its approval request waits for a free place (alice already "
                          "waits for 2 approvals (the master's limit per operator)); it is asked as soon as one of "
                          "those is approved, denied, withdrawn or expires; at most 1 min; Ctrl-C or a cancel "
                          "withdraws it")
    assert len(h.approvals.pending) == 2 and [k for k, _, _ in h.record.events] == [ASKED, ASKED]
    # A command is still refused at once (an operator at a terminal asks again).
    with pytest.raises(OperatorError) as e:
        h.ask(what="command: ls")
    assert e.value.kind is ErrorKind.LIMIT and "alice already waits for 2 approvals" in e.value.message
    # Her command is approved: its place goes to the waiting part, asked now.
    h.approvals.approve(BOB, own_command)
    assert isinstance(own_results[0], Approved) and queued == []
    assert [k for k, _, _ in h.record.events] == [ASKED, ASKED, APPROVED, ASKED]
    assert h.told[-1].startswith("worker prod-1 is moderated: request ") and not h.approvals.queued
    asked_now = h.record.events[-1][2].split()[1]
    assert h.approvals.pending[asked_now].request.run_id == "r1"
    h.approvals.approve(BOB, asked_now)
    assert isinstance(queued[0], Approved) and queued[0].request.id == asked_now and first == []


def test_a_waiting_part_is_asked_when_a_request_expires_or_is_withdrawn_and_ctrl_c_ends_its_wait() -> None:
    h = Harness(ApprovalLimits(per_operator=1, total=32, wait=60))
    _, _, expiring = h.ask(what="command: make deploy")
    h.clock.advance(10)
    part, _ = ask_part(h)
    gone, gone_callbacks = ask_part(h, run="r2")
    assert len(h.approvals.queued) == 2
    # Ctrl-C on run r2 while it waits for a place: its wait ends, nothing was asked (nothing to audit).
    for callback in list(gone_callbacks):
        callback()
    assert gone[0].value.kind is ErrorKind.STOPPED and "free place" in gone[0].value.message
    assert not gone_callbacks and len(h.approvals.queued) == 1
    h.clock.advance(50)  # alice's command expires: the part is asked
    assert expiring[0].value.kind is ErrorKind.LIMIT and part == []
    assert [k for k, _, _ in h.record.events] == [ASKED, EXPIRED, ASKED] and not h.approvals.queued
    again, _ = ask_part(h, run="r3")
    part_id = h.record.events[-1][2].split()[1]
    h.approvals._withdrawn(part_id)  # its run was interrupted: the next one is asked
    assert part[0].value.kind is ErrorKind.STOPPED and again == []
    assert [k for k, _, _ in h.record.events][-2:] == [WITHDRAWN, ASKED]
    h.approvals.stop()
    assert again[0].value.kind is ErrorKind.STOPPED and not h.approvals.pending and not h.approvals.queued


def test_the_places_waited_for_are_bounded_per_operator_per_calling_master_and_in_total() -> None:
    h = Harness(ApprovalLimits(per_operator=1, total=2, per_master=1, queued_per_operator=2, queued_per_master=1,
                               queued=3))
    h.ask()
    ask_part(h)
    ask_part(h)
    with pytest.raises(OperatorError) as e:
        ask_part(h)
    assert e.value.kind is ErrorKind.LIMIT and e.value.message.startswith(
        "approvals refused: alice already waits for 1 approvals (the master's limit per operator), and 2 more "
        "wait for a free place (the master's limit per operator)")
    a_carol = ClusterIdentity.vouched("A", "carol", ["ops"])
    a_dave = ClusterIdentity.vouched("A", "dave", ["ops"])
    h.ask(a_carol)  # master A's one place
    ask_part(h, a_dave)  # waits (A's bound)
    with pytest.raises(OperatorError) as e:
        ask_part(h, ClusterIdentity.vouched("A", "erin", ["ops"]))
    assert "of master A's operators wait for a free place" in e.value.message
    with pytest.raises(OperatorError) as e:
        ask_part(h, CAROL)  # the master's total (2 pending, 3 waiting)
    assert "3 requests wait for a free place (the master's limit)" in e.value.message
    assert [who for who, _ in h.refused] == ["alice", "cluster:A/erin", "carol"]
    assert len(h.approvals.pending) == 2 and len(h.approvals.queued) == 3


def test_a_part_waiting_for_a_place_is_listed_marked_so_to_its_operator_and_its_moderators() -> None:
    h = Harness(ApprovalLimits(per_operator=1, total=32, wait=60))
    _, own_command, _ = h.ask(what="command: make deploy")
    h.clock.advance(5)
    part, _ = ask_part(h, run="r7")
    (asked, waiting) = h.approvals.listing(ALICE)
    assert asked["id"] == own_command and asked["waits_for_place"] is False
    assert {k: waiting[k] for k in ("operator", "worker", "kind", "run", "mine", "waits_for_place", "expires")} == {
        "operator": "alice", "worker": "prod-1", "kind": "run", "run": "r7", "mine": True, "waits_for_place": True,
        "expires": 65.0}  # the approval wait, from when it began to wait
    part_id = str(waiting["id"])
    # A moderator sees it coming, and may decide it once it is asked; whoever may not moderate does not see it.
    assert [(r["id"], r["may_approve"], r["waits_for_place"]) for r in h.approvals.listing(BOB)] == [
        (own_command, True, False), (part_id, True, True)]
    assert h.approvals.listing(CAROL) == []
    assert h.approvals.listing(BOB, part_id)[0]["what"] == "fleet run r7, command: true"
    with pytest.raises(OperatorError) as e:
        h.approvals.approve(BOB, part_id)
    assert e.value.kind is ErrorKind.NOT_FOUND and e.value.message == (
        f"request {part_id} is not asked yet: it waits for a free place; a moderator decides it once it is asked")
    # Asked once alice's command is approved: under the same id, no longer marked.
    h.approvals.approve(BOB, own_command)
    (row,) = h.approvals.listing(BOB)
    assert row["id"] == part_id and row["waits_for_place"] is False and row["expires"] == 65.0
    h.approvals.approve(BOB, part_id)
    assert isinstance(part[0], Approved) and part[0].request.id == part_id


def test_a_part_waiting_for_a_place_expires_after_the_approval_wait_from_when_it_began_to_wait() -> None:
    """alice's command holds her one place; the parts of runs r1 (t=0) and r2 (t=10) wait. At t=20 her command is
    withdrawn: r1's part is asked, with what remains of its wait (40 s, told so, listed so); r2's still waits, and
    expires at t=70, never asked, told why, audited; r1's request expires at t=60, the approval wait after it was
    made, saying how much of it went waiting for a place."""
    h = Harness(ApprovalLimits(per_operator=1, total=32, wait=60))
    _, own_command, _ = h.ask(what="command: make deploy")
    first, _ = ask_part(h, run="r1")
    h.clock.advance(10)
    second, second_callbacks = ask_part(h, run="r2")
    second_id = str(h.approvals.listing(ALICE)[-1]["id"])
    h.clock.advance(10)
    h.approvals._withdrawn(own_command)
    assert len(h.approvals.pending) == 1 and len(h.approvals.queued) == 1
    first_id = h.record.events[-1][2].split()[1]
    assert h.told[-1].endswith(f"not you: slaveshell approve {first_id}); at most 40 s (what remains of 1 min, 20 s "
                               "of it spent waiting for a free place to be asked); Ctrl-C or a cancel withdraws it")
    row = next(r for r in h.approvals.listing(BOB) if r["id"] == first_id)
    assert row["asked"] == 20.0 and row["expires"] == 60.0 and row["waits_for_place"] is False
    h.clock.advance(39)
    assert first == [] and second == []
    h.clock.advance(1)
    assert first[0].value.kind is ErrorKind.LIMIT and first[0].value.message == (
        f"request {first_id}: no moderator approved it within 60 s (the master's limit, 20 s of it spent waiting for "
        "a free place to be asked); worker prod-1 is moderated (moderated_by: leads)")
    assert second == []  # r1's end frees a place, not time: r2's part is asked with the 10 s it has left
    assert h.told[-1].endswith("at most 10 s (what remains of 1 min, 50 s of it spent waiting for a free place to "
                               "be asked); Ctrl-C or a cancel withdraws it")
    h.clock.advance(10)
    assert second[0].value.kind is ErrorKind.LIMIT and second[0].value.message.startswith(
        f"request {second_id}: no moderator approved it within 60 s (the master's limit, 50 s of it spent waiting")
    assert not second_callbacks  # its subscriptions undone
    assert [k for k, _, _ in h.record.events] == [ASKED, WITHDRAWN, ASKED, EXPIRED, ASKED, EXPIRED]
    assert not h.approvals.pending and not h.approvals.queued and not h.clock.getDelayedCalls()


def test_a_part_whose_wait_ends_as_a_place_comes_free_expires_never_asked() -> None:
    """The part began to wait with alice's command (t=0): both waits end at t=60. The place her command frees
    comes with no time left: the part is not asked (no moderator called for nothing), it expires never asked."""
    h = Harness(ApprovalLimits(per_operator=1, total=32, wait=60))
    _, _, command = h.ask(what="command: make deploy")
    part, _ = ask_part(h)
    part_id = str(h.approvals.listing(ALICE)[-1]["id"])
    h.clock.advance(60)
    assert command[0].value.kind is ErrorKind.LIMIT and part[0].value.kind is ErrorKind.LIMIT
    assert part[0].value.message.startswith(f"request {part_id}: no place came free within 60 s")
    assert [k for k, _, _ in h.record.events] == [ASKED, EXPIRED, EXPIRED] and h.wanted == [h.wanted[0]]
    assert not h.approvals.pending and not h.approvals.queued and not h.clock.getDelayedCalls()


def test_slaveshell_approvals_lists_the_parts_waiting_for_a_place_escaped(monkeypatch, capsys) -> None:
    import argparse
    import time

    from slaveshell.client import approval_cli

    hostile = "ev\x1b]0;T\x07\x1b[2Jil"
    expires = time.time() + 90
    rows = [{"id": "aaaaaaaaaaaa", "operator": "alice", "worker": "prod-1", "kind": "command", "what": "command: ls",
             "what_chars": 11, "reason": None, "expires": expires, "run": None, "mine": False, "may_approve": True,
             "waits_for_place": False},
            {"id": "bbbbbbbbbbbb", "operator": hostile, "worker": "prod-\x1b[2J2", "kind": "run",
             "what": "fleet run r9, command: \x1b[2Jtrue", "what_chars": 30, "reason": None, "expires": expires,
             "run": "r9\x07", "mine": False, "may_approve": True, "waits_for_place": True}]
    monkeypatch.setattr(approval_cli, "find_socket", lambda args: "socket")
    monkeypatch.setattr(approval_cli, "call_master", lambda *a, **k: {"rows": rows})
    args = argparse.Namespace(request=None, json=False)
    assert approval_cli.cmd_approvals(args) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert lines[0].startswith("REQUEST ") and lines[1].startswith("aaaaaaaaaaaa  alice ")
    assert lines[3] == ("1 waiting for a free place to be asked (fleet runs' parts past the bounds on requests; a "
                        "moderator decides each once it is asked):")
    assert lines[4].split() == ["REQUEST", "OPERATOR", "WORKER", "RUN", "LEFT", "REASON", "WHAT"]
    assert lines[5].startswith("bbbbbbbbbbbb  ev\\x1b]0;T\\… prod-\\x1b[2J2    r9\\x07         1m2")
    assert lines[5].endswith("fleet run r9, command: \\x1b[2Jtrue")
    monkeypatch.setattr(approval_cli, "call_master", lambda *a, **k: {"rows": rows[1:]})
    assert approval_cli.cmd_approvals(argparse.Namespace(request="bbbbbbbbbbbb", json=False)) == 0
    one = capsys.readouterr().out
    assert "state:        waits for a free place to be asked (a moderator decides it once it is)" in one
    assert "run:          r9\\x07" in one and "you:          you may approve or deny it once it is asked" in one
    assert "\x1b" not in one and "\x07" not in one


class CopyParty:
    """The operator's end of a copy, as its door gives it: only its disconnection is asked for here."""

    def __init__(self) -> None:
        self.left: list = []

    def on_disconnect(self, callback):  # type: ignore[no-untyped-def]
        return subscribe(self.left, callback)


def copy_api(routes: list[object]):  # type: ignore[no-untyped-def]
    """An OperatorAPI for `copy` on prod-1 with its approvals on a clock of their own: `routes`, what the worker's
    route gives each time it is asked (a connection, or a RouteError raised); nothing is started."""
    from types import SimpleNamespace

    from master_side.glue.buildbot import RouteError
    from master_side.holds.step import Holds
    from master_side.operators.api import OperatorAPI

    record, refused, clock = Record(), [], task.Clock()

    def route(worker: str) -> object:
        given = routes.pop(0)
        if isinstance(given, RouteError):
            raise given
        return given

    trail = SimpleNamespace(master_name="host:/srv/master", refused=lambda who, worker, line: refused.append(line),
                            approval=record.approval)
    registry = SimpleNamespace(limits=SimpleNamespace(per_worker=None, per_operator=None), clock=clock.seconds,
                               live=lambda: [])
    api = OperatorAPI(registry, SimpleNamespace(route=route), None, lambda: trail, lambda: None,  # type: ignore[arg-type]
                      Holds())
    api.policy = POLICY
    api.approvals = Approvals(lambda: api.policy, lambda: clock, lambda: trail, api.refuse)  # type: ignore[arg-type]
    return api, record, refused


def ask_copy(api, told: list[str]) -> tuple[list, str]:  # type: ignore[no-untyped-def]
    from slaveshell.vocabulary.copying import UP, TransferRequest

    results: list = []
    api.copy(ALICE, TransferRequest(UP, "prod-1", ("a",), "/srv/a", reason="INC-1"), CopyParty(),
             told.append).addBoth(results.append)
    assert results == [], results  # it waits for a moderator
    return results, told[-1].split("request ")[1].split()[0]


def test_a_copy_refused_after_its_approval_is_audited_unused_by_the_rule_an_open_follows() -> None:
    """The policy changed while the copy waited (a reconfig took alice's copy right away): the copy is refused,
    audited, and the approval is said not used, as an approved session's open refused then is."""
    api, record, refused = copy_api([object(), object()])
    told: list[str] = []
    results, request_id = ask_copy(api, told)
    api.policy = Policy([Rule(groups=["leads"], workers=["prod-*"], rights=["watch"])])
    assert api.approve(BOB, request_id).endswith("approved: it starts now")
    (failure,) = results
    assert failure.value.kind is ErrorKind.DENIED and failure.value.message.startswith("permission denied: ")
    assert refused == [failure.value.message]
    assert record.events[-1] == (
        "approval-unused", "alice", f"request {request_id} of alice on prod-1, copy: approved by bob, not used: the "
                                    f"transfer did not start: {failure.value.message}")
    assert [k for k, _, _ in record.events] == [ASKED, APPROVED, "approval-unused"]


def test_a_copy_whose_worker_went_or_refused_after_its_approval_is_audited_unused() -> None:
    from master_side.copying.relay import TransferRefused
    from master_side.glue.buildbot import RouteError

    # The worker went while the copy waited for its moderator: the route asked again refuses it.
    api, record, refused = copy_api([object(), RouteError("worker prod-1 is not connected")])
    told: list[str] = []
    results, request_id = ask_copy(api, told)
    api.approve(BOB, request_id)
    assert results[0].value.kind is ErrorKind.UNAVAILABLE and refused == ["worker prod-1 is not connected"]
    assert record.events[-1][0] == "approval-unused" and record.events[-1][2].endswith(
        "not used: the transfer did not start: worker prod-1 is not connected")
    # The worker refused the transfer (its owner's allowed_dirs): not started, so not used either.
    api, record, refused = copy_api([object(), object()])
    api.transfers.start = lambda *args: defer.fail(TransferRefused("/srv/a is outside the allowed directories"))
    results, request_id = ask_copy(api, told)
    api.approve(BOB, request_id)
    assert results[0].value.kind is ErrorKind.UNAVAILABLE
    assert record.events[-1][2].endswith("not used: the transfer did not start: /srv/a is outside the allowed "
                                         "directories")
    assert [k for k, _, _ in record.events] == [ASKED, APPROVED, "approval-unused"]


def test_a_copy_refused_without_an_approval_writes_no_unused_event() -> None:
    from slaveshell.vocabulary.copying import UP, TransferRequest

    api, record, refused = copy_api([object()])
    api.policy = Policy([Rule(groups=["ops"], workers=["prod-*"], rights=["copy"])])  # not four-eyes
    api.transfers.quota = lambda *args: "alice already runs 1 transfers on prod-1 (the limit)"
    results: list = []
    api.copy(ALICE, TransferRequest(UP, "prod-1", ("a",), "/srv/a"), CopyParty()).addBoth(results.append)
    assert results[0].value.kind is ErrorKind.LIMIT and record.events == []
