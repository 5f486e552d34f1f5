"""Twisted's Banana (PB's encoding) receiving a large string without rebuilding its buffer on every read.

`twisted.spread.banana.Banana.dataReceived` starts each call with ``buffer = self.buffer + chunk`` and, for a
string whose bytes have not all come yet, slices the buffer again (``rest = buffer[pos + 1:]``) before it finds
that it must wait. A worker's bulk output message (512 KiB, slaveshell.flow.BULK_CHUNK) arrives in eight or more
reads of 64 KiB, so the master copied about nine bytes per byte received: a fifth of its main thread during a
`-T cat` (py-spy, twisted 26.10, banana.py lines 181 and 204); likewise the worker receiving an upload's 256 KiB
chunks from `slaveshell cp` (half of its time in Banana). Installed by the master's service and by the worker's
`slave_side.install`.

`install()` wraps ``dataReceived``: when what Banana holds is the start of a string item whose header is complete
(its length read, within Banana's own SIZE_LIMIT and prefix limit), later reads are gathered in a list until the
string is whole, and then handed to the original ``dataReceived`` in one piece. Banana's state between reads is
then what it would have been (``self.buffer`` holds the item's start); everything else (list headers, small
items, the checks and errors) still goes through the original code, which sees the same bytes in the same order.
Memory: the gathered bytes are those Banana would have held (at most one string of SIZE_LIMIT, plus one read).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.spread import banana

# Strings shorter than this are not worth gathering (one or two reads).
GATHER_FROM = 128 * 1024

_HIGH_BIT = 0x80
_STRING = banana.STRING[0]


def string_needs(buffer: bytes, prefix_limit: int) -> int | None:
    """The length `buffer` must reach before Banana can take the string item it starts with, or None when it
    does not start with a complete string header (or the header is one Banana would refuse: it must see it)."""
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
    return pos + 1 + length


def install() -> bool:
    """Wrap `Banana.dataReceived` once per process; True when it is (or was already) wrapped."""
    original: Callable[[banana.Banana, bytes], None] = banana.Banana.dataReceived
    if getattr(original, "slaveshell_gathers", False):
        return True

    def dataReceived(self: banana.Banana, chunk: bytes) -> None:
        gathering: tuple[list[bytes], int, int] | None = self.__dict__.get("_slaveshell_gathering")
        if gathering is not None:
            parts, have, need = gathering
            parts.append(chunk)
            have += len(chunk)
            if have < need:
                self.__dict__["_slaveshell_gathering"] = (parts, have, need)
                return
            self.__dict__["_slaveshell_gathering"] = None
            chunk = b"".join(parts)
            self.buffer = b""
        original(self, chunk)
        held = self.buffer
        needed = string_needs(held, int(self.prefixLimit or 0)) if held else None
        if needed is not None and needed - len(held) >= GATHER_FROM:
            self.__dict__["_slaveshell_gathering"] = ([held], len(held), needed)
            self.buffer = b""

    dataReceived.slaveshell_gathers = True  # type: ignore[attr-defined]
    banana.Banana.dataReceived = dataReceived  # type: ignore[method-assign]
    return True
