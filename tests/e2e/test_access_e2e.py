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


def test_ctrl_c_stops_a_flood_and_the_shell_answers_again(terminal):
    from .conftest import PROMPT

    t = terminal("w1").ready()
    t.child.sendline("yes")
    t.expect("y\r\ny\r\n")
    time.sleep(1)
    t.child.sendcontrol("c")
    t.expect(PROMPT, timeout=15)  # not a timing assertion: bench/ measures how fast (~45 ms)
    assert t.run("echo after-the-flood").strip() == "after-the-flood"


def test_a_burst_of_opens_gets_sessions_or_clear_refusals_and_the_master_carries_on(sandbox):
    # 30 at once against a worker that allows 8 (the default): each either runs or is told why, plainly.
    procs = [subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "sleep 2; echo ran"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(30)]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        outcomes.append((p.returncode, out, err))
    ran = [o for o in outcomes if o[0] == 0 and o[1] == b"ran\n"]
    refused = [o for o in outcomes if o[0] == 255]
    assert len(ran) + len(refused) == 30, outcomes
    assert ran, "none of the sessions ran"
    for _, _, err in refused:
        assert err.startswith(b"buildbot-shell: worker w1: the worker allows at most 8 shell sessions at once"), err
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "echo fine"],
                          capture_output=True, timeout=60)
    assert done.stdout == b"fine\n"
