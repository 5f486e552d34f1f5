"""`slaveshell demo --cluster` under a real terminal: the router, a fresh PostgreSQL database, masters A and B and a
worker on B; the shell it drops the user into is on B's worker, through A's socket; typing there runs on B's worker;
`exit` ends the demo, and nothing is left: no process, no database, no directory."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys

import pytest

from slaveshell.client.cluster_sandbox import psql

from .conftest import wait_until

pytestmark = pytest.mark.e2e


def _processes_under(root: str) -> list[int]:
    """Processes whose working directory is under `root` (the demo's masters, workers and router)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/cwd").startswith(root):
                found.append(int(pid))
    return found


def _database_exists(name: str) -> bool:
    done = psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "1"


def test_demo_cluster_gives_a_shell_on_bs_worker_through_a_and_leaves_nothing() -> None:
    import pexpect

    demo = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "demo", "--cluster"],
                         env=dict(os.environ, TERM="xterm"), dimensions=(24, 160), timeout=300)
    root = database = ""
    try:
        index = demo.expect([r"database: (\S+) on the local PostgreSQL", r"cannot start a multi-master site here: .*"])
        if index == 1:
            demo.expect(pexpect.EOF)
            pytest.skip(demo.after.decode(errors="replace").strip())
        database = demo.match.group(1).decode()
        demo.expect(r"master A: (\S+)/A/master ")
        root = demo.match.group(1).decode()
        demo.expect(r"master B: \S+ \(socket (\S+);")
        b_socket = demo.match.group(1).decode()
        demo.expect(r"buildbot-shell --socket (\S+) b1 ")
        assert demo.match.group(1).decode() == os.path.join(root, "A", "master", "shell.sock")
        # How to watch, from another terminal: the session's id from B, watched through A.
        demo.expect(re.escape(f"sessions --socket {b_socket}"))
        demo.expect(r"watch SESSION-ID --socket \S+/A/master/shell.sock")
        demo.expect("you are now in a shell on b1, on master B, through master A")
        demo.expect(r"[#$] ")
        assert _database_exists(database)
        demo.send("echo routed-$((6*7)) in $PWD\r")
        demo.expect(r"routed-42 in (\S+)\r\n")
        assert demo.match.group(1).decode() == os.path.join(root, "B", "worker-b1")
        demo.send("exit\r")
        demo.expect("dropping the database")
        demo.expect(pexpect.EOF)
        demo.close()
        assert demo.exitstatus == 0
        assert not os.path.exists(root), "the site's directory is removed"
        assert not _database_exists(database), "the site's database is dropped"
        assert wait_until(lambda: not _processes_under(root), 30), "no master, worker or router is left"
    finally:
        if demo.isalive():
            demo.kill(signal.SIGTERM)  # the demo stops what it started on its way out
            wait_until(lambda: not demo.isalive(), 120)
            demo.close(force=True)
        if root:
            for pid in _processes_under(root):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if database:
            psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
