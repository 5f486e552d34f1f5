"""slaveshell.vocabulary.windows: windows that follow the bandwidth-delay product, checked against a simulated link
(a rate cap with a queue, a delay each way, a reader of its own speed), and the receiver's budget."""

from __future__ import annotations

import heapq

import pytest

from slaveshell.vocabulary.flow import CreditWindow
from slaveshell.vocabulary.protocol import ProtocolError
from slaveshell.vocabulary.windows import GAIN, IDLE, TunedWindow, WindowBudget, allowed

KIB = 1024
MIB = 1024 * KIB
BASE = 256 * KIB
CHUNK = 64 * KIB


class Link:
    """A sender with a TunedWindow and an endless source, a link of `rate` bytes/s (its queue unbounded) and
    `rtt` seconds, and a reader that consumes `reader` bytes/s (None: at once) and acknowledges what it consumed."""

    def __init__(self, rtt: float, rate: float, reader: float | None = None, cap: int = 4 * MIB) -> None:
        self.now = 0.0
        self.rtt, self.rate, self.reader = rtt, rate, reader
        self.window = TunedWindow(BASE, cap, lambda: self.now)
        self.events: list[tuple[float, int, str, int]] = []
        self.seq = 0
        self.link_free = 0.0
        self.reader_free = 0.0
        self.delivered = 0
        self.max_in_flight = 0

    def at(self, when: float, what: str, n: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, what, n))

    def send(self) -> None:
        while self.window.is_open:
            self.window.sent(CHUNK)
            self.max_in_flight = max(self.max_in_flight, self.window.in_flight)
            self.link_free = max(self.link_free, self.now) + CHUNK / self.rate
            self.at(self.link_free + self.rtt / 2, "arrive", CHUNK)

    def run(self, seconds: float) -> None:
        self.send()
        while self.events and self.events[0][0] <= seconds:
            self.now, _, what, n = heapq.heappop(self.events)
            if what == "arrive":
                if self.reader is None:
                    self.at(self.now + self.rtt / 2, "ack", n)
                else:
                    self.reader_free = max(self.reader_free, self.now) + n / self.reader
                    self.at(self.reader_free + self.rtt / 2, "ack", n)
            else:
                self.delivered += n
                self.window.acked(n)
                self.send()


def test_a_long_fat_link_grows_the_window_to_a_little_over_its_bandwidth_delay_product() -> None:
    rate = 50e6 / 8  # 50 Mbit/s
    link = Link(rtt=0.1, rate=rate)
    link.run(10.0)
    bdp = rate * 0.1
    assert bdp * 1.05 <= link.window.size <= bdp * GAIN * 1.3
    assert link.delivered / 10.0 >= 0.9 * rate  # the fixed 256 KiB window gave 2.6 MB/s here
    assert link.window.min_rtt == pytest.approx(0.1 + CHUNK / rate, rel=0.2)


def test_at_200_ms_it_reaches_the_link_rate_within_a_few_seconds() -> None:
    rate = 50e6 / 8
    link = Link(rtt=0.2, rate=rate)
    link.run(3.0)
    first = link.delivered
    link.run(6.0)
    assert (link.delivered - first) / 3.0 >= 0.9 * rate
    assert link.window.size > 4 * BASE


def test_the_cap_is_never_passed() -> None:
    link = Link(rtt=0.2, rate=100e6, cap=MIB)
    link.run(5.0)
    assert link.window.size == MIB
    assert link.max_in_flight <= MIB + CHUNK
    assert link.window.peak == MIB


def test_a_slow_reader_keeps_the_window_at_its_base() -> None:
    """The reader, not the link, sets the pace: its credit comes back late, the round trip grows, the window
    stays near its base (a slow reader from the start shows a long round trip from the start: its minimum holds
    the reader's queue of one base window, and GAIN is applied to that)."""
    link = Link(rtt=0.1, rate=50e6 / 8, reader=200 * KIB)
    link.run(20.0)
    assert link.window.size <= GAIN * (BASE + 200 * KIB * 0.1) + CHUNK
    assert link.max_in_flight <= 2 * BASE + CHUNK  # one doubling before the first round showed the queue


def test_a_reader_that_slows_down_shrinks_a_grown_window() -> None:
    link = Link(rtt=0.1, rate=50e6 / 8)
    link.run(5.0)
    assert link.window.size > 2 * BASE
    link.reader = 100 * KIB
    link.reader_free = link.now
    link.run(30.0)
    assert link.window.size == BASE


def test_loopback_stays_at_the_base_window_when_it_is_enough() -> None:
    """A short round trip at a high rate: the product is below the base; the base is the floor."""
    link = Link(rtt=0.0005, rate=200e6)
    link.run(1.0)
    assert link.window.size <= 4 * BASE  # at most a few doublings of noise-free slow start
    link2 = Link(rtt=0.0005, rate=20e6)
    link2.run(1.0)
    assert link2.window.size == BASE


def test_after_idle_it_starts_again_from_the_base() -> None:
    clock = [0.0]
    w = TunedWindow(BASE, 4 * MIB, lambda: clock[0])
    w.size = 2 * MIB  # as grown
    w.sent(CHUNK)
    clock[0] += 0.01
    w.acked(CHUNK)
    clock[0] += IDLE + 0.5
    w.sent(CHUNK)
    assert w.size == BASE


def test_not_window_limited_it_keeps_its_size() -> None:
    clock = [0.0]
    w = TunedWindow(BASE, 4 * MIB, lambda: clock[0])
    for _ in range(20):  # a trickle: one small message per round trip
        w.sent(100)
        clock[0] += 0.1
        w.acked(100)
    assert w.size == BASE


def test_grant_lowers_the_cap_at_once_and_never_below_the_base() -> None:
    w = TunedWindow(BASE, 4 * MIB, lambda: 0.0)
    w.size = 3 * MIB
    w.grant(MIB)
    assert (w.cap, w.size) == (MIB, MIB)
    w.grant(1)
    assert (w.cap, w.size) == (BASE, BASE)


def test_the_peer_acknowledging_too_much_is_still_its_error() -> None:
    w = TunedWindow(BASE, MIB, lambda: 0.0)
    w.sent(10)
    with pytest.raises(ProtocolError):
        w.acked(11)
    assert isinstance(w, CreditWindow)


def test_send_times_are_bounded_however_small_the_messages() -> None:
    w = TunedWindow(BASE, MIB, lambda: 0.0)
    for _ in range(10_000):
        w.sent(1)
    assert len(w._samples) <= 256


def test_allowed_keeps_the_old_overshoot_above_the_grant() -> None:
    assert allowed(BASE, BASE, 4) == 4 * BASE
    assert allowed(2 * MIB, BASE, 4) == 2 * MIB + 3 * BASE


def test_the_budget_bounds_each_stream_and_all_of_them() -> None:
    budget = WindowBudget(per_stream=2 * MIB, total=5 * MIB)
    grants = [budget.take(BASE) for _ in range(4)]
    assert grants[0] == grants[1] == 2 * MIB
    assert grants[2] == BASE + (5 * MIB - 2 * (2 * MIB - BASE))
    assert grants[3] == BASE  # spent: the base window, always
    assert sum(g - BASE for g in grants) <= 5 * MIB
    budget.give(grants[0], BASE)
    assert budget.take(BASE) == 2 * MIB
    for g in grants[1:]:
        budget.give(g, BASE)
    budget.give(2 * MIB, BASE)
    assert budget.used == 0
    assert WindowBudget(per_stream=BASE // 2, total=MIB).take(BASE) == BASE
