"""The transcript's encoder writes, byte for byte, what its plain reference (kept here) writes: a terminal's
output as bytes (`CastEncoder.output_encoded`, whatever the bytes: ASCII, escape-heavy UTF-8, line breaks JSON
leaves raw, bytes that are not UTF-8, characters split across chunks; and `output_attaching`, whose bytes that
are not UTF-8 go to the attachment) and text events (`encode_event`); with the standard library's JSON strings
and with the master's (orjson's)."""

from __future__ import annotations

import base64
import codecs
import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from slaveshell.vocabulary.transcript import (
    CastEncoder,
    Redactor,
    encode_event,
    expand_lines,
    json_string,
    shown_event,
)

# The JSON strings an encoder is given: the standard library's, and the master's (master_side.audit.trail).
ENCODERS = st.sampled_from([json_string, orjson.dumps])

# -- the reference: JSON's encoder on the decoded text, a str.translate of the raw line breaks -----------------

_REF_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def ref_dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).translate(_REF_LINE_BREAKS)


def ref_encode_event(t: float, code: str, text: str) -> list[str]:
    t = round(t, 6)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        exact = text.encode("utf-8", "surrogateescape")
        return [ref_dumps([t, code, exact.decode("utf-8", "replace")]),
                ref_dumps([t, code + "b", base64.b64encode(exact).decode("ascii")])]
    return [ref_dumps([t, code, text])]


class RefOutput:
    """A stream's output events: an incremental UTF-8 decoder (surrogateescape), then `ref_encode_event`."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def lines(self, t: float, data: bytes, final: bool = False) -> list[bytes]:
        text = self.decoder.decode(data, final)
        return [line.encode("utf-8") for line in ref_encode_event(t, "o", text)] if text else []


# Bytes valid UTF-8 never holds.
_REF_NEVER = {0xC0, 0xC1, *range(0xF5, 0x100)}


def ref_binary(data: bytes) -> bool:
    """At least one byte in 256 is one UTF-8 never holds (binary data; counted in 2 KiB at each end of a longer
    chunk)."""
    sample = data if len(data) <= 4096 else data[:2048] + data[-2048:]  # both ends of a long chunk
    never = sum(1 for b in sample if b in _REF_NEVER)
    return bool(never) and never * 256 >= len(sample)


def ref_shown(data: bytes) -> str:
    """The text a player is given for bytes that are not UTF-8: decoded with U+FFFD for each invalid sequence,
    or, for binary data, one U+FFFD per byte >= 0x80."""
    if ref_binary(data):
        return "".join(chr(b) if b < 0x80 else "\ufffd" for b in data)
    return data.decode("utf-8", "replace")


def ref_recorded(data: bytes) -> str:
    """The text the master records for bytes that are not UTF-8 whose exact bytes are attached: `ref_shown`, but
    for binary data "?" for each byte >= 0x80."""
    if ref_binary(data):
        return "".join(chr(b) if b < 0x80 else "?" for b in data)
    return data.decode("utf-8", "replace")


class RefAttaching(RefOutput):
    """`output_attaching`'s reference: the `o` event of the text shown, and the exact bytes when not UTF-8."""

    def attaching(self, t: float, data: bytes) -> tuple[list[bytes], bytes]:
        text = self.decoder.decode(data)
        if not text:
            return [], b""
        exact = text.encode("utf-8", "surrogateescape")
        try:
            exact.decode("utf-8")
        except UnicodeDecodeError:
            return [ref_dumps([round(t, 6), "o", ref_recorded(exact)]).encode("utf-8")], exact
        return [line.encode("utf-8") for line in ref_encode_event(t, "o", text)], b""


# -- what a terminal writes ------------------------------------------------------------------------------------

_PIECES = st.sampled_from([
    b"\x1b[01;35m\x1b[K", b"\x1b[m", "\u2018x\u2019".encode(), "\u2028\u2029\x85".encode(), b"\xc2\x85",
    b"\xe2\x80\xa8", "é".encode()[:1], "€".encode()[:2], "𝄞".encode()[:3], "𝄞".encode()[1:], b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xff", b'"\\', b"\r\n", b"\t\x00\x08\x0c\x7f", bytes(range(32)),
])
_CHUNK = st.lists(st.binary(max_size=40) | _PIECES | st.text().map(lambda s: s.encode("utf-8", "surrogatepass")),
                  max_size=8).map(b"".join)


@given(encode=ENCODERS, chunks=st.lists(_CHUNK, max_size=10), t=st.floats(min_value=0, max_value=1e7))
def test_output_as_bytes_is_what_the_reference_writes(encode, chunks, t):
    ours, ref = CastEncoder(encode=encode), RefOutput()
    for i, chunk in enumerate(chunks):
        assert ours.output_encoded(t + i, chunk) == ref.lines(t + i, chunk)
    # What the decoder still holds at the end comes out the same too.
    assert [line.encode("utf-8", "surrogateescape") for line in ours.flush(t)] == ref.lines(t, b"", final=True)


@given(encode=ENCODERS, data=st.binary(min_size=1, max_size=4096), t=st.floats(min_value=0, max_value=1e7))
def test_random_bytes_in_one_chunk_are_what_the_reference_writes(encode, data, t):
    assert CastEncoder(encode=encode).output_encoded(t, data) == RefOutput().lines(t, data)


@given(text=st.text() | _CHUNK.map(lambda b: b.decode("utf-8", "surrogateescape")),
       t=st.floats(min_value=0, max_value=1e7), code=st.sampled_from(["o", "i"]))
def test_text_events_are_what_the_reference_writes(text, t, code):
    assert encode_event(t, code, text) == ref_encode_event(t, code, text)


def test_the_reference_is_asciicast_with_exact_bytes():
    # The reference itself: an `o` event a player reads, then the exact bytes.
    data = "\x1b[31m\u2028".encode() + b"\xff"
    shown, exact = RefOutput().lines(1.0, data)
    assert json.loads(shown) == [1.0, "o", "\x1b[31m\u2028\ufffd"]
    assert b"\\u2028" in shown
    assert base64.b64decode(json.loads(exact)[2]) == data


@given(encode=ENCODERS, kinds=st.integers(min_value=0, max_value=34), repeat=st.integers(min_value=1, max_value=300),
       t=st.floats(min_value=0, max_value=1e7))
def test_text_with_any_number_of_kinds_of_escape_is_what_the_reference_writes(encode, kinds, repeat, t):
    # UTF-8 with 0 to all 34 kinds of byte JSON escapes, each many times over (escape-heavy output: thousands of
    # ESC, CR and LF in a chunk), on both sides of the count where JSON's own encoder takes over.
    escaped = [c for c in range(128) if chr(c) in json.encoder.ESCAPE_DCT][:kinds]
    data = ("\u2018é\u2019".encode() + bytes(escaped) + b"\x1b[0m ok\r\n") * repeat
    assert CastEncoder(encode=encode).output_encoded(t, data) == RefOutput().lines(t, data)


def test_the_masters_json_strings_are_the_standard_librarys_for_every_character():
    # Every Unicode scalar value, alone and all together: what orjson writes is what json writes.
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    assert orjson.dumps("".join(chars)) == json_string("".join(chars))
    assert [c for c in chars[:0x3000] if orjson.dumps(c) != json_string(c)] == []


@given(encode=ENCODERS, chunks=st.lists(_CHUNK | st.binary(min_size=200, max_size=9000)
                                       | st.tuples(_CHUNK, st.binary(max_size=6000), _CHUNK).map(b"".join),
                                       max_size=10),
       t=st.floats(min_value=0, max_value=1e7))
def test_output_attaching_is_what_the_reference_writes(encode, chunks, t):
    # Chunks of every density of bytes that are not UTF-8: text with a stray byte, random bytes.
    ours, ref = CastEncoder(encode=encode), RefAttaching()
    exact = b""
    for i, chunk in enumerate(chunks):
        got = ours.output_attaching(t + i, chunk)
        assert got == ref.attaching(t + i, chunk)
        lines, attached = got
        for line in lines:
            assert len(line.decode("utf-8").splitlines()) == 1  # no raw line break in the line
        exact += attached if attached else b"".join(json.loads(line)[2].encode("utf-8") for line in lines)
    # With what the decoder holds at the end, exactly the stream's bytes.
    tail = [line.encode("utf-8", "surrogateescape") for line in ours.flush(t)]
    tail_bytes = b"".join(base64.b64decode(json.loads(line)[2]) for line in tail if json.loads(line)[1] == "ob")
    if not tail_bytes:
        tail_bytes = b"".join(json.loads(line)[2].encode("utf-8") for line in tail)
    assert exact + tail_bytes == b"".join(chunks)


def test_binary_is_recorded_byte_by_byte_and_shown_as_before_and_text_with_a_stray_byte_as_decoded():
    encoder = CastEncoder(encode=orjson.dumps)
    binary = bytes(range(256)) * 4  # every byte UTF-8 never holds, 13 in 256
    [line], exact = encoder.output_attaching(1.0, binary)
    assert exact == binary
    # Recorded with "?" for each byte >= 0x80 (the same cells), shown to players with U+FFFD, from the exact bytes.
    assert json.loads(line)[2] == ("".join(chr(b) for b in range(128)) + "?" * 128) * 4
    lines = [line.decode() + "\n", CastEncoder.exact_attached(1.0, 0, len(exact))[0] + "\n"]
    shown, ob = expand_lines(lines, lambda offset, n: exact[offset:offset + n])
    assert json.loads(shown) == [1.0, "o", ("".join(chr(b) for b in range(128)) + "\ufffd" * 128) * 4]
    assert base64.b64decode(json.loads(ob)[2]) == binary
    stray = "d\u00e9j\u00e0 vu \u2018q\u2019 ".encode() * 20 + b"caf\xe9\n"  # a Latin-1 name in UTF-8 text
    [line], exact = CastEncoder(encode=orjson.dumps).output_attaching(2.0, stray)
    assert exact == stray
    assert json.loads(line)[2] == stray.decode("utf-8", "replace")


@given(encode=ENCODERS, data=st.binary(min_size=1, max_size=9000) | _CHUNK, t=st.floats(min_value=0, max_value=1e7))
def test_readers_show_the_text_of_the_exact_bytes_whatever_was_recorded(encode, data, t):
    # What an `o` event with an `oa` after it is expanded to (export, the web page's replay): the text players
    # were shown before binary chunks were recorded with "?", byte for byte, from the exact bytes.
    [*lines], exact = CastEncoder(encode=encode).output_attaching(t, data)
    if not exact:
        return
    oa = CastEncoder.exact_attached(t, 0, len(exact))[0]
    expanded = list(expand_lines([lines[0].decode() + "\n", oa + "\n", '[9.0, "m", "x"]\n'],
                                 lambda offset, n: exact[offset:offset + n]))
    assert expanded[0] == ref_dumps([round(t, 6), "o", ref_shown(exact)]) + "\n"
    assert base64.b64decode(json.loads(expanded[1])[2]) == exact
    assert expanded[2:] == ['[9.0, "m", "x"]\n']
    # A transcript written before ("o" with U+FFFD) expands to what it did: its own line.
    old = ref_dumps([round(t, 6), "o", ref_shown(exact)]) + "\n"
    assert next(expand_lines([old, oa + "\n"], lambda offset, n: exact[offset:offset + n])) == old


def test_redaction_applies_to_the_attached_bytes_too():
    encoder = CastEncoder(Redactor([r"hunter\d+"]))
    [line], exact = encoder.output_attaching(1.0, b"\xff\xfepassword hunter42 \xc0")
    assert exact == b"\xff\xfepassword [REDACTED] \xc0"
    assert json.loads(line)[2] == "??password [REDACTED] ?"
    assert json.loads(shown_event(1.0, exact))[2] == "\ufffd\ufffdpassword [REDACTED] \ufffd"
