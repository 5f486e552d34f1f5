"""`slaveshell kill ID` on master A for a session master B serves (tests/e2e/cluster_fixtures.py's shared site: the
router, two real Buildbot masters on a shared PostgreSQL, real workers): A routes the kill to B, which decides under
its policy for the operator A vouches for, ends the session, records it naming A, and answers; A records its own
`routed` event and shows B's line. B's refusal of an operator without the right is shown as B words it, audited
on both masters, and nothing ends. A's worker list counts B's session as soon as it is live (A asks B's listing
afresh once a session it routed opened). The web page's End session for B's four-eyes session:
test_cluster_web_moderated_e2e.py."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys

import pytest

from .cluster_fixtures import PG, Site
from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e


def cli(sb: object, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", *args, "--socket", sb.socket],  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=60)


def live(sb: object) -> list[dict[str, object]]:
    done = cli(sb, "sessions", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def events(site: Site, session_id: str) -> list[tuple[str, str, str]]:
    """The shared audit index's events of `session_id` (or naming it in their detail): kind, operator, detail."""
    sql = ("SELECT coalesce(json_agg(json_build_array(kind, operator, detail) ORDER BY id), '[]') FROM "
           f"slaveshell_events WHERE session_id = '{session_id}' OR detail LIKE '%{session_id}%'")
    done = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [tuple(e) for e in json.loads(done.stdout)]  # type: ignore[misc]


def started(site: Site, sb: object, worker: str, command: str) -> tuple[subprocess.Popen[bytes], str]:
    """`buildbot-shell -T WORKER COMMAND` on `sb`'s socket, and its session's id once B lists it live."""
    before = {s["id"] for s in live(site.b)}
    proc = subprocess.Popen(shell_argv() + ["--socket", sb.socket, "-T", worker, command],  # type: ignore[attr-defined]
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sid = wait_until(lambda: next((str(s["id"]) for s in live(site.b) if s["worker"] == worker
                                   and s["id"] not in before), None), 60)
    assert sid
    return proc, sid


def test_kill_on_a_ends_a_session_b_serves_under_bs_policy_recorded_on_both(cluster: Site) -> None:
    wait_until(lambda: any(w["name"] == "b1" and w.get("master") == "B" for w in cluster.a.workers_status()), 60)
    me = getpass.getuser()
    procs: list[tuple[object, subprocess.Popen[bytes], str]] = []
    try:
        routed, sid = started(cluster, cluster.a, "b1", "sleep 600")
        procs.append((cluster.a, routed, sid))
        # A counts it on b1 at once: its listing of B is asked afresh once the session it routed opened.
        b1 = next(w for w in cluster.a.workers_status() if w["name"] == "b1")
        assert b1["sessions"] >= 1, b1
        own, z1_sid = started(cluster, cluster.b, "z1", "sleep 600")  # B's own operator's, on z1
        procs.append((cluster.b, own, z1_sid))

        # On A, cluster:A/<me> has no right on z1 on B: B's refusal, as B words it; the session goes on.
        done = cli(cluster.a, "kill", z1_sid)
        refusal = (f"permission denied: cluster:A/{me} (vouched for by master A) may not kill sessions on worker "
                   "z1")
        assert (done.returncode, done.stdout) == (255, ""), done
        assert done.stderr == f"slaveshell: {refusal}\n"
        assert own.poll() is None and any(s["id"] == z1_sid for s in live(cluster.b))

        # The owner's kill, on A, of the session A routed to B: B's line.
        done = cli(cluster.a, "kill", sid)
        assert (done.returncode, done.stderr) == (0, ""), done
        assert done.stdout == f"session {sid} on b1: hangup sent (then TERM, then KILL)\n"
        routed.wait(60)
        assert routed.returncode != 0
        wait_until(lambda: all(s["id"] != sid for s in live(cluster.b)), 60)
        # Again: no master holds it now.
        done = cli(cluster.a, "kill", sid)
        assert (done.returncode, done.stderr) == (255, f"slaveshell: no live session {sid}\n")

        # Recorded: B's kill names A's operator and master A; A's routed event says what went where; B's refusal
        # is audited on B, A's refused routing on A.
        want = [("kill", f"cluster:A/{me}", "asked through the router by master A"),
                ("routed", me, f"kill of session {sid} routed to master B: killed there")]
        got = wait_until(lambda: (e := events(cluster, sid)) and all(w in e for w in want) and e, 30)
        assert all(w in got for w in want), got
        refused = wait_until(lambda: (e := events(cluster, z1_sid)) and len(e) >= 2 and e, 30)
        assert ("routed", me, f"kill of session {z1_sid} routed to master B: refused (permission denied)") in refused
        assert any(kind == "refused" and operator == f"cluster:A/{me}" and detail.startswith(
            f"routed kill refused: {refusal} (session {z1_sid})") for kind, operator, detail in refused), refused
        assert not [e for e in events(cluster, z1_sid) if e[0] == "kill"]
    finally:
        for sb, proc, session_id in procs:
            if proc.poll() is None:
                cli(sb, "kill", session_id)  # a killed client would leave its session detached on B
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
