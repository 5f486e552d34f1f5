"""Twisted's Banana (PB's encoding) receiving without copying what it holds at every item, and in large reads.

`twisted.spread.banana.Banana.dataReceived` starts each call with ``buffer = self.buffer + chunk`` and, at every
item it parses, slices the rest of the buffer (``rest = buffer[pos + 1:]``): a read holding n items is copied
about n times, and a string whose bytes have not all come yet is copied again at each read until it is whole. A
worker's bulk output message (512 KiB, slaveshell.vocabulary.flow.BULK_CHUNK) arriving in 64 KiB reads cost the
master about nine copies per byte received (a fifth of its main thread during a `-T cat`: py-spy, twisted 26.10,
banana.py lines 181 and 204); a read of a megabyte holding four transfer chunks as lean calls (five items each)
would be copied twenty times. Installed by the master's service and by the worker's `slave_side.install`.

`install()` replaces ``dataReceived`` with the same parser working by offsets into the read (`_parse`): each item
is made in one copy (a string) or none, whatever the read holds; a string whose bytes have not all come is
gathered, the reads' bytes kept as they are (memoryviews), and made in one copy (a join) once whole; only a few
bytes of an unfinished item header are ever held and joined to the next read. Every check, error, item and
call of Banana's is as before, in the same order: the prefix limit (both of Banana's messages), SIZE_LIMIT for a
list or a string, the type bytes, the vocabulary of the pb dialect, `gotItem` for each item and each list its
item completes. Memory: the gathered bytes are those Banana would have held (at most one string of SIZE_LIMIT,
plus the reads it came in).

On a connection whose peer has logged in (`FIT_READS`, set by slaveshell.plumbing.banana_bounds) the transport
reads up to READ_SIZE at once instead of Twisted's 64 KiB: a reactor turn and a read take two of a transfer's
256 KiB chunks, or a bulk stream's 512 KiB message, instead of two reads or more per message; a peer not logged in
is read at the transport's own size.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Protocol, cast

from twisted.spread import banana

# What a logged-in peer's connection reads at once: two transfer chunks, or a bulk stream's message. (1 MiB cost
# a routed `-T` stream's master A more: its reads' buffers, held while a string is gathered, made the heap grow
# and shrink, 50-114 thousand page faults per GB against 12 thousand; bench/README.md.)
READ_SIZE = 512 * 1024
# The protocol's attribute saying its reads may be large (its peer logged in: slaveshell.plumbing.banana_bounds).
FIT_READS = "_slaveshell_fit_reads"
# The protocol's attribute holding a string being gathered: (its bytes so far, their length, the string's length).
GATHERING = "_slaveshell_gathering"

_HIGH_BIT = re.compile(rb"[\x80-\xff]")  # the first byte of an item that is not its length prefix
_LIST, _STRING, _INT, _NEG, _LONGINT, _LONGNEG, _VOCAB, _FLOAT = (t[0] for t in (
    banana.LIST, banana.STRING, banana.INT, banana.NEG, banana.LONGINT, banana.LONGNEG, banana.VOCAB,
    banana.FLOAT))
_DOUBLE = struct.Struct("!d")


class _Buffered(Protocol):
    bufferSize: int  # Twisted's FileDescriptor: what its TCP and UNIX transports read at once


def install() -> bool:
    """Replace `Banana.dataReceived` once per process; True when it is (or was already) replaced."""
    original: Callable[[banana.Banana, bytes], None] = banana.Banana.dataReceived
    if getattr(original, "slaveshell_gathers", False):
        return True

    def dataReceived(self: banana.Banana, chunk: bytes) -> None:
        _parse(self, chunk)
        _read_size(self, READ_SIZE if self.__dict__.get(FIT_READS) else None)

    dataReceived.slaveshell_gathers = True  # type: ignore[attr-defined]
    dataReceived.slaveshell_original = original  # type: ignore[attr-defined]  # Twisted's, for tests to compare
    banana.Banana.dataReceived = dataReceived  # type: ignore[method-assign]
    return True


def _close_lists(protocol: banana.Banana) -> None:
    """The lists the last item completed, each to `gotItem`, as the end of Banana's loop does."""
    stack = protocol.listStack
    while stack and len(stack[-1][1]) == stack[-1][0]:
        protocol.gotItem(stack.pop()[1])


def _parse(protocol: banana.Banana, chunk: bytes) -> None:
    """Banana's `dataReceived`, by offsets into the read (the module's docstring). Raises as Banana does; what it
    holds then is the unfinished item, as Banana's `buffer` would."""
    state = protocol.__dict__
    gathering: tuple[list[bytes | memoryview], int, int] | None = state.get(GATHERING)
    pos = 0
    if gathering is not None:
        parts, have, need = gathering
        lacking = need - have
        if len(chunk) < lacking:
            parts.append(chunk)
            state[GATHERING] = (parts, have + len(chunk), need)
            return
        state[GATHERING] = None
        parts.append(memoryview(chunk)[:lacking])
        protocol.buffer = b""
        protocol.gotItem(b"".join(parts))
        _close_lists(protocol)
        if lacking == len(chunk):
            return
        data, pos = chunk, lacking
    elif protocol.buffer:
        data = protocol.buffer + chunk  # a few bytes of an item's header held: joined to this read
    else:
        data = chunk
    size = len(data)
    stack = protocol.listStack
    got_item = protocol.gotItem
    prefix_limit = cast(int, protocol.prefixLimit)  # set as the connection starts (None before, as Banana's)
    start = pos
    try:
        while pos < size:
            start = pos
            found = _HIGH_BIT.search(data, pos)
            if found is None:
                if size - pos > prefix_limit:
                    raise banana.BananaError(f"Security precaution: more than {prefix_limit} bytes of prefix")
                break  # the rest of the header in the next read
            end = found.start()
            if end - pos > prefix_limit:
                raise banana.BananaError(f"Security precaution: longer than {prefix_limit} bytes worth of prefix")
            num = banana.b1282int(data[pos:end])
            kind = data[end]
            body = end + 1
            if kind == _STRING:
                if num > banana.SIZE_LIMIT:
                    raise banana.BananaError("Security precaution: String too long.")
                if size - body < num:  # gathered from the next reads, made in one copy once whole
                    state[GATHERING] = ([memoryview(data)[body:]], size - body, num)
                    start = pos = size
                    break
                pos = body + num
                got_item(data[body:pos])
            elif kind == _LIST:
                if num > banana.SIZE_LIMIT:
                    raise banana.BananaError("Security precaution: List too long.")
                stack.append((num, []))
                pos = body
            elif kind == _INT or kind == _LONGINT:
                pos = body
                got_item(num)
            elif kind == _NEG or kind == _LONGNEG:
                pos = body
                got_item(-num)
            elif kind == _VOCAB:
                pos = body
                item = protocol.incomingVocabulary[num]
                if protocol.currentDialect == b"pb":
                    got_item(item)
                else:
                    raise NotImplementedError(f"Invalid item for pb protocol {item!r}")
            elif kind == _FLOAT:
                if size - body < 8:
                    break
                pos = body + 8
                got_item(_DOUBLE.unpack_from(data, body)[0])
            else:
                raise NotImplementedError(f"Invalid Type Byte {data[end:end + 1]!r}")
            while stack and len(stack[-1][1]) == stack[-1][0]:
                got_item(stack.pop()[1])
        else:
            start = size  # every item whole: nothing held
    except BaseException:
        protocol.buffer = data[start:]
        raise
    protocol.buffer = data[start:] if start < size else b""


def _read_size(protocol: banana.Banana, size: int | None) -> None:
    """The transport's next reads: `size` bytes, or its own size again (None). Nothing for a transport that does
    not read by `bufferSize` (a test's, TLS)."""
    transport: object = protocol.transport
    own = protocol.__dict__.get("_slaveshell_read_size")
    if own is None:
        if size is None:
            return
        own = getattr(transport, "bufferSize", None)
        if not isinstance(own, int) or isinstance(own, bool):
            return
        protocol.__dict__["_slaveshell_read_size"] = own
    size = own if size is None else size
    if cast(_Buffered, transport).bufferSize != size:
        cast(_Buffered, transport).bufferSize = size
