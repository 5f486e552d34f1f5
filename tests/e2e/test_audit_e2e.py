"""The audit trail end to end: transcripts and the index as operators and outside tools see them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slaveshell.client.sandbox import BUILDBOT, Sandbox

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e


def slaveshell(sandbox, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", *args, "--socket", sandbox.socket]
                          if args[0] in ("history", "search") else
                          [sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sandbox.socket, *args[1:]],
                          capture_output=True, timeout=timeout)


def history(sandbox, *filters):
    done = slaveshell(sandbox, "history", "--json", *filters)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def session_of(sandbox, marker):
    rows = [r for r in history(sandbox) if r["command"] and marker in r["command"]]
    assert len(rows) == 1, rows
    return rows[0]


def test_a_session_is_indexed_and_its_transcript_plays_in_asciinema(sandbox, tmp_path):
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "w1", "echo audit-me-$((40+2)); exit 5"],
                          capture_output=True, timeout=60)
    assert done.returncode == 5
    row = wait_until(lambda: (lambda r: r if r["state"] == "ended" else None)(session_of(sandbox, "audit-me")),
                     timeout=10)
    assert (row["worker"], row["exit_code"], row["end_reason"], row["pty"]) == ("w1", 5, "exit 5", False)
    assert row["operator"] == ("root" if os.getuid() == 0 else str(os.getuid()))
    exported = slaveshell(sandbox, "export", row["id"])
    assert exported.returncode == 0
    assert hashlib.sha256(exported.stdout).hexdigest() == row["transcript_sha256"]
    assert os.stat(row["transcript"]).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(row["transcript"])).st_mode & 0o777 == 0o700
    cast = tmp_path / "s.cast"
    cast.write_bytes(exported.stdout)
    played = subprocess.run([sys.executable, "-m", "asciinema", "cat", str(cast)], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert played.stdout == b"audit-me-42\n"
    header = json.loads(exported.stdout.splitlines()[0])
    assert header["slaveshell"]["worker"] == "w1" and header["slaveshell"]["session"] == row["id"]
    assert json.loads(exported.stdout.splitlines()[-1])[1:] == ["m", "exit: code 5"]
    found = slaveshell(sandbox, "search", "audit-me-42")
    assert row["id"].encode() in found.stdout


def test_a_password_typed_at_read_s_never_reaches_the_transcript(sandbox):
    t = Terminal(sandbox, ["w1"]).ready()
    try:
        t.run("echo password-test-marker")
        t.child.sendline("read -s -p 'Password: ' pw; echo \"got ${#pw}\"")
        t.expect("Password: ")
        time.sleep(0.3)
        t.child.sendline("hunter2-do-not-record")
        t.expect("got 21")
        t.run("echo typed-in-the-clear SECRET-token123")
        t.child.sendline("exit")
        assert t.wait() == 0
    finally:
        t.close()
    row = wait_until(lambda: next((r for r in history(sandbox) if r["state"] == "ended" and r["command"] is None
                                   and b"password-test-marker" in slaveshell(sandbox, "export", r["id"]).stdout),
                                  None), timeout=10)
    text = slaveshell(sandbox, "export", row["id"]).stdout.decode()
    assert "hunter2" not in text
    assert "[REDACTED]" in text
    assert "typed-in-the-clear" in text  # readline turns echo off too, but what is typed there is recorded
    assert "SECRET-token123" not in text  # the master's configured pattern
    inputs = [json.loads(line)[2] for line in text.splitlines()[1:] if json.loads(line)[1] == "i"]
    assert "[hidden input: 22 bytes]" in inputs and any("typed-in-the-clear" in i for i in inputs)


def test_refused_attempts_are_in_the_index(sandbox):
    subprocess.run(shell_argv() + ["--socket", sandbox.socket, "no-such-worker", "true"], capture_output=True,
                   timeout=30)
    db = os.path.join(sandbox.master_dir, "slaveshell.sqlite")
    import sqlite3

    def refusals():
        connection = sqlite3.connect(db, timeout=10)
        try:
            return connection.execute(
                "SELECT kind, worker, detail FROM slaveshell_events WHERE worker = 'no-such-worker'").fetchall()
        finally:
            connection.close()

    # The event is written by the database's own thread: it may land just after the client was answered.
    expected = ("refused", "no-such-worker", "no worker named 'no-such-worker' on this master")
    assert wait_until(lambda: expected in refusals(), timeout=30), refusals()


def test_master_killed_mid_session_leaves_a_valid_transcript_and_a_closed_row(tmp_path_factory):
    sb = Sandbox(str(tmp_path_factory.mktemp("crash")), workers=["c1"])
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["c1"]).ready()
        t.run("echo before-the-crash")  # written through to the transcript before the client saw it
        os.kill(sb.master_pid(), signal.SIGKILL)
        assert t.wait(timeout=15) == 255
        assert "connection to the master lost" in t.child.before.decode()
        # The worker saw its master go and ended the shell.
        shell_pid_gone = wait_until(lambda: subprocess.run(
            ["pgrep", "-f", "-P", str(_worker_pid(sb, "c1")), "bash"], capture_output=True).returncode == 1,
            timeout=10)
        assert shell_pid_gone
        # A crash mid-write leaves a partial last line: add one, as if the kill had landed mid-event.
        cast = [os.path.join(sb.master_dir, "transcripts", f) for f in os.listdir(
            os.path.join(sb.master_dir, "transcripts"))][0]
        with open(cast, "a") as f:
            f.write('[9.5, "o", "half an ev')
        os.unlink(os.path.join(sb.master_dir, "twistd.pid"))
        sb.start_master()
        sb.wait_for_workers(["c1"])
        rows = wait_until(lambda: [r for r in history(sb) if r["state"] == "interrupted"], timeout=20)
        assert rows, history(sb)
        row = rows[0]
        text = open(cast, encoding="utf-8").read()
        lines = text.splitlines()
        assert all(json.loads(line) for line in lines)  # every line is whole JSON again
        assert json.loads(lines[-1])[1:] == ["m", "interrupted: the master stopped while the session was running"]
        assert "before-the-crash" in text and "half an ev" not in text
        last_event = json.loads(lines[-2])[0]
        import datetime as dt

        span = (dt.datetime.fromisoformat(row["ended"]) - dt.datetime.fromisoformat(row["started"])).total_seconds()
        assert abs(span - last_event) < 0.01  # the end time is taken from the last event
        assert row["transcript_sha256"] == hashlib.sha256(open(cast, "rb").read()).hexdigest()
        played = subprocess.run([sys.executable, "-m", "asciinema", "cat", cast], capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=60)
        assert played.returncode == 0 and b"before-the-crash" in played.stdout
        # A clean stop with a detached session (its operator's connection gone) ends it and stops in time.
        client = subprocess.Popen(shell_argv() + ["--socket", sb.socket, "c1", "sleep 302"])
        assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 302$"]).returncode == 0, timeout=10)
        client.kill()
        client.wait()
        time.sleep(0.5)
        stopped = subprocess.run(BUILDBOT + ["stop", sb.master_dir], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stdout
        sb.started.remove(sb.master_dir)
        assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 302$"]).returncode == 1, timeout=10)
    finally:
        sb.stop()


def _worker_pid(sb, name):
    with open(os.path.join(sb.worker_dir(name), "twistd.pid")) as f:
        return int(f.read().strip())
