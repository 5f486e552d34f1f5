"""Transfers (`slaveshell cp`) this master's operators start on workers another master of the site holds (the
operator's side of a routed transfer, docs/multi-master.md).

`RoutedTransfers.copy` registers a per-transfer `out` procedure under a random token, then calls the worker's
`copy` procedure on the master that holds it (B) with the request and the operator as this master vouches for
them; B applies its policy and relays the transfer to its worker (master_side.cluster.copy_serve). B's refusal
reaches the operator as B wrote it. The operator's door then holds a `RoutedTransfer`: each of the client's
events, checked at the door's edge as a local transfer's, is one call of B's per-transfer `in` procedure
(master_side.cluster.copy_stream); B's events (entries, data, acknowledgements, the result) go to the operator's
end. B's relay holds both parties to the credit window; this end holds what waits for its calls to the window
too (MAX_HELD bytes), so nothing piles up here or in the router.

This end holds B to the protocol both ways, as this master's relay holds a worker (master_side.copying.stream),
before anything B sends reaches the operator's client: in an upload B sends acknowledgements (never more credit
than the operator's data and entries this end forwarded) and the outcome (a success only after the operator's
finish), never the sender's events; in a download, its stream in order, as the request asked and within the
window, and no acknowledgement nor a success (the client's own word). A breach, or a message out of sequence,
ends the transfer here with a line naming B, B is told `cancel` (with the kind of end, never this end's line:
master_side.cluster.copy_stream.ended_by says how B records it), and it is a `routed` audit event here
(`RoutedTransfers.copy`: which message, never its content).

When B's answer offers a direct connection (master_side.cluster.direct), this end connects to B's PB port, logs
in and says READY: the transfer's messages then go both ways over that connection (the same messages, checked
here the same way, whichever path they came by), after those still on the router are answered; when it cannot be
made within CONNECT_WITHIN seconds they stay on the router.

The transfer ends, with `result(false, why)` for the operator (its client exits non-zero; the partial file is
never put in place), when B stops answering, this master loses the router, or the operator's connection goes
(B is told `cancel` and ends it on the worker), or the direct connection is lost once ready.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from master_side.cluster.config import session_uri, worker_uri
from master_side.cluster.copy_stream import (
    HOLDER_BROKE,
    HOLDER_SILENT,
    OPERATOR_BROKE,
    OPERATOR_LOST,
    OPERATOR_STOPPED,
    CopyCall,
    OrderedCalls,
    call_name,
    event_of,
    split,
    waiting_text,
)
from master_side.cluster.direct import COPY, CallerEnd, Send
from master_side.cluster.link import NO_SUCH_PROCEDURE, ClusterLink, ClusterUnavailable, caller_of, error_uri
from master_side.cluster.offers import DirectOffer
from master_side.cluster.relay import (
    ENDED_HERE,
    LEFT_FIRST,
    MAX_WAITING_LINES,
    WAITING_OPEN,
    Relays,
    RoutedEvent,
    RoutedRecord,
    abandon,
    answer_late,
    ended_there,
)
from master_side.cluster.serve import DEAD, PING
from master_side.cluster.stream import STOPPED, TOKEN_LENGTH, UNAVAILABLE, Refused, check_name, check_token
from master_side.copying.stream import HeldStream
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.copying import (
    CHUNK,
    FROM_SENDER,
    UP,
    WINDOW,
    Ack,
    Cancel,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferEvent,
    TransferRequest,
)
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import ProtocolError, check_int

if TYPE_CHECKING:
    from autobahn.wamp.request import Registration
    from autobahn.wamp.types import CallDetails

log = Logger()

# Bytes of the client's data waiting here for their calls: its window (B's relay holds it to that too).
MAX_HELD = WINDOW + CHUNK
MAX_WAITING = WINDOW // 1024 + 64  # messages waiting for their calls (entries cost 1 KiB of the window)
MAX_EARLY = WINDOW // 1024 + 64  # B's messages before its answer (a download's first entries and data)
MAX_EARLY_BYTES = MAX_HELD  # and their data: at most a window (B's relay holds the worker to it too)


class OperatorParty(Protocol):
    """The operator's end of a transfer as its door gives it (master_side.copying.relay.PartyEnd)."""

    def send(self, event: TransferEvent) -> None: ...
    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]: ...


class RoutedTransfer(CallerEnd):
    """The operator's door's handle on a transfer another master (B) relays: what MasterTransfer is for a local
    one (`id`, `undo`, `arrived`, `decoded`). Its direct stream is CallerEnd's."""

    WHAT = "transfer"
    LEAN = COPY

    def __init__(self, transfers: RoutedTransfers, request: TransferRequest, party: OperatorParty, token: str,
                 holder: str) -> None:
        super().__init__(transfers.link.reactor)
        self.transfers = transfers
        self.worker = request.worker
        self.party = party
        self.token = token  # of this end's `out` procedure
        self.registration: Registration | None = None
        self.id = ""
        self.master = holder  # B's name in the site
        # The router's authid of B: the master whose own listing holds the worker (the router lets a master list
        # itself under its own name only); nobody else's messages are taken, even before B's first.
        self.authid = holder
        self.calls: OrderedCalls | None = None
        self.undo: list[Callable[[], None]] = []
        self.answered = False
        self.ended = False
        self.told_end = False  # the operator was told why it ended here (`end`)
        self.heard_at = transfers.clock()
        self.created = transfers.clock()
        self.starting: defer.Deferred[Any] | None = None  # the call of B's copy, until its answer
        self.waited = False  # B said that the transfer waits (for its moderators' approval)
        self.waiting_lines = 0  # B's lines of what the copy waits for, told the operator
        self.gave_up = False  # RoutedTransfers.tick cancelled the copy's call
        # Told once B's answer is taken, before any of B's events reaches the operator (the audit event here).
        self.on_started: Callable[[RoutedTransfer], None] = lambda transfer: None
        # Told when B broke the protocol, how (without content or paths), before the operator is told (the audit
        # event here).
        self.on_breach: Callable[[RoutedTransfer, str], None] = lambda transfer, what: None
        self.waiting: Callable[[str], None] = lambda text: None  # tells the operator
        self._early: list[TransferEvent] = []
        self._early_bytes = 0  # the data of `_early`
        self._expected = 0
        # The stream between the operator and B, held here as this master's relay holds a worker
        # (master_side.copying.stream): in an upload B is the receiver, its acknowledgements held to what the
        # operator's client sent it through this end (B's relay holds the client to the order and the window); in a
        # download B is the sender, its stream held to the order, the request's entries and the window, and the
        # operator's acknowledgements to what B sent.
        self.upload = request.direction == UP
        self.stream = HeldStream(None if self.upload else request.asked(), WINDOW)
        # A download's credit the operator returned during this reactor turn (the acknowledgements of one read of its
        # client's), sent to B as one acknowledgement at the turn's end (`_send_acks`), or before the operator's next
        # other message: one message to B, and from B to its worker, instead of one per acknowledgement.
        self._acks = 0

    # -- the operator's events (the door's calls) --------------------------------------------------

    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None:
        self.decoded(side, lambda: kind.from_wire(*args))

    def decoded(self, _side: str, decode: Callable[[], TransferEvent]) -> None:
        calls = self.calls
        if self.ended or calls is None:
            return
        try:
            event = decode()
        except ProtocolError as e:
            self.end(f"the operator sent a bad message: {e}", kind=OPERATOR_BROKE)
            return
        if isinstance(event, Data) and calls.held + len(event.chunk) > MAX_HELD:
            self.end("the operator's client sent past its window", kind=OPERATOR_BROKE)
            return
        if self.upload:
            self.stream.forwarded(event)  # what B may acknowledge
        elif isinstance(event, Ack):
            try:
                self.stream.acked(event.credit)
            except ProtocolError as e:
                self.end(f"the operator sent a bad message: {e}", kind=OPERATOR_BROKE)
                return
            if not self._acks:
                self.reactor.callLater(0, self._send_acks)
            self._acks += event.credit  # at most WINDOW: each was held to what B sent and was not acknowledged
            return
        self._send_acks()  # in order: the credit before the operator's next message
        if isinstance(event, Cancel):  # the operator's own stop: B is told that kind, never the client's text
            event = Cancel(OPERATOR_STOPPED)
        calls.send(event)
        if isinstance(event, Result):  # a download's outcome, the client's last message: done once B has it
            calls.drained = self._finish
            calls.closing = True
            calls.pump()

    def _send_acks(self) -> None:
        """The credit the operator returned since the last acknowledgement sent, to B as one."""
        credit, self._acks = self._acks, 0
        if credit and not self.ended and self.calls is not None:
            self.calls.send(Ack(credit))

    # -- B's events (this end's `out` procedure) ---------------------------------------------------

    def message(self, wire: object, details: CallDetails) -> None:
        if self.ended:
            return
        caller = caller_of(details)
        if caller is None or caller != self.authid:
            return  # not B (another master that learnt the URI from the router's meta API)
        self.take(wire)

    def take(self, wire: object) -> None:
        """A message of B for the transfer, from the router (`message`) or the direct connection: checked the
        same way whichever path it came by, B held to the protocol (`_held`) before anything reaches the
        operator."""
        if self.ended:
            return
        what = "a malformed message"
        try:
            seq, call, args = split(wire)
            what = f"its message {seq}: {call_name(call)}"
            if seq != self._expected:
                raise ProtocolError(f"message {seq} where {self._expected} was expected")
            self._expected += 1
            text = waiting_text(call, args)
            event = None if text is not None else event_of(call, args)
            if event is not None:
                self._held(event)
        except ProtocolError as e:
            self.broke(e, what)
            return
        self.heard_at = self.transfers.clock()
        if text is not None and not self.answered:  # shown to the operator (after the answer: not)
            self.waiting_lines += 1
            if self.waiting_lines > MAX_WAITING_LINES:
                self.broke(ProtocolError(f"more than {MAX_WAITING_LINES} lines of what the copy waits for"),
                           "too many waiting lines")
                return
        if text is not None and not self.answered:
            self.waited = True  # B's moderators' approval: the answer may take as long as B is heard (tick)
            self.waiting(text)
        if event is None:
            return
        if not self.answered:
            size = len(event.chunk) if isinstance(event, Data) else 0
            if len(self._early) >= MAX_EARLY or self._early_bytes + size > MAX_EARLY_BYTES:
                self.end("the worker's master sent too much before it answered", kind=HOLDER_BROKE)
                return
            self._early.append(event)
            self._early_bytes += size
            return
        self._deliver(event)

    def _held(self, event: TransferEvent) -> None:
        """One of B's events, held to what B's relay sends the operator's end: in an upload, the receiver's
        acknowledgements (never more than the operator sent) and the outcome (a success only after the operator's
        finish); in a download, the sender's stream, and an outcome that is not a success (the operator's client
        reports that). ProtocolError for anything else."""
        if self.upload:
            if isinstance(event, FROM_SENDER):
                raise ProtocolError(f"{event.call} comes from the sender (the operator, in an upload)")
            if isinstance(event, Ack):
                self.stream.acked(event.credit)
            elif isinstance(event, Result):
                self.stream.result(event.ok)
            else:
                raise ProtocolError(f"{event.call} is never sent to the operator")
        elif isinstance(event, (Entry, Data, DoneFile, Finish)):
            self.stream.sent(event)
        elif isinstance(event, Ack):
            raise ProtocolError("ack comes from the receiver (the operator, in a download)")
        elif isinstance(event, Result):
            if event.ok:
                raise ProtocolError("a download's success comes from the operator's client")
        else:
            raise ProtocolError(f"{event.call} is never sent to the operator")

    def _deliver(self, event: TransferEvent) -> None:
        if isinstance(event, Result):
            self._finish()
        self.party.send(event)

    def started(self, answer: dict[str, object]) -> dict[str, object]:
        """B's answer: the transfer runs there; its events kept until now go to the operator. The sizes for the
        door's answer."""
        self.id = check_name(answer.get("transfer"), "transfer")
        check_name(answer.get("master"), "master")
        calls = OrderedCalls(self.transfers.link, session_uri(check_token(answer.get("token")), "in"),
                             self.transfers.clock, MAX_WAITING)
        calls.failed = lambda why: self.end(f"master {visible(self.master)} {why}")
        self.calls = calls
        sizes: dict[str, object] = {"total": check_int(answer.get("total"), "total", 0, 2**62),
                 "entries": check_int(answer.get("entries"), "entries", 0, 2**62),
                 "recorded": answer.get("recorded") is True}
        if "direct" in answer:
            self.offer = DirectOffer.from_wire(answer["direct"])
        self.answered = True
        self.heard_at = self.transfers.clock()
        self.on_started(self)  # recorded here before anything is served
        early, self._early = self._early, []
        for event in early:
            if self.ended:
                break
            self._deliver(event)
        return sizes

    def before_answer(self) -> str | None:
        """What became of the transfer before B's answer was taken here (relay.answered's `then`), None: it goes
        on."""
        if self.ended:
            return ENDED_HERE if self.told_end else LEFT_FIRST
        for event in self._early:
            if isinstance(event, Result):
                return ended_there("done" if event.ok else "failed")
        return None

    # -- the direct stream (CallerEnd) ----------------------------------------------------------------

    def done(self) -> bool:
        return self.ended or self.calls is None

    def switch(self, send: Send) -> None:
        if self.calls is not None:
            self.calls.use(send)

    def broke(self, error: ProtocolError, what: str) -> None:
        """B broke the protocol (`what`: which of its messages): the transfer ends here with a line for the
        operator naming B, B is told, and this master's audit has the event."""
        if self.ended:
            return
        self.on_breach(self, what)
        self.end(f"master {visible(self.master)} broke the protocol: {error}",
                 logged=f"master {visible(self.master)} broke the protocol ({what})", kind=HOLDER_BROKE)

    # -- the end ---------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The operator's connection is gone: B ends the transfer on the worker."""
        if self.ended:
            return
        self._finish()
        if self.calls is not None and not self.calls.gone:
            self.calls.send(Cancel(OPERATOR_LOST))

    def end(self, why: str, logged: str | None = None, kind: str = "") -> None:
        """The transfer is lost here (B gone, the router lost, a bad message): the operator is told why, and B,
        if it can still hear, is told cancel with `kind` (one of master_side.cluster.copy_stream's: B records it as
        this master's end, in its own words; "" says nothing more), never `why`, which holds B's and the operator's
        text. `logged`: why, for the log, when `why` may hold a path."""
        if self.ended:
            return
        self._finish()
        calls = self.calls
        if calls is not None and not calls.gone:
            calls.send(Cancel(kind))
        log.info("slaveshell: a transfer routed to master {master} ended: {why}", master=visible(self.master),
                 why=logged or visible(why))
        self.told_end = True
        self.party.send(Result(False, f"the transfer with {self.worker} ended: {why}"))

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._early.clear()
        self.close_direct()  # after the last message written (the result, or a cancel) has left
        for undo in self.undo:
            undo()
        self.transfers.live.pop(self.token, None)
        registration, self.registration = self.registration, None
        if registration is not None and self.transfers.link.connected:
            registration.unregister().addErrback(lambda failure: None)


class RoutedTransfers:
    """This master's routed transfers, by the token of their `out` procedure."""

    def __init__(self, link: ClusterLink, relays: Relays, clock: Callable[[], float],
                 open_timeout: Callable[[], float]) -> None:
        self.link = link
        self.relays = relays
        self.clock = clock
        self._open_timeout = open_timeout
        self.live: dict[str, RoutedTransfer] = {}
        self.record: RoutedRecord = lambda who, worker, record_id, detail: None
        link.on_leave.append(self.all_lost)

    @deferred
    async def copy(self, who: Identity, request: TransferRequest, party: OperatorParty,
                   waiting: Callable[[str], None] = lambda text: None
                   ) -> tuple[RoutedTransfer, dict[str, object]] | None:
        """Start `request` on the master that holds its worker: the transfer and its sizes, or None when no master
        on the router holds it. `waiting` tells the operator what B's answer waits for (its moderators' approval).
        Raises Refused: B's refusal, or the router's."""
        worker = request.worker
        holder = await self.relays.holder(worker)
        if holder is None:
            return None
        event = RoutedEvent(self.record, who, worker, f"cp {request.direction} routed to master {holder}")
        return await event.of(self._copy(who, request, party, waiting, holder, event),
                              "not started (the master left the router)")

    @deferred
    async def _copy(self, who: Identity, request: TransferRequest, party: OperatorParty,
                    waiting: Callable[[str], None], holder: str, event: RoutedEvent
                    ) -> tuple[RoutedTransfer, dict[str, object]] | None:
        worker = request.worker
        token = secrets.token_hex(TOKEN_LENGTH // 2)
        transfer = RoutedTransfer(self, request, party, token, holder)

        def began(transfer: RoutedTransfer) -> None:
            event.started(transfer.id, f"transfer {transfer.id} started there", transfer.before_answer())

        def broke(transfer: RoutedTransfer, what: str) -> None:
            which = f"transfer {transfer.id}" if transfer.id else "the transfer, before its answer,"
            event.later(transfer.id or None, f"{which} ended here: master {visible(holder)} broke the protocol "
                                             f"({what})")

        transfer.on_started = began
        transfer.on_breach = broke
        try:
            transfer.registration = await self.link.register(transfer.message, session_uri(token, "out"))
        except ClusterUnavailable:
            return None
        self.live[token] = transfer
        transfer.waiting = waiting
        call = CopyCall(request, who.user, tuple(sorted(who.groups)), token)
        # The operator leaving before B's answer: this end's procedure goes; B's next message fails and B
        # withdraws what waits there (master_side.cluster.copy_serve).
        def leave() -> None:
            if not transfer.answered:
                transfer._finish()
                abandon(self.link.reactor, lambda: transfer.starting)  # a B that never answers is not waited for

        undo = party.on_disconnect(leave)
        transfer.starting = self.link.call(worker_uri(worker, "copy"), call.to_wire(), timeout=WAITING_OPEN)
        def gave_up() -> Refused:
            return Refused(UNAVAILABLE, f"master {visible(holder)}, which holds {worker}, "
                                        f"{'stopped answering' if transfer.waited else 'did not answer in time'} "
                                        "while the transfer started")

        try:
            answer = await transfer.starting
            if transfer.gave_up:  # tick: no answer in time, or B silent while it waited; B ends what it started
                transfer._finish()
                raise gave_up()
        except Refused:
            raise
        except Exception as e:
            transfer._finish()
            if transfer.gave_up:
                raise gave_up() from None
            if error_uri(e) == NO_SUCH_PROCEDURE:
                raise Refused(UNAVAILABLE, f"the master that holds {worker} does not relay cp between masters "
                                           "(upgrade slaveshell there)") from None
            if isinstance(e, ClusterUnavailable):
                return None
            raise Refused(UNAVAILABLE, f"the master that holds {worker} did not start the transfer: "
                                       f"{visible(str(e) or type(e).__name__)[:300]}") from None
        finally:
            transfer.starting = None
            undo()
        if not isinstance(answer, dict) or not answer.get("ok"):
            transfer._finish()
            error = answer.get("error") if isinstance(answer, dict) else None
            kind = answer.get("kind") if isinstance(answer, dict) else None
            text = visible(error)[:1000] if isinstance(error, str) and error else "the worker's master refused"
            raise Refused(kind if isinstance(kind, str) else UNAVAILABLE, text)
        if transfer.ended:  # the operator left while B started it: B's next message fails, and B ends it
            try:
                transfer.id = check_name(answer.get("transfer"), "transfer")
            except ProtocolError:
                pass  # no id to name: recorded as a refusal (`copy`)
            else:
                transfer.on_started(transfer)  # B started it: the event here says so, with B's id
            raise Refused(STOPPED, "the operator left before the transfer started")
        try:
            sizes = transfer.started(answer)
        except ProtocolError as e:
            transfer.end(f"the worker's master sent a malformed answer ({e})", kind=HOLDER_BROKE)
            raise Refused(UNAVAILABLE, f"the worker's master sent a malformed answer: {e}") from None
        transfer.undo.append(party.on_disconnect(transfer.cancel))
        if not transfer.ended:
            transfer.go_direct().addErrback(lambda failure: log.failure(
                "slaveshell: the direct connection of a routed transfer failed", failure))
        return transfer, sizes

    def all_lost(self, why: str) -> None:
        for transfer in list(self.live.values()):
            transfer.end(why)

    def tick(self, now: float) -> None:
        for transfer in list(self.live.values()):
            starting = transfer.starting
            if not transfer.answered and starting is not None:
                if answer_late(now, transfer.waited, transfer.heard_at, transfer.created, self._open_timeout()):
                    transfer.gave_up = True
                    starting.cancel()
                continue
            calls = transfer.calls
            if transfer.ended or calls is None:
                continue
            if now - transfer.heard_at > DEAD:
                transfer.end(f"master {visible(transfer.master)} stopped answering", kind=HOLDER_SILENT)
            elif now - calls.sent_at >= PING:
                calls.ping()
