"""A multi-master site (tests/e2e/cluster_fixtures.py: the router, two masters A and B on a shared PostgreSQL
database, workers on each): on master A, `slaveshell workers` knows where B's workers are, from the router's live
registrations; `buildbot-shell` on A's socket opens a session on a worker of B, served and recorded by B under B's
policy for the operator A vouches for; an anonymous router client cannot reach slaveshell's procedures; a worker
name attached to both masters is reported. On the site these modules share (tests/e2e/conftest.py: cluster); B
killed mid-session is in test_cluster_loss_e2e.py."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time

import pytest

from master_side.cluster.config import master_attach_uri, master_uri, worker_uri
from master_side.cluster.stream import OpenCall
from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.protocol import OpenRequest

from .cluster_fixtures import DOC, PG, REALM, Site, anonymous_probe, hostile_probe
from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e


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


def index_rows(site: Site, worker: str) -> list[dict[str, object]]:
    """The sessions on `worker` in the site's shared audit index (PostgreSQL), oldest first."""
    sql = ("SELECT coalesce(json_agg(s ORDER BY started), '[]') FROM (SELECT id, operator, master, state, "
           "exit_code, end_reason, transcript, started FROM slaveshell_sessions "
           f"WHERE worker = '{worker}') s")
    done = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def vouched() -> str:
    """The test's user as master A vouches for it to master B."""
    return f"cluster:A/{getpass.getuser()}"


def a_terminal(site: Site, *args: str) -> Terminal:
    return Terminal(site.a, list(args))


def test_a_pty_session_on_a_worker_of_b_through_a(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    before = len(index_rows(cluster, "b1"))
    t = a_terminal(cluster, "b1")
    try:
        t.ready()
        assert "routed-42" in t.run("echo routed-$((6*7))")
        # The shell runs on b1, B's worker: its working directory is in b1's basedir.
        assert cluster.b.worker_dir("b1") in t.run("pwd")
        t.child.sendline("exit 3")
        assert t.wait(timeout=30) == 3
    finally:
        t.close()
    # B recorded it: the row in the shared index names B (the master column) and A (the operator it vouched
    # for), the transcript is on B's disk, and the row is closed with the exit status.
    row = wait_until(lambda: (r := index_rows(cluster, "b1")[before:]) and r[-1]["state"] != "running" and r[-1],
                     30)
    assert row["operator"] == vouched()
    assert str(row["master"]).endswith(os.path.join("B", "master"))
    assert (row["state"], row["exit_code"]) == ("ended", 3)
    assert str(row["transcript"]).startswith(cluster.b.master_dir + os.sep)
    with open(str(row["transcript"]), "rb") as f:
        assert b"routed-42" in f.read()


def test_a_command_on_a_worker_of_b_through_a(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "-T", "b1", "echo on-b; exit 4"],
                          capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (4, b"on-b\n"), done.stderr
    # Megabytes of output: through the credit windows, in pieces far below the router's message limit.
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "-T", "b1",
                                          "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done >&2"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"x" * 3000000 + b"\n"
    assert done.stderr == b"done\n"


def test_yes_through_a_piped_into_head_ends_by_sigpipe_on_b_as_a_local_one(cluster: Site) -> None:
    """`buildbot-shell --socket A -T b1 -- yes | head -1`: A tells B that whoever read stdout went away, B's worker
    closes the command's stdout, and `yes` ends by SIGPIPE there (tests/e2e/test_reader_gone_e2e.py, locally)."""
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    proc = subprocess.Popen(shell_argv() + ["--socket", cluster.a.socket, "-T", "b1", "--",
                                            "yes; echo yes-ended-by-$? >&2; exit 3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"y\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 3
    assert err == b"yes-ended-by-141\n"


def test_bs_policy_refuses_the_identity_a_vouches_for(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("z1", {}).get("master") == "B", 30)
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "z1", "true"], capture_output=True,
                          timeout=60)
    assert done.returncode == 255
    # B's own refusal, of the operator as A vouched for it: the line docs/multi-master.md shows.
    with open(DOC) as f:
        documented = next(line.strip() for line in f if line.strip().startswith("buildbot-shell: permission denied"))
    assert done.stderr == documented.replace("cluster:A/alice", vouched()).encode() + b"\n"
    # On B's socket, its own operator opens z1.
    done = subprocess.run(shell_argv() + ["--socket", cluster.b.socket, "z1", "echo on-z1"], capture_output=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, b"on-z1\n")


def live_sessions(sb: Sandbox) -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "sessions", "--socket", sb.socket, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_on_a_an_operator_watches_a_session_b_holds(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    # B's own operator runs a command on b1, on B's socket.
    ticking = subprocess.Popen(shell_argv() + ["--socket", cluster.b.socket, "-T", "b1",
                                               "for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = None
    try:
        sid = wait_until(lambda: next((str(s["id"]) for s in live_sessions(cluster.b) if s["worker"] == "b1"), None),
                         30)
        assert sid
        # On A, where the session is not: `slaveshell watch` reaches it on B.
        watcher = subprocess.Popen([sys.executable, "-m", "slaveshell.cli", "watch", sid, "--socket",
                                    cluster.a.socket], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert watcher.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while b"tick-" not in seen and time.monotonic() < deadline:
            seen += watcher.stdout.read1(4096)
        assert b"tick-" in seen
        # B lists the watcher, as A vouched for it.
        viewers = next(s for s in live_sessions(cluster.b) if s["id"] == sid)["viewers"]
        assert {"user": vouched(), "role": "watch"} in viewers
        watcher.terminate()
        watcher.wait(30)
        # The watcher left; the session goes on.
        wait_until(lambda: next(s for s in live_sessions(cluster.b) if s["id"] == sid)["viewers"]
                   == [v for v in viewers if v["user"] != vouched()], 30)
        assert ticking.poll() is None
    finally:
        for proc in (watcher, ticking):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_an_anonymous_router_client_cannot_call_or_register_slaveshells_procedures(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    probe = anonymous_probe(cluster.router.url,
                            call=[master_uri("B"), worker_uri("b1"), worker_uri("b1", "open"),
                                  "wamp.registration.list"],
                            register=[worker_uri("w-new"), worker_uri("a1") + "x", master_uri("C"),
                                      worker_uri("b9", "open")])
    assert probe["joined"] == "anonymous"
    assert set(probe["call"].values()) == {"wamp.error.not_authorized"}, probe  # type: ignore[union-attr]
    assert set(probe["register"].values()) == {"wamp.error.not_authorized"}, probe  # type: ignore[union-attr]


def test_a_hostile_master_on_the_router_is_refused_by_b_and_ignored_by_a_live_session(cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    marker = os.path.join(cluster.b.root, "pwned")
    t = a_terminal(cluster, "b1")
    try:
        t.ready()
        # C, a slaveshell principal no master uses, claims to vouch for the same user: B sees cluster:C/<user>,
        # which its policy does not name. Then it calls the live session's procedures (found through the
        # router's meta API) with input, a close, and forged output.
        call = OpenCall(OpenRequest(worker="b1"), getpass.getuser(), (), "0" * 32).to_wire()
        probe = hostile_probe(cluster, {
            "open_uri": worker_uri("b1", "open"), "open_call": call,
            "register": [master_uri("B"), master_attach_uri("B") + "x", master_uri("A") + "x", master_attach_uri("C")],
            "in": [[0, "input", f"touch {marker}\n"], [1, "close"]],
            "out": [[0, "output", 1, "FORGED-OUTPUT"], [1, "exit", 0, None, ""]]})
        assert probe["joined"] == ["C", "slaveshell-43"]  # its own role (slaveshell.client.router.master_role)
        opened = probe["open"]
        assert isinstance(opened, dict) and opened["ok"] is False and opened["kind"] == "permission denied"
        assert "cluster:C/" in str(opened["error"]) and "vouched for by master C" in str(opened["error"])
        # Nothing under another master's name: only under its own.
        assert probe["register"] == {master_uri("B"): "wamp.error.procedure_already_exists",  # B holds it
                                     master_attach_uri("B") + "x": "wamp.error.not_authorized",
                                     master_uri("A") + "x": "wamp.error.not_authorized",
                                     master_attach_uri("C"): "allowed"}, probe
        assert probe["sessions"] == {"in": ["called", "called"], "out": ["called", "called"]}, probe
        # The session goes on, untouched.
        assert "still-42" in t.run("echo still-$((6*7))")
        assert not os.path.exists(marker)
        assert "FORGED-OUTPUT" not in t.printed.decode("utf-8", "replace")
        t.child.sendline("exit")
        assert t.wait(timeout=30) == 0
    finally:
        t.close()


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


HOSTILE_LISTER = r"""
import sys
from autobahn.twisted.component import Component
from twisted.internet import defer, reactor

url, realm, ticket, marker, listing_uri, open_uri = sys.argv[1:7]
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication={"ticket": {"authid": "C", "ticket": ticket}})

def opened(*args, **kwargs):
    open(marker, "w").close()  # an operator's open reached C
    return {"ok": False, "error": "C got it"}

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    workers = [{"name": "ghost", "shell": True, "paused": False, "system": "posix", "info": "", "sessions": 0,
                "registered": True}]
    try:
        yield session.register(lambda: {"master": "C", "buildbot": "evil:/srv/c", "masterid": 1,
                                        "workers": workers}, listing_uri)
        yield session.register(opened, open_uri)
        print("ready", flush=True)
    except Exception as e:
        print("failed", e, flush=True)

client.start(reactor).addBoth(lambda result: print("ended", result, flush=True))
reactor.callLater(120, reactor.stop)
reactor.run()
"""


def test_a_worker_a_master_lists_but_the_shared_database_does_not_show_there_is_disputed_never_routed(
        cluster: Site) -> None:
    wait_until(lambda: rows(cluster.a).get("b1", {}).get("master") == "B", 30)
    marker = os.path.join(cluster.root, "ghost-opened")
    lister = subprocess.Popen([sys.executable, "-c", HOSTILE_LISTER, cluster.router.url, REALM, cluster.tickets["C"],
                               marker, master_uri("C"), worker_uri("ghost", "open")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert lister.stdout is not None
        said = lister.stdout.readline().strip()
        assert said == "ready", said
        # C, a slaveshell principal on the router but no Buildbot master of the shared database (it names master
        # #1's id with another name), lists ghost and holds ghost's open procedure: A shows the claim as disputed.
        ghost = wait_until(lambda: rows(cluster.a).get("ghost"), 30)
        assert (ghost["connected"], ghost["master"], ghost["masters"]) == (False, None, [])
        assert [d["master"] for d in ghost["disputed"]] == ["C"]
        assert "disputed: C (not routed)" in line_of(workers(cluster.a).stdout, "ghost")
        # An operator's shell on ghost is refused with why, and never reaches C.
        done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "ghost", "echo", "secret"],
                              capture_output=True, timeout=60)
        assert done.returncode == 255
        said = done.stderr.decode()
        assert re.search(r"master C says it is evil:/srv/c, but the shared database's master #1 is \S+: its "
                         r"workers are not routed", said), said
        assert not os.path.exists(marker)
        # Audited on A, once while it lasts: the disputed listing, under C's name.
        sql = ("SELECT count(*) FROM slaveshell_events WHERE kind = 'refused' AND operator = 'cluster:C' "
               "AND detail LIKE 'disputed listing: ghost;%'")

        def audited() -> int:
            rows(cluster.a)  # a listing that lasts is audited at the second check that finds it disputed
            counted = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True,
                                     text=True, timeout=60)
            assert counted.returncode == 0, counted.stderr
            return int(counted.stdout.strip())

        wait_until(audited, 30)
        assert audited() == 1  # once while it lasts
    finally:
        lister.terminate()
        lister.wait(timeout=30)
    # b1, confirmed by the database on B, is routed again once the router has dropped C's session (a moment after
    # C's process ends: until then A rightly refuses, naming the claim).
    wait_until(lambda: (row := rows(cluster.a).get("b1", {})).get("master") == "B" and not row.get("disputed"), 30)
    b1 = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "b1", "echo", "routed-$((6*7))"],
                        capture_output=True, timeout=60)
    assert b1.returncode == 0 and b1.stdout.strip().endswith(b"routed-42"), b1


def test_include_offline_lists_the_other_masters_offline_workers_from_the_shared_database(cluster: Site) -> None:
    # z1 is configured on B only (no builder); stopped, it is offline: A lists it only with --include-offline,
    # with the last master A saw holding it (as the shared database confirmed it).
    wait_until(lambda: rows(cluster.a).get("z1", {}).get("master") == "B", 30)
    cluster.b.stop_worker("z1")
    try:
        wait_until(lambda: "z1" not in rows(cluster.a), 60)
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "workers", "--include-offline", "--socket",
                               cluster.a.socket], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        line = line_of(done.stdout, "z1")
        assert "offline (last on B)" in line, done.stdout
        assert "z1" not in workers(cluster.a).stdout
    finally:
        cluster.b.start_worker("z1")


def sleepers(marker: str) -> list[int]:
    """The processes running `sleep <marker>`."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                    out.append(int(pid))
        except (OSError, ValueError):
            continue
    return out
