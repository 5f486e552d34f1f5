"""The site's records between masters (master_side.cluster.records): a transcript, search hits and live sessions
one master (B) holds, read by another (A) for its operator, over the fake router of tests/test_cluster.py."""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task

from master_side.audit.rows import SearchHit, SessionRow
from master_side.cluster.config import master_record_uri, master_uri
from master_side.cluster.records import MAX_PER_MASTER, ServedRecords, SiteRecords
from master_side.cluster.stream import Refused
from slaveshell.vocabulary.checks import MAX_CHUNK
from slaveshell.vocabulary.policy import Identity

from .test_cluster import Router
from .test_cluster_routed import link_of

ALICE = Identity(1000, 1000, 1, "alice", frozenset({"alice", "ops"}))


class Reader:
    """B's operators' API, as far as the records go: what it was asked, and what it answers."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, object]] = []
        self.chunk: dict[str, object] = {"data": b"\x00\xffcast", "eof": True, "worker": "b1"}
        self.refusal: Refused | None = None
        self.hits: list[SearchHit] = []
        self.live: list[dict[str, object]] = []
        self.pending: list[defer.Deferred[dict[str, object]]] = []
        self.hold = False

    def transcript_for_master(self, who: Identity, session_id: str, offset: int) -> defer.Deferred[dict[str, object]]:
        self.asked.append((who.user, (session_id, offset)))
        if self.refusal is not None:
            return defer.fail(self.refusal)
        if self.hold:
            d: defer.Deferred[dict[str, object]] = defer.Deferred()
            self.pending.append(d)
            return d
        return defer.succeed(self.chunk)

    def search_for_master(self, who: Identity, text: str, filters: dict[str, object]
                          ) -> defer.Deferred[list[SearchHit]]:
        self.asked.append((who.user, (text, filters)))
        return defer.succeed(self.hits)

    def sessions(self, who: Identity) -> list[dict[str, object]]:
        self.asked.append((who.user, "sessions"))
        return self.live


class Site:
    """Masters A and B on one router; B serves its records through `reader`."""

    def __init__(self) -> None:
        self.router = Router()
        self.clock = task.Clock()
        self.a = link_of("A", self.clock)
        self.b = link_of("B", self.clock)
        self.reader = Reader()
        self.events: list[tuple[str, str, str, str, str]] = []
        self.audited: list[tuple[str, str]] = []
        ServedRecords(self.b, self.reader, lambda kind, sid, worker, who, detail: self.events.append(
            (kind, sid, worker, who.user, detail)), lambda who, line: self.audited.append((who.user, line)),
            clock=self.clock.seconds)
        self.a._joined(self.router.session("A", "slaveshell-41"), None)
        self.b._joined(self.router.session("B", "slaveshell-42"), None)
        self.records = SiteRecords(self.a)


def row(sid: str = "s1", master: str = "h:/B", worker: str = "b1") -> SessionRow:
    return {"id": sid, "master": master, "worker": worker, "operator": "alice", "started": "2026-12-07T10:00:00",
            "hidden_bytes": 0, "hidden_spans": 0, "hidden_flag": False}  # type: ignore[typeddict-item]


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_a_reads_a_transcript_b_recorded_for_the_identity_it_vouches_for_and_b_audits_it_once() -> None:
    site = Site()
    chunk = result(site.records.transcript(ALICE, row(), 0))
    assert chunk == {"data": b"\x00\xffcast", "eof": True}
    assert site.reader.asked == [("cluster:A/alice", ("s1", 0))]
    result(site.records.transcript(ALICE, row(), 65536))
    assert site.events == [("routed read", "s1", "b1", "cluster:A/alice",
                            "transcript read through the router by master A")]
    site.clock.advance(3600)
    result(site.records.transcript(ALICE, row(), 0))
    assert len(site.events) == 2


def test_bs_refusal_reaches_a_as_b_wrote_it() -> None:
    site = Site()
    site.reader.refusal = Refused("not found", "master B recorded no session s1 that cluster:A/alice may replay")
    with pytest.raises(Refused) as refused:
        result(site.records.transcript(ALICE, row(), 0))
    assert (refused.value.kind, refused.value.message) == (
        "not found", "master B recorded no session s1 that cluster:A/alice may replay")
    assert site.events == []


def test_a_session_whose_master_is_not_on_the_router_is_said_so() -> None:
    site = Site()
    with pytest.raises(Refused) as refused:
        result(site.records.transcript(ALICE, row(master="h:/gone"), 0))
    assert "recorded by master h:/gone, which is not on the cluster's router now" in refused.value.message
    assert site.reader.asked == []


@pytest.mark.parametrize("chunk", [{"data": "text", "eof": True}, {"data": b"x" * (MAX_CHUNK + 1), "eof": False},
                                   {"data": b"x", "eof": "yes"}])
def test_a_malformed_chunk_is_refused(chunk: dict[str, object]) -> None:
    site = Site()
    # B (or whoever answered in its name) sends what no chunk is.
    site.router.procedures[master_record_uri("B", "transcript")] = lambda call: {"ok": True, **chunk}
    with pytest.raises(Refused) as refused:
        result(site.records.transcript(ALICE, row(), 0))
    assert "malformed transcript chunk" in refused.value.message


def test_b_bounds_the_reads_one_master_has_in_progress_and_audits_the_refusal() -> None:
    site = Site()
    site.reader.hold = True
    waiting = [site.records.transcript(ALICE, row(), 0) for _ in range(MAX_PER_MASTER)]
    with pytest.raises(Refused) as refused:
        result(site.records.transcript(ALICE, row(), 0))
    assert refused.value.kind == "limit" and "at most 4 at a time per master" in refused.value.message
    assert site.audited and site.audited[-1][0] == "cluster:A/alice"
    for d in site.reader.pending:
        d.callback({"data": b"", "eof": True, "worker": "b1"})
    assert all(result(d)["eof"] for d in waiting)
    site.reader.hold = False
    assert result(site.records.transcript(ALICE, row(), 0))["eof"] is True


def test_b_refuses_a_caller_that_is_not_a_slaveshell_master_and_a_malformed_call() -> None:
    site = Site()
    stranger = site.router.session(authid="anonymous", role="anonymous")
    call = {"user": "alice", "groups": [], "session": "s1", "offset": 0}
    failure = stranger.call(master_record_uri("B", "transcript"), call)
    error = failure.result.value
    failure.addErrback(lambda f: None)
    assert isinstance(error, ApplicationError) and error.error == "slaveshell.error.not_authorized"
    c = site.router.session("C", "slaveshell-43")
    for bad in ({**call, "user": "a/b"}, {**call, "offset": -1}, {**call, "session": "x" * 500},
                {**call, "extra": 1}, {**call, "groups": ["g"] * 300}, "nonsense"):
        answer = result(c.call(master_record_uri("B", "transcript"), bad))
        assert answer["ok"] is False and answer["kind"] == "bad request", bad
    assert site.reader.asked == []


def test_search_hits_are_rebuilt_from_as_rows_and_only_for_sessions_a_asked_about() -> None:
    site = Site()
    site.reader.hits = [
        {"session": "s1", "worker": "forged", "operator": "forged", "started": "x", "time": 1.5, "hidden": "-",
         "hidden_flag": False, "stream": "output", "context": "found it"},
        {"session": "not-asked", "worker": "b1", "operator": "bob", "started": "x", "time": 1.0, "hidden": "-",
         "hidden_flag": False, "stream": "output", "context": "secret"},
        {"session": "s1", "worker": "b1", "operator": "alice", "started": "x", "time": 2.0, "hidden": "-",
         "hidden_flag": False, "stream": "bogus", "context": "bad stream"},
    ]
    hits, unanswered = result(site.records.search(ALICE, "found", {"worker": "b1"}, [row()]))
    assert unanswered == []
    assert [(h["session"], h["worker"], h["operator"], h["context"]) for h in hits] == [
        ("s1", "b1", "alice", "found it")]
    assert site.reader.asked == [("cluster:A/alice", ("found", {"worker": "b1"}))]


def test_sessions_lists_bs_live_sessions_marked_b_and_names_a_master_that_does_not_answer() -> None:
    site = Site()
    site.reader.live = [
        {"id": "s9", "worker": "b1", "operator": "bob", "uid": 1001, "started": 1.0, "state": "running",
         "command": None, "reason": None, "held": False, "idle": 0.0, "viewers": [{"user": "x"}]},
        {"id": 5, "worker": "b1"},  # malformed: left out
        {"id": "s10", "worker": "b1", "operator": "bob", "uid": 1001, "started": 2.0, "state": "running",
         "command": "x" * 100_000, "reason": None, "held": False, "idle": 0.0, "viewers": []},
    ]
    # C: a master on the router whose `sessions` fails.
    c = site.router.session("C", "slaveshell-43")
    c.register(lambda: {"master": "C", "buildbot": "h:/C", "masterid": None, "workers": []}, master_uri("C"))

    def broken(*args: object, **kwargs: object) -> object:
        raise ApplicationError("wamp.error.runtime_error", "boom")

    c.register(broken, master_record_uri("C", "sessions"))
    rows, unanswered = result(site.records.sessions(ALICE))
    assert [(r["id"], r["master"], r["operator"], r["uid"]) for r in rows] == [("s9", "B", "bob", -1),
                                                                              ("s10", "B", "bob", -1)]
    assert len(str(rows[1]["command"])) == 1024  # cut by B: its answer stays far below the router's limit
    assert len(unanswered) == 1 and unanswered[0].startswith("C (")
    assert ("cluster:A/alice", "sessions") in site.reader.asked


def test_a_four_eyes_session_of_b_is_listed_with_bs_rule_and_moderators_checked_where_they_arrive() -> None:
    """B names a four-eyes session's rule and the viewers who moderate it, so that A lists a held one `held` with
    why, as B's own pages do; a row whose four-eyes fields are malformed (a hostile B) is left out."""
    site = Site()
    four_eyes = {"id": "s1", "worker": "b1", "operator": "cluster:A/alice", "uid": -1, "started": 1.0,
                 "state": "attached", "command": None, "reason": None, "held": True, "idle": 0.0,
                 "moderated_by": ["leads", "web:leads"], "viewers": [{"user": "bob", "role": "watch"}]}
    moderated = {**four_eyes, "id": "s2", "held": False,
                 "viewers": [{"user": "carol", "role": "watch", "moderator": True}, {"user": "dave", "role": "watch"}]}
    plain = {**four_eyes, "id": "s3", "held": False, "moderated_by": None}
    site.reader.live = [four_eyes, moderated, plain]
    rows, _ = result(site.records.sessions(ALICE))
    assert [(r["id"], r["held"], r["moderated_by"], r["moderators"]) for r in rows] == [
        ("s1", True, ["leads", "web:leads"], []), ("s2", False, ["leads", "web:leads"], ["carol"]),
        ("s3", False, None, [])]
    # B's answer as a hostile B could send it: each malformed four-eyes field leaves its row out.
    answers = [{"ok": True, "rows": [
        {**{k: v for k, v in four_eyes.items() if k not in ("uid", "viewers")}, "id": f"h{i}", **bad}
        for i, bad in enumerate([{"moderated_by": ["le\x1bads"]}, {"moderated_by": "leads"}, {"moderated_by": []},
                                 {"moderators": ["x"] * 33}, {"moderators": [""]}, {"moderators": "carol"},
                                 {"moderators": [], "moderated_by": ["leads"]}])]}]
    b = site.router.session("B2", "slaveshell-44")
    site.router.procedures.pop(master_record_uri("B", "sessions"), None)
    b.register(lambda *args, **kwargs: answers[0], master_record_uri("B", "sessions"))
    rows, _ = result(site.records.sessions(ALICE))
    assert [r["id"] for r in rows] == ["h6"], rows  # only the well-formed one
