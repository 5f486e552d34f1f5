"""The master's PB calls to a worker: opening something on it (`ask_worker`: a session, `open_on_worker`, or a
transfer, master_side.copying.relay), and the worker's session as the relay holds it (`WorkerPeer`: a
`SessionControl` sent as PB or lean calls, heartbeats, disconnection). Every reply is checked here; nothing from a
worker's failure crosses to the operator but a plain message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb

from master_side.sessions.session import MasterSession
from master_side.sessions.worker_sink import WorkerSink
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.plumbing.lean_calls import LeanPeer, accept
from slaveshell.plumbing.remote import Undo, deflate_known, is_lost, note_peer_exported, on_disconnect, set_nodelay
from slaveshell.vocabulary.deflate import ALWAYS, Deflater
from slaveshell.vocabulary.flow import announced_input
from slaveshell.vocabulary.protocol import MAX_CHUNK, SIGNAL_NAMES, WORKER_OPEN_METHOD, OpenRequest, ProtocolError

if TYPE_CHECKING:
    from buildbot.worker.protocols.pb import Connection as WorkerConnection

T = TypeVar("T")
__all__ = ["Undo", "on_disconnect", "subscribe", "WorkerPeer", "Opening", "OpenReply", "ask_worker",
           "open_on_worker"]


def subscribe(callbacks: list[Callable[[], None]], callback: Callable[[], None]) -> Undo:
    """Add `callback` to a door's own list of disconnect callbacks (the framed door's, a web terminal's); the
    returned function removes it (harmless once it is gone)."""
    callbacks.append(callback)

    def undo() -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    return undo


class WorkerPeer:
    """A worker's session, seen from the master: a `SessionControl` (answer-less calls on the worker's session
    reference, in the worker's wire vocabulary: slave_side.server.SessionHandle), `ping()`, and
    `on_disconnect(callback)`. A refused call is logged by `refused(message)`; a lost connection calls `lost()`.
    With `lean` (the worker's open reply said so), stream events go as slaveshell.plumbing.lean_calls, and the worker is
    told to send its own that way; with `deflate`, it is told it may send its output deflated."""

    def __init__(self, ref: pb.RemoteReference, lost: Callable[[], None], refused: Callable[[str], None],
                 lean: bool = False, deflate: bool = False) -> None:
        self.ref = ref
        peer = LeanPeer(ref, on_lost=lost, on_refused=lambda _method, message: refused(message))
        self._send = peer.send
        # The session has ended (after its last call to the worker): the worker drops its end of it at once.
        self.release = peer.release
        # Set when the worker takes input deflated (its open answer's `deflate`): which messages go so.
        self.deflater: Deflater | None = None
        if lean:
            peer.lean = True
            self._send("lean")
        if deflate:  # the worker said it can: it may send its output deflated (slaveshell.vocabulary.deflate)
            deflate_known(getattr(ref, "broker", None), known=True)
            self._send("deflate")

    def input(self, data: bytes) -> None:
        packed = self.deflater.pack(data) if self.deflater is not None else None
        if packed is None:
            self._send("input", data)
        else:
            self._send("input_z", packed)

    def eof(self) -> None:
        self._send("eof")

    def stdout_closed(self) -> None:
        """Only to a worker whose open reply said it takes it (OpenReply.stdout_closes)."""
        self._send("stdout_closed")

    def resize(self, cols: int, rows: int) -> None:
        self._send("resize", cols, rows)

    def signal(self, signum: int) -> None:
        self._send("signal", SIGNAL_NAMES[signum])

    def ack(self, nbytes: int) -> None:
        self._send("ack", nbytes)

    def close(self) -> None:
        self._send("close")

    def grant(self, nbytes: int) -> None:
        """Let the session's output window grow to `nbytes` (a worker whose open reply said it tunes it)."""
        self._send("window", nbytes)

    def ping(self) -> defer.Deferred[bool]:
        """Fires True on any answer (even an error from a worker without remote_ping shows it is alive),
        False when the connection is gone."""

        def answered(result: object) -> bool:
            return not (isinstance(result, Failure) and is_lost(result))

        return defer.maybeDeferred(self.ref.callRemote, "ping").addBoth(answered)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return on_disconnect(self.ref, callback)


@dataclass(frozen=True)
class Opening:
    """What the master opens on a worker: BotPb's `method`, the key of the worker's handle in its answer
    (`handle`), the call that ends one the worker opened after the master stopped waiting (`late`), what an
    operator is told of a worker without the method (`unsupported`), and what was under way (`doing`)."""

    method: str
    handle: str
    late: tuple[str, ...]
    unsupported: str
    doing: str


SESSION = Opening(WORKER_OPEN_METHOD, "session", ("close",), "has not enabled slaveshell", "opening the session")


@dataclass(frozen=True)
class OpenReply:
    """The worker's answer to an open: its handle's reference, or a message for the operator; `fields`: the
    whole answer (a transfer's sizes)."""

    ref: pb.RemoteReference | None
    error: str = ""
    lean: bool = False  # the worker takes slaveshell.plumbing.lean_calls on this connection
    window: bool = False  # the worker tunes its output window and takes a grant (slaveshell.vocabulary.windows)
    deflate: bool = False  # the worker can send its output and take its input deflated (vocabulary.deflate)
    deflate_always: bool = False  # and its owner said ALWAYS: its link's delay is not one TCP sees
    stdout_closes: bool = False  # the worker's session takes stdout_closed (slave_side.session)
    # The largest input message the worker takes for the session (its answer's max_input, checked:
    # slaveshell.vocabulary.flow.announced_input); MAX_CHUNK from a worker that does not say.
    max_input: int = MAX_CHUNK
    fields: Mapping[str, object] = field(default_factory=dict)
    refused: bool = False  # the worker answered, refusing (its owner's options), rather than failing to answer


@deferred
async def ask_worker(conn: WorkerConnection, opening: Opening, sink: pb.Referenceable, params: object,
                     worker: str, timeout: float) -> OpenReply:
    """Ask the worker behind `conn` (buildbot.worker.protocols.pb.Connection) to open `opening` for `params`,
    its calls going to `sink`: the worker-open handshake of sessions and transfers alike (no delay on the
    connection, lean calls accepted before, the answer within `timeout`, a late one ended, the answer
    checked). Fires an OpenReply; never fails."""
    set_nodelay(conn.mind)
    accept(getattr(conn.mind, "broker", None))  # before the open: the worker may send lean calls once told

    def late(reply: object) -> None:
        ref = reply.get(opening.handle) if isinstance(reply, dict) else None
        if isinstance(ref, pb.RemoteReference):
            defer.maybeDeferred(ref.callRemote, *opening.late).addErrback(lambda _f: None)

    reply: object
    answered = False
    try:
        reply = await _answer_within(defer.maybeDeferred(conn.mind.callRemote, opening.method, sink, params),
                                     timeout, late)
        answered = True
    except defer.TimeoutError:
        reply = {"ok": False, "error": f"did not answer within {timeout:g} s"}
    except Exception as e:
        # Never forward a remote failure across the second hop: translate it to a plain message.
        reply = {"ok": False, "error": _describe_failure(e, opening)}
    worker_ref = reply.get(opening.handle) if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool) or (
            reply["ok"] and not isinstance(worker_ref, pb.RemoteReference)):
        reply = {"ok": False, "error": "sent a malformed reply"}
        answered = False
    note_peer_exported(getattr(conn.mind, "broker", None), reply.get("exported"))
    if not reply["ok"] or not isinstance(worker_ref, pb.RemoteReference):
        error = reply.get("error")
        return OpenReply(None, f"worker {worker}: {error if isinstance(error, str) else 'refused'}"[:4096],
                         refused=answered)
    return OpenReply(worker_ref, lean=reply.get("lean") is True, window=reply.get("window") is True,
                     deflate=reply.get("deflate") is True or reply.get("deflate") == ALWAYS,
                     deflate_always=reply.get("deflate") == ALWAYS,
                     stdout_closes=reply.get("stdout_closed") is True,
                     max_input=announced_input(reply.get("max_input")), fields=reply)


def open_on_worker(conn: WorkerConnection, session: MasterSession, request: OpenRequest, timeout: float,
                   on_peer_error: Callable[[MasterSession, ProtocolError], None]) -> defer.Deferred[OpenReply]:
    """Ask the worker behind `conn` to start `request`'s session, its output going to `session` (`ask_worker`).
    Fires an OpenReply; never fails."""
    to_worker = replace(request, pause=False, builder=None, build=None, reason=None)
    return ask_worker(conn, SESSION, WorkerSink(session, on_peer_error), to_worker.to_wire(), request.worker,
                      timeout)


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


def _describe_failure(error: Exception, opening: Opening) -> str:
    if isinstance(error, pb.RemoteError) and "NoSuchMethod" in str(getattr(error, "remoteType", "")):
        return opening.unsupported
    if isinstance(error, (pb.DeadReferenceError, pb.PBConnectionLost)):
        return f"the connection was lost while {opening.doing}"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]
