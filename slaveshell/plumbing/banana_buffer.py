"""Twisted's Banana (PB's encoding) receiving a large string without rebuilding its buffer on every read.

`twisted.spread.banana.Banana.dataReceived` starts each call with ``buffer = self.buffer + chunk`` and, for a
string whose bytes have not all come yet, slices the buffer again (``rest = buffer[pos + 1:]``) before it finds
that it must wait. A worker's bulk output message (512 KiB, slaveshell.vocabulary.flow.BULK_CHUNK) arrives in eight or
more reads of 64 KiB, so the master copied about nine bytes per byte received: a fifth of its main thread during a
`-T cat` (py-spy, twisted 26.10, banana.py lines 181 and 204); likewise the worker receiving an upload's 256 KiB
chunks from `slaveshell cp` (half of its time in Banana). Installed by the master's service and by the worker's
`slave_side.install`.

`install()` wraps ``dataReceived``: when what Banana holds is the start of a string item whose header is complete
(its length read, within Banana's own SIZE_LIMIT and prefix limit), later reads are gathered in a list until the
string is whole; the string is then made in one copy (a join of memoryviews of the reads) and handed to Banana's
own ``gotItem``, and the lists it completes are closed, as the end of Banana's loop does; what follows it goes to
the original ``dataReceived``. Banana's state between reads is what it would have been; everything else (list
headers, small items, the checks and errors) still goes through the original code, which sees the same bytes in
the same order. Memory: the gathered bytes are those Banana would have held (at most one string of SIZE_LIMIT,
plus one read).

The reads are fitted to the strings, on a connection whose peer has logged in (`FIT_READS`, set by
slaveshell.plumbing.banana_bounds): while a string is gathered, the transport reads what it still lacks (one
`recv` of up to SIZE_LIMIT instead of several of 64 KiB, and none of the next message's bytes, which Banana would
copy at each of its items); the read after it is HEAD_READ bytes, which holds the next message's small items
(a transfer's or a bulk stream's call header) and the start of its string; then the transport's own size again.
A transfer's 256 KiB chunk arrives in two reads instead of four, and the master copies each byte it relays twice
less (measured: bench/README.md, "cp down").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.spread import banana

# Strings shorter than this are not worth gathering (one or two reads).
GATHER_FROM = 128 * 1024

# The read after a gathered string: the next message's head (its list header and small items) and the start of its
# string, so that Banana's copies at each item are of a few KiB, not of a 64 KiB read.
HEAD_READ = 4096
# The protocol's attribute saying its reads may be fitted (its peer logged in: slaveshell.plumbing.banana_bounds).
FIT_READS = "_slaveshell_fit_reads"

_HIGH_BIT = 0x80


class _Buffered(Protocol):
    bufferSize: int  # Twisted's FileDescriptor: what its TCP and UNIX transports read at once
_STRING = banana.STRING[0]


def string_header(buffer: bytes, prefix_limit: int) -> tuple[int, int] | None:
    """(header length, string length) when `buffer` starts with a complete string header, or None when it does
    not (or the header is one Banana would refuse: it must see it)."""
    pos = 0
    for byte in buffer[: prefix_limit + 1]:
        if byte >= _HIGH_BIT:
            break
        pos += 1
    else:
        return None
    if pos == 0 or pos > prefix_limit or buffer[pos] != _STRING:
        return None
    length = banana.b1282int(buffer[:pos])
    if length > banana.SIZE_LIMIT:
        return None
    return pos + 1, length


def install() -> bool:
    """Wrap `Banana.dataReceived` once per process; True when it is (or was already) wrapped."""
    original: Callable[[banana.Banana, bytes], None] = banana.Banana.dataReceived
    if getattr(original, "slaveshell_gathers", False):
        return True

    def dataReceived(self: banana.Banana, chunk: bytes) -> None:
        gathered = _take(self, chunk)
        if self.__dict__.get(FIT_READS):
            gathering = self.__dict__.get("_slaveshell_gathering")
            if gathering is not None:
                _read_size(self, gathering[2] - gathering[1])
            else:
                _read_size(self, HEAD_READ if gathered else None)

    def _take(self: banana.Banana, chunk: bytes) -> bool:
        """`chunk` to Banana, gathered or not; True when it completed a gathered string."""
        gathering: tuple[list[bytes], int, int, int] | None = self.__dict__.get("_slaveshell_gathering")
        gathered = False
        if gathering is not None:
            parts, have, need, skip = gathering
            parts.append(chunk)
            have += len(chunk)
            if have < need:
                self.__dict__["_slaveshell_gathering"] = (parts, have, need, skip)
                return False
            self.__dict__["_slaveshell_gathering"] = None
            gathered = True
            # The string in one copy (memoryviews of the reads joined), handed to Banana's own gotItem as its
            # loop would; what follows it goes through the original code.
            cut = len(chunk) - (have - need)
            views = [memoryview(p) for p in parts]
            views[0] = views[0][skip:]
            views[-1] = views[-1][:cut]
            item = b"".join(views)
            rest = chunk[cut:]
            self.buffer = b""
            self.gotItem(item)
            stack = self.listStack  # the lists this item completes, as the end of Banana's loop does
            while stack and len(stack[-1][1]) == stack[-1][0]:
                self.gotItem(stack.pop()[1])
            if not rest:
                return gathered
            chunk = rest
        original(self, chunk)
        held = self.buffer
        header = string_header(held, int(self.prefixLimit or 0)) if held else None
        if header is not None and header[0] + header[1] - len(held) >= GATHER_FROM:
            self.__dict__["_slaveshell_gathering"] = ([held], len(held), header[0] + header[1], header[0])
            self.buffer = b""
        return gathered

    dataReceived.slaveshell_gathers = True  # type: ignore[attr-defined]
    dataReceived.slaveshell_original = original  # type: ignore[attr-defined]  # Twisted's, for tests to compare
    banana.Banana.dataReceived = dataReceived  # type: ignore[method-assign]
    return True


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
    cast(_Buffered, transport).bufferSize = own if size is None else size
