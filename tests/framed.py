"""A framed-hop client (slaveshell.vocabulary.framing) on Twisted, for tests that run the master's socket in their own
reactor (the real client, slaveshell.client.connection, blocks). `connect(reactor, path)` fires a `FramedClient` once
the master's magic is in, or fails with `Refused` and the master's refusal line."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import Control, FrameType, Op


class Refused(Exception):
    """The master refused the connection; the message is its line."""


class FramedClient(protocol.Protocol):
    def __init__(self) -> None:
        self.decoder = framing.Decoder(refused=frozenset({FrameType.INPUT}), max_control=framing.MAX_ANSWER)
        self.ready: defer.Deferred[FramedClient] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.head = b""
        self.greeted = False
        self.pending: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self.received: list[Any] = []  # frames that are not answers: Control, or framing.Frame for bytes
        self.ids = itertools.count(1)

    def connectionMade(self) -> None:
        self.transport.write(framing.MAGIC)

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted:
            head = self.head + data
            found = head.find(framing.MAGIC)
            if found < 0:
                self.head = head
                return
            self.greeted = True
            self.ready.callback(self)
            data = head[found + len(framing.MAGIC):]
        for frame in self.decoder.feed(data):
            if frame.type is not FrameType.CONTROL:
                self.received.append(frame)
                continue
            message = framing.parse_control(frame.payload, framing.FROM_MASTER)
            waiting = self.pending.pop(message.call_id or 0, None) if message.op is Op.ANSWER else None
            if waiting is not None:
                waiting.callback({k: v for k, v in message.fields.items() if k != "id"})
            else:
                self.received.append(message)

    def call(self, op: Op, **fields: object) -> defer.Deferred[dict[str, Any]]:
        """The answer's fields (with "ok" and "error" or the result's)."""
        call_id = next(self.ids)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.pending[call_id] = d
        self.transport.write(framing.control(op, id=call_id, **fields))
        return d

    def controls(self) -> list[Control]:
        return [m for m in self.received if isinstance(m, Control)]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.greeted:
            line = self.head[len(framing.REFUSED_PREFIX):].split(b"\n")[0].decode("ascii", "replace")
            self.ready.errback(Refused(line) if self.head.startswith(framing.REFUSED_PREFIX) else reason)
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(reason)
        self.lost.callback(None)

    def close(self) -> None:
        self.transport.loseConnection()


def connect(reactor: Any, path: str) -> defer.Deferred[FramedClient]:
    creator = protocol.ClientCreator(reactor, FramedClient)
    return creator.connectUNIX(path).addCallback(lambda client: client.ready)
