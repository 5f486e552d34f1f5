"""slaveshell.banana_buffer: Banana gathers a large string's reads, and decodes exactly what it did before."""

import os

import pytest
from twisted.spread import banana

from slaveshell import banana_buffer


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
    before = banana.Banana.dataReceived
    yield before
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
