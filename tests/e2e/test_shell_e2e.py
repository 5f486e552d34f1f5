"""What an operator sees, end to end: buildbot-shell -> master -> worker's PB connection -> PTY."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from .conftest import PROMPT, shell_argv, wait_until

pytestmark = pytest.mark.e2e


def run_cli(sandbox, *args, stdin=None, timeout=60):
    return subprocess.run(shell_argv() + ["--socket", sandbox.socket, *args], stdin=stdin,
                          capture_output=True, timeout=timeout)


def test_login_shell_prompt_and_echo(terminal):
    t = terminal("w1").ready()
    assert t.run("echo $((6*7))").strip() == "42"
    assert "worker-w1" in t.run("pwd")  # starts in the worker's basedir
    assert t.run("echo $TERM").strip() == "xterm"


def test_window_size_is_right_at_open_and_follows_resizes(terminal):
    t = terminal("w1", rows=33, cols=101).ready()
    assert t.run("stty size").strip() == "33 101"
    t.child.setwinsize(27, 90)
    assert wait_until(lambda: t.run("stty size").strip() == "27 90", timeout=5)


def test_ctrl_c_interrupts_a_running_command_promptly(terminal):
    t = terminal("w1").ready()
    t.child.sendline("sleep 100")
    t.expect("sleep 100\r\n")
    time.sleep(0.3)
    started = time.monotonic()
    t.child.sendcontrol("c")
    t.expect(PROMPT, timeout=5)
    assert time.monotonic() - started < 3
    assert t.run("echo $?").strip() == "130"


def test_exit_code_is_the_remote_shells(terminal):
    t = terminal("w1").ready()
    t.child.sendline("exit 7")
    assert t.wait() == 7
    assert "Connection to w1 closed." in t.child.before.decode()


def test_death_by_signal_is_128_plus_n(terminal):
    t = terminal("w1").ready()
    t.child.sendline("kill -9 $$")
    assert t.wait() == 137


def test_less_draws_its_first_screen_and_quits(terminal):
    t = terminal("w1", rows=20, cols=60).ready()
    t.run("seq 1 500 > long.txt")
    t.child.sendline("less long.txt")
    t.expect("19")  # rows - 1 lines of text, then less's prompt line
    time.sleep(0.5)
    lines = t.lines()
    assert lines[:19] == [str(n) for n in range(1, 20)]
    t.child.send("q")
    t.expect(PROMPT)
    t.run("rm long.txt")


def test_multibyte_character_split_across_messages_arrives_whole(terminal, sandbox):
    # The worker writes the euro sign's bytes 0.3 s apart: they travel in separate messages.
    script = ("import sys,time; w=sys.stdout.buffer; w.write(b'\\xe2\\x82'); w.flush(); time.sleep(0.3); "
              "w.write(b'\\xac=\\n'); w.flush()")
    t = terminal("w1").ready()
    out = t.run(f'{sys.executable} -c "{script}"')
    assert "€=" in out
    assert any("€=" in line for line in t.lines())
    done = run_cli(sandbox, "-T", "w1", "--", sys.executable, "-c", f'"{script}"')
    assert done.stdout == "€=\n".encode()


def test_ten_megabytes_through_command_mode_are_byte_exact(sandbox, tmp_path):
    data = os.urandom(10 * 1024 * 1024)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    with open(src, "rb") as stdin:
        done = run_cli(sandbox, "-T", "w1", "--", "cat", stdin=stdin, timeout=120)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


def test_piped_stdin_reaches_eof(sandbox):
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-T", "w1", "--", "wc", "-l"],
                          input=b"a\nb\n", capture_output=True, timeout=60)
    assert done.stdout.strip() == b"2"
    assert done.returncode == 0


def test_command_mode_keeps_stdout_and_stderr_apart_with_its_exit_code(sandbox):
    done = run_cli(sandbox, "w1", "echo out; echo err >&2; exit 3")
    assert (done.stdout, done.stderr, done.returncode) == (b"out\n", b"err\n", 3)


def test_environment_and_working_directory_options(sandbox):
    done = run_cli(sandbox, "-e", "GREETING=hi there", "-C", "/tmp", "w1", 'echo "$GREETING in $PWD"')
    assert done.stdout == b"hi there in /tmp\n"
    done = run_cli(sandbox, "-C", "/no/such/dir", "w1", "true")
    assert done.returncode == 255
    assert b"no such directory on the worker: /no/such/dir" in done.stderr


@pytest.mark.parametrize(
    "worker, message",
    [
        ("w9", b"buildbot-shell: no worker named 'w9' on this master\n"),
        ("w3", b"buildbot-shell: worker w3 has not enabled slaveshell"),
        ("w4", b"buildbot-shell: worker w4 uses the msgpack protocol; slaveshell needs a PB worker\n"),
    ],
)
def test_unreachable_workers_are_a_one_line_error_and_255(sandbox, worker, message):
    done = run_cli(sandbox, worker, "true")
    assert done.returncode == 255
    assert done.stderr.startswith(message)
    assert done.stderr.count(b"\n") == 1


def test_no_master_socket_is_255_with_a_hint(tmp_path):
    done = subprocess.run(shell_argv() + ["--socket", str(tmp_path / "nope.sock"), "w1", "true"],
                          capture_output=True, timeout=30)
    assert done.returncode == 255
    assert b"no master socket at" in done.stderr


def test_tilde_dot_ends_the_session_with_255(terminal):
    t = terminal("w1").ready()
    t.child.send("\r~.")
    assert t.wait() == 255
    assert "Connection to w1 closed." in t.child.before.decode()


def test_escape_disabled_with_E_none(terminal):
    t = terminal("-E", "none", "w1").ready()
    t.child.send("echo a\r~.\r")
    t.expect("command not found")
    t.child.sendline("exit 4")
    assert t.wait() == 4


def test_socket_is_private_to_the_master_user(sandbox):
    assert os.stat(sandbox.socket).st_mode & 0o777 == 0o600


def test_a_build_on_the_same_worker_succeeds_while_two_shells_are_open(sandbox, terminal):
    shells = [terminal("w1").ready(), terminal("w1").ready()]
    for t in shells:
        # Both shells stream output while the build runs.
        t.child.sendline("for i in $(seq 1 30); do seq 1 3000; sleep 0.1; done; echo lo''oped")
    before = len(sandbox.builds())
    sandbox.send_change()
    builds = wait_until(lambda: [b for b in sandbox.builds()[before:] if b[1] is not None], timeout=60)
    assert builds and builds[0][1] == 0, (sandbox.builds(), sandbox.log_tail())
    for t in shells:
        t.expect("\r\nlooped\r\n", timeout=30)
        # Wait for the prompt before typing: typed ahead, the line is echoed by the kernel before the prompt.
        t.expect(PROMPT, timeout=30)
        assert t.run("echo still here").strip() == "still here"


def test_killing_the_client_detaches_and_the_grace_ends_the_remote_command(sandbox):
    # The sandbox master keeps a detached session for 4 s (detach_grace=4); the default is 5 minutes.
    client = subprocess.Popen(shell_argv() + ["--socket", sandbox.socket, "w1", "sleep 301"])
    try:
        assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True)
                          .returncode == 0, timeout=10)
    finally:
        client.kill()
        client.wait()
    time.sleep(1.5)
    assert subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True).returncode == 0, \
        "a detached session must survive its operator's connection for the grace"
    assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 301$"], capture_output=True)
                      .returncode == 1, timeout=15), "the remote command outlived the detach grace"


def test_slaveshell_workers_lists_the_fleet(sandbox):
    out = subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket", sandbox.socket],
                         capture_output=True, text=True, timeout=30).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["w1"][1:3] == ["connected", "yes"]
    assert rows["w3"][1:3] == ["connected", "no"]


def test_stopping_the_worker_ends_the_client_with_255(sandbox, terminal):
    t = terminal("w2").ready()
    # A duration no other test (or a parallel run) uses, so that the check below sees only this one.
    sleep = f"sleep {300 + os.getpid() % 997}.{time.time_ns() % 1000:03d}"
    t.child.sendline(sleep)
    t.expect(sleep + "\r\n")
    stopped = time.monotonic()
    sandbox.stop_worker("w2")
    try:
        assert t.wait(timeout=10) == 255
        assert time.monotonic() - stopped < 10
        assert "connection to worker w2 lost" in t.child.before.decode()
    finally:
        sandbox.start_worker("w2")
        sandbox.wait_for_workers(["w2"])
    # Nothing left behind on the worker.
    assert subprocess.run(["pgrep", "-f", f"^{sleep}$"], capture_output=True).returncode == 1


def test_demo_runs_a_command_on_a_throwaway_worker_and_cleans_up():
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "demo", "--", "echo", "hello from", "$PWD"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello from /")
    assert "worker-demo-worker" in done.stdout
    sandbox_dir = done.stdout.split()[-1].rsplit("/worker-demo-worker", 1)[0]
    assert not os.path.exists(sandbox_dir)


def _local(printed: str) -> list[str]:
    """A command the demo printed, with its `slaveshell`/`buildbot-shell` run from this tree's Python."""
    import shlex

    words = shlex.split(printed)
    module = {"slaveshell": "slaveshell.cli", "buildbot-shell": "slaveshell.shell_cli"}.get(os.path.basename(words[0]))
    return [sys.executable, "-m", module, *words[1:]] if module else words


def test_demo_in_a_job_control_shell_suspends_with_its_shell_and_keeps_a_detached_session(tmp_path):
    """`slaveshell demo` typed at an interactive bash: ~^Z stops the demo with buildbot-shell (bash reports the
    job stopped) and `fg` continues both; the printed held-build commands work; ~d prints a resume command (with
    --socket) that works from another terminal, the sandbox stays while the session is detached, Enter resumes
    it, and once the session ends the demo removes the sandbox."""
    import shlex

    import pexpect

    env = dict(os.environ, TERM="xterm", PS1="BASH$ ", HOME=str(tmp_path))
    bash = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env=env, dimensions=(24, 120), timeout=120,
                         cwd=str(tmp_path))
    printed = bytearray()
    bash.logfile_read = type("Log", (), {"write": lambda self, b: printed.extend(b), "flush": lambda self: None})()
    other = None
    master_dir = ""
    try:
        bash.expect(r"BASH\$ ")
        bash.sendline(f"{shlex.quote(sys.executable)} -m slaveshell.cli demo")
        bash.expect(r"master: +(\S+)")
        master_dir = bash.match.group(1).decode()
        bash.expect(r"run in another terminal\r\n +(.+?)\r\n")
        hold = bash.match.group(1).decode()
        bash.expect(r"releases it\) with\r\n +(.+?)\r\n")
        step_in = bash.match.group(1).decode()
        bash.expect("you are now in a shell on the worker")
        bash.expect(r"[#$] ")
        bash.sendline("PS1='W> '")
        bash.expect("W> ")

        # The held build, as printed.
        subprocess.run(_local(hold), check=True, capture_output=True, timeout=60)
        from slaveshell.client.sandbox import Sandbox

        # A person types the next command seconds later; here, once the scheduler has made the build.
        assert wait_until(lambda: Sandbox(os.path.dirname(master_dir)).builds("holder"), 60)
        held = subprocess.run([*_local(step_in), "cat", "failed.txt"], capture_output=True, text=True, timeout=120)
        assert (held.returncode, held.stdout.strip()) == (0, "evidence"), held.stderr

        # ~^Z: bash sees its job stopped and gets the terminal back; fg continues the demo and its shell.
        bash.send("\r~\x1a")
        bash.expect(r"Stopped")
        bash.expect(r"BASH\$ ")
        bash.sendline("fg")
        bash.send("echo back-$((1+1))\r")
        bash.expect("back-2")
        bash.expect("W> ")

        # ~d: a resume command that works, and the sandbox kept meanwhile.
        bash.send("\r~d")
        bash.expect(r"resume it with: (slaveshell attach \w+ --socket \S+)\r\n")
        resume = bash.match.group(1).decode()
        bash.expect("Enter resumes it here")
        assert os.path.exists(os.path.join(master_dir, "shell.sock"))
        argv = _local(resume)
        other = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(24, 80), timeout=60)
        other.send("\recho resumed-$((2+1))\r")
        other.expect("resumed-3")
        other.send("\r~d")
        other.expect(pexpect.EOF)
        other.close()
        assert other.exitstatus == 0
        bash.send("\r")  # Enter, in the demo: it is detached again, and resumed here
        bash.send("\recho again-$((3+1))\r")
        bash.expect("again-4")
        bash.send("exit\r")
        bash.expect("removing the sandbox")
        bash.expect(r"BASH\$ ")
        bash.sendline("echo demo-exit-$?")
        bash.expect(r"demo-exit-(\d+)")
        assert bash.match.group(1) == b"0"
        assert wait_until(lambda: not os.path.exists(master_dir), 30), "the sandbox is removed at the end"
    finally:
        if other is not None:
            other.close(force=True)
        bash.close(force=True)
        _stop_leftover_sandbox(master_dir)
    assert "Traceback" not in printed.decode(errors="replace")


def _stop_leftover_sandbox(master_dir: str) -> None:
    """After a failure: the demo's master and worker, if still running (the demo stops them on its way out)."""
    if not master_dir:
        return
    root = os.path.dirname(master_dir)
    if os.path.isdir(root) and wait_until(lambda: not os.path.exists(root), 15) is False:
        from slaveshell.client.sandbox import Sandbox

        sandbox = Sandbox(root, workers=["demo-worker"])
        sandbox.started = [sandbox.master_dir, sandbox.worker_dir("demo-worker")]
        sandbox.stop()


def test_closing_the_demos_terminal_stops_and_removes_its_sandbox():
    import contextlib

    import pexpect

    demo = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "demo"], env=dict(os.environ, TERM="xterm"),
                         dimensions=(24, 100), timeout=120)
    master_dir = ""
    try:
        demo.expect(r"master: +(\S+)")
        master_dir = demo.match.group(1).decode()
        demo.expect("you are now in a shell on the worker")
        demo.expect(r"[#$] ")
        # The terminal goes away: SIGHUP to the demo and its shell. Closed through pexpect's own file object, which
        # closes a descriptor once (an os.close here left the object to close the same number again when freed:
        # by then, another file's).
        demo.ptyproc.fileobj.close()
        demo.child_fd = -1
        assert wait_until(lambda: not os.path.exists(os.path.dirname(master_dir)), 60), "the sandbox is left"
    finally:
        if demo.child_fd != -1:
            demo.close(force=True)
        elif demo.isalive():
            demo.kill(9)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(demo.pid, 0)
        _stop_leftover_sandbox(master_dir)


def test_a_login_without_a_terminal_runs_its_script_and_says_there_is_no_pty_as_ssh_does(sandbox):
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "w1"], input=b"echo scripted-$((6*7))\nexit 3\n",
                          capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert b"scripted-42" in done.stdout
    assert done.stderr.splitlines()[0] == b"Pseudo-terminal will not be allocated because stdin is not a terminal."
