"""`slaveshell cp` on master A's socket to and from a worker master B holds (a multi-master site,
tests/e2e/cluster_fixtures.py): B relays and records the transfer under its policy for the operator A vouches for;
files and trees arrive byte for byte; B's refusal is shown on A; B's four-eyes worker m1 waits for B's moderators.
On the site these modules share (tests/e2e/conftest.py: cluster); B killed mid-copy is in
test_cluster_loss_e2e.py."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from master_side.cluster.config import worker_uri
from master_side.cluster.stream import OpenCall
from slaveshell.client.cluster_sandbox import REALM
from slaveshell.client.sandbox import Sandbox
from slaveshell.fleet.script import SCRIPT_RUNNER
from slaveshell.vocabulary.protocol import OpenRequest

from .cluster_fixtures import DOC, MALLORY, MODERATED, PG, Site, hostile_probe
from .conftest import Terminal, assert_no_traceback, run_as, shell_argv, wait_until
from .test_moderated_e2e import LEAD
from .test_sharing_e2e import SlaveshellTerminal

pytestmark = pytest.mark.e2e


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="B's moderator is another local user: needs root")


def cp_argv(sb: Sandbox, *args: str) -> list[str]:
    return [sys.executable, "-m", "slaveshell.cli", "cp", "--socket", sb.socket, *args]


def cp(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cp_argv(sb, *args), capture_output=True, text=True, timeout=180)


def on_b(site: Site) -> None:
    """Wait until A sees b1 and z1 on B."""

    def seen() -> bool:
        held = {str(w["name"]): w.get("master") for w in site.a.workers_status()}
        return held.get("b1") == "B" and held.get("z1") == "B"

    assert wait_until(seen, 30)


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_digest(top: str) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), top)] = "dir"
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), top)] = sha(os.path.join(dirpath, f))
    return out


def transfer_rows(site: Site, worker: str) -> list[dict[str, object]]:
    """The transfers on `worker` in the site's shared audit index, oldest first."""
    sql = ("SELECT coalesce(json_agg(s ORDER BY started), '[]') FROM (SELECT id, operator, master, state, "
           "end_reason, command, bytes_in, bytes_out, transcript, started FROM slaveshell_sessions "
           f"WHERE worker = '{worker}' AND term = 'transfer') s")
    done = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def closed_row(site: Site, worker: str, needle: str) -> dict[str, object]:
    def closed() -> dict[str, object] | None:
        found = [r for r in transfer_rows(site, worker) if needle in str(r["command"])]
        return found[-1] if found and found[-1]["state"] != "running" else None

    row = wait_until(closed, 30)
    assert row, f"no closed transfer row for {needle}"
    return row


def vouched() -> str:
    return f"cluster:A/{getpass.getuser()}"


def test_cp_up_and_down_a_file_through_a_to_a_worker_of_b(cluster: Site, tmp_path) -> None:
    on_b(cluster)
    data = os.urandom(6 * 1024 * 1024 + 4321)  # many chunks and a partial one
    (tmp_path / "blob.bin").write_bytes(data)
    dest = os.path.join(cluster.b.worker_dir("b1"), "routed-blob.bin")
    up = cp(cluster.a, str(tmp_path / "blob.bin"), f"b1:{dest}")
    assert up.returncode == 0, up.stderr
    assert up.stdout == "" and up.stderr == ""
    assert sha(dest) == hashlib.sha256(data).hexdigest()
    down = cp(cluster.a, f"b1:{dest}", str(tmp_path / "back.bin"))
    assert down.returncode == 0, down.stderr
    assert sha(str(tmp_path / "back.bin")) == hashlib.sha256(data).hexdigest()
    # B recorded both: the rows name B (the master column) and A (the operator it vouched for).
    for needle in ("blob.bin -> ", "routed-blob.bin -> "):
        row = closed_row(cluster, "b1", needle)
        assert row["state"] == "ended", row
        assert row["operator"] == vouched()
        assert str(row["master"]).endswith(os.path.join("B", "master"))
        assert str(row["transcript"]).startswith(cluster.b.master_dir + os.sep)
        with open(str(row["transcript"]), encoding="utf-8") as f:
            assert hashlib.sha256(data).hexdigest() in f.read()


def test_ctrl_c_of_a_routed_upload_is_recorded_on_b_as_as_end_not_as_the_operators_stop(cluster: Site,
                                                                                          tmp_path) -> None:
    """The operator's client on A stops mid-upload (Ctrl-C closes its connection): A tells B `cancel` with the kind
    of end; B's row says master A ended it and why, in B's words (not "stopped by the operator"), and nothing is
    left on b1."""
    on_b(cluster)
    with open(tmp_path / "huge-routed", "wb") as f:
        f.truncate(4 * 1024**3)
    where = os.path.join(cluster.b.worker_dir("b1"), "ctrlc-routed")
    os.makedirs(where, exist_ok=True)

    def staged() -> bool:
        return any(n.startswith(".slaveshell-cp-") and any(files for _, _, files in os.walk(os.path.join(where, n)))
                   for n in os.listdir(where))

    proc = subprocess.Popen(cp_argv(cluster.a, str(tmp_path / "huge-routed"), f"b1:{where}/huge-routed"),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(staged, 60, 0.05), "the transfer never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "slaveshell cp: interrupted\n", err
    row = closed_row(cluster, "b1", "huge-routed")
    assert row["state"] == "failed"
    assert row["end_reason"] == "failed: ended by master A: its operator's connection was lost", row
    assert wait_until(lambda: os.listdir(where) == [], 20), os.listdir(where)


def test_cp_r_of_a_tree_both_ways(cluster: Site, tmp_path) -> None:
    on_b(cluster)
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "sub" / "a.bin").write_bytes(os.urandom(700_000))
    (tree / "b.txt").write_text("hello\n")
    (tree / "sub" / "deeper" / "zero").write_bytes(b"")
    top = os.path.join(cluster.b.worker_dir("b1"), "trees")
    os.makedirs(top, exist_ok=True)
    up = cp(cluster.a, "-r", str(tree), f"b1:{top}")
    assert up.returncode == 0, up.stderr
    assert tree_digest(os.path.join(top, "tree")) == tree_digest(str(tree))
    down = cp(cluster.a, "-r", f"b1:{os.path.join(top, 'tree')}", str(tmp_path / "tree2"))
    assert down.returncode == 0, down.stderr
    assert tree_digest(str(tmp_path / "tree2")) == tree_digest(str(tree))


def test_bs_policy_refusal_of_cp_is_shown_on_a(cluster: Site, tmp_path) -> None:
    on_b(cluster)
    (tmp_path / "f").write_text("x\n")
    done = cp(cluster.a, str(tmp_path / "f"), f"z1:{cluster.b.worker_dir('z1')}/f")
    assert done.returncode != 0
    # B's own refusal, as docs/multi-master.md shows it.
    with open(DOC) as f:
        documented = next(line.strip() for line in f if line.strip().startswith("slaveshell cp: permission denied")
                          and "may not copy" in line)
    assert done.stderr == documented.replace("cluster:A/alice", vouched()) + "\n", done.stderr
    assert not os.path.exists(os.path.join(cluster.b.worker_dir("z1"), "f"))


def test_a_run_on_a_over_a1_and_b1_is_gathered_in_one_answer(cluster: Site) -> None:
    """`slaveshell run` on A over a1 (on A) and b1 (on B): b1's part is a session routed to B, recorded there;
    z1's is refused by B's policy, and the refusal is in the run's answer."""
    on_b(cluster)
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "run", "--socket", cluster.a.socket,
                           "--workers", "a1", "--workers", "b1", "--workers", "z1", "--json", "--",
                           "sh", "-c", "echo on $PWD"], capture_output=True, text=True, timeout=180)
    assert_no_traceback(done.stderr)
    answer = json.loads(done.stdout)
    by_name = {w["worker"]: w for w in answer["workers"]}
    assert set(by_name) == {"a1", "b1", "z1"}, answer
    assert by_name["a1"]["state"] == "ok" and by_name["a1"]["output"].strip() == f"on {cluster.a.worker_dir('a1')}"
    assert by_name["b1"]["state"] == "ok" and by_name["b1"]["output"].strip() == f"on {cluster.b.worker_dir('b1')}"
    assert by_name["z1"]["state"] == "refused", by_name["z1"]
    assert by_name["z1"]["reason"] == (f"permission denied: {vouched()} (vouched for by master A) may not run on "
                                       "worker z1: no policy rule allows it"), by_name["z1"]
    assert done.returncode == 1  # not every targeted worker ran (z1)
    # b1's part is a session on B: its row names B and the operator A vouched for.
    sql = ("SELECT json_agg(s) FROM (SELECT operator, master, state, exit_code, run_id FROM slaveshell_sessions "
           f"WHERE id = '{by_name['b1']['session']}') s")

    def closed() -> dict[str, object] | None:
        done = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
        return found[0] if found and found[0]["state"] != "running" else None

    row = wait_until(closed, 30)
    assert row, "B did not record b1's part"
    assert row["operator"] == vouched() and str(row["master"]).endswith(os.path.join("B", "master"))
    assert (row["state"], row["exit_code"]) == ("ended", 0)
    # Its run id is A's run's, recorded by A in the same index.
    run = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c",
                               f"SELECT targets FROM slaveshell_runs WHERE id = '{row['run_id']}'"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "a1 b1 z1", (row, run.stdout, run.stderr)


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def as_lead(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """`slaveshell ARGS` on B's socket as LEAD, B's moderator (another local user of B)."""
    done = run_as(LEAD, [args[0], "--socket", site.b.socket, *args[1:]])
    assert_no_traceback(done.stderr)
    return done


def pending_on_b(site: Site) -> list[dict[str, object]]:
    """The requests on m1 that B lists to its moderator (B's root, the operator's name, is not one: it sees none)."""
    done = as_lead(site, "approvals", "--json")
    assert done.returncode == 0, done.stderr
    return [r for r in json.loads(done.stdout) if r["worker"] == MODERATED]


def events(site: Site, kinds: tuple[str, ...], since: int = 0) -> list[dict[str, object]]:
    """The site's audit events of `kinds` (the shared index), after event id `since`, oldest first."""
    listed = ", ".join(f"'{k}'" for k in kinds)
    sql = ("SELECT coalesce(json_agg(e ORDER BY id), '[]') FROM (SELECT id, kind, session_id, worker, operator, "
           f"detail FROM slaveshell_events WHERE kind IN ({listed}) AND id > {since}) e")
    done = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def last_event_id(site: Site) -> int:
    done = subprocess.run(PG + ["-d", site.database, "-t", "-A", "-c", "SELECT coalesce(max(id), 0) FROM "
                                "slaveshell_events"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def on_m1(site: Site) -> None:
    assert wait_until(lambda: {str(w["name"]): w.get("master") for w in site.a.workers_status()}.get(MODERATED)
                      == "B", 30)


@needs_root
def test_a_routed_command_on_a_four_eyes_worker_of_b_waits_for_bs_moderator(cluster: Site) -> None:
    """`buildbot-shell m1 -- CMD` on A: B asks its own moderators (`slaveshell approvals` on B names the operator
    as B names it); A's operator sees B's waiting line; nothing runs until a moderator on B approves. B's user of
    the operator's name (root on A asked, root on B tries) is refused as the same person, with the line, and the
    refusal is in B's audit; LEAD, another person, approves; then the command runs and its output reaches A. B's
    audit events say who asked and who approved; A's say who routed it where, and the outcome."""
    on_m1(cluster)
    since = last_event_id(cluster)
    me = getpass.getuser()
    marker = os.path.join(cluster.b.worker_dir(MODERATED), "ran")
    # One argument: the command line the worker's shell runs (as ssh's).
    child = subprocess.Popen(shell_argv() + ["--socket", cluster.a.socket, MODERATED, "--",
                                             f"touch {marker} && echo approved-and-ran"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = wait_until(lambda: pending_on_b(cluster), 60)
        assert pending, "B lists no request"
        (request,) = pending
        assert request["operator"] == vouched() and request["kind"] == "command"
        assert marker in str(request["what"])
        time.sleep(1)
        assert not os.path.exists(marker) and child.poll() is None
        # The same person on B (the same user name): refused, whatever B's groups and rights give them.
        for verb in (["approve", str(request["id"])], ["deny", str(request["id"]), "--reason", "mine"]):
            own = cli(cluster.b, *verb)
            assert own.returncode != 0
            assert (f"not a moderator: {verb[0]} {request['id']}: the request's own operator cannot approve or deny "
                    f"it: {me} and {vouched()} share the user name '{me}', taken as one person (four eyes need "
                    "another person, whatever door or master each came through)") in own.stderr, own.stderr
        assert child.poll() is None and not os.path.exists(marker)
        assert [r for r in json.loads(cli(cluster.b, "approvals", "--json").stdout) if r["worker"] == MODERATED] == []
        assert request["may_approve"] is True
        approved = as_lead(cluster, "approve", str(request["id"]))
        assert approved.returncode == 0, approved.stderr
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == "approved-and-ran"
    assert (f"worker {MODERATED} is moderated: request {request['id']} waits for a moderator's approval" in err), err
    assert os.path.exists(marker)
    def all_three() -> list[dict[str, object]] | None:
        found = events(cluster, ("approval-asked", "approved", "approval"), since)
        return found if {e["kind"] for e in found} >= {"approval-asked", "approved", "approval"} else None

    b_events = wait_until(all_three, 30)
    assert b_events, events(cluster, ("approval-asked", "approved", "approval"), since)
    by_kind = {e["kind"]: e for e in b_events}
    assert by_kind["approval-asked"]["operator"] == vouched()
    assert by_kind["approved"]["operator"] == LEAD  # B's moderator, another local user of B
    refused = [e for e in events(cluster, ("refused",), since) if str(request["id"]) in str(e["detail"])]
    assert refused and refused[0]["operator"] == me and refused[0]["worker"] == MODERATED, refused
    assert "share the user name" in str(refused[0]["detail"])
    routed = wait_until(lambda: events(cluster, ("routed",), since), 30)
    assert routed and routed[0]["operator"] == me and routed[0]["worker"] == MODERATED, routed
    assert routed[0]["detail"] == (f"open of a command routed to master B: session {routed[0]['session_id']} "
                                   "opened there")


@needs_root
def test_a_routed_cp_on_a_four_eyes_worker_of_b_denied_by_bs_moderator(cluster: Site, tmp_path) -> None:
    on_m1(cluster)
    since = last_event_id(cluster)
    (tmp_path / "f").write_text("x\n")
    dest = os.path.join(cluster.b.worker_dir(MODERATED), "denied-f")
    child = subprocess.Popen(cp_argv(cluster.a, str(tmp_path / "f"), f"{MODERATED}:{dest}"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = wait_until(lambda: pending_on_b(cluster), 60)
        assert pending, "B lists no request"
        (request,) = pending
        assert request["operator"] == vouched() and request["kind"] == "copy"
        denied = as_lead(cluster, "deny", str(request["id"]), "--reason", "not today")
        assert denied.returncode == 0, denied.stderr
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert_no_traceback(err)
    assert f"request {request['id']} waits for a moderator's approval" in err, err
    assert f"request {request['id']} denied by moderator {LEAD}: not today" in err, err
    assert not os.path.exists(dest)
    routed = wait_until(lambda: events(cluster, ("routed",), since), 30)
    assert routed and routed[0]["detail"] == "cp up routed to master B: refused (permission denied)", routed
    assert dest not in json.dumps(routed)  # no paths in A's event


@needs_root
def test_ctrl_c_on_a_withdraws_the_request_on_b(cluster: Site) -> None:
    on_m1(cluster)
    since = last_event_id(cluster)
    child = subprocess.Popen(shell_argv() + ["--socket", cluster.a.socket, MODERATED, "--", "true"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: pending_on_b(cluster), 60), "B lists no request"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert_no_traceback(err)
    # B hears that A's operator left at its next message to A (every few seconds while it waits).
    assert wait_until(lambda: not pending_on_b(cluster), 30), pending_on_b(cluster)
    withdrawn = wait_until(lambda: events(cluster, ("approval-withdrawn",), since), 30)
    assert withdrawn and withdrawn[0]["operator"] == vouched(), withdrawn


def test_detach_of_a_routed_session_and_its_resume_through_a(cluster: Site) -> None:
    """~d in a session on b1 (B's) through A: B keeps it, detached, in its own list; `slaveshell attach ID` on A
    resumes it with what the shell kept; A's audit events name the operator, the open and the resume."""
    on_b(cluster)
    since = last_event_id(cluster)
    t = Terminal(cluster.a, ["b1"])
    try:
        t.ready()
        t.run("export KEPT=routed-kept")
        t.child.send("\r~d")
        assert t.wait() == 0
    finally:
        t.close()
    shown = bytes(t.printed).decode("utf-8", "replace")
    sid = re.search(r"slaveshell attach ([0-9a-f]+)", shown)
    assert sid, shown
    b_sessions = json.loads(cli(cluster.b, "sessions", "--json").stdout)
    assert next(s for s in b_sessions if s["id"] == sid.group(1))["state"] == "detached", b_sessions
    a = SlaveshellTerminal(cluster.a, ["attach", sid.group(1)])
    try:
        a.child.send("echo $KEPT\r")
        a.expect("routed-kept")
        a.child.send("exit 6\r")
        assert a.wait() == 6
    finally:
        a.close()
    def two() -> list[dict[str, object]] | None:
        found = events(cluster, ("routed",), since)
        return found if len(found) >= 2 else None

    details = [str(event["detail"]) for event in wait_until(two, 30) or []]
    assert details == [f"open of a login shell routed to master B: session {sid.group(1)} opened there",
                       f"attach of session {sid.group(1)} routed to master B: attached"], details


def test_a_held_build_on_another_master_is_refused_with_where_it_is(cluster: Site) -> None:
    """`buildbot-shell --build N b1` on A: B answers; no build N is held there, which B says, naming itself."""
    on_b(cluster)
    done = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, "--build", "987654", "b1", "true"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 255 or done.returncode != 0
    assert_no_traceback(done.stderr)
    b_name = f"{socket.gethostname()}:{cluster.b.master_dir}"
    assert ("build 987654 is not held for a shell on master B ("
            f"{b_name}); a session in a held build (--build) is not routed between masters: open it on the master "
            "that runs the build") in done.stderr, done.stderr


@needs_root
def test_a_hostile_master_neither_approves_nor_forges_and_one_operator_floods_no_further_than_bs_bound(
        cluster: Site) -> None:
    """While A's operator waits for B's moderators: C (a slaveshell principal no master uses, with its own valid
    ticket) asks for the same worker as the same user name (B refuses cluster:C/..., asking no moderator), calls
    the waiting open's procedures it finds through the router's meta API (B's `in`, A's `out`: a forged waiting
    line and exit), and nothing is approved, shown or ended. Then the operator asks more than B's bound per operator
    (4): the fifth is refused on A with B's line; Ctrl-C withdraws the others."""
    on_m1(cluster)
    waiting = [subprocess.Popen(shell_argv() + ["--socket", cluster.a.socket, MODERATED, "--", f"echo flood-{n}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(4)]
    try:
        assert wait_until(lambda: len(pending_on_b(cluster)) == 4, 60), pending_on_b(cluster)
        call = OpenCall(OpenRequest(worker=MODERATED, command="echo pwned"), getpass.getuser(), (),
                        "0" * 32).to_wire()
        probe = hostile_probe(cluster, {
            "open_uri": worker_uri(MODERATED, "open"), "open_call": call, "register": [],
            "in": [[0, "input", "x"], [1, "close"]],
            "out": [[0, "waiting", "FORGED-WAITING"], [1, "exit", 0, None, "FORGED-EXIT"]]})
        opened = probe["open"]
        assert isinstance(opened, dict) and opened["ok"] is False and opened["kind"] == "permission denied", probe
        assert "cluster:C/" in str(opened["error"])
        sessions = probe["sessions"]
        assert isinstance(sessions, dict) and len(sessions.get("out", [])) == 8, probe  # 4 waiting opens, 2 each
        pending = pending_on_b(cluster)
        assert len(pending) == 4 and {r["operator"] for r in pending} == {vouched()}, pending
        assert all(p.poll() is None for p in waiting)
        fifth = subprocess.run(shell_argv() + ["--socket", cluster.a.socket, MODERATED, "--", "echo flood-5"],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert fifth.returncode != 0
        assert_no_traceback(fifth.stderr)
        assert (f"approvals refused: {vouched()} already waits for 4 approvals (the master's limit per operator)"
                in fifth.stderr), fifth.stderr
    finally:
        for child in waiting:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        outs = [child.communicate(timeout=30) for child in waiting]
    for _, err in outs:
        assert "FORGED" not in err, err
        assert_no_traceback(err)
    assert wait_until(lambda: not pending_on_b(cluster), 30), pending_on_b(cluster)


@needs_root
def test_the_operators_name_on_b_watches_a_routed_four_eyes_session_without_moderating_it(cluster: Site) -> None:
    """A's root opens a login shell on m1 through A: a four-eyes session on B, its input held. B's root (in the
    moderators' groups, with every right) watches it: watching is allowed, moderating is not (the same person), said
    in their terminal and audited on B; the input stays held."""
    import pexpect

    on_m1(cluster)
    since = last_event_id(cluster)
    t = Terminal(cluster.a, [MODERATED])
    try:
        t.expect("input is held until a moderator watches")
        def live() -> str | None:
            rows = json.loads(cli(cluster.b, "sessions", "--json").stdout)
            return next((str(r["id"]) for r in rows if r["worker"] == MODERATED and r["operator"] == vouched()), None)

        sid = wait_until(live, 30)
        assert sid, json.loads(cli(cluster.b, "sessions", "--json").stdout)
        own = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "watch", "--socket", cluster.b.socket, sid],
                            env=dict(os.environ, TERM="xterm"), timeout=20)
        try:
            me = getpass.getuser()
            own.expect(re.escape(f"you watch without moderating: the session's own operator cannot moderate it: {me} "
                                 f"and {vouched()} share the user name '{me}', taken as one person"))
            row = next(r for r in json.loads(cli(cluster.b, "sessions", "--json").stdout) if r["id"] == sid)
            assert row["held"] is True, row
        finally:
            own.terminate(force=True)
    finally:
        t.close()
    refused = wait_until(lambda: [e for e in events(cluster, ("refused",), since)
                                  if str(e["detail"]).startswith(f"not a moderator: {sid}: ")], 30)
    assert refused and refused[0]["operator"] == getpass.getuser(), events(cluster, ("refused",), since)
    assert "share the user name" in str(refused[0]["detail"])


def run_argv(site: Site, *args: str) -> list[str]:
    return [sys.executable, "-m", "slaveshell.cli", "run", "--socket", site.a.socket, "--workers", MODERATED, *args]


@needs_root
def test_a_fleet_runs_part_on_a_four_eyes_worker_of_b_waits_for_bs_moderator(cluster: Site) -> None:
    """`slaveshell run --workers m1 -- CMD` on A: B's moderators see the part as a run of master A with its command;
    nothing runs until LEAD approves on B (B's root, the operator's name, may not); then it runs and A's run ends
    with its output."""
    on_m1(cluster)
    since = last_event_id(cluster)
    marker = os.path.join(cluster.b.worker_dir(MODERATED), "ran-by-run")
    child = subprocess.Popen(run_argv(cluster, "--", "touch", marker), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = wait_until(lambda: pending_on_b(cluster), 60)
        assert pending, "B lists no request"
        (request,) = pending
        assert request["operator"] == vouched() and request["kind"] == "run"
        assert re.fullmatch(rf"fleet run [0-9a-f]+ of master A, command: touch {re.escape(marker)}",
                            str(request["what"])), request
        time.sleep(1)
        assert not os.path.exists(marker) and child.poll() is None
        own = cli(cluster.b, "approve", str(request["id"]))
        assert own.returncode != 0 and "taken as one person" in own.stderr, own.stderr
        assert as_lead(cluster, "approve", str(request["id"])).returncode == 0
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out + err
    assert_no_traceback(err)
    assert os.path.exists(marker)
    found = wait_until(lambda: (lambda e: e if {x["kind"] for x in e} >= {"approved", "approval"} else None)(
        events(cluster, ("approval-asked", "approved", "approval"), since)), 30)
    assert found and {e["operator"] for e in found if e["kind"] == "approved"} == {LEAD}, found


@needs_root
def test_a_fleet_runs_script_on_a_four_eyes_worker_of_b_is_approved_as_sent(cluster: Site, tmp_path) -> None:
    """`slaveshell run --script FILE --workers m1` on A: A sends the script with the open; B's moderator sees its
    size, sha256 and text; once approved, B takes as the part's input only that script, which runs."""
    on_m1(cluster)
    marker = os.path.join(cluster.b.worker_dir(MODERATED), "ran-by-script")
    script = tmp_path / "script.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho script-ran\n")
    child = subprocess.Popen(run_argv(cluster, "--script", str(script)), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = wait_until(lambda: pending_on_b(cluster), 60)
        assert pending, "B lists no request"
        (request,) = pending
        data = script.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert request["kind"] == "run" and str(request["what"]).endswith(
            f" of master A, script of {len(data)} bytes (sha256 {digest}): {data.decode()}"), request
        assert not os.path.exists(marker)
        assert as_lead(cluster, "approve", str(request["id"])).returncode == 0
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out + err
    assert_no_traceback(err)
    assert "script-ran" in out, out
    assert os.path.exists(marker)


# A master that opens a fleet run's part with one script (what B's moderator approves) and, once approved, sends
# other input: its `out` procedure registered first, its open answered after the approval.
SWAPPING_MASTER = r"""
import json, sys
from autobahn.twisted.component import Component
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, reactor, task

url, realm, authid, ticket, plan = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
results = {"open": None, "in": [], "out": []}
client = Component(transports=[{"url": url, "max_retries": 0, "serializers": ["msgpack"]}], realm=realm,
                   authentication={"ticket": {"authid": authid, "ticket": ticket}})

def out(message):
    results["out"].append([m.decode("utf-8", "replace") if isinstance(m, bytes) else m for m in message])

@client.on_join
@defer.inlineCallbacks
def joined(session, details):
    yield session.register(out, "slaveshell.session.%s.out" % plan["token"])
    call = plan["call"]
    call["script"] = call["script"].encode()
    results["open"] = answer = yield session.call(plan["open_uri"], call)
    if isinstance(answer, dict) and answer.get("ok"):
        in_uri = "slaveshell.session.%s.in" % answer["token"]
        for seq, data in enumerate(plan["send"]):
            message = [seq, "eof"] if data is None else [seq, "input", data.encode()]
            try:
                yield session.call(in_uri, message)
                results["in"].append("called")
            except ApplicationError as e:
                results["in"].append(e.error)
        for _ in range(100):  # until B's exit comes
            if any(m[1] == "exit" for m in results["out"]):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
    yield session.leave()

def done(_):
    print(json.dumps(results, default=str))
    reactor.stop()

client.start(reactor).addBoth(done)
reactor.callLater(90, reactor.stop)
reactor.run()
"""


@needs_root
def test_a_master_that_sends_another_script_than_the_approved_one_runs_nothing(cluster: Site) -> None:
    """C (a master B's policy lets run on m1 for MALLORY, under four eyes) opens a run's part with a harmless script;
    LEAD approves what B shows; C then sends another script as the part's input. B ends the session before its
    end of input, nothing of C's runs, and B's audit has the refusal and the session's end reason."""
    on_m1(cluster)
    since = last_event_id(cluster)
    harmless = os.path.join(cluster.b.worker_dir(MODERATED), "harmless-ran")
    evil = os.path.join(cluster.b.worker_dir(MODERATED), "evil-ran")
    approved = f"#!/bin/sh\ntouch {harmless}\n"
    token = "c" * 32
    call = OpenCall(OpenRequest(worker=MODERATED, command=SCRIPT_RUNNER, pty=False), MALLORY, (), token, "runc",
                    approved.encode()).to_wire()
    plan = {"token": token, "open_uri": worker_uri(MODERATED, "open"),
            "call": {**call, "script": approved}, "send": [f"#!/bin/sh\ntouch {evil}\n", None]}
    child = subprocess.Popen([sys.executable, "-c", SWAPPING_MASTER, cluster.router.url, REALM, "C",
                              cluster.tickets["C"], json.dumps(plan)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        pending = wait_until(lambda: pending_on_b(cluster), 60)
        assert pending, ("B lists no request", child.poll())
        (request,) = pending
        assert request["operator"] == f"cluster:C/{MALLORY}" and request["kind"] == "run"
        assert str(request["what"]).endswith(f"of master C, script of {len(approved)} bytes (sha256 "
                                             f"{hashlib.sha256(approved.encode()).hexdigest()}): {approved}"), request
        assert as_lead(cluster, "approve", str(request["id"])).returncode == 0
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-2000:]
    results = json.loads(out.strip().splitlines()[-1])
    assert isinstance(results["open"], dict) and results["open"]["ok"] is True, results
    line = (f"a fleet run's part routed from another master sent input other than its approved script "
            f"({len(approved)} bytes): session {results['open']['session']} on {MODERATED} ended")
    exits = [m for m in results["out"] if m[1] == "exit"]
    assert exits == [[exits[0][0], "exit", None, signal.SIGHUP, ""]], results  # ended on the worker: hung up
    time.sleep(2)
    assert not os.path.exists(evil) and not os.path.exists(harmless)
    sql = f"SELECT end_reason FROM slaveshell_sessions WHERE id = '{results['open']['session']}'"
    reason = subprocess.run(PG + ["-d", cluster.database, "-t", "-A", "-c", sql], capture_output=True, text=True,
                            timeout=60)
    assert line in reason.stdout, reason.stdout + reason.stderr  # B's record of the session says why it ended
    refused = wait_until(lambda: [e for e in events(cluster, ("refused",), since) if e["detail"] == line], 30)
    assert refused and refused[0]["operator"] == f"cluster:C/{MALLORY}", events(cluster, ("refused",), since)


def test_a_hostile_b_breaking_an_uploads_protocol_ends_it_on_a_with_as_line_and_a_stays_up(cluster: Site,
                                                                                           tmp_path) -> None:
    """During an upload through A to b1 (held up: b1's worker stopped, the client's window full), C (a router client
    that is not B) calls A's `out` procedure with a forged result and acknowledgement: not heard. Then a router
    client authenticated as B (B's own principal: a B whose master breaks the protocol) calls it with an
    acknowledgement out of sequence. A ends the transfer before the client hears of it: `slaveshell cp` exits 1 with
    A's line naming B (no client protocol error, no traceback), the file is not put in place on b1, A's audit has a
    `routed` event naming the message (never its content), and A still relays: the next upload arrives byte for
    byte. (Each breach, by the router and by the direct connection, is in tests/test_cluster_copy_trust.py.)"""
    on_b(cluster)
    since = last_event_id(cluster)
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        f.truncate(64 << 20)  # more than the window: the upload waits for b1 while it is stopped
    dest = os.path.join(cluster.b.worker_dir("b1"), "hostile-b-upload.bin")
    with open(os.path.join(cluster.b.worker_dir("b1"), "twistd.pid")) as f:
        b1 = int(f.read().strip())
    child = subprocess.Popen(cp_argv(cluster.a, str(source), f"b1:{dest}"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_until(lambda: [r for r in transfer_rows(cluster, "b1")
                                      if "big.bin" in str(r["command"]) and r["state"] == "running"], 60)
        assert running, transfer_rows(cluster, "b1")
        os.kill(b1, signal.SIGSTOP)
        # C, a router client that is not B, is not heard: the upload goes on.
        forged = hostile_probe(cluster, {"out": [[0, "result", False, "FORGED"], [1, "ack", 1024]]})
        assert forged["sessions"]["out"] == ["called", "called"] and child.poll() is None, forged  # type: ignore[index]
        probe = hostile_probe(cluster, {"out": [[10**9, "ack", 1024]]}, authid="B")
        _, err = child.communicate(timeout=60)
    finally:
        os.kill(b1, signal.SIGCONT)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert probe["joined"][0] == "B" and probe["sessions"]["out"] == ["called"], probe  # type: ignore[index]
    assert child.returncode == 1, err
    assert_no_traceback(err)
    assert re.fullmatch(r"slaveshell cp: the transfer with b1 ended: master B broke the protocol: message 1000000000 "
                        r"where \d+ was expected\n", err), err
    assert not os.path.exists(dest)

    def breach() -> list[dict[str, object]]:
        return [e for e in events(cluster, ("routed",), since) if "broke the protocol" in str(e["detail"])]

    found = wait_until(breach, 30)
    assert found and found[0]["operator"] == getpass.getuser() and found[0]["worker"] == "b1", found
    assert found[0]["detail"] == (f"cp up routed to master B: transfer {found[0]['session_id']} ended here: master B "
                                  "broke the protocol (its message 1000000000: ack)"), found
    (tmp_path / "after").write_bytes(b"still relayed\n")
    after = os.path.join(cluster.b.worker_dir("b1"), "after-hostile-b")
    done = cp(cluster.a, str(tmp_path / "after"), f"b1:{after}")
    assert done.returncode == 0, done.stderr
    with open(after, "rb") as f:
        assert f.read() == b"still relayed\n"
