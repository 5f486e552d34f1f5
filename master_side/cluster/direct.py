"""The direct stream of a routed session or transfer (docs/multi-master.md): its messages between the operator's
master (A) and the worker's master (B) over one Perspective Broker connection from A to B's Buildbot PB port (the
one its workers attach to), instead of one router call per message. A session's and a transfer's connections are
the same but for what goes leanly on them (`Lean`: SESSION, COPY). The router stays for discovery,
authentication, the open or attach call, the records, and as the path when the direct one cannot be made.

B, when its ClusterConfig says `direct=True`, registers for each session it opens for A a one-time user name and
password on its PB port (`Offers`: 128 random bits each, single use, valid OFFER_TTL seconds, bounded per calling
master and in all) and gives them with its address in the open's answer, which only A (the router authenticated
it) receives. A connects and logs in within CONNECT_WITHIN seconds (else the session stays on the router), then
says READY; from then on each side sends its messages over the connection once its router calls in flight are
answered (the same `master_side.cluster.stream` messages, the same sequence numbers and credit windows, so that
the order holds across the switch). A connection that does not say READY within READY_WITHIN seconds of its login
is dropped; its credentials were already spent. Losing the connection after READY ends the session on both sides
as losing the router does.

The offer's vocabulary and the bounds are master_side.cluster.offers; here are the Twisted ends: `DirectDoor` (B's:
registrations on its PB port, the avatar each login gets), and `connect` with `CallerEnd` (A's: the connection, and
what a routed session or transfer does with it).
"""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from twisted.cred import credentials
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from master_side.cluster.offers import CONNECT_WITHIN, DIRECT, READY_WITHIN, ROUTER, DirectOffer, Offer, Offers
from slaveshell.plumbing.deferreds import deferred
from slaveshell.plumbing.lean_calls import LeanReceiver, accept, send_lean
from slaveshell.plumbing.remote import set_nodelay
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import ProtocolError

log = Logger()

# -- B's end ---------------------------------------------------------------------------------------------------


# How one side sends a session's message: a call through the router (a Deferred of its answer), or a write to the
# direct connection (None: no answer; the session's credit windows bound what is written, TCP carries it in order,
# and the connection's loss ends the session; a Deferred failure when the connection is already gone).
Send = Callable[[object], "defer.Deferred[Any] | None"]


class Route:
    """How one side sends a session's messages, in order: `send` (first a call through the router), and the path
    it switches to (`switch`: the direct connection) once the calls in flight on the old one are answered, so that
    the other master takes them in order."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self._next: Send | None = None

    def switch(self, send: Send) -> None:
        self._next = send

    def ready(self, outstanding: int) -> bool:
        """Whether a message may go now (`outstanding`: calls in flight): not while a switch waits for them."""
        if self._next is not None and not outstanding:
            self.send, self._next = self._next, None
        return self._next is None


# The kinds of a session's message that go as lean calls once the other side takes them
# (slaveshell.plumbing.lean_calls' CODECS): the bulk (output, input) and the acknowledgements of each; the rest go
# as PB calls of `m`.
LEAN = {"output": "routed_output", "input": "routed_input", "ack": "routed_ack", "input_ack": "routed_input_ack"}
# A transfer's (master_side.cluster.copy_stream): its data and the receiver's acknowledgements, either way (which
# side sends the data is the transfer's direction); entries, done_file, the finish and the result as PB calls.
COPY_LEAN = {"data": "routed_data", "ack": "routed_ack"}


@implementer(IPushProducer)
class Sender:
    """One side's writes of a session's messages to the direct connection, without answers, as fast as the
    connection takes them: while its transport holds more than its buffer (Twisted pauses this producer), a message
    waits here, its Deferred fired once it is written, so that the session's pump (at most its 8 messages in
    flight) waits too. What one side holds for a peer that does not read is bounded: Twisted's buffer plus 8
    messages, and the session's own queue behind them."""

    def __init__(self, reference: Any, kinds: Mapping[str, str] = LEAN) -> None:
        self.reference = reference
        self.kinds = kinds  # the kinds of message that go as lean calls, and their methods
        # Once the other side said it takes them: the remote object its output, input and acknowledgements go to as
        # lean calls (slaveshell.plumbing.lean_calls: one Banana list, a payload written after its header without
        # a copy, to the kernel at once when nothing waits), instead of PB calls of `m`.
        self.lean: Any = None
        self.paused = False
        self.waiting: collections.deque[tuple[object, defer.Deferred[Any]]] = collections.deque()
        transport = getattr(getattr(reference, "broker", None), "transport", None)
        if transport is not None:
            try:
                transport.registerProducer(self, True)
            except Exception:  # another producer there (not ours to replace): unbounded writes are not made
                self.paused = True
                log.warn("slaveshell: the direct connection's transport has a producer already")

    def send(self, wire: object) -> defer.Deferred[Any] | None:
        """`wire` to the other side's `m`: None once written, else a Deferred fired when it is."""
        if self.paused or self.waiting:
            d: defer.Deferred[Any] = defer.Deferred()
            self.waiting.append((wire, d))
            return d
        try:
            self._write(wire)
        except pb.DeadReferenceError:
            return defer.fail()
        return None

    def _write(self, wire: object) -> None:
        """`wire` to the other side: a lean call for its kinds that have one, else a PB call of `m`. Both go in
        order on the one connection (a lean call goes to the kernel at once only when nothing waits before it)."""
        method = None
        if self.lean is not None and isinstance(wire, list) and len(wire) >= 2:
            method = self.kinds.get(wire[1])
        if method is None:
            self.reference.callRemote("m", wire, pbanswer=False)
            return
        if self.lean.broker.disconnected:
            raise pb.DeadReferenceError("the direct connection is lost")
        assert isinstance(wire, list)
        send_lean(self.lean, method, *wire[:1], *wire[2:])

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        while self.waiting and not self.paused:
            wire, d = self.waiting.popleft()
            try:
                self._write(wire)
            except pb.DeadReferenceError:
                d.errback()
                continue
            d.callback(None)

    def stopProducing(self) -> None:  # noqa: N802
        waiting, self.waiting = self.waiting, collections.deque()
        for _, d in waiting:
            d.errback(pb.PBConnectionLost("the direct connection was lost"))


class DirectEnd(Protocol):
    """What the door asks of the session an offer is for (master_side.cluster.serve's)."""

    def message(self, wire: object) -> None:
        """A message of A, as from the router."""

    def ready(self, send: Send) -> bool:
        """A said READY: B's messages go by `send` from now on. False: the session is over (the connection is
        dropped)."""

    def lost(self) -> None:
        """The connection is gone after READY."""

    def malformed(self, error: ProtocolError) -> None:
        """A lean call of A's whose shape is wrong: refused as a malformed message (it costs the session)."""


class _Inbox(LeanReceiver):
    """B's end of a ready connection for A's lean calls (its input and acknowledgements), exported on that
    connection only (PB's table of local objects is per connection)."""

    lean_methods = frozenset({"routed_input", "routed_ack"})

    def __init__(self, avatar: DirectAvatar) -> None:
        self.avatar = avatar

    def remote_routed_input(self, seq: int, data: bytes) -> None:
        self.avatar.perspective_m([seq, "input", data])

    def remote_routed_ack(self, seq: int, nbytes: int) -> None:
        self.avatar.perspective_m([seq, "ack", nbytes])

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        if self.avatar.is_ready and not self.avatar.gone:
            self.avatar.end.malformed(error)


class _CopyInbox(LeanReceiver):
    """B's end of a ready connection for a transfer's lean calls from A: the data of an upload, the operator's
    acknowledgements of a download's."""

    lean_methods = frozenset({"routed_data", "routed_ack"})

    def __init__(self, avatar: DirectAvatar) -> None:
        self.avatar = avatar

    def remote_routed_data(self, seq: int, chunk: bytes) -> None:
        self.avatar.perspective_m([seq, "data", chunk])

    def remote_routed_ack(self, seq: int, credit: int) -> None:
        self.avatar.perspective_m([seq, "ack", credit])

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        if self.avatar.is_ready and not self.avatar.gone:
            self.avatar.end.malformed(error)


@dataclass(frozen=True)
class Lean:
    """What goes leanly on a direct connection, by what it carries: the kinds of message each side sends so
    (`kinds`), B's receiver of A's (`inbox`) and A's receiver of B's (`mind`, which also takes PB calls of `m`)."""

    kinds: Mapping[str, str]
    inbox: Callable[[DirectAvatar], LeanReceiver]
    mind: Callable[[Callable[[object], None], Callable[[ProtocolError], None]], LeanReceiver]


class DirectAvatar(pb.Avatar):
    """A logged-in direct connection, for one session or transfer."""

    def __init__(self, door: DirectDoor, offer: Offer, end: DirectEnd, mind: Any, lean: Lean | None = None) -> None:
        self.door = door
        self.offer = offer
        self.end = end
        self.mind = mind
        self.lean = lean or SESSION
        self.is_ready = False
        self.gone = False
        self._deadline: Any = None
        self.sender: Sender | None = None

    def attached(self, mind: Any) -> None:
        set_nodelay(mind)  # a keystroke's message leaves at once
        self._deadline = self.door.reactor.callLater(READY_WITHIN, self._not_ready)

    def detached(self, mind: Any) -> None:
        self.gone = True
        self._cancel_deadline()
        self.door.offers.drop(self.offer.username)
        if self.is_ready:
            self.end.lost()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _not_ready(self) -> None:
        self._deadline = None
        log.info("slaveshell: a direct connection from master {caller} did not say ready: dropped",
                 caller=visible(self.offer.caller))
        self.disconnect()

    def disconnect(self) -> None:
        broker = getattr(self.mind, "broker", None)
        transport = getattr(broker, "transport", None)
        if transport is not None:
            transport.loseConnection()

    def perspective_ready(self) -> bool:
        if self.is_ready or self.gone:
            return False
        self._cancel_deadline()
        self.sender = Sender(self.mind, self.lean.kinds)
        if not self.end.ready(self.sender.send):
            self.door.reactor.callLater(0, self.disconnect)
            return False
        self.is_ready = True
        return True

    def perspective_lean(self) -> LeanReceiver | None:
        """A (after READY) takes lean calls on this connection: B's messages go to it so from now on, and A's go
        to the inbox returned (None: not ready, or the connection cannot take lean calls; A stays on `m`)."""
        if not self.is_ready or self.gone or self.sender is None:
            return None
        if not accept(getattr(self.mind, "broker", None)):
            return None
        self.sender.lean = self.mind
        return self.lean.inbox(self)

    def perspective_m(self, wire: object) -> None:
        if self.is_ready and not self.gone:
            self.end.message(wire)


# Buildbot's PB port as master.cfg gives it (`c['protocols']['pb']['port']`), and its address as the other masters
# reach it; or why there is none.
PBPort = tuple[object, tuple[str, int]]


class DirectDoor:
    """B's offers on its PB port: `offer` registers one for a session, a login with it gets that session's
    avatar once."""

    def __init__(self, pbmanager: Callable[[], Any], port: Callable[[], PBPort | str],
                 reactor: Any, clock: Callable[[], float]) -> None:
        self._pbmanager = pbmanager
        self._port = port
        self.reactor = reactor
        self.clock = clock
        self.offers = Offers()
        self._registrations: dict[str, Any] = {}
        self._ends: dict[str, tuple[DirectEnd, Lean]] = {}
        self.avatars: dict[str, DirectAvatar] = {}  # by the session's token

    @deferred
    async def offer(self, caller: str, token: str, end: DirectEnd, lean: Lean | None = None) -> DirectOffer | str:
        """A one-time login on the PB port for `caller`'s session or transfer `token` (`lean`: what it carries,
        a session's messages by default), or why there is none."""
        port = self._port()
        if isinstance(port, str):
            return port
        portstr, (host, number) = port
        made = self.offers.make(caller, token, self.clock())
        if isinstance(made, str):
            return made
        try:
            registration = await self._pbmanager().register(portstr, made.username, made.password,
                                                            self._avatar)
        except Exception as e:
            self.offers.drop(made.username)
            return f"the PB port cannot take it ({visible(str(e) or type(e).__name__)[:200]})"
        self._registrations[made.username] = registration
        self._ends[made.username] = (end, lean or SESSION)
        return DirectOffer(host, number, made.username, made.password)

    def _avatar(self, mind: Any, username: str) -> DirectAvatar | None:
        offer = self.offers.take(username, self.clock())
        ended = self._ends.pop(username, None)
        self._unregister(username)  # single use: a second login with it is unknown on the port
        if offer is None or ended is None:
            self.offers.drop(username)
            return None
        end, lean = ended
        avatar = DirectAvatar(self, offer, end, mind, lean)
        self.avatars[offer.token] = avatar
        return avatar

    def withdraw(self, token: str) -> None:
        """The session `token` is over: its offer goes, its connection is closed."""
        for offer in [o for o in self.offers.live.values() if o.token == token]:
            self.offers.drop(offer.username)
            self._ends.pop(offer.username, None)
            self._unregister(offer.username)
        avatar = self.avatars.pop(token, None)
        if avatar is not None and not avatar.gone:
            # After the messages already written (the exit) have left.
            self.reactor.callLater(0, avatar.disconnect)

    def tick(self, now: float) -> list[Offer]:
        """Offers not taken in time are withdrawn: returned (their sessions stay on the router)."""
        expired = self.offers.expired(now)
        for offer in expired:
            self._ends.pop(offer.username, None)
            self._unregister(offer.username)
        return expired

    def _unregister(self, username: str) -> None:
        registration = self._registrations.pop(username, None)
        if registration is not None:
            defer.maybeDeferred(registration.unregister).addErrback(
                lambda failure: log.warn("slaveshell: a direct login could not be withdrawn from the PB port: "
                                         "{why}", why=visible(failure.getErrorMessage())))

    def close(self) -> None:
        for token in list(self.avatars):
            self.withdraw(token)
        for username in list(self.offers.live):
            self.offers.drop(username)
            self._ends.pop(username, None)
            self._unregister(username)


# -- A's end ---------------------------------------------------------------------------------------------------


class _Mind(LeanReceiver):
    """A's end of the connection: B's messages (PB calls of `m`, and once A asked for them, lean calls of its
    output and input acknowledgements)."""

    lean_methods = frozenset({"routed_output", "routed_input_ack"})

    def __init__(self, message: Callable[[object], None], malformed: Callable[[ProtocolError], None]) -> None:
        self._message = message
        self._malformed = malformed

    def remote_m(self, wire: object) -> None:
        self._message(wire)

    def remote_routed_output(self, seq: int, stream: int, data: bytes) -> None:
        self._message([seq, "output", stream, data])

    def remote_routed_input_ack(self, seq: int, nbytes: int, hidden: bool, flush: bool) -> None:
        self._message([seq, "input_ack", nbytes, hidden, flush])

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self._malformed(error)


class _CopyMind(_Mind):
    """A's end of a transfer's connection: B's messages (PB calls of `m`, and once A asked for them, lean calls of
    a download's data and an upload's acknowledgements)."""

    lean_methods = frozenset({"routed_data", "routed_ack"})

    def remote_routed_data(self, seq: int, chunk: bytes) -> None:
        self._message([seq, "data", chunk])

    def remote_routed_ack(self, seq: int, credit: int) -> None:
        self._message([seq, "ack", credit])


# What goes leanly on a session's connection, and on a transfer's.
SESSION = Lean(LEAN, _Inbox, _Mind)
COPY = Lean(COPY_LEAN, _CopyInbox, _CopyMind)


@deferred
async def offer_or_route(door: DirectDoor | None, here: str, caller: str, token: str, end: DirectEnd,
                         path: Callable[[str], None], ended: Callable[[], bool], lean: Lean | None = None
                         ) -> DirectOffer | None:
    """`door`'s one-time login for `caller`'s session or transfer `token` (`lean`: what it carries), or None: its
    messages stay on the router, and `path(why)` says so for the audit (direct streams not enabled on master
    `here`, or a bound). An offer made as the session or transfer `ended()` is withdrawn."""
    if door is None:
        path(f"{ROUTER} (direct streams are not enabled on master {here})")
        return None
    made = await door.offer(caller, token, end, lean)
    if isinstance(made, str):
        path(f"{ROUTER} (no direct connection offered: {made})")
        return None
    if ended():
        door.withdraw(token)
        return None
    return made


@dataclass
class DirectLink:
    """A's connection to B for one session: `send` a message, `close` it."""

    perspective: Any
    connector: Any

    sender: Sender

    def send(self, wire: object) -> defer.Deferred[Any] | None:
        return self.sender.send(wire)

    @deferred
    async def lean(self) -> bool:
        """After READY: this side takes B's output as lean calls, and sends its input and acknowledgements so;
        False when B does not offer them (its messages and ours stay PB calls of `m`)."""
        if not accept(getattr(self.perspective, "broker", None)):
            return False
        try:
            inbox = await self.perspective.callRemote("lean")
        except Exception:
            return False
        if not isinstance(inbox, pb.RemoteReference):
            return False
        self.sender.lean = inbox
        return True

    def close(self) -> None:
        self.connector.disconnect()


class CallerEnd(ABC):
    """A's end of a routed session or transfer (master_side.cluster.relay.RoutedView, .copy_relay.RoutedTransfer) as
    its direct stream sees it: B's one-time login (`offer`, from its answer), the connection once logged in
    (`direct`) and the path its messages take (`path`). `go_direct` connects, logs in and says READY; `use_direct`
    switches to the connection; the connection lost after READY (`direct_lost`) or a lean call of B's of the wrong
    shape (`malformed`) ends it. What it is (`WHAT`: "session", "transfer"), what goes leanly on its connection
    (`LEAN`), B's name (`master`) and the rest are the subclass's."""

    WHAT: ClassVar[str]
    LEAN: ClassVar[Lean]
    master: str  # B's name

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.offer: DirectOffer | None = None  # B's direct login, from its answer
        self.direct: DirectLink | None = None  # the connection, once logged in
        self.path = ROUTER

    @abstractmethod
    def done(self) -> bool:
        """Whether nothing more goes on its stream (it ended, was detached, or has not started)."""

    @abstractmethod
    def take(self, wire: object) -> None:
        """A message of B's, from the router or the direct connection: checked the same way whichever path it came
        by."""

    @abstractmethod
    def end(self, why: str) -> None:
        """It is lost here: the operator is told why, and B, if it can still hear, is told."""

    @abstractmethod
    def switch(self, send: Send) -> None:
        """Its messages go by `send` once those on the router are answered."""

    def broke(self, error: ProtocolError, what: str) -> None:
        """B broke the protocol (`what`: how, without content or paths): it ends with a line naming B."""
        self.end(f"master {visible(self.master)} broke the protocol: {error}")

    @deferred
    async def go_direct(self) -> None:
        """With B's direct login (its answer's offer): connect to B's PB port, log in, say READY, and send the
        messages over that connection from then on; when it cannot be made within CONNECT_WITHIN seconds, they stay
        on the router. The connection lost after READY ends it."""
        offer = self.offer
        if offer is None or self.done() or self.direct is not None:
            return
        try:
            link = await connect(self.reactor, offer, self.take, self.direct_lost, self.malformed, self.LEAN)
        except Exception as e:
            log.info("slaveshell: a {what} routed to master {master} stays on the router: no direct connection to "
                     "{host}:{port} ({why})", what=self.WHAT, master=visible(self.master), host=visible(offer.host),
                     port=offer.port, why=visible(str(e) or type(e).__name__)[:200])
            return
        if self.done():
            link.close()
            return
        self.direct = link  # from here, the connection lost ends it (B may have taken READY)
        try:
            ready = await link.perspective.callRemote("ready")
        except Exception:
            ready = False
        if self.done():
            return
        if ready is not True:
            self.end(f"master {visible(self.master)} did not take the {self.WHAT}'s direct connection")
            return
        self.use_direct(link)
        lean = await link.lean()
        log.info("slaveshell: a {what} routed to master {master} goes over a direct connection to {host}:{port}"
                 "{how}", what=self.WHAT, master=visible(self.master), host=visible(offer.host), port=offer.port,
                 how=" (lean calls)" if lean else "")

    def use_direct(self, link: DirectLink) -> None:
        """B took READY: the messages go over `link` once those on the router are answered."""
        self.direct = link
        self.path = DIRECT
        self.switch(link.send)

    def malformed(self, error: ProtocolError) -> None:
        """A lean call of B's on the direct connection whose shape is wrong: B broke the protocol."""
        self.broke(error, "a lean call of the wrong shape on the direct connection")

    def direct_lost(self) -> None:
        """The direct connection went after READY: it ends, as when the router is lost."""
        if self.direct is not None and not self.done():
            self.direct = None
            self.end(f"the direct connection to master {visible(self.master)} was lost")

    def close_direct(self) -> None:
        """The connection is closed, after the last message written to it (B's answer, the result) has left."""
        direct, self.direct = self.direct, None
        if direct is not None:
            self.reactor.callLater(0, direct.close)


@deferred
async def connect(reactor: Any, offer: DirectOffer, message: Callable[[object], None],
                  lost: Callable[[], None], malformed: Callable[[ProtocolError], None],
                  lean: Lean | None = None) -> DirectLink:
    """A's connection to B with `offer`, logged in within CONNECT_WITHIN seconds (else it fails and is closed);
    B's messages go to `message` (a lean call whose shape is wrong, to `malformed`); `lost` is told when the
    connection goes after READY. `lean`: what the connection carries (a session's messages by default, or a
    transfer's: COPY). The caller then says READY (`ready`), and asks for lean calls (`DirectLink.lean`)."""
    lean = lean or SESSION
    factory = pb.PBClientFactory()
    connector = reactor.connectTCP(offer.host, offer.port, factory, timeout=CONNECT_WITHIN)
    login = factory.login(credentials.UsernamePassword(offer.username.encode(), offer.password.encode()),
                          client=lean.mind(message, malformed))
    login.addTimeout(CONNECT_WITHIN, reactor)
    try:
        perspective = await login
    except BaseException:
        connector.disconnect()
        raise
    set_nodelay(perspective)
    perspective.notifyOnDisconnect(lambda ref: lost())
    return DirectLink(perspective, connector, Sender(perspective, lean.kinds))
