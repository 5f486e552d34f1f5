"""The web door to the operator API: a WebSocket at ``<site>/plugins/slaveshell/ws``, one session per socket.

Autobahn over Twisted, as Buildbot's own ``buildbot/www/ws.py``. The handshake is refused (403) when the
Origin is not the site's own; everything else is checked once the socket is open (master_side.www.access), so
the page can say why. The identity is a `WebIdentity` from the session cookie, which must come with a valid shell
grant (master_side.www.grants: revoked at logout, credential or role changes, idle expiry; a revoked grant
closes its sockets); the session is opened, fed and
ended through the same `OperatorAPI` and `ViewerHandle` as the UNIX socket's (master_side.operator_wire), so
policy, quotas, recording, audit and the credit windows are theirs.

Messages (RFC 6455 frames):

- page -> master, text (JSON): first and once, ``{"type": "open", "worker": str, "cols": int, "rows": int,
  "build": int?}`` (a new session; with ``build``, in a build held by HoldForShell, as ``buildbot-shell
  --build``) or ``{"type": "attach", "id": str, "mode": "attach" | "watch", "reattach": bool?}`` (resume one's
  own detached session or join another's, per `OperatorAPI.attach`; watch is read-only; with ``reattach``, sent
  when the page attaches without a click (a reload), another's session is refused with ``"confirm": true``);
  or, on a socket of its own, ``{"type": "workers"}`` / ``{"type": "sessions"}`` (the lists for the fleet page).
  Then
  ``{"type": "resize", "cols": int, "rows": int}``, ``{"type": "ack", "bytes": int}`` (output rendered),
  ``{"type": "close"}`` (end the session, as ``~.``); binary: input bytes (at most MAX_CHUNK each, within the
  input credit window). Closing the socket detaches: the session waits ``detach_grace`` for a reattach.
- master -> page, binary: output bytes (UTF-8 as the PTY gives it); text (JSON): ``{"type": "opened", "id",
  "worker", "role"}``, ``{"type": "input_ack", "bytes"}``, ``{"type": "waiting", "text"}``, ``{"type": "exit",
  "code", "signal", "reason"}``, ``{"type": "workers", "workers": [...]}``, ``{"type": "sessions", "sessions":
  [...]}``, ``{"type": "error", "message", "login": true?, "confirm": true?}`` (then the master closes the
  socket; ``login``: log in again for a new shell grant; ``confirm``: ask the user before attaching).
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
from twisted.spread import pb

from slaveshell.deferreds import deferred
from slaveshell.display import visible
from slaveshell.flow import chunks
from slaveshell.policy import WebIdentity
from slaveshell.protocol import MAX_CHUNK, PROTOCOL_VERSION, OpenRequest, ProtocolError

from ..limits import buffered_bytes
from ..operator_api import OperatorError, View
from ..service import shell_service
from ..session_pb import ViewerHandle
from ..worker_pb import subscribe
from . import access, grants, lists
from .access import UserInfo
from .lists import Answer, Message

if TYPE_CHECKING:
    from autobahn.websocket.types import ConnectionRequest
    from buildbot.master import BuildMaster

    from ..service import ShellService

log = Logger()

# Bounds: sockets in total and per web user; a control message's size; what may wait unsent to one page.
MAX_SOCKETS = 64
MAX_SOCKETS_PER_USER = 8
MAX_CONTROL = 1024
MAX_BUFFERED = 4 * 1024 * 1024
# Questions (lists, history, transcript chunks) in progress on one socket.
MAX_QUERIES = 4


class WebViewerSink:
    """A `ViewerSink` (master_side.operator_api) over one page's WebSocket."""

    def __init__(self, protocol: TerminalProtocol) -> None:
        self.protocol = protocol
        self.connection: object = protocol

    @property
    def gone(self) -> bool:
        return self.protocol.closed

    def send(self, method: str, *args: object) -> None:
        if self.gone:
            return
        if method == "output":
            data = args[1]
            assert isinstance(data, bytes)
            # A bulk stream's message (up to 512 KiB, slaveshell.flow) reaches the page in MAX_CHUNK pieces.
            for piece in chunks(data, MAX_CHUNK) if len(data) > MAX_CHUNK else [data]:
                self.protocol.sendMessage(piece, isBinary=True)
        elif method == "input_ack":
            self.protocol.send_json({"type": "input_ack", "bytes": args[0]})
        elif method == "exit":
            code, signal, reason = args
            self.protocol.send_json({"type": "exit", "code": code, "signal": signal, "reason": reason})
        # A page that does not read is dropped (its session detaches, as for a lost connection).
        if buffered_bytes(self.protocol.transport) > MAX_BUFFERED:
            self.protocol.dropConnection(abort=True)

    def waiting(self, text: str) -> None:
        self.protocol.send_json({"type": "waiting", "text": text})

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        return subscribe(self.protocol.lost_callbacks, callback)

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        pass  # its only failure is a lost connection: on_disconnect


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
        self.handle: ViewerHandle | None = None
        self.opening = False
        self.counted = False
        self.queries = 0

    @property
    def master(self) -> BuildMaster:
        return self.factory.master

    def _secure(self) -> bool:
        from twisted.internet.interfaces import ISSLTransport

        return ISSLTransport.providedBy(self.transport)

    def onConnect(self, request: ConnectionRequest) -> None:
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
            self.refusal = self.factory.admit(self.identity)
            self.counted = self.refusal is None

    def onOpen(self) -> None:
        if self.refusal is not None:
            self._audit(None, f"web login refused: {self.refusal}")
            self.refuse(self.refusal, login=self.relogin)
        elif self.grant is not None and (registry := grants.registry(self.master)) is not None:
            self.release_grant = registry.use(self.grant, self._grant_revoked)

    def _grant_revoked(self, reason: str) -> None:
        self._audit(None, f"web shell grant revoked: {reason}")
        self.refuse(f"{reason}: {grants.LOG_IN_AGAIN}", login=True)

    def send_json(self, message: Message) -> None:
        if not self.closed:
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def refuse(self, message: str, **extra: object) -> None:
        self.send_json({"type": "error", "message": message, **{k: v for k, v in extra.items() if v}})
        self.sendClose(code=1000)

    def _audit(self, worker: str | None, reason: str) -> None:
        """A refusal in the audit index under the web user's name (``web:anonymous`` without a login), at most
        one per user and kind of refusal per interval (master_side.limits.RefusalAudit)."""
        service = shell_service(self.master)
        who = self.identity
        if who is None:
            name = self.info.get("username") if not self.info.get("anonymous") else None
            who = WebIdentity.from_web(name if isinstance(name, str) and name else "anonymous", ())
        if service is not None:
            service.gate.audit(who, "refused", reason, worker)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            if isBinary:
                if self.handle is None:
                    raise ProtocolError("input before the session is open")
                self.handle.remote_input(payload)
                return
            if len(payload) > MAX_CONTROL:
                raise ProtocolError("control message too long")
            message = json.loads(payload.decode("utf-8"))
            if not isinstance(message, dict):
                raise ProtocolError("a control message must be a JSON object")
            kind = message.get("type")
            if kind == "open":
                self._open(message)
            elif kind == "attach":
                self._attach(message)
            elif kind in lists.QUERIES:
                self._query(kind, message)
            elif self.handle is None:
                raise ProtocolError(f"{kind!r} before the session is open")
            elif kind == "resize":
                self.handle.remote_resize(message.get("cols"), message.get("rows"))
            elif kind == "ack":
                self.handle.remote_ack(message.get("bytes"))
            elif kind == "close":
                self.handle.remote_close()
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except (ProtocolError, ValueError) as e:
            self.refuse(f"bad message from the page: {e}")
        except pb.Error as e:
            # The ViewerHandle's answer to a bad call: the relay has already dealt with the session.
            self.refuse(str(e))
        except Exception:
            log.failure("slaveshell: a web terminal message from {who}", who=visible(self.identity))
            self.refuse("the master could not handle that message (see its log)")

    def _start(self) -> tuple[ShellService, WebIdentity]:
        """The ShellService and who asks, once per socket: a socket carries one session."""
        if self.opening or self.identity is None or self.refusal is not None:
            raise ProtocolError("a socket carries one session: open or attach sent twice")
        self.opening = True
        service = shell_service(self.master)
        if service is None:
            raise ProtocolError("this master has no ShellService")
        return service, self.identity

    @deferred
    async def _authorized(self, worker: str, then: Callable[[], Deferred[View | None] | View]) -> View | None:
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
        request = OpenRequest.from_wire(wire)
        d = self._authorized(worker, lambda: service.api.open(who, request, WebViewerSink(self)))
        d.addCallbacks(self._opened, self._not_opened, errbackArgs=(worker,))

    def _attach(self, message: Message) -> None:
        """Resume or join (mode "attach") or watch a live session: Buildbot's authz on its worker first, then
        the operator API (policy, viewer bounds, audit)."""
        service, who = self._start()
        session_id, mode = message.get("id"), message.get("mode")
        if not isinstance(session_id, str) or len(session_id) > 256 or mode not in ("attach", "watch"):
            raise ProtocolError("attach needs a session id and a mode (attach or watch)")
        session = service.registry.get(session_id)
        if session is None:
            self.refuse(f"no live session {session_id}")
            return
        if message.get("reattach") is True and mode == "attach" and session.identity.key != who.key:
            self.refuse(f"session {session_id} is not yours: join it with the button", confirm=True)
            return
        worker = session.worker
        d = self._authorized(worker, lambda: service.api.attach(who, WebViewerSink(self), session_id, mode))
        d.addCallbacks(self._opened, self._not_opened, errbackArgs=(worker,))

    def _query(self, kind: str, message: Message) -> None:
        """The fleet page's lists and the replay page's reads (master_side.www.lists), answered on this socket;
        a refusal of the operator API is an error message, the socket stays open."""
        service = shell_service(self.master)
        if self.identity is None or self.refusal is not None or service is None or self.opening:
            raise ProtocolError(f"no {kind} for this socket")
        if self.queries >= MAX_QUERIES:
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
        if data is not None and not self.closed:
            self.sendMessage(data, isBinary=True)
        self.send_json(message)

    def _opened(self, view: View | None) -> None:
        if view is None:
            return  # the page left while the worker started the session: it runs detached
        service = shell_service(self.master)
        if service is None:
            return  # the service went with a reconfiguration: its sessions ended with it
        self.handle = ViewerHandle(view.session, view.viewer, service.registry.peer_error)
        self.send_json({"type": "opened", "id": view.session.id, "worker": view.session.worker,
                        "role": view.viewer.role.value})

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
        if self.counted and self.identity is not None:
            self.factory.release(self.identity)
        # As a lost connection on the UNIX socket: the owner's session detaches (and waits detach_grace for a
        # reattach, e.g. the page reloaded or the network came back); a viewer leaves.
        callbacks, self.lost_callbacks = self.lost_callbacks, []
        for callback in callbacks:
            callback()


class TerminalFactory(WebSocketServerFactory):
    protocol = TerminalProtocol  # type: ignore[assignment]

    def __init__(self, master: BuildMaster) -> None:
        super().__init__()
        self.master = master
        self.sockets: dict[str, int] = {}
        self.setProtocolOptions(webStatus=False, maxMessagePayloadSize=MAX_CHUNK, maxFramePayloadSize=MAX_CHUNK,
                                autoPingInterval=30, autoPingTimeout=60)

    def admit(self, who: WebIdentity) -> str | None:
        if sum(self.sockets.values()) >= MAX_SOCKETS:
            return f"the master already serves {MAX_SOCKETS} web terminals (its limit); try again later"
        if self.sockets.get(who.user, 0) >= MAX_SOCKETS_PER_USER:
            return f"you already have {MAX_SOCKETS_PER_USER} web terminals open (the master's limit)"
        self.sockets[who.user] = self.sockets.get(who.user, 0) + 1
        return None

    def release(self, who: WebIdentity) -> None:
        left = self.sockets.get(who.user, 1) - 1
        if left > 0:
            self.sockets[who.user] = left
        else:
            self.sockets.pop(who.user, None)


def terminal_resource(master: BuildMaster) -> WebSocketResource:
    return WebSocketResource(TerminalFactory(master))
