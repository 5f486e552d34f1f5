"""Routed sessions whose other end goes away, each on a site of its own (tests/e2e/cluster_fixtures.py): master A
killed, master B, which serves the session, ends it on the worker and records it ended with why; the router
stopped, the operator's client exits 255 with a line and nothing is left on the worker."""

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


@pytest.fixture
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


def test_the_router_stopped_mid_session_ends_it_with_a_line_and_nothing_left_on_the_worker(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    t = Terminal(cluster.a, ["b1"])
    try:
        t.ready()
        t.child.sendline("sleep 4545")
        wait_until(lambda: sleepers("4545"), 30)
        cluster.router.stop()
        assert t.wait(timeout=45) == 255
        said = t.printed.decode("utf-8", "replace")
        assert "the session on b1 ended: this master lost the cluster's router" in said, said[-500:]
    finally:
        t.close()
    wait_until(lambda: not sleepers("4545"), 60)
    assert not sleepers("4545")
    # Buildbot's own masters stop their services when their session on the router is lost, and then ignore
    # SIGTERM (docs/multi-master.md): ended here, so that the site's teardown does not wait for them.
    for sb in (cluster.a, cluster.b):
        os.kill(sb.master_pid(), signal.SIGKILL)
