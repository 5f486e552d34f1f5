"""Ending a session another master holds (master_side.cluster.kills): `slaveshell kill ID` and the web page's
*End session* on master A for a session master B serves, over the in-memory router of tests/test_cluster.py, with
B's real operators' API deciding (its policy, its session, its audit) and A's real calling side (its audit event
before the answer). Also: A's listing of B's workers asked afresh once a session it routed opened or ended."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from master_side.cluster.config import master_record_uri
from master_side.cluster.kills import KILL, KILL_BURST, KILL_RATE, TOTAL_BURST, RoutedKills, ServedKills
from master_side.cluster.link import Listing
from master_side.cluster.records import SiteRecords
from master_side.cluster.relay import Relays
from master_side.holds.step import Holds
from master_side.operators.api import OperatorAPI
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.session import MasterSession
from slaveshell.vocabulary.policy import ClusterIdentity, Identity, Policy, Rule
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest
from tests.recorded import ToViewer, ToWorker

from .test_cluster import Router
from .test_cluster_routed import OperatorSink, link_of

ALICE = Identity(1000, 1000, 1, "alice", frozenset({"alice", "ops"}))
LEAD = Identity(1001, 1001, 2, "lead", frozenset({"leads"}))
CAROL = Identity(1002, 1002, 3, "carol", frozenset({"ops"}))


class Trail:
    """What B's and A's audit trails were told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str, str, str]] = []
        self.master_name = "host:/srv/B"

    def killed(self, session: MasterSession, who: Identity, detail: str = "") -> None:
        self.events.append(("kill", session.id, session.worker, who.user, detail))

    def refused(self, who: Identity, worker: str | None, reason: str) -> None:
        self.events.append(("refused", None, worker or "", who.user, reason))


class Registry:
    limits = None

    def __init__(self) -> None:
        self.sessions: dict[str, MasterSession] = {}

    def get(self, session_id: str) -> MasterSession | None:
        return self.sessions.get(session_id)

    def clock(self) -> float:
        return 0.0


class KillSite:
    """Masters A and B on one router. B serves session `s` on its worker b1, opened through A by alice
    (`cluster:A/alice`), and a four-eyes session `fe` of alice's moderated by `cluster:A/leads`; its operators'
    API (real) decides under `policy`."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.clock = task.Clock()
        self.router = Router()
        self.a = link_of("A", self.clock)
        self.b = link_of("B", self.clock, ("b1",))
        self.b_trail = Trail()
        self.audited: list[tuple[str, str, str]] = []
        self.registry = Registry()
        self.api = OperatorAPI(self.registry, None, None, lambda: self.b_trail, lambda: None,  # type: ignore[arg-type]
                               Holds())
        self.api.policy = policy or Policy([
            Rule(groups=["cluster:A/ops"], rights=["shell", "watch"]),
            Rule(groups=["cluster:A/ops"], workers=["b-four-eyes"], rights=["shell", "watch"],
                 moderated_by=["cluster:A/leads"]),
            Rule(groups=["cluster:A/leads"], rights=["watch"]),
        ])
        self.to_worker: dict[str, list[tuple]] = {}
        owner = ClusterIdentity.vouched("A", "alice", ("alice", "ops"))
        for sid, worker in (("s", "b1"), ("fe", "b-four-eyes")):
            session = MasterSession(OpenRequest(worker=worker), owner, lambda s: None)
            session.id = sid
            sent: list[tuple] = self.to_worker.setdefault(sid, [])
            session.start(ToViewer(), ToWorker(lambda *m, sent=sent: sent.append(m)))  # type: ignore[misc]
            if worker == "b-four-eyes":
                session.hold_input(("cluster:A/leads",))
            self.registry.sessions[sid] = session
        self.served = ServedKills(self.b, self.api.kill_for_master,
                                  lambda who, w, m: self.audited.append((who.user, w, m)), self.clock.seconds)
        self.kills = RoutedKills(self.a)
        self.a_records: list[tuple[str, str, str | None, str]] = []
        self.kills.record = lambda who, worker, record_id, detail: self.a_records.append(
            (who.user, worker, record_id, detail))
        self.a._joined(self.router.session(authid="A"), None)
        self.b._joined(self.router.session(authid="B"), None)
        self.b.sync(["b1"], 0.0)

    def kill(self, who: Identity, session_id: str, holder: str | None = None) -> Any:
        d = self.kills.kill(who, session_id, holder)
        result = d.result
        if isinstance(result, Failure):
            d.addErrback(lambda _: None)
            result.raiseException()
        return result

    def hung_up(self, sid: str) -> bool:
        """Whether the worker was told to end session `sid` (its close: HUP, then TERM, then KILL)."""
        return ("close",) in self.to_worker[sid]


def test_a_routes_the_owners_kill_to_b_which_ends_records_and_answers() -> None:
    """`slaveshell kill s` on A for alice's session on B: B ends it for cluster:A/alice (its owner), records it
    naming A, and A records its `routed` event and shows B's line."""
    site = KillSite()
    text = site.kill(ALICE, "s")
    assert text == "session s on b1: hangup sent (then TERM, then KILL)"
    assert site.to_worker["s"] == [("close",)]  # the worker is told to end it (HUP, then TERM, then KILL)
    assert site.b_trail.events == [("kill", "s", "b1", "cluster:A/alice", "asked through the router by master A")]
    assert site.a_records == [("alice", "b1", "s", "kill of session s routed to master B: killed there")]
    assert not site.audited


def test_a_moderator_on_a_ends_bs_four_eyes_session_and_b_records_it_as_moderator() -> None:
    site = KillSite()
    lead = Identity(1001, 1001, 2, "lead", frozenset({"leads"}))
    assert site.kill(lead, "fe", holder="B").startswith("session fe on b-four-eyes: hangup sent")
    assert site.hung_up("fe") and not site.hung_up("s")
    assert site.b_trail.events == [("kill", "fe", "b-four-eyes", "cluster:A/lead",
                                    "as moderator, asked through the router by master A")]
    assert site.a_records[-1] == ("lead", "b-four-eyes", "fe", "kill of session fe routed to master B: killed there")


def test_an_operator_without_the_right_is_refused_by_b_audited_on_both_and_nothing_ends() -> None:
    site = KillSite()
    with pytest.raises(Exception) as refused:
        site.kill(CAROL, "s")
    assert refused.value.kind == "permission denied"  # type: ignore[attr-defined]
    assert refused.value.message == ("permission denied: cluster:A/carol (vouched for by master A) may not kill "  # type: ignore[attr-defined]
                                     "sessions on worker b1")
    assert not site.hung_up("s") and not site.b_trail.events
    assert site.audited == [("cluster:A/carol", "", f"routed kill refused: {refused.value.message} (session s)")]  # type: ignore[attr-defined]
    assert site.a_records == [("carol", "", None, "kill of session s routed to master B: refused (permission denied)")]


def test_a_session_no_master_holds_is_not_found_and_bs_not_found_is_not_audited() -> None:
    site = KillSite()
    assert site.kill(ALICE, "nowhere") is None
    assert not site.audited and not site.a_records and not site.b_trail.events


def test_a_hostile_master_vouches_only_for_its_own_operators() -> None:
    """Master C (another router principal) names alice: B sees cluster:C/alice, who owns nothing and has no right
    there; a name with '/' (to pass as A's) is a bad request. Nothing ends."""
    site = KillSite()
    c = site.router.session(authid="C")
    for user in ("alice", "A/alice"):
        answer = c.call(master_record_uri("B", KILL), {"user": user, "groups": ["ops"], "session": "s"}).result
        assert answer["ok"] is False
    assert "cluster:C/alice (vouched for by master C) may not kill" in site.audited[0][2]
    assert not site.hung_up("s") and not site.b_trail.events
    stranger = site.router.session(authid="anonymous", role="anonymous")
    d = stranger.call(master_record_uri("B", KILL), {"user": "alice", "groups": [], "session": "s"})
    assert d.result.value.error == "slaveshell.error.not_authorized"
    d.addErrback(lambda _: None)
    assert not site.hung_up("s")


def test_a_flood_of_kill_calls_is_refused_past_the_masters_pace_and_audited_under_its_name() -> None:
    site = KillSite()
    c = site.router.session(authid="C")
    answers = [c.call(master_record_uri("B", KILL), {"user": "x", "groups": [], "session": f"n{i}"}).result
               for i in range(KILL_BURST + 5)]
    assert all(a["kind"] == "not found" for a in answers[:KILL_BURST])
    assert all(a["kind"] == "limit" for a in answers[KILL_BURST:])
    assert "at most 16 kill calls at once from master C" in answers[-1]["error"]
    assert {(who, line.split(":")[0]) for who, _, line in site.audited} == {("cluster:C", "routed kill refused")}
    # Another master is not held back by C's flood, and C gets its pace back with time.
    assert site.kill(ALICE, "s") is not None
    site.clock.advance(1.0)
    again = [c.call(master_record_uri("B", KILL), {"user": "x", "groups": [], "session": "n"}).result
             for _ in range(int(KILL_RATE) + 1)]
    assert [a["kind"] for a in again] == ["not found"] * int(KILL_RATE) + ["limit"]


def test_all_masters_together_are_bounded_too() -> None:
    site = KillSite()
    kinds = []
    for i in range(TOTAL_BURST // KILL_BURST + 1):
        caller = site.router.session(authid=f"M{i}")
        kinds += [caller.call(master_record_uri("B", KILL), {"user": "x", "groups": [], "session": "n"}
                              ).result["kind"] for _ in range(KILL_BURST)]
    assert kinds.count("not found") == TOTAL_BURST and kinds[-1] == "limit"


def test_a_hostile_bs_answer_is_checked_and_escaped_on_a() -> None:
    site = KillSite()
    site.router.procedures[master_record_uri("B", KILL)] = lambda wire: {"ok": True, "text": "ok\x1b]0;x\x07",
                                                                         "worker": "b1"}
    assert site.kill(ALICE, "s", holder="B") == "ok\\x1b]0;x\\x07"
    site.router.procedures[master_record_uri("B", KILL)] = lambda wire: {"ok": True, "text": "ok", "worker": "a/b"}
    with pytest.raises(Exception) as bad:
        site.kill(ALICE, "s", holder="B")
    assert "malformed answer" in str(bad.value)
    site.router.procedures[master_record_uri("B", KILL)] = lambda wire: {"ok": False, "error": "no\x1b[2J" * 500,
                                                                         "kind": "weird"}
    with pytest.raises(Exception) as refused:
        site.kill(ALICE, "s", holder="B")
    assert refused.value.kind == "unavailable" and "\x1b" not in refused.value.message  # type: ignore[attr-defined]
    assert len(refused.value.message) <= 1000  # type: ignore[attr-defined]


def test_a_master_that_does_not_answer_is_recorded_and_said() -> None:
    site = KillSite()
    site.router.procedures[master_record_uri("B", KILL)] = lambda wire: defer.fail(RuntimeError("gone"))
    with pytest.raises(Exception) as refused:
        site.kill(ALICE, "s")
    assert refused.value.kind == "unavailable" and "not answered: B (gone)" in refused.value.message  # type: ignore[attr-defined]
    assert site.a_records == [("alice", "", None, "kill of session s routed to master B: failed (the master did "
                                                  "not answer)")]


def test_the_operators_api_on_a_kills_here_first_then_elsewhere_and_refuses_as_the_api_does() -> None:
    site = KillSite()
    a_api = OperatorAPI(Registry(), None, None, lambda: None, lambda: None, Holds())  # type: ignore[arg-type]
    a_api.cluster = SimpleNamespace(kills=site.kills)  # type: ignore[assignment]
    d = a_api.kill_anywhere(ALICE, "s")
    assert d.result.endswith("hangup sent (then TERM, then KILL)")
    d = a_api.kill_anywhere(CAROL, "fe")
    assert isinstance(d.result.value, OperatorError) and d.result.value.kind is ErrorKind.DENIED
    d.addErrback(lambda _: None)
    d = a_api.kill_anywhere(ALICE, "none")
    assert d.result.value.kind is ErrorKind.NOT_FOUND and d.result.value.message == "no live session none"
    d.addErrback(lambda _: None)


def test_as_listing_of_b_is_asked_again_once_a_session_it_routed_opened_or_ended() -> None:
    """The routing decision asks B's listing just before the session opens (0 sessions on b1); a page asking
    within SITE_KEPT seconds got that answer, and showed b1 with no session while it was live."""
    from .test_cluster_routed import FakeView

    site = KillSite()
    count = {"b1": 0}
    site.b._listing = lambda: Listing("B", "h:/B", None, ({"name": "b1", "registered": True,
                                                           "sessions": count["b1"]},))
    views: list[FakeView] = []

    def opener(who: Identity, request: OpenRequest, sink: Any) -> FakeView:
        count["b1"] += 1
        view = FakeView(who, sink)
        views.append(view)
        return view

    from master_side.cluster.serve import ServedSessions

    ServedSessions(site.b, opener, lambda *a: None, lambda *a: None, site.clock.seconds)
    site.b.sync([], 0.0)
    site.b.sync(["b1"], 0.0)  # b1's `open` procedure, now that B serves sessions
    relays = Relays(site.a, site.clock.seconds, lambda: 30.0)

    def sessions_on_b1() -> object:
        (listing,) = site.a.site().result
        return listing.workers[0]["sessions"]

    assert sessions_on_b1() == 0
    assert relays.open(ALICE, OpenRequest(worker="b1"), OperatorSink()).result is not None
    assert sessions_on_b1() == 1  # asked again, not the routing decision's answer
    count["b1"] -= 1
    views[0].sink.exit(ExitStatus(code=0))
    assert sessions_on_b1() == 0
    count["b1"] = 5
    assert sessions_on_b1() == 0  # otherwise kept SITE_KEPT seconds, as before
    site.clock.advance(2.5)
    assert sessions_on_b1() == 5


def test_an_answer_asked_before_a_change_is_given_to_its_askers_but_not_kept() -> None:
    from master_side.cluster.config import master_uri

    site = KillSite()
    uri = master_uri("B")
    real = site.router.procedures[uri]
    asked: list[defer.Deferred[object]] = []

    def slow() -> defer.Deferred[object]:
        asked.append(defer.Deferred())
        return asked[-1]

    site.router.procedures[uri] = slow
    first = site.a.site()
    site.a.changed()
    second = site.a.site()  # asked afresh: the change came after the first question went
    assert len(asked) == 2
    asked[1].callback(real())
    assert site.a._site_kept is not None and second.result
    kept = site.a._site_kept
    asked[0].callback(real())
    assert first.result and site.a._site_kept is kept  # the first's answer went to its asker, and was not kept


def test_a_records_its_routed_event_before_the_operator_has_bs_answer() -> None:
    site = KillSite()
    order: list[str] = []
    site.kills.record = lambda who, worker, record_id, detail: order.append(f"record {detail}")
    site.kills.kill(ALICE, "s").addCallback(lambda text: order.append(f"answer {text}"))
    assert order == ["record kill of session s routed to master B: killed there",
                     "answer session s on b1: hangup sent (then TERM, then KILL)"]


@pytest.mark.parametrize("call", [
    None, "s", {"user": "alice", "groups": [], "session": "s", "more": 1}, {"user": "alice", "groups": []},
    {"user": "", "groups": [], "session": "s"}, {"user": "alice", "groups": "ops", "session": "s"},
    {"user": "alice", "groups": [], "session": ""}, {"user": "alice", "groups": [], "session": "s\x1b[2J"},
    {"user": "alice", "groups": [], "session": "s" * 129}, {"user": "alice", "groups": [], "session": 7},
])
def test_b_refuses_a_malformed_kill_call_as_a_bad_request_and_ends_nothing(call: object) -> None:
    site = KillSite()
    answer = site.a._session.call(master_record_uri("B", KILL), call).result
    assert answer["ok"] is False and answer["kind"] == "bad request"
    assert answer["error"].startswith("bad request from master A: ")
    assert not site.hung_up("s") and not site.b_trail.events


class IndexTrail:
    """A's audit trail, over the site's shared index: the rows it holds, by session id."""

    def __init__(self, rows: dict[str, dict[str, object]]) -> None:
        self.master_name = "h:/A"
        self.asked: list[str] = []
        self.store = SimpleNamespace(history=self._history)
        self.rows = rows

    def _history(self, session_id: str | None = None, limit: int = 200, **_: object) -> defer.Deferred[list]:
        assert session_id is not None
        self.asked.append(session_id)
        row = self.rows.get(session_id)
        return defer.succeed([] if row is None else [row])


def _api_over_the_index(site: KillSite, rows: dict[str, dict[str, object]]) -> tuple[OperatorAPI, IndexTrail]:
    trail = IndexTrail(rows)
    a_api = OperatorAPI(Registry(), None, None, lambda: trail, lambda: None, Holds())  # type: ignore[arg-type]
    a_api.cluster = SimpleNamespace(kills=site.kills, records=SiteRecords(site.a, site.clock.seconds))  # type: ignore[assignment]
    return a_api, trail


def test_with_the_shared_index_a_asks_only_the_master_whose_row_holds_the_session() -> None:
    """Master C, also on the router, answers "killed" for any session (a lie). The shared index's row of `s` names
    B (Buildbot's `h:/B`): A asks only B, which ends it; C is never asked. A row naming a master that is not on the
    router, or a session the index says ended, is said so and routed nowhere. Without a row (an index of A's own),
    each master is asked in turn, as before."""
    site = KillSite()
    c = link_of("C", site.clock)
    c_session = site.router.session(authid="C")
    c._joined(c_session, None)
    lies: list[object] = []
    c_session.register(lambda wire: lies.append(wire) or {"ok": True, "text": "session s on b1: hangup sent (a lie)",
                                                          "worker": "b1"}, master_record_uri("C", KILL))
    running = {"id": "s", "master": "h:/B", "state": "running", "worker": "b1"}
    a_api, trail = _api_over_the_index(site, {"s": running,
                                              "gone": {**running, "id": "gone", "master": "h:/D"},
                                              "old": {**running, "id": "old", "state": "ended"}})
    d = a_api.kill_anywhere(ALICE, "s")
    assert d.result == "session s on b1: hangup sent (then TERM, then KILL)"
    assert site.hung_up("s") and not lies and trail.asked == ["s"]
    for sid, kind, line in (("gone", ErrorKind.UNAVAILABLE, "was recorded by master h:/D, which is not on the "
                                                             "cluster's router now"),
                            ("old", ErrorKind.NOT_FOUND, "no live session old")):
        d = a_api.kill_anywhere(ALICE, sid)
        assert isinstance(d.result.value, OperatorError) and d.result.value.kind is kind
        assert line in d.result.value.message
        d.addErrback(lambda _: None)
    assert not lies
    d = a_api.kill_anywhere(ALICE, "unindexed")
    d.addErrback(lambda _: None)
    assert lies  # no row: every master is asked in turn, and C's answer is taken as it comes
