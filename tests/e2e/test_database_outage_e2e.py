"""The audit database stopped for real in the middle of a session (PostgreSQL, MariaDB): the session goes on, a
new one is refused (fail-closed), and the index rows land once the server is back."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

DB = "slaveshell_e2e"
MARIADB = "/usr/sbin/mariadbd"


def _pg(action: str) -> None:
    version = os.path.basename(sorted(glob.glob("/etc/postgresql/*"))[-1])
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True,
                   capture_output=True, timeout=60)


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("pg_ctlcluster") or not _pg_ready(),
                    reason="needs root and the local PostgreSQL cluster (pg_ctlcluster)")
def test_postgresql_stopped_mid_session(tmp_path_factory):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {DB}"],
                   capture_output=True, check=True)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {DB}"],
                   capture_output=True, check=True)
    sb = Sandbox(str(tmp_path_factory.mktemp("dbdown")), workers=["p1"],
                 service_kwargs=f"db_url='postgresql+psycopg2://postgres@127.0.0.1/{DB}'")
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["p1"]).ready()
        try:
            t.run("echo before-the-outage")
            _pg("stop")
            assert t.run("echo during-the-outage").strip() == "during-the-outage"  # the session goes on
            refused = subprocess.run(shell_argv() + ["--socket", sb.socket, "p1", "true"], capture_output=True,
                                     text=True, timeout=60)
            assert refused.returncode == 255
            assert "session not started: it cannot be recorded" in refused.stderr
            t.child.sendline("exit 3")
            assert t.wait() == 3
        finally:
            if not _pg_ready():
                _pg("start")
            t.close()
        assert wait_until(_pg_ready, timeout=30)

        def ended() -> list:
            done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sb.socket,
                                   "--json"], capture_output=True, text=True)
            rows = json.loads(done.stdout) if done.returncode == 0 else []
            return [r for r in rows if r["state"] == "ended" and r["exit_code"] == 3]

        rows = wait_until(ended, timeout=30)  # the queued writes land once the server is back
        assert rows and rows[0]["end_reason"] == "exit 3"
        with open(rows[0]["transcript"], encoding="utf-8") as f:
            text = f.read()
        assert "before-the-outage" in text and "during-the-outage" in text
    finally:
        if not _pg_ready():
            _pg("start")
        sb.stop()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {DB}"],
                       capture_output=True)


def _mariadb_ready() -> bool:
    return subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e", "select 1"],
                          capture_output=True).returncode == 0


def _mariadb_start() -> None:
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", MARIADB], check=True)
    assert wait_until(_mariadb_ready, timeout=60)


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists(MARIADB) or not shutil.which("start-stop-daemon")
                    or not _mariadb_ready(), reason="needs root and the local MariaDB server")
def test_mariadb_stopped_mid_session(tmp_path_factory):
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e",
                    f"DROP DATABASE IF EXISTS {DB}; CREATE DATABASE {DB}"], check=True, capture_output=True)
    sb = Sandbox(str(tmp_path_factory.mktemp("mariadbdown")), workers=["m1"],
                 service_kwargs=f"db_url='mysql+pymysql://root@127.0.0.1/{DB}'")
    sb.create()
    try:
        sb.start()
        t = Terminal(sb, ["m1"]).ready()
        try:
            t.run("echo before-the-outage")
            subprocess.run(["start-stop-daemon", "--stop", "--retry", "30", "--exec", MARIADB], check=True,
                           capture_output=True)
            assert t.run("echo during-the-outage").strip() == "during-the-outage"
            refused = subprocess.run(shell_argv() + ["--socket", sb.socket, "m1", "true"], capture_output=True,
                                     text=True, timeout=60)
            assert refused.returncode == 255 and "it cannot be recorded" in refused.stderr
            t.child.sendline("exit 5")
            assert t.wait() == 5
        finally:
            if not _mariadb_ready():
                _mariadb_start()
            t.close()

        def ended() -> list:
            done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--socket", sb.socket,
                                   "--json"], capture_output=True, text=True)
            rows = json.loads(done.stdout) if done.returncode == 0 else []
            return [r for r in rows if r["state"] == "ended" and r["exit_code"] == 5]

        assert wait_until(ended, timeout=30)
    finally:
        if not _mariadb_ready():
            _mariadb_start()
        sb.stop()
        subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-e", f"DROP DATABASE IF EXISTS {DB}"],
                       capture_output=True)
