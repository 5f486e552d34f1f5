"""Whoever reads a client's standard output goes away (`| head -1`), against the real master and worker: as
through OpenSSH (its eow@openssh.com), the remote command's stdout is closed, the command meets SIGPIPE at its
next write and ends as it would in a local pipeline, its stderr still comes, and the client exits with the
command's status, writing no line; the slaveshell tools stop quietly (141, as cat(1) killed by SIGPIPE)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

# sh reports how `yes` ended, on stderr, then ends with a status of its own: stderr goes on after stdout is gone.
COMMAND = "yes; echo yes-ended-by-$? >&2; exit 3"


@pytest.mark.parametrize("passed", ["1", "0"], ids=["stdout-held-by-the-master", "stdout-kept-by-the-client"])
def test_yes_piped_into_head_ends_by_sigpipe_and_the_client_says_nothing(sandbox: Sandbox, passed: str) -> None:
    env = dict(os.environ, SLAVESHELL_PASS_STDIO=passed)
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", COMMAND],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"y\n"
    proc.stdout.close()  # as `head -1` does once it has its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 3
    assert err == b"yes-ended-by-141\n"  # 128 + SIGPIPE: as `yes | head -1` on the worker itself


def test_a_command_killed_by_sigpipe_gives_the_client_141_and_no_line(sandbox: Sandbox) -> None:
    read, write = os.pipe()
    os.close(read)  # nobody will ever read it
    try:
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "yes"],
                              stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == b""


@pytest.mark.parametrize("tool", [["history"], ["workers"], ["sessions"]])
def test_the_slaveshell_tools_stop_quietly_when_their_reader_is_gone(sandbox: Sandbox, tool: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", *tool, "--socket", sandbox.socket],
                              stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == b"", done.stderr


def test_a_terminal_session_whose_stdout_reader_went_away_goes_on_blocked_until_the_operator_ends_it(
        sandbox: Sandbox) -> None:
    """`buildbot-shell -t w1 -- yes | head -1`, typed at a terminal: as through OpenSSH, the session goes on, the
    program blocks (its output is no longer acknowledged, so the worker stops reading the terminal: what the
    master relays stays within the windows, not a flood), and Ctrl-C typed still reaches it: 130."""
    keyboard, terminal = pty.openpty()
    proc = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "-t", "w1", "--", "yes reader-gone"],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    os.close(terminal)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"reader-gone\r\n"
        proc.stdout.close()
        time.sleep(1)  # a flood would go on meanwhile
        assert proc.poll() is None  # not closed (it was: a hangup, 129)
        os.write(keyboard, b"\x03")
        assert proc.wait(timeout=60) == 130
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(keyboard)

    def ended() -> dict | None:
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--json", "--worker", "w1",
                               "--socket", sandbox.socket], capture_output=True, timeout=60)
        return next((r for r in json.loads(done.stdout) if r["command"] == "yes reader-gone"
                     and r["state"] == "ended"), None)

    row = wait_until(ended, timeout=30)
    assert row["bytes_out"] < 16 * 1024 * 1024, row
