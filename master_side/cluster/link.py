"""`ClusterLink`: slaveshell's own session on the site's WAMP router, and what it registers and asks there.

It is an autobahn `Component` authenticated as slaveshell (a ticket), reconnecting with a bounded backoff: never
Buildbot's session (anonymous, never reconnecting, and the master stops when it is lost). On it each master
registers

- `slaveshell.master.<name>.workers` (master_side.cluster.config.master_uri): the workers attached to it now;
- `slaveshell.worker.<name>.locate` per attached, opted-in worker (worker_uri): the router refuses a second
  registration of a procedure and drops a session's registrations at once when the session dies, so its live
  registrations say which master holds a worker now. A worker whose procedure another master holds is
  attached to two masters: it is reported (`duplicates`), never registered twice;
- `slaveshell.worker.<name>.open` beside it: another master's operator opens a session on the worker through it
  (`opener`, master_side.cluster.serve);
- `slaveshell.worker.<name>.copy` beside them: another master's operator copies to or from the worker through it
  (`copier`, master_side.cluster.copy_serve).

The session speaks msgpack, so that a routed session's bytes travel as bytes (master_side.cluster.stream).

`sync` (called every second by the service) brings the registrations in line with the attached workers;
`site` asks every other master on the router for its workers.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.cluster.config import (
    MAX_NAME,
    ClusterConfig,
    master_attach_uri,
    master_of_uri,
    master_record_uri,
    master_uri,
    worker_uri,
)
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible

if TYPE_CHECKING:
    from autobahn.wamp.request import Registration
    from autobahn.wamp.types import CallDetails

log = Logger()

# A worker whose procedure another master holds is tried again after this many seconds (that master may have
# let it go).
RETRY_REFUSED = 10.0
# The largest message taken from the router: crossbar's own limit (its default max_message_size, 16 MiB), far above
# what slaveshell sends (a stream's or a copy's chunk, a listing of MAX_LISTED_WORKERS).
ROUTER_MESSAGE_MAX = 16 * 1024 * 1024
ALREADY_EXISTS = "wamp.error.procedure_already_exists"
NO_SUCH_PROCEDURE = "wamp.error.no_such_procedure"
# The router's role of slaveshell's sessions, or its prefix (slaveshell.client.router: one role per master): a call
# from any other role is refused.
ROLE = "slaveshell"

# What a worker's `open` procedure does: (worker, the call's argument, the router's details of the caller).
Opener = Callable[[str, object, "CallDetails"], Any]


# What another master's listing may hold (a listing over these bounds is not taken; a worker row whose name is
# longer is left out, a text field longer is dropped): a hostile master cannot make this one hold or show more.
MAX_LISTED_WORKERS = 10000
MAX_LISTED_TEXT = 1024
# How long the other masters' listings, once asked, answer the pages and lists that ask again (every open Shells
# page asks every 5 s): a routing decision asks afresh (ClusterLink.site(fresh=True)).
SITE_KEPT = 2.0
# A routing decision takes an answer at most this old (or the one being asked): an operator opening shells one after
# another makes this master ask at most about 4 times a second.
SITE_FRESH = 0.25


class ClusterUnavailable(Exception):
    """The router cannot be asked now (not connected, or it did not answer)."""


@dataclass(frozen=True)
class Dispute:
    """A worker a master lists that the shared database does not show connected to it (master_side.cluster.verify):
    `master` (its name on the router), `why` (one line, for the operator and the audit)."""

    worker: str
    master: str
    why: str


@dataclass(frozen=True)
class Listing:
    """What one master says of itself: its cluster name, Buildbot's name for it (`host:basedir`), its id in the
    shared database, and its attached workers (dicts: name, shell, paused, system, info, sessions, registered).
    Once checked against the shared database (ClusterLink.check), `workers` are those it confirms, `disputed` the
    others, and `trusted` whether the master is the Buildbot master it says it is."""

    master: str
    buildbot: str
    masterid: int | None
    workers: tuple[dict[str, object], ...]
    disputed: tuple[Dispute, ...] = ()
    trusted: bool = True

    @classmethod
    def from_wire(cls, value: object) -> Listing | None:
        """A listing from another master's answer, or None when it is not one (checked: it comes from the wire)."""
        if not isinstance(value, dict):
            return None
        master, buildbot, masterid = value.get("master"), value.get("buildbot"), value.get("masterid")
        workers = value.get("workers")
        if not isinstance(master, str) or not isinstance(buildbot, str) or not isinstance(workers, list):
            return None
        if len(master) > MAX_NAME or len(buildbot) > MAX_LISTED_TEXT or len(workers) > MAX_LISTED_WORKERS:
            return None
        if masterid is not None and (not isinstance(masterid, int) or isinstance(masterid, bool)):
            return None
        rows = tuple({k: v for k, v in w.items() if not isinstance(v, str) or len(v) <= MAX_LISTED_TEXT}
                     for w in workers
                     if isinstance(w, dict) and isinstance(w.get("name"), str) and 0 < len(w["name"]) <= MAX_NAME)
        return cls(master, buildbot, masterid, rows)

    def to_wire(self) -> dict[str, object]:
        return {"master": self.master, "buildbot": self.buildbot, "masterid": self.masterid,
                "workers": list(self.workers)}


class ClusterLink:
    """slaveshell's session on the router. `listing` gives this master's Listing (its workers now); `reactor`
    runs the component."""

    def __init__(self, config: ClusterConfig, listing: Callable[[], Listing], reactor: Any) -> None:
        self.config = config
        self.name = config.master
        self._listing = listing
        self._reactor = reactor
        self._session: Any = None
        self._component: Any = None
        self._registered: dict[str, list[Registration]] = {}  # worker name -> its registrations
        self.opener: Opener | None = None  # serves the workers' `open` procedures (master_side.cluster.serve)
        self.copier: Opener | None = None  # serves the workers' `copy` procedures (master_side.cluster.copy_serve)
        # Serves this master's `attach` procedure (master_side.cluster.serve): another master's operator watches
        # or joins a session here.
        self.attacher: Callable[[object, CallDetails], Any] | None = None
        # Further procedures registered under this master's name when it joins (master_side.cluster.records):
        # name -> handler, called with the router's details of each caller.
        self.procedures: dict[str, Callable[..., Any]] = {}
        # Called when the link leaves the router, with why: routed sessions end (master_side.cluster.serve, .relay).
        self.on_leave: list[Callable[[str], None]] = []
        self._pending: set[str] = set()
        self.duplicates: dict[str, float] = {}  # worker name -> when its registration was refused
        self.master_refused = False  # another master holds this master's name
        self._uris: dict[int, str] = {}  # registration id -> URI, as the router's meta API told it
        # Checks the other masters' listings against the shared database (master_side.cluster.verify, set by
        # master_side.cluster.part); None only where there is no database (tests of the link alone).
        self.check: Callable[[list[Listing]], defer.Deferred[list[Listing]]] | None = None
        self._site_kept: tuple[float, list[Listing]] | None = None  # when, the answer
        # The askers waiting for the answer being asked now (None: none is asked), and the count of `changed`.
        self._site_waiters: list[defer.Deferred[list[Listing]]] | None = None
        self._site_changes = 0

    @property
    def reactor(self) -> Any:
        return self._reactor

    @property
    def connected(self) -> bool:
        return self._session is not None

    def registered(self, worker: str) -> bool:
        return worker in self._registered

    def transport(self) -> dict[str, Any]:
        """The router's transport, as autobahn's Component takes it."""
        return {"url": self.config.router_url, "max_retries": -1, "serializers": ["msgpack"],
                # A message from the router above its own limit fails the connection (joined again), never held:
                # a compromised router cannot make this master hold more.
                "options": {"maskClientFrames": False, "maxMessagePayloadSize": ROUTER_MESSAGE_MAX,
                            "maxFramePayloadSize": ROUTER_MESSAGE_MAX},
                "initial_retry_delay": self.config.initial_retry_delay,
                "max_retry_delay": self.config.max_retry_delay, "retry_delay_growth": 1.5}

    def start(self, basedir: str) -> None:
        """Join the router (and keep joining it when the link is lost); a ticket file that cannot be read leaves
        the link off, said in the log."""
        from autobahn.twisted.component import Component

        try:
            ticket = self.config.secret(basedir)
        except OSError as e:
            log.critical("slaveshell: cannot read the router's ticket file ({why}): the cluster link is off",
                         why=visible(e.strerror or str(e)))
            return

        transport = self.transport()
        component = Component(transports=[transport], realm=self.config.realm,
                              authentication={"ticket": {"authid": self.config.authid,
                                                         "ticket": ticket}})
        component.on("join", self._joined)
        component.on("leave", self._left)
        self._component = component
        done = component.start(self._reactor)
        done.addErrback(lambda failure: log.critical(
            "slaveshell: the cluster link to the router ended: {why}", why=visible(failure.getErrorMessage())))

    @deferred
    async def stop(self) -> None:
        component, self._component = self._component, None
        if component is not None:
            try:
                # Leaving waits for the router's answer: bounded, so that a router gone silent cannot hold up
                # the master's shutdown.
                await self._timed(defer.maybeDeferred(component.stop))
            except Exception as e:
                log.warn("slaveshell: the cluster link did not leave the router cleanly: {why}",
                         why=visible(str(e)[:200]))
        self._forget()
        for callback in list(self.on_leave):
            callback("this master is leaving the cluster's router")

    # -- the session's life ------------------------------------------------------------------------

    @deferred
    async def _joined(self, session: Any, details: object) -> None:
        log.info("slaveshell: joined the router as master {name}", name=visible(self.name))
        self._session = session
        no_delay(session)
        lean_frames(session)
        from autobahn.wamp.types import RegisterOptions

        try:
            await session.register(self._answer_listing, master_uri(self.name))
            if self.attacher is not None:
                await session.register(self.attacher, master_attach_uri(self.name), RegisterOptions(details=True))
            for what, handler in self.procedures.items():
                await session.register(handler, master_record_uri(self.name, what), RegisterOptions(details=True))
        except Exception as e:
            self.master_refused = _error_uri(e) == ALREADY_EXISTS
            log.critical("slaveshell: cannot register master {name} on the router: {why}", name=visible(self.name),
                         why="another master already uses this name" if self.master_refused else visible(str(e)))

    def _left(self, session: Any, details: object) -> None:
        log.warn("slaveshell: left the router ({why}); reconnecting", why=visible(str(details)[:200]))
        self._forget()
        for callback in list(self.on_leave):
            callback("this master lost the cluster's router")

    def _forget(self) -> None:
        self._session = None
        self._registered.clear()
        self._pending.clear()
        self.duplicates.clear()
        self._uris.clear()
        self._site_kept = None
        self._site_changes += 1

    def _answer_listing(self) -> dict[str, object]:
        return self._listing().to_wire()

    def _answer_locate(self, worker: str) -> Callable[[], dict[str, object]]:
        def locate() -> dict[str, object]:
            listing = self._listing()
            return {"worker": worker, "master": listing.master, "buildbot": listing.buildbot}
        return locate

    # -- registrations -------------------------------------------------------------------------------

    def sync(self, attached: Iterable[str], now: float) -> None:
        """Register the workers in `attached` (attached here and opted in) that are not registered yet, and
        unregister those no longer attached. A refused one (another master holds it) is tried again later."""
        session = self._session
        if session is None:
            return
        wanted = set(attached)
        for worker in list(self._registered):
            if worker not in wanted:
                self._unregister(worker)
        for worker in list(self.duplicates):
            if worker not in wanted:
                del self.duplicates[worker]
        for worker in wanted:
            if worker in self._registered or worker in self._pending:
                continue
            if now - self.duplicates.get(worker, now - RETRY_REFUSED) < RETRY_REFUSED:
                continue
            self._pending.add(worker)
            self._register(session, worker, now)

    @deferred
    async def _register(self, session: Any, worker: str, now: float) -> None:
        """The worker's procedures: its `open` first, then `locate`, so that a master that finds the worker here
        (locate) can open it. The router holds each for one session: a worker another master holds is refused
        at the first, and whatever was registered of it is let go."""
        from autobahn.wamp.types import RegisterOptions

        registrations: list[Registration] = []
        opener = self.opener
        wanted: list[tuple[Callable[..., Any], str, Any]] = []
        if opener is not None:
            wanted.append((lambda argument, details: opener(worker, argument, details), worker_uri(worker, "open"),
                           RegisterOptions(details=True)))
        copier = self.copier
        if copier is not None:
            wanted.append((lambda argument, details: copier(worker, argument, details), worker_uri(worker, "copy"),
                           RegisterOptions(details=True)))
        wanted.append((self._answer_locate(worker), worker_uri(worker), None))
        try:
            for handler, uri, options in wanted:
                registrations.append(await session.register(handler, uri, options))
        except Exception as e:
            for registration in registrations:
                defer.maybeDeferred(registration.unregister).addErrback(lambda failure: None)
            if session is not self._session:
                return
            self._pending.discard(worker)
            if _error_uri(e) == ALREADY_EXISTS:
                if worker not in self.duplicates:
                    log.warn("slaveshell: worker {worker} is attached here and to another master: it is reported, "
                             "not registered", worker=visible(worker))
                self.duplicates[worker] = now
            else:
                log.warn("slaveshell: cannot register worker {worker} on the router: {why}", worker=visible(worker),
                         why=visible(str(e)[:200]))
            return
        if session is not self._session:
            return
        self._pending.discard(worker)
        self.duplicates.pop(worker, None)
        self._registered[worker] = registrations

    def _unregister(self, worker: str) -> None:
        for registration in self._registered.pop(worker):
            d = defer.maybeDeferred(registration.unregister)
            d.addErrback(lambda failure: log.warn("slaveshell: unregistering worker {worker}: {why}",
                                                  worker=visible(worker), why=visible(failure.getErrorMessage())))

    # -- routed sessions' procedures and calls -----------------------------------------------------

    @deferred
    async def register(self, handler: Callable[..., Any], uri: str) -> Registration:
        """Register `handler` at `uri`, called with the router's details of each caller (`details`).
        ClusterUnavailable when not on the router."""
        from autobahn.wamp.types import RegisterOptions

        session = self._session
        if session is None:
            raise ClusterUnavailable("this master is not connected to the cluster's router")
        registration: Registration = await self._timed(session.register(handler, uri, RegisterOptions(details=True)))
        return registration

    def call(self, uri: str, *args: object, timeout: float | None = None) -> defer.Deferred[Any]:
        """Call `uri` (within call_timeout, or `timeout`): fails with ClusterUnavailable when not on the router,
        and with the router's or the callee's error otherwise."""
        session = self._session
        if session is None:
            return defer.fail(ClusterUnavailable("this master is not connected to the cluster's router"))
        d: defer.Deferred[Any] = session.call(uri, *args)
        return d.addTimeout(self.config.call_timeout if timeout is None else timeout, self._reactor)

    # -- questions to the other masters ----------------------------------------------------------------

    def site(self, fresh: bool = False) -> defer.Deferred[list[Listing]]:
        """Every other master's Listing, from the masters registered on the router now (a master that does not
        answer within call_timeout is left out and logged), checked against the shared database (`check`).
        ClusterUnavailable when not on the router.

        An answer is kept SITE_KEPT seconds for the pages and lists that ask again and again, and the askers
        of one moment share one asking (one question of each master, one read of the database). `fresh`: an
        answer at most SITE_FRESH seconds old, or being asked (a routing decision)."""
        kept = self._site_kept
        if kept is not None and self._reactor.seconds() - kept[0] < (SITE_FRESH if fresh else SITE_KEPT):
            return defer.succeed(list(kept[1]))
        waiter: defer.Deferred[list[Listing]] = defer.Deferred()
        waiters = self._site_waiters
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        waiters = self._site_waiters = [waiter]
        self._ask_site().addBoth(self._site_answered, waiters, self._site_changes)
        return waiter

    def changed(self) -> None:
        """This master changed what another master lists (a session routed there opened or ended): the answer
        kept, and the one being asked (its question went before the change), no longer answer the askers to come.
        A routing decision's answer, asked just before the session it routes opened, would otherwise show the
        pages that worker's sessions without it for SITE_KEPT seconds."""
        self._site_kept = None
        self._site_waiters = None
        self._site_changes += 1

    def _site_answered(self, result: list[Listing] | Failure, waiters: list[defer.Deferred[list[Listing]]],
                       changes: int) -> None:
        if self._site_waiters is waiters:
            self._site_waiters = None
        if not isinstance(result, Failure) and changes == self._site_changes:
            self._site_kept = (self._reactor.seconds(), result)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(list(result))

    @deferred
    async def _ask_site(self) -> list[Listing]:
        session = self._session
        if session is None:
            raise ClusterUnavailable("this master is not connected to the cluster's router")
        try:
            uris = await self._timed(self._master_uris(session))
        except Exception as e:
            raise ClusterUnavailable(f"the cluster's router did not answer: {str(e)[:200]}") from None
        own = master_uri(self.name)
        asked = [uri for uri in uris if uri != own and master_of_uri(uri) is not None]
        answers = await defer.DeferredList([self._timed(session.call(uri)) for uri in asked], consumeErrors=True)
        listings = []
        for uri, (ok, value) in zip(asked, answers, strict=True):
            listing = Listing.from_wire(value) if ok else None
            if listing is None or listing.master != master_of_uri(uri):
                log.warn("slaveshell: master {name} did not answer on the router", name=visible(master_of_uri(uri)))
                continue
            listings.append(listing)
        check = self.check
        if check is None:
            return listings
        checked: list[Listing] = await check(listings)
        return checked

    @deferred
    async def masters(self) -> list[str]:
        """The names of the other masters registered on the router now (their `workers` procedures).
        ClusterUnavailable when not on the router."""
        session = self._session
        if session is None:
            raise ClusterUnavailable("this master is not connected to the cluster's router")
        try:
            uris = await self._timed(self._master_uris(session))
        except Exception as e:
            raise ClusterUnavailable(f"the cluster's router did not answer: {str(e)[:200]}") from None
        names = {master_of_uri(uri) for uri in uris if uri != master_uri(self.name)}
        return sorted(name for name in names if name is not None)

    @deferred
    async def _master_uris(self, session: Any) -> list[str]:
        """The URIs of the procedures registered on the router now (the meta API: wamp.registration.list,
        then .get for the ids not seen before)."""
        ids = await session.call("wamp.registration.list")
        exact = [i for i in (ids or {}).get("exact", []) if isinstance(i, int)]
        self._uris = {i: uri for i, uri in self._uris.items() if i in exact}
        unknown = [i for i in exact if i not in self._uris]
        infos = await defer.DeferredList([session.call("wamp.registration.get", i) for i in unknown],
                                         consumeErrors=True)
        for i, (ok, info) in zip(unknown, infos, strict=True):
            if ok and isinstance(info, dict) and isinstance(info.get("uri"), str):
                self._uris[i] = info["uri"]
        return list(self._uris.values())

    def _timed(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        return d.addTimeout(self.config.call_timeout, self._reactor)


def no_delay(session: Any) -> None:
    """Keep small messages to and from the router from waiting on TCP's timers (a keystroke's echo through two
    masters took ~90 ms instead of a few).

    - Nagle's algorithm off on this end: autobahn asks for it when the connection is made, but before the protocol
      has its options, so the request fails silently and a small message sent while the previous one waits for
      its acknowledgement waited up to 40 ms (the router's delayed ACK).
    - The router's end has the same flaw, which only the router's own code could mend: so this end acknowledges
      at once what it reads (Linux's TCP_QUICKACK, which the kernel drops after a while: set again after each
      read), and the router's next small message does not wait for a delayed acknowledgement either."""
    protocol = getattr(session, "_transport", None)
    transport: Any = getattr(protocol, "transport", None)
    with contextlib.suppress(AttributeError, OSError):  # not TCP (a Unix socket), or already closed
        transport.setTcpNoDelay(True)
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = getattr(transport, "socket", None)
    if quickack is None or sock is None or protocol is None:
        return
    received = protocol.dataReceived

    def data_received(data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        received(data)

    protocol.dataReceived = data_received


# What the link reads from the router at once (Twisted reads 64 KiB): a routed session's output message (512 KiB)
# in one or two reads instead of eight, each of which autobahn's frame parser copies and slices.
READ_SIZE = 1024 * 1024


def lean_frames(session: Any) -> None:
    """Send each of the link's WebSocket messages to the kernel at once, header and payload in one sendmsg(2) with
    no join (slaveshell.plumbing.write_now), and read the router's in pieces of up to READ_SIZE.

    autobahn's `sendMessage` joins the frame's header to the payload (a copy of every routed byte, in each of the
    two masters) and leaves the bytes to the reactor's next turn (one more loop turn per message in each master, on
    a keystroke's way there and back). Its own path stays for whatever this does not cover: a message sent while
    the protocol is not open, masked or compressed frames, fragmentation, a queue of its own (`send_queue`)."""
    from autobahn.websocket.protocol import WebSocketProtocol

    from slaveshell.plumbing.write_now import write_now

    protocol: Any = getattr(session, "_transport", None)
    transport: Any = getattr(protocol, "transport", None)
    if protocol is None or transport is None or not hasattr(protocol, "sendMessage"):
        return
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = READ_SIZE
    send_message = protocol.sendMessage

    def lean(payload: bytes, isBinary: bool = False, fragmentSize: int | None = None, sync: bool = False,  # noqa: N803
             doNotCompress: bool = False) -> None:  # noqa: N803
        if (not isBinary or fragmentSize is not None or sync or protocol.state != WebSocketProtocol.STATE_OPEN
                or protocol._perMessageCompress is not None or protocol.maskClientFrames or protocol.send_queue
                or protocol.autoFragmentSize or protocol.logFrames or protocol.logOctets
                or 0 < protocol.maxMessagePayloadSize < len(payload)):
            send_message(payload, isBinary, fragmentSize, sync, doNotCompress)
            return
        write_now(protocol.transport, [frame_header(len(payload)), payload])

    protocol.sendMessage = lean


def frame_header(length: int) -> bytes:
    """The header of one unmasked, final, binary WebSocket frame (RFC 6455 5.2) of `length` bytes."""
    if length <= 125:
        return bytes((0x82, length))
    if length <= 0xFFFF:
        return bytes((0x82, 126)) + length.to_bytes(2, "big")
    return bytes((0x82, 127)) + length.to_bytes(8, "big")


def caller_of(details: CallDetails | None) -> str | None:
    """The router's authid of a call's caller when it is a slaveshell master (the role ROLE, or a master's own
    role `slaveshell-<authid>`, slaveshell.client.router.master_role), else None."""
    role = None if details is None else details.caller_authrole
    if details is None or not isinstance(role, str) or not (role == ROLE or role.startswith(ROLE + "-")):
        return None
    authid = details.caller_authid
    return authid if isinstance(authid, str) and authid else None


def master_caller(details: CallDetails, may: str) -> str:
    """The calling master's authid on the router, for a procedure only slaveshell masters may call (`may`: what
    it does, for the refusal); any other caller is refused with slaveshell.error.not_authorized (the router's
    permissions let none call, and this holds whatever its configuration)."""
    from autobahn.wamp.exception import ApplicationError

    caller = caller_of(details)
    if caller is None:
        raise ApplicationError("slaveshell.error.not_authorized", f"only a slaveshell master may {may}")  # type: ignore[no-untyped-call]
    return caller


def error_uri(error: BaseException) -> str | None:
    """The WAMP error URI of a failed call or registration (wamp.error.no_such_procedure, ...), if any."""
    return getattr(error, "error", None)


def _error_uri(error: BaseException) -> str | None:
    return getattr(error, "error", None)
