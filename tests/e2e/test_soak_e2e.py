"""Soak: many sessions over time against one master (off by default; SLAVESHELL_SOAK=SECONDS turns it on).

    SLAVESHELL_SOAK=600 python3 -m pytest -q tests/e2e/test_soak_e2e.py
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from .conftest import shell_argv

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("SLAVESHELL_SOAK", "0"))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(SECONDS <= 0, reason="the soak runs only with SLAVESHELL_SOAK=SECONDS")
def test_sessions_over_time_leave_no_growth(sandbox):
    master = int(open(os.path.join(sandbox.master_dir, "twistd.pid")).read())
    worker = int(open(os.path.join(sandbox.worker_dir("w1"), "twistd.pid")).read())

    def cycle() -> None:
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--",
                                              "head -c 2000000 /dev/urandom | base64 | tail -c 10"],
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr

    for _ in range(5):  # warm up: caches, pools, the first transcript
        cycle()
    base = {"master fds": _fds(master), "worker fds": _fds(worker), "master MB": _rss_mb(master),
            "worker MB": _rss_mb(worker)}
    cycles = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        cycle()
        cycles += 1
    after = {"master fds": _fds(master), "worker fds": _fds(worker), "master MB": _rss_mb(master),
             "worker MB": _rss_mb(worker)}
    print(f"soak: {cycles} sessions in {SECONDS:g} s; before {base}; after {after}")
    assert after["master fds"] <= base["master fds"] + 5 and after["worker fds"] <= base["worker fds"] + 5
    assert after["master MB"] <= base["master MB"] + 32 and after["worker MB"] <= base["worker MB"] + 32
