"""Reading transcripts as operators get them: one self-contained asciicast v2 stream per session.

A session with bulk output keeps it raw in an attachment (`<name>.bin`, master_side.transcripts) and refers to
it with `a` events. What `slaveshell export`/`replay` download (by offset, MAX_CHUNK at a time) and what
`search` reads is the transcript with each `a` event replaced by the `o` (and `ob`) events of its bytes
(slaveshell.transcript.expand_lines): what the transcript would have held without an attachment, so clients
and players that know nothing of attachments work on old and new transcripts alike. A transcript without an
attachment is served as it is on disk, byte for byte.

Blocking file work: call these from a thread (the audit trail does), never from the reactor.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from slaveshell.transcript import (
    ATTACHED,
    AttachmentReader,
    Cast,
    Event,
    attached_code,
    expand_event,
    iter_events,
    parse_header,
    parse_lines,
    read_attached,
)

from .transcripts import attachment_path

# Layouts kept in memory (one per transcript being read): a few concurrent exports.
KEEP_LAYOUTS = 8


def _reader(bin_path: str) -> AttachmentReader:
    def read(offset: int, length: int) -> bytes:
        with open(bin_path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


@dataclass
class _Part:
    """`length` bytes of the expanded stream: lines of the file from `offset` (`ref` empty), or the expansion
    of the attached chunk of the `a` event (`t`, `ref`)."""

    offset: int
    length: int
    t: float = 0.0
    ref: str = ""


class _Layout:
    """Where each part of the expanded stream comes from: a run of the transcript's own lines (a byte range
    of the file) or an attached chunk (expanded again when read; its expanded length is measured once).
    Extended as a live transcript grows (only whole lines are taken)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.bin_path = attachment_path(path)
        self.read_bin = _reader(self.bin_path)
        self.starts: list[int] = []
        self.parts: list[_Part] = []
        self.size = 0
        self.parsed = 0
        self._last: tuple[int, bytes] | None = None

    def extend(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.parsed)
            data = f.read()
        end = data.rfind(b"\n") + 1
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos) + 1
            line = data[pos:nl]
            part = self._attached(line)
            if part is not None:
                self._add(part)
            elif self.parts and not self.parts[-1].ref:
                self.parts[-1].length += len(line)
                self.size += len(line)
            else:
                self._add(_Part(self.parsed + pos, len(line)))
            pos = nl
        self.parsed += end

    def _add(self, part: _Part) -> None:
        self.starts.append(self.size)
        self.parts.append(part)
        self.size += part.length

    def _attached(self, line: bytes) -> _Part | None:
        if f'"{ATTACHED}", '.encode() not in line:
            return None
        try:
            t, code, data = json.loads(line)
            if code != ATTACHED or not isinstance(data, str):
                return None
            return _Part(0, len(self._expand(float(t), data)), float(t), data)
        except (ValueError, TypeError):
            return None  # an `a` line that cannot be expanded is served as it is

    def _expand(self, t: float, data: str) -> bytes:
        lines = expand_event(t, data, read_attached(self.read_bin, data))
        return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray()
        index = bisect.bisect_right(self.starts, offset) - 1
        while index < len(self.parts) and len(out) < size and index >= 0:
            part, start = self.parts[index], self.starts[index]
            skip = offset + len(out) - start
            want = size - len(out)
            if skip >= part.length:
                break  # past the end
            if not part.ref:
                with open(self.path, "rb") as f:
                    f.seek(part.offset + skip)
                    out += f.read(min(want, part.length - skip))
            else:
                if self._last is None or self._last[0] != index:
                    self._last = (index, self._expand(part.t, part.ref))
                out += self._last[1][skip: skip + want]
            index += 1
        return bytes(out)


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
    exact base64 copy). ValueError when it is not a transcript. All of it in memory: `iter_cast` streams it."""
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
    An `a` event that cannot be expanded stays as it is (as in expand_lines)."""
    bin_path = attachment_path(path)
    if not os.path.exists(bin_path):
        yield from events
        return
    read = _reader(bin_path)
    for event in events:
        if event.code == ATTACHED:
            try:
                text = read_attached(read, event.data).decode("utf-8", "replace")
                event = Event(round(event.time, 6), attached_code(event.data), text)
            except (ValueError, TypeError):
                pass
        yield event


exports = ExportReader()
