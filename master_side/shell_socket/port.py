"""The shell socket's listening port: Twisted's UNIX port, whose connections serve what the operator sent before it
went.

Twisted ends a connection whose write fails (EPIPE: the client has closed its end) at once, without reading what the
client sent before closing. A reactor turn that found the socket writable, then met the client's close on its write,
lost the client's last frames: the CLOSE of a client interrupted (Ctrl-C) while its session opened, sent just before
it exited, was never read, and the command it had asked to end was left detached for its grace. A `Server` here reads
that input first, as if it had been read before the end (at most LAST_WORDS bytes: what is left in the socket of a
peer that has gone), and hands it to its protocol; a connection the master itself closes or drops is not read.
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet import error, unix
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

# What is read of a lost connection's last input, at most: more than a client's send buffer holds by default
# (net.core.wmem_default, about 208 KiB), since what it sent before it closed is all there is.
LAST_WORDS = 256 * 1024


class Server(unix.Server):
    """A connection on the shell socket (unix.Server) that reads the peer's last input when it is lost."""

    def connectionLost(self, reason: Failure) -> None:
        try:
            # A lost connection (not an abort, not a close of the master's own: their input is not wanted).
            if (reason.check(error.ConnectionLost) and not reason.check(error.ConnectionAborted)
                    and not self.disconnecting and getattr(self, "socket", None) is not None):
                self._last_words()
        except Exception:
            log.failure("slaveshell: serving a lost connection's last input failed")
        finally:
            super().connectionLost(reason)

    def _last_words(self) -> None:
        left = LAST_WORDS
        while left > 0 and not (self.disconnecting or self._aborting):
            try:
                data = self.socket.recv(min(left, self.bufferSize), socket.MSG_DONTWAIT)
            except OSError:  # nothing waits (EAGAIN), or the reset that ends it
                return
            if not data:
                return
            left -= len(data)
            cast(Protocol, self.protocol).dataReceived(data)


class Port(unix.Port):
    """Twisted's UNIX port, its connections `Server`s."""

    transport = Server


def listen(path: str, factory: object, mode: int, reactor: object) -> Port:
    """Listen on `path` (its lock file beside it, as Twisted's UNIX endpoint does with wantPID); raises
    CannotListenError."""
    # Twisted takes a str path as its endpoint does (its annotation says bytes), and any protocol factory.
    port = Port(cast(bytes, path), cast(IProtocolFactory, factory), mode=mode, reactor=reactor, wantPID=True)
    port.startListening()
    return port
