"""Ctrl-C while a `slaveshell` tool or the console waits for a master that does not answer: one line, no
traceback, the process ends (the tools run Twisted's reactor without its signal handlers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slaveshell.client.console import BackendError, MasterBackend


@pytest.fixture
def silent_master(tmp_path: Path) -> Iterator[str]:
    """A socket that accepts connections and never says anything (a master that is busy or stuck)."""
    path = str(tmp_path / "shell.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    yield path
    server.close()


@pytest.mark.parametrize("command", [["history"], ["search", "needle"], ["sessions"], ["export", "abc"]])
def test_ctrl_c_while_a_tool_waits_for_the_master_ends_it_with_one_line(silent_master, command):
    child = subprocess.Popen([sys.executable, "-m", "slaveshell.cli", *command, "--socket", silent_master],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # let it connect and wait; Ctrl-C earlier is handled by Python before our handler
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert err.strip() == "slaveshell: interrupted"
    assert "Traceback" not in err


def test_a_master_that_does_not_answer_is_an_error_in_the_console_not_a_traceback(silent_master):
    backend = MasterBackend(silent_master, timeout=1)
    with pytest.raises(BackendError, match="did not answer within 1 s"):
        backend.workers()
    with pytest.raises(BackendError, match="did not answer within 1 s"):
        backend.kill("abc")
    assert os.path.exists(silent_master)
