"""Ctrl-C while a command session is still opening (found in review: the master started it anyway and kept it
detached for the whole grace, the command running on the worker). Whenever the signal lands, nothing of the
command may stay behind: either it never starts, or it is ended at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e


def live_sessions(sandbox, command: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "slaveshell.cli", "sessions", "--socket", sandbox.socket, "--json"],
                         capture_output=True, text=True, timeout=60).stdout
    return [s for s in json.loads(out) if s["command"] == command]


def connected(pid: int) -> bool:
    """Whether process `pid` holds a socket (the client's connection to the master)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True  # it has ended already: nothing to wait for
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                return True
        except OSError:
            continue
    return False


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_ctrl_c_while_a_command_opens_leaves_nothing_on_the_worker(sandbox):
    command = "sleep 377"
    # The window (the worker starting the session) is a few ms wide: a sweep of delays from the moment the client
    # has connected (a Ctrl-C before Python itself has started is Python's to report, not ours), not a sure hit.
    for delay in [0.0, 0.01, 0.02, 0.04, 0.06, 0.09, 0.13, 0.18, 0.25, 0.35]:
        child = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "w1", "--", command],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda pid=child.pid: connected(pid), timeout=30, interval=0.002), delay
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert "Traceback" not in err
        assert child.returncode in (130, 255), (delay, child.returncode, err)
        # Within the close deadline, not the detach grace: the session is gone and so is the command.
        assert wait_until(lambda: not live_sessions(sandbox, command), timeout=20), (delay, err)
        assert wait_until(lambda: not running(f"^{command}$"), timeout=20), delay
    # None was left to the detach grace: each session that started was ended because its operator had left.
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sandbox.socket, "--json",
                           "--worker", "w1"], capture_output=True, text=True, timeout=60)
    rows = [r for r in json.loads(done.stdout) if r["command"] == command]
    assert all("detached for longer" not in (r["end_reason"] or "") for r in rows), rows
