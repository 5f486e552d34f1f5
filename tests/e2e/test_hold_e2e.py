"""A failed build held for a shell: step in, find its files and environment, release, and it ends FAILURE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

FAILURE = 2


def cli(sb, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


def held_build(sb):
    """The build id of the holder build once it runs; it may not be held yet (`--build` then waits for it)."""
    def running():
        rows = [r for r in sb.build_rows("holder") if r[2] is None]
        return rows[-1][0] if rows else None

    return wait_until(running, timeout=60)


def result_of(sb, build_id):
    """The build's results (None while it runs)."""
    return dict((r[0], r[2]) for r in sb.build_rows("holder")).get(build_id)


def step_summary(sb, build_id):
    import sqlite3
    db = sqlite3.connect(f"{sb.master_dir}/state.sqlite", timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT state_string FROM steps WHERE buildid = ? ORDER BY number",
                                         (build_id,))]
    finally:
        db.close()


def hold_log(sb, build_id):
    import sqlite3
    import zlib

    db = sqlite3.connect(f"{sb.master_dir}/state.sqlite", timeout=10)
    try:
        rows = db.execute("SELECT c.content, c.compressed FROM logchunks c JOIN logs l ON l.id = c.logid "
                          "JOIN steps s ON s.id = l.stepid WHERE s.buildid = ? AND l.name = 'hold' "
                          "ORDER BY c.first_line", (build_id,)).fetchall()
    finally:
        db.close()
    return "".join((zlib.decompress(c) if z == 1 else c).decode() if isinstance(c, bytes) else c
                   for c, z in rows)


def test_step_into_a_held_failed_build_then_release_it(sandbox):
    sandbox.send_change("hold")
    build_id = held_build(sandbox)
    assert build_id, sandbox.log_tail()
    command = f"buildbot-shell --build {build_id} w1"
    assert wait_until(lambda: any(command in s for s in step_summary(sandbox, build_id)), timeout=10), \
        step_summary(sandbox, build_id)
    # The build's directory and environment, in command mode and in a terminal.
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "--build", str(build_id), "w1",
                                          "cat failed.txt; echo $BUILDER_ENV $STEP_ENV; pwd"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "evidence" and lines[1] == "from-builder from-step"
    assert lines[2].endswith("worker-w1/holder/build")
    wrong = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "--build", str(build_id), "w2", "true"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 255 and f"build {build_id} is held on worker w1, not w2" in wrong.stderr
    # Two operators in it: the one who steps in, and a watcher; ~r releases from the shell.
    t = Terminal(sandbox, ["--build", str(build_id), "w1"]).ready()
    try:
        t.run("ls failed.txt")
        t.child.send("\r~r")
        t.expect(r"released; it finishes now")
        assert wait_until(lambda: result_of(sandbox, build_id)
                          == FAILURE, timeout=30)
        assert t.run("echo still-in-the-shell").strip() == "still-in-the-shell"
        t.child.sendline("exit")
        assert t.wait() == 0
    finally:
        t.close()
    assert any("released by" in s for s in step_summary(sandbox, build_id)), step_summary(sandbox, build_id)
    text = hold_log(sandbox, build_id)  # the hold's log, intact, tells how to step in and how it ended
    assert command in text and "Released: released by" in text
    # The audit index links the sessions to the build.
    rows = wait_until(lambda: [r for r in json.loads(cli(sandbox, "history", "--json", "--build",
                                                         str(build_id)).stdout) if r["state"] == "ended"],
                      timeout=10)
    assert len(rows) == 2 and {r["builder"] for r in rows} == {"holder"}
    assert cli(sandbox, "release", str(build_id)).returncode == 255  # not held any more


def test_a_hold_times_out_by_itself(tmp_path_factory):
    sb = Sandbox(str(tmp_path_factory.mktemp("hold-timeout")), workers=["h1"], hold_timeout=3)
    sb.create()
    try:
        sb.start()
        sb.send_change("hold")
        build_id = held_build(sb)
        assert build_id
        # Well before the hold_wait or the test's own timeouts: the 3 s hold timeout ended it.
        assert wait_until(lambda: result_of(sb, build_id) == FAILURE, timeout=60)
        assert any("timed out after 3 s" in s for s in step_summary(sb, build_id)), step_summary(sb, build_id)
    finally:
        sb.stop()


def test_stopping_the_build_through_the_data_api_ends_the_hold_and_the_shell(tmp_path_factory):
    pytest.importorskip("buildbot_www", reason="the REST API needs buildbot-www (in the test extra)")
    import urllib.request

    sb = Sandbox(str(tmp_path_factory.mktemp("hold-stop")), workers=["s1"], www=True)
    sb.create()
    try:
        sb.start()
        sb.send_change("hold")
        build_id = held_build(sb)
        assert build_id
        t = Terminal(sb, ["--build", str(build_id), "s1"]).ready()
        try:
            t.run("echo inside-the-held-build")
            body = json.dumps({"jsonrpc": "2.0", "method": "stop", "id": 1,
                               "params": {"reason": "stopped by the test"}}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{sb.www_port}/api/v2/builds/{build_id}",
                                             data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200, answer.read()
            assert t.wait(timeout=20) == 129  # the shell was hung up
            assert "the build was stopped" in t.child.before.decode()
        finally:
            t.close()
        assert wait_until(lambda: result_of(sb, build_id) is not None,
                          timeout=30)
        assert any("build stopped" in s for s in step_summary(sb, build_id)), step_summary(sb, build_id)
    finally:
        sb.stop()
