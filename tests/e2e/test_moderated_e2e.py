"""Four-eyes sessions (`Rule(moderated_by=[...])`) against a real master and worker: the operator's input held
until a moderator (another local user, in the moderators' group, with 'watch') watches; held again once the last
moderator left; the moderator ending the session; the audit events; and the attacks: the operator moderating
their own session from a second connection, a watcher outside the group, a member without the watch right,
input and a flood of it while held; what the open itself would run waits for an approval
(tests/e2e/test_approvals_e2e.py has the approvals themselves).

The other users run in forked children that drive the framed hop by hand (they cannot read this interpreter's
files to start a client: everything is imported before the fork)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Iterator

import pexpect
import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import FrameType, Op

from .conftest import PROMPT, Terminal, assert_no_traceback, run_as, shell_argv, wait_until
from .test_hold_notices_e2e import HttpSink

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.getuid() != 0, reason="other local users need root")]

OPS = "slaveshell-mod-ops"  # the socket's group: everybody below
LEADS = "slaveshell-mod-leads"  # the moderators
LEAD = "slaveshell-mod-lead"  # in LEADS, with 'watch'
OUTSIDER = "slaveshell-mod-other"  # 'watch', not in LEADS
NO_WATCH = "slaveshell-mod-nowatch"  # in LEADS, without 'watch'
HELD = "input is held until a moderator watches (moderated_by: slaveshell-mod-leads, root)"
# The four-eyes notice through a real reporter (Buildbot's HttpStatusPush) to an HTTP server of the test's.
REPORTER = """\
from buildbot.plugins import reporters as _reporters
from master_side import ModeratorNoticeGenerator as _Generator, NoticeFormatterFunction as _Function
c['services'].append(_reporters.HttpStatusPush(serverUrl={hook!r}, generators=[_Generator(
    workers=['m1'], message_formatter=_Function(lambda n: {{'text': n['text'], 'session': n['session']}}))]))
"""


def _ensure_users() -> None:
    for group in (OPS, LEADS):
        if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", group], check=True)
    for user, groups in ((LEAD, [OPS, LEADS]), (OUTSIDER, [OPS]), (NO_WATCH, [OPS, LEADS])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
        subprocess.run(["usermod", "-a", "-G", ",".join(groups), user], check=True)


@pytest.fixture(scope="module")
def sink() -> Iterator[HttpSink]:
    server = HttpSink()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def box(sink: HttpSink) -> Iterator[Sandbox]:
    """m1 is moderated for root (the operator here): root's rule for m1 names the leads (and root's own group,
    so that root is in it: the operator still cannot moderate their own session)."""
    _ensure_users()
    root = tempfile.mkdtemp(prefix="slaveshell-moderated-")
    os.chmod(root, 0o755)
    allowed = os.path.join(root, "allowed")
    os.makedirs(allowed)
    policy = ("policy=["
              f"dict(users=[{NO_WATCH!r}], rights=['replay']), "
              f"dict(groups=[{LEADS!r}], rights=['watch']), "
              f"dict(users=[0], workers=['m1'], moderated_by=[{LEADS!r}, 'root']), "
              f"dict(groups=[{OPS!r}], rights=['watch'])]")
    sb = Sandbox(root, workers=["m1"], opt_in_args=f"allowed_dirs=[{allowed!r}, {os.path.join(root, 'worker-m1')!r}]",
                 service_kwargs=f"group={OPS!r}, {policy}", extra_config=REPORTER.format(hook=sink.url + "/hook"))
    sb.create()
    os.chmod(sb.master_dir, 0o755)
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()
        shutil.rmtree(root, ignore_errors=True)


class Other:
    """Another local user in a forked child, told what to do over a pipe (a JSON list a line): ["watch", SID]
    (attach read-only, reporting everything shown), ["leave"], ["kill", SID]; each report is a JSON line."""

    def __init__(self, user: str, socket_path: str) -> None:
        pw = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        commands_r, self._commands = os.pipe()
        self._reports, reports_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                os.close(self._commands)
                os.close(self._reports)
                os.setgroups(groups)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                _child(socket_path, commands_r, reports_w)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(commands_r)
        os.close(reports_w)
        self.user = user
        self.reports: list[dict[str, object]] = []
        self._partial = b""

    def tell(self, *command: str) -> None:
        os.write(self._commands, json.dumps(list(command)).encode() + b"\n")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self._reports], [], [], timeout)
        if not ready:
            return
        data = os.read(self._reports, 65536)
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        self.reports += [json.loads(line) for line in lines if line]

    def wait_for(self, key: str, contains: str = "", timeout: float = 20) -> dict[str, object]:
        deadline = time.time() + timeout
        while True:
            for report in self.reports:
                if key in report and contains in str(report[key]):
                    return report
            if time.time() > deadline:
                raise AssertionError(f"{self.user}: no {key} with {contains!r} in {self.reports}")
            self._read(0.2)

    def shown(self) -> str:
        self._read(0)
        return "".join(str(r["out"]) for r in self.reports if "out" in r)

    def close(self) -> None:
        try:
            self.tell("exit")
        except OSError:
            pass
        os.close(self._commands)
        os.close(self._reports)
        deadline = time.time() + 10
        while time.time() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)


def _call(socket_path: str, op: Op, **fields: object
          ) -> tuple[socket.socket, framing.Decoder, dict[str, object], list[framing.Frame]]:
    """A connection, `op` called on it, its answer's fields (ok, error, ...) and the frames before the answer
    (what an attach shows first: the recent output, a notice)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(socket_path)
    sock.settimeout(20)
    sock.sendall(framing.MAGIC + framing.control(op, id=1, **fields))
    data = b""
    while framing.MAGIC not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return sock, framing.Decoder(max_control=framing.MAX_ANSWER), {"ok": False, "error": "closed"}, []
        data += chunk
    decoder = framing.Decoder(max_control=framing.MAX_ANSWER)
    pending = data[data.index(framing.MAGIC) + len(framing.MAGIC):]
    before: list[framing.Frame] = []
    while True:
        for frame in decoder.feed(pending):
            if frame.type is FrameType.CONTROL:
                message = framing.parse_control(frame.payload)
                if message.op is Op.ANSWER:
                    return sock, decoder, dict(message.fields), before
            before.append(frame)
        pending = sock.recv(65536)
        if not pending:
            return sock, decoder, {"ok": False, "error": "closed"}, before


def _child(socket_path: str, commands: int, reports: int) -> None:
    def report(**fields: object) -> None:
        os.write(reports, json.dumps(fields).encode() + b"\n")

    def shown(sock: socket.socket, frames: list[framing.Frame]) -> None:
        for frame in frames:
            if frame.type in (FrameType.STDOUT, FrameType.STDERR):
                report(out=frame.payload.decode("utf-8", "replace"))
                sock.sendall(framing.control(Op.ACK, n=len(frame.payload)))
            elif frame.type is FrameType.CONTROL:
                message = framing.parse_control(frame.payload)
                if message.op is Op.EXIT:
                    report(exit=str(message.get("reason")))

    watch: socket.socket | None = None
    decoder: framing.Decoder | None = None
    partial = b""
    while True:
        ready, _, _ = select.select([commands] + ([watch] if watch is not None else []), [], [], 60)
        if watch is not None and decoder is not None and watch in ready:
            data = watch.recv(65536)
            if not data:
                report(closed=True)
                watch = None
                continue
            shown(watch, decoder.feed(data))
        if commands not in ready:
            continue
        data = os.read(commands, 4096)
        if not data:
            return
        partial += data
        *lines, partial = partial.split(b"\n")
        for line in lines:
            command = json.loads(line)
            if command[0] == "exit":
                return
            if command[0] == "watch":
                watch, decoder, answer, before = _call(socket_path, Op.ATTACH, session=command[1], mode="watch")
                shown(watch, before)
                report(watch=answer.get("error") or "watching")
                if not answer.get("ok"):
                    watch.close()
                    watch = None
            elif command[0] == "leave" and watch is not None:
                watch.close()
                watch = None
                report(left=True)
            elif command[0] == "kill":
                sock, _, answer, _ = _call(socket_path, Op.KILL, session=command[1])
                sock.close()
                report(kill=answer.get("error") or answer.get("text"))


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert_no_traceback(done.stderr)
    return done


def sessions(sb: Sandbox) -> list[dict[str, object]]:
    done = cli(sb, "sessions", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def events(sb: Sandbox, session_id: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, operator, detail FROM slaveshell_events WHERE session_id = ? "
                               "ORDER BY id", (session_id,)))
    finally:
        db.close()


def refusals(sb: Sandbox) -> list[tuple[str, str]]:
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT operator, detail FROM slaveshell_events WHERE kind = 'refused'"))
    finally:
        db.close()


def open_held(sb: Sandbox, *options: str) -> tuple[Terminal, str]:
    """root's login shell on m1, its input held: the terminal and the session's id."""
    before = {s["id"] for s in sessions(sb)}
    t = Terminal(sb, [*options, "m1"])
    t.expect(re.escape(HELD))
    t.expect(r"[#$] ")
    sid = wait_until(lambda: next((str(s["id"]) for s in sessions(sb) if s["worker"] == "m1"
                                   and s["state"] == "attached" and s["id"] not in before), None), timeout=10)
    assert sid
    row = next(s for s in sessions(sb) if s["id"] == sid)
    assert row["held"] is True and row["moderated_by"] == [LEADS, "root"]
    line = next(x for x in cli(sb, "sessions").stdout.splitlines() if x.startswith(sid))
    assert " held " in line, line
    return t, sid


def typed_reaches_the_worker(t: Terminal, marker: str, timeout: float) -> bool:
    """Type `touch MARKER` and say whether the file appears within `timeout` s."""
    if os.path.exists(marker):
        os.unlink(marker)
    t.child.send(f"touch {marker}\r")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(marker):
            os.unlink(marker)
            return True
        time.sleep(0.1)
    return False


def posted(sink: HttpSink, sid: str) -> list[dict[str, str]]:
    notices = [json.loads(body) for path, _, body in sink.posts if path == "/hook"]
    return [n for n in notices if n.get("session") == sid]


def test_input_is_held_until_a_moderator_watches_and_again_after_the_last_left(box: Sandbox, sink: HttpSink
                                                                               ) -> None:
    t, sid = open_held(box, "--reason", "INC-42 <b>four eyes</b>")
    # The reporters are told: the session waits for a second person.
    assert wait_until(lambda: posted(sink, sid), 30), (sink.posts, box.log_tail())
    (notice,) = posted(sink, sid)
    text = notice["text"]
    assert text.startswith(f"Session {sid} on worker m1 waits for a second person.\n"), text
    assert "root opened it at " in text and "(INC-42 <b>four eyes</b>); its input is held" in text
    assert f"Moderators: {LEADS}, root, with the watch right on m1, not root." in text
    assert f"    slaveshell watch {sid}\n" in text and f"slaveshell kill {sid}" in text and "\x1b" not in text
    lead = Other(LEAD, box.socket)
    marker = f"/tmp/moderated-{os.getpid()}"
    try:
        # Held: nothing typed reaches the worker, the operator is told once, the client stays.
        assert not typed_reaches_the_worker(t, marker, 2)
        assert not typed_reaches_the_worker(t, marker, 1)
        t.expect("what you type is not sent")
        assert bytes(t.printed).count(b"what you type is not sent") == 1
        assert t.child.isalive()
        # A moderator watches: input goes through, and both are told.
        lead.tell("watch", sid)
        assert lead.wait_for("watch")["watch"] == "watching"
        t.expect(f"{LEAD} moderates this session: input reaches the worker")
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is False
        line = next(x for x in cli(box, "sessions").stdout.splitlines() if x.startswith(sid))
        assert f"{LEAD}(moderator)" in line and " attached " in line, line
        t.child.sendline(f"bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='{PROMPT}'")
        t.expect("\n(\x1b\\[\\?2004[hl]|\r)*" + PROMPT)
        assert t.run("echo moder''ated-output").strip() == "moderated-output"
        lead.wait_for("out", "moderated-output")  # the moderator sees what is done
        assert typed_reaches_the_worker(t, marker, 10)
        # The last moderator leaves: held again.
        lead.tell("leave")
        lead.wait_for("left")
        t.expect(f"the last moderator \\({LEAD}\\) left: input is held")
        assert wait_until(lambda: next(s for s in sessions(box) if s["id"] == sid)["held"] is True, 10)
        assert not typed_reaches_the_worker(t, marker, 2)
        time.sleep(1)
        assert len(posted(sink, sid)) == 1  # told again at most once in 10 minutes per session
        # The operator may always end their own session.
        t.child.send("\r~.")
        t.wait()
    finally:
        lead.close()
        t.close()
    kinds = wait_until(lambda: (lambda e: e if any(k == "end" for k, _, _ in e) else None)(events(box, sid)), 20)
    assert kinds, events(box, sid)
    assert ("input-held", "root", f"no moderator watches (moderated_by: {LEADS}, root)") in kinds
    assert ("moderate-start", LEAD, "input released") in kinds
    assert any(k == "moderate-end" and who == LEAD and re.fullmatch(r"moderated [0-9.]+ s \(connection lost\)", detail)
               for k, who, detail in kinds), kinds
    assert ("input-held", "root", f"the last moderator ({LEAD}) left") in kinds
    dropped = [detail for k, who, detail in kinds if k == "held-input" and who == "root"]
    assert len(dropped) == 2 and all("dropped while input was held" in d for d in dropped), kinds
    order = [k for k, _, _ in kinds]
    assert order.index("input-held") < order.index("moderate-start") < order.index("moderate-end")
    # The transcript has the spans, and no held keystroke.
    transcript = cli(box, "export", sid).stdout
    assert f"moderator: {LEAD} (input released)" in transcript and "moderated-output" in transcript
    held_touches = transcript.count(f"touch {marker}")
    assert held_touches <= 2, transcript  # the one typed while moderated (its input and its echo), no held one


def test_the_operator_cannot_moderate_their_own_session_and_outsiders_release_nothing(box: Sandbox) -> None:
    t, sid = open_held(box)
    outsider = Other(OUTSIDER, box.socket)
    no_watch = Other(NO_WATCH, box.socket)
    marker = f"/tmp/moderated-self-{os.getpid()}"
    # The same person from a second connection (root is in one of the moderators' groups: 'root').
    own = pexpect.spawn(sys.executable, ["-m", "slaveshell.cli", "watch", "--socket", box.socket, sid],
                        env=dict(os.environ, TERM="xterm"), timeout=15)
    try:
        outsider.tell("watch", sid)
        assert outsider.wait_for("watch")["watch"] == "watching"  # watching is allowed, moderating is not
        assert wait_until(lambda: "you watch without moderating" in outsider.shown(), 10), outsider.shown()
        assert "is in none of its moderators' groups" in outsider.shown()
        no_watch.tell("watch", sid)
        assert "permission denied" in str(no_watch.wait_for("watch")["watch"])
        no_watch.tell("kill", sid)
        assert "permission denied" in str(no_watch.wait_for("kill")["kill"])
        assert wait_until(lambda: len(next(s for s in sessions(box) if s["id"] == sid)["viewers"]) == 3, 10)  # type: ignore[arg-type]
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is True
        assert not typed_reaches_the_worker(t, marker, 3)
        outsider.tell("kill", sid)
        assert "permission denied" in str(outsider.wait_for("kill")["kill"])
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is True
        own.expect("you watch without moderating: the session's own operator cannot moderate it")
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is True
        t.child.send("\r~.")
        t.wait()
    finally:
        own.terminate(force=True)
        outsider.close()
        no_watch.close()
        t.close()
    refused = wait_until(lambda: (lambda r: r if len([1 for who, d in r if d.startswith("not a moderator")]) >= 2
                                  else None)(refusals(box)), 20)
    assert refused, refusals(box)
    assert any(who == "root" and "own operator" in d for who, d in refused)
    assert any(who == OUTSIDER and "none of its moderators' groups" in d for who, d in refused)
    assert any(who == NO_WATCH and "permission denied" in d for who, d in refused)
    assert not any(k == "moderate-start" for k, _, _ in events(box, sid))


def test_the_moderator_ends_the_session(box: Sandbox) -> None:
    t, sid = open_held(box)
    lead = Other(LEAD, box.socket)
    try:
        lead.tell("watch", sid)
        assert lead.wait_for("watch")["watch"] == "watching"
        t.expect("moderates this session")
        lead.tell("kill", sid)  # the lead has no kill right: moderating is enough
        assert "hangup sent" in str(lead.wait_for("kill")["kill"])
        t.expect(f"session killed by {LEAD} \\(moderator\\)")
        t.wait(timeout=30)
        lead.wait_for("exit")
    finally:
        lead.close()
        t.close()
    kinds = wait_until(lambda: (lambda e: e if any(k == "end" for k, _, _ in e) else None)(events(box, sid)), 20)
    assert kinds and ("kill", LEAD, "as moderator") in kinds, kinds
    assert any(k == "moderate-end" and who == LEAD and "the session ended" in d for k, who, d in kinds), kinds


def test_a_flood_of_input_while_held_reaches_nothing_and_costs_one_notice(box: Sandbox) -> None:
    t, sid = open_held(box)
    marker = f"/tmp/moderated-flood-{os.getpid()}"
    try:
        line = f"echo flood >> {marker}\r"
        for _ in range(40):
            t.child.send(line * 100)  # ~130 KB through the PTY, the client and the master
        t.child.sendeof()
        t.child.sendintr()
        time.sleep(2)
        assert not os.path.exists(marker)
        assert t.child.isalive()
        t.expect("what you type is not sent")
        assert bytes(t.printed).count(b"what you type is not sent") == 1
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is True
        t.child.send("\r~.")
        t.wait(timeout=30)
    finally:
        t.close()
    kinds = wait_until(lambda: (lambda e: e if any(k == "end" for k, _, _ in e) else None)(events(box, sid)), 20)
    dropped = [d for k, _, d in kinds or [] if k == "held-input"]
    assert dropped and int(dropped[0].split()[0]) >= 40 * 100 * len(line) - 4096, kinds
    assert not os.path.exists(marker)


class Lines:
    """A stream's lines as they come, read by a thread of their own."""

    def __init__(self, stream: typing.IO[bytes]) -> None:
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, b"")), daemon=True)
        self._thread.start()

    def seen(self, text: str, timeout: float = 20) -> bool:
        return bool(wait_until(lambda: any(text.encode() in line for line in self.lines), timeout))


@pytest.mark.parametrize("passed", ["1", "0"], ids=["stdout-held-by-the-master", "stdout-kept-by-the-client"])
def test_the_owners_stdout_closed_while_held_reaches_the_worker_only_once_a_moderator_watches(
        box: Sandbox, passed: str) -> None:
    """`buildbot-shell -T m1` (a login shell fed from a pipe: its input held) runs a loop that prints; its stdout's
    reader goes away while the input is held. As OpenSSH's eow@openssh.com is a message of the client's channel, the
    close waits as the input does: the loop goes on (the operator is told why), and only once a moderator watches
    is the shell's stdout closed on the worker, where it meets SIGPIPE: the client exits 141."""
    env = dict(os.environ, SLAVESHELL_PASS_STDIO=passed)
    before = {s["id"] for s in sessions(box)}
    lead = Other(LEAD, box.socket)  # forked first: it must not hold the client's pipes
    proc = subprocess.Popen(shell_argv() + ["--socket", box.socket, "-T", "m1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        assert err.seen(HELD), err.lines
        sid = wait_until(lambda: next((str(s["id"]) for s in sessions(box) if s["worker"] == "m1"
                                       and s["id"] not in before), None), timeout=10)
        lead.tell("watch", sid)
        assert lead.wait_for("watch")["watch"] == "watching"
        assert err.seen("moderates this session: input reaches the worker"), err.lines
        proc.stdin.write(b"while :; do echo tick; sleep 0.2; done\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"tick\n"
        lead.tell("leave")
        lead.wait_for("left")
        assert wait_until(lambda: next(s for s in sessions(box) if s["id"] == sid)["held"] is True, 10)
        proc.stdout.close()  # as `| head -1` does: the next tick meets nobody
        assert err.seen("the close of your output reaches the worker once one does"), err.lines
        time.sleep(2)
        assert proc.poll() is None, err.lines  # the loop goes on: nothing reached the worker
        assert next(s for s in sessions(box) if s["id"] == sid)["held"] is True
        lead.tell("watch", sid)
        assert proc.wait(timeout=30) == 141, err.lines  # released: the shell's echo met SIGPIPE on the worker
    finally:
        lead.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    transcript = cli(box, "export", sid).stdout
    held = transcript.index("reader of it went away (held: it reaches the worker once a moderator watches)")
    assert held < transcript.index(f"moderator: {LEAD} (input released)", held), transcript


def test_what_the_open_itself_would_run_waits_for_an_approval_and_runs_nothing_meanwhile(box: Sandbox) -> None:
    """A command, or the operator's -e variables (PROMPT_COMMAND runs at the first prompt), would act before any
    moderator could watch: each waits for a moderator's approval (tests/e2e/test_approvals_e2e.py approves and
    denies them); nothing runs while it waits, and Ctrl-C withdraws it."""
    marker = f"/tmp/moderated-open-{os.getpid()}"
    for args in (["m1", "touch", marker], ["-T", "-e", f"PROMPT_COMMAND=touch {marker}", "m1"]):
        child = subprocess.Popen(shell_argv() + ["--socket", box.socket, *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            pending = wait_until(lambda: [r for r in json.loads(cli(box, "approvals", "--json").stdout)
                                          if r["mine"]], 30)
            assert pending and pending[0]["worker"] == "m1" and marker in str(pending[0]["what"]), pending
            time.sleep(1)
            assert not os.path.exists(marker)
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert_no_traceback(err)
        assert child.returncode != 0
        assert f"worker m1 is moderated: request {pending[0]['id']} waits for a moderator's approval" in err, err
    assert wait_until(lambda: not json.loads(cli(box, "approvals", "--json").stdout), 20)
    assert not os.path.exists(marker)


def test_fleet_runs_are_refused_to_a_user_without_the_run_right(box: Sandbox) -> None:
    # (root's run on the moderated m1 waits for an approval: tests/e2e/test_approvals_e2e.py.)
    # A local user on the socket's group with only the watch right: listed as refused, and audited.
    other = run_as(OUTSIDER, ["run", "--socket", box.socket, "--", "touch", "ran-by-outsider"])
    assert_no_traceback(other.stderr)
    assert other.returncode == 1, other.stdout + other.stderr
    assert other.stdout.strip().splitlines()[-1:] == ["1 refused"], other.stdout + other.stderr
    assert f"{OUTSIDER} (uid {pwd.getpwnam(OUTSIDER).pw_uid}) may not run on worker m1" in other.stdout
    assert any(op == OUTSIDER and "may not run on worker m1" in str(detail) for op, detail in refusals(box))
    assert not os.path.exists(os.path.join(box.worker_dir("m1"), "ran-by-outsider"))
