"""Sessions as a team uses them: list, watch, join, detach and reattach, kill, pause, builder directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import PROMPT, Terminal, wait_until

pytestmark = pytest.mark.e2e


def cli(sandbox, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sandbox.socket, *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


def sessions(sandbox):
    done = cli(sandbox, "sessions", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class SlaveshellTerminal(Terminal):
    """`slaveshell attach|watch ID` in a real PTY."""

    def __init__(self, sandbox, args, rows=24, cols=80):
        import pexpect
        import pyte

        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        argv = [sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sandbox.socket, *args[1:]]
        self.child = pexpect.spawn(argv[0], argv[1:], dimensions=(rows, cols), env=dict(os.environ, TERM="xterm"),
                                   timeout=15)
        self.child.logfile_read = self


def open_session(sandbox, marker):
    t = Terminal(sandbox, ["w1"]).ready()
    t.run(f"echo {marker}")
    # Transcripts are flushed every half second: look until the marker is there.
    sid = wait_until(lambda: next((s["id"] for s in sessions(sandbox) if s["state"] == "attached"
                                   and marker in _recent(sandbox, s["id"])), None), timeout=10)
    assert sid
    return t, sid


def _recent(sandbox, sid):
    return cli(sandbox, "export", sid).stdout


def test_watchers_see_the_screen_and_cannot_type(sandbox):
    t, sid = open_session(sandbox, "watch-me-1")
    w = SlaveshellTerminal(sandbox, ["watch", sid])
    try:
        w.expect("watch-me-1")  # the recent output, first
        t.run("echo live-after-watch")
        w.expect("live-after-watch")
        assert any(v["role"] == "watch" for v in next(s for s in sessions(sandbox) if s["id"] == sid)["viewers"])
        marker = f"/tmp/watcher-typed-{os.getpid()}"
        w.child.send(f"touch {marker}\r")
        time.sleep(1)
        assert not os.path.exists(marker)
        assert t.run("echo owner-still-here").strip() == "owner-still-here"
        w.child.send("\r~.")
        assert w.wait() == 0
        assert "Left session" in w.child.before.decode()
    finally:
        w.close()
        t.child.sendline("exit")
        t.wait()


def test_a_watcher_is_told_once_that_typing_is_not_sent_and_its_help_offers_only_leaving(sandbox):
    t, sid = open_session(sandbox, "watch-me-2")
    w = SlaveshellTerminal(sandbox, ["watch", sid])
    try:
        w.expect("watch-me-2")
        w.child.send("ls")
        w.expect(f"watching {sid} read-only: what you type is not sent; ~. leaves")
        w.child.send("more keys\r")
        w.child.send("~?")
        w.expect("this message")
        shown = bytes(w.printed).decode(errors="replace")
        assert shown.count("read-only: what you type is not sent") == 1, shown
        assert "~.   - leave the session (it keeps running for its owner)" in shown
        assert "terminate session" not in shown and "~d" not in shown
        w.child.send("\r~.")
        assert w.wait() == 0
        assert t.run("echo owner-still-here-2").strip() == "owner-still-here-2"
    finally:
        w.close()
        t.child.sendline("exit")
        t.wait()


def test_a_joiner_types_into_the_shared_session(sandbox):
    t, sid = open_session(sandbox, "join-me-1")
    j = SlaveshellTerminal(sandbox, ["attach", sid])
    try:
        j.expect("join-me-1")
        j.child.send("echo typed-by-$((1+1))-joiner\r")
        t.expect("typed-by-2-joiner")
        j.expect("typed-by-2-joiner")
    finally:
        j.close()
        t.child.sendline("exit")
        t.wait()


def test_detach_then_reattach_resumes_with_recent_output(sandbox):
    t, sid = open_session(sandbox, "detach-me-1")
    t.child.send("export KEPT=yes-kept\r")
    t.expect(PROMPT)
    t.child.send("\r~d")
    assert t.wait() == 0
    assert f"slaveshell attach {sid}" in t.child.before.decode()
    assert next(s for s in sessions(sandbox) if s["id"] == sid)["state"] == "detached"
    a = SlaveshellTerminal(sandbox, ["attach", sid])
    try:
        a.expect("detach-me-1")
        a.child.send("echo $KEPT\r")
        a.expect("yes-kept")
        a.child.send("exit 6\r")
        assert a.wait() == 6
    finally:
        a.close()


def test_kill_ends_a_session_for_its_operator(sandbox):
    t, sid = open_session(sandbox, "kill-me-1")
    done = cli(sandbox, "kill", sid)
    assert done.returncode == 0 and "hangup sent" in done.stdout
    assert t.wait() == 129  # SIGHUP, as when a terminal closes
    assert "session killed by" in t.child.before.decode()
    assert cli(sandbox, "kill", sid).returncode == 255


def test_pause_holds_the_worker_for_the_session_life(sandbox):
    def paused():
        workers = json.loads(cli(sandbox, "workers", "--json").stdout)
        return next(w for w in workers if w["name"] == "w1")["paused"]

    t = Terminal(sandbox, ["--pause", "w1"]).ready()
    try:
        assert wait_until(paused, timeout=5)
    finally:
        t.child.sendline("exit")
        t.wait()
    assert wait_until(lambda: not paused(), timeout=5)


def test_builder_option_starts_in_the_build_directory(sandbox):
    if not any(result == 0 for _, result in sandbox.builds()):
        before = len(sandbox.builds())
        sandbox.send_change()
        wait_until(lambda: len([b for b in sandbox.builds()[before:] if b[1] is not None]), timeout=60)
    done = subprocess.run([sys.executable, "-m", "slaveshell.shell_cli", "--socket", sandbox.socket,
                           "--builder", "hello", "w1", "pwd"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("worker-w1/hello/build")
    done = subprocess.run([sys.executable, "-m", "slaveshell.shell_cli", "--socket", sandbox.socket,
                           "--builder", "nope", "w1", "pwd"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 255 and "no builder named 'nope'" in done.stderr


def test_console_lists_workers_opens_a_shell_and_comes_back(sandbox):
    c = SlaveshellTerminal(sandbox, ["console"], rows=30, cols=100)
    try:
        c.expect("slaveshell>")
        assert "w1" in c.child.before.decode() and "connected" in c.child.before.decode()
        c.child.send("shell w1\r")
        c.expect(r"[#$] ")
        c.child.send("echo inside-$((2*21))\r")
        c.expect("inside-42")
        c.child.send("exit 3\r")
        c.expect(r"\[buildbot-shell w1: exit 3\]")
        c.expect("slaveshell>")
        c.child.send("sessions\r")
        c.expect("slaveshell>")
        c.child.send("history w1\r")
        c.expect("exit 3|code 3|w1")
        c.expect("slaveshell>")
        # Every question went over the console's one connection to the master: no process per command.
        assert _sockets_to(c.child.pid, sandbox.socket) == 1
        c.child.send("quit\r")
        assert c.wait() == 0
    finally:
        c.close()


def _sockets_to(pid, path):
    """How many of process `pid`'s sockets are connected to the UNIX socket at `path`: ss lists the master's
    accepted end with the path and the peer's inode, and the process's own end with that inode."""
    lines = [line.split() for line in subprocess.run(["ss", "-xp"], capture_output=True, text=True).stdout.splitlines()]
    mine = {f[5] for f in lines if len(f) > 7 and f"pid={pid}," in f[-1]}
    return sum(1 for f in lines if len(f) > 7 and f[4] == path and f[7] in mine)


def test_console_sessions_after_the_master_went_away_shows_the_error_and_no_stale_table(tmp_path):
    from slaveshell.client.sandbox import Sandbox

    sb = Sandbox(str(tmp_path / "gone"), workers=["g1"])
    sb.create()
    sb.start()
    t = c = None
    try:
        t = Terminal(sb, ["g1"]).ready()
        c = SlaveshellTerminal(sb, ["console"], rows=30, cols=120)
        c.expect("slaveshell>")
        c.child.send("sessions\r")
        c.expect(r"([0-9a-f]{12}) +g1 ")
        sid = c.child.match.group(1).decode()
        c.expect("slaveshell>")
        pid = sb.master_pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10)
        before = len(c.printed)
        c.child.send("sessions\r")
        c.expect(r"error: [^\r\n]+")
        c.expect("slaveshell>")
        after = bytes(c.printed[before:]).decode(errors="replace")
        assert sid not in after and "SESSION" not in after, after
        c.child.send("quit\r")
        assert c.wait() == 0
    finally:
        for term in (c, t):
            if term is not None:
                term.close()
        sb.stop()
