"""Piped input into a forced PTY (`-t`) ends the remote command even when its last line has no newline: the
worker sends a second VEOF after a partial line (OpenSSH's `ssh -tt` never ends here, newline or not)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time

import pytest

from .conftest import shell_argv

pytestmark = pytest.mark.e2e


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


@pytest.mark.parametrize("data", [b"first\nlast", b"first\nlast\n", b"", b"only"])
def test_piped_input_into_a_pty_ends_with_or_without_a_final_newline(sandbox, data):
    since = time.time()
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-t", "w1", "--",
                                          "exec -a slaveshell-eof-cat cat"],
                          input=data, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The terminal echoes the input, and cat prints it back: each line twice.
    for line in data.split(b"\n"):
        assert done.stdout.count(line) == (2 if line else done.stdout.count(line)), done.stdout
    assert not running("^slaveshell-eof-cat")
    out = subprocess.run([sys.executable, "-m", "slaveshell.cli", "sessions", "--socket", sandbox.socket, "--json"],
                         capture_output=True, text=True, timeout=60).stdout
    assert [s for s in json.loads(out) if s["started"] >= since - 1] == []


def test_a_canonical_reader_gets_the_partial_last_line_as_its_own_read(sandbox):
    # What the program reads, not what the terminal echoes: "a\n", then "last", then end of file.
    script = "import os\nwhile True:\n    b = os.read(0, 100)\n    print(repr(b), flush=True)\n    if not b: break\n"
    done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-t", "w1", "--",
                                          f"{sys.executable} -c {shlex.quote(script)}"],
                          input=b"a\nlast", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reads = re.findall(r"b'(?:[^'\\]|\\.)*'", done.stdout.decode())
    assert reads == ["b'a\\n'", "b'last'", "b''"], done.stdout


def test_a_pty_command_that_closes_its_descriptors_before_exiting_is_not_hung_up(sandbox):
    # cat closes stdin/stdout/stderr, then exits: the worker must not close the PTY (a hangup, SIGHUP, exit 129)
    # in between. A race, so several rounds.
    for _ in range(8):
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "-t", "w1", "--", "cat"],
                              input=b"first\nlast\n", capture_output=True, timeout=60)
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
