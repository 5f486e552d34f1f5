"""Sessions this master's operators open on workers another master of the site holds (the operator's side of a
routed session, docs/multi-master.md).

`Relays.open` registers a per-session `out` procedure under a random token, then calls the worker's `open`
procedure on the master that holds it (B) with the request and the operator as this master vouches for them
(name and groups: B applies its own policy to them, master_side.cluster.serve). B's answer is its session, or
B's refusal, shown to the operator as B wrote it. The operator's door then holds a `RoutedView`: each of its
messages is one call of B's per-session `in` procedure (master_side.cluster.stream), at most MAX_OUTSTANDING in
flight, in order, the operator's acknowledgements merged while they wait; B's messages (output, input
acknowledgements, the exit) come to `out` and go to the operator's sink as a local session's would. The
client's own credit windows bound both directions end to end.

The session ends, with a line for the operator (its client exits 255), when B stops answering (a call fails or
nothing is heard for DEAD seconds) or this master loses the router; B then ends it on the worker. A routed
session's owner detaches with ~d (DETACH: B keeps the session, to be resumed with `slaveshell attach ID` through
any master), and so does a lost connection (a fleet run's part is closed instead).
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet import defer, task
from twisted.logger import Logger

from master_side.cluster.config import master_attach_uri, session_uri, worker_uri
from master_side.cluster.direct import SESSION, CallerEnd, Route, Send
from master_side.cluster.link import NO_SUCH_PROCEDURE, ClusterLink, ClusterUnavailable, caller_of, error_uri
from master_side.cluster.offers import DirectOffer
from master_side.cluster.serve import DEAD, PING
from master_side.cluster.stream import (
    NOT_FOUND,
    STOPPED,
    TOKEN_LENGTH,
    UNAVAILABLE,
    AttachCall,
    Message,
    OpenCall,
    Refused,
    ToOperatorSide,
    ToWorkerSide,
    check_moderated_by,
    check_name,
    check_token,
    to_operator_side,
)
from master_side.cluster.verify import disputes_of
from master_side.sessions.model import LateEvent
from master_side.sessions.session import FlushingSink
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import (
    INPUT_WINDOW,
    SIGNAL_NAMES,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    check_int,
    check_size,
)

if TYPE_CHECKING:
    from autobahn.wamp.request import Registration
    from autobahn.wamp.types import CallDetails

log = Logger()

MAX_OUTSTANDING = 8  # calls to the worker's master in flight per session
MAX_WAITING = 512  # messages waiting for their call (the client's input window bounds their bytes)
MAX_EARLY = 64  # B's messages before its answer (its notices while it opens)
# The lines saying what an open or a copy waits for (B's moderators' approval, a build's hold) that B may send the
# operator: an honest B sends a few; past these, B is flooding the operator's screen and the work ends here.
MAX_WAITING_LINES = 32
REGISTERED_WITHIN = 1.5  # a master registers a worker that attached within this many seconds (its tick, a call)
# The call of B's open once B says it waits (its moderators, a build's hold): as long as B keeps saying it is there
# (Relays.tick ends it when B is silent for DEAD seconds); B's own limits (its approvals' wait) end it sooner.
WAITING_OPEN = 24 * 3600.0


class OperatorEnd(Protocol):
    """The operator's end of a routed session, as its door gives it (the operators' API's ViewerSink)."""

    @property
    def gone(self) -> bool: ...
    def output(self, stream: int, data: bytes) -> None: ...
    def input_ack(self, nbytes: int, hidden: bool) -> None: ...
    def exit(self, status: ExitStatus) -> None: ...
    def waiting(self, text: str) -> None: ...
    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]: ...


# Subscribes a callback to the run no longer waiting for a part (RunSink.on_withdraw); returns its undo.
Leaving = Callable[[Callable[[], None]], Callable[[], None]]

# Work this master's operator asked of another master, written in this master's audit trail before it is served
# (AuditTrail.routed): who (as this master knows them), the worker, the other master's session or transfer (None
# when it started none), and what went to which master with the outcome (no content, no paths).
RoutedRecord = Callable[[Identity, str, "str | None", str], None]


def outcome_of(error: BaseException) -> str:
    """A routed request's failure as A's audit event says it: its kind only (B's line may hold paths)."""
    if isinstance(error, Refused):
        return f"refused ({error.kind})"
    return "failed (the master did not answer)"


# What became of a session or transfer B started before its answer was taken here (`answered`).
LEFT_FIRST = "the operator had left before its answer came (that master ends it)"
ENDED_HERE = "it was ended here before its answer came (this master's log says why)"


def ended_there(how: str) -> str:
    """`answered`'s `then` for a session or transfer that already ended on B when its answer came: how (its exit
    status, or whether it was done: never B's line, which may hold paths)."""
    return f"it ended there before its answer came ({how})"


def exit_text(status: ExitStatus) -> str:
    if status.code is not None:
        return f"exit code {status.code}"
    if status.signal is not None:
        return f"killed by signal {status.signal}"
    return "without an exit status"


def answered(what: str, started: str, then: str | None) -> str:
    """A's `routed` event for an open or a copy that B answered, one rule for both: what went to which master
    (`what`), what B started, with its id (`started`: `session S opened there`, `transfer T started there`), and,
    when it does not go on here, what became of it first (`then`: LEFT_FIRST, ENDED_HERE, `ended_there`)."""
    return f"{what}: {started}" + (f", then {then}" if then else "")


T = TypeVar("T")


class RoutedEvent:
    """A's one `routed` event for an open or a copy sent to master B (`what`: what went to which master), written
    exactly once whatever order B's answer and the call's end come in: `started` as B's answer is taken, before
    what B started is served (`answered`); else, as the call ends (`of`), its failure's outcome (`outcome_of`) or,
    when it ends with nothing started, `nothing`."""

    def __init__(self, record: RoutedRecord, who: Identity, worker: str, what: str) -> None:
        self._record = record
        self.who = who
        self.worker = worker
        self.what = what
        self.written = False

    def started(self, record_id: str, started: str, then: str | None) -> None:
        """B's answer taken: what B started, with its id, and what became of it first (`answered`)."""
        self._write(record_id, answered(self.what, started, then))

    async def of(self, call: Awaitable[T | None], nothing: str) -> T | None:
        """`call`'s result, its end written unless B's answer was: its failure (raised again), or `nothing` when
        it returns None."""
        try:
            result = await call
        except Exception as e:
            if not self.written:
                self._write(None, f"{self.what}: {outcome_of(e)}")
            raise
        if result is None and not self.written:
            self._write(None, f"{self.what}: {nothing}")
        return result

    def later(self, record_id: str | None, detail: str) -> None:
        """Another event of the same work, after the first (master B broke the protocol: `detail` says how,
        without content or paths)."""
        self._record(self.who, self.worker, record_id, f"{self.what}: {detail}")

    def _write(self, record_id: str | None, detail: str) -> None:
        self.written = True
        self._record(self.who, self.worker, record_id, detail)


class RoutedView(CallerEnd):
    """The operator's door's handle on a session another master (B) serves: what `View` is for a local one. Its
    direct stream is CallerEnd's."""

    WHAT = "session"
    LEAN = SESSION

    def __init__(self, relays: Relays, worker: str, sink: OperatorEnd, token: str) -> None:
        super().__init__(relays.link.reactor)
        self.relays = relays
        self.worker = worker
        self.sink = sink
        self.token = token  # of this end's `out` procedure
        self.registration: Registration | None = None
        self.session_id = ""
        self.input_grant = INPUT_WINDOW
        self.master = "?"  # B's name, as B says it (shown, never trusted)
        self.role = "owner"  # of the operator's view there: owner, join, watch
        # B's word about its own policy, shown to the operator (escaped), never used for a decision here: a
        # four-eyes session's groups and web roles (None: not one), and whether this view moderates it.
        self.moderated_by: tuple[str, ...] | None = None
        self.moderator = False
        self.size = (80, 24)
        # The router's authid of B, pinned at its first message: nobody else's are taken.
        self.authid: str | None = None
        self.answered = False  # B's answer came: its messages go to the operator
        self.opening: defer.Deferred[Any] | None = None  # the call of B's open, until its answer
        self.waited = False  # B said that the open waits (for its moderators' approval, a build's hold)
        self.gave_up = False  # Relays.tick cancelled the open's call
        self.created = relays.clock()
        self.in_uri = ""
        self.ended = False
        self.told_end = False  # the operator was told the session's end (its exit, or why it ended here)
        self.detached = False  # the owner detached: DETACH goes to B, then this end is done
        # The operator's connection lost: the owner's session detaches on B (B's detach grace), as a local one
        # does; a fleet run's part (False) is closed: its run ends it.
        self.detach_on_lost = True
        # Told once B's answer is taken, before anything B sent is delivered (the operator's master's audit event).
        self.on_started: Callable[[RoutedView], None] = lambda view: None
        # Told when B breaks the protocol (how, without content), before the session ends: the audit event here.
        self.on_breach: Callable[[RoutedView, str], None] = lambda view, what: None
        self.waiting_lines = 0  # B's lines of what the session waits for, told the operator
        self.stdout_closes = False  # B takes stdout_closed (its answer said so)
        self.heard_at = relays.clock()
        self.sent_at = relays.clock()
        self._early: list[Message] = []
        self._expected = 0
        self._seq = 0
        self._outstanding = 0
        self._waiting: collections.deque[Message] = collections.deque()
        # How a message goes to B: a call of its `in` procedure through the router, or once the direct connection
        # is ready (master_side.cluster.direct) and the router's calls in flight are answered, over that connection.
        self.route = Route(lambda wire: self.relays.link.call(self.in_uri, wire))

    # -- the door's calls (View's) ---------------------------------------------------------------

    def input(self, data: bytes) -> None:
        self._send(ToWorkerSide.INPUT, data)

    def ack(self, nbytes: int) -> None:
        last = self._waiting[-1] if self._waiting else None
        if last is not None and last.kind is ToWorkerSide.ACK:  # merged while they wait
            self._waiting[-1] = Message(last.seq, last.kind, (int(last.values[0]) + nbytes,))  # type: ignore[call-overload]
            return
        self._send(ToWorkerSide.ACK, nbytes)

    def resize(self, cols: int, rows: int) -> None:
        self._send(ToWorkerSide.RESIZE, cols, rows)

    def signal(self, signum: int) -> None:
        self._send(ToWorkerSide.SIGNAL, SIGNAL_NAMES[signum])

    def eof(self) -> None:
        self._send(ToWorkerSide.EOF)

    def stdout_closed(self) -> None:
        """Whoever read the operator's stdout went away: B has the worker close the command's stdout, where B said
        it takes that (its answer's `stdout_closed`); an older B's session is closed instead."""
        if self.stdout_closes:
            self._send(ToWorkerSide.STDOUT_CLOSED)
        else:
            self.close()

    def close(self) -> None:
        self._send(ToWorkerSide.CLOSE)

    def detach(self) -> None:
        if self.role != "owner":
            self.close()  # a watcher or a joiner leaves, as on the session's own master
            return
        # B keeps the session without its owner; this end is done once B has the message (the operator's
        # messages after it are late, B's are dropped).
        self._send(ToWorkerSide.DETACH)
        self.detached = True
        log.info("slaveshell: a session routed to master {master} detached", master=visible(self.master))

    def refused(self, error: ProtocolError) -> str | None:
        """What a refused message costs, and the line for the operator (None for a late event)."""
        if isinstance(error, LateEvent):
            return None
        if not self.ended and not self.detached:
            self.close()  # the operator's client broke the protocol: its session ends, as a local one would
        return str(error)

    # -- to the worker's master ------------------------------------------------------------------

    def _send(self, kind: ToWorkerSide, *values: object) -> None:
        if self.ended or self.detached:
            raise LateEvent(f"{kind.value} for a routed session that {'ended' if self.ended else 'was detached'}")
        if len(self._waiting) >= MAX_WAITING:
            self.end(f"master {visible(self.master)} does not keep up with this session")
            return
        self._waiting.append(Message(self._seq, kind, values))
        self._seq += 1
        self._pump()

    def _pump(self) -> None:
        while (self._waiting and self._outstanding < MAX_OUTSTANDING and not self.ended
               and self.route.ready(self._outstanding)):
            message = self._waiting.popleft()
            self._outstanding += 1
            self.sent_at = self.relays.clock()
            d = self.route.send(message.to_wire())
            if d is None:  # written to the direct connection, in order (its loss ends the session): no answer
                self._outstanding -= 1
                if message.kind is ToWorkerSide.DETACH:
                    self._finish()
                continue
            d.addCallbacks(self._delivered, self._failed, callbackArgs=(message,))

    def _delivered(self, _answer: object, message: Message) -> None:
        self._outstanding -= 1
        if message.kind is ToWorkerSide.DETACH:
            self._finish()  # B has it: the session is B's alone
            return
        self._pump()

    def _failed(self, failure: Any) -> None:
        self._outstanding -= 1
        if self.detached:  # B is gone or lost the session: nobody here waits for it
            self._finish()
            return
        if error_uri(failure.value) == NO_SUCH_PROCEDURE:
            self.end(f"master {visible(self.master)} is gone")
        else:  # the router lost it while the call was on its way, or it does not answer
            self.end(f"master {visible(self.master)} is gone or not answering "
                     f"({visible(failure.getErrorMessage() or failure.type.__name__)[:200]})")

    def ping(self) -> None:
        if not self._waiting and not self._outstanding and not self.detached:
            self._send(ToWorkerSide.ALIVE)

    # -- from the worker's master ----------------------------------------------------------------

    def message(self, wire: object, details: CallDetails) -> None:
        """A message of B for the session (this end's `out` procedure)."""
        if self.ended or self.detached:
            return
        caller = caller_of(details)
        if caller is None or (self.authid is not None and caller != self.authid):
            return  # not B (another master that learnt the URI from the router's meta API)
        self.authid = caller
        self.take(wire)

    def broke(self, error: ProtocolError, what: str) -> None:
        """B broke the protocol: this master's audit has the event (`on_breach`), then the session ends here with
        a line naming B."""
        if self.done():
            return
        self.on_breach(self, what)
        super().broke(error, what)

    def take(self, wire: object) -> None:
        """A message of B for the session, from the router (`message`) or the direct connection."""
        if self.ended or self.detached:
            return
        try:
            message = to_operator_side(wire)
            if message.seq != self._expected:
                raise ProtocolError(f"message {message.seq} where {self._expected} was expected")
            self._expected += 1
        except ProtocolError as e:
            self.broke(e, "a malformed message")
            return
        self.heard_at = self.relays.clock()
        if not self.answered and message.kind is ToOperatorSide.ALIVE:
            return  # B is there, while the open waits
        if message.kind is ToOperatorSide.WAITING:
            self.waiting_lines += 1
            if self.waiting_lines > MAX_WAITING_LINES:
                self.broke(ProtocolError(f"more than {MAX_WAITING_LINES} lines of what the session waits for"),
                           "too many waiting lines")
                return
        if not self.answered and message.kind is ToOperatorSide.WAITING and not self._early:
            # What the open waits for (B's moderators' approval, a build's hold): the operator is told now; the
            # open may then take longer than a worker's open (Relays.tick).
            self.waited = True
            self.sink.waiting(str(message.values[0]))
            return
        if not self.answered:  # before B's answer (its notices while it opens): kept until then
            if len(self._early) >= MAX_EARLY:
                self.end("the worker's master sent too much before it answered")
                return
            self._early.append(message)
            return
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        kind, values, sink = message.kind, message.values, self.sink
        if kind is ToOperatorSide.OUTPUT:
            sink.output(values[0], values[1])  # type: ignore[arg-type]
        elif kind is ToOperatorSide.INPUT_ACK:
            n, hidden, flush = values
            if flush and isinstance(sink, FlushingSink):
                sink.flushed_input_ack(n, hidden)  # type: ignore[arg-type]
            else:
                sink.input_ack(n, hidden)  # type: ignore[arg-type]
        elif kind is ToOperatorSide.EXIT:
            status = values[0]
            assert isinstance(status, ExitStatus)
            self._finish()
            self.relays.link.changed()  # B's listing counts the worker's sessions
            self.told_end = True
            sink.exit(status)
        elif kind is ToOperatorSide.WAITING:
            sink.waiting(str(values[0]))

    def started(self, answer: dict[str, object]) -> None:
        """B's answer: the session is open there. Its messages kept until now are delivered."""
        self.session_id = check_name(answer.get("session"), "session")
        self.input_grant = check_int(answer.get("input_window"), "input window", 1, 2**31)
        self.stdout_closes = answer.get("stdout_closed") is True
        self.in_uri = session_uri(check_token(answer.get("token")), "in")
        self.master = check_name(answer.get("master"), "master")
        self.worker = check_name(answer.get("worker"), "worker")
        role, size = answer.get("role"), answer.get("size")
        if role not in ("owner", "join", "watch") or not isinstance(role, str):
            raise ProtocolError("the answer's role must be owner, join or watch")
        if not isinstance(size, list) or len(size) != 2:
            raise ProtocolError("the answer's size must be [cols, rows]")
        moderator = answer.get("moderator", False)
        if not isinstance(moderator, bool):
            raise ProtocolError("the answer's moderator must be true or false")
        self.role, self.size = role, check_size(size[0], size[1])
        self.moderated_by, self.moderator = check_moderated_by(answer.get("moderated_by")), moderator
        if "direct" in answer:
            self.offer = DirectOffer.from_wire(answer["direct"])
        self.answered = True
        self.on_started(self)  # recorded here before anything is served (`before_answer` says what came first)
        early, self._early = self._early, []
        self.heard_at = self.relays.clock()
        for message in early:
            if self.ended:
                return
            self._deliver(message)

    def before_answer(self) -> str | None:
        """What became of the session before B's answer was taken here (`answered`'s `then`), None: it goes on."""
        if self.ended:
            return ENDED_HERE if self.told_end else LEFT_FIRST
        for message in self._early:
            if message.kind is ToOperatorSide.EXIT:
                status = message.values[0]
                assert isinstance(status, ExitStatus)
                return ended_there(exit_text(status))
        return None

    # -- the end ---------------------------------------------------------------------------------

    def close_quietly(self) -> None:
        """The operator's connection is gone: the owner's session detaches on B, to be resumed through any master
        within B's detach grace, as a local session does (a fleet run's part, a watcher's or joiner's view: B ends
        it or its view)."""
        if self.ended or self.detached:
            return
        if self.detach_on_lost:
            self.detach()  # the owner's: kept on B (a watcher's or joiner's detach is their leaving)
        else:
            self.close()

    def end(self, why: str) -> None:
        """The session is lost here (B gone, the router lost): the operator is told why, and B, if it can still
        hear, closes it."""
        if self.ended:
            return
        if self.in_uri and self._outstanding < MAX_OUTSTANDING and not self.detached:
            # Through the router: the direct connection may be what was lost.
            self.relays.link.call(self.in_uri, Message(self._seq, ToWorkerSide.CLOSE).to_wire()).addErrback(
                lambda failure: None)
        self._finish()
        log.info("slaveshell: a session routed to master {master} ended: {why}", master=visible(self.master),
                 why=visible(why))
        self.told_end = True
        self.sink.exit(ExitStatus(reason=f"the session on {self.worker} ended: {why}"))

    def _finish(self) -> None:
        self.ended = True
        self._waiting.clear()
        self.relays.views.pop(self.token, None)
        self.close_direct()  # after the answer to B's last message has left
        registration, self.registration = self.registration, None
        if registration is not None and self.relays.link.connected:
            registration.unregister().addErrback(lambda failure: None)

    # -- the direct stream (CallerEnd) ----------------------------------------------------------------

    def done(self) -> bool:
        return self.ended or self.detached

    def switch(self, send: Send) -> None:
        self.route.switch(send)
        self._pump()


class Relays:
    """This master's routed sessions, by the token of their `out` procedure."""

    def __init__(self, link: ClusterLink, clock: Callable[[], float], open_timeout: Callable[[], float]) -> None:
        self.link = link
        self.clock = clock
        self._open_timeout = open_timeout
        self.views: dict[str, RoutedView] = {}
        self.record: RoutedRecord = lambda who, worker, record_id, detail: None
        link.on_leave.append(self.all_lost)

    @deferred
    async def holder(self, worker: str) -> str | None:
        """The other master on the router that holds `worker` and its procedures there, or None when no master
        on the router lists it (or the router cannot be asked). Raises Refused: several masters list it, or
        another router client holds its procedures."""
        holders, disputes = await self._holders(worker)
        if not holders:
            if disputes:
                # A master lists it, but the shared database does not show it there (master_side.cluster.verify).
                raise Refused(UNAVAILABLE, "; ".join(disputes[:3]))
            return None
        if len(holders) > 1:
            # One name attached to several masters: never routed to one of them at random.
            raise Refused(UNAVAILABLE, f"worker {worker} is attached to {len(holders)} masters: "
                                       f"{', '.join(visible(h) for h in holders)}; slaveshell does not pick one "
                                       "(give the workers distinct names)")
        holder, registered = next(iter(holders.items()))
        if not registered:
            # A master lists a worker as soon as it attaches, and registers it on its next second's tick.
            await task.deferLater(self.link.reactor, REGISTERED_WITHIN, lambda: None)
            if not (await self._holders(worker))[0].get(holder):
                # Its listing (under its own name, which only it may register) says another router client holds
                # the worker's procedures: they are not called.
                raise Refused(UNAVAILABLE, f"{worker} is on master {visible(holder)}, but another router client "
                                           f"holds its name on the router: open it on master {visible(holder)}")
        return holder

    @deferred
    async def open(self, who: Identity, request: OpenRequest, sink: OperatorEnd, run: str | None = None,
                   script: bytes | None = None, withdrawn: Leaving | None = None) -> RoutedView | None:
        """Open `request` on the master that holds its worker: the RoutedView (already ended, its exit told to the
        operator, when the session ended there before its answer came), or None when no master on the router holds
        it (the local refusal then says why). `run`: the fleet run the session is a part of, `script`
        the run's script (what B's moderators approve and B checks the part's input against), `withdrawn` tells
        when the run no longer waits for the part (as the operator leaving: B withdraws what waits there). Raises
        Refused: B's refusal, the router's, or STOPPED (the operator left while B opened it). The outcome is an
        audit event here (`record`, `answered`: with B's session id once B opened it) before the session is
        served."""
        worker = request.worker
        holder = await self.holder(worker)
        if holder is None:
            return None
        what = (f"a part of fleet run {run}" if run is not None else
                "a command" if request.command is not None else "a login shell")
        event = RoutedEvent(self.record, who, worker, f"open of {what} routed to master {holder}")

        def started(view: RoutedView) -> None:
            self.link.changed()  # B's listing counts the worker's sessions
            event.started(view.session_id, f"session {view.session_id} opened there", view.before_answer())

        return await event.of(self._open(who, request, sink, run, holder, script, withdrawn, started),
                              "not opened (the master left the router, or no longer holds the worker)")

    @deferred
    async def _open(self, who: Identity, request: OpenRequest, sink: OperatorEnd, run: str | None,
                    holder: str, script: bytes | None, withdrawn: Leaving | None,
                    started: Callable[[RoutedView], None]) -> RoutedView | None:
        worker = request.worker
        token = secrets.token_hex(TOKEN_LENGTH // 2)
        view = RoutedView(self, worker, sink, token)
        view.on_started = started
        view.on_breach = self._breach_record(who)
        view.authid = holder  # B's messages only, from the first: the router lets B alone list itself as B
        view.detach_on_lost = run is None
        try:
            view.registration = await self.link.register(view.message, session_uri(token, "out"))
        except ClusterUnavailable:
            return None
        self.views[token] = view
        call = OpenCall(request, who.user, tuple(sorted(who.groups)), token, run, script)
        # The operator leaving (or the run no longer waiting) before B's answer: this end's procedure goes, so B's
        # next message fails and B withdraws what waits there (a request for its moderators' approval:
        # master_side.cluster.serve).
        def leave() -> None:
            if not view.answered:
                view._finish()
                # An honest B answers that withdrawal at once; a call B never answers is not kept past DEAD.
                abandon(self.link.reactor, lambda: view.opening)

        undos = [sink.on_disconnect(leave)] + ([withdrawn(leave)] if withdrawn is not None else [])
        view.opening = self.link.call(worker_uri(worker, "open"), call.to_wire(), timeout=WAITING_OPEN)

        def gave_up() -> Refused:
            return Refused(UNAVAILABLE, f"master {visible(holder)}, which holds {request.worker}, "
                                        f"{'stopped answering' if view.waited else 'did not answer in time'} "
                                        "while the session opened")

        try:
            answer = await view.opening
            if view.gave_up:  # Relays.tick: no answer in time, or B silent while it waited; B ends what it opened
                view._finish()
                raise gave_up()
        except Refused:
            raise
        except Exception as e:
            view._finish()
            if error_uri(e) == NO_SUCH_PROCEDURE or isinstance(e, ClusterUnavailable):
                return None
            if view.gave_up:
                raise gave_up() from None
            raise Refused(UNAVAILABLE, f"the master that holds {request.worker} did not open the session: "
                                       f"{visible(str(e) or type(e).__name__)[:300]}") from None
        finally:
            view.opening = None
            for undo in undos:
                undo()
        return self._answered(view, answer, sink)

    def _answered(self, view: RoutedView, answer: object, sink: OperatorEnd) -> RoutedView | None:
        """B's answer to an open or an attach: the view started, or Refused (B's refusal, as B wrote it)."""
        if not isinstance(answer, dict) or not answer.get("ok"):
            view._finish()
            error = answer.get("error") if isinstance(answer, dict) else None
            kind = answer.get("kind") if isinstance(answer, dict) else None
            text = visible(error)[:1000] if isinstance(error, str) and error else "the worker's master refused"
            raise Refused(kind if isinstance(kind, str) else UNAVAILABLE, text)
        try:
            view.started(answer)
            view.go_direct().addErrback(lambda failure: log.failure(
                "slaveshell: the direct connection of a routed session failed", failure))
        except ProtocolError as e:
            view.end(f"the worker's master sent a malformed answer ({e})")
            raise Refused(UNAVAILABLE, f"the worker's master sent a malformed answer: {e}") from None
        if view.ended and view.told_end:
            return view  # it ended before its answer came, and the operator was told its end: B's session, done
        if view.ended or sink.gone:  # the operator left while B opened it: B ends it (its next message fails)
            if not view.ended:
                view.close()
            raise Refused(STOPPED, "the operator left before the session opened")
        sink.on_disconnect(view.close_quietly)
        return view

    @deferred
    async def attach(self, who: Identity, session_id: str, mode: str, sink: OperatorEnd,
                     holder: str | None = None) -> RoutedView | None:
        """Watch or join (`mode`) session `session_id` on the other master that holds it (`holder`, when known;
        else each master on the router is asked, and one that does not hold it says so): the RoutedView, or None
        when none holds it. Raises Refused: the holder's refusal."""
        try:
            listings = await self.link.site(fresh=True)
        except ClusterUnavailable:
            return None
        for listing in listings:
            if not listing.trusted:
                continue  # not the Buildbot master it says it is (master_side.cluster.verify): nothing routed to it
            if holder is not None and listing.master != holder:
                continue
            token = secrets.token_hex(TOKEN_LENGTH // 2)
            view = RoutedView(self, "?", sink, token)
            view.authid = listing.master  # its messages only, from the first
            try:
                view.registration = await self.link.register(view.message, session_uri(token, "out"))
            except ClusterUnavailable:
                return None
            self.views[token] = view
            call = AttachCall(session_id, mode, who.user, tuple(sorted(who.groups)), token)
            try:
                answer = await self.link.call(master_attach_uri(listing.master), call.to_wire())
            except Exception:
                view._finish()
                continue  # that master does not answer: the others may hold the session
            if isinstance(answer, dict) and answer.get("kind") == NOT_FOUND:
                view._finish()
                continue
            what = f"{mode} of session {visible(session_id)} routed to master {listing.master}"
            view.on_started = self._attach_record(who, session_id, what)
            view.on_breach = self._breach_record(who)
            try:
                attached = self._answered(view, answer, sink)
            except Refused as e:
                if not view.answered:
                    self.record(who, "", None, f"{what}: {outcome_of(e)}")
                raise
            if attached is None and not view.answered:
                self.record(who, "", session_id, f"{what}: not attached (the operator left)")
            return attached
        return None

    def _breach_record(self, who: Identity) -> Callable[[RoutedView, str], None]:
        """The audit event of a routed session ended here because B broke the protocol (`what`: how, never
        content)."""
        def broke(view: RoutedView, what: str) -> None:
            which = f"session {view.session_id}" if view.session_id else "the session, before its answer,"
            holder = visible(view.authid or view.master)
            self.record(who, view.worker, view.session_id or None,
                        f"routed {which} ended here: master {holder} broke the protocol ({what})")
        return broke

    def _attach_record(self, who: Identity, session_id: str, what: str) -> Callable[[RoutedView], None]:
        """The audit event of a routed watch or attach that B answered, written before it is served."""
        def started(view: RoutedView) -> None:
            self.record(who, view.worker, session_id, f"{what}: attached")
        return started

    @deferred
    async def _holders(self, worker: str) -> tuple[dict[str, bool], list[str]]:
        """The other masters on the router that list `worker` among their attached workers, as the shared database
        confirms it (master_side.cluster.verify), each with whether it says it holds the worker's procedures on
        the router (empty when the router cannot be asked); and why the other claims of it are disputed. A
        listing comes from its master's own `slaveshell.master.<name>.workers`, which the router lets no other
        client register (slaveshell.client.router.slaveshell_permissions); it is asked afresh."""
        try:
            listings = await self.link.site(fresh=True)
        except ClusterUnavailable:
            return {}, []
        disputes = [d.why for d in disputes_of(listings, worker)]
        return ({listing.master: any(w.get("registered") is True for w in listing.workers if w.get("name") == worker)
                 for listing in listings if any(w.get("name") == worker for w in listing.workers)}, disputes)

    def all_lost(self, why: str) -> None:
        for view in list(self.views.values()):
            view.end(why)

    def tick(self, now: float) -> None:
        for view in list(self.views.values()):
            opening = view.opening
            if not view.answered and opening is not None:
                if answer_late(now, view.waited, view.heard_at, view.created, self._open_timeout()):
                    view.gave_up = True
                    opening.cancel()
                continue
            if view.ended or not view.answered:
                continue
            if view.detached:
                # B takes nothing after DETACH; this end waits only for its delivery (B keeps the session).
                if now - view.heard_at > DEAD:
                    view._finish()
                continue
            if now - view.heard_at > DEAD:
                view.end(f"master {visible(view.master)} stopped answering")
            elif now - view.sent_at >= PING:
                view.ping()


def answer_late(now: float, waited: bool, heard_at: float, created: float, timeout: float) -> bool:
    """Whether B's answer to an open or a copy is late: a worker's open takes at most `timeout` seconds; one that B
    said waits (its moderators' approval, a build's hold) as long as B is heard (DEAD)."""
    return now - heard_at > DEAD if waited else now - created > timeout


def abandon(reactor: Any, call: Callable[[], defer.Deferred[Any] | None]) -> None:
    """A call of another master whose caller left: cancelled (the router tells that master) if it has not been
    answered DEAD seconds from now, so that a master that never answers cannot make this one hold it."""
    def cancel() -> None:
        pending = call()
        if pending is not None:
            pending.cancel()

    reactor.callLater(DEAD, cancel)
