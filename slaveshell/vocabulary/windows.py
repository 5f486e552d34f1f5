"""Credit windows that follow the bandwidth-delay product, without I/O: `TunedWindow` (a sender's window, sized
from its own acknowledgements) and `WindowBudget` (what a receiver may grant above the base windows, per session
and in total).

A fixed window caps a stream at one window per round trip (256 KiB: 2.6 MB/s at 100 ms, 1.3 MB/s at 200 ms,
whatever the link). As TCP's autotuning and HPN-SSH do, a `TunedWindow` measures the round trip from its
acknowledgements (the time from sending a byte to its credit coming back) and the rate they come at, once per
round (from a send until that send's credit is back):

- window-limited (the window was full at some point in the round) while the round trip stays near its minimum
  (within `QUEUE_FREE` of it: nothing queues on the way), the window is the limit: it doubles, up to its cap;
- window-limited while the round trip has grown (bytes queue on the link, or a slow reader holds its credit
  back), it is set to `GAIN` times the bytes delivered per minimum round trip (the bandwidth-delay product; the
  rate is the highest of the window-limited rounds that ended in the last `RATE_FOR` seconds, as BBR's filter: a
  round that began with a smaller window delivered less than the link carries):
  a little over the product, so the link stays busy with little queued (what is queued arrives after a Ctrl-C and
  delays the prompt); a slow reader's rate makes it small again;
- not window-limited (the source had less to send), it stays; after `IDLE` seconds without traffic it starts
  again from the base (TCP's restart after idle, RFC 2861).

It never goes below the base window (the fixed size the hop had before: what the receiver always accepts) nor
above its cap, which the receiver grants (`WindowBudget`): the receiver holds the bound, the sender only decides
how much of it to use. A receiver enforces `allowed(grant, base)`: the grant plus the overshoot it tolerated before.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from slaveshell.vocabulary.flow import CreditWindow

# The largest window a receiver grants one stream (the master's own bounds may make it smaller:
# master_side.operators.bounds.ResourceBounds.connection_buffer).
WINDOW_MAX = 16 * 1024 * 1024
# A round trip within this factor of the minimum means nothing queues on the way.
QUEUE_FREE = 1.1
# The window, once the link is the limit: this many times the bytes delivered per minimum round trip.
GAIN = 1.25
# The bandwidth-delay product is taken from the highest delivery rate of the window-limited rounds that ended this
# many seconds ago at most (and of the last one, however long it took: a slow reader's rounds are long).
RATE_FOR = 1.0
# Without traffic for this long (seconds, or four minimum round trips if longer), the window starts from its base.
IDLE = 1.0
# Send times kept for measuring round trips: at most this many bytes offsets (more sends are not timed).
MAX_SAMPLES = 256
# Sizes chosen, kept for reporting (bench/, the worker's log).
HISTORY = 32


class TunedWindow(CreditWindow):
    """A CreditWindow whose `size` follows the bandwidth-delay product between `base` and `cap` (see above).
    `clock`: seconds, monotonic enough (a step back only makes one round's figures wrong)."""

    def __init__(self, base: int, cap: int, clock: Callable[[], float]) -> None:
        super().__init__(base)
        self.base = base
        self.cap = max(base, cap)
        self.clock = clock
        self.total_acked = 0
        self.min_rtt: float | None = None
        self.last_rtt: float | None = None
        self.peak = base
        # (sizes chosen, in order, at most HISTORY): what the tuner decided, for reports.
        self.history: collections.deque[int] = collections.deque(maxlen=HISTORY)
        self._samples: collections.deque[tuple[int, float]] = collections.deque()
        self._round_start: float | None = None
        self._round_marker = 0
        self._round_acked = 0
        self._limited = False
        self._active_at: float | None = None
        self._rates: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)  # (when, bytes/s)

    def grant(self, cap: int) -> None:
        """The receiver's cap (never below the base). A smaller one takes effect at once for what is sent next."""
        self.cap = max(self.base, cap)
        self._resize(min(self.size, self.cap))

    def sent(self, nbytes: int) -> None:
        now = self.clock()
        if (not self.in_flight and self._active_at is not None
                and now - self._active_at > max(IDLE, 4 * (self.min_rtt or 0.0))):
            self._resize(self.base)
            self._round_start = None
        super().sent(nbytes)
        self._active_at = now
        if len(self._samples) < MAX_SAMPLES:
            self._samples.append((self.total_sent, now))
        if self._round_start is None:
            self._begin_round(now)
        if self.in_flight >= self.size:
            self._limited = True

    def acked(self, nbytes: int) -> None:
        super().acked(nbytes)
        now = self.clock()
        self._active_at = now
        self.total_acked += nbytes
        sample = None
        while self._samples and self._samples[0][0] <= self.total_acked:
            sample = now - self._samples.popleft()[1]
        if sample is not None:
            self.last_rtt = max(sample, 1e-6)
            # Never measured again upwards: a sample taken later may hold a queue (a slow reader's), and an old
            # minimum errs on the small side (a smaller window), never on memory.
            if self.min_rtt is None or self.last_rtt < self.min_rtt:
                self.min_rtt = self.last_rtt
        if self._round_start is not None and self.total_acked >= self._round_marker:
            self._end_round(now)

    def _begin_round(self, now: float) -> None:
        self._round_start, self._round_marker, self._round_acked = now, self.total_sent, self.total_acked
        self._limited = self.in_flight >= self.size

    def _end_round(self, now: float) -> None:
        assert self._round_start is not None
        elapsed = now - self._round_start
        delivered = self.total_acked - self._round_acked
        if self._limited and self.min_rtt is not None and self.last_rtt is not None and elapsed > 0:
            while self._rates and now - self._rates[0][0] > RATE_FOR:
                self._rates.popleft()
            self._rates.append((now, delivered / elapsed))
            if self.last_rtt <= QUEUE_FREE * self.min_rtt:
                self._resize(2 * self.size)
            else:
                self._resize(int(GAIN * max(rate for _, rate in self._rates) * self.min_rtt))
        if self.in_flight:
            self._begin_round(now)
        else:
            self._round_start = None

    def _resize(self, size: int) -> None:
        size = min(self.cap, max(self.base, size))
        if size != self.size:
            self.size = size
            self.peak = max(self.peak, size)
            self.history.append(size)


def allowed(grant: int, base: int, tolerance: int) -> int:
    """What a receiver lets a sender have unacknowledged: the grant, plus the overshoot it tolerated on the base
    window before (`tolerance` - 1 base windows: a read's worth past a full window)."""
    return grant + base * (tolerance - 1)


class WindowBudget:
    """What a receiver grants above its streams' base windows: at most `per_stream` bytes of window per stream,
    and `total` bytes above the base windows in all. A stream asks once (`take`) and gives back at its end
    (`give`); one that finds the budget spent gets what is left (its base window at worst)."""

    def __init__(self, per_stream: int, total: int) -> None:
        self.per_stream = per_stream
        self.total = total
        self.used = 0

    def take(self, base: int) -> int:
        """A stream's window (>= `base`): the grant above the base is counted until `give`."""
        extra = max(0, min(self.per_stream - base, self.total - self.used))
        self.used += extra
        return base + extra

    def give(self, grant: int, base: int) -> None:
        self.used = max(0, self.used - max(0, grant - base))
