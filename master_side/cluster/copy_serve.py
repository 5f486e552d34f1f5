"""Transfers (`slaveshell cp`) this master relays for the operators of another master of the site (the worker's
side of a routed transfer, docs/multi-master.md).

The calling master (A) calls a worker's `copy` procedure (master_side.cluster.link). This master is the
authority, as for a routed session (master_side.cluster.serve): the caller must be a slaveshell master, the
operator is the `ClusterIdentity` A vouches for under the name the router authenticated A as, and the transfer
starts through the operators' API as any other (`copier`: the `copy` right, the quotas, the worker's allowed
directories, the record on this master naming `cluster:A/...`). The operator's end of the transfer
(`RouterParty`) is A's per-transfer `out` procedure; A's messages come to this master's per-transfer `in`
procedure and go to the transfer's relay (master_side.copying.relay), which checks each as it checks a local
client's (order, sizes, the credit window, sha256). A's `cancel` ends it as A's doing ("ended by master A", with
this master's wording of the kind A gave: master_side.cluster.copy_stream.ended_by), never as the operator's stop.

Bounds on what a calling master can make this one hold: MAX_PER_MASTER transfers per calling master and
MAX_SERVED in all (refused with a line and an audit event); a message out of sequence ends the transfer. A
calling master that stops answering (a call failing, nothing heard for DEAD seconds) or the router lost ends
the transfer, recorded with why.

The direct stream (master_side.cluster.direct), when this master offers it (`ClusterConfig(direct=True)`): with
its answer, a one-time login on this master's PB port for the calling master (the same offers and bounds as a
routed session's: master_side.cluster.offers); once that master says READY on it, the transfer's messages go both
ways over that connection (the same `[seq, call, args...]`, the same checks and window; its data and
acknowledgements as lean calls), after those still on the router are answered. The connection lost ends the
transfer, as the router lost does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from master_side.cluster.config import session_uri
from master_side.cluster.copy_stream import CopyCall, OrderedCalls, ended_by, event_of, split
from master_side.cluster.direct import COPY, DirectDoor, Send, offer_or_route
from master_side.cluster.link import ClusterLink, caller_of, master_caller
from master_side.cluster.offers import DIRECT, OFFER_TTL, ROUTER, DirectOffer, Offer
from master_side.cluster.serve import DEAD, PING
from master_side.cluster.stream import BAD_REQUEST, LIMIT, STOPPED, TOKEN_LENGTH, UNAVAILABLE, Refused
from master_side.copying.relay import OPERATOR
from master_side.sessions.worker_link import Undo, subscribe
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.copying import WINDOW, Cancel, TransferEvent, TransferRequest
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import ClusterIdentity, Identity
from slaveshell.vocabulary.protocol import ProtocolError

if TYPE_CHECKING:
    from autobahn.wamp.request import Registration
    from autobahn.wamp.types import CallDetails

log = Logger()

MAX_PER_MASTER = 8  # transfers relayed for one calling master
MAX_SERVED = 32  # transfers relayed for all other masters
# Messages that may wait for their call to the calling master: the transfer's window in entries at most (data
# messages are fewer: the window counts their bytes).
MAX_WAITING = WINDOW // 1024 + 64


class ServedTransfer(Protocol):
    """What this module holds of a transfer it started (master_side.copying.relay.MasterTransfer)."""

    @property
    def id(self) -> str: ...
    @property
    def ended(self) -> bool: ...
    @property
    def undo(self) -> list[Callable[[], None]]: ...
    def decoded(self, side: str, decode: Callable[[], TransferEvent]) -> None: ...
    def end(self, ok: bool, reason: str, reported_by: str | None = None) -> None: ...
    def cancelled(self, why: str) -> None: ...


# The operators' API's copy for another master's operator (OperatorAPI.copy_for_master): fires (the transfer,
# {"total", "entries", "recorded"}); fails with Refused.
Copier = Callable[[Identity, TransferRequest, "RouterParty"], Any]
# An audited refusal (the operators' refusal audit, rate-limited): who, the worker, the line.
Auditor = Callable[[Identity, str, str], None]
# An audit event of a transfer relayed here: its id, its worker, who, the detail (the path of its messages).
PathEvent = Callable[[str, str, Identity, str], None]


class RouterParty:
    """The operator's end of a transfer whose operator is on another master (master_side.copying.relay.PartyEnd):
    each event is one call of that master's per-transfer `out` procedure."""

    def __init__(self, calls: OrderedCalls) -> None:
        self.calls = calls
        self._disconnects: list[Callable[[], None]] = []

    def send(self, event: TransferEvent) -> None:
        self.calls.send(event)

    def waiting(self, text: str) -> None:
        """The transfer waits for this master's moderators' approval: the operator's master shows the line."""
        self.calls.waiting(text)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        if self.calls.gone:
            callback()
            return lambda: None
        return subscribe(self._disconnects, callback)

    def lost(self) -> None:
        callbacks, self._disconnects = self._disconnects, []
        for callback in callbacks:
            callback()


@dataclass
class Served:
    caller: str
    token: str
    calls: OrderedCalls
    party: RouterParty
    transfer: ServedTransfer | None = None
    registration: Registration | None = None
    expected: int = 0
    heard_at: float = 0.0
    ended: bool = False
    undo: list[Undo] = field(default_factory=list)
    who: Identity | None = None
    worker: str = ""
    path: str = ROUTER  # of the transfer's messages: the router, or the direct connection once it is ready


class _DirectEnd:
    """A relayed transfer as its direct connection sees it (master_side.cluster.direct.DirectEnd)."""

    def __init__(self, transfers: ServedTransfers, served: Served) -> None:
        self.transfers = transfers
        self.served = served

    def message(self, wire: object) -> None:
        self.transfers.take(self.served, wire)

    def ready(self, send: Send) -> bool:
        return self.transfers.direct_ready(self.served, send)

    def lost(self) -> None:
        if not self.served.ended:
            self.transfers._lost(self.served, f"the direct connection from master {self.served.caller} was lost")

    def malformed(self, error: ProtocolError) -> None:
        transfer = self.served.transfer
        if transfer is not None and not self.served.ended:
            transfer.end(False, f"master {self.served.caller} sent a bad message: {error}")


class ServedTransfers:
    """The transfers this master relays for other masters, and the `copy` procedure of its workers."""

    def __init__(self, link: ClusterLink, copier: Copier, audit: Auditor, clock: Callable[[], float]) -> None:
        self.link = link
        self._copier = copier
        self._audit = audit
        self._clock = clock
        self.served: dict[str, Served] = {}  # this end's token -> the transfer
        self._starting: dict[str, int] = {}  # calling master -> transfers starting
        # The direct streams' door on the PB port, shared with the routed sessions' (master_side.cluster.part):
        # None unless ClusterConfig.direct.
        self.door: Callable[[], DirectDoor | None] = lambda: None
        self.path_event: PathEvent = lambda transfer_id, worker, who, detail: None
        link.copier = self.copy
        link.on_leave.append(self.all_lost)

    def _count(self, caller: str) -> int:
        return sum(1 for s in self.served.values() if s.caller == caller) + self._starting.get(caller, 0)

    @deferred
    async def copy(self, worker: str, argument: object, details: CallDetails) -> dict[str, object]:
        """A worker's `copy` procedure: {"ok": True, "transfer", "token", "master", "total", "entries",
        "recorded"} or a refusal ({"ok": False, "error", "kind"})."""
        caller = master_caller(details, "copy")
        try:
            call = CopyCall.from_wire(argument)
        except ProtocolError as e:
            return Refused(BAD_REQUEST, f"bad request from master {caller}: {e}").to_wire()
        who = ClusterIdentity.vouched(caller, call.user, call.groups)
        if call.request.worker != worker:
            return self._refuse(who, worker, BAD_REQUEST, "bad request: the request names another worker than the "
                                                          "procedure it was sent to")
        if call.request.build is not None:
            return self._refuse(who, worker, BAD_REQUEST, "cp in a held build (--build) is not routed between "
                                                          f"masters yet: copy on master {self.link.name}")
        if self._count(caller) >= MAX_PER_MASTER:
            return self._refuse(who, worker, LIMIT, f"master {self.link.name} already relays {MAX_PER_MASTER} "
                                                    f"transfers for master {caller} (its limit per master)")
        if len(self.served) + sum(self._starting.values()) >= MAX_SERVED:
            return self._refuse(who, worker, LIMIT, f"master {self.link.name} already relays {MAX_SERVED} "
                                                    "transfers for other masters (its limit)")
        self._starting[caller] = self._starting.get(caller, 0) + 1
        try:
            return await self._start(caller, who, call)
        finally:
            left = self._starting.pop(caller, 1) - 1
            if left:
                self._starting[caller] = left

    @deferred
    async def _start(self, caller: str, who: ClusterIdentity, call: CopyCall) -> dict[str, object]:
        token = secrets.token_hex(TOKEN_LENGTH // 2)
        calls = OrderedCalls(self.link, session_uri(call.token, "out"), self._clock, MAX_WAITING)
        party = RouterParty(calls)
        served = Served(caller, token, calls, party, heard_at=self._clock(), who=who, worker=call.request.worker)
        calls.failed = lambda why: self._lost(served, f"master {caller} {why}")
        calls.drained = lambda: self._finish(served)
        try:
            served.registration = await self.link.register(
                lambda wire, details: self._message(served, wire, details), session_uri(token, "in"))
        except Exception as e:
            return Refused(UNAVAILABLE, f"master {self.link.name} cannot relay the transfer now: "
                                        f"{visible(str(e))[:200]}").to_wire()
        self.served[token] = served
        try:
            transfer, sizes = await self._copier(who, call.request, party)
        except Refused as e:
            self._finish(served)
            return e.to_wire()
        except Exception:
            self._finish(served)
            log.failure("slaveshell: a transfer routed from master {caller} failed to start", caller=visible(caller))
            return Refused(UNAVAILABLE, f"master {self.link.name} could not start the transfer (see its log)"
                           ).to_wire()
        served.transfer = transfer
        if calls.gone:
            transfer.end(False, "the operator's master left before the transfer started")
            self._finish(served)
            return Refused(STOPPED, "the operator's master left before the transfer started").to_wire()
        transfer.undo.append(lambda: self._closing(served))
        log.info("slaveshell transfer {tid}: routed from master {caller}", tid=transfer.id, caller=visible(caller))
        answer: dict[str, object] = {"ok": True, "transfer": transfer.id, "token": token, "master": self.link.name,
                                     **sizes}
        offer = await self._offer(served)
        if offer is not None:
            answer["direct"] = offer.to_wire()
        return answer

    @deferred
    async def _offer(self, served: Served) -> DirectOffer | None:
        """A one-time login on this master's PB port for the transfer's direct stream, or None: its messages stay
        on the router (direct streams not enabled here, or a bound: audited)."""
        return await offer_or_route(self.door(), self.link.name, served.caller, served.token,
                                    _DirectEnd(self, served), lambda why: self._path(served, why),
                                    lambda: served.ended, COPY)

    def _path(self, served: Served, detail: str) -> None:
        """The audit event that says which path the transfer's messages take."""
        transfer, who = served.transfer, served.who
        if transfer is not None and who is not None:
            self.path_event(transfer.id, served.worker, who, f"messages from master {served.caller}: {detail}")
        log.info("slaveshell transfer {tid}: messages from master {caller}: {detail}",
                 tid=transfer.id if transfer is not None else "?", caller=visible(served.caller),
                 detail=visible(detail))

    def direct_ready(self, served: Served, send: Send) -> bool:
        """The calling master's direct connection is ready: the transfer's messages go over it."""
        if served.ended or served.calls.gone or served.transfer is None or served.transfer.ended:
            return False
        served.path = DIRECT
        served.heard_at = self._clock()
        served.calls.use(send)
        self._path(served, f"{DIRECT} (a Perspective Broker connection to this master's PB port)")
        return True

    def expired(self, offer: Offer) -> None:
        """The calling master did not use the transfer's direct login in time: it stays on the router."""
        served = self.served.get(offer.token)
        if served is not None:
            self._path(served, f"{ROUTER} (master {served.caller} did not use the direct login within "
                               f"{OFFER_TTL:g} s)")

    def _refuse(self, who: Identity, worker: str, kind: str, message: str) -> dict[str, object]:
        self._audit(who, worker, message)
        return Refused(kind, message).to_wire()

    def _message(self, served: Served, wire: object, details: CallDetails) -> None:
        """A message of the calling master for the transfer (its per-transfer `in` procedure)."""
        if caller_of(details) != served.caller:
            return  # another master (it learnt the URI from the router's meta API)
        self.take(served, wire)

    def take(self, served: Served, wire: object) -> None:
        """A message of the calling master for the transfer, from the router or its direct connection."""
        if served.ended:
            return  # late
        served.heard_at = self._clock()
        transfer = served.transfer
        if transfer is None or transfer.ended:
            return
        try:
            seq, call, args = split(wire)
            if seq != served.expected:
                raise ProtocolError(f"message {seq} where {served.expected} was expected")
            served.expected += 1
            event = event_of(call, args)
        except ProtocolError as e:
            transfer.end(False, f"master {served.caller} sent a bad message: {e}")
            return
        if event is None:
            return  # alive
        if isinstance(event, Cancel):  # A ended it: recorded as A's, in this master's words for A's kind
            transfer.cancelled(ended_by(served.caller, self.link.name, event.reason))
            return
        transfer.decoded(OPERATOR, lambda: event)

    def _closing(self, served: Served) -> None:
        """The transfer ended: its last message (the result) is sent after this, then the procedure goes."""
        served.calls.closing = True
        self.link.reactor.callLater(0, served.calls.pump)

    def _lost(self, served: Served, why: str) -> None:
        transfer = served.transfer
        if transfer is not None:
            transfer.end(False, why)
        served.party.lost()
        self._finish(served)

    def _finish(self, served: Served) -> None:
        if served.ended:
            return
        served.ended = True
        self.served.pop(served.token, None)
        door = self.door()
        if door is not None:
            door.withdraw(served.token)  # its offer, or its connection once the last message has left
        registration, served.registration = served.registration, None
        if registration is not None and self.link.connected:
            registration.unregister().addErrback(lambda failure: None)

    def all_lost(self, why: str) -> None:
        for served in list(self.served.values()):
            self._lost(served, why)
            served.calls.fail(why)

    def tick(self, now: float) -> None:
        for served in list(self.served.values()):
            if served.calls.gone:
                continue
            if served.transfer is None:
                # Still starting (waiting for this master's moderators' approval): the calling master hears that
                # this one is there, and a call failing (its operator left) withdraws the request.
                if now - served.calls.sent_at >= PING:
                    served.calls.ping()
                continue
            if now - served.heard_at > DEAD:
                served.calls.fail("stopped answering")
            elif now - served.calls.sent_at >= PING:
                served.calls.ping()
