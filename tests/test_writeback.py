"""A transcript's pages leave the page cache as it is written (master_side.audit.writeback): a long session's
`.cast` and attachment hold about one STEP of cache, not their size, and what they hold is unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from master_side.audit import writeback
from master_side.audit.transcripts import Attachment, TranscriptFile

pytestmark = [pytest.mark.skipif(not writeback.AVAILABLE, reason="no sync_file_range here"),
              pytest.mark.skipif(shutil.which("fincore") is None, reason="no fincore (util-linux) to read the cache")]

MB = 1024 * 1024


def _cached(path: Path) -> int:
    """The bytes of `path` in the page cache (util-linux's fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _drained() -> None:
    writeback._WRITEBACK.submit(lambda: None).result(timeout=60)


@pytest.fixture
def where(tmp_path: Path) -> Path:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        pytest.skip(f"{fs} keeps every page in memory")
    directory = tmp_path / "t"
    directory.mkdir(mode=0o700)
    return directory


def test_attachment_written_behind_leaves_the_cache_and_stays_exact(where: Path) -> None:
    attachment = Attachment(str(where / "s.bin"))
    sha = hashlib.sha256()
    block = os.urandom(512 * 1024)
    peak = 0
    for i in range(96):  # 48 MiB, six steps
        data = bytes([i]) + block[1:]
        sha.update(data)
        _, write = attachment.write_behind(data)
        write.result(timeout=60)
        attachment.written(data)
        if i % 16 == 15:
            _drained()
            peak = max(peak, _cached(where / "s.bin"))
    assert peak <= 3 * writeback.STEP, f"{peak} bytes of a 48 MiB attachment were still cached"
    assert attachment.close() == sha.hexdigest()
    _drained()
    assert _cached(where / "s.bin") < writeback.STEP
    assert hashlib.sha256((where / "s.bin").read_bytes()).hexdigest() == sha.hexdigest()


def test_transcript_lines_leave_the_cache_and_stay_exact(where: Path) -> None:
    transcript = TranscriptFile(str(where / "s.cast"))
    line = "[0.5, \"o\", \"" + "x" * 4000 + "\"]"
    for _ in range(6):
        transcript.add([line] * 1024)  # about 4 MiB a flush
        transcript.flush()
    digest = transcript.close()
    _drained()
    assert _cached(where / "s.cast") < writeback.STEP
    content = (where / "s.cast").read_bytes()
    assert hashlib.sha256(content).hexdigest() == digest
    assert content == ((line + "\n") * 6144).encode()


def test_a_short_transcript_is_left_alone(where: Path) -> None:
    transcript = TranscriptFile(str(where / "short.cast"))
    transcript.add(["[0.1, \"o\", \"hello\"]"])
    transcript.flush()
    assert transcript._writeback._own is None  # no descriptor, no job for a file under STEP
    transcript.close()
    _drained()
    assert _cached(where / "short.cast") > 0
