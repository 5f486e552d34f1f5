"""Writing to a Twisted transport now, when nothing waits before it, instead of at the reactor's next turn.

Twisted's `FileDescriptor.write` only buffers: the bytes go to the kernel in the reactor's next turn, after an
epoll_ctl to watch the descriptor for writability, a turn of the loop, and an epoll_ctl to stop watching. For a
keystroke that is one more reactor turn in each process it crosses (the master's input to the worker, the
worker's write to the PTY, the echo back to the master). `write_now` hands the bytes to the kernel at once
(os.write or sendmsg(2), scatter-gather: no join) when the transport holds nothing unsent, so the order of
everything written to it is kept; what the kernel does not take, and anything written while something waits,
goes through the transport as before (its buffer, its flow control, its errors: a write error is left to the
transport, which meets it on its own write and closes the connection).

Only a descriptor that carries the bytes as they are: a TCP or UNIX socket of the transport's own (not one a
wrapper such as TLS hands out) without TLS (`transport.TLS`, set by startTLS), or a PTY or pipe (`fd` given).
`write_frame` is the same for a framed message (the master's door, lean calls' payloads) with the choice to wait.
"""

from __future__ import annotations

import os
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


def _ready(transport: object) -> bool:
    """Connected, not closing, nothing unsent (and so nothing an immediate write could overtake)."""
    return (getattr(transport, "connected", False) and not getattr(transport, "disconnecting", True)
            and not buffered_bytes(transport) and hasattr(transport, "dataBuffer"))


def write_now(transport: object, parts: Sequence[bytes], fd: int | None = None) -> None:
    """Write `parts` (one message: a header and a payload, say) to `transport`, in order: to the kernel now when
    it can (module docstring), the rest through `transport.writeSequence`. `fd`: the descriptor to write to for a
    process transport (a PTY's master side); without it, the transport's socket when it is a plain one."""
    rest = [p for p in parts if p]
    if not rest:
        return
    sent = 0
    if _ready(transport):
        try:
            if fd is not None:
                sent = os.write(fd, rest[0] if len(rest) == 1 else b"".join(rest))
            else:
                # The transport's own socket only: a wrapper (TLSMemoryBIOProtocol, any policies.ProtocolWrapper)
                # hands out the wrapped transport's attributes, and writing past it would skip what it does.
                sock = getattr(transport, "__dict__", {}).get("socket")
                if isinstance(sock, socket.socket) and not getattr(transport, "TLS", False):
                    sent = sock.sendmsg(rest)
        except OSError:  # EAGAIN: nothing taken; anything else: the transport's to find
            sent = 0
    while rest and sent >= len(rest[0]):
        sent -= len(rest.pop(0))
    if rest and sent:
        rest[0] = rest[0][sent:]
    if rest:
        transport.writeSequence(rest)  # type: ignore[attr-defined]


def write_frame(transport: object, parts: Sequence[bytes], at_once: bool = True) -> None:
    """Write `parts` (a frame: its header, its payload) to a Twisted transport, in order: `at_once`, as
    `write_now`; otherwise all of it through `transport.writeSequence` (the reactor's next turn)."""
    if at_once:
        write_now(transport, parts)
    else:
        transport.writeSequence(list(parts))  # type: ignore[attr-defined]
