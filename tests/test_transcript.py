"""Transcript encoding, files, crash repair; checked with asciinema itself where it matters."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from master_side.audit.recorder import SessionRecorder
from master_side.audit.transcripts import TranscriptFile, recover
from slaveshell.vocabulary.transcript import (
    REDACTED,
    CastEncoder,
    Redactor,
    encode_event,
    exact_output,
    parse_lines,
    strip_ansi,
)


def events_of(lines):
    return [json.loads(line) for line in lines]


def test_a_character_split_across_reads_comes_out_whole():
    enc = CastEncoder()
    first = enc.output(0.1, "€".encode()[:2])
    second = enc.output(0.2, "€".encode()[2:] + b"!")
    assert first == []
    assert events_of(second) == [[0.2, "o", "€!"]]


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_any_bytes_split_anyhow_are_recoverable_exactly(pieces):
    enc = CastEncoder()
    lines = []
    for i, piece in enumerate(pieces):
        lines += enc.output(float(i), piece)
    lines += enc.flush(99.0)
    cast = parse_lines(["{\"version\": 2, \"width\": 80, \"height\": 24}\n"] + [line + "\n" for line in lines])
    assert b"".join(exact_output(cast.events)) == b"".join(pieces)
    for event in cast.events:  # what players see is always valid text
        event.data.encode("utf-8")


def test_hidden_input_is_never_written_only_its_span_marker_and_visible_input_kept():
    enc = CastEncoder()
    assert enc.input(1.0, b"hunter2\r", hidden=True) == []
    assert events_of(enc.hidden_span(1.5, 8)) == [[1.5, "i", "[hidden input: 8 bytes]"], [1.5, "ih", "8"]]
    assert events_of(enc.input(2.0, b"ls\r", hidden=False)) == [[2.0, "i", "ls\r"]]
    # A character split across a hidden and a visible message never completes into the visible one.
    enc.input(3.0, "é".encode()[:1], hidden=False)
    enc.input(3.1, "é".encode()[1:], hidden=True)
    assert events_of(enc.input(3.2, b"x", hidden=False)) == [[3.2, "i", "x"]]
    assert CastEncoder(record_input=False).input(1.0, b"ls\r", hidden=False) == []


def test_configured_patterns_never_reach_the_file():
    enc = CastEncoder(Redactor([r"SECRET-\w+"]))
    assert events_of(enc.output(0.0, b"token SECRET-abc123 ok")) == [[0.0, "o", f"token {REDACTED} ok"]]
    assert events_of(enc.input(0.0, b"export T=SECRET-xyz\r", hidden=False)) == [[0.0, "i", f"export T={REDACTED}\r"]]


def test_parse_tolerates_a_partial_last_line_only():
    header = '{"version": 2, "width": 80, "height": 24}\n'
    cast = parse_lines([header, '[0.5, "o", "a"]\n', '[0.7, "o", "b'])
    assert [e.data for e in cast.events] == ["a"] and cast.truncated
    with pytest.raises(ValueError):
        parse_lines([header, '[0.5, "o", "a\n', '[0.7, "o", "b"]\n'])


def test_strip_ansi():
    assert strip_ansi("\x1b[1;31mred\x1b[0m\r\nx\x1b]0;t\x07y\x07") == "red\nxy"


# The single pass strip_ansi made before sequences and controls were taken in two passes (same result; an OSC's
# body stops at another U+009D in both, tests/test_search_hostile.py).
_ONE_PASS = re.compile(
    r"(?:\x1b\[|\x9b)[0-9;?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\x9d]*(?:\x07|\x1b\\|\x9c)|\x1b[@-Z\\-_]"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@given(st.lists(st.sampled_from(["\x1b", "[", "]", "\x9b", "\x9d", "\x9c", "\x07", "\\", "\x00", "\r", "\n", "\t",
                                 "1", ";", "?", " ", "m", "A", "@", "~", "\x7f", "\x85", "é", "x"]), max_size=40))
def test_strip_ansi_in_two_passes_removes_what_one_pass_did(parts):
    text = "".join(parts)
    assert strip_ansi(text) == _ONE_PASS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def test_transcript_file_is_private_exclusive_and_hashed(tmp_path):
    path = str(tmp_path / "s.cast")
    f = TranscriptFile(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        TranscriptFile(path)
    f.add(['{"version": 2, "width": 80, "height": 24}', '[0.1, "o", "hi"]'])
    sha = f.close()
    assert sha == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_full_disk_keeps_what_was_written_and_reports_once(tmp_path):
    path = str(tmp_path / "s.cast")
    errors = []
    rec = SessionRecorder("s1", path, CastEncoder(), None, started=0.0, clock=lambda: 1.0)
    rec.on_error = errors.append
    rec.create('{"version": 2, "width": 80, "height": 24}')
    rec.output(b"before\n")
    rec.flush()
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.file._fd)  # the disk is now full
    os.close(full)
    rec.output(b"after\n")
    rec.flush()
    rec.output(b"more\n")
    rec.flush()
    assert len(errors) == 1 and "No space left" in str(errors[0])
    cast = parse_lines(open(path).readlines())
    assert [e.data for e in cast.events] == ["before\n"] and not cast.truncated


def test_each_event_is_in_the_file_when_the_recorder_returns(tmp_path):
    # Write-through: the relay records a chunk before relaying it, so a kill -9 of the master right after a
    # viewer saw it still leaves it in the file (the kernel keeps what was written).
    path = str(tmp_path / "s.cast")
    rec = SessionRecorder("s1", path, CastEncoder(), None, started=0.0, clock=lambda: 1.0)
    rec.create('{"version": 2, "width": 80, "height": 24}')
    for data in (b"first\r\n", "\u00e9".encode()[:1], "\u00e9".encode()[1:] + b"\r\n"):
        rec.output(data)
    rec.input(b"typed", hidden=False)
    rec.marker("join: alice (watch)")
    assert rec.file is not None and rec.file.pending == 0
    cast = parse_lines(open(path, encoding="utf-8").readlines())
    assert [(e.code, e.data) for e in cast.events] == [
        ("o", "first\r\n"), ("o", "\u00e9\r\n"), ("i", "typed"), ("m", "join: alice (watch)")]


def test_recover_cuts_a_partial_line_and_marks_the_interruption(tmp_path):
    path = tmp_path / "s.cast"
    path.write_text('{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "a"]\n[1.25, "o", "b"]\n[1.5, "o", "cut sh')
    last, sha = recover(str(path), "interrupted: test")
    assert last == 1.25
    cast = parse_lines(path.read_text().splitlines(keepends=True))
    assert not cast.truncated
    assert (cast.events[-1].code, cast.events[-1].data) == ("m", "interrupted: test")
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(shutil.which("asciinema") is None, reason="asciinema is not installed (pip install '.[test]')")
def test_asciinema_plays_our_transcripts(tmp_path):
    enc = CastEncoder()
    lines = [CastEncoder.header(80, 24, 0, title="t")]
    lines += enc.output(0.1, "héllo ".encode()[:2]) + enc.output(0.2, "héllo ".encode()[2:])
    lines += enc.output(0.3, b"\xff bytes\r\n") + enc.input(0.4, b"x", hidden=True) + enc.resize(0.5, 100, 30)
    lines += enc.marker(0.6, "exit: code 0")
    path = tmp_path / "t.cast"
    path.write_text("".join(line + "\n" for line in lines))
    done = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(path)], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "héllo \ufffd bytes\r\n".encode()


@given(text=st.text(alphabet=st.characters(max_codepoint=127)) |
       st.sampled_from(["a\r\nb", 'say "hi"\\', "\x7f\x1b[0m"]), t=st.floats(min_value=0, max_value=1e7))
def test_ascii_output_events_are_the_same_lines_as_json_writes(text, t):
    # The fast path for ASCII text must write what json.dumps (ensure_ascii=False) writes, byte for byte.
    [line] = encode_event(t, "o", text)
    assert line == json.dumps([round(t, 6), "o", text], ensure_ascii=False)
    assert json.loads(line) == [round(t, 6), "o", text]


_ASCII = st.text(alphabet=st.characters(max_codepoint=127)).map(str.encode)
_TRICKY = st.sampled_from([b"a\r\nb\r\n", b'say "hi"\\', b"\x7f\x1b[0m\t\x00\x08\x0c", "é".encode()[:1]])


@given(pieces=st.lists(st.binary(max_size=60) | _ASCII | _TRICKY, max_size=12),
       t=st.floats(min_value=0, max_value=1e7))
def test_output_lines_as_bytes_are_the_text_lines_encoded(pieces, t):
    # The recorder's bytes path (ASCII never becomes a str) writes what the text path writes, byte for byte,
    # whatever came before (a character split across chunks, bytes that are not UTF-8).
    as_text, as_bytes = CastEncoder(), CastEncoder()
    for i, piece in enumerate(pieces):
        expected = [line.encode("utf-8") for line in as_text.output(t + i, piece)]
        assert as_bytes.output_encoded(t + i, piece) == expected


def test_a_terminal_s_output_as_bytes_plays_back_exactly(tmp_path):
    path = str(tmp_path / "s.cast")
    rec = SessionRecorder("s1", path, CastEncoder(), None, started=0.0, clock=lambda: 1.5)
    rec.create('{"version": 2, "width": 80, "height": 24}')
    chunks = [b"$ ls\r\n\x1b[01;34mdir\x1b[0m  \"q\" back\\slash\ttab\r\n", "é".encode()[:1],
              "é".encode()[1:] + b"\r\n", b"\x00\x7f plain"]
    for chunk in chunks:
        rec.output(chunk)
    lines = open(path, encoding="utf-8").read().splitlines()
    cast = parse_lines(lines)
    assert b"".join(exact_output(cast.events)) == b"".join(chunks)
    assert lines[1] == '[1.5, "o", "$ ls\\r\\n\\u001b[01;34mdir\\u001b[0m  \\"q\\" back\\\\slash\\ttab\\r\\n"]'
