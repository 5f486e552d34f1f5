"""slaveshell.plumbing.banana_buffer: Banana parses by offsets, gathers a string's reads, reads a logged-in peer in
large reads, and decodes exactly what it did before."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import banana

from slaveshell.plumbing import banana_bounds, banana_buffer


def decoded(stream: bytes, read: int) -> tuple[list[object], bool]:
    """What a Banana decodes from `stream` fed in reads of `read` bytes, and whether it refused it."""
    got: list[object] = []
    b = banana.Banana()
    b.setPrefixLimit(64)  # as a connection's start does (banana.setPrefixLimit's default)
    b._selectDialect(b"none")
    b.expressionReceived = got.append  # type: ignore[method-assign]
    try:
        for i in range(0, len(stream), read):
            b.dataReceived(stream[i : i + read])
    except banana.BananaError:
        return got, True
    return got, False


@pytest.fixture
def original():
    """Twisted's own dataReceived, in place for the test (whatever installed the gathering before it)."""
    before = banana.Banana.dataReceived
    twisted = getattr(before, "slaveshell_original", before)
    banana.Banana.dataReceived = twisted  # type: ignore[method-assign]
    yield twisted
    banana.Banana.dataReceived = before  # type: ignore[method-assign]


def test_large_and_small_items_in_any_reads_decode_as_before(original):
    big = os.urandom(512 * 1024)
    items = [[b"output", 1, big], [b"ack", 4096], [b"output", 2, b"x"], [b"output", 1, big[:300_000]], [b"", [1, [2]]]]
    stream = b"".join(banana.encode(item) for item in items)
    # Reads that end exactly where the first big string ends, and one byte either side.
    edge = stream.index(big) + len(big)
    reads = (1000, 65536, 65537, 300_000, len(stream), edge, edge - 1, edge + 1, edge // 3)
    before = {read: decoded(stream, read) for read in reads}
    assert banana_buffer.install() and banana_buffer.install()  # once per process
    for read, result in before.items():
        assert decoded(stream, read) == result
        assert result == (items, False)


def test_a_string_over_the_limit_is_still_refused(original):
    header = bytearray()
    banana.int2b128(banana.SIZE_LIMIT + 1, header.extend)
    stream = bytes(header) + banana.STRING + b"x" * 200_000
    banana_buffer.install()
    assert decoded(stream, 65536) == ([], True)


def wire(item: object) -> bytes:
    """Banana's encoding of `item`, strings over SIZE_LIMIT included (a rogue peer's, which Banana never sends)."""
    head = bytearray()
    if isinstance(item, list):
        banana.int2b128(len(item), head.extend)
        return bytes(head) + banana.LIST + b"".join(wire(x) for x in item)
    if isinstance(item, bytes):
        banana.int2b128(len(item), head.extend)
        return bytes(head) + banana.STRING + item
    return banana.encode(item)


# Strings of every size class, and around Banana's limit.
SIZES = [0, 1, 5, 4096, 200_000, banana.SIZE_LIMIT, banana.SIZE_LIMIT + 1]
items = st.recursive(st.sampled_from(SIZES).map(lambda n: b"s" * n) | st.integers(-(2**70), 2**70)
                     | st.floats(allow_nan=False), lambda children: st.lists(children, max_size=3), max_leaves=5)


@settings(max_examples=60, deadline=None)
@given(sent=st.lists(items, min_size=1, max_size=3), cuts=st.lists(st.integers(0, 2_000_000), max_size=12),
       spoil=st.none() | st.tuples(st.integers(0, 2_000_000), st.integers(0, 255)))
def test_whatever_a_peer_sends_in_whatever_reads_decodes_and_fails_as_twisted_does(original, sent, cuts, spoil):
    """A rogue worker's stream (items, strings over the limit, a byte changed anywhere) cut into arbitrary reads:
    the same items, the same refusal, the same lists left open, with and without the gathering."""
    stream = b"".join(wire(item) for item in sent)
    if spoil is not None:
        at = spoil[0] % (len(stream) + 1)
        stream = stream[:at] + bytes([spoil[1]]) + stream[at:]
    reads = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})

    def run() -> tuple[object, ...]:
        got: list[object] = []
        b = banana.Banana()
        b.setPrefixLimit(64)
        b._selectDialect(b"none")
        b.expressionReceived = got.append  # type: ignore[method-assign]
        try:
            for start, end in zip(reads, reads[1:], strict=False):
                b.dataReceived(stream[start:end])
        except Exception as e:  # BananaError, and what Banana raises on a bad type byte or vocabulary number
            return got, type(e), str(e)
        return got, [(n, len(held)) for n, held in b.listStack]

    banana.Banana.dataReceived = original  # Twisted's (the fixture runs once for all examples)
    before = run()
    banana_buffer.install()
    assert repr(run()) == repr(before)  # repr: a decoded NaN is not equal to itself


class _Transport:
    bufferSize = 65536  # Twisted's FileDescriptor's


def test_a_logged_in_peers_reads_are_large_and_hold_several_messages():
    # Six transfer chunks of 256 KiB as lean calls, then a small message; each read takes what the transport's
    # bufferSize says, as Twisted's doRead does.
    chunks = [os.urandom(256 * 1024) for _ in range(6)]
    stream = b"".join(banana.encode([b"slaveshell", 7, b"data", chunk]) for chunk in chunks)
    stream += banana.encode([b"slaveshell", 7, b"ack", 5])
    got: list[object] = []
    assert banana_bounds.install()  # over banana_buffer's, as the master and the worker run it
    b = banana.Banana()
    b.setPrefixLimit(64)
    b._selectDialect(b"none")
    b.expressionReceived = got.append  # type: ignore[method-assign]
    transport = _Transport()
    b.transport = transport  # type: ignore[assignment]
    b.isClient = True  # a connection this process opened: logged in (banana_bounds.logged_in)
    reads = []
    pos = 0
    while pos < len(stream):
        n = min(transport.bufferSize, len(stream) - pos)
        reads.append(n)
        b.dataReceived(stream[pos:pos + n])
        pos += n
    assert got == [[b"slaveshell", 7, b"data", chunk] for chunk in chunks] + [[b"slaveshell", 7, b"ack", 5]]
    # The first read at the transport's size, then READ_SIZE each: several chunks a read.
    assert reads[0] == 65536 and set(reads[1:-1]) == {banana_buffer.READ_SIZE} >= {2 * 256 * 1024}
    assert len(reads) == 1 + -(-(len(stream) - 65536) // banana_buffer.READ_SIZE)
    assert transport.bufferSize == banana_buffer.READ_SIZE
    assert not b.buffer and b.__dict__.get(banana_buffer.GATHERING) is None


def test_a_string_split_across_reads_is_made_in_one_copy_of_whole_reads():
    # A string gathered from three reads: each read's bytes are kept as they came (no join until it is whole).
    assert banana_buffer.install()
    got: list[object] = []
    b = banana.Banana()
    b.setPrefixLimit(64)
    b._selectDialect(b"none")
    b.expressionReceived = got.append  # type: ignore[method-assign]
    chunk = os.urandom(300_000)
    stream = banana.encode([b"data", chunk, 3])
    b.dataReceived(stream[:100_000])
    parts, have, need = b.__dict__[banana_buffer.GATHERING]
    assert need == len(chunk) and have == 100_000 - stream.index(chunk) and not b.buffer
    middle = stream[100_000:200_000]
    b.dataReceived(middle)
    assert b.__dict__[banana_buffer.GATHERING][0][-1] is middle  # kept, not copied
    b.dataReceived(stream[200_000:])
    assert got == [[b"data", chunk, 3]] and b.__dict__[banana_buffer.GATHERING] is None and not b.buffer


def test_a_peer_not_logged_in_is_read_at_the_transports_size():
    assert banana_bounds.install()
    b = banana.Banana()
    b.setPrefixLimit(64)
    b._selectDialect(b"none")
    b.expressionReceived = lambda _item: None  # type: ignore[method-assign]
    transport = _Transport()
    b.transport = transport  # type: ignore[assignment]
    b.isClient = False  # a peer that connected to us and has not logged in
    stream = banana.encode([b"x", os.urandom(300 * 1024)])
    try:
        b.dataReceived(stream[:60000])
        assert transport.bufferSize == 65536 and "bufferSize" not in transport.__dict__
    finally:
        banana_bounds._forget(b)  # what it held no longer counts in the process's pre-login total (other tests')
