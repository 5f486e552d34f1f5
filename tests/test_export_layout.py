"""`slaveshell export`/`replay` read a bulk session's transcript through master_side.audit.export: the
expanded stream (each `a` event replaced by its chunk's `o` events) by offset. What it must give: the same bytes
as expanding the whole file at once, at any offset, while the transcript grows; and a bounded memory whatever the
number of events a worker made."""

import os
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from master_side.audit import export as transcript_export
from master_side.audit.export import ExportReader
from master_side.audit.recorder import SessionRecorder
from master_side.audit.transcripts import attachment_path
from slaveshell.vocabulary.protocol import ExitStatus
from slaveshell.vocabulary.transcript import CastEncoder, Redactor, expand_lines, may_be_attached

HEADER = '{"version": 2, "width": 80, "height": 24}'


class Index:
    def hidden_input(self, session_id, counts):
        pass

    def record_error(self, session_id, error):
        raise AssertionError(error)

    def recorded(self, session, ended, sha256, hidden, attachment_sha256=None):
        pass


class Ended:
    status = ExitStatus(code=0)


def recorder(path, bulk=True):
    rec = SessionRecorder("s1", str(path), CastEncoder(Redactor(())), Index(), started=0.0, clock=lambda: 1.5,
                          bulk=bulk)
    rec.create(HEADER)
    return rec


def whole(path):
    def read(offset, length):
        with open(attachment_path(str(path)), "rb") as f:
            f.seek(offset)
            return f.read(length)

    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return "".join(expand_lines(f, read)).encode("utf-8", "surrogateescape")


def live(path):
    """`whole` of a transcript still being written: without a last `o` line that an `oa` line may still follow
    (its text holds "?" or U+FFFD): readers give it once the next line is written."""
    data = whole(path)
    last = data.rfind(b"\n", 0, len(data) - 1) + 1
    return data[:last] if may_be_attached(data[last:]) else data


chunks = st.one_of(
    st.binary(min_size=1, max_size=64),  # short: inline text or a tiny attached chunk
    st.text(min_size=1, max_size=3000).map(lambda s: s.encode()),  # inline text
    st.integers(5000, 150_000).map(lambda n: os.urandom(n)),  # attached, expands to many lines
)


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.lists(chunks, min_size=1, max_size=12), min_size=1, max_size=4),
       reads=st.lists(st.tuples(st.floats(0, 1.2), st.integers(1, 200_000)), min_size=1, max_size=12),
       checkpoint=st.sampled_from([64, 4096, 1 << 20]), bulk=st.booleans())
def test_any_read_of_a_growing_transcript_is_that_slice_of_its_whole_expansion(tmp_path_factory, batches, reads,
                                                                                checkpoint, bulk):
    # bulk: `a` events; a terminal's (bulk False): `o` events, an `oa` after those of bytes that are not UTF-8,
    # whose `o` text readers replace with what players are shown.
    path = tmp_path_factory.mktemp("t") / "s1.cast"
    rec = recorder(path, bulk)
    reader = ExportReader()
    old = transcript_export.CHECKPOINT
    transcript_export.CHECKPOINT = checkpoint
    try:
        for batch in batches:  # the session goes on between reads
            for chunk in batch:
                rec.output(chunk)
            expected = live(path)
            for fraction, size in reads:
                offset = int(fraction * len(expected))
                assert reader.read(str(path), offset, size) == expected[offset: offset + size]
        rec.end(Ended())
        expected = whole(path)
        got, offset = bytearray(), 0
        while page := reader.read(str(path), offset, 65536):
            got += page
            offset += len(page)
        assert bytes(got) == expected
    finally:
        transcript_export.CHECKPOINT = old


def test_a_worker_making_many_tiny_attached_chunks_costs_an_export_little_memory(tmp_path):
    """Each 1-byte chunk that is not UTF-8 is an `a` event; 20,000 of them were 20,000 objects (~4.7 MB) held
    for as long as the layout was kept (up to 8 transcripts at once)."""
    path = tmp_path / "s1.cast"
    rec = recorder(path)
    for i in range(20_000):
        rec.output(bytes([0x80 + i % 64]))
    rec.end(Ended())
    expected = whole(path)
    reader = ExportReader()
    tracemalloc.start()
    try:
        got, offset = bytearray(), 0
        while page := reader.read(str(path), offset, 65536):
            got += page
            offset += len(page)
        del got[:]  # the operator's copy is not the reader's memory
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert offset == len(expected)
    assert held < 1_000_000, f"the export reader holds {held} bytes for a transcript of {len(expected)}"
