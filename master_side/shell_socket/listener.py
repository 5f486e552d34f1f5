"""The shell socket's connections until they say what they speak: each admitted by the connection gate as it is
made (master_side.operators.gate), then handed to the framed door (master_side.shell_socket.door.WireDoor) once its
first bytes are slaveshell.vocabulary.framing's magic, or refused with one line."""

from __future__ import annotations

from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from master_side.operators.gate import ConnectionGate, Transport
from master_side.shell_socket.door import WireDoor
from master_side.shell_socket.framed import DoorHost
from master_side.shell_socket.passed import MAX_PASSED, close_all
from slaveshell.plumbing.clock import Clock, DelayedCall
from slaveshell.vocabulary import framing


class _Swappable(Transport, TypingProtocol):
    protocol: object  # abstract.FileDescriptor's: the connection's protocol, which can be replaced


@implementer(IFileDescriptorReceiver)
class Sniffer(Protocol):
    """A connection on the shell socket until its first bytes say what it speaks.

    Admitted by the connection gate as it is made (a refused one gets its line and the close); handed to a
    `WireDoor` once its first bytes are `framing.MAGIC` (the framed client sends them at once). Anything else
    is refused with one line (`framing.REFUSED_PREFIX`, which an older PB client of slaveshell shows as "the
    master refused the connection: ...") and the close, audited: bytes that are not the magic at once, or
    silence for `SILENCE` seconds (a PB client waits for the server to speak first). Descriptors the client
    passed with its first frames (a `-T` open's stdin and stdout: master_side.shell_socket.passed) go to the door
    with them; more than MAX_PASSED, or any on a connection it refuses, are closed at once."""

    SILENCE = 3.0

    def __init__(self) -> None:
        self.admitted = False
        self.disconnected = False
        self.written = 0
        self._head: bytes | None = b""
        self._timer: DelayedCall | None = None
        self._fds: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        # One more than MAX_PASSED is kept for the door to refuse (and drop the connection, audited); any beyond
        # it, or on a connection refused, is closed at once.
        if len(self._fds) > MAX_PASSED or not self.admitted or self._head is None:
            close_all([descriptor])
            return
        self._fds.append(descriptor)

    @property
    def gate(self) -> ConnectionGate:
        return cast(DoorFactory, self.factory).gate

    def connectionMade(self) -> None:
        transport = cast(Transport, self.transport)
        reason = self.gate.admit(self, transport)
        if reason is not None:
            self._refuse(reason)
            return
        self.admitted = True
        self._timer = cast(DoorFactory, self.factory).clock.callLater(self.SILENCE, self._silent)

    def _silent(self) -> None:
        if self._head is not None and not self.disconnected:
            self._not_framed("it sent nothing (a PB client of an older slaveshell?)")

    def _not_framed(self, what: str) -> None:
        self._head = None
        conn = self.gate.connections.get(self)
        if conn is not None:
            self.gate.audit(conn.identity, "refused", f"connection refused (not slaveshell's framed protocol): "
                                                      f"{what}")
        self._refuse("this master serves slaveshell's framed protocol only, and this client does not speak it "
                     "(a slaveshell older than the master? upgrade it)")

    def _refuse(self, reason: str) -> None:
        close_all(self._fds)
        transport = cast(Transport, self.transport)
        line = " ".join(reason.split())[:500]
        transport.write(framing.REFUSED_PREFIX + line.encode("ascii", "replace") + b"\n")
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self.admitted or self._head is None:
            return
        head = self._head + data
        if head.startswith(framing.MAGIC):
            self._head = None
            self._hand_over(head[len(framing.MAGIC):])
        elif framing.MAGIC.startswith(head):
            self._head = head  # at most len(MAGIC) - 1 bytes
        else:
            self._not_framed(f"it began with {head[:16]!r}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        close_all(self._fds)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.admitted:
            self.gate.release(self)

    def _hand_over(self, rest: bytes) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        factory = cast(DoorFactory, self.factory)
        transport = cast(_Swappable, self.transport)
        # The gate counted this connection as the sniffer: it counts it as the door from now on.
        self.gate.release(self)
        self.admitted = False
        door = WireDoor(factory.service)
        transport.protocol = door
        door.makeConnection(transport)
        fds, self._fds = self._fds, []
        for fd in fds:
            door.fileDescriptorReceived(fd)  # a door that refused the connection closes them
        if rest and door.admitted:
            door.dataReceived(rest)


class DoorFactory(ServerFactory):
    """The factory of the shell socket: every connection behind the connection gate, then the framed door.
    `clock`: the reactor (a fake one in tests)."""

    protocol = Sniffer

    def __init__(self, service: DoorHost, gate: ConnectionGate, clock: Clock | None = None) -> None:
        self.service = service
        self.gate = gate
        if clock is None:
            from twisted.internet import reactor

            clock = cast(Clock, reactor)
        self.clock: Clock = clock
