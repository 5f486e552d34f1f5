"""The one adapter for calling a remote peer over PB: answer-less calls, dead references, lost connections.

Every hop of a session (master to worker, worker to master, master to operator, operator to master) sends its
events this way. A PB `callRemote` can fail in three places, and each ends in exactly one of the two callables
the caller injects, never as an exception in the caller or an unhandled error in the reactor's log:

- synchronously (a `DeadReferenceError` once the broker is gone, a Banana size limit on an argument): turned into
  a failed Deferred by `maybeDeferred`;
- the connection is lost before the answer (`PBConnectionLost`), or the reference was dead: ``on_lost()``;
- the peer raised (a `pb.Error` from its validation, a `RemoteError`): ``on_refused(method, message)``. The
  message is the peer's text: untrusted, to be shown only through `slaveshell.display.visible`.

Methods in `slaveshell.protocol.NO_ANSWER` are sent with ``pbanswer=False`` (PB sends no answer, so nothing is
held per call: the flow-control windows bound them instead). Their failures can then only be local (a dead
reference, an argument over Banana's limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb

from .protocol import NO_ANSWER, ProtocolError

OnLost = Callable[[], None]
OnRefused = Callable[[str, str], None]

R = TypeVar("R")


def opening(parse: Callable[[object], R], params: object, sink: object) -> tuple[R, pb.RemoteReference] | str:
    """What a `remote_*` open method (a session's or a transfer's, on the master or the worker) checks first:
    the request `parse`d from `params` (e.g. `OpenRequest.from_wire`, raising ProtocolError) and a `sink` that
    is a PB reference. The request and the sink, or the refusal's text ("bad request: ...") for an ``{"ok":
    False}`` answer."""
    try:
        request = parse(params)
    except ProtocolError as e:
        return f"bad request: {e}"
    if not isinstance(sink, pb.RemoteReference):
        return "bad request: the sink must be a remote reference"
    return request, sink


#: Failures meaning the peer can no longer be reached (rather than that it refused one call).
LOST = (pb.DeadReferenceError, pb.PBConnectionLost)


def is_lost(failure: Failure) -> bool:
    """True when `failure` means the connection to the peer is gone (a dead reference, a lost connection)."""
    return isinstance(failure.value, LOST)


class RemotePeer:
    """Calls on one `pb.RemoteReference`, with failures routed to `on_lost` or `on_refused`.

    `send` is for events (no answer awaited); `call` is for the few calls whose answer or completion the caller
    waits for (a last `close` before exiting, `release`). Neither ever raises.
    """

    #: The methods sent with ``pbanswer=False`` (a session's events; a transfer's peers say theirs).
    answerless: frozenset[str] = NO_ANSWER

    def __init__(self, ref: pb.RemoteReference, on_lost: OnLost, on_refused: OnRefused) -> None:
        self.ref = ref
        self.on_lost = on_lost
        self.on_refused = on_refused

    def send(self, method: str, *args: object) -> None:
        """Call `method` and forget it. Methods in `answerless` go out with ``pbanswer=False``."""
        kw = {"pbanswer": False} if method in self.answerless else {}
        d = defer.maybeDeferred(self.ref.callRemote, method, *args, **kw)
        d.addErrback(self._failed, method)

    __call__ = send

    def call(self, method: str, *args: object) -> defer.Deferred[object]:
        """Call `method` and return a Deferred of its answer. A synchronous failure (a dead reference) arrives
        as a failed Deferred, not an exception. The failure is the caller's to handle (`is_lost` tells a lost
        connection from a refusal); it is not routed to `on_lost`/`on_refused`."""
        return defer.maybeDeferred(self.ref.callRemote, method, *args)

    def _failed(self, failure: Failure, method: str) -> None:
        if is_lost(failure):
            self.on_lost()
        else:
            self.on_refused(method, failure.getErrorMessage())


def set_nodelay(ref: pb.RemoteReference) -> None:
    """Turn off Nagle's algorithm on `ref`'s TCP connection (Twisted leaves it on: keystroke echo would wait
    ~40 ms per hop). A connection that is not TCP (a UNIX socket, an in-memory test pump) is left as it is."""
    try:
        ref.broker.transport.setTcpNoDelay(True)
    except Exception:  # not TCP
        pass
