"""Credit-based flow control, without I/O.

PB has no flow control and Twisted buffers writes without bound, so each direction of a session carries a window:
the sender counts bytes it sent and the receiver returns credit (`ack`) as it consumes them. The sender pauses
its source (the PTY reader, the operator's stdin) while the window is full.
"""

from __future__ import annotations

from dataclasses import dataclass

from slaveshell.vocabulary.protocol import MAX_CHUNK, OUTPUT_WINDOW, ProtocolError

# Bulk streams (no terminal: pipes, `-T`): larger messages and a larger window. Banana refuses any string over
# twisted.spread.banana.SIZE_LIMIT (640 KiB; a receiver drops the whole connection on one), so a bulk message
# stays at 512 KiB, a fifth below it. PB's cost is per message (docs: 4 KiB -> 25 MB/s, 64-256 KiB ->
# ~250 MB/s), so a bulk stream sends fewer, larger ones. Its window holds four of them: throughput, while a
# terminal's window stays small so that a keystroke's echo is never queued behind megabytes.
# Mixed versions: a master from before bulk streams refuses output messages over 64 KiB (the session ends with
# a protocol error), so upgrade masters before their workers.
BULK_CHUNK = 512 * 1024
BULK_WINDOW = 4 * BULK_CHUNK


@dataclass(frozen=True)
class StreamLimits:
    """The output of one session: its largest message and its credit window, in bytes."""

    chunk: int
    window: int


INTERACTIVE = StreamLimits(MAX_CHUNK, OUTPUT_WINDOW)
BULK = StreamLimits(BULK_CHUNK, BULK_WINDOW)


def output_limits(pty: bool) -> StreamLimits:
    """The worker's output limits for a session: interactive with a terminal, bulk without one. The worker
    sends within them and the master holds it to them (with its tolerance for one read of overshoot)."""
    return INTERACTIVE if pty else BULK


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


class Pacer:
    """A token bucket over bytes: at most `burst` at once, then `rate` bytes per second. Times are the caller's
    clock in seconds. Used by the worker to pace a session's output while a build step runs on it."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at: float | None = None

    def spend(self, nbytes: int, now: float) -> float:
        """Take `nbytes` at `now`; the seconds to wait before sending more (0.0: none). A clock that went back
        (a reactor's seconds() is the wall clock, which an administrator or NTP may step) adds nothing and takes
        nothing: counted as negative time, a step back of an hour held a session's output for an hour."""
        if self.at is not None:
            self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
