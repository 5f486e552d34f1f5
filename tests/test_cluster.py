"""A multi-master site's router link (master_side.cluster.link), its configuration and URIs (cluster_config) and the
site-wide answers (cluster_view), against a router session made of Deferreds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task

from master_side.cluster.config import ClusterConfig, decode, encode, master_of_uri, master_uri, worker_uri
from master_side.cluster.link import ALREADY_EXISTS, ClusterLink, ClusterUnavailable, Listing
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


class FakeData:
    def __init__(self, masters: list[dict[str, object]], workers: list[dict[str, object]]) -> None:
        self.tables = {("masters",): masters, ("workers",): workers}

    def get(self, path: tuple[str, ...]) -> defer.Deferred[object]:
        return defer.succeed(self.tables[path])


class FakeMaster:
    name = "host:/srv/A"
    masterid = 1

    def __init__(self, data: FakeData) -> None:
        self.data = data


def test_site_workers_name_the_holder_the_duplicates_and_stale_database_rows() -> None:
    router = Router()
    a, b = joined(router, "A", ["a1", "dup"]), joined(router, "B", ["b1", "dup"])
    a.sync(["a1", "dup"], 0.0)
    b.sync(["b1", "dup"], 0.0)
    data = FakeData([{"masterid": 1, "name": "host:/srv/A"}, {"masterid": 2, "name": "host:/srv/B"},
                     {"masterid": 3, "name": "host:/srv/dead"}],
                    [{"name": "b1", "connected_to": [{"masterid": 2}]},
                     {"name": "gone", "connected_to": [{"masterid": 3}]}])
    local = [{"name": n, "connected": n != "b1", "shell": True, "paused": False, "system": "posix", "info": "",
              "allowed": True, "sessions": 0, "pb_references": None} for n in ("a1", "b1", "dup")]
    everyone = Policy([Rule(users=("alice",), rights=("shell",))])
    rows = {r["name"]: r for r in site_workers(a, everyone, ALICE, local, lambda: FakeMaster(data)).result}
    assert (rows["a1"]["master"], rows["a1"]["here"]) == ("A", True)
    assert (rows["b1"]["master"], rows["b1"]["where"], rows["b1"]["connected"]) == ("B", "host:/srv/B", True)
    assert rows["b1"]["sessions"] == 1 and rows["b1"]["stale_database_rows"] == []
    assert rows["dup"]["masters"] == ["A", "B"]
    assert (rows["gone"]["connected"], rows["gone"]["stale_database_rows"]) == (False, ["host:/srv/dead"])
    assert [master_label(rows[n]) for n in ("a1", "b1", "dup", "gone")] == [
        "here (master A)", "on master B", "on 2 masters: A, B", "nowhere (stale db row)"]


def test_site_workers_show_only_workers_the_operator_has_a_right_on() -> None:
    router = Router()
    a, _ = joined(router, "A", []), joined(router, "B", ["secret", "open"])
    policy = Policy([Rule(users=("alice",), workers=("open",), rights=("shell",))])
    rows = site_workers(a, policy, ALICE, [], lambda: FakeMaster(FakeData([], []))).result
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
