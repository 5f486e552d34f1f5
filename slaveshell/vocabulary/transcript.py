"""Session transcripts in asciicast v2, without I/O: encoding events to lines and reading them back.

A transcript is newline-delimited JSON: a header object, then `[seconds, code, data]` events. Codes:

    o   output, as the operator's terminal showed it (stderr of a command is merged in, as a terminal would)
    i   input the operator sent; for keystrokes the remote terminal hid, only a marker of their length
    ih  the length in bytes of the hidden span marked by the `i` event before it (slaveshell.vocabulary.hidden)
    is  that span's keystrokes sealed to the auditors' age key, when one is configured (slaveshell.vocabulary.hidden)
    r   resize, "COLSxROWS"
    m   marker: joins, signals, exit, interruption (free text)
    ob  exact bytes of the preceding `o` event, base64, only when that output was not valid UTF-8
    ib  the same for `i`
    oa  exact bytes of the preceding `o` event kept in the transcript's attachment, "1 OFFSET LENGTH": a
        terminal's output that was not valid UTF-8 (the `o` event holds the text a player shows)
    a   a bulk stream's bytes kept in the transcript's attachment, "STREAM OFFSET LENGTH": the bytes
        [OFFSET, OFFSET + LENGTH) of `<name>.bin` next to `<name>.cast`; stream 1 (stdout) or 2 (stderr) is
        output, as an `o` event, stream 0 is input (the command's stdin), as an `i` event

Players (asciinema) skip codes they do not know, so `ob`/`ib`/`oa`/`a` cost nothing there; to get the exact
bytes of a stream back, take each `o` event's text as UTF-8, unless an `ob` or `oa` event follows it: then take
the `ob` bytes, or the `oa` range of the attachment; an `a` event's bytes are in the attachment (`exact_output`
with a reader, or `expand_lines`). Each stream has its own incremental UTF-8 decoder, so a character split
across reads comes out whole.

A terminal's output that is not valid UTF-8 (`cat` of a binary file) is recorded with an attachment as well
(`CastEncoder.output_attaching`): its `o` event holds its text, its exact bytes go raw to the attachment with an
`oa` event naming them, instead of a base64 `ob` copy in the transcript (~1.3x the bytes to write and hash, and
their JSON). The text players are shown (`shown_text`) is `bytes.decode("utf-8", "replace")` when such bytes are
rare (a file name in another encoding); when they are dense (one in 256 bytes or more that UTF-8 never holds:
random or compressed data), each byte >= 0x80 is one U+FFFD, a C table lookup instead of the decoder's error
handler per byte (~4x cheaper); a character of valid UTF-8 in such a chunk then shows as U+FFFDs. The master
records such a dense chunk's text with "?" for each byte >= 0x80 instead (`recorded_text`: the same cells; its
JSON is one byte a byte where U+FFFD is three, made without CPython's per-character UTF-8 encoder), and readers
give players `shown_text` of the exact bytes again: `expand_lines` (and the master's export) replaces an `o`
event with an `oa` after it by `shown_event`, so an export, the web page's player and `slaveshell replay` show
what they showed before; only a player reading the `.cast` file itself shows the "?". Transcripts written
before (`ob` events, or U+FFFD in an `o` event before an `oa`) read as they always did.

Bulk streams (sessions without a terminal: pipes, `-T`) are recorded raw: a JSON event per chunk would cost 1.5x
the bytes for text and 3.7x for binary (U+FFFD plus base64); a chunk of at most BULK_INLINE bytes that is valid
UTF-8 on its own is still an `o` event, so `asciinema cat` shows a short command's output. docs/audit-schema.md
documents the attachment.
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from slaveshell.vocabulary import hidden as hidden_input

REDACTED = "[REDACTED]"
VERSION = 2
ATTACHED = "a"
# The exact bytes of the `o` event before it, in the attachment ("1 OFFSET LENGTH").
EXACT_ATTACHED = "oa"
# A bulk chunk up to this size that is valid UTF-8 by itself stays inline as an `o` event.
BULK_INLINE = 4096


class Redactor:
    """Configurable regular expressions whose matches never reach the transcript."""

    def __init__(self, patterns: Sequence[str | re.Pattern[str]] = ()) -> None:
        self.patterns = [re.compile(p) if isinstance(p, str) else p for p in patterns]

    def __call__(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub(REDACTED, text)
        return text

    def raw(self, data: bytes) -> bytes:
        """The same on raw bytes (a bulk stream): read as UTF-8 with surrogateescape, so bytes that match no
        pattern come back exactly, whatever they are."""
        if not self.patterns:
            return data
        return self(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


class StreamDecoder:
    """Bytes to text for one stream. Invalid bytes become surrogates (surrogateescape), which keeps them
    recoverable exactly; `encode_event` turns them into U+FFFD for players plus an exact-bytes event."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def decode(self, data: bytes, final: bool = False) -> str:
        return self._decoder.decode(data, final)

    def take(self, data: bytes) -> bytes:
        """The bytes `decode(data)` would turn into text (what it held before, then `data`, but an incomplete
        character at the end, which it holds after), without making the text: for a stream's exact bytes."""
        held = self._decoder.getstate()[0]
        joined = held + data if held else data
        # An incomplete character at the end starts at its lead byte (>= 0xC0, never a continuation), at most 3
        # bytes from the end; a fresh decoder says whether those bytes are one it would hold.
        tail = b""
        for back in range(1, min(3, len(joined)) + 1):
            if joined[-back] >= 0xC0:
                probe = codecs.getincrementaldecoder("utf-8")("surrogateescape")
                if not probe.decode(joined[-back:]) and probe.getstate()[0] == joined[-back:]:
                    tail = joined[-back:]
                break
        self._decoder.setstate((tail, 0))
        return joined[:len(joined) - len(tail)]

    @property
    def idle(self) -> bool:
        """No bytes of an incomplete character held: the next ASCII bytes decode to themselves."""
        return not self._decoder.getstate()[0]


# Characters Python's str.splitlines() (and some editors) take as line ends, which JSON leaves raw: escaped, so
# that a transcript's lines are its "\n"-separated lines however it is split.
# (str.replace for each, found with `in`: str.translate goes character by character through a dict, ~200 ms a
# MB of text that is not ASCII.)
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
# The same on UTF-8: these byte strings occur in valid UTF-8 only as those characters.
_UTF8_LINE_BREAKS = tuple((c.encode("utf-8"), e.encode("ascii")) for c, e in _LINE_BREAKS)


# ASCII that JSON writes as \uXXXX or as \b, \f: control characters but TAB, LF and CR, and DEL (which
# ensure_ascii escapes and `_dumps` does not). Text without them is escaped with str.replace (C, memchr-fast)
# instead of JSON's escaper, which goes character by character: ~3x faster on a terminal's output.
_RARE_ASCII = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"
_SIMPLE_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))


def _ascii_event(t: float, code: str, text: str) -> str | None:
    """`_dumps([t, code, text])` for ASCII `text` without _RARE_ASCII (None otherwise), byte for byte."""
    raw = text.encode("ascii")
    if len(raw.translate(None, _RARE_ASCII)) != len(raw) or not code.isalnum():
        return None
    for plain, escaped in _SIMPLE_ESCAPES:
        if plain in text:
            text = text.replace(plain, escaped)
    return f'[{float.__repr__(t)}, "{code}", "{text}"]'


# A str as JSON writes it in `_dumps` (ensure_ascii off), quotes included: the same function json.dumps calls.
_encode_string: Callable[[str], str] = json.encoder.encode_basestring

# A str as JSON, quotes included, UTF-8 encoded: byte for byte what `_encode_string` writes (ensure_ascii off,
# the line breaks of _LINE_BREAKS left raw). CastEncoder takes a faster one (the master's: a C encoder).
JsonString = Callable[[str], bytes]


def json_string(text: str) -> bytes:
    """The standard library's JsonString."""
    return _encode_string(text).encode("utf-8")


def _dumps(value: object) -> str:
    line = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if not line.isascii():
        for char, escaped in _LINE_BREAKS:
            if char in line:
                line = line.replace(char, escaped)
    return line


# The ASCII bytes JSON escapes (json.encoder.ESCAPE_DCT: the controls, '"' and the backslash, which comes first:
# the other escapes add backslashes) with their escapes, and every other byte (which `_kinds` deletes from a
# short chunk to find which of them it holds).
_ESCAPE_ORDER = [0x5C] + [c for c in range(128) if chr(c) in json.encoder.ESCAPE_DCT and c != 0x5C]
_BYTE_ESCAPES = {c: json.encoder.ESCAPE_DCT[chr(c)].encode("ascii") for c in _ESCAPE_ORDER}
_NOT_ESCAPED = bytes(c for c in range(256) if c not in _BYTE_ESCAPES)


# A chunk needing more kinds of escape than this is escaped by JSON's encoder (one pass) rather than by a replace
# each (random bytes hold all 34 kinds).
_MANY_ESCAPES = 8


# From this size on, a chunk is searched for each escape with memchr (34 searches, most of them to its end, about
# 0.2 s a GB) rather than first cut down to its escaped bytes with a translate (0.4 s a GB): a translate costs
# less only on a short chunk (a keystroke's echo), where each of the 34 searches costs more than the bytes.
_SEARCH_FROM = 4096


def _kinds(data: bytes) -> list[int]:
    """The bytes of _ESCAPE_ORDER that `data` holds, in that order."""
    if len(data) < _SEARCH_FROM:
        data = data.translate(None, _NOT_ESCAPED)
        if not data:
            return []
    return [byte for byte in _ESCAPE_ORDER if byte in data]


def _escaped(data: bytes, kinds: list[int] | None = None) -> bytes:
    """JSON's escapes of ASCII bytes, on bytes: which escapes `data` needs (`kinds`, when already known), then
    one replace each. Valid UTF-8 is escaped right too: JSON escapes ASCII only, and in UTF-8 an ASCII byte is
    never part of another character."""
    if kinds is None:
        kinds = _kinds(data)
    for byte in kinds:
        data = data.replace(bytes((byte,)), _BYTE_ESCAPES[byte])
    return data


def _line(t: float, code: str, escaped: bytes) -> bytes:
    return b"".join((b"[", float.__repr__(t).encode("ascii"), b', "', code.encode("ascii"), b'", "', escaped, b'"]'))


def ascii_event_line(t: float, code: str, data: bytes) -> bytes:
    """The line `encode_event(t, code, data.decode("ascii"))` makes, UTF-8 encoded, for ASCII `data`, `t` a float
    already rounded to 6 places and `code` ASCII letters; built on bytes, without a str: about a third of the
    time for 64 KiB of a terminal's output."""
    return _line(t, code, _escaped(data))


def _string_line(t: float, code: str, shown: bytes) -> bytes:
    """An event's line from its text as `JsonString` wrote it (the line breaks JSON leaves raw escaped here)."""
    if not shown.isascii():
        for raw, line_break in _UTF8_LINE_BREAKS:
            if raw in shown:
                shown = shown.replace(raw, line_break)
    return _joined(t, code, shown)


def _joined(t: float, code: str, shown: bytes) -> bytes:
    """An event's line from its text as `JsonString` wrote it, its line breaks already escaped."""
    return b"".join((b"[", float.__repr__(t).encode("ascii"), b', "', code.encode("ascii"), b'", ', shown, b"]"))


def c_event_line(t: float, code: str, data: bytes, encode: JsonString) -> bytes:
    """`utf8_event_line` through a C encoder (`encode`: the master's orjson, whose escapes run many bytes at a
    time): the str of `data` as `encode` writes it, then the line breaks JSON leaves raw. 64 KiB chunks: build-log
    text ~0.4 CPU s/GB against 1.4 for the replaces on the bytes, `ls --color` lines ~1.0 against 2.1, gcc's
    coloured diagnostics (UTF-8 quotes) ~2.2 against 3.0."""
    if data.isascii():
        shown = encode(data.decode("ascii"))
    else:
        shown = encode(data.decode("utf-8"))
        # Their last bytes, looked for first (as in utf8_event_line).
        if b"\x85" in data or b"\xa8" in data or b"\xa9" in data:
            for raw, line_break in _UTF8_LINE_BREAKS:
                if raw in shown:
                    shown = shown.replace(raw, line_break)
    return _joined(t, code, shown)


def utf8_event_line(t: float, code: str, data: bytes, encode: JsonString = json_string) -> bytes:
    """`encode_event(t, code, data.decode("utf-8"))[0]`, UTF-8 encoded, for valid UTF-8 `data` (`t` and `code`
    as for `ascii_event_line`): JSON's escapes on the bytes, then the line breaks JSON leaves raw; `encode`
    instead when the chunk needs many kinds of escape (a C encoder: `c_event_line`)."""
    kinds = _kinds(data)
    if len(kinds) > _MANY_ESCAPES:
        return _string_line(t, code, encode(data.decode("utf-8")))
    escaped = _escaped(data, kinds)
    # Their last bytes, looked for first: one memchr each, where a search for the whole sequence is slowed by
    # every other character of the same lead bytes (the quotes U+2018, U+2019 that gcc prints).
    if not data.isascii() and (b"\x85" in data or b"\xa8" in data or b"\xa9" in data):
        for raw, line_break in _UTF8_LINE_BREAKS:
            if raw in escaped:
                escaped = escaped.replace(raw, line_break)
    return _line(t, code, escaped)


# Bytes that valid UTF-8 never holds: their density says whether a chunk is binary (`shown_text`).
_NEVER_UTF8 = bytes((0xC0, 0xC1)) + bytes(range(0xF5, 0x100))
# A chunk with at least one such byte in this many is shown byte by byte (random bytes: one in 20).
_DENSE = 256
# They are counted in this many bytes at each end of a longer chunk (a count over all of it is ~1.5 s/GB).
_SAMPLE = 2048
# ASCII as itself, every other byte as U+FFFD: a table for codecs.charmap_decode (C, one lookup a byte).
_BYTE_SHOWN = "".join(chr(c) for c in range(128)) + "\ufffd" * 128
# ASCII as itself, every other byte as "?": what the master records for a binary chunk (`recorded_text`).
_BYTE_RECORDED = bytes(range(128)) + b"?" * 128


def _dense(data: bytes) -> bool:
    """Whether bytes UTF-8 never holds are dense in `data` (binary data), taken from both ends of a chunk longer
    than 2 * _SAMPLE (a chunk is mostly one kind of content)."""
    sample = data if len(data) <= 2 * _SAMPLE else data[:_SAMPLE] + data[-_SAMPLE:]
    never = len(sample) - len(sample.translate(None, _NEVER_UTF8))
    return bool(never) and never * _DENSE >= len(sample)


def shown_text(data: bytes) -> tuple[str, bool]:
    """The text a player shows for bytes that are not valid UTF-8, and whether it is exactly
    `data.decode("utf-8", "replace")`: it is when bytes UTF-8 never holds are rare; when they are dense
    (binary data: `_dense`), each byte >= 0x80 is one U+FFFD instead (its decoder goes through its error handler
    at each of them: ~4x the CPU). The text then holds no line break JSON leaves raw (`_LINE_BREAKS`)."""
    if _dense(data):
        return codecs.charmap_decode(data, "strict", _BYTE_SHOWN)[0], False
    return data.decode("utf-8", "replace"), True


def recorded_text(data: bytes) -> str:
    """The text of the `o` event recorded for bytes that are not valid UTF-8 whose exact bytes are attached
    (`CastEncoder.output_attaching`): `shown_text`, but for binary data each byte >= 0x80 as "?" instead of
    U+FFFD, in the same cells (one byte of JSON instead of three, and no UTF-8 to encode: about a fifth of
    the CPU); readers give players `shown_text` of the exact bytes again (`shown_event`, `expand_lines`)."""
    if _dense(data):
        return data.translate(_BYTE_RECORDED).decode("ascii")
    return data.decode("utf-8", "replace")


def shown_event(t: float, exact: bytes) -> str:
    """The `o` event a player is given for an `o` event whose exact bytes are attached (an `oa` event after
    it): `shown_text` of those bytes, whatever text the event was recorded with (`recorded_text`)."""
    return _dumps([round(t, 6), "o", shown_text(exact)[0]])


def _shown_line(t: float, code: str, data: bytes, encode: JsonString) -> bytes:
    """The event recorded for `data`, not valid UTF-8, whose exact bytes are attached: `recorded_text` as
    `encode` writes it."""
    return _string_line(t, code, encode(recorded_text(data)))  # a binary chunk's "?" text is ASCII: no scan


def _bytes_event(t: float, code: str, data: bytes, encode: JsonString = json_string,
                 c_encoder: bool = False) -> list[bytes]:
    """`encode_event(t, code, data.decode("utf-8", "surrogateescape"))`, UTF-8 encoded, for any `data` (`t` and
    `code` as for `ascii_event_line`): no str of surrogates, no encoding back to find the exact bytes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return [_string_line(t, code, encode(data.decode("utf-8", "replace"))),
                _line(t, code + "b", base64.b64encode(data))]
    return [c_event_line(t, code, data, encode) if c_encoder else utf8_event_line(t, code, data, encode)]


def encode_event(t: float, code: str, text: str) -> list[str]:
    """Lines for one text event; a second `<code>b` line when the text holds bytes that were not UTF-8."""
    t = round(t, 6)
    if text.isascii() and isinstance(t, float):
        line = _ascii_event(t, code, text)
        if line is not None:
            return [line]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        exact = text.encode("utf-8", "surrogateescape")
        shown = exact.decode("utf-8", "replace")
        return [_dumps([t, code, shown]), _dumps([t, code + "b", base64.b64encode(exact).decode("ascii")])]
    return [_dumps([t, code, text])]


class CastEncoder:
    """Turns a session's events into asciicast lines. Time is seconds since the session started."""

    def __init__(self, redact: Redactor | None = None, record_input: bool = True,
                 encode: JsonString = json_string) -> None:
        self.redact = redact or Redactor()
        self.record_input = record_input
        self.encode = encode  # the output events' text as JSON (`JsonString`)
        # Any other than the standard library's is a C encoder (the master's orjson): it escapes text faster than
        # replaces on the bytes do (`c_event_line`), which the standard library's does not.
        self.c_encoder = encode is not json_string
        self._output = StreamDecoder()
        self._input = StreamDecoder()

    @staticmethod
    def header(width: int, height: int, timestamp: float, **extra: object) -> str:
        header: dict[str, object] = {"version": VERSION, "width": width, "height": height, "timestamp": int(timestamp)}
        header.update({k: v for k, v in extra.items() if v is not None})
        return _dumps(header)

    def output(self, t: float, data: bytes) -> list[str]:
        text = self._output.decode(data)
        return encode_event(t, "o", self.redact(text)) if text else []

    def output_encoded(self, t: float, data: bytes) -> list[bytes]:
        """`output`'s lines as the transcript file holds them (UTF-8, no newline). Without redaction patterns the
        lines are built on the bytes (with a C encoder: from a str of valid UTF-8 through it, `c_event_line`):
        escape-heavy UTF-8 costs about what ASCII does; bytes that are not UTF-8 cost more (a str of their U+FFFD
        text for `encode`, and their base64 copy: 3.7x the bytes written)."""
        rounded = round(t, 6)
        if not data or not isinstance(rounded, float) or not math.isfinite(rounded) or self.redact.patterns:
            return [line.encode("utf-8", "surrogateescape") for line in self.output(t, data)]
        if data.isascii() and self._output.idle:
            return [self._ascii_line(rounded, data)]
        exact = self._output.take(data)
        return _bytes_event(rounded, "o", exact, self.encode, self.c_encoder) if exact else []

    def _ascii_line(self, t: float, data: bytes) -> bytes:
        """The `o` event of ASCII `data` (`t` rounded)."""
        return c_event_line(t, "o", data, self.encode) if self.c_encoder else ascii_event_line(t, "o", data)

    def output_attaching(self, t: float, data: bytes) -> tuple[list[bytes], bytes]:
        """`output_encoded` for a recorder with an attachment: the lines, and the exact bytes of the last one's
        event when they were not valid UTF-8 (else b""). Those bytes go to the attachment first, then the lines,
        then `exact_attached` with their range: the `o` event holds the text a player shows (`shown_text`)."""
        rounded = round(t, 6)
        if not data or not isinstance(rounded, float) or not math.isfinite(rounded) or self.redact.patterns:
            text = self._output.decode(data)
            if not text:
                return [], b""
            text = self.redact(text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                exact = text.encode("utf-8", "surrogateescape")
                line = _dumps([round(t, 6), "o", recorded_text(exact)])
                return [line.encode("utf-8")], exact
            return [line.encode("utf-8") for line in encode_event(t, "o", text)], b""
        if data.isascii() and self._output.idle:
            return [self._ascii_line(rounded, data)], b""
        exact = self._output.take(data)
        if not exact:
            return [], b""
        try:
            exact.decode("utf-8")
        except UnicodeDecodeError:
            return [_shown_line(rounded, "o", exact, self.encode)], exact
        if self.c_encoder:
            return [c_event_line(rounded, "o", exact, self.encode)], b""
        return [utf8_event_line(rounded, "o", exact, self.encode)], b""

    @staticmethod
    def exact_attached(t: float, offset: int, length: int) -> list[str]:
        """The `oa` event after an `o` event whose exact bytes were written to the attachment at `offset`."""
        return [_dumps([round(t, 6), EXACT_ATTACHED, f"1 {offset} {length}"])]

    def input(self, t: float, data: bytes, hidden: bool) -> list[str]:
        if not self.record_input:
            return []
        if hidden:
            # Typed while the terminal hid it: never written here (the recorder marks the span with
            # `hidden_span`). Drop the decoder's state too, so no part of it leaks into the next event.
            self._input = StreamDecoder()
            return []
        text = self._input.decode(data)
        return encode_event(t, "i", self.redact(text)) if text else []

    def bulk(self, t: float, data: bytes, code: str = "o") -> list[str] | None:
        """The `o` (or `i`) event of a bulk chunk short enough and valid UTF-8 by itself; None: it goes to the
        attachment (`attached`), after `redact.raw`."""
        if len(data) > BULK_INLINE:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return encode_event(t, code, self.redact(text)) if text else []

    @staticmethod
    def attached(t: float, stream: int, offset: int, length: int) -> list[str]:
        """The `a` event of a bulk chunk written to the attachment at `offset`."""
        return [_dumps([round(t, 6), ATTACHED, f"{stream} {offset} {length}"])]

    def hidden_span(self, t: float, nbytes: int, sealed: str | None = None) -> list[str]:
        """The marker of a span of hidden input: its length, and its bytes sealed to the auditors if given."""
        t = round(t, 6)
        lines = [_dumps([t, "i", hidden_input.marker(nbytes)]), _dumps([t, "ih", str(nbytes)])]
        if sealed is not None:
            lines.append(_dumps([t, "is", sealed]))
        return lines

    def resize(self, t: float, cols: int, rows: int) -> list[str]:
        return [_dumps([round(t, 6), "r", f"{cols}x{rows}"])]

    def marker(self, t: float, text: str) -> list[str]:
        return [_dumps([round(t, 6), "m", text])]

    def flush(self, t: float) -> list[str]:
        """What the decoders still hold (an incomplete character at the very end)."""
        lines = []
        tail = self._output.decode(b"", final=True)
        if tail:
            lines += encode_event(t, "o", self.redact(tail))
        if self.record_input:
            tail = self._input.decode(b"", final=True)
            if tail:
                lines += encode_event(t, "i", self.redact(tail))
        return lines


@dataclass(frozen=True)
class Event:
    time: float
    code: str
    data: str


@dataclass
class Cast:
    header: dict[str, object]
    events: list[Event]
    # True when the last line was cut short (a crash mid-write); it is not in `events`.
    truncated: bool = False


def parse_lines(lines: Iterable[str]) -> Cast:
    """Read a transcript, tolerating a partial last line (what a crash mid-write leaves)."""
    it = iter(lines)
    header = parse_header(it)
    broken: list[str] = []
    events = list(iter_events(it, broken.append))
    return Cast(header, events, bool(broken))


def parse_header(lines: Iterator[str]) -> dict[str, object]:
    """The header of a transcript, its first line taken from `lines`; ValueError when it is not asciicast v2."""
    try:
        header = json.loads(next(lines))
    except (StopIteration, json.JSONDecodeError) as e:
        raise ValueError(f"not an asciicast v2 transcript: {e}") from None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise ValueError("not an asciicast v2 transcript")
    return header


def iter_events(lines: Iterable[str], truncated: Callable[[str], None] | None = None) -> Iterator[Event]:
    """The events of a transcript's lines after its header, one at a time (memory: one line). A broken last
    line (cut short by a crash) is handed to `truncated`; ValueError when a broken line has lines after it."""
    broken = None
    for line in lines:
        if broken is not None:
            raise ValueError("a transcript line is malformed before its end")
        if not line.strip():
            continue
        try:
            t, code, data = json.loads(line)
            event = Event(float(t), str(code), data)
        except (json.JSONDecodeError, ValueError, TypeError):
            # Only the last line may be broken (cut short by a crash); anything earlier is corruption.
            broken = line
            continue
        yield event
    if broken is not None and truncated is not None:
        truncated(broken)


def event_bytes(events: Sequence[Event], index: int, attachment: AttachmentReader | None = None) -> bytes:
    """The exact bytes of the text event at `index`: from the `<code>b` event right after it, if there is one, or
    the attachment's range an `oa` event after an `o` event names (ValueError without a reader)."""
    event = events[index]
    after = events[index + 1] if index + 1 < len(events) else None
    if after is not None and after.code == event.code + "b":
        return base64.b64decode(after.data)
    if after is not None and event.code == "o" and after.code == EXACT_ATTACHED:
        if attachment is None:
            raise ValueError("this transcript has an attachment: its bytes need a reader")
        return read_attached(attachment, after.data)
    return event.data.encode("utf-8")


# Reads `length` bytes at `offset` of a transcript's attachment.
AttachmentReader = Callable[[int, int], bytes]


def attachment_ref(data: object) -> tuple[int, int, int]:
    """(stream, offset, length) of an `a` event's data; ValueError when it is not "STREAM OFFSET LENGTH"."""
    parts = data.split(" ") if isinstance(data, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] not in ("0", "1", "2"):
        raise ValueError(f"malformed attachment event {data!r}")
    stream, offset, length = (int(p) for p in parts)
    return stream, offset, length


def read_attached(read: AttachmentReader, data: object) -> bytes:
    """The bytes an `a` event refers to; ValueError when the attachment is shorter (cut by a crash)."""
    _, offset, length = attachment_ref(data)
    chunk = read(offset, length)
    if len(chunk) != length:
        raise ValueError(f"the attachment ends before {offset + length}")
    return chunk


def exact_output(events: Sequence[Event], code: str = "o",
                 attachment: AttachmentReader | None = None) -> Iterator[bytes]:
    """The exact bytes of a stream ("o" or "i"), event by event; `a` events of that stream read through
    `attachment` (ValueError without one: the bytes would be missing)."""
    for index, event in enumerate(events):
        if event.code == code:
            yield event_bytes(events, index, attachment)
        elif event.code == ATTACHED and attached_code(event.data) == code:
            if attachment is None:
                raise ValueError("this transcript has an attachment: its bytes need a reader")
            yield read_attached(attachment, event.data)


def attached_code(data: object) -> str:
    """The code an `a` event stands for: "i" for stream 0 (input), "o" for output."""
    return "i" if attachment_ref(data)[0] == 0 else "o"


def expand_event(t: float, ref: str, data: bytes, exact: bool = True) -> list[str]:
    """An attached chunk as self-contained lines: an `o` (or `i`) event, and its `ob` (`ib`) when it is not
    UTF-8; with `exact` False, the text event only, invalid bytes as U+FFFD (for search)."""
    code = attached_code(ref)
    if not exact:
        return [_dumps([round(t, 6), code, data.decode("utf-8", "replace")])]
    return encode_event(t, code, data.decode("utf-8", "surrogateescape"))


def expand_exact(t: float, data: bytes) -> str:
    """The `ob` event an `oa` event stands for in a self-contained stream: the bytes it names, base64."""
    return _dumps([round(t, 6), "ob", base64.b64encode(data).decode("ascii")])


def is_output_line(line: str | bytes, start: int = 0) -> bool:
    """Whether the transcript line at `start` of `line` may be an `o` event (a cheap look at its code, after its
    time): one whose exact bytes an `oa` line after it may name."""
    head = line[start:start + 40]
    return (b', "o", ' in head) if isinstance(head, bytes) else (', "o", ' in head)


def may_be_attached(line: bytes) -> bool:
    """Whether the `o` line `line` may have been recorded from bytes that are not UTF-8 (then an `oa` line may
    follow it): its text holds "?" or U+FFFD (`recorded_text` of such bytes always does)."""
    return is_output_line(line) and (b"?" in line or "\ufffd".encode() in line)


def expand_lines(lines: Iterable[str], attachment: AttachmentReader | None, exact: bool = True) -> Iterator[str]:
    """A transcript as one self-contained asciicast v2 stream, lines with their newline: each `a` event
    replaced by the events of its bytes (`expand_event`: what `slaveshell export` and search read), each `oa`
    event by its `ob` (none with `exact` False), the `o` event before it by the text a player shows for those
    bytes (`shown_event`: the recorded text may be `recorded_text`'s). Without an attachment, or past its end,
    `a` and `oa` lines are left as they are (players skip them)."""
    held: str | None = None  # an `o` line, until the next line says whether its exact bytes are attached
    for line in lines:
        if attachment is not None and (f'"{ATTACHED}", ' in line or f'"{EXACT_ATTACHED}", ' in line):
            try:
                t, code, data = json.loads(line)
                if code == ATTACHED:
                    if held is not None:
                        yield held
                        held = None
                    for out in expand_event(float(t), data, read_attached(attachment, data), exact):
                        yield out + "\n"
                    continue
                if code == EXACT_ATTACHED:
                    chunk = read_attached(attachment, data)
                    if held is not None:
                        yield shown_instead(held, chunk)
                        held = None
                    if exact:
                        yield expand_exact(float(t), chunk) + "\n"
                    continue
            except (ValueError, TypeError):
                pass
        if held is not None:
            yield held
            held = None
        if attachment is not None and is_output_line(line):
            held = line
            continue
        yield line
    if held is not None:
        yield held


def shown_instead(line: str, exact: bytes) -> str:
    """The `o` line `line` (with its newline) as `shown_event` of the exact bytes its `oa` names; `line` itself
    when it is not an `o` event."""
    try:
        t, code, _ = json.loads(line)
        if code != "o":
            return line
        return shown_event(float(t), exact) + "\n"
    except (ValueError, TypeError):
        return line


# No sequence's body may hold the start of a sequence of its own kind (ESC, or the 8-bit OSC U+009D, which also
# starts a new string in a terminal's parser: vt100.net/emu/dec_ansi_parser, "anywhere"): each attempt then
# stops at the next start, so one pass is linear. With U+009D allowed in an OSC's body, a worker's run of them
# without an end made every start scan the rest: quadratic, 512 KiB of output held the GIL (the master's
# reactor) for minutes in search.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-9;?]*[ -/]*[@-~]"  # CSI (7- or 8-bit, ECMA-48 5.4): colours, cursor moves
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\x9d]*(?:\x07|\x1b\\|\x9c)"  # OSC: window titles, the clipboard
    r"|\x1b[@-Z\\-_]"  # other two-byte escapes
)
# C0 and C1 control characters but tab and newline, and DEL: what is left of them once sequences are gone.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
_STARTS = ("\x1b", "\x9b", "\x9d")


def strip_ansi(text: str) -> str:
    """Text without terminal control sequences, for searching what was shown. Sequences go first, then the
    control characters left (runs at once: 64 MB of NUL bytes is one match, not 64 million)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if any(start in text for start in _STARTS):
        text = _ANSI.sub("", text)
    return _CONTROLS.sub("", text)
