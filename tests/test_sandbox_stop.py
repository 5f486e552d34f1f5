"""`Sandbox.stop` signals the processes it started, and only those: a pid file left by a killed process may
name another process by now (pids are reused), which must not be signalled."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from slaveshell.client.sandbox import Sandbox


def _sleeper(cwd: pathlib.Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=cwd)


def test_stop_spares_a_process_that_took_a_stale_pid_files_number(tmp_path: pathlib.Path) -> None:
    mine, elsewhere = tmp_path / "master", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    stranger = _sleeper(elsewhere)  # not started by the sandbox, but its number is in the sandbox's pid file
    try:
        (mine / "twistd.pid").write_text(str(stranger.pid))
        sb = Sandbox(str(tmp_path))
        sb.started.append(str(mine))
        sb.stop(timeout=2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_ends_the_process_working_in_its_directory(tmp_path: pathlib.Path) -> None:
    mine = tmp_path / "master"
    mine.mkdir()
    daemon = _sleeper(mine)
    try:
        (mine / "twistd.pid").write_text(str(daemon.pid))
        sb = Sandbox(str(tmp_path))
        sb.started.append(str(mine))
        sb.stop(timeout=5)
        assert daemon.wait(timeout=5) != 0
        assert not sb.started
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
