"""slaveshell.plumbing.banana_bounds: what a PB peer may make Banana hold, before login and after; Buildbot's own
largest messages pass; a refused connection is closed with one log line and nothing of what it sent."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.spread import banana, jelly, pb

from slaveshell.plumbing import banana_bounds
from slaveshell.plumbing.banana_bounds import ITEM_COST, LOGGED_IN, PRE_LOGIN, PRE_LOGIN_TOTAL


@pytest.fixture(autouse=True)
def bounded() -> None:
    assert banana_bounds.install() and banana_bounds.install()  # once per process


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class Received(pb.Broker):
    """A master's broker (a server's: isClient=0) on an in-memory transport, keeping what it decoded."""

    def __init__(self, login: bool = False) -> None:
        super().__init__(isClient=0)
        self.got: list[object] = []
        self.makeConnection(StringTransport())
        self.transport.clear()
        self.currentDialect = b"none"  # as after the dialect exchange; expressions are kept, not dispatched
        if login:
            self._localCleanup[1] = lambda: None  # what PB's portal leaves once the peer logged in

    def expressionReceived(self, lst: object) -> None:
        self.got.append(lst)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting) or bool(getattr(self.transport, "aborted", False))

    def feed(self, stream: bytes, read: int = 65536) -> None:
        for i in range(0, len(stream), read):
            if self.closed:
                return
            self.dataReceived(stream[i:i + read])


def list_header(n: int) -> bytes:
    out = bytearray()
    banana.int2b128(n, out.extend)
    return bytes(out) + banana.LIST


def test_an_unfinished_list_of_600000_items_before_login_is_refused_early(logged):
    broker = Received()
    broker.feed(list_header(600_000) + banana.encode(1) * 600_000)
    assert broker.closed
    assert broker.listStack == [] and broker.buffer == b""  # nothing of it kept
    assert banana_bounds.pre_login_held() == 0
    (line,) = [banana_bounds_line(e) for e in logged if "Banana may hold" in banana_bounds_line(e)]
    assert "before logging in" in line and "items" in line


def banana_bounds_line(event: LogEvent) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


def test_400_strings_of_512_kib_before_login_are_refused_after_64_kib(logged):
    broker = Received()
    data = os.urandom(512 * 1024)
    stream = list_header(400) + banana.encode(data) * 3  # what it receives before it is closed, and more
    fed = 0
    for i in range(0, len(stream), 65536):
        if broker.closed:
            break
        broker.dataReceived(stream[i:i + 65536])
        fed += 65536
    assert broker.closed and fed <= PRE_LOGIN.bytes + 2 * 65536
    line = next(banana_bounds_line(e) for e in logged if "Banana may hold" in banana_bounds_line(e))
    assert "bytes" in line
    assert data[:16].hex() not in line and "\\x" not in line  # no content in the log


def test_after_login_the_same_attacks_stop_at_the_connections_bound():
    broker = Received(login=True)
    broker.feed(list_header(3) + list_header(600_000) + banana.encode(1) * 600_000)
    assert not broker.closed  # 600,000 items are within a logged-in connection's bound
    broker.feed(list_header(600_000) + banana.encode(2) * (LOGGED_IN.items - 600_000))
    assert broker.closed
    strings = Received(login=True)
    data = b"s" * (512 * 1024)
    strings.feed(list_header(400) + banana.encode(data) * 40)
    assert strings.closed and strings.listStack == []


def test_nested_lists_count_each_list():
    broker = Received()
    broker.feed(list_header(1) * (PRE_LOGIN.items + 10))
    assert broker.closed


def test_what_connections_not_logged_in_hold_together_is_bounded():
    """Each connection under its own bound, together over PRE_LOGIN_TOTAL: the connection that passes it goes."""
    just_under = list_header(PRE_LOGIN.items) + banana.encode(b"x" * 100) * 300  # ~31 KiB, 300 items
    per = len(just_under) + 300 * ITEM_COST
    brokers = [Received() for _ in range(PRE_LOGIN_TOTAL // per + 2)]
    for b in brokers:
        b.feed(just_under)
    closed = [b for b in brokers if b.closed]
    assert len(closed) >= 1 and not brokers[0].closed
    assert banana_bounds.pre_login_held() <= PRE_LOGIN_TOTAL
    for b in brokers:
        b.connectionLost(pb.failure.Failure(Exception("gone")))  # type: ignore[attr-defined]
    assert banana_bounds.pre_login_held() == 0


def buildbot_messages() -> list[object]:
    """Buildbot's largest messages on a worker's connection, as its worker and master send them."""
    lines = 64 * 1024 + 8192  # a flushed update: buffer_size and one more read of empty lines
    update = [b"update", [[[[b"stdout", [b"\n" * lines, list(range(lines)), [time.time()] * lines]], 0]]]]
    upload = [b"write", b"u" * (banana.SIZE_LIMIT - 16)]  # a block as large as Banana sends
    info = [b"info", {b"environ": {f"VAR{i}".encode(): b"v" * 200 for i in range(2000)},
                      b"worker_commands": {f"cmd{i}".encode(): b"3.3" for i in range(40)}}]
    command = [b"startCommand", [b"arg%d" % i for i in range(200_000)]]  # ~1.4 MiB: under ARG_MAX
    return [update, upload, info, command]


def test_buildbots_largest_messages_pass_after_login():
    broker = Received(login=True)
    messages = buildbot_messages()
    stream = b"".join(banana.encode(jelly.jelly(m)) for m in messages)
    broker.feed(stream)
    assert not broker.closed
    assert len(broker.got) == len(messages)


def test_a_workers_login_passes_before_login():
    broker = Received()
    login = [[b"message", 1, 0, b"login", 1, [b"tuple", b"w1"], [b"dictionary"]],
             [b"message", 2, 1, b"respond", 1, [b"tuple", b"x" * 16, [b"remote", 1]], [b"dictionary"]]]
    broker.feed(b"".join(banana.encode(m) for m in login))
    assert not broker.closed and broker.got == login


@given(st.lists(st.recursive(st.integers() | st.binary(max_size=64), lambda kids: st.lists(kids, max_size=8),
                             max_leaves=40), max_size=20),
       st.integers(min_value=1, max_value=300))
def test_anything_within_the_bounds_decodes_as_twisted_does(items, read):
    broker = Received()
    broker.setPrefixLimit(64)
    broker.feed(b"".join(banana.encode(i) for i in items), read)
    assert not broker.closed and broker.got == items


@pytest.mark.parametrize("login", [True, False])
def test_a_long_stream_of_small_messages_read_across_their_boundaries_passes(login):
    """A busy connection's reads rarely end where a message does (a worker streaming a build's log, a copy's
    chunks): what earlier, finished messages took is not held for the one in progress."""
    broker = Received(login=login)
    message = [b"update", b"x" * 1000]
    one = banana.encode(jelly.jelly(message))
    count = (LOGGED_IN.bytes if login else PRE_LOGIN.bytes) * 4 // len(one)
    broker.feed(one * count)  # full 64 KiB reads, as from a saturated socket: one in 1,019 ends on a message
    assert not broker.closed
    assert len(broker.got) == count


@pytest.mark.parametrize("login", [True, False])
def test_a_stream_of_whole_messages_read_across_their_boundaries_is_never_refused(login):
    """A session's output is an endless stream of messages, each well within the bounds, whose reads almost never
    end where a message ends: only the message not yet finished counts, not everything read since the last read
    that happened to end on a boundary."""
    broker = Received(login=login)
    one = banana.encode([b"output", b"x" * (200 if not login else 60_000)])
    per = LOGGED_IN.bytes if login else PRE_LOGIN.bytes
    count = 2 * per // len(one) + 2
    broker.feed(one * count, read=len(one) + 7)  # every read ends inside a message
    assert not broker.closed
    assert len(broker.got) == count
