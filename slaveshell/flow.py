"""Credit-based flow control, without I/O.

PB has no flow control and Twisted buffers writes without bound, so each direction of a session carries a window:
the sender counts bytes it sent and the receiver returns credit (`ack`) as it consumes them. The sender pauses
its source (the PTY reader, the operator's stdin) while the window is full.
"""

from __future__ import annotations

from .protocol import ProtocolError


class CreditWindow:
    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("window size must be positive")
        self.size = size
        self.in_flight = 0
        self.total_sent = 0

    def sent(self, nbytes: int) -> None:
        self.in_flight += nbytes
        self.total_sent += nbytes

    def acked(self, nbytes: int) -> None:
        """Credit returned by the peer. Acknowledging more than was sent is the peer's error."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ProtocolError(f"ack must be a non-negative integer, not {nbytes!r}")
        if nbytes > self.in_flight:
            raise ProtocolError(f"ack of {nbytes} bytes but only {self.in_flight} are unacknowledged")
        self.in_flight -= nbytes

    @property
    def is_open(self) -> bool:
        return self.in_flight < self.size


def chunks(data: bytes, size: int) -> list[bytes]:
    """Split into pieces of at most `size` bytes (an empty input gives no pieces)."""
    return [data[i : i + size] for i in range(0, len(data), size)]
