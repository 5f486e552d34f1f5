"""The web door to the operator API: a WebSocket at ``<site>/plugins/slaveshell/ws``, one session per socket.

Autobahn over Twisted, as Buildbot's own ``buildbot/www/ws.py``. The handshake is refused (403) when the
Origin is not the site's own; everything else is checked once the socket is open (master_side.www.access), so
the page can say why. The identity is a `WebIdentity` from the session cookie, which must come with a valid shell
grant (master_side.www.grants: revoked at logout, credential or role changes, idle expiry; a revoked grant
closes its sockets); the session is opened, fed and
ended through the same `OperatorAPI` and `View` as the UNIX socket's (master_side.shell_socket.door), so policy,
quotas, recording, audit and the credit windows are theirs. The page's messages are decoded here, their values
checked as the framed door checks them, into typed calls on the `View`; a refused one closes the socket with its
reason, after its cost to the session (`View.refused`).

Messages (RFC 6455 frames):

- page -> master, text (JSON): first and once, ``{"type": "open", "worker": str, "cols": int, "rows": int,
  "build": int?, "reason": str?}`` (a new session; with ``build``, in a build held by HoldForShell, as
  ``buildbot-shell --build``; ``reason`` as ``--reason``) or ``{"type": "attach", "id": str, "mode": "attach" |
  "watch", "reattach": bool?}`` (resume one's own detached session or join another's, per `OperatorAPI.attach`;
  watch is read-only; with ``reattach``, sent when the page attaches without a click (a reload), another's session
  is refused with ``"confirm": true``);
  or, on a socket of its own, ``{"type": "workers"}`` / ``{"type": "sessions"}`` (the lists for the fleet page),
  ``{"type": "copy", ...}`` (one file copied to or from a worker: master_side.www.copy_ws, which describes that
  socket's messages) or ``{"type": "run", ...}`` then ``{"type": "stop"}`` (a fleet run: master_side.www.fleet_page,
  which describes its messages; a run's message may be up to 64 KiB, a script in it).
  Then
  ``{"type": "resize", "cols": int, "rows": int}``, ``{"type": "ack", "bytes": int}`` (output rendered),
  ``{"type": "close"}`` (end the session, as ``~.``; a watcher's close leaves), ``{"type": "kill"}`` (a moderator
  watching a four-eyes session ends it, as ``slaveshell kill ID``: `OperatorAPI.kill`, or for a session another
  master serves and says this view moderates, that master's kill, under its policy (master_side.cluster.kills);
  refused to anyone else, and the socket closed); binary: input bytes (at most
  MAX_CHUNK each, within the input credit window). Closing the socket detaches: the session waits
  ``detach_grace`` for a reattach.
- master -> page, binary: output bytes (UTF-8 as the PTY gives it); text (JSON): ``{"type": "opened", "id",
  "worker", "role", "moderated_by", "moderator", "master"?}`` (``moderated_by``: a four-eyes session's groups and
  web roles, else null; ``moderator``: whether this watcher moderates it; ``master``: the master of the site that
  serves a routed session, which says the other two for its own sessions), ``{"type": "input_ack", "bytes"}``,
  ``{"type": "killed", "text"}`` (a moderator's kill's line, that master's for a routed session; the session's
  exit follows),
  ``{"type": "waiting", "text"}``, ``{"type": "exit", "code", "signal", "reason"}``, ``{"type": "workers",
  "workers": [...]}``, ``{"type": "sessions", "sessions": [...]}``, ``{"type": "error", "message", "login": true?,
  "confirm": true?}`` (then the master closes the socket; ``login``: log in again for a new shell grant;
  ``confirm``: ask the user before attaching).

Admission counts what authorization admitted: a logged-in user with some right on some worker (slaveshell's
policy and Buildbot's authz's ``shell`` action on the same worker) takes one of MAX_SOCKETS places (at most
MAX_SOCKETS_PER_USER); a logged-in user with no right at all takes one of the far fewer places for them
(MAX_SOCKETS_NO_RIGHT, MAX_SOCKETS_NO_RIGHT_PER_USER), and a socket without a login, from another site, or with a
session that is not valid one of the places for those (MAX_SOCKETS_REFUSED, MAX_SOCKETS_REFUSED_PER_HOST), held
only until its refusal is sent: users without a right never take an operator's place. A refusal is an error
message (or, past the bound for sockets without a login, a 503 to the handshake) and an audit event.

What the master queues for a page, a session's output and the answers to its questions alike, counts against
the connection gate's bounds (master_side.operators.gate: ``max_connection_buffer``, ``max_buffered_total``,
``write_stall_timeout``), on the gate's tick: a page that does not read is dropped, and audited.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.cluster.link import ClusterLink, ClusterUnavailable
from master_side.operators.api import OperatorError, View
from master_side.operators.routed import RoutedHandle
from master_side.operators.terms import Handle
from master_side.sessions.worker_link import subscribe
from master_side.www import access, fleet_page, grants, lists
from master_side.www.access import UserInfo
from master_side.www.copy_ws import MAX_COPIES, MAX_COPIES_PER_USER, TooLarge, WebCopy, refusal_text, web_request
from master_side.www.host import WebHost, web_host
from master_side.www.lists import Answer, Message
from master_side.www.quota import Quota
from master_side.www.site import MAX_SITE_WORKERS, worker_name
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import chunks
from slaveshell.vocabulary.policy import Action, WebIdentity
from slaveshell.vocabulary.protocol import (
    MAX_CHUNK,
    PROTOCOL_VERSION,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_int,
    check_size,
)

if TYPE_CHECKING:
    from autobahn.websocket.types import ConnectionRequest
    from buildbot.master import BuildMaster


log = Logger()

# Bounds: sockets of users with a right, in total and per web user; of logged-in users with no right; of
# sockets refused before any user is known, in total and per remote host; a control message's size.
MAX_SOCKETS = 64
MAX_SOCKETS_PER_USER = 8
MAX_SOCKETS_NO_RIGHT = 8
MAX_SOCKETS_NO_RIGHT_PER_USER = 1
MAX_SOCKETS_REFUSED = 16
MAX_SOCKETS_REFUSED_PER_HOST = 4
MAX_CONTROL = 1024
# Questions (lists, history, transcript chunks) in progress on one socket.
MAX_QUERIES = 4
# What a page's view of a session another master holds may keep before Buildbot's authz here has been asked.
MAX_HELD = 4 * 1024 * 1024
# How long the names of the other masters' workers are taken as known, for the sockets' admission.
SITE_NAMES_FOR = 5.0


class WebViewerSink:
    """A `ViewerSink` (master_side.operators.api) over one page's WebSocket."""

    def __init__(self, protocol: TerminalProtocol) -> None:
        self.protocol = protocol
        self.connection: object = protocol

    @property
    def gone(self) -> bool:
        return not self.protocol.sending

    def output(self, stream: int, data: bytes) -> None:
        if self.gone:
            return
        # A bulk stream's message (up to 512 KiB, slaveshell.vocabulary.flow) reaches the page in MAX_CHUNK pieces.
        for piece in chunks(data, MAX_CHUNK) if len(data) > MAX_CHUNK else [data]:
            self.protocol.sendMessage(piece, isBinary=True)
        # A page that does not read is dropped (its session detaches, as for a lost connection).
        self.protocol.check_buffer()

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.protocol.send_json({"type": "input_ack", "bytes": nbytes})

    def exit(self, status: ExitStatus) -> None:
        self.protocol.send_json({"type": "exit", "code": status.code, "signal": status.signal,
                                 "reason": status.reason})

    def waiting(self, text: str) -> None:
        self.protocol.send_json({"type": "waiting", "text": text})

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        return subscribe(self.protocol.lost_callbacks, callback)

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        pass  # its only failure is a lost connection: on_disconnect


class HeldWebSink(WebViewerSink):
    """A `WebViewerSink` that keeps what comes until `release` (or drops it: `drop`): the view of a session another
    master holds, until Buildbot's authz here has been asked about the worker that master names. What it keeps is
    bounded by the view's output window there; past MAX_HELD it keeps nothing more, and `release` says so."""

    def __init__(self, protocol: TerminalProtocol) -> None:
        super().__init__(protocol)
        self.held: list[Callable[[], None]] | None = []
        self.held_bytes = 0
        self.overflow = False

    def _keep(self, call: Callable[[], None], size: int = 0) -> bool:
        if self.held is None:
            return False
        if self.held_bytes + size > MAX_HELD:
            self.overflow = True
        else:
            self.held_bytes += size
            self.held.append(call)
        return True

    def output(self, stream: int, data: bytes) -> None:
        if not self._keep(lambda: WebViewerSink.output(self, stream, data), len(data)):
            super().output(stream, data)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        if not self._keep(lambda: WebViewerSink.input_ack(self, nbytes, hidden)):
            super().input_ack(nbytes, hidden)

    def exit(self, status: ExitStatus) -> None:
        if not self._keep(lambda: WebViewerSink.exit(self, status)):
            super().exit(status)

    def waiting(self, text: str) -> None:
        if not self._keep(lambda: WebViewerSink.waiting(self, text)):
            super().waiting(text)

    def release(self) -> bool:
        """What was kept, sent; from now on everything goes to the page. False (nothing sent) when more came than
        it keeps."""
        held, self.held = self.held or [], None
        if self.overflow:
            return False
        for call in held:
            call()
        return True

    def drop(self) -> None:
        self.held = None if self.held is None else []
        self.overflow = True


class TerminalProtocol(WebSocketServerProtocol):
    factory: TerminalFactory

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.lost_callbacks: list[Callable[[], None]] = []
        self.info: UserInfo = {}
        self.identity: WebIdentity | None = None
        self.refusal: str | None = None
        self.relogin = False
        self.grant: grants.Grant | None = None
        self.release_grant: Callable[[], None] | None = None
        # The session: a local one's View, or a RoutedHandle on one another master of the site serves.
        self.view: Handle | None = None
        self.fleet_run: fleet_page.WebRun | None = None
        self.opening = False
        self.killing = False  # a moderator's kill is being asked (one at a time)
        # The quota this socket holds a place of, and under which key (TerminalFactory).
        self.place: tuple[Quota, object] | None = None
        self.queries = 0
        # The socket's transfer (master_side.www.copy_ws), and the place it holds among the page's transfers.
        self.copy: WebCopy | None = None
        self.copy_place: tuple[Quota, object] | None = None
        # Bytes written to the transport so far (the connection gate compares it with what is still buffered).
        self.written = 0

    @property
    def disconnected(self) -> bool:
        return self.closed

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        self.written += len(data)
        super().sendData(data, sync, chopsize)

    def check_buffer(self) -> None:
        """Drop the socket if what waits unsent to the page passed the gate's bound (and audit it)."""
        service = web_host(self.master)
        if service is not None and not self.closed:
            service.gate.check(self)

    @property
    def master(self) -> BuildMaster:
        return self.factory.master

    def _secure(self) -> bool:
        from twisted.internet.interfaces import ISSLTransport

        return ISSLTransport.providedBy(self.transport)

    # Autobahn takes a Deferred from onConnect too (it waits for it: txaio.as_future), which its types do not say.
    def onConnect(self, request: ConnectionRequest) -> Deferred[None] | None:  # type: ignore[override]
        headers = request.headers
        try:
            self.info = access.user_info(self.master, headers.get("cookie", ""), request.path, self._secure())
        except access.Refused as e:
            self.refusal = str(e)
        try:
            access.check_origin(headers.get("origin"), self.master.config.buildbotURL)
        except access.Refused as e:
            self._audit(None, f"web origin refused: {e}")
            raise ConnectionDeny(403, "Forbidden") from None
        if self.refusal is None:
            try:
                access.check_auth_configured(self.master)
                self.identity = access.web_identity(self.master, self.info)
            except access.Refused as e:
                self.refusal = str(e)
        if self.refusal is None:
            try:
                self.grant = grants.check(self.master, headers.get("cookie", ""), request.path, self._secure(),
                                          self.info)
            except access.Refused as e:
                self.refusal, self.relogin = str(e), True
        if self.refusal is None and self.identity is not None:
            return self._admit(self.identity)
        self._hold_refused()
        return None

    def _hold_refused(self) -> None:
        """A place among the sockets refused (held until the refusal is sent and the socket closed), by remote
        host; past that bound the handshake itself is refused (503)."""
        # Autobahn's peer, "tcp4:<address>:<port>": the address without the port.
        host = str(self.peer).rsplit(":", 1)[0]
        if not self._take(self.factory.refused, host):
            why = "too many refused web terminal sockets at once (the master's limit)"
            self._audit(None, f"web socket refused: {why}")
            raise ConnectionDeny(503, why)

    def _take(self, quota: Quota, key: object) -> bool:
        if not quota.take(key):
            return False
        self.place = (quota, key)
        return True

    @deferred
    async def _admit(self, who: WebIdentity) -> None:
        """A place among the sockets of users with a right when `who` has one, else among the few for users
        without: the refusal is the socket's message."""
        factory = self.factory
        right = await factory.has_right(who, self.info)
        if self.closed:
            return  # gone during the question: it takes no place
        quota, per = ((factory.sockets, MAX_SOCKETS_PER_USER) if right
                      else (factory.no_right, MAX_SOCKETS_NO_RIGHT_PER_USER))
        full = quota.refusal(who.user)
        if full == "per_key":
            self.refusal = (f"you already have {per} web terminals open (the master's limit)" if right else
                            f"you have no right on any worker here, and already {per} web terminal socket open "
                            "(the master's limit for users without a right)")
        elif full == "total":
            self.refusal = (f"the master already serves {MAX_SOCKETS} web terminals (its limit); try again later"
                            if right else f"the master already holds {MAX_SOCKETS_NO_RIGHT} web terminal sockets "
                            "of users without a right on any worker (its limit); try again later")
        else:
            self._take(quota, who.user)
            service = web_host(self.master)
            if service is not None:
                service.gate.watch(self, who)
            return
        self._hold_refused()

    def onOpen(self) -> None:
        if self.refusal is not None:
            self._audit(None, f"web login refused: {self.refusal}")
            self.refuse(self.refusal, login=self.relogin)
        elif self.grant is not None and (registry := grants.registry(self.master)) is not None:
            self.release_grant = registry.use(self.grant, self._grant_revoked)

    def _grant_revoked(self, reason: str) -> None:
        self._audit(None, f"web shell grant revoked: {reason}")
        self.refuse(f"{reason}: {grants.LOG_IN_AGAIN}", login=True)

    @property
    def sending(self) -> bool:
        """Whether messages may still be sent: open, and no close sent (autobahn raises then)."""
        return not self.closed and self.state == self.STATE_OPEN

    def send_json(self, message: Message) -> None:
        if self.sending:
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)
            self.check_buffer()

    def refuse(self, message: str, **extra: object) -> None:
        if self.sending:
            self.send_json({"type": "error", "message": message, **{k: v for k, v in extra.items() if v}})
            self.sendClose(code=1000)

    def _audit(self, worker: str | None, reason: str) -> None:
        """A refusal in the audit index under the web user's name (``web:anonymous`` without a login), at most
        one per user and kind of refusal per interval (master_side.audit.refusals.RefusalAudit)."""
        service = web_host(self.master)
        who = self.identity
        if who is None:
            name = self.info.get("username") if not self.info.get("anonymous") else None
            who = WebIdentity.from_web(name if isinstance(name, str) and name else "anonymous", ())
        if service is not None:
            service.gate.audit(who, "refused", reason, worker)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            if isBinary and self.copy is not None:
                self.copy.data(payload)
                return
            if isBinary:
                view = self.view
                if view is None:
                    raise ProtocolError("input before the session is open")
                try:
                    view.input(check_bytes(payload, "input"))
                except ProtocolError as e:
                    self._refused(view, e)
                return
            message = json.loads(payload.decode("utf-8"))  # at most MAX_CHUNK bytes (the factory's bound)
            if not isinstance(message, dict):
                raise ProtocolError("a control message must be a JSON object")
            kind = message.get("type")
            if len(payload) > (fleet_page.MAX_RUN_MESSAGE if kind == "run" and self.copy is None else MAX_CONTROL):
                raise ProtocolError("control message too long")
            if self.copy is not None:
                self.copy.message(message)
            elif kind == "copy":
                self._copy(message)
            elif kind == "open":
                self._open(message)
            elif kind == "attach":
                self._attach(message)
            elif kind in lists.QUERIES:
                self._query(kind, message)
            elif kind == "run":
                self._run(message)
            elif kind == "stop":
                if self.fleet_run is None:
                    raise ProtocolError("stop without a run")
                self.fleet_run.stop()
            elif self.view is None:
                raise ProtocolError(f"{kind!r} before the session is open")
            elif kind in ("ack", "resize", "close"):
                self._session(self.view, kind, message)
            elif kind == "kill":
                self._kill(self.view)
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except (ProtocolError, ValueError) as e:
            self.refuse(f"bad message from the page: {e}")
        except Exception:
            log.failure("slaveshell: a web terminal message from {who}", who=visible(self.identity))
            self.refuse("the master could not handle that message (see its log)")

    def _session(self, view: Handle, kind: str, message: Message) -> None:
        """A session message from the page, decoded and given to the view."""
        try:
            if kind == "ack":
                view.ack(check_int(message.get("bytes"), "ack", 0, 2**40))
            elif kind == "resize":
                view.resize(*check_size(message.get("cols"), message.get("rows")))
            else:  # "close"
                view.close()
        except ProtocolError as e:
            self._refused(view, e)

    def _kill(self, view: Handle) -> None:
        """A moderator's *End session*: from the watch of a viewer who moderates the four-eyes session (anyone else
        is refused, audited, and the socket closed), Buildbot's authz on its worker again, then the operator API's
        kill (the policy checked again there; audited as the moderator's kill). For a session another master
        serves, that master said the view moderates it; the kill goes to it, which decides again under its policy
        and records it (master_side.cluster.kills), after this master's own `routed` event."""
        who, service = self.identity, web_host(self.master)
        if isinstance(view, RoutedHandle):
            moderates = view.routed.moderator and view.routed.moderated_by is not None
            worker, session_id, holder = view.routed.worker, view.routed.session_id, view.routed.authid
        else:
            moderation = view.session.moderation if isinstance(view, View) else None
            moderates = (moderation is not None and isinstance(view, View)
                         and view.viewer in moderation.moderators)
            worker, session_id, holder = _worker_of(view), getattr(getattr(view, "session", None), "id", ""), None
        if who is None or service is None or not moderates or self.killing:
            if self.killing:
                return  # the page's button sent it twice: one kill at a time
            self._audit(_worker_of(view), "web kill refused: only a moderator watching a four-eyes session ends "
                        "it from the page")
            self.refuse("only a moderator watching this four-eyes session may end it here")
            return
        self.killing = True

        @deferred
        async def kill() -> str:
            await access.check_authz_shell(self.master, worker, self.info)
            if holder is not None:
                return await service.api.kill_anywhere(who, session_id, holder)
            return service.api.kill(who, session_id)

        def failed(failure: Failure) -> None:
            self.killing = False
            if failure.check(access.Refused):
                self._audit(worker, f"web authz refused: {failure.value}")
                self.refuse(str(failure.value))
            elif failure.check(OperatorError):
                self._audit(worker, f"web kill refused: {cast(OperatorError, failure.value).message}")
                self.refuse(cast(OperatorError, failure.value).message)
            else:
                log.failure("slaveshell: a web moderator's kill for {who}", failure, who=visible(who))
                self.refuse("the master could not end the session (see its log)")

        kill().addCallbacks(self._killed, failed)

    def _killed(self, text: str) -> None:
        """The kill's line (for a session another master serves, its line, escaped): the session's end follows."""
        self.killing = False
        self.send_json({"type": "killed", "text": visible(text)})

    def _refused(self, view: Handle, error: ProtocolError) -> None:
        """A session message refused (by its values here, or by the session): its cost (View.refused), then the
        refusal, which closes the socket."""
        refusal = view.refused(error)
        if refusal is not None:
            self.refuse(refusal.message)

    def _start(self) -> tuple[WebHost, WebIdentity]:
        """The ShellService and who asks, once per socket: a socket carries one session."""
        if self.opening or self.identity is None or self.refusal is not None:
            raise ProtocolError("a socket carries one session: open or attach sent twice")
        self.opening = True
        service = web_host(self.master)
        if service is None:
            raise ProtocolError("this master has no ShellService")
        return service, self.identity

    @deferred
    async def _authorized(self, worker: str, then: Callable[[], Deferred[Handle | None] | Handle]) -> Handle | None:
        """Buildbot's authz on `worker` (access.Refused), then `then` (the operator API)."""
        await access.check_authz_shell(self.master, worker, self.info)
        view = then()
        return (await view) if isinstance(view, Deferred) else view

    def _open(self, message: Message) -> None:
        service, who = self._start()
        worker = message.get("worker")
        if not isinstance(worker, str) or not worker or len(worker) > 256:
            raise ProtocolError("open needs a worker name")
        wire: dict[str, object] = {"version": PROTOCOL_VERSION, "worker": worker, "term": "xterm-256color",
                                   "cols": message.get("cols"), "rows": message.get("rows")}
        if message.get("build") is not None:
            wire["build"] = message["build"]  # into a build held by HoldForShell: checked by from_wire
        if message.get("reason") is not None:
            wire["reason"] = message["reason"]  # the operator's reason: checked by from_wire
        request = OpenRequest.from_wire(wire)
        # On a multi-master site, a worker another master holds is opened there, under its policy for the web user
        # as this master vouches for them (master_side.cluster.relay); Buildbot's authz here is asked first.
        d = self._authorized(worker, lambda: service.api.open_anywhere(who, request, WebViewerSink(self)))
        d.addCallbacks(self._opened, self._not_opened, errbackArgs=(worker,))

    def _attach(self, message: Message) -> None:
        """Resume or join (mode "attach") or watch a live session: Buildbot's authz on its worker first, then
        the operator API (policy, viewer bounds, audit)."""
        service, who = self._start()
        session_id, mode = message.get("id"), message.get("mode")
        if not isinstance(session_id, str) or len(session_id) > 256 or mode not in ("attach", "watch"):
            raise ProtocolError("attach needs a session id and a mode (attach or watch)")
        session = service.registry.get(session_id)
        reattach = message.get("reattach") is True and mode == "attach"
        if session is None and service.api.cluster is not None:
            # Held by another master of the site: a watch, a join, or the page's reattach without a click (a
            # reload, a dropped socket: the owner's routed session detached there, as a local one does here).
            self._attach_elsewhere(service, who, session_id, mode, reattach)
            return
        if session is None:
            self.refuse(f"no live session {session_id}")
            return
        if reattach and session.identity.key != who.key:
            self.refuse(f"session {session_id} is not yours: join it with the button", confirm=True)
            return
        worker = session.worker
        d = self._authorized(worker, lambda: service.api.attach(who, WebViewerSink(self), session_id, mode))
        d.addCallbacks(self._opened, self._not_opened, errbackArgs=(worker,))

    def _attach_elsewhere(self, service: WebHost, who: WebIdentity, session_id: str, mode: str,
                          reattach: bool) -> None:
        """Watch, join or resume a session another master of the site holds (master_side.cluster.relay: its policy
        for the web user as this master vouches for them, its viewer bounds). The page learns of it only once
        Buildbot's authz here gives the shell action on the worker that master names; until then what comes is
        kept (HeldWebSink). A `reattach` (no click) resumes only the user's own session, as here."""
        sink = HeldWebSink(self)

        @deferred
        async def attach() -> Handle | None:
            # A reattach asks the other master to resume the user's own session only (it refuses anyone else's).
            handle, answer = await service.api.attach_anywhere(who, sink, session_id, "resume" if reattach else mode)
            if reattach and isinstance(handle, RoutedHandle) and handle.routed.role != "owner":
                sink.drop()
                _leave(handle)
                self.refuse(f"session {session_id} is not yours: join it with the button", confirm=True)
                return None
            worker = str(answer.get("worker"))
            try:
                await access.check_authz_shell(self.master, worker, self.info)
            except access.Refused as e:
                sink.drop()
                _leave(handle)
                self._audit(worker, f"web authz refused: {e}")
                self.refuse(str(e))
                return None
            if self.closed:
                _leave(handle)
                return None
            self._opened(handle)
            if not sink.release():
                _leave(handle)
                self.refuse("the session sent more than this page keeps while its access is checked; try again")
            return handle

        attach().addErrback(self._not_opened, session_id)

    def _run(self, message: Message) -> None:
        """A fleet run (master_side.www.fleet_page), this socket's one purpose: its progress and end are sent
        here, the Stop button interrupts it, the socket's close ends what runs."""
        service, who = self._start()
        run = self.fleet_run = fleet_page.WebRun(self.send_json)
        self.lost_callbacks.append(run.lost)
        d = run.start(self.master, service, who, self.info, message)

        def failed(failure: Failure) -> None:
            if failure.check(access.Refused):
                # Refused here (no worker Buildbot's authz and the policy give): audited here; the API audits
                # its own refusals.
                self._audit(None, f"web fleet run refused: {failure.value}")
                self.refuse(str(failure.value))
            elif failure.check(OperatorError):
                self.refuse(cast(OperatorError, failure.value).message)
            elif failure.check(ProtocolError):
                self.refuse(f"bad message from the page: {failure.value}")
            else:
                log.failure("slaveshell: a fleet run for {who}", failure, who=visible(who))
                self.refuse("the master could not start the run (see its log)")

        d.addErrback(failed)

    def _copy(self, message: Message) -> None:
        """A transfer between the page and a worker (master_side.www.copy_ws): a place among the page's transfers,
        Buildbot's authz on the worker, then the operator API's copy (policy, quotas, record, the worker's say), or on
        a multi-master site, for a worker another master holds, that master's (`copy_anywhere`)."""
        service, who = self._start()
        try:
            request = web_request(message)
        except TooLarge as e:
            self._audit(str(message.get("worker")), f"web copy refused: {e}")
            self.refuse(str(e))
            return
        copies = self.factory.copies
        full = copies.refusal(who.user)
        if full is not None:
            why = (f"you already have {MAX_COPIES_PER_USER} copies in progress from web pages (the master's limit)"
                   if full == "per_key" else
                   f"the master already serves {MAX_COPIES} copies from web pages (its limit); try again later")
            self._audit(request.worker, f"web copy refused: {why}")
            self.refuse(why)
            return
        copies.take(who.user)
        self.copy_place = (copies, who.user)
        copy = self.copy = WebCopy(self, request)

        @deferred
        async def authorized() -> None:
            await access.check_authz_shell(self.master, request.worker, self.info)
            await copy.start(lambda party: service.api.copy_anywhere(who, request, party, party.waiting))

        authorized().addErrback(self._copy_refused, request.worker)

    def _copy_refused(self, failure: Failure, worker: str) -> None:
        if failure.check(access.Refused):
            self._audit(worker, f"web authz refused: {failure.value}")
            self.refuse(str(failure.value))
        elif failure.check(OperatorError):
            self.refuse(refusal_text(cast(OperatorError, failure.value).message))
        else:
            log.failure("slaveshell: a web copy for {who}", failure, who=visible(self.identity))
            self.refuse("the master could not start the copy (see its log)")

    def finish(self) -> None:
        """Close the socket once what was queued is sent (a transfer ended: its result goes first)."""
        self.master.reactor.callLater(0, self._close)

    def _close(self) -> None:
        if self.sending:
            self.sendClose(code=1000)

    def _query(self, kind: str, message: Message) -> None:
        """The fleet page's lists and the replay page's reads (master_side.www.lists), answered on this socket;
        a refusal of the operator API is an error message, the socket stays open."""
        service = web_host(self.master)
        if self.identity is None or self.refusal is not None or service is None or self.opening:
            raise ProtocolError(f"no {kind} for this socket")
        if self.queries >= MAX_QUERIES:
            self._audit(None, f"web question refused: more than {MAX_QUERIES} questions in progress on one socket")
            raise ProtocolError(f"more than {MAX_QUERIES} questions in progress on one socket")
        self.queries += 1
        d = lists.answer(kind, message, service, self.master, self.identity, self.info)

        @d.addBoth
        def done(result: object) -> object:
            self.queries -= 1
            return result

        def failed(failure: Failure) -> None:
            if failure.check(OperatorError):
                message = cast(OperatorError, failure.value).message
                self.send_json({"type": "error", "message": message, "fatal": False})
            elif failure.check(ProtocolError):
                self.refuse(f"bad message from the page: {failure.value}")
            else:
                log.failure("slaveshell: {kind} for the web", failure, kind=kind)
                self.refuse("the master could not answer (see its log)")

        d.addCallbacks(self._answer, failed)

    def _answer(self, answer: Answer) -> None:
        message, data = answer
        if data is not None and self.sending:
            self.sendMessage(data, isBinary=True)
        self.send_json(message)  # then the buffered bound is checked, the answer's bytes counted

    def _opened(self, view: Handle | None) -> None:
        if view is None:
            return  # the page left while the worker started the session: it runs detached
        service = web_host(self.master)
        if service is None:
            return  # the service went with a reconfiguration: its sessions ended with it
        self.view = view
        if isinstance(view, RoutedHandle):
            # Served by another master of the site: its name, and whether the session is a four-eyes one there and
            # this view moderates it, as that master says them (its word about its own policy: shown as text,
            # escaped, never used for a decision here).
            routed = view.routed
            by = routed.moderated_by
            self.send_json({"type": "opened", "id": routed.session_id, "worker": routed.worker, "role": routed.role,
                            "moderated_by": None if by is None else [visible(g) for g in by],
                            "moderator": routed.moderator, "master": visible(routed.master)})
            return
        assert isinstance(view, View)
        by = view.moderated_by
        self.send_json({"type": "opened", "id": view.session.id, "worker": view.session.worker,
                        "role": view.viewer.role.value, "moderated_by": None if by is None else list(by),
                        "moderator": view.moderator})

    def _not_opened(self, failure: Failure, worker: str) -> None:
        if failure.check(access.Refused):
            # Refused by Buildbot's authz: audited here; the API audits its own refusals.
            self._audit(worker, f"web authz refused: {failure.value}")
            self.refuse(str(failure.value))
        elif failure.check(OperatorError):
            self.refuse(cast(OperatorError, failure.value).message)
        else:
            log.failure("slaveshell: opening a web shell for {who}", failure, who=visible(self.identity))
            self.refuse("the master could not open the session (see its log)")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.release_grant is not None:
            self.release_grant()
        for place in (self.place, self.copy_place):
            if place is not None:
                quota, key = place
                quota.give_back(key)
        self.place = self.copy_place = None
        service = web_host(self.master)
        if service is not None:
            service.gate.release(self)
        # As a lost connection on the UNIX socket: the owner's session detaches (and waits detach_grace for a
        # reattach, e.g. the page reloaded or the network came back); a viewer leaves.
        callbacks, self.lost_callbacks = self.lost_callbacks, []
        for callback in callbacks:
            callback()


def _leave(handle: Handle) -> None:
    """This page's view leaves the session (a watcher's or joiner's close), unless it has ended already."""
    try:
        handle.close()
    except ProtocolError:
        pass  # ended already (LateEvent)


def _worker_of(view: Handle) -> str:
    if isinstance(view, View):
        return view.session.worker
    return view.routed.worker if isinstance(view, RoutedHandle) else "?"


class TerminalFactory(WebSocketServerFactory):
    protocol = TerminalProtocol  # type: ignore[assignment]

    def __init__(self, master: BuildMaster) -> None:
        super().__init__()
        self.master = master
        # Places of sockets (master_side.www.quota.Quota): of users with a right, of logged-in users without one,
        # and of sockets refused before a user is known (by remote host).
        self.sockets = Quota(MAX_SOCKETS_PER_USER, MAX_SOCKETS)
        self.no_right = Quota(MAX_SOCKETS_NO_RIGHT_PER_USER, MAX_SOCKETS_NO_RIGHT)
        self.refused = Quota(MAX_SOCKETS_REFUSED_PER_HOST, MAX_SOCKETS_REFUSED)
        # Transfers from pages (master_side.www.copy_ws), per web user and in all.
        self.copies = Quota(MAX_COPIES_PER_USER, MAX_COPIES)
        # On a multi-master site, the other masters' workers' names when last asked (has_right).
        self._site_names: tuple[float, set[str]] | None = None
        self._site_waiters: list[Deferred[set[str]]] = []
        self.setProtocolOptions(webStatus=False, maxMessagePayloadSize=MAX_CHUNK, maxFramePayloadSize=MAX_CHUNK,
                                autoPingInterval=30, autoPingTimeout=60)

    @deferred
    async def has_right(self, who: WebIdentity, info: UserInfo) -> bool:
        """Whether `who` has some right on some worker of this master (on a multi-master site, of the site: a
        worker another master holds is opened there): slaveshell's policy here grants it one, and Buildbot's authz
        the shell action on that same worker."""
        service = web_host(self.master)
        if service is None:
            return False
        policy = service.policy
        names = [facts.name for facts in service.glue.workers()]
        for name in names:
            if not any(policy.may(who, action, name).allowed for action in Action):
                continue
            try:
                await access.check_authz_shell(self.master, name, info)
            except access.Refused:
                continue
            return True
        cluster = service.api.cluster
        if cluster is None:
            return False
        # The other masters' workers (asked of the router at most once per SITE_NAMES_FOR seconds, whoever
        # connects), filtered by this master's policy and Buildbot's authz.
        elsewhere = {n for n in await self.site_names(cluster.link) - set(names) if worker_name(n)
                     and any(policy.may(who, action, n).allowed for action in Action)}
        return bool(await access.shell_allowed(self.master, info, sorted(elsewhere)[:MAX_SITE_WORKERS]))

    @deferred
    async def site_names(self, link: ClusterLink) -> set[str]:
        """The names of the workers the other masters on the router list, as they were at most SITE_NAMES_FOR
        seconds ago; one question of the router at a time for all the sockets that ask."""
        now = self.master.reactor.seconds()
        if self._site_names is not None and now - self._site_names[0] < SITE_NAMES_FOR:
            return self._site_names[1]
        waiter: Deferred[set[str]] = Deferred()
        self._site_waiters.append(waiter)
        if len(self._site_waiters) == 1:
            try:
                listings = await link.site()
            except ClusterUnavailable:
                listings = []  # the link's own log says when it leaves and joins the router again
            except Exception:
                log.failure("slaveshell: the other masters' workers for the web's admission")
                listings = []
            found = {str(w["name"]) for listing in listings for w in listing.workers}
            self._site_names = (self.master.reactor.seconds(), found)
            waiters, self._site_waiters = self._site_waiters, []
            for each in waiters:
                each.callback(found)
        return await waiter


def terminal_resource(master: BuildMaster) -> WebSocketResource:
    return WebSocketResource(TerminalFactory(master))
