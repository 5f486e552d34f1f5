"""A multi-master site's router link (master_side.cluster.link), its configuration and URIs (cluster_config) and the
site-wide answers (cluster_view), against a router session made of Deferreds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task

from master_side.cluster.config import ClusterConfig, decode, encode, master_of_uri, master_uri, worker_uri
from master_side.cluster.link import ALREADY_EXISTS, ROUTER_MESSAGE_MAX, ClusterLink, ClusterUnavailable, Listing
from master_side.cluster.verify import SiteDatabase, checked
from master_side.cluster.view import elsewhere, site_workers
from master_side.config import ShellConfig
from slaveshell.client.labels import master_label
from slaveshell.vocabulary.policy import Identity, Policy, Rule

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
CONFIG = ClusterConfig(router_url="ws://127.0.0.1:1/ws", realm="buildbot", authid="slaveshell", ticket="t",
                       master="A")


class Registration:
    def __init__(self, router: Router, uri: str) -> None:
        self.router, self.uri = router, uri

    def unregister(self) -> defer.Deferred[None]:
        del self.router.procedures[self.uri]
        return defer.succeed(None)


class Router:
    """The router's side of a session: procedures by URI, one holder each; the meta API lists them."""

    def __init__(self) -> None:
        self.procedures: dict[str, Any] = {}
        self.ids: dict[str, int] = {}

    def session(self, authid: str = "slaveshell", role: str = "slaveshell") -> Session:
        return Session(self, authid, role)


class Session:
    """One router client: its calls reach the procedures with the router's details of the caller (its authid and
    role) when they were registered asking for them."""

    def __init__(self, router: Router, authid: str = "slaveshell", role: str = "slaveshell") -> None:
        self.router = router
        self.authid, self.role = authid, role

    def register(self, fn: Any, uri: str, options: Any = None) -> defer.Deferred[Registration]:
        if uri in self.router.procedures:
            return defer.fail(ApplicationError(ALREADY_EXISTS))
        if options is not None and options.details_arg:
            inner = fn

            def fn(*args: object, caller: Session) -> object:
                # What the callee reads of autobahn's CallDetails.
                details = SimpleNamespace(caller_authid=caller.authid, caller_authrole=caller.role)
                return inner(*args, **{options.details_arg: details})
            fn.with_details = True  # type: ignore[attr-defined]
        self.router.procedures[uri] = fn
        self.router.ids.setdefault(uri, len(self.router.ids) + 1)
        return defer.succeed(Registration(self.router, uri))

    def call(self, uri: str, *args: object) -> defer.Deferred[object]:
        if uri == "wamp.registration.list":
            return defer.succeed({"exact": [self.router.ids[u] for u in self.router.procedures], "prefix": []})
        if uri == "wamp.registration.get":
            return defer.succeed({"uri": next(u for u, i in self.router.ids.items() if i == args[0])})
        fn = self.router.procedures.get(uri)
        if fn is None:
            return defer.fail(ApplicationError("wamp.error.no_such_procedure"))
        if getattr(fn, "with_details", False):
            return defer.maybeDeferred(fn, *args, caller=self)
        return defer.maybeDeferred(fn, *args)


def listing_of(name: str, workers: list[str]) -> Listing:
    return Listing(name, f"host:/srv/{name}", None,
                   tuple({"name": w, "shell": True, "paused": False, "system": "posix", "info": "", "sessions": 1}
                         for w in workers))


def joined(router: Router, name: str, workers: list[str]) -> ClusterLink:
    config = ClusterConfig(router_url="ws://127.0.0.1:1/ws", realm="r", authid="slaveshell", ticket="t", master=name)
    link = ClusterLink(config, lambda: listing_of(name, workers), task.Clock())
    link._joined(router.session(), None)
    return link


@pytest.mark.parametrize("name", ["w1", "a.b", "has space", "#x", "Ümlaut", "UPPER", "a" * 50])
def test_any_name_is_one_strict_uri_component_and_comes_back(name: str) -> None:
    component = encode(name)
    assert component.isalnum() and component == component.lower() and "." not in component
    assert decode(component) == name
    assert worker_uri(name).count(".") == 3
    assert master_of_uri(master_uri(name)) == name


def test_not_a_name_is_not_decoded() -> None:
    assert decode("zz") is None and decode("abc") is None and decode("ff") is None
    assert master_of_uri("slaveshell.worker.7731.locate") is None


def test_the_config_says_what_is_wrong() -> None:
    assert CONFIG.errors() == []
    bad = ClusterConfig(router_url="http://x", realm="", authid="s", master="A", ticket="t", ticket_file="/f",
                        max_retry_delay=0)
    errors = " ".join(bad.errors())
    for word in ("router_url", "realm", "exactly one of ticket and ticket_file", "max_retry_delay"):
        assert word in errors
    assert ShellConfig(cluster=CONFIG).errors() == []
    assert ShellConfig(cluster="ws://x").errors() == [  # type: ignore[arg-type]
        "cluster must be a ClusterConfig (from master_side import ClusterConfig)"]


def test_the_ticket_is_read_from_its_file(tmp_path: Any) -> None:
    path = tmp_path / "ticket"
    path.write_text("s3cret\n")
    config = ClusterConfig(router_url="ws://h/ws", realm="r", authid="a", master="A", ticket_file=str(path))
    assert config.errors() == [] and config.secret() == "s3cret"
    relative = ClusterConfig(router_url="ws://h/ws", realm="r", authid="a", master="A", ticket_file="ticket")
    assert relative.secret(str(tmp_path)) == "s3cret"


def test_a_ticket_file_that_cannot_be_read_leaves_the_link_off(tmp_path: Any) -> None:
    config = ClusterConfig(router_url="ws://h/ws", realm="r", authid="a", master="A", ticket_file="missing")
    assert config.errors() == []  # read when the link starts: master.cfg may be checked on another host
    link = ClusterLink(config, lambda: listing_of("A", []), task.Clock())
    link.start(str(tmp_path))
    assert link._component is None and not link.connected


def test_attached_workers_are_registered_once_and_unregistered_when_gone() -> None:
    router = Router()
    link = joined(router, "A", ["w1", "w2"])
    assert master_uri("A") in router.procedures
    link.sync(["w1", "w2"], 0.0)
    assert {worker_uri("w1"), worker_uri("w2")} <= set(router.procedures)
    assert link.registered("w1") and link.registered("w2")
    link.sync(["w1"], 1.0)
    assert worker_uri("w2") not in router.procedures and not link.registered("w2")


def test_a_worker_another_master_holds_is_reported_and_tried_again_later() -> None:
    router = Router()
    a, b = joined(router, "A", ["dup"]), joined(router, "B", ["dup"])
    a.sync(["dup"], 0.0)
    b.sync(["dup"], 0.0)
    assert a.registered("dup") and not b.registered("dup") and "dup" in b.duplicates
    a.sync([], 1.0)  # A lets it go
    b.sync(["dup"], 5.0)
    assert not b.registered("dup")  # not before the retry interval
    b.sync(["dup"], 10.0)
    assert b.registered("dup") and not b.duplicates


def test_a_second_master_of_the_same_name_is_refused() -> None:
    router = Router()
    joined(router, "A", [])
    assert joined(router, "A", []).master_refused


def test_site_asks_the_other_masters_only() -> None:
    router = Router()
    a, _ = joined(router, "A", ["a1"]), joined(router, "B", ["b1"])
    listings = a.site()
    assert [(x.master, [w["name"] for w in x.workers]) for x in listings.result] == [("B", ["b1"])]


def test_site_without_the_router_is_unavailable() -> None:
    link = ClusterLink(CONFIG, lambda: listing_of("A", []), task.Clock())
    failed: list[Any] = []
    link.site().addErrback(failed.append)
    assert failed[0].check(ClusterUnavailable)


class FakeMaster:
    name = "host:/srv/A"
    masterid = 1


def fixed(database: SiteDatabase) -> Any:
    return lambda: defer.succeed(database)


def test_site_workers_name_the_holder_the_duplicates_and_stale_database_rows() -> None:
    router = Router()
    a, b = joined(router, "A", ["a1", "dup"]), joined(router, "B", ["b1", "dup"])
    a.sync(["a1", "dup"], 0.0)
    b.sync(["b1", "dup"], 0.0)
    database = SiteDatabase({1: ("host:/srv/A", True), 2: ("host:/srv/B", True), 3: ("host:/srv/dead", True)},
                            {"b1": frozenset({2}), "gone": frozenset({3}), "off": frozenset()},
                            {"off": frozenset({2})})
    local = [{"name": n, "connected": n != "b1", "shell": True, "paused": False, "system": "posix", "info": "",
              "allowed": True, "sessions": 0, "pb_references": None} for n in ("a1", "b1", "dup")]
    everyone = Policy([Rule(users=("alice",), rights=("shell",))])
    rows = {r["name"]: r for r in site_workers(a, everyone, ALICE, local, FakeMaster, fixed(database)).result}
    assert (rows["a1"]["master"], rows["a1"]["here"]) == ("A", True)
    assert (rows["b1"]["master"], rows["b1"]["where"], rows["b1"]["connected"]) == ("B", "host:/srv/B", True)
    assert rows["b1"]["sessions"] == 1 and rows["b1"]["stale_database_rows"] == []
    assert rows["dup"]["masters"] == ["A", "B"]
    assert (rows["gone"]["connected"], rows["gone"]["stale_database_rows"]) == (False, ["host:/srv/dead"])
    assert "off" not in rows  # another master's offline worker: only with include_offline
    assert [master_label(rows[n]) for n in ("a1", "b1", "dup", "gone")] == [
        "here (master A)", "on master B", "on 2 masters: A, B", "nowhere (stale db row)"]
    offline = {r["name"]: r for r in site_workers(a, everyone, ALICE, local, FakeMaster, fixed(database),
                                                  include_offline=True).result}
    assert (offline["off"]["connected"], offline["off"]["master"], offline["off"]["configured_on"]) == (
        False, None, ["B"])
    assert master_label(offline["off"]) == "offline (configured: B)"


def test_site_workers_show_only_workers_the_operator_has_a_right_on() -> None:
    router = Router()
    a, _ = joined(router, "A", []), joined(router, "B", ["secret", "open"])
    policy = Policy([Rule(users=("alice",), workers=("open",), rights=("shell",))])
    rows = site_workers(a, policy, ALICE, [], FakeMaster, fixed(SiteDatabase()), include_offline=True).result
    assert [r["name"] for r in rows] == ["open"]


def test_the_refusal_says_where_the_worker_is() -> None:
    router = Router()
    a = joined(router, "A", [])
    joined(router, "B", ["b1", "dup"])
    joined(router, "C", ["dup"])
    why = "worker b1 is not connected to the master"
    assert elsewhere(a, "b1", why).result == ("b1 is on master B (host:/srv/B), not this one, and the session could "
                                              "not be opened there through the router: open it on master B")
    assert elsewhere(a, "nowhere", why).result == why
    assert elsewhere(None, "b1", why).result == why
    assert "attached to 2 masters: B (host:/srv/B), C (host:/srv/C)" in elsewhere(a, "dup", why).result
    link = ClusterLink(CONFIG, lambda: listing_of("A", []), task.Clock())
    assert elsewhere(link, "b1", why).result.startswith(why + " (the other masters could not be asked: ")


def test_another_masters_answer_is_checked_and_shown_inertly() -> None:
    assert Listing.from_wire(["not", "a", "dict"]) is None
    assert Listing.from_wire({"master": "B", "buildbot": "h:/b", "masterid": True, "workers": []}) is None
    listing = Listing.from_wire({"master": "B", "buildbot": "h:/b", "masterid": 2,
                                 "workers": [{"name": "w1"}, {"name": 3}, "junk"]})
    assert listing is not None and [w["name"] for w in listing.workers] == ["w1"]
    from slaveshell.vocabulary.display import cell

    hostile = {"masters": ["B\x1b]2;pwned\x07\x1b[31m"], "here": False}
    shown = cell(master_label(hostile), 28)
    assert "\x1b" not in shown and "\x07" not in shown


def test_another_masters_listing_is_bounded_where_it_arrives() -> None:
    from master_side.cluster.link import MAX_LISTED_TEXT, MAX_LISTED_WORKERS

    def listing(workers: list[object], master: str = "C") -> object:
        return {"master": master, "buildbot": "host:/srv/c", "masterid": None, "workers": workers}

    assert Listing.from_wire(listing([{"name": "w"}] * (MAX_LISTED_WORKERS + 1))) is None
    assert Listing.from_wire(listing([], master="m" * 201)) is None
    long_info = "i" * (MAX_LISTED_TEXT + 1)
    got = Listing.from_wire(listing([{"name": "x" * 201}, {"name": ""},
                                     {"name": "ok", "info": long_info, "system": "posix"}]))
    assert got is not None and got.workers == ({"name": "ok", "system": "posix"},)


# -- listings checked against the shared database (master_side.cluster.verify) ------------------------------------

SITE = SiteDatabase({1: ("host:/srv/A", True), 2: ("host:/srv/B", True), 4: ("host:/srv/old", False)},
                    {"a1": frozenset({1}), "b1": frozenset({2}), "z1": frozenset({2}), "dup": frozenset({1, 2}),
                     "ghost": frozenset()})


def claim(master: str, buildbot: str, masterid: int | None, workers: list[str]) -> Listing:
    return Listing(master, buildbot, masterid, tuple({"name": w, "registered": True} for w in workers))


def test_a_listing_keeps_only_the_workers_the_database_has_connected_to_that_master() -> None:
    [b] = checked([claim("B", "host:/srv/B", 2, ["b1", "dup", "a1", "ghost", "never-seen"])], SITE, 1)
    assert b.trusted and [w["name"] for w in b.workers] == ["b1", "dup"]
    why = {d.worker: d.why for d in b.disputed}
    assert why["a1"] == ("master B says it holds a1, but the shared database has a1 connected to host:/srv/A: "
                         "not routed")
    assert why["ghost"].endswith("connected to no master: not routed")
    assert why["never-seen"].endswith("connected to no master: not routed")


@pytest.mark.parametrize(("listing", "why"), [
    (claim("C", "host:/srv/C", None, ["b1"]), "master C is not a Buildbot master of the shared database"),
    (claim("C", "host:/srv/C", 99, ["b1"]), "master C is not a Buildbot master of the shared database"),
    (claim("C", "host:/srv/C", 2, ["b1"]), "master C says it is host:/srv/C, but the shared database's master #2 "
                                           "is host:/srv/B"),
    (claim("C", "host:/srv/old", 4, ["b1"]), "master C (host:/srv/old) is inactive in the shared database"),
    (claim("C", "host:/srv/A", 1, ["a1"]), "master C claims the Buildbot master host:/srv/A, which another master "
                                           "on the router claims too"),
])
def test_a_master_that_is_not_the_buildbot_master_it_says_has_no_worker_taken(listing: Listing, why: str) -> None:
    [got] = checked([listing], SITE, 1)
    assert (got.trusted, got.workers) == (False, ())
    assert [d.why for d in got.disputed] == [f"{why}: its workers are not routed"]


def test_two_masters_claiming_one_buildbot_master_are_both_refused() -> None:
    got = checked([claim("B", "host:/srv/B", 2, ["b1"]), claim("C", "host:/srv/B", 2, ["b1", "z1"])], SITE, 1)
    assert [(x.trusted, x.workers) for x in got] == [(False, ()), (False, ())]


def test_a_database_that_cannot_be_read_confirms_nothing() -> None:
    [got] = checked([claim("B", "host:/srv/B", 2, ["b1"])], None, 1, "connection refused")
    assert not got.trusted and got.workers == ()
    assert got.disputed[0].why.startswith("the shared database could not be read to confirm it (connection refused)")


def test_a_disputed_worker_is_shown_so_and_its_refusal_says_why() -> None:
    router = Router()
    a = joined(router, "A", [])
    joined(router, "C", ["ghost"])
    a.check = lambda listings: defer.succeed(checked(listings, SITE, 1))
    everyone = Policy([Rule(users=("alice",), rights=("shell",))])
    [row] = site_workers(a, everyone, ALICE, [], FakeMaster, fixed(SiteDatabase({}, {"ghost": frozenset()}))).result
    assert (row["name"], row["connected"], row["master"], row["masters"]) == ("ghost", False, None, [])
    assert master_label(row) == "disputed: C (not routed)"
    assert elsewhere(a, "ghost", "not here").result == (
        "master C is not a Buildbot master of the shared database: its workers are not routed")


def test_the_listings_are_kept_briefly_and_askers_of_one_moment_share_one_asking() -> None:
    router = Router()
    clock = task.Clock()
    config = ClusterConfig(router_url="ws://127.0.0.1:1/ws", realm="r", authid="slaveshell", ticket="t", master="A")
    a = ClusterLink(config, lambda: listing_of("A", []), clock)
    a._joined(router.session(), None)
    joined(router, "B", ["b1"])
    reads: list[defer.Deferred[list[Listing]]] = []

    def check(listings: list[Listing]) -> defer.Deferred[list[Listing]]:
        reads.append(defer.Deferred())
        return reads[-1].addCallback(lambda _: listings)

    a.check = check
    first, second, fresh = a.site(), a.site(), a.site(fresh=True)
    assert len(reads) == 1  # one asking (one read of the database) for the three
    reads[0].callback(None)
    assert [x.master for x in first.result] == [x.master for x in second.result] == [x.master for x in fresh.result]
    clock.advance(1.0)
    assert a.site().called and len(reads) == 1  # kept
    a.site(fresh=True)
    assert len(reads) == 2  # a routing decision asks afresh
    reads[1].callback(None)
    clock.advance(2.5)
    a.site()
    assert len(reads) == 3  # past SITE_KEPT


def test_an_offline_worker_is_labelled_with_the_last_master_seen_holding_it() -> None:
    router = Router()
    a, b = joined(router, "A", []), joined(router, "B", ["b1"])
    database = SiteDatabase({2: ("host:/srv/B", True)}, {"b1": frozenset({2})}, {"b1": frozenset({2})})
    a.check = lambda listings: defer.succeed(checked(listings, database, 1))
    everyone = Policy([Rule(users=("alice",), rights=("shell",))])
    seen: dict[str, tuple[str, float]] = {}
    b._listing = lambda: Listing("B", "host:/srv/B", 2, ({"name": "b1"},))
    [row] = site_workers(a, everyone, ALICE, [], FakeMaster, fixed(database), True, seen).result
    assert master_label(row) == "on master B" and seen["b1"][0] == "B"
    b._listing = lambda: Listing("B", "host:/srv/B", 2, ())
    a._site_kept = None
    database = SiteDatabase(database.masters, {"b1": frozenset()}, database.configured)
    [row] = site_workers(a, everyone, ALICE, [], FakeMaster, fixed(database), True, seen).result
    assert (row["connected"], row["last_master"], row["configured_on"]) == (False, "B", ["B"])
    assert master_label(row) == "offline (last on B)"
    assert site_workers(a, everyone, ALICE, [], FakeMaster, fixed(database), False, seen).result == []


def test_a_lasting_dispute_is_audited_once_under_the_claiming_master(monkeypatch: pytest.MonkeyPatch) -> None:
    from master_side.cluster import part as part_module
    from master_side.cluster.part import ClusterPart

    monkeypatch.setattr(part_module, "read_site_database", lambda master: defer.succeed(SITE))
    audited: list[tuple[str, str, str]] = []
    part = ClusterPart(CONFIG, FakeMaster, None, SimpleNamespace(clock=lambda: 0.0), lambda: Policy([]),  # type: ignore[arg-type]
                       task.Clock(), opener=None, attacher=None,  # type: ignore[arg-type]
                       audit=lambda who, worker, line: audited.append((who.user, worker, line)),
                       open_timeout=lambda: 30.0)
    ghost = [claim("C", "host:/srv/B", 2, ["ghost"])]
    part._checked(ghost)
    assert audited == []  # once: perhaps a worker attaching, listed a moment before the database has it
    part._checked(ghost)
    part._checked(ghost)
    assert audited == [("cluster:C", "ghost", "disputed listing: ghost; master C says it holds ghost, but the shared "
                                              "database has ghost connected to no master: not routed")]
    part._checked([claim("C", "host:/srv/B", 2, [])])
    part._checked(ghost)
    part._checked(ghost)
    assert len(audited) == 2  # disputed again, after it was not


def _websocket(mask: bool) -> Any:
    """A real autobahn client WebSocket protocol, open, writing to a StringTransport (no socket: write_now hands
    everything to the transport)."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.testing import StringTransport

    factory = WebSocketClientFactory("ws://127.0.0.1:1/ws")
    factory.setProtocolOptions(maskClientFrames=mask)
    factory.protocol = WebSocketClientProtocol
    built = factory.buildProtocol(None)
    assert isinstance(built, WebSocketClientProtocol)
    protocol: Any = built
    protocol.transport = StringTransport()
    protocol._connectionMade()
    protocol.state = protocol.STATE_OPEN
    protocol.transport.clear()
    return protocol


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 512 * 1024])
def test_the_links_lean_frames_are_the_bytes_autobahn_would_send(size: int) -> None:
    from master_side.cluster.link import lean_frames

    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    theirs, ours = _websocket(mask=False), _websocket(mask=False)
    theirs.sendMessage(payload, isBinary=True)
    lean_frames(SimpleNamespace(_transport=ours))
    ours.sendMessage(payload, isBinary=True)
    assert ours.transport.value() == theirs.transport.value()
    # Ours did not go through autobahn's sendMessage (which counts each message it sends).
    assert (ours.trafficStats.outgoingWebSocketMessages, theirs.trafficStats.outgoingWebSocketMessages) == (0, 1)
    # A text message and a masked connection go autobahn's own way.
    ours.transport.clear()
    theirs.transport.clear()
    ours.sendMessage(b"{}", isBinary=False)
    theirs.sendMessage(b"{}", isBinary=False)
    assert ours.transport.value() == theirs.transport.value() == b"\x81\x02{}"
    masked = _websocket(mask=True)
    lean_frames(SimpleNamespace(_transport=masked))
    masked.sendMessage(payload, isBinary=True)
    assert masked.transport.value()[1] & 0x80  # the mask bit: autobahn's own frame


@pytest_twisted.inlineCallbacks
def test_a_message_from_the_router_above_its_limit_fails_the_connection_never_held() -> None:
    """The link's transport (as autobahn's Component builds it) takes no message above ROUTER_MESSAGE_MAX: a router
    that sends a bigger one has the connection dropped by the master, which holds no more than that."""
    from autobahn.twisted.component import _create_transport_factory
    from autobahn.twisted.wamp import ApplicationSession
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.wamp.component import _create_transport
    from autobahn.wamp.types import ComponentConfig
    from twisted.internet import endpoints, reactor

    class Huge(WebSocketServerProtocol):
        def onConnect(self, request: Any) -> str:
            return "wamp.2.msgpack"

        def onOpen(self) -> None:
            self.sendMessage(b"\x00" * (ROUTER_MESSAGE_MAX + 1), isBinary=True)

    closed: defer.Deferred[str] = defer.Deferred()
    server = WebSocketServerFactory()
    server.protocol = Huge
    server.setProtocolOptions(requireMaskedClientFrames=False)  # the link's frames are not masked
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server)
    try:
        config = ClusterConfig(router_url=f"ws://127.0.0.1:{port.getHost().port}/ws", realm="site", authid="A",
                               master="A", ticket="t")
        link = ClusterLink(config, lambda: listing_of("A", []), task.Clock())
        factory = _create_transport_factory(reactor, _create_transport(0, link.transport()),
                                            lambda: ApplicationSession(ComponentConfig(realm="site")))
        protocol = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(factory)
        on_close = protocol.onClose

        def heard(was_clean: bool, code: int, reason: str) -> None:
            closed.callback(reason)
            on_close(was_clean, code, reason)

        protocol.onClose = heard
        reason = yield closed
        assert f"exceeds payload limit of {ROUTER_MESSAGE_MAX} octets" in reason, reason
    finally:
        yield port.stopListening()
