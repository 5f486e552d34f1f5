"""A multi-master site (tests/e2e/cluster_fixtures.py: the router, two masters A and B on a shared PostgreSQL
database, workers on each): on master A, `slaveshell workers` and `buildbot-shell` know where B's workers are, from
the router's live registrations; an anonymous router client cannot reach slaveshell's procedures; a worker name
attached to both masters is reported; once B is killed its workers are no longer said to be on B."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from master_side.cluster.config import master_uri, worker_uri
from slaveshell.client.sandbox import Sandbox

from .cluster_fixtures import DOC, Site, anonymous_probe, site
from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(str(tmp_path_factory.mktemp("site"))) as s:
        yield s


def workers(sb: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--socket", sb.socket],
                          capture_output=True, text=True, timeout=60)


def rows(sb: Sandbox) -> dict[str, dict[str, object]]:
    return {str(w["name"]): w for w in sb.workers_status()}


def line_of(text: str, worker: str) -> str:
    return next(line for line in text.splitlines() if line.split()[:1] == [worker])


def test_workers_on_a_names_the_master_that_holds_each(cluster: Site) -> None:
    status = wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B" and rows(cluster.a), 30)
    assert status["b1"]["connected"] is True and status["b1"]["here"] is False
    assert status["b1"]["shell"] is True
    assert status["b1"]["where"].endswith(os.path.join("B", "master"))
    assert status["b1"]["stale_database_rows"] == []
    assert status["a1"]["master"] == "A" and status["a1"]["here"] is True
    done = workers(cluster.a)
    assert done.returncode == 0, done.stderr
    assert "MASTER" in done.stdout.splitlines()[0]
    assert "on master B" in line_of(done.stdout, "b1")
    assert "here (master A)" in line_of(done.stdout, "a1")
    # B's own view: a1 is on A.
    assert "on master A" in line_of(workers(cluster.b).stdout, "a1")


def test_shell_on_a_for_a_worker_of_b_says_where_it_is(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "b1", "true"], capture_output=True,
                          timeout=60)
    assert done.returncode == 255
    where = rows(cluster.a)["b1"]["where"]
    assert where == f"{socket.gethostname()}:{cluster.b.master_dir}"
    # The line docs/multi-master.md shows, with this master's host:basedir.
    with open(DOC) as f:
        documented = next(line.strip() for line in f if line.strip().startswith("buildbot-shell: b1 is on master B ("))
    assert done.stderr == documented.replace("buildhost:/srv/master-b", str(where)).encode() + b"\n"
    # The worker of B itself is reachable on B, as before.
    done = subprocess.run(shell_argv() + ["--socket", cluster.b.socket, "b1", "echo on-b"], capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, b"on-b\n")


def test_an_anonymous_router_client_cannot_call_or_register_slaveshells_procedures(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    probe = anonymous_probe(cluster.router.url,
                            call=[master_uri("B"), worker_uri("b1"), "wamp.registration.list"],
                            register=[worker_uri("w-new"), worker_uri("a1") + "x", master_uri("C")])
    assert probe["joined"] == "anonymous"
    assert set(probe["call"].values()) == {"wamp.error.not_authorized"}, probe  # type: ignore[union-attr]
    assert set(probe["register"].values()) == {"wamp.error.not_authorized"}, probe  # type: ignore[union-attr]


def test_a_worker_name_attached_to_both_masters_is_reported(cluster: Site) -> None:
    status = wait_until(lambda: len(rows(cluster.a).get("dup", {}).get("masters", [])) == 2 and rows(cluster.a), 30)
    assert sorted(status["dup"]["masters"]) == ["A", "B"]
    assert "on 2 masters: " in line_of(workers(cluster.a).stdout, "dup")
    assert "on 2 masters: " in line_of(workers(cluster.b).stdout, "dup")
    # Exactly one of the two masters holds its registration on the router: never both.
    a_log = open(os.path.join(cluster.a.master_dir, "twistd.log"), errors="replace").read()
    b_log = open(os.path.join(cluster.b.master_dir, "twistd.log"), errors="replace").read()
    said = "worker dup is attached here and to another master"
    assert (said in a_log) != (said in b_log)


def test_after_kill_9_of_b_its_worker_is_not_said_to_be_on_b(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    os.kill(cluster.b.master_pid(), signal.SIGKILL)
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
