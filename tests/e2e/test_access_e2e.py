"""Who may connect, and memory under a flood, against the real master and worker."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import threading
import time

import pytest

from .conftest import shell_argv

pytestmark = pytest.mark.e2e

OTHER = "slaveshell-other"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(os.getuid() != 0, reason="creating a second local user needs root")
def test_another_local_user_can_neither_connect_nor_read_transcripts(sandbox):
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True)
    other = pwd.getpwnam(OTHER)
    subprocess.run(shell_argv() + ["--socket", sandbox.socket, "w1", "echo for-the-record"], check=True,
                   capture_output=True, timeout=60)
    transcripts = os.path.join(sandbox.master_dir, "transcripts")
    some_transcript = os.path.join(transcripts, sorted(os.listdir(transcripts))[-1])
    pid = os.fork()
    if pid == 0:  # the other user: only system calls here, then _exit
        code = 0
        try:
            os.setgroups([])
            os.setgid(other.pw_gid)
            os.setuid(other.pw_uid)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sandbox.socket)
                code |= 1
            except PermissionError:
                pass
            for attempt, bit in ((lambda: open(some_transcript).read(), 2), (lambda: os.listdir(transcripts), 4),
                                 (lambda: open(os.path.join(sandbox.master_dir, "slaveshell.sqlite")).read(), 8)):
                try:
                    attempt()
                    code |= bit
                except PermissionError:
                    pass
        except BaseException:
            code |= 64
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, f"the other user got in: bits {os.WEXITSTATUS(status):b}"


def test_a_flood_to_a_slow_reader_keeps_master_and_worker_memory_bounded(sandbox):
    """The bound: 32 MB of growth for each process while 64 MB go to a reader at a fraction of the speed."""
    pids = {name: int(open(os.path.join(d, "twistd.pid")).read()) for name, d in
            (("master", sandbox.master_dir), ("worker", sandbox.worker_dir("w1")))}
    base = {name: rss_kb(pid) for name, pid in pids.items()}
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_kb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    total = 64 * 1024 * 1024
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "head", "-c",
                                            str(total), "/dev/zero"], stdout=subprocess.PIPE)
    got = 0
    try:
        while chunk := proc.stdout.read(128 * 1024):
            got += len(chunk)
            time.sleep(0.005)
    finally:
        proc.wait()
        done.set()
        sampler.join()
    assert got == total
    growth = {name: (peak[name] - base[name]) / 1024 for name in pids}
    assert growth["master"] < 32 and growth["worker"] < 32, growth
