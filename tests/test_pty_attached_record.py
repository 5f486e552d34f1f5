"""A terminal's output that is not UTF-8, recorded by the master: its exact bytes raw in the transcript's
attachment with an `oa` event after the `o` event a player shows; read back exactly by export, replay and search,
vouched for by the closing marker, repaired after a crash, redacted; older transcripts (`ob`) read as before."""

import base64
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from master_side.audit.export import ExportReader, read_cast
from master_side.audit.recorder import SessionRecorder
from master_side.audit.transcripts import attachment_path, recover
from slaveshell.client.replay import play
from slaveshell.vocabulary.protocol import ExitStatus
from slaveshell.vocabulary.transcript import (
    CastEncoder,
    Redactor,
    encode_event,
    exact_output,
    expand_lines,
    parse_lines,
)

HEADER = '{"version": 2, "width": 80, "height": 24}'
MB = 1024 * 1024


class Index:
    def __init__(self):
        self.ends = []

    def hidden_input(self, session_id, counts):
        pass

    def record_error(self, session_id, error):
        raise AssertionError(error)

    def recorded(self, session, ended, sha256, hidden, attachment_sha256=None):
        self.ends.append((sha256, attachment_sha256))


class Ended:
    status = ExitStatus(code=0)


def pty_recorder(tmp_path, redact=()):
    index = Index()
    rec = SessionRecorder("s1", str(tmp_path / "s1.cast"), CastEncoder(Redactor(redact)), index, started=0.0,
                          clock=lambda: 1.5)
    rec.create(HEADER)
    return rec, index


def reader(path):
    def read(offset, length):
        with open(attachment_path(path), "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read


def cast_of(path):
    with open(path, encoding="utf-8") as f:
        return parse_lines(f)


def terminal_output():
    """A prompt, a binary file cat'ed to the terminal (chunks of random bytes), a file name in Latin-1, text."""
    rnd = random.Random(25)
    return ([b"$ cat core\r\n"] + [rnd.randbytes(rnd.randrange(1, 70_000)) for _ in range(12)]
            + ["r\u00e9sum\u00e9 ".encode() * 50 + b"caf\xe9.txt\r\n", b"$ "])


def test_binary_output_is_attached_raw_and_read_back_exactly(tmp_path):
    rec, index = pty_recorder(tmp_path)
    chunks = terminal_output()
    for chunk in chunks:
        rec.output(chunk)
    rec.end(Ended())
    sent = b"".join(chunks)
    events = cast_of(rec.path).events
    codes = [e.code for e in events]
    assert "ob" not in codes and "a" not in codes
    # Each chunk that is not UTF-8: its `o` event, then the `oa` naming its bytes in the attachment.
    assert codes.count("oa") == 13 and all(codes[i - 1] == "o" for i, c in enumerate(codes) if c == "oa")
    assert b"".join(exact_output(events, "o", attachment=reader(rec.path))) == sent
    with pytest.raises(ValueError, match="need a reader"):
        b"".join(exact_output(events, "o"))
    # The files: the transcript holds about 1.6x the binary bytes (their text, "?" for each byte >= 0x80, and
    # JSON's escapes of the control characters), the attachment exactly them.
    bin_path = attachment_path(rec.path)
    attached = open(bin_path, "rb").read()
    assert len(attached) == sum(len(c) for c in chunks[1:-1])
    assert os.path.getsize(rec.path) < 1.7 * len(attached)
    # Vouched for: the closing marker and the index have the attachment's sha256.
    digest = hashlib.sha256(attached).hexdigest()
    assert index.ends == [(hashlib.sha256(open(rec.path, "rb").read()).hexdigest(), digest)]
    assert [e.data for e in events if e.code == "m"] == [
        f"attachment: s1.bin, {len(attached)} bytes, sha256 {digest}", "exit: code 0"]
    # The Latin-1 name in UTF-8 text is recorded as decoded (one U+FFFD), the random bytes byte by byte ("?").
    shown = [e.data for e in events if e.code == "o"]
    assert "r\u00e9sum\u00e9 caf\ufffd.txt\r\n" in shown[-2]
    first = list(exact_output(events, "o", attachment=reader(rec.path)))[1]  # the first binary chunk's bytes
    assert shown[1] == "".join(chr(b) if b < 0x80 else "?" for b in first)


def test_export_replay_and_search_get_the_exact_bytes(tmp_path):
    rec, _ = pty_recorder(tmp_path)
    chunks = terminal_output()
    for chunk in chunks:
        rec.output(chunk)
    rec.end(Ended())
    sent = b"".join(chunks)
    # Export (what `slaveshell export`/`replay` and the web player download), read in pieces as they do: each
    # `oa` event became the `ob` event of its bytes, self-contained.
    exports, offset, pieces = ExportReader(), 0, []
    while piece := exports.read(rec.path, offset, 100_000):
        pieces.append(piece)
        offset += len(piece)
    exported = b"".join(pieces)
    lines = exported.decode("utf-8").split("\n")[:-1]
    events = parse_lines(lines).events
    assert "oa" not in [e.code for e in events] and "ob" in [e.code for e in events]
    assert b"".join(exact_output(events)) == sent
    # Players are given what they were before binary chunks were recorded with "?": U+FFFD for each byte >= 0x80.
    shown = [e.data for e in events if e.code == "o"]
    exact = list(exact_output(events))
    assert shown[1] == "".join(chr(b) if b < 0x80 else "\ufffd" for b in exact[1])  # the first binary chunk
    assert shown[-2] == exact[-2].decode("utf-8", "replace")  # the Latin-1 name
    # expand_lines (the same, in one pass) agrees.
    with open(rec.path, encoding="utf-8") as f:
        assert "".join(expand_lines(f, reader(rec.path))).encode() == exported
    # `slaveshell replay` plays the exact bytes.
    out = io.BytesIO()
    play(parse_lines(lines).header, iter(events), out, sleep=lambda s: None)
    assert out.getvalue() == sent
    # Search reads the text of the exact bytes (not the byte-by-byte text a player was given).
    texts = [e.data for e in read_cast(rec.path).events if e.code == "o"]
    assert "".join(texts) == "".join(c.decode("utf-8", "replace") for c in chunks)


def test_older_transcripts_with_base64_copies_read_exactly(tmp_path):
    path = tmp_path / "old.cast"
    data = b"\xff\xfe\x00binary\xc0"
    path.write_text(HEADER + "\n" + "\n".join(encode_event(0.5, "o", data.decode("utf-8", "surrogateescape")))
                    + "\n")
    events = cast_of(path).events
    assert [e.code for e in events] == ["o", "ob"]
    assert base64.b64decode(events[1].data) == data
    assert b"".join(exact_output(events)) == data
    assert ExportReader().read(str(path), 0, MB) == path.read_bytes()  # no attachment: served as it is


def test_a_crash_repair_cuts_the_attachment_back_to_what_the_transcript_names(tmp_path):
    rec, _ = pty_recorder(tmp_path)
    rec.output(b"\xff" * 1000)
    rec.output(b"ok\r\n")
    rec.attachment.write(b"\xfe" * 500)  # written just before a kill -9, its events never were
    rec.file.abandon()
    rec.attachment.abandon()
    with open(rec.path, "ab") as f:
        f.write(b'[1.5, "o", "\\ufffd')  # a line cut short
    recover(rec.path, "interrupted: the master stopped")
    bin_path = attachment_path(rec.path)
    assert open(bin_path, "rb").read() == b"\xff" * 1000
    events = cast_of(rec.path).events
    assert b"".join(exact_output(events, attachment=reader(rec.path))) == b"\xff" * 1000 + b"ok\r\n"
    digest = hashlib.sha256(b"\xff" * 1000).hexdigest()
    assert [e.data for e in events if e.code == "m"] == [f"attachment: s1.bin, 1000 bytes, sha256 {digest}",
                                                         "interrupted: the master stopped"]


def test_redaction_patterns_apply_to_the_attached_bytes(tmp_path):
    rec, _ = pty_recorder(tmp_path, redact=[r"token=\w+"])
    rec.output(b"\xff\x00 token=s3cr3t \xfe\r\n")
    rec.end(Ended())
    assert b"s3cr3t" not in open(rec.path, "rb").read()
    assert open(attachment_path(rec.path), "rb").read() == b"\xff\x00 [REDACTED] \xfe\r\n"


def test_a_terminal_session_with_utf8_output_only_has_no_attachment(tmp_path):
    rec, index = pty_recorder(tmp_path)
    rec.output("caf\u00e9 \u2018ok\u2019\r\n".encode())
    rec.end(Ended())
    assert not os.path.exists(attachment_path(rec.path))
    assert index.ends[0][1] is None


@pytest.mark.skipif(shutil.which("asciinema") is None, reason="asciinema is not installed (pip install '.[test]')")
def test_asciinema_reads_the_file_and_shows_what_the_terminal_showed(tmp_path):
    rec, _ = pty_recorder(tmp_path)
    rec.output(b"$ head -c 8 core\r\n")
    rec.output(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    rec.output("\r\ncaf\u00e9 ".encode() * 40 + b"caf\xe9\r\n")
    rec.end(Ended())
    # The export (what `slaveshell export` and the web page's player get) shows what the terminal showed.
    exported = tmp_path / "export.cast"
    exported.write_bytes(ExportReader().read(rec.path, 0, 1 << 20))
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(exported)], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert played.returncode == 0, played.stderr
    assert played.stdout == ("$ head -c 8 core\r\n\x7fELF\x02\x01\x01\x00\ufffd\ufffd"
                             + "\r\ncaf\u00e9 " * 40 + "caf\ufffd\r\n").encode()
    # The file itself plays too, a binary chunk's bytes >= 0x80 as "?" in the same cells.
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", rec.path], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert played.returncode == 0, played.stderr
    assert played.stdout == ("$ head -c 8 core\r\n\x7fELF\x02\x01\x01\x00??"
                             + "\r\ncaf\u00e9 " * 40 + "caf\ufffd\r\n").encode()
    assert json.loads(open(rec.path).read().split("\n")[3])[1] == "oa"


def test_a_full_disk_under_binary_output_fails_the_recording_once_and_names_no_missing_bytes(tmp_path):
    rec, index = pty_recorder(tmp_path)
    errors = []
    index.record_error = lambda session_id, error: errors.append(error)
    rec.output(b"\xff" * 3000)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.attachment._fd)
    os.close(full)
    rec.output(b"\xfe" * 3000)
    rec.output(b"\xfd" * 3000)
    assert len(errors) == 1 and "No space left" in str(errors[0])
    events = cast_of(rec.path).events
    assert [e.code for e in events] == ["o", "oa"]  # nothing after the failure, nothing naming lost bytes
    assert b"".join(exact_output(events, attachment=reader(rec.path))) == b"\xff" * 3000


def test_binary_output_of_many_sessions_holds_at_most_the_hashing_bound_in_total_and_loses_nothing(tmp_path,
                                                                                                 monkeypatch):
    """A hostile worker sends binary junk on 12 terminal sessions, each just under a hashing batch (2 MiB) and then
    idle: what waits to be hashed is gathered per session, and in total it stays within the master's bound (8 MiB
    here); past it the sessions' chunks are hashed on the calling thread. Every session's transcript and
    attachment are whole, and the sha256 the index and the closing marker give is the file's. The operator's log
    says once that the bound was reached; nothing is held after the sessions end."""
    from twisted.logger import globalLogPublisher

    from master_side.audit import hashing

    budget = hashing.HashBudget(8 * MB)
    monkeypatch.setattr(hashing, "BUDGET", budget)
    warnings = []

    def observe(event):
        if "bytes waiting to be hashed" in event.get("log_format", ""):
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    rnd = random.Random(7)
    sessions = []
    try:
        for i in range(12):
            session_dir = tmp_path / f"s{i}"
            session_dir.mkdir()
            rec, index = pty_recorder(session_dir)
            sent = b""
            while len(sent) < hashing.HASH_BATCH - 64 * 1024:
                chunk = b"\xff" + rnd.randbytes(16 * 1024 - 2) + b"\n"  # not UTF-8: attached (`oa`)
                rec.output(chunk)
                sent += chunk
                assert budget.settled() <= budget.total
            sessions.append((rec, index, sent))
        assert budget.peak <= budget.total and budget.hashed_here > 0
        assert len(warnings) == 1 and budget.settled() > 4 * MB  # the first sessions' batches wait, gathered
        for rec, index, sent in sessions:
            rec.end(Ended())
            bin_bytes = open(attachment_path(rec.path), "rb").read()
            assert bin_bytes == sent
            assert index.ends[0][1] == hashlib.sha256(sent).hexdigest()
            assert b"".join(exact_output(cast_of(rec.path).events, attachment=reader(rec.path))) == sent
            marker = cast_of(rec.path).events[-2].data
            assert marker.endswith(f"{len(sent)} bytes, sha256 {hashlib.sha256(sent).hexdigest()}")
        assert budget.settled() == 0
    finally:
        globalLogPublisher.removeObserver(observe)


def test_a_recording_dropped_with_output_waiting_to_be_hashed_gives_its_share_of_the_bound_back(tmp_path,
                                                                                               monkeypatch):
    from master_side.audit import hashing

    budget = hashing.HashBudget(8 * MB)
    monkeypatch.setattr(hashing, "BUDGET", budget)
    rec, _ = pty_recorder(tmp_path)
    rec.output(b"\xff" * 100_000)
    assert budget.settled() == 100_000
    rec.attachment.abandon()
    del rec
    import gc

    gc.collect()
    assert budget.settled() == 0
