"""Routed sessions and copies whose other end goes away, on a site of this module's own (tests/e2e/cluster_fixtures.py),
started again where a test stopped or killed part of it (cluster_fixtures.revive): master A killed, master B, which
serves the session, ends it on the worker and records it ended with why; the router stopped, the operator's client
exits 255 with a line and nothing is left on the worker; B killed mid-session ends the session on A with a clear
line, and B's workers are no longer said to be on B; B killed mid-copy ends it on A with a clear line, and the partial
file never takes the destination's place."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from .cluster_fixtures import Site, revive, site
from .conftest import Terminal, assert_no_traceback, shell_argv, wait_until
from .test_cluster_copy_e2e import cp_argv, on_b
from .test_cluster_e2e import a_terminal, index_rows, line_of, rows, sleepers, vouched, workers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def loss_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(str(tmp_path_factory.mktemp("site"))) as s:
        yield s


@pytest.fixture
def cluster(loss_site: Site) -> Site:
    """The module's site, whole: what an earlier test stopped or killed is started again."""
    revive(loss_site)
    return loss_site


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


def test_kill_9_of_b_mid_session_ends_it_on_a_and_b1_is_no_longer_said_to_be_on_b(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    t = a_terminal(cluster, "b1")
    try:
        t.ready()
        t.child.sendline("sleep 4242")
        wait_until(lambda: sleepers("4242"), 30)
        killed = time.monotonic()
        os.kill(cluster.b.master_pid(), signal.SIGKILL)
        # A clear line, and exit 255, well within the client's stall timeout.
        assert t.wait(timeout=45) == 255
        assert time.monotonic() - killed < 45
        said = t.printed.decode("utf-8", "replace")
        assert re.search(r"the session on b1 ended: master B (is gone|stopped answering)", said), said[-500:]
        assert_no_traceback(said)
    finally:
        t.close()
    # Nothing left on the worker: the worker ends its sessions when its master's connection goes.
    wait_until(lambda: not sleepers("4242"), 60)
    status = wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") is None and rows(cluster.a), 30)
    b1 = status["b1"]
    assert (b1["connected"], b1["masters"]) == (False, [])
    # The shared database still has B's row for b1 (buildbot#4277): named as stale, not taken as where b1 is.
    assert b1["stale_database_rows"] == [json.loads(json.dumps(b1["stale_database_rows"]))[0]]
    assert b1["stale_database_rows"][0].endswith(os.path.join("B", "master"))
    assert "nowhere (stale db row)" in line_of(workers(cluster.a).stdout, "b1")
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "b1", "true"], capture_output=True,
                          timeout=60)
    assert done.returncode == 255
    assert done.stderr == b"buildbot-shell: worker b1 is not connected to the master\n"


def staged_bytes(directory: str) -> int:
    total = 0
    for name in os.listdir(directory):
        if name.startswith(".slaveshell-cp-"):
            for dirpath, _dirs, files in os.walk(os.path.join(directory, name)):
                total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def test_kill_9_of_b_mid_copy_ends_it_on_a_with_a_clear_line(cluster: Site, tmp_path) -> None:
    on_b(cluster)
    src = str(tmp_path / "huge")
    with open(src, "wb") as f:
        f.truncate(4 * 1024**3)
    dest_dir = os.path.join(cluster.b.worker_dir("b1"), "killed")
    os.makedirs(dest_dir, exist_ok=True)
    with open(os.path.join(dest_dir, "huge"), "w") as f:
        f.write("the old file\n")
    proc = subprocess.Popen(cp_argv(cluster.a, src, f"b1:{dest_dir}/huge"), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: staged_bytes(dest_dir) > 0, 60, 0.05), "the transfer never started"
        killed = time.monotonic()
        os.kill(cluster.b.master_pid(), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - killed < 45
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "the transfer with b1 ended: master B is gone" in err or "master B stopped answering" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert_no_traceback(err)
    # The partial file never replaced the destination, and the worker, which lost its master, leaves nothing.
    assert wait_until(lambda: sorted(os.listdir(dest_dir)) == ["huge"], 60), os.listdir(dest_dir)
    with open(os.path.join(dest_dir, "huge")) as f:
        assert f.read() == "the old file\n"
