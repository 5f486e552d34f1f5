"""The PB door to the operator API: `OperatorRoot` is what one connection on the master's UNIX socket sees.

It establishes who is calling (the kernel's peer credentials, SO_PEERCRED, unix(7)), checks the wire values'
types, applies the per-connection bounds (calls in progress, buffered output: master_side.limits), adapts
the operator's sink (a pb.RemoteReference with output, input_ack, exit and waiting) to a `ViewerSink`, and maps
`OperatorError` to the answers the client expects: ``{"ok": False, "error": ...}`` for open and attach, a
pb.Error for the other calls. No tool of this version uses it: they all come in by the framed door on the same
socket (master_side.operator_wire).
"""

from __future__ import annotations

import socket as _socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from slaveshell.policy import Identity
from slaveshell.protocol import OpenRequest
from slaveshell.remote import RemotePeer, opening

from .operator_api import OperatorError, View
from .session_pb import ViewerHandle
from .worker_pb import Undo, on_disconnect

if TYPE_CHECKING:
    from .service import ShellService


class _Handled(Protocol):
    """A connected transport's socket (ITCPTransport.getHandle, which UNIX transports have too)."""

    def getHandle(self) -> _socket.socket: ...


def peer_identity(transport: object) -> Identity:
    """Who is at the other end of a UNIX socket, as the kernel says (SO_PEERCRED): never what they claim."""
    sock = cast(_Handled, transport).getHandle()
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Identity.from_credentials(pid, uid, gid)


class PBViewerSink:
    """A `ViewerSink` over the operator's remote sink on `broker`."""

    def __init__(self, ref: pb.RemoteReference, broker: pb.Broker, check: Callable[[pb.Broker], object]) -> None:
        self.ref = ref
        self.connection: object = broker
        self._broker = broker
        self._check = check
        self._failed: Callable[[str | None], None] | None = None
        self._peer = RemotePeer(ref, on_lost=lambda: self._failure(None),
                                on_refused=lambda _method, message: self._failure(message))

    @property
    def gone(self) -> bool:
        return bool(self._broker.disconnected)

    def _failure(self, refusal: str | None) -> None:
        if self._failed is not None:
            self._failed(refusal)

    def send(self, method: str, *args: object) -> None:
        self._peer.send(method, *args)
        # A peer that does not read is dropped once its buffered output passes the bound.
        self._check(self._broker)

    def waiting(self, text: str) -> None:
        defer.maybeDeferred(self.ref.callRemote, "waiting", text).addErrback(lambda _: None)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return on_disconnect(self.ref, callback)

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        self._failed = callback


def _as_pb_error(failure: Failure) -> None:
    failure.trap(OperatorError)
    raise pb.Error(str(failure.value))


def _as_answer(failure: Failure) -> dict[str, object]:
    failure.trap(OperatorError)
    return {"ok": False, "error": str(failure.value)}


class OperatorRoot(pb.Referenceable):
    """The root object one operator connection sees."""

    def __init__(self, service: ShellService, broker: pb.Broker) -> None:
        self.service = service
        self.broker = broker
        self._identity: Identity | None = None

    def identity(self) -> Identity:
        # The broker has no transport while the root object is made; by the first call it has.
        if self._identity is None:
            self._identity = peer_identity(self.broker.transport)
        return self._identity

    def _limited(self, fn: Callable[..., object], *args: object) -> object:
        return self.service.gate.limited(self.broker, fn, *args)

    def _sink(self, ref: pb.RemoteReference) -> PBViewerSink:
        return PBViewerSink(ref, self.broker, self.service.gate.check)

    def _handle(self, view: View) -> ViewerHandle:
        return ViewerHandle(view.session, view.viewer, self.service.registry.peer_error)

    def remote_workers(self) -> object:
        return self.service.api.workers(self.identity())

    def remote_open(self, sink: object, params: object) -> object:
        return self._limited(self._open, self.identity(), sink, params)

    def _open(self, who: Identity, sink: object, params: object) -> object:
        opened = opening(OpenRequest.from_wire, params, sink)
        if isinstance(opened, str):
            return {"ok": False, "error": opened}
        request, ref = opened

        def answer(view: View | None) -> dict[str, object] | None:
            if view is None:
                return None
            return {"ok": True, "session": self._handle(view), "id": view.session.id}

        d = defer.maybeDeferred(self.service.api.open, who, request, self._sink(ref))
        return d.addCallbacks(answer, _as_answer)

    def remote_attach(self, sink: object, session_id: object, mode: object) -> object:
        return self._limited(self._attach, self.identity(), sink, session_id, mode)

    def _attach(self, who: Identity, sink: object, session_id: object, mode: object) -> dict[str, object]:
        if not isinstance(sink, pb.RemoteReference):
            return {"ok": False, "error": "bad request: attach needs a sink, a session id and a mode"}
        try:
            view = self.service.api.attach(who, self._sink(sink), session_id, mode)
        except OperatorError as e:
            return {"ok": False, "error": e.message}
        return {"ok": True, "session": self._handle(view), "id": view.session.id, "role": view.viewer.role.value,
                "worker": view.session.worker, "size": list(view.session.size)}

    def remote_sessions(self) -> object:
        return self.service.api.sessions(self.identity())

    def remote_kill(self, session_id: object) -> str:
        try:
            return self.service.api.kill(self.identity(), session_id)
        except OperatorError as e:
            raise pb.Error(e.message) from None

    def remote_release(self, build_id: object) -> str:
        try:
            return self.service.api.release(self.identity(), build_id)
        except OperatorError as e:
            raise pb.Error(e.message) from None

    def _asked(self, fn: Callable[..., object], *args: object) -> object:
        return defer.maybeDeferred(fn, *args).addErrback(_as_pb_error)

    def remote_history(self, filters: object) -> object:
        return self._limited(self._asked, self.service.api.history, self.identity(), filters)

    def remote_transcript(self, session_id: object, offset: object) -> object:
        return self._limited(self._asked, self.service.api.transcript, self.identity(), session_id, offset)

    def remote_search(self, text: object, filters: object = None) -> object:
        return self._limited(self._asked, self.service.api.search, self.identity(), text, filters)


@implementer(pb.IPBRoot)
class RootFactory:
    def __init__(self, service: ShellService) -> None:
        self.service = service

    def rootObject(self, broker: pb.Broker) -> OperatorRoot:
        return OperatorRoot(self.service, broker)
