"""The web pages on a multi-master site at unit level: where each worker is, as the pages are told
(master_side.www.site.where), and the held view of a session another master holds, kept until Buildbot's authz
here has been asked about its worker (master_side.www.terminal_ws.HeldWebSink)."""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

from twisted.internet import defer, task

from master_side.cluster.link import Listing
from master_side.cluster.stream import check_name  # the names A sends pass B's checks
from master_side.www import terminal_ws
from master_side.www.site import where
from master_side.www.terminal_ws import HeldWebSink, TerminalFactory
from slaveshell.policy import Rule
from slaveshell.vocabulary.policy import Action, ClusterIdentity, Policy, WebIdentity
from slaveshell.vocabulary.protocol import ExitStatus
from tests.test_web_door import Page


def test_where_says_which_master_holds_a_worker():
    assert where({"name": "w1"}) == {"master": None, "here": True, "masters": [], "site": False}
    none: dict[str, object] = {"disputed": [], "configured_on": [], "last_master": None, "stale": False}
    assert where({"name": "a1", "master": "A", "here": True, "masters": ["A"]}) == {
        "master": "A", "here": True, "masters": ["A"], "site": True, **none}
    assert where({"name": "b1", "master": "B", "here": False, "masters": ["B"]}) == {
        "master": "B", "here": False, "masters": ["B"], "site": True, **none}
    # Nowhere (a database row only), and a listing's odd values left out.
    assert where({"name": "x", "master": None, "here": False, "masters": [3, "C"]}) == {
        "master": None, "here": False, "masters": ["C"], "site": True, **none}
    # Claimed by a master the shared database does not confirm; offline, configured on B.
    assert where({"name": "g", "master": None, "here": False, "masters": [],
                  "disputed": [{"master": "C", "why": "no"}, "junk"], "configured_on": ["B", 4]}) == {
        "master": None, "here": False, "masters": [], "site": True, "disputed": [{"master": "C", "why": "no"}],
        "configured_on": ["B"], "last_master": None, "stale": False}
    # Offline (`slaveshell workers --include-offline`): the last master seen holding it; a stale database row.
    assert where({"name": "o", "master": None, "here": False, "masters": [], "configured_on": ["B"],
                  "last_master": "B", "last_seen": 1.0, "stale_database_rows": []}) == {
        "master": None, "here": False, "masters": [], "site": True, "disputed": [], "configured_on": ["B"],
        "last_master": "B", "stale": False}
    assert where({"name": "s", "master": None, "masters": [], "last_master": 7,
                  "stale_database_rows": ["host:/b"]})["stale"] is True
    assert where({"name": "s", "master": None, "masters": [], "last_master": 7})["last_master"] is None


def test_a_held_view_sends_nothing_until_released_then_all_in_order():
    page = Page()
    sink = HeldWebSink(page)
    sink.output(1, b"recent")
    sink.waiting("waiting for a moderator")
    sink.input_ack(3, False)
    assert page.sent == []
    assert sink.release()
    assert page.sent == [b"recent", {"type": "waiting", "text": "waiting for a moderator"},
                         {"type": "input_ack", "bytes": 3}]
    sink.output(1, b"live")
    sink.exit(ExitStatus(code=0))
    assert page.sent[-2:] == [b"live", {"type": "exit", "code": 0, "signal": None, "reason": ""}]


def test_a_held_view_past_its_bound_or_dropped_sends_nothing(monkeypatch):
    monkeypatch.setattr(terminal_ws, "MAX_HELD", 10)
    page = Page()
    sink = HeldWebSink(page)
    sink.output(1, b"12345")
    sink.output(1, b"678901")
    assert not sink.release()
    assert page.sent == []
    page = Page()
    sink = HeldWebSink(page)
    sink.output(1, b"secret")
    sink.drop()
    sink.output(1, b"more")
    assert page.sent == [] and not sink.release()


def test_the_documented_rule_for_another_masters_web_users():
    """docs/multi-master.md's rule for master A's web users, as written, on master B: the web user as A vouches for
    them (their name, or one of their Buildbot roles) on the b* workers only."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "multi-master.md")) as f:
        (text,) = re.findall(r"`(Rule\(users=\['cluster:A/web:alice'\][^`]*)`", f.read())
    policy = Policy([eval(text, {"Rule": Rule})])
    alice = WebIdentity.from_web("alice", ["viewers"])
    carol = WebIdentity.from_web("carol", ["admins"])
    for who in (alice, carol):
        vouched = ClusterIdentity.vouched("A", check_name(who.user, "user"),
                                          [check_name(g, "group") for g in who.groups])
        assert policy.may(vouched, Action.SHELL, "b1").allowed
        assert not policy.may(vouched, Action.SHELL, "z1").allowed
    assert ClusterIdentity.vouched("A", alice.user, alice.groups).user == "cluster:A/web:alice"
    bob = ClusterIdentity.vouched("A", "web:bob", ["web:viewers"])
    assert not policy.may(bob, Action.SHELL, "b1").allowed
    # Another master's web user of the same name is another identity.
    assert not policy.may(ClusterIdentity.vouched("C", "web:alice", []), Action.SHELL, "b1").allowed


class _Link:
    """A router link whose `site()` answers when the test says."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[list[Listing]]] = []

    def site(self) -> defer.Deferred[list[Listing]]:
        self.asked.append(defer.Deferred())
        return self.asked[-1]


def test_the_admission_asks_the_router_once_for_all_the_sockets_that_connect_at_once():
    clock = task.Clock()
    factory = TerminalFactory(SimpleNamespace(reactor=clock))
    link = _Link()
    first, second = factory.site_names(link), factory.site_names(link)
    assert len(link.asked) == 1
    link.asked[0].callback([Listing("B", "host:/b", None, ({"name": "b1"}, {"name": "z1"}))])
    assert first.result == second.result == {"b1", "z1"}
    assert factory.site_names(link).result == {"b1", "z1"} and len(link.asked) == 1
    clock.advance(terminal_ws.SITE_NAMES_FOR + 1)
    late = factory.site_names(link)
    assert len(link.asked) == 2
    link.asked[1].errback(RuntimeError("the router went"))
    assert late.result == set()
