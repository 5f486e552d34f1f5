"""Routed sessions and transfers over the direct stream (master_side.cluster.direct) in a real site
(tests/e2e/cluster_fixtures.py, B with `ClusterConfig(direct=True)`): a session through A goes over a PB connection
from A to B's Buildbot PB port (B's audit of the session says so) and works as through the router, and so does a
`cp` up and down (B's audit of the transfer says so, B records it as before); with B's direct address unreachable
both stay on the router; a client with wrong, replayed or expired credentials is refused on the PB port, one that
logs in but does not say READY is dropped; the direct connection cut mid-session ends it on both sides with a clear
line (exit 255 on A, the row closed on B)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from master_side.cluster.config import worker_uri
from master_side.cluster.stream import OpenCall
from slaveshell.vocabulary.protocol import OpenRequest

from .cluster_fixtures import PG, REALM, Site, site
from .conftest import Terminal, wait_until
from .test_cluster_copy_e2e import closed_row, cp, sha, transfer_rows, vouched
from .test_sharing_e2e import SlaveshellTerminal

pytestmark = pytest.mark.e2e

MALLORY = "mallory"  # C's operator, whom B's policy lets open shells on b1 (C: a principal no master uses)


@pytest.fixture(scope="module")
def direct_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(str(tmp_path_factory.mktemp("site")), b_cluster="direct=True",
              b_rules=f"Rule(users=['cluster:C/{MALLORY}'], workers=['b1']),") as s:
        wait_until(lambda: _b1_on_b(s), 60)
        yield s


def _b1_on_b(s: Site) -> bool:
    return any(w["name"] == "b1" and w.get("master") == "B" for w in s.a.workers_status())


def events(s: Site, kind: str) -> list[dict[str, object]]:
    sql = ("SELECT coalesce(json_agg(e ORDER BY id), '[]') FROM (SELECT id, session_id, worker, operator, detail "
           f"FROM slaveshell_events WHERE kind = '{kind}') e")
    done = subprocess.run(PG + ["-d", s.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def session_row(s: Site, session_id: str) -> dict[str, object]:
    sql = ("SELECT coalesce(json_agg(s), '[]') FROM (SELECT id, state, exit_code, end_reason FROM "
           f"slaveshell_sessions WHERE id = '{session_id}') s")
    done = subprocess.run(PG + ["-d", s.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    return dict(found[0]) if found else {}


def path_of(s: Site, session_id: str) -> str:
    details = [str(e["detail"]) for e in events(s, "routed path") if e["session_id"] == session_id]
    return details[-1] if details else ""


def newest_session(s: Site, before: set[str]) -> str:
    return wait_until(lambda: next((str(e["session_id"]) for e in events(s, "routed path")
                                    if e["session_id"] not in before), None), 30)


def test_a_session_through_a_goes_over_the_direct_connection(direct_site: Site) -> None:
    before = {str(e["session_id"]) for e in events(direct_site, "routed path")}
    t = Terminal(direct_site.a, ["b1"])
    try:
        t.ready()
        session = newest_session(direct_site, before)
        wait_until(lambda: "direct" in path_of(direct_site, session), 30)
        assert path_of(direct_site, session).startswith("messages from master A: direct")
        assert "direct-42" in t.run("echo direct-$((6*7))")
        big = t.run("head -c 300000 /dev/zero | base64 -w 100 | wc -l")  # several window's worth of output
        assert "4000" in big
        t.child.sendline("exit 3")
        assert t.wait(timeout=30) == 3
    finally:
        t.close()
    row = wait_until(lambda: (r := session_row(direct_site, session)) and r["state"] != "running" and r, 30)
    assert (row["state"], row["exit_code"]) == ("ended", 3)


def test_detach_and_resume_through_a_both_over_the_direct_connection(direct_site: Site) -> None:
    """~d in a session that went direct: B keeps it detached; `slaveshell attach ID` through A resumes it, over a
    direct connection of its own (B's audit has a `direct` event for the open and for the attach)."""
    before = {str(e["session_id"]) for e in events(direct_site, "routed path")}
    t = Terminal(direct_site.a, ["b1"])
    try:
        t.ready()
        session = newest_session(direct_site, before)
        wait_until(lambda: "direct" in path_of(direct_site, session), 30)
        t.run("export KEPT=direct-kept")
        t.child.send("\r~d")
        assert t.wait() == 0
    finally:
        t.close()
    assert f"slaveshell attach {session}" in bytes(t.printed).decode("utf-8", "replace")
    wait_until(lambda: session_row(direct_site, session).get("state") == "detached", 30)
    a = SlaveshellTerminal(direct_site.a, ["attach", session])
    try:
        wait_until(lambda: sum(1 for e in events(direct_site, "routed path") if e["session_id"] == session
                               and str(e["detail"]).startswith("messages from master A: direct")) == 2, 30)
        a.child.send("echo $KEPT\r")
        a.expect("direct-kept")
        a.child.send("exit 6\r")
        assert a.wait() == 6
    finally:
        a.close()
    row = wait_until(lambda: (r := session_row(direct_site, session)) and r["state"] == "ended" and r, 30)
    assert row["exit_code"] == 6


DIRECT_PROBE = r"""
import json, sys, time
from autobahn.twisted.component import Component
from autobahn.wamp.types import RegisterOptions
from twisted.cred import credentials
from twisted.internet import defer, reactor, task
from twisted.spread import pb

url, realm, authid, ticket, plan = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
results = {}
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication={"ticket": {"authid": authid, "ticket": ticket}})
out = []

class Mind(pb.Referenceable):
    def remote_m(self, wire):
        out.append(wire)

@defer.inlineCallbacks
def login(offer, password=None, mind=None):
    factory = pb.PBClientFactory()
    connector = reactor.connectTCP(offer["host"], offer["port"], factory, timeout=5)
    try:
        persp = yield factory.login(credentials.UsernamePassword(offer["username"].encode(),
                                                                 (password or offer["password"]).encode()),
                                    client=mind or Mind())
    except Exception as e:
        connector.disconnect()
        remote = getattr(e, "remoteType", None)
        return None, (remote.decode() if isinstance(remote, bytes) else remote) or type(e).__name__
    return (persp, connector), "logged in"

@defer.inlineCallbacks
def open_session(session, token):
    call = dict(plan["open_call"], token=token)
    answer = yield session.call(plan["open_uri"], call)
    return answer

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    got = []
    yield session.register(lambda wire, details=None: got.append(wire),
                           "slaveshell.session." + "1" * 32 + ".out")
    yield session.register(lambda wire, details=None: None, "slaveshell.session." + "2" * 32 + ".out")
    yield session.register(lambda wire, details=None: None, "slaveshell.session." + "3" * 32 + ".out")
    first = yield open_session(session, "1" * 32)
    results["first_ok"] = first.get("ok")
    offer = first.get("direct")
    results["offered"] = offer is not None and sorted(offer)
    if offer is None:
        return
    results["wrong_password"] = (yield login(offer, password="0" * 32))[1]
    results["unknown_user"] = (yield login(dict(offer, username="slaveshell-direct-" + "0" * 32)))[1]
    conn, results["right"] = yield login(offer)
    persp, connector = conn
    results["ready"] = yield persp.callRemote("ready")
    results["ready_again"] = yield persp.callRemote("ready")
    results["replayed"] = (yield login(offer))[1]
    yield persp.callRemote("m", [0, "input", b"direct-probe\n"])
    yield persp.callRemote("m", [1, "eof"])
    for _ in range(100):
        if any(w[1] == "exit" for w in out):
            break
        yield task.deferLater(reactor, 0.1, lambda: None)
    results["output"] = b"".join(w[3] for w in out if w[1] == "output").decode()
    results["exit"] = [w[2:] for w in out if w[1] == "exit"]
    results["router_messages_after_answer"] = len(got)
    yield task.deferLater(reactor, 0.5, lambda: None)
    try:
        yield persp.callRemote("m", [2, "input", b"late\n"])
        results["after_end"] = "taken"
    except Exception as e:
        results["after_end"] = type(e).__name__
    connector.disconnect()
    # An offer not used within its time is withdrawn.
    second = yield open_session(session, "2" * 32)
    yield task.deferLater(reactor, plan["expire_after"], lambda: None)
    results["expired"] = (yield login(second["direct"]))[1]
    # A login that never says ready is dropped.
    third = yield open_session(session, "3" * 32)
    conn, _ = yield login(third["direct"])
    dropped = []
    conn[0].notifyOnDisconnect(lambda ref: dropped.append(time.monotonic()))
    start = time.monotonic()
    yield task.deferLater(reactor, plan["ready_within"] + 3, lambda: None)
    results["not_ready_dropped"] = bool(dropped) and round(dropped[0] - start)
    yield session.leave()

def done(_):
    print(json.dumps(results, default=str))
    reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(90, reactor.stop)
reactor.run()
"""


def test_direct_logins_are_single_use_expire_and_refuse_the_wrong_password(direct_site: Site) -> None:
    """C (a slaveshell principal on the router whose operator mallory B's policy lets open shells on b1) opens
    sessions on B as a master would, and tries its direct logins the ways an attacker would."""
    from master_side.cluster.offers import OFFER_TTL, READY_WITHIN

    call = OpenCall(OpenRequest(worker="b1", command="cat", pty=False), MALLORY, (), "0" * 32).to_wire()
    plan = {"open_uri": worker_uri("b1", "open"), "open_call": call, "expire_after": OFFER_TTL + 2.5,
            "ready_within": READY_WITHIN}
    done = subprocess.run([sys.executable, "-c", DIRECT_PROBE, direct_site.router.url, REALM, "C",
                           direct_site.tickets["C"], json.dumps(plan)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(results)
    assert results["first_ok"] is True
    assert results["offered"] == ["host", "password", "port", "username"]
    assert results["wrong_password"].endswith("UnauthorizedLogin")
    assert results["unknown_user"].endswith("UnauthorizedLogin")
    assert results["right"] == "logged in"
    assert (results["ready"], results["ready_again"]) == (True, False)
    assert results["replayed"].endswith("UnauthorizedLogin")  # single use: unknown on the port once taken
    assert results["output"] == "direct-probe\n"  # the session's messages both ways over the connection
    assert results["exit"] == [[0, None, ""]]
    assert results["router_messages_after_answer"] == 0  # none came through the router
    assert results["after_end"] != "taken"
    assert results["expired"].endswith("UnauthorizedLogin")
    assert results["not_ready_dropped"] is not False and results["not_ready_dropped"] <= READY_WITHIN + 2
    # B's audit says which path each of C's sessions took.
    details = [str(e["detail"]) for e in events(direct_site, "routed path") if e["operator"] == f"cluster:C/{MALLORY}"]
    assert any(d.startswith("messages from master C: direct") for d in details)
    assert any("did not use the direct login" in d for d in details)


def a_connection_to(pb_port: int, pid: int) -> str | None:
    """The local port of process `pid`'s TCP connection to 127.0.0.1:`pb_port`, from `ss`."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{pb_port}"], capture_output=True,
                          text=True, timeout=30)
    for line in done.stdout.splitlines():
        if f"pid={pid}," in line:
            return line.split()[2].rsplit(":", 1)[1]
    return None


def test_the_direct_connection_cut_mid_session_ends_it_on_both_sides(direct_site: Site) -> None:
    before = {str(e["session_id"]) for e in events(direct_site, "routed path")}
    t = Terminal(direct_site.a, ["b1"])
    try:
        t.ready()
        session = newest_session(direct_site, before)
        wait_until(lambda: "direct" in path_of(direct_site, session), 30)
        assert "cut-42" in t.run("echo cut-$((6*7))")
        port = wait_until(lambda: a_connection_to(direct_site.b.port, direct_site.a.master_pid()), 30)
        killed = subprocess.run(["ss", "-K", "sport", "=", f":{port}", "dport", "=", f":{direct_site.b.port}"],
                                capture_output=True, text=True, timeout=30)
        if killed.returncode != 0:
            pytest.skip(f"ss -K cannot cut a connection here: {killed.stderr.strip()[:200]}")
        assert t.wait(timeout=60) == 255
        text = bytes(t.printed).decode("utf-8", "replace")
        assert "direct connection" in text and "was lost" in text
    finally:
        t.close()
    row = wait_until(lambda: (r := session_row(direct_site, session)) and r["state"] != "running" and r, 60)
    assert "direct connection" in str(row["end_reason"])


def copy_both_ways(s: Site, tmp_path: object, name: str) -> tuple[str, str]:
    """`cp` of a file of many chunks up to b1 through A and back: the two transfers' ids (B's), both checked."""
    data = os.urandom(5 * 1024 * 1024 + 777)
    src = os.path.join(str(tmp_path), name)
    with open(src, "wb") as f:
        f.write(data)
    dest = os.path.join(s.b.worker_dir("b1"), name)
    up = cp(s.a, src, f"b1:{dest}")
    assert (up.returncode, up.stdout, up.stderr) == (0, "", "")
    assert sha(dest) == hashlib.sha256(data).hexdigest()
    down = cp(s.a, f"b1:{dest}", src + ".back")
    assert (down.returncode, down.stdout, down.stderr) == (0, "", "")
    assert sha(src + ".back") == hashlib.sha256(data).hexdigest()
    closed_row(s, "b1", f"{name} -> {src}.back")
    rows = [r for r in transfer_rows(s, "b1") if name in str(r["command"])]
    assert len(rows) == 2 and all(r["state"] == "ended" and r["operator"] == vouched() for r in rows), rows
    return str(rows[0]["id"]), str(rows[1]["id"])


def test_a_cp_through_a_goes_over_the_direct_connection_both_ways(direct_site: Site, tmp_path) -> None:
    up, down = copy_both_ways(direct_site, tmp_path, "direct-blob.bin")
    for transfer in (up, down):
        assert path_of(direct_site, transfer).startswith("messages from master A: direct"), transfer
    a_log = open(os.path.join(direct_site.a.master_dir, "twistd.log"), errors="replace").read()
    assert "a transfer routed to master B goes over a direct connection" in a_log
    assert "direct-blob.bin" not in a_log  # no path in the log


@pytest.fixture(scope="module")
def unreachable_site(tmp_path_factory: pytest.TempPathFactory, direct_site: Site) -> Iterator[Site]:
    direct_site.stop()  # one site at a time on this machine
    with site(str(tmp_path_factory.mktemp("site")), b_cluster="direct=True, direct_address='127.0.0.1:9'") as s:
        wait_until(lambda: _b1_on_b(s), 60)
        yield s


def test_with_bs_direct_address_unreachable_the_session_stays_on_the_router(unreachable_site: Site) -> None:
    before = {str(e["session_id"]) for e in events(unreachable_site, "routed path")}
    t = Terminal(unreachable_site.a, ["b1"])
    try:
        t.ready()
        session = newest_session(unreachable_site, before)
        assert "fallback-42" in t.run("echo fallback-$((6*7))")
        time.sleep(1)
        # B withdraws the login A never used: the session's messages stayed on the router.
        wait_until(lambda: "did not use the direct login" in path_of(unreachable_site, session), 30)
        assert "still-42" in t.run("echo still-$((6*7))")
        t.child.sendline("exit 4")
        assert t.wait(timeout=30) == 4
    finally:
        t.close()
    assert re.search(r"^messages from master A: router", path_of(unreachable_site, session))


def test_with_bs_direct_address_unreachable_a_cp_stays_on_the_router(unreachable_site: Site, tmp_path) -> None:
    up, down = copy_both_ways(unreachable_site, tmp_path, "fallback-blob.bin")
    for transfer in (up, down):
        assert not path_of(unreachable_site, transfer).startswith("messages from master A: direct"), transfer
    a_log = open(os.path.join(unreachable_site.a.master_dir, "twistd.log"), errors="replace").read()
    assert "a transfer routed to master B stays on the router: no direct connection" in a_log
