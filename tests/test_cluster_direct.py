"""The direct stream of a routed session (master_side.cluster.offers, .direct): the offer as it comes off the wire,
the bounds on B's offers (per calling master, in all, single use, expiry), the address of B's PB port, and the
switch of a session's messages from the router to the connection without losing their order; over the router of
tests/test_cluster.py, B's offer in its answer, its audit of the path, the offer withdrawn from the PB port when the
session ends, and the connection lost ending the session as the router lost does. (The connection itself, on a real
Buildbot PB port: tests/e2e/test_cluster_direct_e2e.py.)"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from master_side.cluster import serve
from master_side.cluster.config import ClusterConfig
from master_side.cluster.direct import SESSION, DirectDoor, DirectLink, Sender
from master_side.cluster.offers import (
    MAX_DIRECT,
    MAX_PER_MASTER,
    OFFER_TTL,
    USER_PREFIX,
    DirectOffer,
    Offers,
    parse_address,
    pb_address,
)
from master_side.cluster.serve import RouterSink
from slaveshell.vocabulary.protocol import ExitStatus, ProtocolError

from .direct_fakes import Connector, Mind, PBManager, Perspective, audited_paths, lean_pair, pb_door
from .test_cluster_routed import OperatorSink, Site

GOOD = {"host": "b.example.org", "port": 9989, "username": USER_PREFIX + "ab" * 16, "password": "cd" * 16}


def test_an_offer_comes_off_the_wire_checked() -> None:
    assert DirectOffer.from_wire(GOOD).to_wire() == GOOD
    for change in ({"port": 0}, {"port": 70000}, {"port": "9989"}, {"host": ""}, {"host": "a b"},
                   {"host": "x\x1b[2J"}, {"host": "h" * 300}, {"username": "ab" * 16},
                   {"username": USER_PREFIX + "AB" * 16}, {"username": USER_PREFIX + "ab"},
                   {"password": "cd" * 15}, {"password": None}, {"extra": 1}):
        with pytest.raises(ProtocolError):
            DirectOffer.from_wire({**GOOD, **change})
    with pytest.raises(ProtocolError):
        DirectOffer.from_wire([GOOD])


def test_offers_are_bounded_per_calling_master_and_in_all() -> None:
    offers = Offers()
    for i in range(MAX_PER_MASTER):
        assert not isinstance(offers.make("A", f"t{i}", 0.0), str)
    refused = offers.make("A", "one more", 0.0)
    assert refused == f"{MAX_PER_MASTER} direct connections for master A (its limit)"
    masters = iter(f"M{i}" for i in range(1000))
    while len(offers.live) < MAX_DIRECT:
        assert not isinstance(offers.make(next(masters), "t", 0.0), str)
    assert offers.make("Z", "t", 0.0) == f"{MAX_DIRECT} direct connections in all (the limit)"


def test_an_offer_is_taken_once_within_its_time_and_then_withdrawn() -> None:
    offers = Offers()
    first, second = offers.make("A", "t1", 0.0), offers.make("A", "t2", 0.0)
    assert not isinstance(first, str) and not isinstance(second, str)
    assert first.username != second.username and first.password != second.password
    assert len(first.username) == len(USER_PREFIX) + 32 and len(first.password) == 32  # 128 random bits each
    assert offers.take(first.username, 1.0) is first
    assert offers.take(first.username, 1.0) is None  # replayed
    assert offers.take("nobody", 1.0) is None
    assert offers.take(second.username, OFFER_TTL + 0.1) is None  # too late
    assert offers.expired(OFFER_TTL + 0.1) == [second]  # withdrawn; the taken one is a connection now
    assert list(offers.live) == [first.username]
    assert offers.drop(first.username) is first and not offers.live


def test_the_pb_ports_address_as_other_masters_reach_it() -> None:
    def host() -> str:
        return "b.example.org"

    assert pb_address(9989, host) == ("b.example.org", 9989)
    assert pb_address("9989", host) == ("b.example.org", 9989)
    assert pb_address("tcp:9989", host) == ("b.example.org", 9989)
    assert pb_address("tcp:9989:interface=127.0.0.1", host) == ("127.0.0.1", 9989)
    assert pb_address("tcp:9989:interface=0.0.0.0", host) == ("b.example.org", 9989)
    assert pb_address("tcp6:9989:interface=\\:\\:1", host) == ("::1", 9989)
    assert pb_address("unix:/tmp/pb", host) is None
    assert parse_address("b:1") == ("b", 1) and parse_address("[::1]:9989") == ("::1", 9989)
    for bad in ("b", "b:", ":1", "b:0", "b:x"):
        with pytest.raises(ValueError):
            parse_address(bad)
    base = {"router_url": "ws://r/ws", "realm": "r", "authid": "B", "master": "B", "ticket": "t"}
    assert ClusterConfig(**base, direct=True, direct_address="b:9989").errors() == []  # type: ignore[arg-type]
    assert ClusterConfig(**base, direct_address="b").errors() == ["cluster: direct_address must be host:port"]  # type: ignore[arg-type]
    assert ClusterConfig(**base, direct=1).errors() == ["cluster: direct must be True or False"]  # type: ignore[arg-type]


def test_bs_messages_switch_to_the_connection_once_those_on_the_router_are_answered() -> None:
    clock = task.Clock()
    routed: list[tuple[object, defer.Deferred[object]]] = []
    direct: list[tuple[object, defer.Deferred[object]]] = []

    class Link:
        def call(self, uri: str, wire: object, timeout: float | None = None) -> defer.Deferred[object]:
            d: defer.Deferred[object] = defer.Deferred()
            routed.append((wire, d))
            return d

    def send(wire: object) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        direct.append((wire, d))
        return d

    sink = RouterSink(Link(), "uri", clock.seconds)  # type: ignore[arg-type]
    sink.output(1, b"one")
    sink.output(1, b"two")
    sink.use(send)
    sink.output(1, b"three")  # waits: two messages are on their way through the router
    assert [w for w, _ in routed] == [[0, "output", 1, b"one"], [1, "output", 1, b"two"]] and direct == []
    routed[0][1].callback(None)
    assert direct == []
    routed[1][1].callback(None)
    assert [w for w, _ in direct] == [[2, "output", 1, b"three"]]
    sink.exit(ExitStatus(code=0))
    assert [w for w, _ in direct][-1] == [3, "exit", 0, None, ""] and len(routed) == 2


def direct_site() -> tuple[Site, PBManager, list[tuple[str, str, str]]]:
    site = Site()
    manager, site.served.door = pb_door(site.clock)
    return site, manager, audited_paths(site.served)


def test_b_offers_a_one_time_login_audits_the_path_and_withdraws_it_when_the_session_ends() -> None:
    site, manager, paths = direct_site()
    sink = OperatorSink()
    view = site.routed(sink)
    offer = view.offer
    assert offer is not None and (offer.host, offer.port) == ("127.0.0.1", 9989)
    assert list(manager.users) == [offer.username] and manager.users[offer.username][0] == offer.password
    # The login: its avatar, once; the name is gone from the port at once.
    mind = Mind()
    avatar = manager.users[offer.username][1](mind, offer.username)
    assert avatar is not None and manager.users == {}
    avatar.attached(mind)
    assert avatar.perspective_ready() is True
    assert paths[-1] == ("s1", "cluster:A/alice", "messages from master A: direct (a Perspective Broker "
                                                  "connection to this master's PB port)")
    avatar.perspective_m([0, "input", b"ls\n"])
    assert site.views[0].got[-1] == ("input", b"ls\n")
    site.views[0].sink.output(1, b"out")
    assert mind.got[-1] == [1, "output", 1, b"out"]  # B's first message (0) went through the router
    # The connection lost after READY: the session ends, as when the router is lost.
    avatar.detached(mind)
    assert site.views[0].got[-1] == ("end", "the direct connection from master A was lost")


def test_an_offer_not_used_in_time_is_withdrawn_and_the_session_stays_on_the_router() -> None:
    site, manager, paths = direct_site()
    view = site.routed()
    assert len(manager.users) == 1
    site.clock.advance(OFFER_TTL + 1)
    site.served.tick(site.clock.seconds())
    assert manager.users == {}
    assert paths[-1][2] == ("messages from master A: router (master A did not use the direct login within "
                            f"{OFFER_TTL:g} s)")
    site.a.call(view.in_uri, [0, "input", b"still\n"])
    assert site.views[0].got[-1] == ("input", b"still\n")


def test_an_offer_is_withdrawn_when_its_session_ends_before_it_is_used() -> None:
    site, manager, _ = direct_site()
    view = site.routed()
    username = next(iter(manager.users))
    factory = manager.users[username][1]
    site.a.call(view.in_uri, [0, "close"])
    site.views[0].sink.exit(ExitStatus(code=0))
    assert manager.users == {}
    assert factory(Mind(), username) is None  # a login still on its way finds nothing


def test_without_direct_streams_b_audits_the_router_path() -> None:
    site = Site()
    paths: list[str] = []
    site.served.path_event = lambda session_id, worker, who, detail: paths.append(detail)
    view = site.routed()
    assert view.offer is None
    assert paths == ["messages from master A: router (direct streams are not enabled on master B)"]


def test_bounds_reach_the_audit_and_leave_the_session_on_the_router() -> None:
    site, manager, paths = direct_site()
    door = site.served.door
    assert door is not None
    door.offers.per_master = 0
    view = site.routed()
    assert view.offer is None and manager.users == {}
    assert paths[-1][2] == ("messages from master A: router (no direct connection offered: 0 direct connections "
                            "for master A (its limit))")
    assert serve.MAX_PER_MASTER >= MAX_PER_MASTER  # a session has at most one offer: the sessions' bound holds


def test_as_messages_switch_to_the_connection_and_its_loss_ends_the_session_with_a_line() -> None:
    site, manager, _ = direct_site()
    sink = OperatorSink()
    view = site.routed(sink)
    perspective, connector = Perspective(), Connector()
    view.input(b"a")  # through the router
    view.use_direct(DirectLink(perspective, connector, Sender(perspective)))
    view.input(b"b")
    assert perspective.got == [[1, "input", b"b"]]
    assert [w for _, w in site.views[0].got] == [b"a"]
    # B's messages over the connection are taken in sequence with those of the router.
    view.take([1, "output", 1, b"x"])
    assert sink.out[-1] == ("output", b"x")
    view.direct_lost()
    status = sink.out[-1][1]
    assert isinstance(status, ExitStatus) and status.lost
    assert status.reason == "the session on b1 ended: the direct connection to master B was lost"


def test_a_closes_the_connection_once_the_session_ended() -> None:
    site, _, _ = direct_site()
    sink = OperatorSink()
    view = site.routed(sink)
    connector = Connector()
    perspective = Perspective()
    view.use_direct(DirectLink(perspective, connector, Sender(perspective)))
    view.take([1, "exit", 0, None, ""])
    assert sink.out[-1] == ("exit", ExitStatus(code=0))
    assert not connector.closed  # the answer to B's exit leaves first
    site.clock.advance(0)
    assert connector.closed


def test_a_master_without_a_tcp_pb_port_serves_on_the_router_and_says_why() -> None:
    site = Site()
    paths: list[str] = []
    site.served.door = DirectDoor(lambda: PBManager(), lambda: "this master has no TCP PB port", site.clock,
                                  site.clock.seconds)
    site.served.path_event = lambda session_id, worker, who, detail: paths.append(detail)
    assert site.routed().offer is None
    assert paths == ["messages from master A: router (no direct connection offered: this master has no TCP PB port)"]


def test_a_direct_sender_holds_messages_while_the_connection_is_full_and_writes_them_in_order() -> None:
    """Answer-less writes: Twisted pauses the sender (its producer) when the transport holds more than its buffer;
    messages then wait, in order, and the session's pump with them (their Deferreds), so that a peer that does not
    read cannot make this side hold more than Twisted's buffer and 8 messages."""
    from twisted.internet.testing import StringTransport

    perspective = Perspective()
    transport = StringTransport()
    perspective.broker = type("Broker", (), {"transport": transport})()  # type: ignore[attr-defined]
    sender = Sender(perspective)
    assert transport.producer is sender and transport.streaming
    assert sender.send([0, "input", b"a"]) is None
    sender.pauseProducing()  # as Twisted does past the transport's buffer
    waiting = [sender.send([1, "input", b"b"]), sender.send([2, "input", b"c"])]
    assert perspective.got == [[0, "input", b"a"]] and all(isinstance(d, defer.Deferred) for d in waiting)
    fired: list[int] = []
    for i, d in enumerate(waiting):
        assert d is not None
        d.addCallback(lambda _, i=i: fired.append(i))
    sender.resumeProducing()
    assert perspective.got[1:] == [[1, "input", b"b"], [2, "input", b"c"]] and fired == [0, 1]
    sender.pauseProducing()
    lost = sender.send([3, "eof"])
    assert lost is not None
    failures: list[object] = []
    lost.addErrback(failures.append)
    sender.stopProducing()  # the connection went
    assert len(failures) == 1


def test_the_session_pump_waits_for_a_paused_direct_connection() -> None:
    clock = task.Clock()

    class Link:
        def call(self, uri: str, wire: object, timeout: float | None = None) -> defer.Deferred[object]:
            raise AssertionError("nothing goes through the router here")

    perspective = Perspective()
    sender = Sender(perspective)
    sink = RouterSink(Link(), "uri", clock.seconds)  # type: ignore[arg-type]
    sink.use(sender.send)
    sender.pauseProducing()
    for i in range(20):
        sink.output(1, bytes([65 + i]))
    assert perspective.got == [] and len(sender.waiting) == serve.MAX_OUTSTANDING  # the rest waits in the sink
    sender.resumeProducing()
    assert [w[3] for w in perspective.got] == [bytes([65 + i]) for i in range(20)]  # type: ignore[index]


def test_after_ready_the_bulk_and_acks_go_as_lean_calls_both_ways_in_order_with_the_rest() -> None:
    """Output, input and acknowledgements as lean calls (no jelly, the payload unjoined), everything else as PB
    calls of `m`, all in the order sent; each side takes them as the same `[seq, kind, values...]`."""
    pump, avatar, end, link, took, _ = lean_pair(SESSION)
    assert avatar.sender.lean is not None and link.sender.lean is not None
    for wire in ([0, "input", b"ls\r"], [1, "ack", 524288], [2, "resize", 100, 40], [3, "input", b"x" * 300_000]):
        assert link.send(wire) is None
    pump.flush()
    assert end.got == [[0, "input", b"ls\r"], [1, "ack", 524288], [2, "resize", 100, 40],
                       [3, "input", b"x" * 300_000]]
    for wire in ([0, "output", 1, b"y" * 524288], [1, "input_ack", 3, False, False], [2, "output", 2, b"e"],
                 [3, "input_ack", 1, True, True], [4, "exit", 0, None, ""]):
        assert end.send(wire) is None
    pump.flush()
    assert took == [[0, "output", 1, b"y" * 524288], [1, "input_ack", 3, False, False], [2, "output", 2, b"e"],
                    [3, "input_ack", 1, True, True], [4, "exit", 0, None, ""]]


def test_a_malformed_lean_call_is_refused_as_a_malformed_message_on_either_side() -> None:
    """A hostile peer's lean call of the wrong shape reaches neither the session nor Banana's loop: it is refused
    where messages are (B: the view's refusal, which costs the session; A: the session ends, B broke the
    protocol). A lean call to an object that takes none (the avatar itself) is dropped."""
    from slaveshell.plumbing.lean_calls import COMMAND, _write

    pump, avatar, end, link, took, refused = lean_pair(SESSION)
    inbox = link.sender.lean
    _write(inbox.broker, [COMMAND, inbox.luid, b"routed_ack", b"lots", 5])
    _write(inbox.broker, [COMMAND, link.perspective.luid, b"routed_input", 0, b"x"])
    pump.flush()
    assert end.refused == ["routed_ack: expected 2 integers"] and end.got == []
    mind = avatar.sender.lean
    _write(mind.broker, [COMMAND, mind.luid, b"routed_output", 0, b"not a stream", b"x"])
    _write(mind.broker, [COMMAND, mind.luid, b"routed_input", 0, b"x"])  # not a method A takes
    _write(mind.broker, [COMMAND, mind.luid, b"routed_input_ack", 0, 1, 2, 0])
    pump.flush()
    assert refused == ["routed_output: expected 2 integers", "a lean call of a method that has none",
                       "routed_input_ack: expected seq, nbytes, hidden and flush (0 or 1)"] and took == []
