"""A routed session whose operator's master dies (tests/e2e/cluster_fixtures.py's site, a site of its own: its
master A is killed): master B, which serves the session, ends it on the worker and records it ended with why."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from .cluster_fixtures import Site, site
from .conftest import Terminal, shell_argv, wait_until
from .test_cluster_e2e import index_rows, rows, sleepers, vouched

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(str(tmp_path_factory.mktemp("site"))) as s:
        yield s


def test_kill_9_of_a_mid_session_ends_it_on_b_recorded_and_nothing_left_on_the_worker(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    t = Terminal(cluster.a, ["b1"])
    try:
        t.ready()
        t.child.sendline("sleep 4343")
        wait_until(lambda: sleepers("4343"), 30)
        os.kill(cluster.a.master_pid(), signal.SIGKILL)
        # B notices (A's procedure left the router with A): the session ends on the worker...
        wait_until(lambda: not sleepers("4343"), 60)
    finally:
        t.close()
    # ... and B records it ended, with why.
    row = wait_until(lambda: (r := index_rows(cluster, "b1")) and r[-1]["state"] != "running" and r[-1], 30)
    assert row["operator"] == vouched()
    assert row["state"] == "ended"
    assert "the operator's master" in str(row["end_reason"]), row
    # B goes on serving its own operators.
    done = subprocess.run(shell_argv() + ["--socket", cluster.b.socket, "b1", "echo still"], capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, b"still\n")
