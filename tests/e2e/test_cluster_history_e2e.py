"""History across a multi-master site (tests/e2e/cluster_fixtures.py: the router, masters A and B keeping the audit
index in one shared PostgreSQL database): sessions recorded by B are listed by `slaveshell history` on A with their
master, replayed, exported and searched on A through the router (B reads its own disk under its policy for the
operator A vouches for, and audits the read), `slaveshell sessions` on A lists a live session on B, and B's
refusals reach A's operator word for word. A slaveshell principal that is no master (C) gets nothing B's policy does
not give `cluster:C/...`."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys

import pytest
from pyrage import x25519

from master_side.cluster.config import master_record_uri

from .cluster_fixtures import PG, REALM, Site
from .conftest import assert_no_traceback, shell_argv, wait_until

pytestmark = pytest.mark.e2e


def cli(sb_socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", *args, "--socket", sb_socket],
                          capture_output=True, text=True, timeout=120)


def held_by_b(site: Site, worker: str) -> bool:
    done = cli(site.a.socket, "workers", "--json")
    return done.returncode == 0 and any(w["name"] == worker and w.get("master") == "B"
                                        for w in json.loads(done.stdout))


def session_on_b(site: Site, worker: str, command: str) -> str:
    """A session of B's own operator on B's socket, ended; its id (from the shared index)."""
    done = subprocess.run(shell_argv() + ["--socket", site.b.socket, "-T", worker, command],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sql = (f"SELECT id FROM slaveshell_sessions WHERE worker = '{worker}' AND command = '{command}' "
           "AND state != 'running' ORDER BY started DESC LIMIT 1")

    def ended() -> str:
        found = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                               timeout=60)
        assert found.returncode == 0, found.stderr
        return found.stdout.strip()

    return str(wait_until(ended, 30))


def history_json(site: Site, *args: str) -> list[dict[str, object]]:
    done = cli(site.a.socket, "history", "--json", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_history_replay_export_and_search_on_a_of_a_session_b_recorded(cluster: Site) -> None:
    wait_until(lambda: held_by_b(cluster, "b1"), 60)
    sid = session_on_b(cluster, "b1", "echo site-history-$((6*7))")
    # History on A: B's row, with its master.
    row = next(r for r in history_json(cluster, "--worker", "b1") if r["id"] == sid)
    assert row["site_master"] == "B" and row["operator"] == getpass.getuser()
    table = cli(cluster.a.socket, "history", "--worker", "b1")
    assert table.returncode == 0, table.stderr
    assert "MASTER" in table.stdout.splitlines()[0]
    line = next(line for line in table.stdout.splitlines() if line.startswith(sid))
    assert " B " in line
    # A's own sessions say A.
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "-T", "a1", "echo on-a"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert any(r["site_master"] == "A" for r in history_json(cluster, "--worker", "a1"))
    # Export and replay on A: the transcript comes from B's disk through the router, bytes intact.
    exported = subprocess.run([sys.executable, "-m", "slaveshell.cli", "export", sid, "--socket", cluster.a.socket],
                              capture_output=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    with open(wait_until(lambda: str(next(r for r in history_json(cluster, "--worker", "b1")
                                          if r["id"] == sid)["transcript"]), 30), "rb") as f:
        assert exported.stdout == f.read()
    replayed = subprocess.run([sys.executable, "-m", "slaveshell.cli", "replay", sid, "--speed", "100",
                               "--socket", cluster.a.socket], capture_output=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    assert b"site-history-42" in replayed.stdout
    # Reveal on A reads the transcript the same way (this one has no hidden input to show).
    key = os.path.join(cluster.a.root, "auditors.key")
    with open(key, "w") as f:
        f.write(str(x25519.Identity.generate()) + "\n")
    revealed = cli(cluster.a.socket, "reveal", sid, "--identity", key)
    assert (revealed.returncode, revealed.stderr) == (1, "slaveshell: this session has no hidden input\n")
    # Search on A finds the text B's transcript holds.
    found = cli(cluster.a.socket, "search", "site-history-42", "--worker", "b1")
    assert found.returncode == 0, found.stderr
    assert sid in found.stdout and "output: " in found.stdout
    assert_no_traceback(found.stderr)
    # B audited A's read, under the identity A vouched for.
    sql = (f"SELECT operator || ' ' || detail FROM slaveshell_events WHERE session_id = '{sid}' "
           "AND kind = 'routed read'")
    events = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                            timeout=60)
    assert f"cluster:A/{getpass.getuser()} transcript read through the router by master A" in events.stdout


def test_bs_policy_refuses_a_transcript_on_a_worker_it_does_not_give_a(cluster: Site) -> None:
    wait_until(lambda: held_by_b(cluster, "z1"), 60)
    # B's policy gives A's operators the b* workers only: z1's session is listed on A (A's policy), not read.
    sid = session_on_b(cluster, "z1", "echo secret-z1")
    assert any(r["id"] == sid and r["site_master"] == "B" for r in history_json(cluster, "--worker", "z1"))
    replayed = subprocess.run([sys.executable, "-m", "slaveshell.cli", "replay", sid, "--socket", cluster.a.socket],
                              capture_output=True, text=True, timeout=120)
    assert replayed.returncode != 0
    assert (f"master B recorded no session {sid} that cluster:A/{getpass.getuser()} (vouched for by master A) "
            "may replay") in replayed.stderr
    assert "secret-z1" not in replayed.stdout
    assert_no_traceback(replayed.stderr)
    found = cli(cluster.a.socket, "search", "secret-z1", "--worker", "z1")
    assert found.returncode == 1 and sid not in found.stdout, found.stdout


def test_sessions_on_a_lists_a_live_session_on_b(cluster: Site) -> None:
    wait_until(lambda: held_by_b(cluster, "b1"), 60)
    ticking = subprocess.Popen(shell_argv() + ["--socket", cluster.b.socket, "-T", "b1",
                                               "for i in $(seq 1 600); do echo live-$i; sleep 0.1; done"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listed() -> dict[str, object] | None:
            done = cli(cluster.a.socket, "sessions", "--json")
            assert done.returncode == 0, done.stderr
            return next((s for s in json.loads(done.stdout) if s["worker"] == "b1"), None)

        live = wait_until(listed, 60)
        assert live["master"] == "B" and live["operator"] == getpass.getuser()
        table = cli(cluster.a.socket, "sessions")
        assert table.returncode == 0, table.stderr
        assert "MASTER" in table.stdout.splitlines()[0]
        assert any(line.startswith(str(live["id"])) and " B " in line for line in table.stdout.splitlines())
        assert table.stderr == ""
    finally:
        ticking.kill()
        ticking.wait(30)


PROBE = r"""
import json, sys
from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, reactor

url, realm, authid, ticket, calls = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
results = []
auth = {"ticket": {"authid": authid, "ticket": ticket}} if authid else None
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication=auth)

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    for uri, argument in calls:
        try:
            results.append((yield session.call(uri, argument)))
        except ApplicationError as e:
            results.append(e.error)
    yield session.leave()

def done(_):
    print(json.dumps(results, default=repr))
    reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(60, reactor.stop)
reactor.run()
"""


def probe(site: Site, authid: str, calls: list[tuple[str, object]]) -> list[object]:
    done = subprocess.run([sys.executable, "-c", PROBE, site.router.url, REALM, authid,
                           site.tickets.get(authid, ""), json.dumps(calls)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_hostile_or_anonymous_router_client_reads_nothing(cluster: Site) -> None:
    wait_until(lambda: held_by_b(cluster, "b1"), 60)
    sid = session_on_b(cluster, "b1", "echo hostile-target")
    me = getpass.getuser()
    transcript = master_record_uri("B", "transcript")
    calls: list[tuple[str, object]] = [
        (transcript, {"user": me, "groups": [], "session": sid, "offset": 0}),
        (transcript, {"user": me, "groups": ["ops"], "session": "../../etc/passwd", "offset": 0}),
        (transcript, {"user": "../x", "groups": [], "session": sid, "offset": 0}),
        (transcript, {"user": me, "groups": [], "session": sid, "offset": -1}),
        (master_record_uri("B", "search"), {"user": me, "groups": [], "text": "hostile-target", "filters": {}}),
        (master_record_uri("B", "sessions"), {"user": me, "groups": []}),
    ]
    # C: a slaveshell principal that is no master of B's policy: B answers for cluster:C/<user> only.
    answers = probe(cluster, "C", calls)
    assert answers[0] == {"ok": False, "kind": "not found",
                          "error": f"master B recorded no session {sid} that cluster:C/{me} (vouched for by master C) "
                                   "may replay"}
    assert answers[1]["ok"] is False and answers[1]["kind"] == "not found"  # type: ignore[index]
    assert answers[2]["ok"] is False and answers[2]["kind"] == "bad request"  # type: ignore[index]
    assert answers[3]["ok"] is False and answers[3]["kind"] == "bad request"  # type: ignore[index]
    assert answers[4] == {"ok": True, "hits": []}
    assert answers[5] == {"ok": True, "rows": []}
    # An anonymous client (as Buildbot's own sessions join): the router refuses the calls.
    assert probe(cluster, "", calls[:1]) == ["wamp.error.not_authorized"]
