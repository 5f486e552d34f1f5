"""Input as a bulk stream (slaveshell.vocabulary.flow.input_limits), against the real master and worker: what is piped
into a `-T` session arrives byte-exact in messages of up to 512 KiB on every hop, while a terminal's input stays in
messages of 64 KiB at most. The message sizes are read from the master's log line at each session's end (its
`window_report`), never times (bench/fair.py's `input` rows measure those)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

KIB = 1024
# The master's line at a session's end: its exit code, and its input messages' bound and largest (KiB).
ENDED = re.compile(rb"ended \(code (\S+), signal \S+\); windows: output granted \d+ KiB, peak \d+ KiB in flight; "
                   rb"input granted \d+ KiB, peak \d+ KiB in flight, messages up to (\d+) KiB, largest (\d+) KiB")


def _master_log(sb: Sandbox) -> Path:
    return Path(sb.master_dir, "twistd.log")


def _ended(sb: Sandbox, start: int, code: str) -> list[tuple[int, int]]:
    """(bound, largest) in KiB of the input messages of the sessions that ended with exit `code` since `start`
    bytes of the master's log."""
    log = _master_log(sb).read_bytes()[start:]
    return [(int(bound), int(largest)) for ended, bound, largest in ENDED.findall(log) if ended == code.encode()]


def test_megabytes_piped_into_a_T_session_arrive_exact_in_bulk_messages(sandbox: Sandbox) -> None:
    data = os.urandom(12 * 1024 * 1024 + 12345)
    start = _master_log(sandbox).stat().st_size
    # subprocess writes `data` into a pipe: the client widens it, and reads it in bulk pieces.
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "sha256sum; exit 41"],
                          input=data, capture_output=True, timeout=300)
    assert done.returncode == 41, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    ends = wait_until(lambda: _ended(sandbox, start, "41"), timeout=60)
    assert len(ends) == 1, ends
    bound, largest = ends[0]
    assert bound == 512
    # Larger than a terminal's messages: the pipe was read, framed, relayed and taken in bulk pieces.
    assert 64 < largest <= 512


def test_a_terminal_sessions_input_stays_in_small_messages(sandbox: Sandbox) -> None:
    """A session with a terminal (`-t`, stdin a pipe) keeps messages of 64 KiB at most, whatever is piped in: a
    Ctrl-C is never queued behind a bulk message."""
    start = _master_log(sandbox).stat().st_size
    size = 3 * 512 * KIB
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-t", "w1", "--",
                                            f"stty raw -echo; echo ready; head -c {size} | wc -c; exit 42"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = b""
        while b"ready" not in seen:
            piece = os.read(proc.stdout.fileno(), 4096)
            assert piece, seen
            seen += piece
        proc.stdin.write(os.urandom(size))
        proc.stdin.flush()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err
    assert str(size).encode() in seen + out
    ends = wait_until(lambda: _ended(sandbox, start, "42"), timeout=60)
    assert len(ends) == 1, ends
    bound, largest = ends[0]
    assert bound == 64
    assert 0 < largest <= 64
