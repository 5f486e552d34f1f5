"""Job control of the client in a real local shell: `~^Z` and SIGTSTP stop buildbot-shell with the local terminal
given back cooked; `fg` takes it raw again (Ctrl-C reaches the remote job, not the client) and sends the window
size, which may have changed while the client was stopped (as OpenSSH's `~^Z` does; its SIGTSTP does neither)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

LOCAL = "LOCAL$ "
REMOTE = "REMOTE> "


@pytest.fixture
def local_shell(tmp_path):
    inputrc = tmp_path / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    env = dict(os.environ, TERM="xterm", PS1=LOCAL, INPUTRC=str(inputrc))
    bash = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env=env, dimensions=(24, 80), timeout=20)
    bash.expect_exact(LOCAL)
    yield bash
    bash.terminate(force=True)


def local_stty(bash) -> set[str]:
    bash.sendline("stty -a")
    bash.expect_exact("stty -a\r\n")
    bash.expect_exact(LOCAL)
    return set(bash.before.decode().split())


@pytest.mark.parametrize("how", ["tilde-ctrl-z", "sigtstp"])
def test_suspended_client_gives_the_terminal_back_and_takes_it_again_on_fg(sandbox, local_shell, how):
    bash = local_shell
    bash.sendline(shlex.join(shell_argv() + ["--socket", sandbox.socket, "w1"]))
    bash.expect(r"[#$] ")
    bash.sendline(f"PS1='{REMOTE}'")
    bash.expect_exact(REMOTE)
    bash.expect_exact(REMOTE)  # the echo of the command line, then the new prompt
    if how == "tilde-ctrl-z":
        bash.send("\r")
        bash.expect_exact(REMOTE)
        bash.send("~\x1a")
        bash.expect_exact("~^Z [suspend buildbot-shell]")
    else:
        client = int(subprocess.run(["pgrep", "-P", str(bash.pid)], capture_output=True, text=True).stdout.split()[0])
        os.kill(client, signal.SIGTSTP)
    bash.expect(r"Stopped[^\n]*shell")
    bash.expect_exact(LOCAL)
    modes = local_stty(bash)
    assert {"icanon", "echo", "isig", "icrnl", "opost"} <= modes, modes
    assert "Traceback" not in bash.before.decode()

    bash.setwinsize(31, 101)  # while the client is stopped: no SIGWINCH reaches it
    bash.sendline("fg")
    bash.sendline("stty size")
    bash.expect_exact("31 101")
    bash.expect_exact(REMOTE)
    bash.sendline("sleep 60")
    bash.expect_exact("sleep 60\r\n")
    time.sleep(0.5)
    bash.sendcontrol("c")  # raw again: a byte for the remote terminal, not SIGINT for the client
    assert bash.expect([REMOTE, LOCAL]) == 0, "Ctrl-C reached the client instead of the remote job"
    bash.sendline("echo still-$((40+2))")
    bash.expect_exact("still-42")
    bash.sendline("exit")
    bash.expect_exact("Connection to w1 closed.")
    bash.expect_exact(LOCAL)
    assert "Traceback" not in bash.before.decode()
    assert {"icanon", "echo"} <= local_stty(bash)


@pytest.fixture
def console(sandbox):
    env = dict(os.environ, TERM="xterm")
    child = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "console", "--socket", sandbox.socket], env=env,
                          dimensions=(24, 80), timeout=20)
    child.expect_exact("slaveshell>")
    yield child
    child.terminate(force=True)


def test_the_console_keeps_a_suspended_session_as_a_job(sandbox, console):
    c = console
    c.sendline("shell w1")
    c.expect(r"[#$] ")
    c.sendline(f"PS1='{REMOTE}'")
    c.expect_exact(REMOTE)
    c.expect_exact(REMOTE)
    c.send("\r")
    c.expect_exact(REMOTE)
    c.send("~\x1a")
    c.expect_exact("[1] stopped  buildbot-shell w1")
    c.expect_exact("slaveshell>")  # the console has the terminal again, not a hang
    c.setwinsize(28, 90)
    c.sendline("fg")
    c.expect_exact("buildbot-shell w1\r\n")
    c.expect_exact(REMOTE)  # redrawn by the remote shell: the new window size reached it (SIGWINCH)
    c.sendline("stty size")
    c.expect_exact("28 90")
    c.expect_exact(REMOTE)
    c.sendline("sleep 60")
    c.expect_exact("sleep 60\r\n")
    time.sleep(0.5)
    c.sendcontrol("c")
    c.expect_exact(REMOTE)
    c.send("\r~\x1a")
    c.expect_exact("[1] stopped  buildbot-shell w1")
    # Leaving the console hangs the stopped session up: buildbot-shell detaches it, resumable.
    c.sendline("quit")
    c.expect(r"resume it with: slaveshell attach (\w+)")
    session_id = c.match.group(1).decode()
    c.expect(pexpect.EOF)
    assert "Traceback" not in c.before.decode()
    subprocess.run([sys.executable, "-m", "slaveshell.cli", "kill", "--socket", sandbox.socket, session_id],
                   capture_output=True, timeout=60)


def test_ctrl_c_in_a_command_run_from_the_console_reaches_the_command_not_the_console(console):
    c = console
    c.sendline("shell w1 sleep 3311")
    assert wait_until(lambda: subprocess.run(["pgrep", "-f", "^sleep 3311$"], capture_output=True).returncode == 0,
                      timeout=20)
    c.sendcontrol("c")
    c.expect_exact("[buildbot-shell w1 sleep 3311: exit 130]")
    c.expect_exact("slaveshell>")
    c.sendline("quit")
    c.expect(pexpect.EOF)
    assert "Traceback" not in c.before.decode()
