"""The vocabulary and the ordered calls of a transfer (`slaveshell cp`) routed between two masters of a site
(docs/multi-master.md): what the operator's master (A) asks the worker's master (B) to start (`CopyCall`, on the
worker's `copy` procedure), and the transfer's events each then sends the other, one WAMP call per event on the
other's per-transfer procedure (master_side.cluster.config.session_uri), bytes as bytes (msgpack).

Every message is `[seq, call, *args]`: `seq` counts one direction's messages from 0 (a gap or a repeat ends the
transfer), `call` is a transfer event's name (slaveshell.vocabulary.copying: entry, data, done_file, finish, abort,
ack, result, cancel) or ALIVE, and the args are the event's, checked where they arrive as the framed door checks
a client's. A's `cancel` carries one of the kinds below (OPERATOR_STOPPED ...), which B words (`ended_by`). A
data message holds at most copying.CHUNK bytes: far below the router's message limit (crossbar: 16 MiB).
`OrderedCalls` sends one side's messages in order with at most MAX_OUTSTANDING calls in flight.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from master_side.cluster.direct import Route, Send
from master_side.cluster.link import NO_SUCH_PROCEDURE, error_uri
from master_side.cluster.stream import check_name, check_token
from slaveshell.vocabulary.copying import EVENTS, Data, TransferEvent, TransferRequest, decode
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import ProtocolError, check_int

if TYPE_CHECKING:
    from master_side.cluster.link import ClusterLink

ALIVE = "alive"  # nothing: the other master is there
WAITING = "waiting"  # text: the worker's master's transfer waits (for its moderators' approval) before its answer
MAX_WAITING_TEXT = 4096
MAX_OUTSTANDING = 8  # calls to the other master in flight per transfer
MAX_GROUPS = 256


@dataclass(frozen=True)
class CopyCall:
    """What the operator's master asks of the worker's master (the worker's `copy` procedure): the transfer, the
    operator as it vouches for them (a name and groups, never a uid), and the token of its per-transfer `out`
    procedure, already registered."""

    request: TransferRequest
    user: str
    groups: tuple[str, ...]
    token: str

    def to_wire(self) -> dict[str, object]:
        wire = self.request.to_pb()  # a path that is not UTF-8 as bytes
        wire.pop("operator", None)
        wire.pop("cwd", None)
        if self.request.reason is not None:
            wire["reason"] = self.request.reason
        return {"request": wire, "user": self.user, "groups": list(self.groups), "token": self.token}

    @classmethod
    def from_wire(cls, wire: object) -> CopyCall:
        if not isinstance(wire, dict) or set(wire) != {"request", "user", "groups", "token"}:
            raise ProtocolError("a copy call must be a dict of request, user, groups and token")
        request = wire["request"]
        if isinstance(request, dict) and ({"operator", "cwd"} & set(request)):
            raise ProtocolError("the operator and the working directory of a transfer are the worker's master's")
        groups = wire["groups"]
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
            raise ProtocolError(f"groups must be a list of at most {MAX_GROUPS} names")
        return cls(TransferRequest.from_wire(request), check_name(wire["user"], "user"),
                   tuple(check_name(g, "group") for g in groups), check_token(wire["token"]))


def to_wire(seq: int, event: TransferEvent | None) -> list[object]:
    """A message: the event, or ALIVE for None."""
    return [seq, ALIVE] if event is None else [seq, event.call, *event.to_wire()]


def split(wire: object) -> tuple[int, object, tuple[object, ...]]:
    """A message's seq, call and args, unchecked but the seq (ProtocolError)."""
    if not isinstance(wire, (list, tuple)) or len(wire) < 2:
        raise ProtocolError("a message must be a list [seq, call, args...]")
    return check_int(wire[0], "seq", 0, 2**62), wire[1], tuple(wire[2:])


def waiting_text(call: object, args: tuple[object, ...]) -> str | None:
    """A WAITING message's text (None for any other message), checked (ProtocolError)."""
    if call != WAITING:
        return None
    if len(args) != 1 or not isinstance(args[0], str) or len(args[0]) > MAX_WAITING_TEXT:
        raise ProtocolError(f"waiting takes one text of at most {MAX_WAITING_TEXT} characters")
    return args[0]


def call_name(call: object) -> str:
    """A message's call as a log or an audit event may name it: its name when it is one of the vocabulary's,
    else "an unknown call" (never the other master's text)."""
    return call if isinstance(call, str) and (call in EVENTS or call in (ALIVE, WAITING)) else "an unknown call"


# Why the operator's master (A) ended a routed transfer: the reason of its `cancel` to the worker's master (B), one
# of these kinds, never free text. B records its own wording for a kind it knows (`ended_by`), and "ended by master
# A" alone for anything else: the kind is A's word (B cannot check it), and A's text is never recorded raw there.
OPERATOR_STOPPED = "operator-stopped"  # the operator's own stop (the web page's Cancel)
OPERATOR_LOST = "operator-lost"  # the operator's connection went
OPERATOR_BROKE = "operator-broke"  # the operator's client broke the protocol (a bad message, past its window)
HOLDER_BROKE = "holder-broke"  # A found B broke the protocol (master_side.cluster.copy_relay.RoutedTransfer.broke)
HOLDER_SILENT = "holder-silent"  # A heard nothing from B for too long
_ENDED_BY = {
    OPERATOR_STOPPED: "its operator stopped it",
    OPERATOR_LOST: "its operator's connection was lost",
    OPERATOR_BROKE: "its operator's client broke the protocol",
    HOLDER_BROKE: "it says master {holder} broke the protocol",
    HOLDER_SILENT: "it says master {holder} stopped answering",
    # What an A of an earlier slaveshell sent when its operator's connection went.
    "the operator's connection was lost": "its operator's connection was lost",
}


def ended_by(caller: str, holder: str, reason: object) -> str:
    """What B records of A's `cancel` with `reason`: "ended by master A", with the wording of A's kind when it is one
    of the kinds above (exactly), never A's text."""
    wording = _ENDED_BY.get(reason) if isinstance(reason, str) else None
    said = f": {wording.format(holder=visible(holder))}" if wording is not None else ""
    return f"ended by master {visible(caller)}{said}"


def event_of(call: object, args: tuple[object, ...]) -> TransferEvent | None:
    """The event of a message (None for ALIVE), checked (ProtocolError)."""
    if call == ALIVE:
        if args:
            raise ProtocolError("alive takes no arguments")
        return None
    return decode(call, args)


class OrderedCalls:
    """One side's messages of a transfer to the other master's per-transfer procedure `uri`: in order, at most
    MAX_OUTSTANDING calls in flight, the rest waiting here (what waits is bounded by the transfer's credit window,
    which the other side's relay holds the sender to); or, once `use` switched them, over the direct connection
    between the two masters (master_side.cluster.direct: written without answers, as fast as the connection takes
    them, at most MAX_OUTSTANDING waiting there while it is full). `failed(why)` once when a call fails (`why`
    completes "master B ..."): `drained()` when nothing waits or is in flight after `closing` was set."""

    def __init__(self, link: ClusterLink, uri: str, clock: Callable[[], float], limit: int) -> None:
        self.link = link
        self.uri = uri
        self.clock = clock
        self.limit = limit  # messages that may wait
        self.queue: collections.deque[list[object]] = collections.deque()
        self.held = 0  # bytes of data in the queue
        self.seq = 0
        self.outstanding = 0
        self.sent_at = clock()
        self.gone = False
        self.closing = False
        self.failed: Callable[[str], None] = lambda why: None
        self.drained: Callable[[], None] = lambda: None
        # A call of the other master's procedure through the router, until `use` switches to the direct connection.
        self.route = Route(lambda wire: self.link.call(self.uri, wire))

    def use(self, send: Send) -> None:
        """The messages go by `send` (the direct connection) once the calls in flight are answered: the other
        master takes them in order."""
        self.route.switch(send)
        self.pump()

    def send(self, event: TransferEvent | None) -> None:
        if self.gone:
            return
        if len(self.queue) >= self.limit:
            self.fail("does not take the transfer's messages")
            return
        self.queue.append(to_wire(self.seq, event))
        self.held += len(event.chunk) if isinstance(event, Data) else 0
        self.seq += 1
        self.pump()

    def pump(self) -> None:
        while (self.queue and self.outstanding < MAX_OUTSTANDING and not self.gone
               and self.route.ready(self.outstanding)):
            message = self.queue.popleft()
            if message[1] == Data.call:
                self.held -= len(message[2])  # type: ignore[arg-type]
            self.outstanding += 1
            self.sent_at = self.clock()
            d = self.route.send(message)
            if d is None:  # written to the direct connection, in order (its loss ends the transfer): no answer
                self.outstanding -= 1
                continue
            d.addCallbacks(self._delivered, self._failed)
        if self.closing and not self.queue and not self.outstanding:
            self.closing = False
            self.drained()

    def ping(self) -> None:
        if not self.queue and not self.outstanding:
            self.send(None)

    def waiting(self, text: str) -> None:
        """What the transfer waits for, before the answer (WAITING), for the operator's master to show."""
        if self.gone:
            return
        self.queue.append([self.seq, WAITING, text[:MAX_WAITING_TEXT]])
        self.seq += 1
        self.pump()

    def _delivered(self, _answer: object) -> None:
        self.outstanding -= 1
        self.pump()

    def _failed(self, failure: Any) -> None:
        self.outstanding -= 1
        if error_uri(failure.value) == NO_SUCH_PROCEDURE:
            self.fail("is gone")
        else:  # the router lost it while the call was on its way, or it does not answer
            self.fail(f"is gone or not answering ({visible(failure.getErrorMessage() or failure.type.__name__)[:200]})")

    def fail(self, why: str) -> None:
        if self.gone:
            return
        self.gone = True
        self.queue.clear()
        self.held = 0
        self.failed(why)
