"""Routed transfers (`slaveshell cp` through A to a worker of B) over the direct stream between the two masters
(master_side.cluster.direct, .copy_serve, .copy_relay), over the router of tests/test_cluster.py: B's one-time login
in its answer and its audit of the path, the switch of both sides' messages to the connection in order, the
fallback to the router (no direct streams on B, a bound, a login not used in time), the connection's loss ending
the transfer on both sides, A closing it once the transfer ended; and what a hostile B can do over it: every
message of B's is checked on A as through the router (sequence, names, sizes, modes, calls), a lean call of the
wrong shape is refused, and what either side holds for a peer that does not read stays bounded. (The connection
itself, on a real Buildbot PB port: tests/e2e/test_cluster_direct_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.spread import pb

from master_side.cluster import serve
from master_side.cluster.copy_relay import MAX_HELD
from master_side.cluster.copy_stream import MAX_OUTSTANDING
from master_side.cluster.direct import COPY, COPY_LEAN, DirectDoor, DirectLink, Sender, _CopyMind
from master_side.cluster.offers import OFFER_TTL, USER_PREFIX
from slaveshell.vocabulary.copying import (
    CHUNK,
    DOWN,
    ENTRY_COST,
    WINDOW,
    Ack,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferRequest,
)

from .direct_fakes import Connector, Mind, PBManager, Perspective, audited_paths, lean_pair, pb_door, ready_avatar
from .test_cluster_copy import Party, Site
from .test_cluster_routed import ALICE

DIRECT_DETAIL = "messages from master A: direct (a Perspective Broker connection to this master's PB port)"


def direct_site() -> tuple[Site, PBManager, DirectDoor, list[tuple[str, str, str]]]:
    site = Site()
    manager, door = pb_door(site.clock)
    site.served.door = lambda: door
    return site, manager, door, audited_paths(site.served)


def test_b_offers_a_transfer_a_one_time_login_and_both_sides_switch_to_the_connection_in_order() -> None:
    site, manager, door, paths = direct_site()
    party = Party()
    transfer, _ = site.copy(party)
    b = site.transfers[0]
    offer = transfer.offer
    assert offer is not None and (offer.host, offer.port) == ("127.0.0.1", 9989)
    assert list(manager.users) == [offer.username] and manager.users[offer.username][0] == offer.password
    entry = Entry("file", "f", 0o644, 5, 0.0)
    transfer.decoded("operator", lambda: entry)  # before READY: through the router
    avatar, mind = ready_avatar(manager, offer)
    assert avatar.lean is COPY
    assert paths == [("t1", "cluster:A/alice", DIRECT_DETAIL)]
    # B's messages go over the connection from now on (none were on their way through the router).
    b.party.send(Ack(1024))
    assert mind.got == [[0, "ack", 1024]]
    # A's, once its call on the router is answered (the fake router answers at once).
    perspective, connector = Perspective(), Connector()
    transfer.use_direct(DirectLink(perspective, connector, Sender(perspective, COPY_LEAN)))
    transfer.arrived("operator", Data, (b"hello",))
    transfer.decoded("operator", lambda: DoneFile(""))
    assert perspective.got == [[1, "data", b"hello"], [2, "done_file", ""]]
    avatar.perspective_m([1, "data", b"hello"])
    avatar.perspective_m([2, "done_file", ""])
    assert b.got == [entry, Data(b"hello"), DoneFile("")]  # in order across the switch
    # B's messages over the connection are taken as those of the router.
    transfer.take(mind.got[-1])
    assert party.got == [Ack(1024)]
    transfer.decoded("operator", lambda: Finish())  # B's success comes after the operator's finish
    b.end(True, "")
    site.clock.advance(0)
    assert mind.got[-1] == [1, "result", True, ""]
    transfer.take(mind.got[-1])
    assert party.got[-1] == Result(True, "") and transfer.ended
    assert not connector.closed  # the last message written leaves first
    site.clock.advance(0)
    assert connector.closed and not site.served.served and door.avatars == {} and not door.offers.live


def test_without_direct_streams_the_transfer_stays_on_the_router_and_b_says_why() -> None:
    site = Site()
    paths: list[str] = []
    site.served.path_event = lambda transfer_id, worker, who, detail: paths.append(detail)
    party = Party()
    transfer, _ = site.copy(party)
    assert transfer.offer is None and transfer.direct is None
    assert paths == ["messages from master A: router (direct streams are not enabled on master B)"]
    transfer.arrived("operator", Data, (b"x",))
    assert site.transfers[0].got == [Data(b"x")]


def test_a_bound_or_an_unused_login_leaves_the_transfer_on_the_router_audited() -> None:
    site, manager, door, paths = direct_site()
    door.offers.per_master = 0
    transfer, _ = site.copy()
    assert transfer.offer is None and manager.users == {}
    assert paths[-1][2] == ("messages from master A: router (no direct connection offered: 0 direct connections "
                            "for master A (its limit))")
    door.offers.per_master = 16
    site2, manager2, door2, paths2 = direct_site()
    transfer2, _ = site2.copy()
    assert transfer2.offer is not None
    # The door's expiry runs in the routed sessions' tick, which hands a transfer's offer to the transfers.
    sessions = serve.ServedSessions(site2.b, lambda *a: None, lambda *a: None, lambda *a: None, site2.clock.seconds)
    sessions.door = door2
    sessions.other_expired = site2.served.expired
    site2.clock.advance(OFFER_TTL + 1)
    sessions.tick(site2.clock.seconds())
    assert manager2.users == {}
    assert paths2[-1][2] == ("messages from master A: router (master A did not use the direct login within "
                             f"{OFFER_TTL:g} s)")
    assert door2.offers.live == {}
    transfer2.arrived("operator", Data, (b"still",))
    assert site2.transfers[0].got == [Data(b"still")]


def test_a_login_is_single_use_and_a_stranger_gets_nothing() -> None:
    site, manager, door, _ = direct_site()
    transfer, _ = site.copy()
    offer = transfer.offer
    assert offer is not None
    factory = manager.users[offer.username][1]
    assert factory(Mind(), USER_PREFIX + "00" * 16) is None  # a name the door never offered
    assert factory(Mind(), offer.username) is not None
    assert factory(Mind(), offer.username) is None  # replayed


def test_the_direct_connection_lost_ends_the_transfer_on_both_sides_with_a_line() -> None:
    site, manager, door, _ = direct_site()
    party = Party()
    transfer, _ = site.copy(party)
    b = site.transfers[0]
    avatar, mind = ready_avatar(manager, transfer.offer)
    avatar.detached(mind)
    assert b.ended and b.outcome == (False, "the direct connection from master A was lost")
    assert not site.served.served
    perspective, connector = Perspective(), Connector()
    transfer.use_direct(DirectLink(perspective, connector, Sender(perspective, COPY_LEAN)))
    transfer.direct_lost()
    assert transfer.ended and party.got[-1] == Result(False, "the transfer with b1 ended: the direct connection "
                                                             "to master B was lost")
    assert not site.routed.live


BAD_FROM_B = [
    ([5, "data", b"x"], "message 5 where 0 was expected"),
    ([0, "data", b"x" * (CHUNK + 1)], "data"),
    ([0, "entry", "file", "../etc/passwd", 0o644, 1, 0.0], ""),
    ([0, "entry", "file", "/etc/passwd", 0o644, 1, 0.0], ""),
    ([0, "entry", "file", "f", 0o100644, 1, 0.0], ""),  # a mode carrying a file type
    ([0, "entry", "symlink", "f", 0o777, 0, 0.0], ""),
    ([0, "entry", "file", "f", 0o644, -1, 0.0], ""),
    ([0, "shutdown"], ""),
    ([0, "result", "yes", ""], ""),
    ("data", ""),
]


@pytest.mark.parametrize("wire,why", BAD_FROM_B)
def test_a_hostile_bs_message_over_the_connection_is_checked_as_through_the_router(wire: object, why: str) -> None:
    site, manager, _, _ = direct_site()
    party = Party()
    transfer, _ = site.copy(party)
    perspective, connector = Perspective(), Connector()
    transfer.use_direct(DirectLink(perspective, connector, Sender(perspective, COPY_LEAN)))
    transfer.take(wire)
    assert transfer.ended and party.got and all(not isinstance(e, (Entry, Data)) for e in party.got)
    last = party.got[-1]
    assert isinstance(last, Result) and not last.ok and "master B broke the protocol" in last.reason
    assert why in last.reason
    assert perspective.got[-1][1] == "cancel"  # B told, over the connection, before it is closed
    site.clock.advance(0)
    assert connector.closed


def test_a_transfers_data_and_acks_go_as_lean_calls_both_ways_in_order_with_the_rest() -> None:
    pump, avatar, end, link, took, _ = lean_pair(COPY)
    assert avatar.sender is not None and avatar.sender.lean is not None and link.sender.lean is not None
    upload = [[0, "entry", "file", "f", 0o644, CHUNK + 1, 0.0], [1, "data", b"u" * CHUNK], [2, "data", b"v"],
              [3, "done_file", ""], [4, "finish"]]
    for wire in upload:
        assert link.send(wire) is None
    pump.flush()
    assert end.got == upload
    download = [[0, "ack", 1024], [1, "data", b"d" * CHUNK], [2, "ack", CHUNK], [3, "result", True, ""]]
    for wire in download:
        assert end.send(wire) is None
    pump.flush()
    assert took == download


def test_a_malformed_lean_call_of_a_transfer_is_refused_on_either_side() -> None:
    """A hostile peer's lean call of the wrong shape, or of a session's method on a transfer's connection, reaches
    neither the transfer nor Banana's loop: it is refused as a malformed message (the transfer ends)."""
    from slaveshell.plumbing.lean_calls import COMMAND, _write

    pump, avatar, end, link, took, a_refused = lean_pair(COPY)
    inbox = link.sender.lean
    _write(inbox.broker, [COMMAND, inbox.luid, b"routed_data", b"seq", b"x"])
    _write(inbox.broker, [COMMAND, inbox.luid, b"routed_input", 0, b"x"])  # a session's method
    pump.flush()
    assert end.refused == ["routed_data: expected 1 integers", "a lean call of a method that has none"]
    assert end.got == []
    mind = avatar.sender.lean  # type: ignore[union-attr]
    _write(mind.broker, [COMMAND, mind.luid, b"routed_data", 0, 5])
    _write(mind.broker, [COMMAND, mind.luid, b"routed_output", 0, 1, b"x"])
    pump.flush()
    assert a_refused == ["routed_data: expected 1 integers and bytes", "a lean call of a method that has none"]
    assert took == []


def test_a_hostile_bs_lean_chunk_over_the_limit_ends_the_transfer_on_a() -> None:
    site, _, _, _ = direct_site()
    party = Party()
    transfer, _ = site.copy(party)
    mind = _CopyMind(transfer.take, transfer.malformed)
    mind.remote_routed_data(0, b"x" * (CHUNK + 1))
    assert transfer.ended and isinstance(party.got[-1], Result) and "broke the protocol" in party.got[-1].reason
    assert not any(isinstance(e, Data) for e in party.got)


def test_what_either_side_holds_for_a_peer_that_does_not_read_is_bounded() -> None:
    """Twisted pauses the sender past its transport's buffer: MAX_OUTSTANDING messages wait in the sender, the
    rest in the transfer's queue, which a client or worker past its window ends (A: MAX_HELD bytes; B: its
    relay holds the worker to the window, and its queue to its limit)."""
    site, manager, _, _ = direct_site()
    party = Party()
    transfer, _ = site.copy(party)
    perspective = Perspective()
    sender = Sender(perspective, COPY_LEAN)
    transfer.use_direct(DirectLink(perspective, Connector(), sender))
    sender.pauseProducing()
    for _ in range(MAX_HELD // CHUNK + MAX_OUTSTANDING + 2):
        transfer.arrived("operator", Data, (b"x" * CHUNK,))
    assert perspective.got == [] and len(sender.waiting) == MAX_OUTSTANDING
    assert transfer.ended and isinstance(party.got[-1], Result) and "sent past its window" in party.got[-1].reason
    # B: a calling master that does not read its messages (a flood of the worker's, past the queue's limit).
    avatar, mind = ready_avatar(manager, transfer.offer)
    b_sender = avatar.sender
    assert b_sender is not None
    b_sender.pauseProducing()
    b = site.transfers[0]
    served = next(iter(site.served.served.values()))
    for _ in range(served.calls.limit + MAX_OUTSTANDING + 1):
        b.party.send(Ack(1))
    assert len(b_sender.waiting) == MAX_OUTSTANDING and mind.got == []
    assert b.ended and b.outcome is not None and "does not take the transfer's messages" in b.outcome[1]


def test_bs_connection_sender_fails_the_transfer_once_the_connection_is_gone() -> None:
    site, manager, _, _ = direct_site()
    transfer, _ = site.copy()
    avatar, mind = ready_avatar(manager, transfer.offer)
    b = site.transfers[0]

    def dead(name: str, wire: object, pbanswer: bool = True) -> None:
        raise pb.DeadReferenceError("gone")

    mind.callRemote = dead  # type: ignore[method-assign]
    b.party.send(Ack(1))
    assert b.ended and b.outcome is not None and not b.outcome[0]
    assert not site.served.served


def test_transfers_and_sessions_share_the_doors_bounds() -> None:
    site, manager, door, _ = direct_site()
    door.offers.per_master = 1
    first, _ = site.copy()
    second, _ = site.copy()
    assert first.offer is not None and second.offer is None


DOWNLOAD = TransferRequest(direction=DOWN, worker="b1", sources=("/tmp/f",), dest="f")


def download(site: Site, party: Party) -> Any:
    d = site.routed.copy(ALICE, DOWNLOAD, party)
    transfer, _ = d.result
    return transfer


@pytest.mark.parametrize("stream,why", [
    ([["data", b"x"]], "data came outside a file"),
    ([["entry", "file", "f", 0o644, 3, 0.0], ["data", b"four"]], "more bytes than its declared size"),
    ([["entry", "file", "f", 0o644, 3, 0.0], ["done_file", ""]], "a file ended before its declared size"),
    ([["entry", "file", "f", 0o644, 3, 0.0], ["entry", "file", "g", 0o644, 0, 0.0]], "an entry came inside a file"),
    ([["entry", "file", "f", 0o644, WINDOW, 0.0]] + [["data", b"x" * CHUNK]] * (WINDOW // CHUNK),
     "the sender passed its window"),
])
def test_a_hostile_bs_download_out_of_order_or_past_the_window_ends_on_a(stream: list[list[object]],
                                                                        why: str) -> None:
    """A holds B's download stream to its order and the credit window as a master's relay holds a worker in a
    local download, whichever path B's messages take: a hostile B is ended here with a line, before the client."""
    site, _, _, _ = direct_site()
    party = Party()
    transfer = download(site, party)
    perspective = Perspective()
    transfer.use_direct(DirectLink(perspective, Connector(), Sender(perspective, COPY_LEAN)))
    for seq, message in enumerate(stream):
        transfer.take([seq, *message])
    last = party.got[-1]
    assert transfer.ended and isinstance(last, Result) and not last.ok, party.got
    assert "master B broke the protocol" in last.reason and why in last.reason


def test_an_honest_download_flows_within_the_window_as_the_operator_acknowledges() -> None:
    site, _, _, _ = direct_site()
    party = Party()
    transfer = download(site, party)
    size = 3 * WINDOW
    seq = 0

    def b_sends(*message: object) -> None:
        nonlocal seq
        transfer.take([seq, *message])
        seq += 1

    b_sends("entry", "file", "f", 0o644, size, 0.0)
    transfer.decoded("operator", lambda: Ack(ENTRY_COST))
    for _ in range(size // CHUNK):
        b_sends("data", b"x" * CHUNK)
        transfer.decoded("operator", lambda: Ack(CHUNK))
    b_sends("done_file", "")
    b_sends("finish")
    assert not transfer.ended and sum(len(e.chunk) for e in party.got if isinstance(e, Data)) == size
    transfer.decoded("operator", lambda: Ack(2 * ENTRY_COST))  # more than B sent: the client's bad message
    assert transfer.ended and "the operator sent a bad message: acknowledged more than was sent" in party.got[-1].reason


@pytest.mark.parametrize("wire", [[5, "data", b"x"], [0, "data", b"x" * (CHUNK + 1)], [0, "shutdown"],
                                  [0, "entry", "file", "../x", 0o644, 0, 0.0], [0, "alive", 1], "data"])
def test_a_hostile_as_message_over_the_connection_ends_the_transfer_on_b(wire: object) -> None:
    site, manager, _, _ = direct_site()
    transfer, _ = site.copy()
    avatar, _ = ready_avatar(manager, transfer.offer)
    avatar.perspective_m(wire)
    b = site.transfers[0]
    assert b.ended and b.outcome is not None and not b.outcome[0] and "master A sent a bad message" in b.outcome[1]
    assert b.got == []
