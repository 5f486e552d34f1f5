"""`slaveshell cp` while the audit database was away at the master's start, against a real master and worker:
a copy is refused while it is away (fail-closed), and the first copy once it is back is served and recorded,
with no session opened in between to connect the master to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import assert_no_traceback, wait_until

pytestmark = pytest.mark.e2e


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60)


def test_a_copy_works_once_the_audit_database_away_at_the_masters_start_is_back(tmp_path_factory, tmp_path):
    root = str(tmp_path_factory.mktemp("cpdb"))
    later = os.path.join(root, "later")  # the database's directory: missing at the start, made later
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    sb = Sandbox(root, workers=["d1"], opt_in_args=f"allowed_dirs=[{allowed!r}]",
                 service_kwargs=f"db_url={'sqlite:///' + os.path.join(later, 'audit.sqlite')!r}")
    sb.create()
    try:
        sb.start()
        local = tmp_path / "payload.bin"
        body = os.urandom(700 * 1024 + 11)
        local.write_bytes(body)
        refused = cli(sb, "cp", str(local), f"d1:{allowed}/")
        assert refused.returncode == 1, refused.stderr
        assert "transfer not started: it cannot be recorded" in refused.stderr
        assert_no_traceback(refused.stderr)
        assert not os.path.exists(os.path.join(allowed, "payload.bin"))
        os.makedirs(later)
        done = cli(sb, "cp", str(local), f"d1:{allowed}/")
        assert done.returncode == 0, done.stderr
        with open(os.path.join(allowed, "payload.bin"), "rb") as f:
            assert f.read() == body

        def recorded() -> list[dict[str, object]]:
            listed = cli(sb, "history", "--json")
            rows = json.loads(listed.stdout) if listed.returncode == 0 else []
            return [r for r in rows if r["term"] == "transfer" and r["state"] == "ended"]

        rows = wait_until(recorded, timeout=30)
        assert rows and rows[0]["bytes_in"] == len(body) and "payload.bin" in str(rows[0]["command"])
        assert rows[0]["transcript"] and os.path.getsize(str(rows[0]["transcript"])) > 0
    finally:
        sb.stop()
