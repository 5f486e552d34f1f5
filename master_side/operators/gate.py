"""`ConnectionGate`: what one local user can make the master hold through the doors, bounded per uid and in total
(the numbers: master_side.operators.bounds.ResourceBounds).

- connections on the shell socket, per uid and in total, counted at accept time from the kernel's peer credentials
  (master_side.shell_socket.peer) before any byte is read: a refused connection gets one line,
  ``slaveshell: refused: <reason>``, and is closed. A uid no policy rule grants anything (`has_right`) takes one
  of the far fewer places for those (NO_RIGHT_CONNECTIONS, NO_RIGHT_CONNECTIONS_PER_UID): users of the socket's
  group without a right never take an operator's place;
- calls in progress on one connection, every kind of call (open, attach, copy, history, transcript, search wait
  on a worker or a database; the others are answered at once): the framed door does not start one past the bound
  (it waits, and the connection is not read meanwhile: `busy`); one made past it is refused and audited;
- output buffered for one connection in the master's user-space write buffer, answers to calls included: a peer
  that does not read is dropped when the buffer passes a bound, or when it has not drained for a while even if
  nothing new is sent; and in total, checked about once a second (the connections holding most go first). The
  web terminal's sockets are watched the same way (`watch`), though admitted by their own door;
- views of sessions (`viewer_refusal`, with the gate's bounds: master_side.sessions.viewer_bounds).

The buffered size is read from Twisted's `abstract.FileDescriptor` (``dataBuffer``, ``offset``,
``_tempDataLen``: slaveshell.plumbing.write_now.buffered_bytes), the same figure its `write` compares with
``bufferSize`` before pausing a producer. A registered producer would be the public interface, but a streaming
producer on a PB transport changes how `loseConnection` completes, and its pause/resume says nothing about a peer
that reads slowly but steadily; so the figure is read instead (transports without it count as empty), and the
door counts what it writes, so that what the kernel took (written less buffered) shows whether the peer reads at
all.

Every refusal and drop is audited and logged through `RefusalAudit` (master_side.audit.refusals): at most once per
uid and kind per interval, with the number of the others left out.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import ParamSpec, Protocol, TypeVar, cast

from twisted.internet import defer

from master_side.audit.refusals import RefusalAudit
from master_side.operators.bounds import ResourceBounds
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.session import MasterSession
from master_side.sessions.viewer_bounds import viewer_refusal
from slaveshell.plumbing.write_now import buffered_bytes
from slaveshell.vocabulary.policy import Identity

P = ParamSpec("P")
T = TypeVar("T")

# Connections on the shell socket of uids without a right (ConnectionGate.has_right), in all and per uid.
NO_RIGHT_CONNECTIONS = 8
NO_RIGHT_CONNECTIONS_PER_UID = 2


class Gated(Protocol):
    """A connection as the gate sees it (master_side.shell_socket.door's sniffer and door): its transport and
    whether it is gone; and `written`, when it has it, the bytes it wrote so far (what the kernel took is that
    less what is still buffered)."""

    @property
    def transport(self) -> object: ...
    @property
    def disconnected(self) -> bool: ...


class Transport(Protocol):
    """What the gate and the doors use of a connection's transport (ITransport, IPushProducer;
    `abortConnection` when it has it)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


class _Connection:
    def __init__(self, identity: Identity, peer: Gated, socket: bool = True, right: bool = True) -> None:
        self.identity = identity
        self.peer = peer
        self.right = right  # counted among the connections of uids with a right (else among the few places)
        # A connection on the shell socket (counted by `admit`), or one another door admitted (`watch`).
        self.socket = socket
        self.calls = 0
        self.fds = 0  # descriptors the client passed that the master holds (master_side.shell_socket.passed)
        # Bytes the kernel had taken from the write buffer when the write-stall clock last started.
        self.taken = 0
        self.since: float | None = None


class ConnectionGate:
    """Admits operator connections within the bounds and watches what each one holds."""

    def __init__(self, identify: Callable[[Transport], Identity], audit: RefusalAudit, clock: Callable[[], float],
                 bounds: ResourceBounds | None = None) -> None:
        self.identify = identify
        self.audit = audit
        self.clock = clock
        self.bounds = bounds or ResourceBounds()
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

    # -- passed descriptors ----------------------------------------------------------------------

    def fds_refused(self, peer: Gated) -> str | None:
        """Why the connection may pass the master no descriptor at all (not admitted, or a user without a right on
        any worker: the caller drops the connection, audited), or None."""
        conn = self.connections.get(peer)
        if conn is None:
            return "the connection is not admitted"
        if not conn.right:
            return f"{conn.identity.user} has no right on any worker here: the master takes no descriptors from them"
        return None

    def hold_fds(self, peer: Gated, n: int) -> str | None:
        """Count `n` more descriptors the connection's client passed as held by the master: None, or why the
        master holds no more (over `passed_fds_per_uid` or `passed_fds`: the caller closes them and the client
        serves its streams itself)."""
        why = self.fds_refused(peer)
        if why is not None:
            return why
        conn = self.connections[peer]
        bounds = self.bounds
        mine = sum(c.fds for c in self.connections.values() if c.identity.uid == conn.identity.uid)
        total = sum(c.fds for c in self.connections.values())
        if mine + n > bounds.passed_fds_per_uid:
            return (f"{conn.identity.user} already has {mine} descriptors passed to the master (its limit per user "
                    f"is {bounds.passed_fds_per_uid})")
        if total + n > bounds.passed_fds:
            return f"the master already holds {total} passed descriptors (its limit is {bounds.passed_fds})"
        conn.fds += n
        return None

    def release_fds(self, peer: Gated, n: int) -> None:
        conn = self.connections.get(peer)
        if conn is not None:
            conn.fds = max(conn.fds - n, 0)

    def fds_held(self, uid: int | None = None) -> int:
        return sum(c.fds for c in self.connections.values() if uid is None or c.identity.uid == uid)

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
        """Why `who` may not add a view of `session` on connection `peer`, or None, within the gate's bounds
        (master_side.sessions.viewer_bounds.viewer_refusal)."""
        return viewer_refusal(who, peer, session, sessions, self.bounds.viewers_per_session,
                              self.bounds.viewers_per_operator)
