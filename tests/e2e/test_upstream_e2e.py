"""A Twisted whose Banana is not the shape slaveshell's bounds were written for, on real processes: the shell stays
off where it would have run unbounded (a worker offers none, a master serves no socket), says so once in the log,
and Buildbot goes on (the worker connects and builds)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

# Python source evaluated in master.cfg / buildbot.tac before ShellService or slave_side.install run: Banana's
# dataReceived replaced by a partialmethod of itself (Twisted's behaviour, another shape).
OTHER_BANANA = ("**(setattr(__import__('twisted.spread.banana', fromlist=['Banana']).Banana, 'dataReceived', "
                "__import__('functools').partialmethod(__import__('twisted.spread.banana', "
                "fromlist=['Banana']).Banana.dataReceived)) or {})")


def log_of(directory: str) -> str:
    with open(os.path.join(directory, "twistd.log"), errors="replace") as f:
        return f.read()


def test_a_worker_whose_banana_differs_offers_no_shell_and_builds(tmp_path):
    sandbox = Sandbox(str(tmp_path / "sb"), workers=["w1"], opt_in_args=OTHER_BANANA)
    sandbox.create()
    try:
        sandbox.start()
        done = subprocess.run(shell_argv() + ["--socket", sandbox.socket, "w1", "echo hi"], capture_output=True,
                              timeout=60)
        assert done.returncode == 255
        assert done.stderr.startswith(b"buildbot-shell: worker w1 has not enabled slaveshell")
        log = log_of(sandbox.worker_dir("w1"))
        assert log.count("slaveshell: banana not changed") == 1
        assert "slaveshell stays off in this process" in log
        sandbox.send_change()
        assert wait_until(lambda: [r for _, r in sandbox.builds()] == [0], timeout=60), sandbox.log_tail()
    finally:
        sandbox.stop()


def test_a_master_whose_banana_differs_serves_no_socket_and_builds(tmp_path):
    sandbox = Sandbox(str(tmp_path / "sb"), workers=["w1"], service_kwargs=OTHER_BANANA)
    sandbox.create()
    try:
        sandbox.start_master()
        sandbox.start_worker("w1")  # (Sandbox.start waits for workers through the shell's socket)
        assert wait_until(lambda: "worker is ready" in log_of(sandbox.worker_dir("w1")), timeout=60), \
            sandbox.log_tail()
        log = log_of(sandbox.master_dir)
        assert "slaveshell: banana not changed" in log
        assert "shells are unavailable" in log
        assert not os.path.exists(sandbox.socket)
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket", sandbox.socket],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        sandbox.send_change()
        assert wait_until(lambda: [r for _, r in sandbox.builds()] == [0], timeout=60), sandbox.log_tail()
    finally:
        sandbox.stop()
