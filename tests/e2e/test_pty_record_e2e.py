"""A terminal's output that is not plain ASCII (a hostile worker's, or `ls --color`'s, or a binary file cat'ed to
the terminal), recorded by a real master: the transcript holds the exact bytes the operator got (those that are
not UTF-8 in its attachment), as valid asciicast v2 lines that no line break but "\\n" splits, each event written
as the reference encoder writes it; export and replay give them back, asciinema reads the file."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from master_side.audit.export import ExportReader
from master_side.audit.transcripts import attachment_path
from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import exact_output, parse_lines, read_attached
from tests.test_transcript_bytes_path import ref_dumps, ref_encode_event, ref_recorded, ref_shown

from .conftest import shell_argv

_VALID = [b"\x1b[01;35m\x1b[K", "\u2018q\u2019 ".encode(), "\u2028\u2029\x85".encode(), "\U0001d11e".encode(),
          b'"\\', b"plain text\n"]
_INVALID = [b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00\x07\x08\x0c\x7f", "é".encode()[:1]]


def hostile_output(size: int) -> bytes:
    """Half valid UTF-8 (escape sequences, the line breaks JSON leaves raw, characters that a read of the PTY
    may split), then the same with bytes that are not UTF-8 and runs of random bytes."""
    rnd = random.Random(7)
    out = bytearray()
    while len(out) < size // 2:
        out += rnd.choice(_VALID)
    while len(out) < size:
        out += rnd.choice(_VALID + _INVALID) if rnd.random() < 0.9 else rnd.randbytes(rnd.randrange(1, 300))
    return bytes(out[:size])


def test_a_terminal_s_hostile_output_is_recorded_exactly_in_lines_a_player_reads(tmp_path):
    sb = Sandbox(str(tmp_path / "bb"), workers=["p1"])  # no redaction patterns: the bytes path of the recorder
    sb.create()
    sb.start()
    try:
        source = tmp_path / "hostile.out"
        source.write_bytes(hostile_output(600_000))
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "-t", "p1", "--", f"cat {source}"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        got = done.stdout
        assert len(got) >= 600_000  # the terminal adds a \r before each \n
    finally:
        sb.stop()
    directory = os.path.join(sb.master_dir, "transcripts")
    [cast] = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".cast")]
    with open(cast, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")  # the file is UTF-8 whatever the worker sent
    lines = text.split("\n")[:-1]
    assert len(text.splitlines()) == len(lines)  # no line break but "\n" inside a line
    cast_read = parse_lines(lines)
    assert not cast_read.truncated
    events = cast_read.events
    # The exact bytes the operator got, from the `o` events (and the attachment's bytes their `oa` events name).
    read = attachment_reader(cast)
    assert b"".join(exact_output(events, attachment=read)) == got
    assert any(e.code == "oa" for e in events) and not any(e.code == "ob" for e in events[:-3])
    # Valid UTF-8 events too (no `oa` after them), with the line breaks in them.
    assert any("\u2028" in e.data and [n.code for n in events[i + 1:i + 2]] != ["oa"] for i, e in enumerate(events))
    # Each `o` event is what the reference encoder writes for its bytes (the text recorded, when they are
    # attached); in the export, the text players are shown (U+FFFD for each byte >= 0x80 of a binary chunk).
    exported = ExportReader().read(cast, 0, 64 * len(raw)).decode("utf-8").split("\n")[:-1]
    shown = iter(line for line in exported if '"o", ' in line[:40])
    for index, line in enumerate(lines[1:]):
        t, code, _ = json.loads(line)
        after = json.loads(lines[index + 2]) if index + 2 < len(lines) else None
        if code == "o" and after is not None and after[1] == "oa":
            exact = read_attached(read, after[2])
            assert line == ref_dumps([t, "o", ref_recorded(exact)])
            assert next(shown) == ref_dumps([t, "o", ref_shown(exact)])
        elif code == "o" and (after is None or after[1] != "ob"):
            assert [line] == ref_encode_event(t, "o", json.loads(line)[2])
            assert next(shown) == line


def attachment_reader(cast):
    def read(offset, length):
        with open(attachment_path(cast), "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


def test_a_binary_file_cat_ed_to_the_terminal_replays_exactly_and_asciinema_reads_the_file(tmp_path):
    sb = Sandbox(str(tmp_path / "bb"), workers=["p1"])
    sb.create()
    sb.start()
    try:
        source = tmp_path / "core"
        source.write_bytes(random.Random(25).randbytes(400_000))
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "-t", "p1", "--", f"cat {source}"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        got = done.stdout
        directory = os.path.join(sb.master_dir, "transcripts")
        [cast] = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".cast")]
        with open(cast, encoding="utf-8") as f:
            session = parse_lines(f).header["slaveshell"]["session"]

        def slaveshell(*args):
            return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=120)

        exported = slaveshell("export", session)
        replayed = slaveshell("replay", session, "--speed", "1000", "--idle-limit", "0.01")
    finally:
        sb.stop()
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    # Export: self-contained (`oa` became `ob`), the operator's bytes exactly; replay plays them.
    events = parse_lines(exported.stdout.decode("utf-8").split("\n")[:-1]).events
    assert "oa" not in {e.code for e in events} and "ob" in {e.code for e in events}
    assert b"".join(exact_output(events)) == got
    assert replayed.stdout == got
    # The file on the master: its exact bytes through the attachment; the attachment is the binary output.
    with open(cast, encoding="utf-8") as f:
        on_disk = parse_lines(f).events
    assert b"".join(exact_output(on_disk, attachment=attachment_reader(cast))) == got
    assert os.path.getsize(attachment_path(cast)) >= 0.99 * len(got) - 1000
    # What players are given in the export: a U+FFFD for each byte >= 0x80, as the terminal showed them.
    exported_text = "".join(e.data for e in events if e.code == "o")
    assert exported_text == "".join(chr(b) if b < 0x80 else "\ufffd" for b in got)
    # asciinema 2.4 reads the file as it is (it skips `oa`), and shows the text of each byte ("?" for those >= 0x80,
    # in the same cells).
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", cast], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert played.returncode == 0, played.stderr[-2000:]
    shown = played.stdout.decode("utf-8")
    assert shown == "".join(e.data for e in on_disk if e.code == "o")
    assert abs(len(shown) - len(got)) < len(got) // 50  # about one character a byte
