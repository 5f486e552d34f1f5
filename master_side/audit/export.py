"""Reading transcripts as operators get them: one self-contained asciicast v2 stream per session.

A session with bulk output keeps it raw in an attachment (`<name>.bin`, master_side.audit.transcripts) and refers to
it with `a` events; a terminal's output that is not UTF-8 keeps its exact bytes there too, named by an `oa` event
after its `o` event. What `slaveshell export`/`replay` download (by offset, MAX_CHUNK at a time) and what
`search` reads is the transcript with each `a` event replaced by the `o` (and `ob`) events of its bytes, each
`oa` event by the `ob` event of its bytes and the `o` event before it by the text players are shown for them
(slaveshell.vocabulary.transcript.expand_lines; a binary chunk is recorded with "?" where players are shown
U+FFFD: `recorded_text`): what the transcript would have held without an attachment, so clients and players
that know nothing of attachments work on old and new transcripts alike. A transcript without an attachment is
served as it is on disk, byte for byte.

Blocking file work: call these from a thread (the audit trail does), never from the reactor.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import threading
from collections.abc import Iterable, Iterator

from master_side.audit.transcripts import attachment_path
from slaveshell.vocabulary.transcript import (
    ATTACHED,
    EXACT_ATTACHED,
    AttachmentReader,
    Cast,
    Event,
    attached_code,
    expand_event,
    expand_exact,
    is_output_line,
    iter_events,
    may_be_attached,
    parse_header,
    parse_lines,
    read_attached,
    shown_instead,
)

# Layouts kept in memory (one per transcript being read): a few concurrent exports.
KEEP_LAYOUTS = 8


def _reader(bin_path: str) -> AttachmentReader:
    def read(offset: int, length: int) -> bytes:
        with open(bin_path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


# The expanded stream is indexed by a checkpoint every CHECKPOINT of its bytes: a layout's memory is two ints per
# CHECKPOINT, whatever the number of events (a worker's 300,000 one-byte chunks, each an `a` event, were 300,000
# objects and ~81 MiB per layout before). A read re-expands at most CHECKPOINT bytes before its offset, and
# none when it continues where the last read ended (export reads in order).
CHECKPOINT = 1 << 20
# The transcript is read this much at a time; a run of lines without an `a` event is one unit of at most this.
READ_BLOCK = 64 * 1024
# How an `a` or `oa` event's line shows itself: its code, which no event's text can hold (JSON escapes a quote).
_MARKS = (f'"{ATTACHED}", '.encode(), f'"{EXACT_ATTACHED}", '.encode())


def _mark(data: bytes, start: int, end: int) -> int:
    """Where the first mark of `_MARKS` is in data[start:end], -1 when none is."""
    found = [at for at in (data.find(mark, start, end) for mark in _MARKS) if at >= 0]
    return min(found) if found else -1


class _Layout:
    """Where the expanded stream's bytes come from: the transcript's own lines, with each `a` event's line
    replaced by the expansion of its attached chunk (measured once, expanded again when read). Extended as a
    live transcript grows (only whole lines are taken)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.read_bin = _reader(attachment_path(path))
        self.starts: list[int] = []  # expanded offset of each checkpoint ...
        self.lines: list[int] = []  # ... and the file offset of the line there
        self.size = 0  # expanded bytes of the lines taken
        self.parsed = 0  # file bytes taken: whole lines
        self._cursor: tuple[int, int] | None = None  # (expanded, file) offsets where the last read stopped
        self._last: tuple[int, bytes] | None = None  # the last `a` line expanded: (file offset, bytes)

    def extend(self) -> None:
        end = os.path.getsize(self.path)
        for at, unit in self._units(self.parsed, end, hold=True):
            if not self.starts or self.size - self.starts[-1] >= CHECKPOINT:
                self.starts.append(self.size)
                self.lines.append(at)
            self.size += len(self._piece(at, unit))
            self.parsed = at + len(unit)

    def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        index = bisect.bisect_right(self.starts, offset) - 1
        pos, line = self.starts[index], self.lines[index]
        if self._cursor is not None and pos <= self._cursor[0] <= offset:
            pos, line = self._cursor
        out = bytearray()
        for at, unit in self._units(line, self.parsed):
            piece = self._piece(at, unit)
            if pos + len(piece) > offset:
                skip = max(0, offset - pos)
                out += piece[skip: skip + size - len(out)]
                if len(out) >= size:
                    self._cursor = (pos, at)
                    break
            pos += len(piece)
            self._cursor = (pos, at + len(unit))
        return bytes(out)

    def _units(self, start: int, end: int, hold: bool = False) -> Iterator[tuple[int, bytes]]:
        """(file offset, bytes) of the whole lines in [start, end) (`start` a line's start): a run of lines
        without an `a` or `oa` event (at most about READ_BLOCK), or one line with one; an `oa` line with the
        `o` line before it (both are written at once), so that its expansion gives that event the text players
        are shown. A run never ends with an `o` line while lines follow (the next may be its `oa`); with
        `hold`, a last `o` line that may have an `oa` (`may_be_attached`) is left out: the `oa` may not be
        written yet (`extend`; the two are written at once, but a reader may see part of a write)."""
        with open(self.path, "rb") as f:
            f.seek(start)
            pos, rest = start, b""
            while pos + len(rest) < end:
                block = f.read(min(READ_BLOCK, end - pos - len(rest)))
                if not block:
                    break
                data = rest + block if rest else block
                whole = data.rfind(b"\n") + 1
                i = 0
                while i < whole:
                    mark = _mark(data, i, whole)
                    if mark < 0:
                        last = data.rfind(b"\n", i, whole - 1) + 1 or i
                        cut = last if is_output_line(data, last) else whole
                        if cut > i:
                            yield pos + i, data[i:cut]
                        i = cut
                        break
                    first = data.rfind(b"\n", i, mark) + 1 or i
                    if first > i and data.startswith(_MARKS[1], mark):
                        before = data.rfind(b"\n", i, first - 1) + 1 or i
                        if is_output_line(data, before):
                            first = before
                    last = data.index(b"\n", mark) + 1
                    if first > i:
                        yield pos + i, data[i:first]
                    yield pos + first, data[first:last]
                    i = last
                rest = data[i:]
                pos += i
            held = rest[: rest.rfind(b"\n") + 1]
            if held and not (hold and may_be_attached(held)):
                yield pos, held

    def _piece(self, at: int, unit: bytes) -> bytes:
        """What the unit at file offset `at` is in the expanded stream: itself, or its `a` or `oa` event's
        expansion."""
        if _mark(unit, 0, len(unit)) < 0:
            return unit
        if self._last is not None and self._last[0] == at:
            return self._last[1]
        split = unit.find(b"\n") + 1
        head, line = (unit[:split], unit[split:]) if split < len(unit) else (b"", unit)  # an `o` line, its `oa`
        try:
            t, code, data = json.loads(line)
            if code not in (ATTACHED, EXACT_ATTACHED) or not isinstance(data, str):
                return unit
            chunk = read_attached(self.read_bin, data)
            lines = (expand_event(float(t), data, chunk) if code == ATTACHED
                     else [expand_exact(float(t), chunk)])
        except (ValueError, TypeError):
            return unit  # an `a` line that cannot be expanded is served as it is
        if head:
            shown = shown_instead(head.decode("utf-8", "surrogateescape"), chunk)
            lines.insert(0, shown[:-1])
        piece = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
        self._last = (at, piece)
        return piece


class ExportReader:
    """Thread-safe: `read(path, offset, size)` of the expanded stream, layouts kept for a few transcripts."""

    def __init__(self, keep: int = KEEP_LAYOUTS) -> None:
        self.keep = keep
        self._layouts: collections.OrderedDict[str, _Layout] = collections.OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes of the expanded transcript from `offset` (fewer at its end). OSError when the
        transcript cannot be read."""
        if not os.path.exists(attachment_path(path)):
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        with self._lock:
            layout = self._layouts.pop(path, None) or _Layout(path)
            self._layouts[path] = layout
            while len(self._layouts) > self.keep:
                self._layouts.popitem(last=False)
            layout.extend()
            return layout.read(offset, size)


def read_cast(path: str) -> Cast:
    """The expanded transcript, parsed, text only (attached bytes that are not UTF-8 are U+FFFD, without their
    exact base64 copy; an `o` event with an `oa` after it has the text of its exact bytes, the `oa` dropped).
    ValueError when it is not a transcript. All of it in memory: `iter_cast` streams it."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        cast = parse_lines(f)
    return Cast(cast.header, list(_expanded(cast.events, path)), cast.truncated)


def iter_cast(path: str) -> Iterator[Event]:
    """`read_cast`'s events one at a time (search reads this): memory is one line of the transcript and one
    attached chunk, whatever the transcript's size. ValueError when it is not a transcript, or a line before its
    end is broken (raised when that line is reached: the events before it have been yielded)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        parse_header(f)
        yield from _expanded(iter_events(f), path)


def _expanded(events: Iterable[Event], path: str) -> Iterator[Event]:
    """`events` with each `a` event replaced by the `o`/`i` event it stands for (expand_event with exact=False),
    built directly: through JSON, 64 MB of attached NUL bytes were 384 MB of "\\u0000" to encode and parse again.
    An `o` event followed by an `oa` event gets the text of the exact bytes (its own may show each byte of a
    binary chunk as U+FFFD: shown_text), the `oa` is dropped. An `a` or `oa` event that cannot be read stays as
    it is (as in expand_lines)."""
    bin_path = attachment_path(path)
    if not os.path.exists(bin_path):
        yield from events
        return
    read = _reader(bin_path)
    held: Event | None = None  # an `o` event, until the next says whether its exact bytes are attached
    for event in events:
        if event.code == EXACT_ATTACHED and held is not None:
            try:
                held = Event(held.time, held.code, read_attached(read, event.data).decode("utf-8", "replace"))
                yield held
                held = None
                continue
            except (ValueError, TypeError):
                pass
        if held is not None:
            yield held
            held = None
        if event.code == ATTACHED:
            try:
                text = read_attached(read, event.data).decode("utf-8", "replace")
                event = Event(round(event.time, 6), attached_code(event.data), text)
            except (ValueError, TypeError):
                pass
        if event.code == "o":
            held = event
            continue
        yield event
    if held is not None:
        yield held


exports = ExportReader()
