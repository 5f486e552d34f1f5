"""What one local user can make the master hold, bounded per uid and in total.

The shell socket is open to a group of local users; each of them must not be able to exhaust the master
process that also runs Buildbot (its database, its workers' connections, its builds). Bounded here:

- connections on the socket, per uid and in total, counted at accept time from the kernel's peer credentials
  (SO_PEERCRED, unix(7), `peer_identity`) before any byte is read: a refused connection gets one line,
  ``slaveshell: refused: <reason>``, and is closed. A uid no policy rule grants anything (`has_right`) takes one
  of the far fewer places for those (NO_RIGHT_CONNECTIONS, NO_RIGHT_CONNECTIONS_PER_UID): users of the socket's
  group without a right never take an operator's place;
- calls in progress on one connection, every kind of call (open, attach, copy, history, transcript, search wait
  on a worker or a database; the others are answered at once): the framed door does not start one past the bound
  (it waits, and the connection is not read meanwhile: `busy`); one made past it is refused and audited;
- output buffered for one connection in the master's user-space write buffer, answers to calls included: a peer
  that does not read is dropped when the buffer passes a bound, or when it has not drained for a while even if
  nothing new is sent; and in total, checked about once a second (the connections holding most go first). The
  web terminal's sockets are watched the same way (`ConnectionGate.watch`), though admitted by their own door;
- sockets of the web door, by `Quota` (a count per key and in total): a door keeps one quota for what
  authorization admitted and tighter ones for the rest, so that those never take the places of the others;
- notices to a session's viewers about others joining (a count per minute, the rest summed up).

The buffered size is read from Twisted's `abstract.FileDescriptor` (``dataBuffer``, ``offset``,
``_tempDataLen``), the same figure its `write` compares with ``bufferSize`` before pausing a producer. A
registered producer would be the public interface, but a streaming producer on a PB transport changes how
`loseConnection` completes, and its pause/resume says nothing about a peer that reads slowly but steadily; so
the figure is read instead (transports without it count as empty), and the door counts what it writes, so
that what the kernel took (written less buffered) shows whether the peer reads at all.

Every refusal and drop is audited (an event of kind ``refused`` or ``dropped``) and logged, at most once per
uid and kind per `AUDIT_INTERVAL` seconds, with the number of the others left out.
"""

from __future__ import annotations

import socket as _socket
import struct
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, ParamSpec, Protocol, TypeVar, cast

from twisted.internet import defer
from twisted.logger import Logger

from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.plumbing.write_now import buffered_bytes
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity

if TYPE_CHECKING:
    from master_side.sessions.session import MasterSession

log = Logger()

P = ParamSpec("P")
T = TypeVar("T")

# At most one audit event and log line per uid and kind of refusal in this many seconds; the rest are counted.
AUDIT_INTERVAL = 10.0
# Notices about viewers joining, per session: at most this many per minute.
JOIN_NOTICES_PER_MINUTE = 5
# Connections on the shell socket of uids without a right (ConnectionGate.has_right), in all and per uid.
NO_RIGHT_CONNECTIONS = 8
NO_RIGHT_CONNECTIONS_PER_UID = 2


@dataclass(frozen=True)
class Bounds:
    """The bounds, as ShellService options. Counts are connections or viewers; bytes; seconds."""

    connections_per_uid: int = 32
    connections: int = 256
    viewers_per_session: int = 16
    viewers_per_operator: int = 32
    connection_buffer: int = 4 * 1024 * 1024
    buffered_total: int = 64 * 1024 * 1024
    write_stall: float | None = 60.0
    calls_in_progress: int = 4


class Gated(Protocol):
    """A connection as the gate sees it (master_side.shell_socket.door's sniffer and door): its transport and
    whether it is gone; and `written`, when it has it, the bytes it wrote so far (what the kernel took is that
    less what is still buffered)."""

    @property
    def transport(self) -> object: ...
    @property
    def disconnected(self) -> bool: ...


def peer_identity(transport: object) -> Identity:
    """Who is at the other end of a UNIX socket, as the kernel says (SO_PEERCRED, unix(7)): never what they
    claim. OSError when the kernel cannot say."""
    sock = cast(_Handled, transport).getHandle()
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Identity.from_credentials(pid, uid, gid)


class _Handled(Protocol):
    """A connected transport's socket (ITCPTransport.getHandle, which UNIX transports have too)."""

    def getHandle(self) -> _socket.socket: ...


class Transport(Protocol):
    """What the gate and the doors use of a connection's transport (ITransport, IPushProducer;
    `abortConnection` when it has it)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


RefusalKind = Literal["refused", "dropped"]


class RefusalRecord(Protocol):
    """Where the gate writes refusals and drops: the audit trail (master_side.audit.trail.AuditTrail)."""

    def refused(self, who: Identity, worker: str | None, reason: str) -> None: ...
    def dropped(self, who: Identity, worker: str | None, reason: str) -> None: ...


class RefusalAudit:
    """Refusals and drops written to `trail()` (the current audit trail; None: the service is not running) and
    logged: at most one per uid and kind of refusal per interval; the ones left out are counted and reported
    with the next one, or by `flush()` once the interval has passed."""

    def __init__(self, trail: Callable[[], RefusalRecord | None], clock: Callable[[], float],
                 interval: float = AUDIT_INTERVAL) -> None:
        self.trail = trail
        self.clock = clock
        self.interval = interval
        self._last: dict[tuple[object, RefusalKind, str], float] = {}
        # Left out since the last event: (count, who, the latest reason, worker).
        self._left_out: dict[tuple[object, RefusalKind, str], tuple[int, Identity, str, str | None]] = {}

    def __call__(self, who: Identity, kind: RefusalKind, reason: str, worker: str | None = None) -> None:
        """`kind` is "refused" or "dropped"; `reason` says what and which bound, its part before the first
        colon naming the kind of refusal; `worker`, if it concerns one."""
        key = (who.key, kind, reason.split(":", 1)[0])  # the uid, or a web user's name (policy.WebIdentity)
        if self.clock() - self._last.get(key, -self.interval) < self.interval:
            count = self._left_out.get(key, (0,))[0]
            self._left_out[key] = (count + 1, who, reason, worker)
            return
        self._emit(key, who, kind, reason, worker)

    def flush(self) -> None:
        """Report what was left out once its interval has passed (called about once a second)."""
        now = self.clock()
        for key, (count, who, reason, worker) in list(self._left_out.items()):
            if now - self._last.get(key, -self.interval) >= self.interval:
                del self._left_out[key]
                self._emit(key, who, key[1], f"{count} more: {reason}" if count > 1 else reason, worker,
                           count_left_out=False)
        # Forget the times of refusals past their interval: the table stays as small as the recent refusals.
        for key, last in list(self._last.items()):
            if now - last >= self.interval and key not in self._left_out:
                del self._last[key]

    def _emit(self, key: tuple[object, RefusalKind, str], who: Identity, kind: RefusalKind, reason: str,
              worker: str | None, count_left_out: bool = True) -> None:
        self._last[key] = self.clock()
        more = self._left_out.pop(key, (0,))[0] if count_left_out else 0
        detail = reason + (f" (and {more} more in the last {self.interval:g} s)" if more else "")
        log.warn("slaveshell: {kind} {who}: {detail}", kind=kind, who=visible(str(who)), detail=visible(detail))
        trail = self.trail()
        if trail is None:
            return
        if kind == "dropped":
            trail.dropped(who, worker, detail)
        else:
            trail.refused(who, worker, detail)


class NoticeBudget:
    """At most `per_minute` notices in any minute; `take()` says whether one may go now and how many were
    left out since the last that went."""

    def __init__(self, clock: Callable[[], float], per_minute: int = JOIN_NOTICES_PER_MINUTE) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self._sent: list[float] = []
        self.left_out = 0

    def take(self) -> tuple[bool, int]:
        now = self.clock()
        self._sent = [t for t in self._sent if now - t < 60.0]
        if len(self._sent) >= self.per_minute:
            self.left_out += 1
            return False, 0
        self._sent.append(now)
        left_out, self.left_out = self.left_out, 0
        return True, left_out


class Quota:
    """At most `per_key` places per key and `total` in all: `take(key)` gives one (True) or refuses (False);
    `give_back(key)` returns one."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self.held: dict[object, int] = {}

    def __len__(self) -> int:
        return sum(self.held.values())

    def refusal(self, key: object) -> str | None:
        """Why no place is left for `key` ("per_key" or "total"), or None."""
        if self.held.get(key, 0) >= self.per_key:
            return "per_key"
        if len(self) >= self.total:
            return "total"
        return None

    def take(self, key: object) -> bool:
        if self.refusal(key) is not None:
            return False
        self.held[key] = self.held.get(key, 0) + 1
        return True

    def give_back(self, key: object) -> None:
        left = self.held.get(key, 0) - 1
        if left > 0:
            self.held[key] = left
        else:
            self.held.pop(key, None)


class _Connection:
    def __init__(self, identity: Identity, peer: Gated, socket: bool = True, right: bool = True) -> None:
        self.identity = identity
        self.peer = peer
        self.right = right  # counted among the connections of uids with a right (else among the few places)
        # A connection on the shell socket (counted by `admit`), or one another door admitted (`watch`).
        self.socket = socket
        self.calls = 0
        # Bytes the kernel had taken from the write buffer when the write-stall clock last started.
        self.taken = 0
        self.since: float | None = None


class ConnectionGate:
    """Admits operator connections within the bounds and watches what each one holds."""

    def __init__(self, identify: Callable[[Transport], Identity], audit: RefusalAudit, clock: Callable[[], float],
                 bounds: Bounds | None = None) -> None:
        self.identify = identify
        self.audit = audit
        self.clock = clock
        self.bounds = bounds or Bounds()
        self.connections: dict[Gated, _Connection] = {}
        # Whether a uid has some right (the service asks its policy); connections of those without one are
        # counted apart, within NO_RIGHT_CONNECTIONS.
        self.has_right: Callable[[Identity], bool] = lambda who: True
        # Calls in progress on connections the gate did not admit (in-memory brokers in tests).
        self._other_calls: weakref.WeakKeyDictionary[Gated, int] = weakref.WeakKeyDictionary()

    def count(self, uid: int | None = None, right: bool | None = None) -> int:
        """Connections on the shell socket (of `uid`; of uids with a right, or without one)."""
        return sum(1 for c in self.connections.values()
                   if c.socket and (uid is None or c.identity.uid == uid) and (right is None or c.right == right))

    # -- connections ---------------------------------------------------------------------------

    def admit(self, peer: Gated, transport: Transport) -> str | None:
        """Called as the connection is made: None to serve it, or why it is refused."""
        try:
            who = self.identify(transport)
        except OSError as e:
            return f"the master cannot tell who you are ({e.strerror or e})"
        bounds = self.bounds
        right = self.has_right(who)
        per_uid, total = ((bounds.connections_per_uid, bounds.connections) if right
                          else (min(NO_RIGHT_CONNECTIONS_PER_UID, bounds.connections_per_uid),
                                min(NO_RIGHT_CONNECTIONS, bounds.connections)))
        reason = None
        if self.count(who.uid, right) >= per_uid:
            reason = (f"{who.user} already has {per_uid} connections to the shell socket (the master's limit per "
                      "user)" if right else f"{who.user} has no right on any worker here, and already {per_uid} "
                      "connections to the shell socket (the master's limit for users without a right)")
        elif self.count(None, right) >= total:
            reason = (f"the shell socket already has {total} connections (the master's limit); try again later"
                      if right else f"the shell socket already has {total} connections of users without a right "
                      "on any worker (the master's limit); try again later")
        if reason is not None:
            self.audit(who, "refused", f"connection refused: {reason}")
            return reason
        self.connections[peer] = _Connection(who, peer, right=right)
        return None

    def watch(self, peer: Gated, who: Identity) -> None:
        """Watch a connection another door admitted (a web terminal's socket): its buffered output counts
        against the same bounds, per connection and in total, and it is dropped the same way; it does not count
        against the shell socket's connections."""
        self.connections[peer] = _Connection(who, peer, socket=False)

    def release(self, peer: Gated) -> None:
        self.connections.pop(peer, None)

    def drop(self, peer: Gated, reason: str) -> None:
        """Close a connection at once (its buffered output is discarded): `reason` goes to the audit."""
        conn = self.connections.pop(peer, None)
        if conn is not None:
            self.audit(conn.identity, "dropped", f"connection dropped: {reason}")
        transport = cast("Transport | None", peer.transport)
        if transport is not None and not peer.disconnected:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def check(self, peer: Gated) -> bool:
        """Drop the connection if its write buffer passed the bound. True when it was dropped."""
        if peer.disconnected:
            return True
        held = buffered_bytes(peer.transport)
        if held > self.bounds.connection_buffer:
            self.drop(peer, f"{held} bytes of output it did not read (the master's limit is "
                              f"{self.bounds.connection_buffer})")
            return True
        return False

    def tick(self) -> None:
        """About once a second: drop connections over the buffer bound, or whose buffer has not drained for
        `write_stall` seconds (a peer that stopped reading, even if nothing new is sent to it)."""
        self.audit.flush()
        now = self.clock()
        stall = self.bounds.write_stall
        # In total: while all connections together hold more than the bound, the one holding most goes.
        held_by = {b: buffered_bytes(b.transport) for b in self.connections}
        total = sum(held_by.values())
        for peer in sorted(held_by, key=held_by.__getitem__, reverse=True):
            if total <= self.bounds.buffered_total:
                break
            total -= held_by[peer]
            self.drop(peer, f"{held_by[peer]} bytes of output it did not read, while all connections held "
                              f"more than the master's limit of {self.bounds.buffered_total}")
        for conn in list(self.connections.values()):
            if self.check(conn.peer):
                continue
            held = buffered_bytes(conn.peer.transport)
            taken = getattr(conn.peer, "written", 0) - held
            if held == 0:
                conn.since = None
            elif conn.since is None or taken > conn.taken:
                # Waiting output, but the peer read some since the last look: it is slow, not stalled.
                conn.since, conn.taken = now, taken
            elif stall is not None and now - conn.since >= stall:
                self.drop(conn.peer, f"it has not read its output for {stall:g} s ({held} bytes waiting)")

    # -- calls ---------------------------------------------------------------------------------

    def busy(self, peer: Gated) -> bool:
        """Whether the connection has `calls_in_progress` calls in progress (one more would be refused)."""
        conn = self.connections.get(peer)
        return (conn.calls if conn is not None else self._other_calls.get(peer, 0)) >= self.bounds.calls_in_progress

    def limited(self, peer: Gated, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run an operator's call's work, `fn(*args, **kwargs)`, at most `calls_in_progress` at once per connection
        (a call is in progress until the Deferred it returns fires). Raises OperatorError (a LIMIT) when refused."""
        if self.check(peer):
            raise OperatorError(ErrorKind.LIMIT, "this connection was dropped")
        conn = self.connections.get(peer)
        busy = conn.calls if conn is not None else self._other_calls.get(peer, 0)
        if busy >= self.bounds.calls_in_progress:
            reason = (f"too many calls in progress on this connection (at most {self.bounds.calls_in_progress}); "
                      "wait for their answers")
            if conn is not None:
                self.audit(conn.identity, "refused", f"call refused: {reason}")
            raise OperatorError(ErrorKind.LIMIT, reason)
        result = fn(*args, **kwargs)
        if not isinstance(result, defer.Deferred) or result.called:
            return result
        self._count(peer, conn, 1)

        def done(value: object) -> object:
            self._count(peer, conn, -1)
            return value

        result.addBoth(done)
        return result

    def _count(self, peer: Gated, conn: _Connection | None, delta: int) -> None:
        if conn is not None:
            conn.calls += delta
        else:
            self._other_calls[peer] = self._other_calls.get(peer, 0) + delta

    # -- viewers -------------------------------------------------------------------------------

    def viewer_refusal(self, who: Identity, peer: object, session: MasterSession,
                       sessions: Iterable[MasterSession]) -> str | None:
        """Why `who` may not add a view of `session` on connection `peer` (any object that identifies the
        operator's connection, as `Viewer.connection` holds it), or None. `sessions` are the live
        sessions (each with `.viewers`, `.owner`, `.live`); a view other than a session's owner counts against
        its operator."""
        bounds = self.bounds
        if any(getattr(v, "connection", None) is peer for v in session.viewers):
            return f"this connection already views session {session.id}"
        if len(session.viewers) >= bounds.viewers_per_session:
            return f"session {session.id} already has {bounds.viewers_per_session} viewers (the master's limit)"
        views = sum(1 for s in sessions if s.live for v in s.viewers
                    if v is not s.owner and v.identity.key == who.key)
        if views >= bounds.viewers_per_operator:
            return f"{who.user} already has {bounds.viewers_per_operator} views of sessions (the master's limit)"
        return None
