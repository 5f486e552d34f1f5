"""Sessions this master serves for the operators of another master of the site (the worker's side of a routed
session, docs/multi-master.md).

The calling master (A) calls a worker's `open` procedure (master_side.cluster.link). This master is the
authority: the caller must be a slaveshell master (the router's role, `caller_of`), the operator is the
`ClusterIdentity` A vouches for under the name the router authenticated A as (`cluster:A/alice`), and the session
is opened through the operators' API as any other (this master's policy, quotas, recording: the transcript on
this disk, the index row naming this master and, in its operator, A). A fleet run's part takes as input only what
its open call says (the run's script, or nothing for a command: master_side.cluster.part_input.PartInput), which
this master's moderators approved on a four-eyes worker. The session's messages then go each way as
one call per message (master_side.cluster.stream): A's on this master's per-session `in` procedure, the
session's on A's per-session `out` procedure through `RouterSink`, with at most MAX_OUTSTANDING calls in flight
and the rest waiting here, bounded by the session's own output window (the operator's acknowledgements, relayed
by A, open it). Nothing waits in the router.

Bounds on what a calling master can make this one hold: MAX_PER_MASTER sessions per calling master and
MAX_SESSIONS in all (refused with a line and an audit event); a message out of sequence, or one the session
refuses, costs the session (as a misbehaving owner's does on the local door). A calling master that stops
answering (its `out` procedure gone, a call failing, nothing heard for DEAD seconds) or the router lost ends the
session, with the reason recorded.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from master_side.cluster.config import session_uri
from master_side.cluster.direct import DirectDoor, Route, Send, offer_or_route
from master_side.cluster.link import ClusterLink, caller_of, master_caller
from master_side.cluster.offers import DIRECT, OFFER_TTL, ROUTER, DirectOffer, Offer
from master_side.cluster.part_input import PartInput
from master_side.cluster.stream import (
    BAD_REQUEST,
    LIMIT,
    MAX_OUTPUT,
    STOPPED,
    TOKEN_LENGTH,
    UNAVAILABLE,
    AttachCall,
    Message,
    OpenCall,
    Refused,
    ToOperatorSide,
    ToWorkerSide,
    moderated_by_wire,
    to_worker_side,
)
from master_side.sessions.worker_link import Undo, subscribe
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import chunks
from slaveshell.vocabulary.policy import ClusterIdentity, Identity
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest, ProtocolError
from slaveshell.vocabulary.windows import WINDOW_MAX

if TYPE_CHECKING:
    from autobahn.wamp.request import Registration
    from autobahn.wamp.types import CallDetails

log = Logger()

MAX_PER_MASTER = 16  # sessions served for one calling master
MAX_SESSIONS = 64  # sessions served for all other masters
MAX_OUTSTANDING = 8  # calls to the calling master in flight per session
# What may wait here for a session's calls: its output window (the worker sends no more until the operator
# acknowledges), with room for the acknowledgements and the exit.
MAX_QUEUED = WINDOW_MAX + MAX_OUTPUT
PING = 5.0  # a message to the other master at least this often
DEAD = 3 * PING + 5.0  # nothing heard from it for this long: it is gone



class ServedView(Protocol):
    """What this module holds of a session it opened (the operators' API's View): the calling master's messages
    go to it."""

    @property
    def session_id(self) -> str: ...
    @property
    def input_grant(self) -> int: ...
    @property
    def live(self) -> bool: ...
    @property
    def worker(self) -> str: ...
    @property
    def role(self) -> str: ...  # owner, join, watch
    @property
    def size(self) -> tuple[int, int]: ...
    @property
    def moderated_by(self) -> tuple[str, ...] | None: ...  # a four-eyes session's groups and web roles
    @property
    def moderator(self) -> bool: ...  # this view moderates it
    def input(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def stdout_closed(self) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def signal(self, signum: int) -> None: ...
    def ack(self, nbytes: int) -> None: ...
    def close(self) -> None: ...
    def detach(self) -> None: ...
    def end(self, why: str) -> None: ...  # the session ends on the worker, recorded with why
    def refused(self, error: ProtocolError) -> object: ...


class Opener(Protocol):
    """The operators' API's open for an identity, a request, this module's sink, the fleet run it is a part of (or
    None) and that part's script (or None): fires the session's view (None when the sink went away while it
    opened); fails with Refused (OperatorAPI.open_for_master)."""

    def __call__(self, who: Identity, request: OpenRequest, sink: RouterSink, run: str | None = None,
                 script: bytes | None = None, /) -> Any: ...


# The operators' API's attach for an identity, this module's sink, a session id and a mode ("watch", "attach"):
# the view; raises Refused (OperatorAPI.attach_for_master).
Attacher = Callable[[Identity, "RouterSink", str, str], Any]
# An audited refusal (the operators' refusal audit, rate-limited): who, the worker, the line.
Auditor = Callable[[Identity, str, str], None]
# An audit event of a session served here: its id, its worker, who, the detail (the path of its messages).
PathEvent = Callable[[str, str, Identity, str], None]


class RouterSink:
    """A `ViewerSink` whose operator is on another master: each of the session's messages is one call of that
    master's per-session `out` procedure, at most MAX_OUTSTANDING in flight, in order."""

    def __init__(self, link: ClusterLink, out_uri: str, clock: Callable[[], float]) -> None:
        self.link = link
        self.out_uri = out_uri
        self.connection: object = self
        self._clock = clock
        self._queue: collections.deque[Message] = collections.deque()
        self._queued = 0  # bytes of data in _queue
        self._seq = 0
        self._outstanding = 0
        self._disconnects: list[Callable[[], None]] = []
        self._failures: list[Callable[[str | None], None]] = []
        self.gone_why: str | None = None  # why the calling master is taken as gone
        self.sent_at = clock()
        self.finished: Callable[[], None] = lambda: None  # after the exit went (or could not go)
        self.on_lost: Callable[[str], None] = lambda why: None  # the calling master is gone: the session ends
        self._exited = False
        # How a message goes to the calling master: a call of its `out` procedure through the router, or once the
        # direct connection is ready (master_side.cluster.direct) and the router's calls in flight are answered,
        # over that connection.
        self.route = Route(lambda wire: self.link.call(self.out_uri, wire))

    def use(self, call: Send) -> None:
        """The session's messages go by `call` (the direct connection) once those in flight are answered: the
        calling master takes them in order."""
        self.route.switch(call)
        self._pump()

    @property
    def gone(self) -> bool:
        return self.gone_why is not None

    def _send(self, kind: ToOperatorSide, *values: object, size: int = 0) -> None:
        if self.gone:
            return
        self._queue.append(Message(self._seq, kind, values))
        self._seq += 1
        self._queued += size
        if self._queued > MAX_QUEUED:
            self.lost("the operator's master does not take the session's output")
            return
        self._pump()

    def _pump(self) -> None:
        while (self._queue and self._outstanding < MAX_OUTSTANDING and not self.gone
               and self.route.ready(self._outstanding)):
            message = self._queue.popleft()
            if message.kind is ToOperatorSide.OUTPUT:
                self._queued -= len(message.values[1])  # type: ignore[arg-type]
            self._outstanding += 1
            self.sent_at = self._clock()
            d = self.route.send(message.to_wire())
            if d is None:  # written to the direct connection, in order (its loss ends the session): no answer
                self._outstanding -= 1
                continue
            d.addCallbacks(self._delivered, self._failed, errbackArgs=(message,))
        if self._exited and not self._queue and not self._outstanding:
            self.finished()

    def _delivered(self, _answer: object) -> None:
        self._outstanding -= 1
        self._pump()

    def _failed(self, failure: Any, message: Message) -> None:
        self._outstanding -= 1
        self.lost(f"the operator's master did not take a message ({visible(failure.getErrorMessage())[:200]})")
        if message.kind is ToOperatorSide.EXIT:
            self.finished()

    def lost(self, why: str) -> None:
        """The calling master is gone (or does not keep up): nothing more is sent; the session hears of it as
        of a lost connection (its failure callbacks, then its disconnect callbacks)."""
        if self.gone:
            return
        self.gone_why = why
        self._queue.clear()
        self._queued = 0
        for failed in list(self._failures):
            failed(None)
        callbacks, self._disconnects = self._disconnects, []
        for callback in callbacks:
            callback()
        self.on_lost(why)
        if self._exited:
            self.finished()

    def ping(self) -> None:
        if not self._queue and not self._outstanding:
            self._send(ToOperatorSide.ALIVE)

    # -- ViewerSink --------------------------------------------------------------------------------

    def output(self, stream: int, data: bytes) -> None:
        for piece in chunks(data, MAX_OUTPUT) if len(data) > MAX_OUTPUT else [data]:
            self._send(ToOperatorSide.OUTPUT, stream, bytes(piece), size=len(piece))

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self._send(ToOperatorSide.INPUT_ACK, nbytes, hidden, False)

    def flushed_input_ack(self, nbytes: int, hidden: bool) -> None:
        self._send(ToOperatorSide.INPUT_ACK, nbytes, hidden, True)

    def exit(self, status: ExitStatus) -> None:
        if self._exited:
            return
        self._send(ToOperatorSide.EXIT, status.code, status.signal, status.reason)
        self._exited = True
        if self.gone:
            self.finished()
        else:
            self._pump()

    def waiting(self, text: str) -> None:
        self._send(ToOperatorSide.WAITING, text)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return subscribe(self._disconnects, callback)

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        self._failures.append(callback)


@dataclass
class Served:
    """One session served here for another master: the router's authid of that master (`caller`), the session's
    View, its sink, and this end's per-session procedure."""

    caller: str
    token: str
    sink: RouterSink
    view: ServedView | None = None
    registration: Registration | None = None
    expected: int = 0  # the next message's seq
    heard_at: float = 0.0
    ended: bool = False
    undo: list[Undo] = field(default_factory=list)
    gate: PartInput | None = None  # a fleet run's part: the input it may take
    who: Identity | None = None
    path: str = ROUTER  # of the session's messages: the router, or the direct connection once it is ready


class _DirectEnd:
    """A served session as its direct connection sees it."""

    def __init__(self, sessions: ServedSessions, served: Served) -> None:
        self.sessions = sessions
        self.served = served

    def message(self, wire: object) -> None:
        self.sessions.take(self.served, wire)

    def ready(self, send: Send) -> bool:
        return self.sessions.direct_ready(self.served, send)

    def lost(self) -> None:
        self.sessions.direct_lost(self.served)

    def malformed(self, error: ProtocolError) -> None:
        view = self.served.view
        if view is not None and not self.served.ended:
            view.refused(error)


class ServedSessions:
    """The sessions this master serves for other masters, and the `open` procedure of its workers."""

    def __init__(self, link: ClusterLink, opener: Opener, attacher: Attacher, audit: Auditor,
                 clock: Callable[[], float]) -> None:
        self.link = link
        # The direct stream's door on the PB port (master_side.cluster.direct): None unless ClusterConfig.direct.
        self.door: DirectDoor | None = None
        self.path_event: PathEvent = lambda session_id, worker, who, detail: None
        # A direct login of the door's that was not for a session (a transfer's: master_side.cluster.copy_serve),
        # withdrawn unused.
        self.other_expired: Callable[[Offer], None] = lambda offer: None
        self._opener = opener
        self._attacher = attacher
        self._audit = audit
        self._clock = clock
        self.served: dict[str, Served] = {}  # this end's token -> the session
        self._opening: dict[str, int] = {}  # calling master -> opens in progress
        link.opener = self.open
        link.attacher = self.attach
        link.on_leave.append(self.all_lost)

    def _count(self, caller: str) -> int:
        return sum(1 for s in self.served.values() if s.caller == caller) + self._opening.get(caller, 0)

    @deferred
    async def open(self, worker: str, argument: object, details: CallDetails) -> dict[str, object]:
        """A worker's `open` procedure: the session's answer for the calling master ({"ok": True, "session",
        "input_window", "token", "master", "worker", "role", "size", "moderated_by", "moderator"} or {"ok": False,
        "error", "kind"}; ``moderated_by``: a four-eyes session's groups and web roles, else null; ``moderator``:
        whether the operator's view moderates it)."""
        caller = master_caller(details, "open sessions")
        try:
            call = OpenCall.from_wire(argument)
        except ProtocolError as e:
            return Refused(BAD_REQUEST, f"bad request from master {caller}: {e}").to_wire()
        who = ClusterIdentity.vouched(caller, call.user, call.groups)
        request = call.request
        if request.worker != worker:
            return self._refuse(who, worker, BAD_REQUEST, "bad request: the request names another worker than the "
                                                          "procedure it was sent to")
        # A held build (--build) is refused by the opener, with where it is held (OperatorAPI.open_for_master).
        # A fleet run's part takes as input only what the call says it will: its script, or nothing.
        stdin = call.stdin()
        return await self._serve(caller, who, worker, call.token, True,
                                 lambda sink: self._opener(who, call.request, sink) if call.run is None
                                 else self._opener(who, call.request, sink, call.run, call.script),
                                 None if stdin is None else
                                 PartInput(stdin, lambda line: self._audit(who, worker, line)))

    @deferred
    async def attach(self, argument: object, details: CallDetails) -> dict[str, object]:
        """This master's `attach` procedure: watch or join one of its live sessions for another master's operator
        (the answer as `open`'s; "not found" when no such session is live here)."""
        caller = master_caller(details, "open sessions")
        try:
            call = AttachCall.from_wire(argument)
        except ProtocolError as e:
            return Refused(BAD_REQUEST, f"bad request from master {caller}: {e}").to_wire()
        who = ClusterIdentity.vouched(caller, call.user, call.groups)
        # The session's own checks (its policy, bounds per viewer and per connection) are the attacher's.
        return await self._serve(caller, who, None, call.token, False,
                                 lambda sink: self._attacher(who, sink, call.session, call.mode))

    @deferred
    async def _serve(self, caller: str, who: ClusterIdentity, worker: str | None, out_token: str, owns: bool,
                     start: Callable[[RouterSink], Any],
                     gate: PartInput | None = None) -> dict[str, object]:
        """Bounds, this end's procedure, then `start` (the operators' API's open or attach with a RouterSink).
        `owns`: the calling master's operator owns the session, which ends when that master is gone (a watcher
        or a joiner only leaves it). `gate`: what the calling master's input goes through to the view."""
        total = len(self.served) + sum(self._opening.values())
        if self._count(caller) >= MAX_PER_MASTER:
            return self._refuse(who, worker, LIMIT, f"master {self.link.name} already serves {MAX_PER_MASTER} "
                                                    f"sessions for master {caller} (its limit per master)")
        if total >= MAX_SESSIONS:
            return self._refuse(who, worker, LIMIT, f"master {self.link.name} already serves {MAX_SESSIONS} "
                                                    "sessions for other masters (its limit)")
        self._opening[caller] = self._opening.get(caller, 0) + 1
        try:
            return await self._start(caller, who, out_token, owns, start, gate)
        finally:
            left = self._opening.pop(caller, 1) - 1
            if left:
                self._opening[caller] = left

    @deferred
    async def _start(self, caller: str, who: Identity, out_token: str, owns: bool,
                     start: Callable[[RouterSink], Any], gate: PartInput | None) -> dict[str, object]:
        token = secrets.token_hex(TOKEN_LENGTH // 2)
        sink = RouterSink(self.link, session_uri(out_token, "out"), self._clock)
        served = Served(caller, token, sink, heard_at=self._clock(), gate=gate, who=who)
        sink.finished = lambda: self._finish(served)
        if owns:
            sink.on_lost = lambda why: self._ended_by(served, why)
        else:
            sink.on_lost = lambda why: self._finish(served)  # the viewer left (the sink's failure callbacks)
        try:
            served.registration = await self.link.register(
                lambda wire, details: self._message(served, wire, details), session_uri(token, "in"))
        except Exception as e:
            return Refused(UNAVAILABLE, f"master {self.link.name} cannot serve the session now: "
                                        f"{visible(str(e))[:200]}").to_wire()
        self.served[token] = served
        try:
            view = await defer.maybeDeferred(start, sink)
        except Refused as e:
            self._finish(served)
            return e.to_wire()
        except Exception:
            self._finish(served)
            log.failure("slaveshell: a session routed from master {caller} failed to open", caller=visible(caller))
            return Refused(UNAVAILABLE, f"master {self.link.name} could not open the session (see its log)").to_wire()
        if view is None or sink.gone:  # the calling master went away while it opened
            if view is not None:
                if owns:
                    view.end("the operator's master left before the session opened")
                else:
                    view.close()
            self._finish(served)
            return Refused(STOPPED, "the operator's master left before the session opened").to_wire()
        served.view = view
        log.info("slaveshell session {sid}: {what} from master {caller}", sid=view.session_id,
                 what="routed" if owns else "viewed", caller=visible(caller))
        answer: dict[str, object] = {
            "ok": True, "session": view.session_id, "input_window": view.input_grant, "token": token,
            "master": self.link.name, "worker": view.worker, "role": view.role, "size": list(view.size),
            "moderated_by": moderated_by_wire(view.moderated_by), "moderator": view.moderator,
            "stdout_closed": True}
        offer = await self._offer(served)
        if offer is not None:
            answer["direct"] = offer.to_wire()
        return answer

    @deferred
    async def _offer(self, served: Served) -> DirectOffer | None:
        """A one-time login on this master's PB port for the session's direct stream (master_side.cluster.direct),
        or None: the session's messages stay on the router (direct streams not enabled here, or a bound: audited)."""
        return await offer_or_route(self.door, self.link.name, served.caller, served.token, _DirectEnd(self, served),
                                    lambda why: self._path(served, why), lambda: served.ended)

    def _path(self, served: Served, detail: str) -> None:
        """The audit event that says which path the session's messages take."""
        view, who = served.view, served.who
        if view is not None and who is not None:
            self.path_event(view.session_id, view.worker, who, f"messages from master {served.caller}: {detail}")
        log.info("slaveshell session {sid}: messages from master {caller}: {detail}",
                 sid=view.session_id if view is not None else "?", caller=visible(served.caller),
                 detail=visible(detail))

    def direct_ready(self, served: Served, send: Send) -> bool:
        """The calling master's direct connection is ready: the session's messages go over it."""
        if served.ended or served.sink.gone or served.view is None:
            return False
        served.path = DIRECT
        served.heard_at = self._clock()
        served.sink.use(send)
        self._path(served, f"{DIRECT} (a Perspective Broker connection to this master's PB port)")
        return True

    def direct_lost(self, served: Served) -> None:
        if not served.ended:
            served.sink.lost(f"the direct connection from master {served.caller} was lost")

    def _refuse(self, who: Identity, worker: str | None, kind: str, message: str) -> dict[str, object]:
        """A refusal before any session: audited here (rate-limited), answered to the calling master."""
        self._audit(who, worker or "", message)
        return Refused(kind, message).to_wire()

    def _message(self, served: Served, wire: object, details: CallDetails) -> None:
        """A message of the calling master for the session (its per-session `in` procedure)."""
        if caller_of(details) != served.caller:
            return  # another master (it learnt the URI from the router's meta API): nothing to do
        self.take(served, wire)

    def take(self, served: Served, wire: object) -> None:
        """A message of the calling master for the session, from the router or its direct connection."""
        if served.ended:
            return  # late: nothing to do
        served.heard_at = self._clock()
        view = served.view
        if view is None:
            return  # before the open's answer the calling master has nothing to send
        try:
            message = to_worker_side(wire)
            if message.seq != served.expected:
                raise ProtocolError(f"message {message.seq} where {served.expected} was expected")
            served.expected += 1
            if message.kind is ToWorkerSide.DETACH:
                if served.gate is not None:
                    # A fleet run's part is never kept without its run: its input is the run's (PartInput).
                    served.gate.refuse(view, "was detached")
                    return
                self._detached(served, view)
                return
            self._deliver(view, message, served.gate)
            if message.kind is ToWorkerSide.CLOSE and view.role != "owner":
                # A watcher or a joiner left (the owner's close ends the session, and its exit follows): its end.
                served.sink.exit(ExitStatus(reason="left the session"))
        except ProtocolError as e:
            view.refused(e)

    @staticmethod
    def _deliver(view: ServedView, message: Message, gate: PartInput | None) -> None:
        kind, values = message.kind, message.values
        if gate is not None and kind in (ToWorkerSide.INPUT, ToWorkerSide.EOF):
            if kind is ToWorkerSide.INPUT:
                gate.input(view, values[0])  # type: ignore[arg-type]
            else:
                gate.eof(view)
        elif kind is ToWorkerSide.INPUT:
            view.input(values[0])  # type: ignore[arg-type]
        elif kind is ToWorkerSide.ACK:
            view.ack(values[0])  # type: ignore[arg-type]
        elif kind is ToWorkerSide.RESIZE:
            view.resize(values[0], values[1])  # type: ignore[arg-type]
        elif kind is ToWorkerSide.SIGNAL:
            view.signal(values[0])  # type: ignore[arg-type]
        elif kind is ToWorkerSide.EOF:
            view.eof()
        elif kind is ToWorkerSide.STDOUT_CLOSED:
            view.stdout_closed()
        elif kind is ToWorkerSide.CLOSE:
            view.close()

    def _detached(self, served: Served, view: ServedView) -> None:
        """The calling master's operator detached (~d): the session goes on here without them, to be resumed by
        `attach` (through any master); this end of the stream is done, and the calling master going away no longer
        ends the session."""
        sink = served.sink
        sink.on_lost = lambda why: None
        sink.gone_why = "the operator detached"  # nothing more goes to the calling master
        view.detach()
        log.info("slaveshell session {sid}: detached from master {caller}", sid=view.session_id,
                 caller=visible(served.caller))
        self._finish(served)

    def _finish(self, served: Served) -> None:
        """The session is over here: its procedure goes."""
        if served.ended:
            return
        served.ended = True
        self.served.pop(served.token, None)
        if self.door is not None:
            self.door.withdraw(served.token)
        registration, served.registration = served.registration, None
        if registration is not None and self.link.connected:
            registration.unregister().addErrback(lambda failure: None)  # the router may be gone meanwhile

    def _end(self, served: Served, why: str) -> None:
        """The calling master is gone: the session ends on the worker, recorded with `why`."""
        served.sink.lost(why)

    def _ended_by(self, served: Served, why: str) -> None:
        view = served.view
        if view is not None:
            view.end(why)
        else:
            self._finish(served)

    def all_lost(self, why: str) -> None:
        for served in list(self.served.values()):
            self._end(served, why)

    def tick(self, now: float) -> None:
        """A message to each calling master now and then; a master not heard from for DEAD seconds is gone. Direct
        logins not used in time are withdrawn (their sessions' messages stay on the router)."""
        if self.door is not None:
            for offer in self.door.tick(now):
                served = self.served.get(offer.token)
                if served is None:
                    self.other_expired(offer)
                    continue
                self._path(served, f"{ROUTER} (master {served.caller} did not use the direct login within "
                                   f"{OFFER_TTL:g} s)")
        for served in list(self.served.values()):
            if served.sink.gone:
                continue
            if served.view is None:
                # Still opening (a four-eyes request waiting for this master's moderators, a build's hold): the
                # calling master hears that this one is there, and a call failing (its operator left: its
                # procedure gone) withdraws what waited. It sends nothing before the answer.
                if now - served.sink.sent_at >= PING:
                    served.sink.ping()
                continue
            if now - served.heard_at > DEAD:
                self._end(served, f"master {served.caller} stopped answering")
            elif now - served.sink.sent_at >= PING:
                served.sink.ping()
