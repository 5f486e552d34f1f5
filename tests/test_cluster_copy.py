"""Transfers (`slaveshell cp`) routed between two masters (master_side.cluster.copy_serve on the worker's master B,
master_side.cluster.copy_relay on the operator's master A, master_side.cluster.copy_stream between them), over the
router of tests/test_cluster.py: B's authority over who calls and with what, its bounds, the order and checks of
the messages, what A holds, and the end of a transfer when either master goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task
from twisted.python.failure import Failure

from master_side.cluster import copy_serve, serve
from master_side.cluster.config import session_uri, worker_uri
from master_side.cluster.copy_relay import RoutedTransfers
from master_side.cluster.copy_serve import MAX_PER_MASTER, RouterParty, ServedTransfers
from master_side.cluster.copy_stream import MAX_OUTSTANDING, CopyCall, OrderedCalls
from master_side.cluster.link import ClusterUnavailable
from master_side.cluster.relay import Relays
from master_side.cluster.stream import Refused
from master_side.operators.copy_calls import CopyOperations
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.copying import (
    CHUNK,
    DOWN,
    UP,
    WINDOW,
    Ack,
    Cancel,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferRequest,
)
from slaveshell.vocabulary.policy import Action, ClusterIdentity, Identity, Policy, Rule
from slaveshell.vocabulary.protocol import ProtocolError

from .test_cluster import Router
from .test_cluster_routed import ALICE, TOKEN, link_of

REQUEST = TransferRequest(direction=UP, worker="b1", sources=("f",), dest="/tmp/f")


class FakeTransfer:
    """B's transfer relay as this module sees it (MasterTransfer's `decoded` and `end`)."""

    def __init__(self, who: Identity, request: TransferRequest, party: RouterParty) -> None:
        self.who, self.request, self.party = who, request, party
        self.id = "t1"
        self.ended = False
        self.undo: list[Callable[[], None]] = []
        self.got: list[object] = []
        self.outcome: tuple[bool, str] | None = None

    def decoded(self, side: str, decode: Callable[[], Any]) -> None:
        if self.ended:
            return
        try:
            self.got.append(decode())
        except ProtocolError as e:
            self.end(False, f"the {side} sent a bad message: {e}")

    def cancelled(self, why: str) -> None:
        if not self.ended:
            self.got.append(Cancel(why))
        self.end(False, why)

    def end(self, ok: bool, reason: str, reported_by: str | None = None) -> None:
        if self.ended:
            return
        self.ended, self.outcome = True, (ok, reason)
        for undo in self.undo:
            undo()
        if reported_by != "operator":
            self.party.send(Result(ok, reason))


class Party:
    """The operator's end on A (the door's WireParty)."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.disconnects: list[Callable[[], None]] = []

    def send(self, event: object) -> None:
        self.got.append(event)

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.disconnects.append(callback)
        return lambda: None


class Site:
    def __init__(self, policy: Policy | None = None) -> None:
        self.clock = task.Clock()
        self.router = Router()
        self.a = link_of("A", self.clock)
        self.b = link_of("B", self.clock, ("b1",))
        self.policy = policy or Policy([Rule(users=["cluster:A/alice"])])
        self.transfers: list[FakeTransfer] = []
        self.audited: list[tuple[str, str, str]] = []
        self.served = ServedTransfers(self.b, self.copier, lambda who, w, m: self.audited.append((who.user, w, m)),
                                      self.clock.seconds)
        self.relays = Relays(self.a, self.clock.seconds, lambda: 30.0)
        self.routed = RoutedTransfers(self.a, self.relays, self.clock.seconds, lambda: 30.0)
        self.a._joined(self.router.session(authid="A"), None)
        self.b._joined(self.router.session(authid="B"), None)
        self.b.sync(["b1"], 0.0)

    def copier(self, who: Identity, request: TransferRequest, party: RouterParty) -> Any:
        decision = self.policy.may(who, Action.COPY, request.worker)
        if not decision.allowed:
            raise Refused("permission denied", f"permission denied: {decision.reason}")
        transfer = FakeTransfer(who, request, party)
        self.transfers.append(transfer)
        return defer.succeed((transfer, {"total": 0, "entries": 0, "recorded": True}))

    def copy(self, party: Party | None = None) -> Any:
        d = self.routed.copy(ALICE, REQUEST, party or Party())
        result = d.result
        if isinstance(result, Failure):
            d.addErrback(lambda _: None)
            result.raiseException()
        return result


def test_a_copy_is_relayed_by_b_for_the_identity_a_vouches_for_and_both_procedures_go() -> None:
    site = Site()
    party = Party()
    transfer, sizes = site.copy(party)
    assert sizes == {"total": 0, "entries": 0, "recorded": True} and transfer.master == "B"
    b = site.transfers[0]
    assert isinstance(b.who, ClusterIdentity) and b.who.user == "cluster:A/alice"
    entry = Entry("file", "f", 0o644, 5, 0.0)
    transfer.decoded("operator", lambda: entry)
    transfer.arrived("operator", Data, (b"hello",))
    transfer.decoded("operator", lambda: DoneFile(""))
    assert b.got == [entry, Data(b"hello"), DoneFile("")]
    b.party.send(Ack(1029))
    assert party.got == [Ack(1029)]
    transfer.decoded("operator", lambda: Finish())  # B's success comes after the operator's finish
    b.end(True, "")
    site.clock.advance(0)
    assert party.got[-1] == Result(True, "")
    assert transfer.ended and not site.routed.live and not site.served.served
    assert not [uri for uri in site.router.procedures if ".session." in uri]


def test_bs_policy_refusal_reaches_a_as_b_wrote_it() -> None:
    site = Site(Policy([Rule(users=["cluster:C/alice"])]))
    with pytest.raises(Refused) as refused:
        site.copy()
    assert refused.value.kind == "permission denied"
    assert "cluster:A/alice (vouched for by master A) may not copy on worker b1" in refused.value.message
    assert not [uri for uri in site.router.procedures if ".session." in uri]


def test_b_refuses_a_caller_that_is_not_a_slaveshell_master() -> None:
    site = Site()
    stranger = site.router.session(authid="anonymous", role="anonymous")
    d = stranger.call(worker_uri("b1", "copy"), CopyCall(REQUEST, "alice", (), TOKEN).to_wire())
    error = d.result.value
    d.addErrback(lambda f: None)
    assert isinstance(error, ApplicationError) and error.error == "slaveshell.error.not_authorized"
    assert not site.transfers


def test_b_bounds_the_transfers_one_master_makes_it_relay_and_audits_the_refusal() -> None:
    site = Site()
    for _ in range(MAX_PER_MASTER):
        site.copy()
    with pytest.raises(Refused) as refused:
        site.copy()
    assert refused.value.kind == "limit" and f"already relays {MAX_PER_MASTER} transfers for master A" in str(
        refused.value)
    assert site.audited[-1][0] == "cluster:A/alice"


def test_only_the_master_that_started_the_transfer_is_heard_and_in_order() -> None:
    site = Site()
    party = Party()
    transfer, _ = site.copy(party)
    b = site.transfers[0]
    in_uri = transfer.calls.uri
    other = site.router.session(authid="C")
    other.call(in_uri, [0, "data", b"forged"])
    assert b.got == []
    other.call(session_uri(transfer.token, "out"), [0, "result", True, ""])
    assert party.got == []
    site.a.call(in_uri, [3, "data", b"x"])  # out of sequence
    assert b.outcome is not None and "master A sent a bad message: message 3 where 0 was expected" in b.outcome[1]


def test_a_hostile_masters_oversize_chunk_or_unknown_call_ends_the_transfer_on_b() -> None:
    for bad in ([0, "data", b"x" * (CHUNK + 1)], [0, "shutdown"], [0, "entry", "file", "../x", 0, 0, 0.0],
                [0, "alive", 1], [-1, "data", b""], "data", [0]):
        site = Site()
        transfer, _ = site.copy()
        site.a.call(transfer.calls.uri, bad)
        b = site.transfers[0]
        assert b.ended and b.outcome is not None and not b.outcome[0], bad


def test_a_holds_no_more_than_the_window_of_a_client_that_ignores_it() -> None:
    site = Site()
    party = Party()
    transfer, _ = site.copy(party)
    del site.router.procedures[transfer.calls.uri]  # nothing is taken: every call stays in flight or waits
    held: list[defer.Deferred[object]] = []
    transfer.calls.link = type("Stuck", (), {"call": lambda self, uri, *a, **k: held.append(
        defer.Deferred()) or held[-1], "connected": True})()
    for _ in range(WINDOW // CHUNK + MAX_OUTSTANDING + 2):
        transfer.arrived("operator", Data, (b"x" * CHUNK,))
    assert len(held) == MAX_OUTSTANDING
    assert transfer.ended and isinstance(party.got[-1], Result) and not party.got[-1].ok
    assert "sent past its window" in party.got[-1].reason


def test_when_b_is_gone_a_ends_the_transfer_with_a_line() -> None:
    site = Site()
    party = Party()
    transfer, _ = site.copy(party)
    del site.router.procedures[transfer.calls.uri]
    site.clock.advance(serve.PING)
    site.routed.tick(site.clock.seconds())
    assert party.got[-1] == Result(False, "the transfer with b1 ended: master B is gone")


def test_when_a_is_gone_b_ends_the_transfer() -> None:
    site = Site()
    transfer, _ = site.copy()
    del site.router.procedures[session_uri(transfer.token, "out")]
    site.clock.advance(serve.PING)
    site.served.tick(site.clock.seconds())
    b = site.transfers[0]
    assert b.outcome == (False, "master A is gone")
    assert not site.served.served


def test_a_silent_a_is_taken_as_gone() -> None:
    site = Site()
    site.copy()
    site.clock.advance(serve.DEAD + 1)
    site.served.tick(site.clock.seconds())
    assert site.transfers[0].outcome == (False, "master A stopped answering")


def test_losing_the_router_ends_the_transfer_on_both_sides() -> None:
    site = Site()
    party = Party()
    site.copy(party)
    site.a._left(None, "lost")
    site.b._left(None, "lost")
    assert party.got[-1] == Result(False, "the transfer with b1 ended: this master lost the cluster's router")
    assert site.transfers[0].outcome == (False, "this master lost the cluster's router")


def test_the_operators_connection_lost_cancels_on_b() -> None:
    site = Site()
    party = Party()
    site.copy(party)
    for callback in party.disconnects:
        callback()
    assert site.transfers[0].outcome == (False, "ended by master A: its operator's connection was lost")


@pytest.mark.parametrize("change", [
    {"user": "a/b"}, {"groups": ["g"] * 300}, {"token": "Z" * 32}, {"extra": 1},
    {"request": {**CopyCall(REQUEST, "a", (), TOKEN).to_wire()["request"], "cwd": "/etc"}},  # type: ignore[dict-item]
    {"request": {**CopyCall(REQUEST, "a", (), TOKEN).to_wire()["request"], "operator": "root"}},  # type: ignore[dict-item]
    {"request": {**CopyCall(REQUEST, "a", (), TOKEN).to_wire()["request"], "direction": "sideways"}},  # type: ignore[dict-item]
])
def test_a_copy_call_is_checked(change: dict[str, object]) -> None:
    wire = {**CopyCall(REQUEST, "alice", ("ops",), TOKEN).to_wire(), **change}
    with pytest.raises(ProtocolError):
        CopyCall.from_wire(wire)


def test_each_side_waits_with_at_most_eight_calls_in_flight() -> None:
    clock = task.Clock()
    pending: list[defer.Deferred[object]] = []

    class Link:
        def call(self, uri: str, *args: object, timeout: float | None = None) -> defer.Deferred[object]:
            d: defer.Deferred[object] = defer.Deferred()
            pending.append(d)
            return d

    calls = OrderedCalls(Link(), "uri", clock.seconds, copy_serve.MAX_WAITING)  # type: ignore[arg-type]
    for _ in range(20):
        calls.send(Data(b"y"))
    assert len(pending) == MAX_OUTSTANDING and calls.held == 12
    pending[0].callback(None)
    assert len(pending) == MAX_OUTSTANDING + 1 and calls.held == 11


class FourEyes(CopyOperations):
    """The operators' API's cp calls on a master whose policy moderates cluster:A's transfers."""

    def __init__(self) -> None:
        self.policy = Policy([Rule(users=["cluster:A/alice"], moderated_by=["ops"])])
        self.started: list[tuple[Identity, Callable[[str], None]]] = []

    def copy(self, who: Identity, request: TransferRequest, operator: Any,
             waiting: Callable[[str], None] = lambda text: None) -> Any:
        self.started.append((who, waiting))
        return defer.succeed(("transfer", {}))


def test_a_routed_cp_on_a_four_eyes_worker_goes_through_bs_own_copy_and_its_waiting_line_to_a() -> None:
    """B's copy (with its approvals) is asked, and the line it waits with goes to A's operator."""
    api = FourEyes()
    who = ClusterIdentity.vouched("A", "alice", ())
    sent: list[str] = []

    class Calls:
        def waiting(self, text: str) -> None:
            sent.append(text)

    party = RouterParty(Calls())  # type: ignore[arg-type]
    d = api.copy_for_master(who, REQUEST, party)
    assert d.result == ("transfer", {})
    ((asked, waiting),) = api.started
    assert asked == who
    waiting("worker b1 is moderated: request r1 waits")
    assert sent == ["worker b1 is moderated: request r1 waits"]


def test_a_downloads_result_from_the_client_ends_the_transfer_on_both_sides() -> None:
    site = Site()
    transfer, _ = site.copy()
    transfer.decoded("operator", lambda: Result(True, ""))
    assert site.transfers[0].got == [Result(True, "")]
    assert transfer.ended and not site.routed.live
    assert not [uri for uri in site.router.procedures if uri.endswith(".out")]


def test_a_sends_b_the_operators_acknowledgements_of_one_turn_as_one_and_before_its_next_message() -> None:
    site = Site()
    party = Party()
    d = site.routed.copy(ALICE, TransferRequest(direction=DOWN, worker="b1", sources=("/tmp/f",), dest="f"), party)
    transfer, _ = d.result
    b = site.transfers[0]
    b.party.send(Entry("file", "f", 0o644, 3 * CHUNK, 0.0))
    for _ in range(3):
        b.party.send(Data(b"x" * CHUNK))
    site.clock.advance(0)
    assert len(party.got) == 4
    transfer.decoded("operator", lambda: Ack(1024 + CHUNK))  # the client's acks of two reads in one turn
    transfer.decoded("operator", lambda: Ack(CHUNK))
    assert b.got == []  # not yet: at the turn's end
    site.clock.advance(0)
    assert b.got == [Ack(1024 + 2 * CHUNK)]
    transfer.decoded("operator", lambda: Ack(CHUNK))
    transfer.decoded("operator", lambda: Result(False, "disk full"))  # its credit first, then the outcome
    assert b.got[1:] == [Ack(CHUNK), Result(False, "disk full")]
    site.clock.advance(0)
    assert len(b.got) == 3 and transfer.ended


def test_a_holds_no_more_than_a_window_of_what_b_sends_before_it_answers() -> None:
    from master_side.cluster.copy_relay import MAX_EARLY_BYTES

    site = Site()
    site.router.procedures[worker_uri("b1", "copy")] = lambda *args, **kw: defer.Deferred()  # B never answers
    d = site.routed.copy(ALICE, REQUEST, Party())
    failures: list[Failure] = []
    d.addErrback(failures.append)
    (transfer,) = site.routed.live.values()
    out = session_uri(transfer.token, "out")
    hostile_b = site.router.session(authid="B")
    for seq in range(MAX_EARLY_BYTES // CHUNK + 2):  # a hostile B: data past a window before its answer
        hostile_b.call(out, [seq, "data", b"x" * CHUNK])
    site.clock.advance(0)
    assert transfer.ended and not site.routed.live
    assert sum(len(e.chunk) for e in transfer._early if isinstance(e, Data)) <= MAX_EARLY_BYTES


def test_a_routed_cp_on_a_four_eyes_worker_waits_for_b_and_leaving_withdraws_it() -> None:
    """B's copy waits for its moderators: its line reaches A's operator before B's answer; A waits longer than a
    worker's start while B says it is there; the operator leaving withdraws the request on B."""
    from master_side.operators.approvals import Approvals, Kind

    from .test_cluster_routed import Trail

    site = Site(Policy([Rule(users=["cluster:A/alice"]), Rule(users=["bob"])]))
    trail = Trail()

    def refuse(who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError:
        return OperatorError(kind, message)

    approvals = Approvals(lambda: site.policy, lambda: site.clock, lambda: trail, refuse)

    @defer.inlineCallbacks
    def copier(who: Identity, request: TransferRequest, party: RouterParty) -> Any:
        try:
            yield approvals.ask(who, request.worker, Kind.COPY, "cp up: f -> /tmp/f", None, ("ops",),
                                party.waiting, [party.on_disconnect])
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        result = yield site.copier(who, request, party)
        return result

    site.served._copier = copier  # type: ignore[assignment]
    for leaving in (False, True):
        shown: list[str] = []
        party = Party()
        d = site.routed.copy(ALICE, REQUEST, party, shown.append)
        failures: list[Failure] = []
        d.addErrback(failures.append)
        ((request_id, _),) = approvals.pending.items()
        assert shown and shown[0].startswith(f"worker b1 is moderated: request {request_id} waits")
        if leaving:
            for leave in party.disconnects:
                leave()
        for _ in range(60):
            site.clock.advance(1)
            site.served.tick(site.clock.seconds())
            site.routed.tick(site.clock.seconds())
        if leaving:
            assert not approvals.pending and trail.events[-1][0] == "approval-withdrawn"
            assert failures and isinstance(failures[0].value, Refused)
        else:
            assert not d.called and approvals.pending
            approvals.approve(Identity(2000, 2000, 2, "bob", frozenset({"ops"})), request_id)
            transfer, _ = d.result
            assert transfer.id == "t1"


def test_a_transfer_b_started_is_recorded_on_a_with_its_id_however_soon_it_ended() -> None:
    """The twin of a routed open's rule (relay.answered): B's transfer ended before its answer came, or the
    operator left while B started it: A's `routed` event names B's transfer and says what became of it."""
    site = Site()
    records: list[tuple[str | None, str]] = []
    site.routed.record = lambda who, worker, record_id, detail: records.append((record_id, detail))

    def quick(who: Identity, request: TransferRequest, party: RouterParty) -> Any:
        started = site.copier(who, request, party)
        site.transfers[-1].end(False, "no space on /tmp")
        return started

    site.served._copier = quick  # type: ignore[assignment]
    party = Party()
    transfer, _ = site.copy(party)
    assert transfer.ended and party.got == [Result(False, "no space on /tmp")]
    assert records == [("t1", "cp up routed to master B: transfer t1 started there, then it ended there before its "
                              "answer came (failed)")]
    answer: defer.Deferred[object] = defer.Deferred()
    parties: list[RouterParty] = []

    def slow(who: Identity, request: TransferRequest, party: RouterParty) -> Any:
        parties.append(party)
        return answer

    site.served._copier = slow  # type: ignore[assignment]
    party = Party()
    d = site.routed.copy(ALICE, REQUEST, party)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    for leave in party.disconnects:
        leave()
    answer.callback((FakeTransfer(ALICE, REQUEST, parties[0]), {"total": 0, "entries": 0, "recorded": True}))
    site.clock.advance(0)
    assert failures and isinstance(failures[0].value, Refused) and failures[0].value.kind == "stopped"
    assert records[-1] == ("t1", "cp up routed to master B: transfer t1 started there, then the operator had left "
                                 "before its answer came (that master ends it)")


def test_a_routed_copy_is_recorded_once_on_a_whatever_order_bs_answer_and_its_end_come_in() -> None:
    """relay.RoutedEvent, as a routed open's: one `routed` event on A for each copy. B refuses: its outcome. B
    starts it, then the call fails (the operator had left): B's transfer, not the failure too. A is not on the
    router as it starts: not started."""
    site = Site(Policy([Rule(users=("cluster:C/alice",))]))
    records: list[tuple[str | None, str]] = []
    site.routed.record = lambda who, worker, record_id, detail: records.append((record_id, detail))
    with pytest.raises(Refused):
        site.copy()
    assert records == [(None, "cp up routed to master B: refused (permission denied)")]

    site = Site()
    site.routed.record = lambda who, worker, record_id, detail: records.append((record_id, detail))
    answers: list[defer.Deferred[object]] = []

    def slow(who: Identity, request: TransferRequest, party: RouterParty) -> Any:
        answers.append(defer.Deferred())
        answers[-1].addCallback(lambda _: (FakeTransfer(who, request, party), {"total": 0, "entries": 0,
                                                                               "recorded": True}))
        return answers[-1]

    site.served._copier = slow  # type: ignore[assignment]
    party = Party()
    failures: list[Failure] = []
    site.routed.copy(ALICE, REQUEST, party).addErrback(failures.append)
    for leave in party.disconnects:
        leave()
    answers[0].callback(None)
    site.clock.advance(0)
    assert failures and isinstance(failures[0].value, Refused) and failures[0].value.kind == "stopped"
    assert records[1:] == [("t1", "cp up routed to master B: transfer t1 started there, then the operator had left "
                                  "before its answer came (that master ends it)")]

    async def unavailable(handler: object, uri: str) -> None:
        raise ClusterUnavailable("not on the router")

    site.a.register = unavailable  # type: ignore[assignment,method-assign]
    results: list[object] = []
    site.routed.copy(ALICE, REQUEST, Party()).addBoth(results.append)
    assert results == [None]
    assert records[2:] == [(None, "cp up routed to master B: not started (the master left the router)")]
