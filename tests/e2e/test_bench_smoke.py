"""The benchmark at a tiny size, so it does not rot. Its figures are not judged here: timing belongs in
bench/RESULTS.md, never in a test."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_benchmark_runs_at_a_tiny_size():
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"]
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        argv.append("--no-ssh")  # the full run installs openssh-server; the smoke run does not
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for metric in ("throughput, PTY", "keystroke echo, median", "open a session", "Ctrl-C to prompt",
                   "RSS growth, master", "concurrent sessions alive", "build step slowdown",
                   "Buildbot's FileUpload (worker -> master)", "Buildbot's FileDownload (master -> worker)"):
        assert metric in table, table
    assert "| 5 concurrent sessions alive (sessions) | 5.0 |" in table
