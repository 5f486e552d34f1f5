"""The one adapter for calling a remote peer over PB: answer-less calls, dead references, lost connections.

Both directions of the worker's link (master to worker, worker to master) send a session's and a transfer's
events this way. A PB `callRemote` can fail in three places, and each ends in exactly one of the two callables
the caller injects, never as an exception in the caller or an unhandled error in the reactor's log:

- synchronously (a `DeadReferenceError` once the broker is gone, a Banana size limit on an argument): turned into
  a failed Deferred by `maybeDeferred`;
- the connection is lost before the answer (`PBConnectionLost`), or the reference was dead: ``on_lost()``;
- the peer raised (a `pb.Error` from its validation, a `RemoteError`): ``on_refused(method, message)``. The
  message is the peer's text: untrusted, to be shown only through `slaveshell.vocabulary.display.visible`.

Methods in `slaveshell.vocabulary.protocol.NO_ANSWER` are sent with ``pbanswer=False`` (PB sends no answer, so nothing
is held per call: the flow-control windows bound them instead). Their failures can then only be local (a dead
reference, an argument over Banana's limit).

References are given back when what they served ends (`release`, `RemotePeer.release`), not when the garbage
collector finds them: each `pb.Referenceable` one side sends stays in its broker's table (``Broker.localObjects``)
until the peer's `RemoteReference` is finalized and PB sends ``decref``, and a broker refuses to export more than
``pb.MAX_BROKER_REFS`` (1024) objects per connection. One reference kept alive per session (by a disconnect
notification, a cycle the collector has not reached yet) is a worker that stops serving after about a thousand
sessions until it reconnects.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb

from slaveshell.vocabulary.protocol import NO_ANSWER, ProtocolError

OnLost = Callable[[], None]
OnRefused = Callable[[str, str], None]
Undo = Callable[[], None]

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


def release(ref: pb.RemoteReference) -> None:
    """Give `ref` back to its peer now: the ``decref`` PB would send when `ref` is finalized
    (``RemoteReference.__del__``), so the peer's broker drops the object from its table at once, whatever here
    still holds `ref` and whenever the collector runs. `ref` must not be called after this. Idempotent; nothing is
    sent on a connection that is gone (the peer's table went with it)."""
    if not getattr(ref, "doRefCount", False):
        return
    ref.doRefCount = False
    broker = ref.broker
    if not broker.disconnected:
        broker.sendDecRef(ref.luid)


def exported(broker: object) -> int | None:
    """How many objects `broker` (one PB connection) exports to its peer now (its ``localObjects``: the root
    object, Buildbot's own, each live session's and transfer's end), or None when it is not a live PB broker."""
    table = getattr(broker, "localObjects", None) if isinstance(broker, pb.Broker) else None
    return len(table) if isinstance(table, dict) else None


def note_peer_exported(broker: object, count: object) -> None:
    """Keep, on `broker`, how many objects its peer said it exported (the ``exported`` of a worker's open
    answer), for `tables`. Anything but a count is ignored."""
    if isinstance(broker, pb.Broker) and isinstance(count, int) and not isinstance(count, bool):
        broker.__dict__[_PEER_EXPORTED] = count


def deflate_known(broker: object, known: bool = False) -> bool:
    """Whether the peer on `broker` (one PB connection) said it takes a session's output deflated
    (slaveshell.vocabulary.deflate); `known`: it just said so, kept for the connection's later sessions, which
    then deflate from their first message instead of after a round trip. False for anything but a PB broker."""
    if not isinstance(broker, pb.Broker):
        return False
    if known:
        broker.__dict__[_DEFLATE_KNOWN] = True
    return broker.__dict__.get(_DEFLATE_KNOWN) is True


def tables(broker: object) -> tuple[int, int | None] | None:
    """The reference tables of one PB connection, for a debugging listing: how many objects this side exports
    now, and how many the peer said it exported at its last answer that told (None before one). None when
    `broker` is not a live PB broker."""
    here = exported(broker)
    if here is None:
        return None
    peer = getattr(broker, "__dict__", {}).get(_PEER_EXPORTED)
    return here, peer if isinstance(peer, int) else None


_DEFLATE_KNOWN = "slaveshell_deflate_known"
_PEER_EXPORTED = "slaveshell_peer_exported"


def on_disconnect(ref: pb.RemoteReference, callback: Callable[[], None]) -> Undo:
    """Call `callback()` when `ref`'s connection is lost; the returned function undoes that. It must be undone
    when what `ref` serves ends: the broker's list of disconnect callbacks holds `ref` (and so the peer's object
    in the peer's table) until then."""

    def fire(_ref: object) -> None:
        callback()

    ref.notifyOnDisconnect(fire)  # type: ignore[no-untyped-call]

    def undo() -> None:
        if getattr(getattr(ref, "broker", None), "disconnected", False):
            return  # the notifications are running (or ran): the list goes with the broker
        # A reference whose broker is already gone has no callback list left (AttributeError in Twisted).
        try:
            ref.dontNotifyOnDisconnect(fire)  # type: ignore[no-untyped-call]
        except (ValueError, AttributeError):
            pass

    return undo


class RemotePeer:
    """Calls on one `pb.RemoteReference`, with failures routed to `on_lost` or `on_refused`.

    `send` is for events (no answer awaited); it never raises.
    """

    #: The methods sent with ``pbanswer=False`` (a session's events; a transfer's peers say theirs).
    answerless: frozenset[str] = NO_ANSWER

    def __init__(self, ref: pb.RemoteReference, on_lost: OnLost, on_refused: OnRefused) -> None:
        self.ref = ref
        self.on_lost = on_lost
        self.on_refused = on_refused
        self.released = False

    def release(self) -> None:
        """What this peer served has ended: give its reference back (`release`). Later sends are dropped."""
        self.released = True
        release(self.ref)

    def send(self, method: str, *args: object) -> None:
        """Call `method` and forget it. Methods in `answerless` go out with ``pbanswer=False``. Nothing once
        released."""
        if self.released:
            return
        kw = {"pbanswer": False} if method in self.answerless else {}
        d = defer.maybeDeferred(self.ref.callRemote, method, *args, **kw)
        d.addErrback(self._failed, method)

    __call__ = send

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


# Linux's struct tcp_info (linux/tcp.h): tcpi_min_rtt, microseconds, at this offset (kernel 4.6 on); ~0 before
# the connection's first sample.
_TCPI_MIN_RTT = 148
_NO_SAMPLE = 0xFFFFFFFF


def kernel_rtt(broker: object) -> float | None:
    """The shortest round trip (seconds) the kernel's TCP has seen on `broker`'s connection (TCP_INFO's
    tcpi_min_rtt, over its last five minutes by default): the path's own delay, which the processes' load does not
    lengthen as it does a round trip measured between them. None where the kernel does not say: not a TCP
    connection (a UNIX socket, an in-memory test pump), not Linux, no sample yet."""
    option = getattr(socket, "TCP_INFO", None)
    try:
        handle = broker.transport.getHandle()  # type: ignore[attr-defined]
        if option is None or not isinstance(handle, socket.socket) or handle.family not in (
                socket.AF_INET, socket.AF_INET6):
            return None
        info = handle.getsockopt(socket.IPPROTO_TCP, option, 256)
    except Exception:  # no transport, or not TCP
        return None
    if len(info) < _TCPI_MIN_RTT + 4:
        return None
    (micros,) = struct.unpack_from("I", info, _TCPI_MIN_RTT)
    return None if micros == _NO_SAMPLE else micros / 1e6


def link_rtt(broker: object, measured: float | None) -> float | None:
    """The round trip that says whether `broker`'s link is slow (slaveshell.vocabulary.deflate): the kernel's
    (`kernel_rtt`) where it has one, else `measured` (the sender's own, between the processes)."""
    kernel = kernel_rtt(broker)
    return measured if kernel is None else kernel
