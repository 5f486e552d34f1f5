"""A terminal's output that is not plain ASCII (a hostile worker's, or `ls --color`'s, or a binary file cat'ed to
the terminal), recorded by a real master: the transcript holds the exact bytes the operator got, as valid
asciicast v2 lines that no line break but "\\n" splits, each event written as the reference encoder writes it."""

from __future__ import annotations

import json
import os
import random
import subprocess

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.transcript import event_bytes, exact_output, parse_lines
from tests.test_transcript_bytes_path import ref_encode_event

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
    # The exact bytes the operator got, from the `o` events (and their `ob` exact bytes).
    assert b"".join(exact_output(events)) == got
    assert any(e.code == "ob" for e in events)
    # Valid UTF-8 events too (no `ob` after them), with the line breaks in them.
    assert any("\u2028" in e.data and [n.code for n in events[i + 1:i + 2]] != ["ob"] for i, e in enumerate(events))
    # Each `o` event (with its `ob`) is what the reference encoder writes for its bytes.
    for index, line in enumerate(lines[1:]):
        t, code, _ = json.loads(line)
        if code == "o":
            after = lines[index + 2] if index + 2 < len(lines) else ""
            exact = event_bytes(parse_lines([lines[0], line, after]).events, 0)
            expected = ref_encode_event(t, "o", exact.decode("utf-8", "surrogateescape"))
            assert [line, after][:len(expected)] == expected
