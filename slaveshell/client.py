"""`slaveshell cp`'s PB connection to the master's socket.

Every other tool (`buildbot-shell`, `slaveshell attach/watch/sessions/history/kill...`, the console) speaks the
framed hop (slaveshell.hop, slaveshell.calls), without Twisted. The master tells the two apart by the first bytes
(master_side.operator_wire.SniffingBroker).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.spread import pb

from .protocol import REFUSED_PREFIX


class ClientError(Exception):
    """Could not reach the master or open the session; the message is for the operator."""


@defer.inlineCallbacks
def connect(reactor: Any, socket_path: str) -> Any:
    """The master's root object over its UNIX socket."""
    if not os.path.exists(socket_path):
        raise ClientError(f"no master socket at {socket_path} (is the master running with ShellService? "
                          "give its basedir with --master DIR, or --socket PATH)")
    factory = _ClientFactory()
    # reactor.connectUNIX rather than an endpoint: twisted.internet.endpoints imports TLS and asyncio, a
    # third of the client's start-up, for nothing on a local socket.
    reactor.connectUNIX(socket_path, factory, timeout=10)
    try:
        root = yield factory.getRootObject()
    except Exception as e:
        if factory.refusal is not None:
            raise ClientError(f"the master refused the connection: {factory.refusal}") from None
        reason = getattr(e, "osError", None) or e
        raise ClientError(f"cannot connect to the master at {socket_path}: {_oserror_text(reason)}") from None
    return root


class _RefusalAwareBroker(pb.Broker):
    """A client broker that recognises the master's refusal line (REFUSED_PREFIX) in place of PB."""

    _head: bytes | None = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            super().dataReceived(data)
            return
        head = self._head + data
        if not (head.startswith(REFUSED_PREFIX) or REFUSED_PREFIX.startswith(head)):
            self._head = None
            super().dataReceived(head)
            return
        self._head = head[:1024]
        if b"\n" in head or len(head) >= 1024:
            line = head[len(REFUSED_PREFIX):].split(b"\n", 1)[0][:500]
            # Shown on the operator's terminal: printable ASCII only.
            refusal = "".join(c if " " <= c <= "~" else "?" for c in line.decode("ascii", "replace"))
            if isinstance(self.factory, _ClientFactory):
                self.factory.refusal = refusal
            transport: Any = self.transport
            transport.loseConnection()


class _ClientFactory(pb.PBClientFactory):
    protocol = _RefusalAwareBroker
    refusal: str | None = None


def _oserror_text(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, int):
        return os.strerror(error)
    text = str(error)
    return text.rstrip(".") or type(error).__name__


def with_master(socket_path: str, work: Callable[[Any], Any]) -> Any:
    """Run `work(root)` (returning a Deferred) against the master and return its result. The reactor runs
    once per process, so one command does all its calls inside one `work`. Raises `Interrupted` on SIGINT
    (the reactor runs without Twisted's signal handlers, so a KeyboardInterrupt would land inside its loop)."""
    import signal

    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    outcome: list[Any] = []

    def interrupted(signum: int, frame: object) -> None:
        if not outcome:
            from .cli import Interrupted

            outcome.append((False, Interrupted()))
        reactor.callFromThread(_stop, reactor)

    @defer.inlineCallbacks
    def go() -> Any:
        try:
            root = yield connect(reactor, socket_path)
            outcome.append((True, (yield work(root))))
        except Exception as e:
            outcome.append((False, e))
        finally:
            _stop(reactor)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        reactor.callWhenRunning(go)
        reactor.run(installSignalHandlers=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _stop(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()
