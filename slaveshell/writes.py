"""Writing a message's header and a large payload to a Twisted transport without joining them (a copy of the
payload in Python): `write_frame`, and `buffered_bytes`, what a transport holds unsent. Used by the master's
framed door (master_side.wire_sink) and by lean calls on the worker's PB connection (slaveshell.lean_calls), on
both the master and the worker.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Protocol, cast


class _WriteBuffer(Protocol):
    """Twisted's `abstract.FileDescriptor` write buffer: `dataBuffer` (bytes waiting, from `offset` on) and
    `_tempDataLen` (bytes written since, not yet joined to it)."""

    dataBuffer: bytes
    offset: int
    _tempDataLen: int


def buffered_bytes(transport: object) -> int:
    """Bytes written to `transport` and not yet taken by the kernel (0 when the transport does not say)."""
    buffer = cast(_WriteBuffer, transport)  # checked here: a transport without these attributes counts as empty
    try:
        return len(buffer.dataBuffer) - int(buffer.offset) + int(buffer._tempDataLen)
    except (AttributeError, TypeError):
        return 0


def write_frame(transport: object, parts: Sequence[bytes], at_once: bool = True) -> None:
    """Write `parts` (a frame: its header, its payload) to a Twisted transport, in order. `at_once`, when the
    transport holds nothing unsent and is a socket's own (not a wrapper's), without TLS started on it: to the
    kernel now in one sendmsg(2) (scatter-gather: no join); the rest, or all of them otherwise, through
    `transport.writeSequence`. A socket error leaves everything to the transport, which meets the same error on
    its own write and closes the connection."""
    rest = list(parts)
    # The transport's own socket only: a wrapper (TLSMemoryBIOProtocol, any policies.ProtocolWrapper) hands out
    # the wrapped transport's attributes, and writing past it would skip what it does (TLS).
    sock = getattr(transport, "__dict__", {}).get("socket")
    if (at_once and isinstance(sock, socket.socket) and getattr(transport, "connected", False)
            and not getattr(transport, "disconnecting", True) and not getattr(transport, "TLS", False)
            and not buffered_bytes(transport)):
        try:
            sent = sock.sendmsg(rest)
        except OSError:  # EAGAIN: nothing taken; anything else: the transport's to find
            sent = 0
        while rest and sent >= len(rest[0]):
            sent -= len(rest.pop(0))
        if rest and sent:
            rest[0] = rest[0][sent:]
    if rest:
        transport.writeSequence(rest)  # type: ignore[attr-defined]
