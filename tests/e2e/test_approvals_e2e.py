"""Approvals on a four-eyes worker (`Rule(moderated_by=[...])`) against a real master and workers and the real
CLIs: `slaveshell cp`, `buildbot-shell W -- CMD` and `slaveshell run` wait for a moderator's approval
(`slaveshell approvals`, `approve ID`, `deny ID --reason`) instead of being refused; approved, they happen as an
ordinary one does; denied or expired, they do not, and the operator is told why; the operator cannot approve
their own request, nor a watcher outside the moderators' groups; Ctrl-C withdraws a request; the bound per
operator; every step in the audit index; the reporters asked for a moderator; hostile text listed escaped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

import slaveshell.client.approval_cli  # noqa: F401  (imported before run_as forks: the users cannot read it)
from slaveshell.client.sandbox import Sandbox

from .conftest import assert_no_traceback, run_as, shell_argv, wait_until
from .test_hold_notices_e2e import HttpSink
from .test_moderated_e2e import LEAD, LEADS, OPS, OUTSIDER, REPORTER, _ensure_users

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.getuid() != 0, reason="other local users need root")]

WAIT = 45  # approval_wait of this master: seconds a request waits before it is refused
SHORT_WAIT = 10  # approval_wait of the master of the test that waits for a request to expire
ASKED = re.compile(r"worker m1 is moderated: request ([0-9a-f]{12}) waits for a moderator's approval "
                   rf"\(moderated_by: {LEADS}, root, with the watch right, not you: slaveshell approve \1\)")


@pytest.fixture(scope="module")
def sink() -> Iterator[HttpSink]:
    server = HttpSink()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def moderated_master(sink: HttpSink, wait: float, workers: tuple[str, ...] = ("m1", "m2")) -> Iterator[Sandbox]:
    """m1 is moderated for root (the operator here), m2 is not; the leads moderate; everybody in OPS watches; a
    request waits `wait` s (approval_wait) before it is refused."""
    _ensure_users()
    root = tempfile.mkdtemp(prefix="slaveshell-approvals-")
    os.chmod(root, 0o755)
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    policy = ("policy=["
              f"dict(groups=[{LEADS!r}], rights=['watch']), "
              f"dict(users=[0], workers=['m1'], moderated_by=[{LEADS!r}, 'root']), "
              "dict(users=[0], workers=['m2']), "
              f"dict(groups=[{OPS!r}], rights=['watch'])]")
    dirs = ", ".join(repr(d) for d in (allowed, *(os.path.join(root, f"worker-{w}") for w in workers)))
    sb = Sandbox(root, workers=list(workers), opt_in_args=f"allowed_dirs=[{dirs}]",
                 service_kwargs=f"group={OPS!r}, {policy}, approval_wait={wait}, "
                                "max_pending_approvals_per_operator=2",
                 extra_config=REPORTER.format(hook=sink.url + "/hook").replace("workers=['m1']", "workers=['m1']"))
    sb.create()
    os.chmod(sb.master_dir, 0o755)
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def box(sink: HttpSink) -> Iterator[Sandbox]:
    with moderated_master(sink, WAIT) as sb:
        yield sb


@pytest.fixture(scope="module")
def short_box(sink: HttpSink) -> Iterator[Sandbox]:
    """The same master with m1 only, whose requests expire after SHORT_WAIT s: for the tests that wait for one
    to."""
    with moderated_master(sink, SHORT_WAIT, ("m1",)) as sb:
        yield sb


class Waiting:
    """A client (root's) whose standard error is read as it comes: `asked()` waits for its approval line."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.err = ""
        self.out = ""
        self._readers = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in ("err", "out")]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = self.process.stderr if name == "err" else self.process.stdout
        assert stream is not None
        for line in stream:
            setattr(self, name, getattr(self, name) + line)

    def asked(self, timeout: float = 60) -> str:
        found = wait_until(lambda: ASKED.search(self.err), timeout)
        assert found, (self.err, self.out, self.process.poll())
        return found.group(1)

    def end(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(10)
        assert_no_traceback(self.err)
        return code


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def as_user(sb: Sandbox, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_as(user, [args[0], "--socket", sb.socket, *args[1:]])
    assert_no_traceback(done.stderr)
    return done


def cp(sb: Sandbox, *args: str) -> Waiting:
    return Waiting([sys.executable, "-m", "slaveshell.cli", "cp", "--socket", sb.socket, *args])


def events(sb: Sandbox, like: str) -> list[tuple[str, str | None, str, str]]:
    """(kind, session_id, operator, detail) of the events whose detail contains `like`."""
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, session_id, operator, detail FROM slaveshell_events WHERE detail LIKE ? "
                               "ORDER BY id", (f"%{like}%",)))
    finally:
        db.close()


def kinds(sb: Sandbox, request_id: str, until: str) -> list[tuple[str, str | None, str, str]]:
    """The request's events, once one of kind `until` is written."""
    found = wait_until(lambda: (lambda e: e if any(k == until for k, *_ in e) else None)(
        events(sb, f"request {request_id}")), 20)
    assert found, events(sb, f"request {request_id}")
    return found


def listed(sb: Sandbox, user: str) -> list[dict[str, object]]:
    done = as_user(sb, user, "approvals", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_an_approved_copy_happens_and_neither_its_operator_nor_an_outsider_may_approve_it(box: Sandbox, tmp_path,
                                                                                         sink: HttpSink) -> None:
    source = tmp_path / "approved.txt"
    source.write_text("four eyes\n")
    dest = os.path.join(box.root, "allowed", "approved.txt")
    client = cp(box, "--reason", "INC-7", str(source), f"m1:{dest}")
    request = client.asked()
    assert client.process.poll() is None and not os.path.exists(dest)  # it waits
    # The moderators see it, with what it would do; the operator sees their own.
    (row,) = [r for r in listed(box, LEAD) if r["id"] == request]
    assert row["operator"] == "root" and row["worker"] == "m1" and row["kind"] == "copy"
    assert row["what"] == f"cp up: approved.txt -> m1:{dest}" and row["reason"] == "INC-7"
    assert row["may_approve"] is True and row["mine"] is False
    mine = json.loads(cli(box, "approvals", "--json").stdout)
    assert [(r["id"], r["mine"], r["may_approve"]) for r in mine] == [(request, True, False)]
    table = as_user(box, LEAD, "approvals").stdout
    assert request in table and "approve" in table and "cp up: approved.txt" in table
    # The reporters are asked for a moderator.
    def notices() -> list[dict[str, str]]:
        return [n for n in (json.loads(p) for path, _, p in sink.posts if path == "/hook")
                if n.get("session") == request]

    assert wait_until(notices, 30), sink.posts
    notice = notices()[0]
    assert notice["text"].startswith(f"Request {request} on worker m1 waits for a second person.\n")
    assert "root asked at " in notice["text"] and "for a copy on m1, which starts only once" in notice["text"]
    assert f"    slaveshell approve {request}\n" in notice["text"]
    # The operator cannot approve their own request; a watcher outside the moderators' groups cannot either.
    own = cli(box, "approve", request)
    assert own.returncode == 255 and "the request's own operator cannot approve or deny it" in own.stderr
    outsider = as_user(box, OUTSIDER, "approve", request)
    assert outsider.returncode == 255 and "is in none of its moderators' groups" in outsider.stderr
    outsider_deny = as_user(box, OUTSIDER, "deny", request)
    assert outsider_deny.returncode == 255 and "is in none of its moderators' groups" in outsider_deny.stderr
    assert client.process.poll() is None and not os.path.exists(dest)
    # The lead approves: the copy happens as an ordinary one.
    approved = as_user(box, LEAD, "approve", request)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"request {request} of root on m1 approved: it starts now"
    assert client.end() == 0, client.err
    with open(dest) as f:
        assert f.read() == "four eyes\n"
    trail = kinds(box, request, "approval")
    assert [k for k, *_ in trail] == ["approval-asked", "approved", "approval"], trail
    assert trail[1][2] == LEAD and trail[2][2] == LEAD and trail[2][1]  # the transfer it started, by whom
    history = json.loads(cli(box, "history", "--json", "--worker", "m1").stdout)
    assert any(r["id"] == trail[2][1] and r["state"] == "ended" for r in history), history
    refused = wait_until(lambda: events(box, f"not a moderator: approve {request}"), 20)
    assert {who for _, _, who, _ in refused} == {"root", OUTSIDER}, refused


def test_a_denied_copy_does_not_happen_and_its_operator_reads_the_moderators_line(box: Sandbox, tmp_path) -> None:
    source = tmp_path / "denied.txt"
    source.write_text("no\n")
    dest = os.path.join(box.root, "allowed", "denied.txt")
    client = cp(box, str(source), f"m1:{dest}")
    request = client.asked()
    denied = as_user(box, LEAD, "deny", request, "--reason", "not during the freeze \x1b[31m")
    assert denied.returncode == 0 and denied.stdout.strip() == f"request {request} of root on m1 denied"
    assert client.end() == 1
    assert (f"slaveshell cp: request {request} denied by moderator {LEAD}: not during the freeze \\x1b[31m"
            in client.err), client.err
    assert not os.path.exists(dest)
    trail = kinds(box, request, "denied")
    assert trail[-1][0] == "denied" and trail[-1][2] == LEAD and "not during the freeze" in trail[-1][3]
    assert not listed(box, LEAD) or all(r["id"] != request for r in listed(box, LEAD))


def test_a_command_waits_for_its_approval_and_hostile_text_is_listed_escaped(box: Sandbox) -> None:
    marker = os.path.join(box.root, "allowed", "approved-command")
    client = Waiting(shell_argv() + ["--socket", box.socket, "m1", "--", "touch", marker, ";",
                                     "echo", "'\x1b]0;owned\x07\x1b[2J'"])
    request = client.asked()
    time.sleep(1)
    assert not os.path.exists(marker)
    table = as_user(box, LEAD, "approvals").stdout
    line = next(x for x in table.splitlines() if x.startswith(request))
    assert "\x1b" not in table and "\x07" not in table
    assert f"command: touch {marker} ; echo '\\x1b]0;owned\\x07\\x1b[2J'" in line, line
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert client.end() == 0, client.err
    assert os.path.exists(marker)
    # A long command is cut in the listing of all, saying so; the request's own listing shows all of it.
    padded = Waiting(shell_argv() + ["--socket", box.socket, "m1", "--", "true", " " * 3000, ";", "touch",
                                     marker + ".padded"])
    long_one = padded.asked()
    line = next(x for x in as_user(box, LEAD, "approvals").stdout.splitlines() if x.startswith(long_one))
    assert re.search(rf"\[\.\.\. \d+ more characters: slaveshell approvals {long_one}\]$", line), line
    assert "touch" not in line
    whole = as_user(box, LEAD, "approvals", long_one).stdout
    assert re.search(rf"^what: +command: true +; touch {re.escape(marker)}\.padded$", whole, re.M), whole
    padded.process.send_signal(signal.SIGINT)
    assert padded.end() != 0
    assert not os.path.exists(marker + ".padded")
    trail = kinds(box, request, "approval")
    session = trail[-1][1]
    assert session and trail[-1][2] == LEAD
    assert next(r for r in json.loads(cli(box, "history", "--json").stdout) if r["id"] == session)["command"]


def test_an_unanswered_request_expires_and_ctrl_c_withdraws_one(short_box: Sandbox, tmp_path) -> None:
    box = short_box
    source = tmp_path / "late.txt"
    source.write_text("late\n")
    dest = os.path.join(box.root, "allowed", "late.txt")
    started = time.monotonic()
    late = cp(box, str(source), f"m1:{dest}")
    expiring = late.asked()
    withdrawn = cp(box, str(source), f"m1:{dest}.2")
    leaving = withdrawn.asked()
    withdrawn.process.send_signal(signal.SIGINT)
    assert withdrawn.end() == 130
    assert kinds(box, leaving, "approval-withdrawn")[-1][2] == "root"
    assert all(r["id"] != leaving for r in listed(box, LEAD))
    assert late.end(timeout=SHORT_WAIT + 60) == 1
    assert time.monotonic() - started >= SHORT_WAIT - 1
    assert (f"slaveshell cp: request {expiring}: no moderator approved it within {SHORT_WAIT} s (the master's limit)"
            in late.err), late.err
    assert not os.path.exists(dest)
    assert kinds(box, expiring, "approval-expired")[-1][2] == "root"


def test_a_runs_part_that_waits_for_a_place_as_long_as_a_request_waits_ends_with_the_masters_line(
        short_box: Sandbox, tmp_path) -> None:
    """root's two places (the bound here) are held by two copies; the parts of three runs on m1 wait for a free
    place, listed marked so. The copies end (Ctrl-C, or their own expiry): the first two parts are asked in their
    places, each for what remains of its SHORT_WAIT s; the first one's end frees a place for the third, asked for
    the little it has left: it ends SHORT_WAIT s after it began with the master's line, saying how much of that
    went waiting for a place (its wait is not started again)."""
    box = short_box
    source = tmp_path / "hold.txt"
    source.write_text("h\n")
    holders = [cp(box, str(source), f"m1:{box.root}/allowed/hold{n}") for n in (1, 2)]
    for holder in holders:
        holder.asked()
    runs = []
    for n in (1, 2, 3):
        client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--workers", "m1",
                          "--", "touch", f"waited-{n}"])
        runs.append(client)
        assert wait_until(lambda: "its approval request waits for a free place" in runs[-1].err, 30), client.err
    last_run = re.search(r"slaveshell run: run ([0-9a-f]{12}) on 1 worker, ", runs[2].err)
    assert last_run, runs[2].err
    for holder in holders:
        holder.process.send_signal(signal.SIGINT)
        assert holder.end() in (130, 1)  # withdrawn, or expired already: either way its place is free
    asked = [client.asked() for client in runs[:2]]
    rows = [r for r in listed(box, LEAD) if r["operator"] == "root"]
    assert [(r["id"], r["waits_for_place"]) for r in rows][:2] == [(asked[0], False), (asked[1], False)]
    (waiting,) = [r for r in rows if r["waits_for_place"]]
    assert waiting["run"] == last_run.group(1) and waiting["worker"] == "m1"
    table = as_user(box, LEAD, "approvals").stdout
    assert "1 waiting for a free place to be asked" in table, table
    assert any(line.startswith(str(waiting["id"])) and f" {last_run.group(1)} " in line
               for line in table.splitlines()), table
    began = time.monotonic()
    assert runs[2].end(timeout=SHORT_WAIT + 60) == 1
    assert time.monotonic() - began < SHORT_WAIT  # not a second whole wait once asked
    assert re.search(rf"m1: error: request {waiting['id']}: no moderator approved it within {SHORT_WAIT} s \(the "
                     r"master's limit, \d+ s of it spent waiting for a free place to be asked\); worker m1 is "
                     "moderated", runs[2].out), runs[2].out + runs[2].err
    asked_then, event = kinds(box, str(waiting["id"]), "approval-expired")
    assert asked_then[0] == "approval-asked" and event[0] == "approval-expired"
    assert event[2] == "root" and "spent waiting for a free place to be asked" in event[3]
    for client in runs[:2]:
        client.process.send_signal(signal.SIGINT)
        assert client.end() != 0
    assert not any(os.path.exists(os.path.join(box.worker_dir("m1"), f"waited-{n}")) for n in (1, 2, 3))


def test_pending_requests_are_bounded_per_operator(box: Sandbox, tmp_path) -> None:
    source = tmp_path / "bound.txt"
    source.write_text("b\n")
    first = cp(box, str(source), f"m1:{box.root}/allowed/b1")
    first.asked()
    second = cp(box, str(source), f"m1:{box.root}/allowed/b2")
    second.asked()
    third = cli(box, "cp", str(source), f"m1:{box.root}/allowed/b3")
    assert third.returncode == 1
    assert "approvals refused: root already waits for 2 approvals (the master's limit per operator)" in third.stderr
    assert wait_until(lambda: events(box, "approvals refused: root already waits for 2"), 20)
    for client in (first, second):
        client.process.send_signal(signal.SIGINT)
        assert client.end() == 130
    assert not any(os.path.exists(f"{box.root}/allowed/b{n}") for n in (1, 2, 3))


def test_a_run_waits_for_the_moderated_workers_approval_without_holding_up_the_others(box: Sandbox) -> None:
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--", "touch",
                      "ran-approved"])
    request = client.asked()
    assert "slaveshell run: m1: worker m1 is moderated" in client.err
    # m2 (not moderated) ran meanwhile; m1 did not.
    assert wait_until(lambda: os.path.exists(os.path.join(box.worker_dir("m2"), "ran-approved")), 30)
    assert wait_until(lambda: "ok: m2" in client.out or "m2" in client.out, 30), client.out
    assert not os.path.exists(os.path.join(box.worker_dir("m1"), "ran-approved"))
    (row,) = [r for r in listed(box, LEAD) if r["id"] == request]
    assert row["kind"] == "run" and str(row["what"]).startswith("fleet run ") and str(row["what"]).endswith(
        ", command: touch ran-approved") and row["run"]
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert client.end() == 0, client.out + client.err
    assert os.path.exists(os.path.join(box.worker_dir("m1"), "ran-approved"))
    assert [k for k, *_ in kinds(box, request, "approval")] == ["approval-asked", "approved", "approval"]


def test_with_a_batch_of_one_the_unmoderated_workers_run_while_the_approval_waits(box: Sandbox) -> None:
    """`--batch 1` over m1 (four-eyes) and m2: m1's approval is asked before it takes the batch's place, so m2 runs
    (and ends) while the moderator is awaited; once approved, m1 runs too."""
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--batch", "1", "--",
                      "touch", "ran-in-batches"])
    request = client.asked()
    assert wait_until(lambda: os.path.exists(os.path.join(box.worker_dir("m2"), "ran-in-batches")), 30), \
        (client.out, client.err)
    # m2's part ended (its session closed, in the audit index) while m1's request still waits.
    assert wait_until(lambda: "m2" in client.out and "ok" in client.out, 30), client.out + client.err
    assert [r["id"] for r in listed(box, LEAD)] == [request]
    assert client.process.poll() is None
    assert not os.path.exists(os.path.join(box.worker_dir("m1"), "ran-in-batches"))
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert client.end() == 0, client.out + client.err
    assert os.path.exists(os.path.join(box.worker_dir("m1"), "ran-in-batches"))
    assert [k for k, *_ in kinds(box, request, "approval")] == ["approval-asked", "approved", "approval"]


def test_a_runs_part_denied_is_refused_and_ctrl_c_withdraws_what_waits(box: Sandbox, tmp_path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\ntouch ran-by-script\n")
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--script",
                      str(script), "--workers", "m1"])
    request = client.asked()
    (row,) = [r for r in listed(box, LEAD) if r["id"] == request]
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    assert str(row["what"]).endswith(f", script of 30 bytes (sha256 {digest}): #!/bin/sh\ntouch ran-by-script\n"), row
    assert as_user(box, LEAD, "deny", request, "--reason", "use the staging fleet").returncode == 0
    assert client.end() == 1, client.out + client.err
    assert f"m1: refused: request {request} denied by moderator {LEAD}: use the staging fleet" in client.out, \
        client.out
    assert not os.path.exists(os.path.join(box.worker_dir("m1"), "ran-by-script"))
    # Interrupted while its part waits: the request is withdrawn and the run ends at once.
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--workers", "m1", "--",
                      "touch", "ran-interrupted"])
    request = client.asked()
    client.process.send_signal(signal.SIGINT)
    assert client.end(timeout=30) != 0
    assert kinds(box, request, "approval-withdrawn")[-1][2] == "root"
    assert not os.path.exists(os.path.join(box.worker_dir("m1"), "ran-interrupted"))


def test_a_runs_part_past_the_operators_bound_waits_for_a_free_place_then_asks(box: Sandbox, tmp_path) -> None:
    """root already waits for two approvals (the bound here): their own command, and a copy. A run on m1 is not
    refused: its part waits for a free place, saying so, and asks once the copy is withdrawn (Ctrl-C)."""
    marker = os.path.join(box.root, "allowed", "own-command")
    own = Waiting(shell_argv() + ["--socket", box.socket, "m1", "--", "touch", marker])
    own.asked()
    source = tmp_path / "place.txt"
    source.write_text("p\n")
    copy = cp(box, str(source), f"m1:{box.root}/allowed/place")
    copy.asked()
    refusals = len(events(box, "approvals refused: "))
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--workers", "m1", "--",
                      "touch", "ran-after-a-place"])
    assert wait_until(lambda: "its approval request waits for a free place" in client.err, 30), client.err
    assert ("slaveshell run: m1: worker m1 is moderated: its approval request waits for a free place (root already "
            "waits for 2 approvals (the master's limit per operator)); it is asked as soon as one of those is "
            "approved, denied, withdrawn or expires" in client.err), client.err
    time.sleep(1)
    assert client.process.poll() is None and "refused" not in client.out, client.out
    rows = [r for r in listed(box, LEAD) if r["operator"] == "root"]
    assert len([r for r in rows if not r["waits_for_place"]]) == 2  # the bound holds
    (waiting,) = [r for r in rows if r["waits_for_place"]]  # listed, marked so
    assert waiting["kind"] == "run" and waiting["worker"] == "m1" and waiting["run"]
    copy.process.send_signal(signal.SIGINT)
    assert copy.end() == 130
    request = client.asked()  # asked now, in the copy's place, under the id it was listed with
    assert request == waiting["id"]
    (row,) = [r for r in listed(box, LEAD) if r["id"] == request]
    assert row["kind"] == "run" and str(row["what"]).endswith(", command: touch ran-after-a-place")
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert client.end() == 0, client.out + client.err
    assert os.path.exists(os.path.join(box.worker_dir("m1"), "ran-after-a-place"))
    assert len(events(box, "approvals refused: ")) == refusals  # no part refused past the bound
    own.process.send_signal(signal.SIGINT)
    assert own.end() != 0
    assert not os.path.exists(marker)


def test_a_part_approved_then_interrupted_before_it_opened_is_audited_unused(box: Sandbox) -> None:
    """`--batch 1`: m2 runs (sleeps) in the batch's one place while m1's part is approved and waits for it; Ctrl-C
    then ends the run: m1 never opened, and the audit index says its approval was not used."""
    client = Waiting([sys.executable, "-m", "slaveshell.cli", "run", "--socket", box.socket, "--batch", "1", "--",
                      "sleep", "120"])
    request = client.asked()
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert wait_until(lambda: [k for k, *_ in events(box, f"request {request}")][-1:] == ["approved"], 20)
    client.process.send_signal(signal.SIGINT)
    assert client.end(timeout=60) != 0
    trail = kinds(box, request, "approval-unused")
    assert [k for k, *_ in trail] == ["approval-asked", "approved", "approval-unused"]
    kind, session, operator, detail = trail[-1]
    assert operator == "root" and not session
    assert detail == (f"request {request} of root on m1, run: approved by {LEAD}, not used: the run was interrupted "
                      "before the part opened")


def test_a_copy_refused_after_its_approval_is_audited_unused(box: Sandbox, tmp_path) -> None:
    """The moderator approves a copy that the worker then refuses (its owner's allowed_dirs): nothing is copied,
    the operator reads the worker's refusal, and the audit index says the approval was not used, as for a
    session's open refused after its approval."""
    source = tmp_path / "outside.txt"
    source.write_text("outside\n")
    dest = os.path.join(box.root, "outside.txt")  # not in the worker's allowed_dirs
    client = cp(box, str(source), f"m1:{dest}")
    request = client.asked()
    assert as_user(box, LEAD, "approve", request).returncode == 0
    assert client.end() == 1
    why = f"worker m1: {dest}: outside the directories this worker allows"
    assert client.err.strip().splitlines()[-1] == f"slaveshell cp: {why}", client.err
    assert not os.path.exists(dest)
    trail = kinds(box, request, "approval-unused")
    assert [k for k, *_ in trail] == ["approval-asked", "approved", "approval-unused"], trail
    kind, session, operator, detail = trail[-1]
    assert operator == "root" and not session
    assert detail == (f"request {request} of root on m1, copy: approved by {LEAD}, not used: the transfer did not "
                      f"start: {why}"), detail
