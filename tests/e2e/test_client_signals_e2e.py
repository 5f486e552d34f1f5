"""Signals to buildbot-shell itself. In command mode SIGINT, SIGTERM and SIGHUP go on to the remote command and
the client ends with its status (OpenSSH exits 255 at once and leaves the command running); a second signal
within a second gives up at once. With the local terminal raw (a PTY session), SIGTERM ends the session and
SIGHUP detaches it. No path leaves the remote command running or shows a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import PROMPT, assert_no_traceback, wait_until

pytestmark = pytest.mark.e2e


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def sessions(sandbox, since: float) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "slaveshell.cli", "sessions", "--socket", sandbox.socket, "--json"],
                         capture_output=True, text=True, timeout=60).stdout
    return [s for s in json.loads(out) if s["started"] >= since - 1]


def start_command(terminal, command: str, pattern: str):
    t = terminal("w1", "--", command)
    assert wait_until(lambda: running(pattern), timeout=20), "the remote command did not start"
    time.sleep(0.3)
    return t


@pytest.mark.parametrize(("how", "status"), [("ctrl-c", 130), (signal.SIGINT, 130), (signal.SIGTERM, 143),
                                              (signal.SIGHUP, 129)])
def test_a_signal_to_the_client_in_command_mode_reaches_the_remote_command(sandbox, terminal, how, status):
    since = time.time()
    t = start_command(terminal, "sleep 3301; echo not-reached", "^sleep 3301$")
    if how == "ctrl-c":
        t.child.sendcontrol("c")  # cooked terminal: SIGINT to the client, from the keyboard
    else:
        os.kill(t.child.pid, how)
    assert t.wait(timeout=20) == status
    printed = t.printed.decode()
    assert "lost" not in printed and "not-reached" not in printed
    # Ended, not detached (a detached session would end only after the master's detach grace).
    assert sessions(sandbox, since) == []
    assert wait_until(lambda: not running("^sleep 3301$"), timeout=10), "the remote command is still running"


def test_a_second_ctrl_c_within_a_second_gives_up_at_once(sandbox, terminal):
    since = time.time()
    t = start_command(terminal, "trap '' INT; sleep 3302", "^sleep 3302$")
    t.child.sendcontrol("c")
    time.sleep(0.2)
    t.child.sendcontrol("c")
    assert t.wait(timeout=10) == 255
    said = [line for line in t.printed.decode().replace("^C", "").splitlines() if line.strip()]
    assert said == ["buildbot-shell: second SIGINT: closed the session without waiting for the remote command"]
    # Closing the session hangs up the command's group: nothing is left for the detach grace.
    assert wait_until(lambda: not running("^sleep 3302$"), timeout=10)
    assert wait_until(lambda: sessions(sandbox, since) == [], timeout=10)


def test_sigterm_ignored_by_the_remote_command_closes_the_session_after_a_grace(sandbox, terminal):
    t = start_command(terminal, "trap '' TERM; sleep 3303", "^sleep 3303$")
    os.kill(t.child.pid, signal.SIGTERM)
    assert t.wait(timeout=30) == 255
    assert "did not end within 5 s of SIGTERM; session closed" in t.printed.decode()
    assert wait_until(lambda: not running("^sleep 3303$"), timeout=10)


def test_piped_command_mode_forwards_sigterm_too(sandbox):
    # No terminal at all (as under a supervisor or a CI job): the same forwarding.
    from .conftest import shell_argv

    client = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "w1", "sleep 3304"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: running("^sleep 3304$"), timeout=20)
        time.sleep(0.3)
        client.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 143, err
    assert_no_traceback(err)
    assert err == b""
    assert wait_until(lambda: not running("^sleep 3304$"), timeout=10)


def test_sigint_to_a_pty_client_interrupts_the_remote_foreground_job(terminal):
    # In raw mode Ctrl-C is a byte; kill -INT of the client does the same: the remote job ends, the shell stays.
    t = terminal("w1").ready()
    t.child.sendline("sleep 3305")
    t.expect("sleep 3305\r\n")
    assert wait_until(lambda: running("^sleep 3305$"), timeout=10)
    os.kill(t.child.pid, signal.SIGINT)
    t.expect(PROMPT, timeout=10)
    assert t.run("echo alive-$((40+2))").strip() == "alive-42"
    assert not running("^sleep 3305$")
    t.child.sendline("exit")
    assert t.wait() == 0


def test_sigterm_to_a_pty_client_ends_the_session(sandbox, terminal):
    since = time.time()
    t = terminal("w1").ready()
    t.run("exec -a slaveshell-e2e-3306 sleep 3306 &")
    assert wait_until(lambda: running("^slaveshell-e2e-3306"), timeout=10)
    os.kill(t.child.pid, signal.SIGTERM)
    assert t.wait(timeout=20) == 255
    assert "Connection to w1 closed (SIGTERM)." in t.printed.decode()
    assert wait_until(lambda: sessions(sandbox, since) == [], timeout=10)
    assert wait_until(lambda: not running("^slaveshell-e2e-3306"), timeout=10)


def test_sighup_to_a_pty_client_detaches_the_session(sandbox, terminal):
    since = time.time()
    t = terminal("w1").ready()
    os.kill(t.child.pid, signal.SIGHUP)
    assert t.wait(timeout=20) == 255
    (detached,) = wait_until(lambda: [s for s in sessions(sandbox, since) if s["state"] == "detached"], timeout=10)
    assert f"slaveshell attach {detached['id']}" in t.printed.decode()
    subprocess.run([sys.executable, "-m", "slaveshell.cli", "kill", "--socket", sandbox.socket, detached["id"]],
                   capture_output=True, timeout=60)
