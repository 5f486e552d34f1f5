"""Who is at the other end of the shell socket, as the kernel says: SO_PEERCRED (unix(7)), read as the connection
is made, before any byte is read. The connection gate (master_side.operators.gate) admits each connection by it."""

from __future__ import annotations

import socket as _socket
import struct
from typing import Protocol, cast

from slaveshell.vocabulary.policy import Identity


class _Handled(Protocol):
    """A connected transport's socket (ITCPTransport.getHandle, which UNIX transports have too)."""

    def getHandle(self) -> _socket.socket: ...


def peer_identity(transport: object) -> Identity:
    """Who is at the other end of a UNIX socket, as the kernel says (SO_PEERCRED, unix(7)): never what they
    claim. OSError when the kernel cannot say."""
    sock = cast(_Handled, transport).getHandle()
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Identity.from_credentials(pid, uid, gid)
