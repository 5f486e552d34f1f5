"""Bulk streams (sessions without a terminal) on the master: recorded raw in the transcript's attachment, read
back self-contained by export and search, repaired after a crash; larger messages and windows in the relay."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from master_side.audit.export import ExportReader, read_cast
from master_side.audit.hashing import HASH_BATCH, MAX_HASH_BATCHES
from master_side.audit.recorder import SessionRecorder
from master_side.audit.search import search as _search
from master_side.audit.transcripts import Attachment, attachment_path, recover
from master_side.sessions.session import WINDOW_TOLERANCE, MasterSession
from slaveshell.vocabulary.flow import BULK_CHUNK, BULK_WINDOW
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import MAX_CHUNK, ExitStatus, OpenRequest, ProtocolError
from slaveshell.vocabulary.transcript import CastEncoder, Redactor, exact_output, expand_lines, parse_lines
from tests.recorded import ToViewer, ToWorker

HEADER = '{"version": 2, "width": 80, "height": 24}'
ALICE = Identity(1000, 1000, 1, "alice", frozenset())
MB = 1024 * 1024


class Index:
    def __init__(self):
        self.ends = []
        self.errors = []

    def hidden_input(self, session_id, counts):
        pass

    def record_error(self, session_id, error):
        self.errors.append(error)

    def recorded(self, session, ended, sha256, hidden, attachment_sha256=None):
        self.ends.append((sha256, attachment_sha256))


class Ended:
    status = ExitStatus(code=0)


def bulk_recorder(tmp_path, redact=()):
    index = Index()
    rec = SessionRecorder("s1", str(tmp_path / "s1.cast"), CastEncoder(Redactor(redact)), index, started=0.0,
                          clock=lambda: 1.5, bulk=True)
    rec.create(HEADER)
    return rec, index


def events(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_lines(f).events


def sizes_on_disk(tmp_path):
    return sum(os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path))


def test_bulk_chunks_are_on_disk_raw_when_output_returns_and_short_text_stays_playable(tmp_path):
    rec, index = bulk_recorder(tmp_path)
    binary = os.urandom(100_000)
    rec.output(b"short text\n")
    rec.output(binary)
    rec.output(b"\xff\xfe oops", 2)
    # Write-through, before the relay shows the chunk to anyone: the raw bytes and the event that names them.
    bin_path = attachment_path(rec.path)
    with open(bin_path, "rb") as f:
        assert f.read() == binary + b"\xff\xfe oops"
    assert [(e.code, e.data) for e in events(rec.path)] == [
        ("o", "short text\n"), ("a", "1 0 100000"), ("a", "2 100000 7")]
    assert os.stat(bin_path).st_mode & 0o777 == 0o600
    rec.end(Ended())
    sha = hashlib.sha256(open(bin_path, "rb").read()).hexdigest()
    cast_sha = hashlib.sha256(open(rec.path, "rb").read()).hexdigest()
    assert index.ends == [(cast_sha, sha)]
    last = events(rec.path)[-2:]
    assert [(e.code, e.data) for e in last] == [
        ("m", f"attachment: s1.bin, 100007 bytes, sha256 {sha}"), ("m", "exit: code 0")]


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_storage_of_20_mb_of_bulk_output_is_within_5_percent_of_the_output(tmp_path, kind):
    # What a user sees on the master's disk: the transcript's files against the bytes the command printed.
    if kind == "binary":
        payload = os.urandom(20 * MB)
    else:
        payload = base64.encodebytes(os.urandom(15 * MB))[: 20 * MB]
    rec, _ = bulk_recorder(tmp_path)
    empty = sizes_on_disk(tmp_path)
    for i in range(0, len(payload), BULK_CHUNK):
        rec.output(payload[i: i + BULK_CHUNK])
    rec.end(Ended())
    assert (sizes_on_disk(tmp_path) - empty) / len(payload) <= 1.05
    # ... and the exact bytes come back.
    reader = ExportReader()
    assert b"".join(exact_output(events(rec.path), attachment=lambda o, n: _read(rec.path, o, n))) == payload
    assert reader.read(rec.path, 0, 10)  # readable


def _read(cast, offset, length):
    with open(attachment_path(cast), "rb") as f:
        f.seek(offset)
        return f.read(length)


def test_export_is_a_self_contained_cast_read_page_by_page(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    payload = [b"hello \xc3", b"\xa9 world\n", os.urandom(70_000), b"x" * 5000, b"done\n"]
    for chunk in payload:
        rec.output(chunk)
    rec.end(Ended())
    with open(rec.path, encoding="utf-8", errors="surrogateescape") as f:
        whole = "".join(expand_lines(f, lambda o, n: _read(rec.path, o, n))).encode("utf-8", "surrogateescape")
    reader = ExportReader()
    pages, offset = [], 0
    while True:  # as `slaveshell export` asks for it: MAX_CHUNK at a time
        page = reader.read(rec.path, offset, MAX_CHUNK)
        pages.append(page)
        offset += len(page)
        if len(page) < MAX_CHUNK:
            break
    exported = b"".join(pages)
    assert exported == whole
    # An old reader (no attachment) gets every byte back from the export alone; nothing refers to a file.
    cast = parse_lines(exported.decode("utf-8", "surrogateescape").splitlines(keepends=True))
    assert b"".join(exact_output(cast.events)) == b"".join(payload)
    assert "a" not in {e.code for e in cast.events}
    # A transcript without an attachment is served byte for byte.
    plain = tmp_path / "plain.cast"
    plain.write_text(HEADER + '\n[0.1, "o", "hi"]\n')
    assert reader.read(str(plain), 0, MAX_CHUNK) == plain.read_bytes()


@pytest.mark.skipif(shutil.which("asciinema") is None, reason="asciinema is not installed (pip install '.[test]')")
def test_asciinema_plays_the_export_and_skips_attachment_events_in_the_file(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    rec.output(b"inline\n")
    rec.output(b"bulk line\n" * 1000)
    rec.end(Ended())
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", rec.path], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert played.returncode == 0 and played.stdout == b"inline\n"  # the file itself: valid, `a` skipped
    export = tmp_path / "export.cast"
    export.write_bytes(ExportReader().read(rec.path, 0, 10 * MB))
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(export)], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert played.stdout == b"inline\n" + b"bulk line\n" * 1000


def test_search_finds_text_in_attached_output(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    rec.output(b"noise " * 2000 + b"NEEDLE-42 in the haystack")
    rec.end(Ended())
    assert "NEEDLE-42" in "".join(e.data for e in read_cast(rec.path).events if e.code == "o")
    row = {"id": "s1", "worker": "w1", "operator": "alice", "started": "2026-01-01T00:00:00",
           "hidden_bytes": 0, "hidden_spans": 0, "hidden_flag": False}
    [hit] = _search([(row, rec.path)], "needle-42", 10)
    assert hit["stream"] == "output" and "NEEDLE-42" in hit["context"]


def test_search_reads_attached_output_as_the_expanded_transcript_would_show_it(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    rec.output(b"inline \x1b[31mred\x1b[0m\n")
    rec.output(b"\x00" * 70000 + "caf\u00e9 ".encode() * 900 + b"\xff\xfe half \xe2\x82" + b"x" * 5000)
    rec.output(b"\xac and on")
    rec.end(Ended())
    with open(rec.path, encoding="utf-8", errors="surrogateescape") as f:
        expanded = parse_lines(expand_lines(f, lambda o, n: _read(rec.path, o, n), exact=False))
    assert read_cast(rec.path).events == expanded.events


def test_redaction_applies_to_bulk_output_too(tmp_path):
    rec, _ = bulk_recorder(tmp_path, redact=[r"SECRET-\w+"])
    rec.output(b"\xff" * 5000 + b" token SECRET-abc123 end")
    rec.end(Ended())
    data = open(attachment_path(rec.path), "rb").read()
    assert b"SECRET-abc123" not in data and data == b"\xff" * 5000 + b" token [REDACTED] end"


def test_a_full_disk_keeps_the_attachment_consistent_with_the_transcript(tmp_path):
    rec, index = bulk_recorder(tmp_path)
    rec.output(b"a" * 5000)
    rec.attachment.write(b"")  # opened
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.attachment._fd)
    os.close(full)
    rec.output(b"b" * 5000)
    rec.output(b"c" * 5000)
    assert len(index.errors) == 1 and "No space left" in str(index.errors[0])
    assert [(e.code, e.data) for e in events(rec.path)] == [("a", "1 0 5000")]


def test_recover_cuts_the_attachment_back_to_what_the_transcript_names(tmp_path):
    path = tmp_path / "s.cast"
    path.write_text(HEADER + '\n[0.5, "a", "1 0 4"]\n[1.25, "a", "2 4 3"]\n[1.5, "a", "1 7 ')
    # A crash after the bytes were written and before (or while) their event was.
    (tmp_path / "s.bin").write_bytes(b"abcdefg" + b"unreferenced tail")
    last, sha = recover(str(path), "interrupted: test")
    assert last == 1.25
    assert (tmp_path / "s.bin").read_bytes() == b"abcdefg"
    evs = events(str(path))
    assert [(e.code, e.data) for e in evs[-2:]] == [
        ("m", f"attachment: s.bin, 7 bytes, sha256 {hashlib.sha256(b'abcdefg').hexdigest()}"),
        ("m", "interrupted: test")]
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert b"".join(exact_output(evs, attachment=lambda o, n: _read(str(path), o, n))) == b"abcdefg"


# -- the relay ----------------------------------------------------------------------------------------


def session(pty):
    s = MasterSession(OpenRequest(worker="w1", pty=pty), ALICE, lambda s: None)
    to_op, to_w = [], []
    owner = s.start(ToViewer(lambda *a: to_op.append(a)), ToWorker(lambda *a: to_w.append(a)))
    return s, owner, to_op, to_w


def test_a_bulk_stream_takes_large_messages_and_hands_each_to_its_viewers_whole():
    # Each viewer's sink cuts it to what its client takes (tests/test_operator_wire.py, tests/test_web_access.py).
    s, owner, to_op, to_w = session(pty=False)
    data = os.urandom(BULK_CHUNK)
    s.worker_output(1, data)
    assert to_op == [("output", 1, data)]
    s.viewer_ack(owner, BULK_CHUNK)
    assert to_w == [("ack", BULK_CHUNK)]
    with pytest.raises(ProtocolError, match="over the limit"):
        s.worker_output(1, b"x" * (BULK_CHUNK + 1))


def test_a_terminal_keeps_its_small_messages_and_window():
    s, *_ = session(pty=True)
    with pytest.raises(ProtocolError, match="over the limit"):
        s.worker_output(1, b"x" * (MAX_CHUNK + 1))
    b, *_ = session(pty=False)
    assert b.output_window.size == BULK_WINDOW and s.output_window.size < BULK_WINDOW
    for _ in range(BULK_WINDOW * WINDOW_TOLERANCE // BULK_CHUNK + 1):
        b.worker_output(1, b"x" * BULK_CHUNK)
    with pytest.raises(ProtocolError, match="past the flow-control window"):
        b.worker_output(1, b"x")


def test_a_watcher_as_fast_as_the_owner_keeps_up_with_a_bulk_stream():
    s, owner, to_op, _ = session(pty=False)
    seen = []
    from master_side.sessions.session import Role

    watcher = s.add_viewer(ALICE, Role.WATCH, ToViewer(lambda *a: seen.append(a)))
    for _ in range(BULK_WINDOW // BULK_CHUNK):
        s.worker_output(1, b"y" * BULK_CHUNK)
    assert watcher in s.viewers and not [m for m in seen if m[0] == "exit"]
    assert json.dumps(len(seen))  # got every piece
    assert sum(len(m[2]) for m in seen if m[0] == "output") == BULK_WINDOW


def test_bulk_input_an_upload_is_kept_raw_too_and_comes_back_as_input(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    upload = os.urandom(300_000)
    rec.input(b"ls\n", hidden=False)
    rec.input(upload, hidden=False)
    rec.output(b"ok\n")
    rec.end(Ended())
    evs = events(rec.path)
    assert [(e.code, e.data) for e in evs[:3]] == [("i", "ls\n"), ("a", "0 0 300000"), ("o", "ok\n")]
    read = lambda o, n: _read(rec.path, o, n)  # noqa: E731
    assert b"".join(exact_output(evs, "i", attachment=read)) == b"ls\n" + upload
    assert b"".join(exact_output(evs, "o", attachment=read)) == b"ok\n"
    exported = ExportReader().read(rec.path, 0, 10 * MB)
    cast = parse_lines(exported.decode("utf-8", "surrogateescape").splitlines(keepends=True))
    assert b"".join(exact_output(cast.events, "i")) == b"ls\n" + upload
    assert os.path.getsize(attachment_path(rec.path)) == len(upload)


def test_the_retention_setting_is_checked_with_the_other_numbers():
    from master_side.config import ShellConfig

    assert ShellConfig(transcript_retention_days=30).errors() == []
    assert ShellConfig(transcript_retention_days=None).errors() == []
    assert ShellConfig(transcript_retention_days=-1).errors() == [
        "transcript_retention_days must be a non-negative number or None"]
    assert ShellConfig(transcript_retention_days="30").errors()


def test_an_attachments_sha256_covers_every_chunk_across_hashing_batches(tmp_path):
    # Chunks go to the hashing thread HASH_BATCH bytes at a time, with at most MAX_HASH_BATCHES waiting: a stream
    # of odd-sized chunks over many batches, and a digest asked in the middle of one, still cover every byte.
    attachment = Attachment(str(tmp_path / "s.bin"))
    sha = hashlib.sha256()
    for i in range((MAX_HASH_BATCHES + 3) * HASH_BATCH // 300_001 + 1):
        chunk = os.urandom(300_001 - i)
        attachment.write(chunk)
        sha.update(chunk)
        if i == 9:
            assert attachment.sha256() == sha.hexdigest()
    assert attachment.close() == sha.hexdigest() == hashlib.sha256((tmp_path / "s.bin").read_bytes()).hexdigest()


# -- input piped into a bulk stream, written behind ----------------------------------------------------


class Reactor:
    """What the trail's reactor gives the recorder: callFromThread, run here when the test says so."""

    def __init__(self):
        self.calls = []

    def call(self, f):
        self.calls.append(f)

    def run_when(self, how_many):
        for _ in range(1000):
            if len(self.calls) >= how_many:
                break
            time.sleep(0.01)
        calls, self.calls = self.calls, []
        for f in calls:
            f()


def test_piped_input_written_behind_is_acknowledged_only_once_its_bytes_and_event_are_in_the_files(tmp_path):
    rec, index = bulk_recorder(tmp_path)
    reactor = Reactor()
    rec.call_in_reactor = reactor.call
    first, second, third = os.urandom(300_000), os.urandom(BULK_CHUNK), os.urandom(5000)
    recorded = []
    rec.input(first, hidden=False, recorded=lambda: recorded.append(1))
    rec.input(second, hidden=False, recorded=lambda: recorded.append(2))
    # Not yet recorded: no event names the bytes, and the sender's credit waits.
    assert recorded == [] and events(rec.path) == []
    reactor.run_when(2)
    assert recorded == [1, 2]
    assert [(e.code, e.data) for e in events(rec.path)] == [("a", "0 0 300000"), ("a", f"0 300000 {BULK_CHUNK}")]
    # Another event waits for the input still being written: the transcript keeps the order they came in.
    rec.input(third, hidden=False, recorded=lambda: recorded.append(3))
    rec.output(b"x" * 5000)
    assert recorded == [1, 2, 3]
    assert [(e.code, e.data) for e in events(rec.path)][2:] == [
        ("a", f"0 {300_000 + BULK_CHUNK} 5000"), ("a", f"1 {305_000 + BULK_CHUNK} 5000")]
    rec.input(first, hidden=False, recorded=lambda: recorded.append(4))
    rec.end(Ended())  # the end waits for it too
    assert recorded == [1, 2, 3, 4]
    evs = events(rec.path)
    read = lambda o, n: _read(rec.path, o, n)  # noqa: E731
    assert b"".join(exact_output(evs, "i", attachment=read)) == first + second + third + first
    whole = (tmp_path / "s1.bin").read_bytes()
    assert index.ends[0][1] == hashlib.sha256(whole).hexdigest()
    assert evs[-2].data == f"attachment: s1.bin, {len(whole)} bytes, sha256 {index.ends[0][1]}"
    reactor.run_when(0)  # the writing thread's late calls find nothing left to do
    assert recorded == [1, 2, 3, 4]


def test_short_or_keystroke_input_is_recorded_at_once_even_with_a_reactor(tmp_path):
    rec, _ = bulk_recorder(tmp_path)
    rec.call_in_reactor = Reactor().call
    recorded = []
    rec.input(b"ls\n", hidden=False, recorded=lambda: recorded.append(1))
    rec.input(os.urandom(10_000), hidden=False)  # no callback: written here
    assert recorded == [1]
    assert [(e.code, e.data) for e in events(rec.path)] == [("i", "ls\n"), ("a", "0 0 10000")]


def test_a_full_disk_under_input_written_behind_fails_the_recording_and_keeps_the_files_consistent(tmp_path):
    rec, index = bulk_recorder(tmp_path)
    reactor = Reactor()
    rec.call_in_reactor = reactor.call
    recorded = []
    rec.input(b"a" * 5000, hidden=False, recorded=lambda: recorded.append(1))
    reactor.run_when(1)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.attachment._fd)
    os.close(full)
    rec.input(b"b" * 5000, hidden=False, recorded=lambda: recorded.append(2))
    rec.input(b"c" * 5000, hidden=False, recorded=lambda: recorded.append(3))
    reactor.run_when(2)
    # Both acknowledged (the session is ended by the recorder's on_error), neither recorded as if it were.
    assert recorded == [1, 2, 3]
    assert len(index.errors) == 1 and "No space left" in str(index.errors[0])
    assert [(e.code, e.data) for e in events(rec.path)] == [("a", "0 0 5000")]
    assert rec.attachment.size == 5000


def test_a_failure_whose_handler_ends_the_session_mid_settle_keeps_the_acknowledgements_in_order(tmp_path):
    # The session's error handler ends the session, whose end drains and settles the recorder again while the
    # failed chunk is being settled: each chunk is still acknowledged once and in order, the handler told once.
    rec, index = bulk_recorder(tmp_path)
    reactor = Reactor()
    rec.call_in_reactor = reactor.call
    told = []

    def ended_by_the_session(error):
        told.append(error)
        rec.end(Ended())

    rec.on_error = ended_by_the_session
    recorded = []
    rec.input(b"a" * 5000, hidden=False, recorded=lambda: recorded.append(1))
    reactor.run_when(1)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.attachment._fd)
    os.close(full)
    for n in (2, 3, 4):
        rec.input(bytes([96 + n]) * 5000, hidden=False, recorded=lambda n=n: recorded.append(n))
    reactor.run_when(3)
    assert recorded == [1, 2, 3, 4]
    assert len(told) == 1 and "No space left" in str(told[0])
    assert len(index.ends) == 1  # ended once, after the chunks were settled
    assert [(e.code, e.data) for e in events(rec.path)][:1] == [("a", "0 0 5000")]
    assert not any(e.code == "a" and e.data != "0 0 5000" for e in events(rec.path))


def test_a_session_waits_for_its_own_input_written_behind_not_for_a_stuck_sessions(tmp_path):
    # Session B's attachment writes into a pipe nobody reads (a disk that does not answer): its chunks stay in
    # flight. Session A's next event waits only for A's own chunk, which is written meanwhile.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rec_a, _ = bulk_recorder(tmp_path / "a")
    rec_b, _ = bulk_recorder(tmp_path / "b")
    for rec in (rec_a, rec_b):
        rec.call_in_reactor = Reactor().call
    rec_b.input(b"b" * 10_000, hidden=False, recorded=lambda: None)  # creates B's attachment
    rec_b._drain()
    read_end, write_end = os.pipe()
    os.dup2(write_end, rec_b.attachment._fd)
    os.close(write_end)
    stuck = b"B" * 300_000  # more than a pipe holds
    for _ in range(3):
        rec_b.input(stuck, hidden=False, recorded=lambda: None)
    reader = open(read_end, "rb", buffering=0)
    unblock = threading.Timer(60, reader.close)  # else, were A to wait for B, it would wait forever
    unblock.start()
    try:
        recorded = []
        rec_a.input(os.urandom(200_000), hidden=False, recorded=lambda: recorded.append("a"))
        rec_a.output(b"after")  # waits for A's chunk only
        b_in_flight = [not behind.write.done() for behind in rec_b._behind]
    finally:
        unblock.cancel()
        reader.close()  # B's writes fail now (EPIPE), B's own recording fails
    assert recorded == ["a"]
    assert [(e.code, e.data) for e in events(rec_a.path)] == [("a", "0 0 200000"), ("o", "after")]
    assert all(b_in_flight)
    rec_b._drain()
    assert rec_b.failed is not None


def test_the_relay_returns_piped_inputs_credit_only_once_the_recorder_says_it_is_recorded():
    s, owner, to_op, to_w = session(pty=False)

    class Later:
        def __init__(self):
            self.waiting = []

        def input(self, data, hidden, flush=True, recorded=None):
            self.waiting.append(recorded)

    s.recorder = later = Later()
    s.viewer_input(owner, b"x" * MAX_CHUNK)
    s.worker_input_ack(MAX_CHUNK, False)
    assert not [m for m in to_op if m[0] == "input_ack"] and owner.input_window.in_flight == MAX_CHUNK
    later.waiting.pop()()
    assert [m for m in to_op if m[0] == "input_ack"] == [("input_ack", MAX_CHUNK, False)]
    assert owner.input_window.in_flight == 0


# -- a bulk stream's output, written behind ---------------------------------------------------------------


def test_bulk_output_written_behind_is_served_only_once_its_bytes_and_event_are_in_the_files(tmp_path):
    """The relay's session with the real recorder: a `-T` stream's chunk reaches the operator, and its credit the
    worker, only once it is in the attachment and its `a` event in the transcript; the exit comes after it."""
    s, owner, to_op, to_w = session(pty=False)
    rec, index = bulk_recorder(tmp_path)
    reactor = Reactor()
    rec.call_in_reactor = reactor.call
    s.recorder = rec
    first, second = os.urandom(BULK_CHUNK), os.urandom(300_000)
    s.worker_output(1, first)
    s.worker_output(2, second)
    assert to_op == [] and events(rec.path) == []  # nothing served before it is recorded
    reactor.run_when(2)
    assert to_op == [("output", 1, first), ("output", 2, second)]
    assert [(e.code, e.data) for e in events(rec.path)] == [("a", f"1 0 {BULK_CHUNK}"),
                                                           ("a", f"2 {BULK_CHUNK} 300000")]
    s.viewer_ack(owner, BULK_CHUNK + 300_000)
    assert sum(n for kind, n in to_w if kind == "ack") == BULK_CHUNK + 300_000
    third = os.urandom(200_000)
    s.worker_output(1, third)
    s.worker_exit(0, None, "")  # the end waits for the chunk being written, which is served first
    assert to_op[2:] == [("output", 1, third), ("exit", 0, None, "")]
    read = lambda o, n: _read(rec.path, o, n)  # noqa: E731
    assert b"".join(exact_output(events(rec.path), "o", attachment=read)) == first + second + third
    reactor.run_when(0)
    assert len(to_op) == 4


def _output_past_a_full_disk(tmp_path, on_error):
    """A -T session with the real recorder: "a" written behind, then the attachment on /dev/full and "b" and "c"
    written behind (settled together, or "c" by the session's end while `on_error` ends it). `on_error` gets the
    session and the error."""
    s, owner, to_op, to_w = session(pty=False)
    rec, index = bulk_recorder(tmp_path)
    reactor = Reactor()
    rec.call_in_reactor = reactor.call
    rec.on_error = lambda error: on_error(s, error)
    s.recorder = rec
    s.worker_output(1, b"a" * 5000)
    reactor.run_when(1)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, rec.attachment._fd)
    os.close(full)
    s.worker_output(1, b"b" * 5000)
    s.worker_output(1, b"c" * 5000)
    reactor.run_when(1)
    reactor.run_when(0)
    return s, owner, to_op, to_w, index


def test_bulk_output_whose_write_fails_is_never_served_and_the_session_ends(tmp_path):
    s, owner, to_op, to_w, index = _output_past_a_full_disk(
        tmp_path, lambda s, error: s.abort(f"the transcript cannot be written: {error}"))
    assert [m for m in to_op if m[0] == "output"] == [("output", 1, b"a" * 5000)]  # never the unrecorded ones
    assert to_op[-1][0] == "exit" and "cannot be written" in to_op[-1][3]
    assert len(index.errors) == 1 and "No space left" in str(index.errors[0])


def test_bulk_output_whose_write_fails_goes_on_unrecorded_when_the_master_says_continue(tmp_path):
    """on_record_error='continue': the viewers are warned, then get the chunks written behind from the failure on
    (unrecorded, as the warning says), and the worker its credit back: the stream does not stall."""
    s, owner, to_op, to_w, _ = _output_past_a_full_disk(
        tmp_path, lambda s, error: s.notice(f"WARNING: the transcript cannot be written ({error.strerror})"))
    outputs = [m for m in to_op if m[0] == "output"]
    assert outputs[0] == ("output", 1, b"a" * 5000) and b"WARNING" in outputs[1][2]
    assert outputs[2:] == [("output", 1, b"b" * 5000), ("output", 1, b"c" * 5000)]
    s.viewer_ack(owner, sum(len(m[2]) for m in outputs))  # the client acknowledges all it got, the warning too
    assert sum(n for kind, n in to_w if kind == "ack") == 15000 and s.live
