"""`--build ID` a little early: on a running build whose HoldForShell step is still ahead, buildbot-shell says it
waits, waits for the hold and enters; Ctrl-C stops waiting; a hold-less or finished build is refused at once.
The failing step waits for a gate file, so the test decides when the build is held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pexpect
import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

WORKER = "hw1"
FAILURE = 2
# The holder's failing step: it says it runs, then fails once the test opens the gate.
HOLD_STEP = ("echo evidence > failed.txt; touch step-running; while [ ! -e gate ]; do sleep 0.1; done; "
             "rm -f gate step-running; exit 1")
# The hold-less builder's step: it runs until its gate opens, then succeeds.
HELLO_STEP = "touch hello-running; while [ ! -e hello-gate ]; do sleep 0.1; done; rm -f hello-gate hello-running"


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    sandbox = Sandbox(str(tmp_path_factory.mktemp("hold-wait")), workers=[WORKER], hold_command=HOLD_STEP,
                      build_command=HELLO_STEP)
    sandbox.create()
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()


def build_dir(sb, builder):
    return os.path.join(sb.worker_dir(WORKER), builder, "build")


def start_build(sb, builder, branch, running_file):
    """Start a build and return its id once its (gated) first step runs."""
    before = {r[0] for r in sb.build_rows(builder)}
    sb.send_change(branch)
    build_id = wait_until(lambda: next((r[0] for r in sb.build_rows(builder)
                                        if r[0] not in before and r[2] is None), None), timeout=60)
    assert build_id, sb.log_tail()
    assert wait_until(lambda: os.path.exists(os.path.join(build_dir(sb, builder), running_file)), timeout=60)
    return build_id


def open_gate(sb, builder, name):
    with open(os.path.join(build_dir(sb, builder), name), "w"):
        pass


def result_of(sb, builder, build_id):
    return dict((r[0], r[2]) for r in sb.build_rows(builder)).get(build_id)


def cli(sb, *args):
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60)


def waiting_line(build_id):
    return f"build {build_id} is still running; waiting for it to be held (Ctrl-C stops waiting)"


def held(sb, build_id):
    """True once the build's HoldForShell step holds it (its summary gives the command to step in)."""
    import sqlite3

    db = sqlite3.connect(f"{sb.master_dir}/state.sqlite", timeout=10)
    try:
        return any("held for a shell: buildbot-shell" in (r[0] or "") for r in db.execute(
            "SELECT state_string FROM steps WHERE buildid = ?", (build_id,)))
    finally:
        db.close()


def release(sb, build_id):
    assert wait_until(lambda: held(sb, build_id), timeout=60)
    done = cli(sb, "release", str(build_id))
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: result_of(sb, "holder", build_id) == FAILURE, timeout=60)


def no_sessions(sb):
    done = cli(sb, "sessions", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) == []


def test_build_opened_before_it_is_held_waits_says_so_and_enters(sb):
    build_id = start_build(sb, "holder", "hold", "step-running")
    # Command mode and a terminal, both while the failing step still runs.
    command = subprocess.Popen(shell_argv() + ["--socket", sb.socket, "--build", str(build_id), WORKER,
                                               "cat failed.txt; pwd"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = Terminal(sb, ["--build", str(build_id), WORKER])
    try:
        t.expect(waiting_line(build_id).replace("(", r"\(").replace(")", r"\)"), timeout=60)
        t.child.send("echo typed-while-waiting\r")  # kept, and typed into the shell once it is open
        assert command.poll() is None  # still waiting
        open_gate(sb, "holder", "gate")
        t.expect("[\r\n]typed-while-waiting\r\n", timeout=60)  # its output, not its echo
        t.ready()
        assert t.run("cat failed.txt").strip() == "evidence"
        out, err = command.communicate(timeout=60)
        assert command.returncode == 0, err
        assert out.splitlines()[0] == "evidence" and out.splitlines()[1].endswith(f"worker-{WORKER}/holder/build")
        assert err == waiting_line(build_id) + "\n"  # one line, nothing else
        t.child.sendline("exit")
        assert t.wait(timeout=30) == 0
        assert "Traceback" not in t.child.before.decode("utf-8", "replace")
    finally:
        t.close()
        if command.poll() is None:
            command.kill()
    release(sb, build_id)


def test_ctrl_c_while_waiting_stops_waiting_and_leaves_nothing_on_the_master(sb):
    build_id = start_build(sb, "holder", "hold", "step-running")
    # In a terminal (raw mode: Ctrl-C is a byte the client reads while it waits).
    t = Terminal(sb, ["--build", str(build_id), WORKER])
    try:
        t.expect(r"waiting for it to be held \(Ctrl-C stops waiting\)\r\n", timeout=60)
        t.child.sendcontrol("c")
        assert t.wait(timeout=30) == 255
        said = t.child.before.decode("utf-8", "replace")
        assert f"buildbot-shell: stopped waiting for build {build_id} to be held" in said
        assert "Traceback" not in said
    finally:
        t.close()
    # In command mode (Ctrl-C is SIGINT from the terminal's driver).
    argv = shell_argv() + ["--socket", sb.socket, "--build", str(build_id), WORKER, "true"]
    child = pexpect.spawn(argv[0], argv[1:], timeout=60)
    try:
        child.expect(r"waiting for it to be held \(Ctrl-C stops waiting\)\r\n")
        child.sendcontrol("c")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 255, (child.exitstatus, child.signalstatus)
        said = child.before.decode("utf-8", "replace").strip().removeprefix("^C")  # the terminal's echo
        assert said == f"buildbot-shell: stopped waiting for build {build_id} to be held", said
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
    # Nothing was opened, and the build, once held, is entered as usual.
    assert no_sessions(sb)
    open_gate(sb, "holder", "gate")
    done = subprocess.run(shell_argv() + ["--socket", sb.socket, "--build", str(build_id), WORKER, "cat failed.txt"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "evidence\n", done.stderr
    release(sb, build_id)
    log = open(os.path.join(sb.master_dir, "twistd.log"), encoding="utf-8", errors="replace").read()
    assert "Unhandled error" not in log and "Traceback" not in log


def test_hold_less_and_finished_builds_are_refused_at_once(sb):
    # A running build without a HoldForShell step.
    build_id = start_build(sb, "hello", "main", "hello-running")
    done = subprocess.run(shell_argv() + ["--socket", sb.socket, "--build", str(build_id), WORKER, "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 255
    assert done.stderr == (f"buildbot-shell: build {build_id} is not held for a shell (not a HoldForShell build, "
                           "or already released)\n")
    open_gate(sb, "hello", "hello-gate")
    assert wait_until(lambda: result_of(sb, "hello", build_id) == 0, timeout=60)
    # A finished build that was held once.
    held = start_build(sb, "holder", "hold", "step-running")
    open_gate(sb, "holder", "gate")
    release(sb, held)
    for finished in (build_id, held):
        done = subprocess.run(shell_argv() + ["--socket", sb.socket, "--build", str(finished), WORKER, "true"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 255 and "waiting" not in done.stderr
        assert f"build {finished} is not held for a shell" in done.stderr and len(done.stderr.splitlines()) == 1
