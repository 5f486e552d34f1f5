"""The master's PB calls to a worker: opening a session on it (`open_on_worker`), and the worker's session
reference as a peer (`WorkerPeer`: answer-less calls, heartbeats, disconnection). Every reply is checked
here; nothing from a worker's failure crosses to the operator but a plain message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb

from slaveshell.clock import Clock
from slaveshell.deferreds import deferred
from slaveshell.lean_calls import LeanPeer, accept
from slaveshell.protocol import WORKER_OPEN_METHOD, OpenRequest, ProtocolError
from slaveshell.remote import Undo, is_lost, note_peer_exported, on_disconnect, set_nodelay

from .relay import MasterSession
from .session_pb import WorkerSink

if TYPE_CHECKING:
    from buildbot.worker.protocols.pb import Connection as WorkerConnection

T = TypeVar("T")
__all__ = ["Undo", "on_disconnect", "subscribe", "WorkerPeer", "OpenReply", "open_on_worker"]


def subscribe(callbacks: list[Callable[[], None]], callback: Callable[[], None]) -> Undo:
    """Add `callback` to a door's own list of disconnect callbacks (the framed door's, a web terminal's); the
    returned function removes it (harmless once it is gone)."""
    callbacks.append(callback)

    def undo() -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    return undo


class WorkerPeer:
    """A worker's session, seen from the master: `send(method, *args)` without answers, `ping()`, and
    `on_disconnect(callback)`. A refused call is logged by `refused(message)`; a lost connection calls `lost()`.
    With `lean` (the worker's open reply said so), stream events go as slaveshell.lean_calls, and the worker is
    told to send its own that way."""

    def __init__(self, ref: pb.RemoteReference, lost: Callable[[], None], refused: Callable[[str], None],
                 lean: bool = False) -> None:
        self.ref = ref
        peer = LeanPeer(ref, on_lost=lost, on_refused=lambda _method, message: refused(message))
        self.send = peer.send
        # The session has ended (after its last call to the worker): the worker drops its end of it at once.
        self.release = peer.release
        if lean:
            peer.lean = True
            self.send("lean")

    def ping(self) -> defer.Deferred[bool]:
        """Fires True on any answer (even an error from a worker without remote_ping shows it is alive),
        False when the connection is gone."""

        def answered(result: object) -> bool:
            return not (isinstance(result, Failure) and is_lost(result))

        return defer.maybeDeferred(self.ref.callRemote, "ping").addBoth(answered)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return on_disconnect(self.ref, callback)


@dataclass(frozen=True)
class OpenReply:
    """The worker's answer to an open: its session reference, or a message for the operator."""

    ref: pb.RemoteReference | None
    error: str = ""
    lean: bool = False  # the worker takes slaveshell.lean_calls on this connection


@deferred
async def open_on_worker(conn: WorkerConnection, session: MasterSession, request: OpenRequest, timeout: float,
                         on_peer_error: Callable[[MasterSession, ProtocolError], None]) -> OpenReply:
    """Ask the worker behind `conn` (buildbot.worker.protocols.pb.Connection) to start `request`'s session,
    its output going to `session`. Fires an OpenReply; never fails."""
    worker_sink = WorkerSink(session, on_peer_error)
    set_nodelay(conn.mind)
    accept(getattr(conn.mind, "broker", None))  # before the open: the worker may send lean output once told
    to_worker = replace(request, pause=False, builder=None, build=None, reason=None)
    reply: object
    try:
        reply = await _answer_within(
            defer.maybeDeferred(conn.mind.callRemote, WORKER_OPEN_METHOD, worker_sink, to_worker.to_wire()),
            timeout, _close_late_session)
    except defer.TimeoutError:
        reply = {"ok": False, "error": f"did not answer within {timeout:g} s"}
    except Exception as e:
        # Never forward a remote failure across the second hop: translate it to a plain message.
        reply = {"ok": False, "error": _describe_failure(e)}
    worker_ref = reply.get("session") if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool) or (
            reply["ok"] and not isinstance(worker_ref, pb.RemoteReference)):
        reply = {"ok": False, "error": "sent a malformed reply"}
    note_peer_exported(getattr(conn.mind, "broker", None), reply.get("exported"))
    if not reply["ok"] or not isinstance(worker_ref, pb.RemoteReference):
        error = reply.get("error")
        return OpenReply(None, f"worker {request.worker}: {error if isinstance(error, str) else 'refused'}"[:4096])
    return OpenReply(worker_ref, lean=reply.get("lean") is True)


def _answer_within(d: defer.Deferred[T], seconds: float, on_late: Callable[[T], None]) -> defer.Deferred[T]:
    """`d`'s result, or TimeoutError after `seconds`. A PB call's Deferred must not be cancelled (its late
    answer would then hit an already-fired Deferred inside the broker), so the race happens on a second
    Deferred and a late answer goes to `on_late`."""
    from twisted.internet import reactor as _reactor

    reactor: Clock = _reactor
    out: defer.Deferred[T] = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: out.errback(defer.TimeoutError(f"no answer in {seconds} s")))

    def settle(result: T | Failure) -> None:
        if out.called:
            if not isinstance(result, Failure):
                on_late(result)
            return None
        timer.cancel()
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
        return None

    d.addBoth(settle)
    return out


def _close_late_session(reply: object) -> None:
    """A session the worker started for nobody: end it there."""
    if isinstance(reply, dict) and isinstance(reply.get("session"), pb.RemoteReference):
        defer.maybeDeferred(reply["session"].callRemote, "close").addErrback(lambda f: None)


def _describe_failure(error: Exception) -> str:
    if isinstance(error, pb.RemoteError) and "NoSuchMethod" in str(getattr(error, "remoteType", "")):
        return "has not enabled slaveshell"
    if isinstance(error, (pb.DeadReferenceError, pb.PBConnectionLost)):
        return "the connection was lost while opening the session"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]
