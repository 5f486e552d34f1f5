"""Credit-based flow control, without I/O.

PB has no flow control and Twisted buffers writes without bound, so each direction of a session carries a window:
the sender counts bytes it sent and the receiver returns credit (`ack`) as it consumes them. The sender pauses
its source (the PTY reader, the operator's stdin) while the window is full.
"""

from __future__ import annotations

from dataclasses import dataclass

from slaveshell.vocabulary.protocol import INPUT_WINDOW, MAX_CHUNK, OUTPUT_WINDOW, ProtocolError

# Bulk streams (no terminal: pipes, `-T`): larger messages and a larger window. Banana refuses any string over
# twisted.spread.banana.SIZE_LIMIT (640 KiB; a receiver drops the whole connection on one), so a bulk message
# stays at 512 KiB, a fifth below it. PB's cost is per message (docs: 4 KiB -> 25 MB/s, 64-256 KiB ->
# ~250 MB/s), so a bulk stream sends fewer, larger ones. Its window holds four of them: throughput, while a
# terminal's window stays small so that a keystroke's echo is never queued behind megabytes.
# Mixed versions: a master from before bulk streams refuses output messages over 64 KiB (the session ends with
# a protocol error), so upgrade masters before their workers.
BULK_CHUNK = 512 * 1024
BULK_WINDOW = 4 * BULK_CHUNK
# One chunk of a `slaveshell cp` file (slaveshell.vocabulary.copying.CHUNK; a framing DATA frame's largest
# payload): also a Banana string on the worker's link, so well below its limit too. Here, beside the other message
# sizes, so that the framing knows it without loading the transfer vocabulary (the shell client never does).
TRANSFER_CHUNK = 256 * 1024


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


# Input (the operator's keystrokes, or what is piped into `-T`) comes the same way: a terminal's in messages of
# MAX_CHUNK at most, so that a Ctrl-C is never queued behind megabytes of typed-ahead input; a bulk stream's in
# messages of up to BULK_CHUNK on every hop (the client's reads, the framed door's INPUT frames, the master's
# relay, the worker's check), with a window of four of them where the master's budget grants it
# (slaveshell.vocabulary.windows.WindowBudget: the grant above INPUT_WINDOW is counted in its total).
# Mixed versions: a worker says in its open reply the largest input message it takes for the session
# (`max_input`); one that says nothing gets MAX_CHUNK messages, and the client is told what the master takes.
INTERACTIVE_INPUT = StreamLimits(MAX_CHUNK, INPUT_WINDOW)
BULK_INPUT = StreamLimits(BULK_CHUNK, BULK_WINDOW)


def worker_input_limits(pty: bool) -> StreamLimits:
    """The input messages a worker takes for a session, and announces in its open reply: a terminal's are
    interactive, a bulk stream's (no terminal) up to BULK_CHUNK."""
    return INTERACTIVE_INPUT if pty else BULK_INPUT


def input_limits(pty: bool, worker_takes: int = MAX_CHUNK) -> StreamLimits:
    """The input limits the master holds a session's operators to: bulk only for a session without a terminal
    whose worker said it takes bulk input messages (`worker_takes`: the largest it announced; MAX_CHUNK when it
    announced none), interactive otherwise."""
    return BULK_INPUT if not pty and worker_takes >= BULK_CHUNK else INTERACTIVE_INPUT


def announced_input(value: object) -> int:
    """The largest input message a worker's open reply announces (its ``max_input``): an integer from MAX_CHUNK to
    BULK_CHUNK; MAX_CHUNK for anything else (a worker from before bulk input says nothing, and an announcement out
    of that range is taken as none: the master never sends a worker more than MAX_CHUNK it did not ask for)."""
    if isinstance(value, bool) or not isinstance(value, int) or not MAX_CHUNK <= value <= BULK_CHUNK:
        return MAX_CHUNK
    return value


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
