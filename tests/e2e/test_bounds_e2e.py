"""Issue 10, parts 2 and 4, against a real master with small bounds: one local user cannot exhaust the master
(connections, views, output it does not read, notices), and a worker that ignores `close` cannot keep its
session alive."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary.framing import MAGIC

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

PER_UID = 6
CLOSE_DEADLINE = 4

# Worker 'r1' opted in, then ignores the master's close: its sessions run on, and it still answers pings.
IGNORES_CLOSE = '''
# A rogue worker for the test: it never ends a session when the master asks.
from slave_side import session as _session
_session.WorkerSession.close = lambda self, why="": None
'''

# A watch-only flood: 1,500 attach(watch) calls on one connection by a client that does not read until
# it has sent them all; then it counts the answers.
FLOOD = textwrap.dedent("""
    import sys, time
    from slaveshell.vocabulary import framing
    from slaveshell.client import connection as hop

    sock = hop.connect(sys.argv[1])
    sock.setblocking(True)
    n = int(sys.argv[3])
    sock.sendall(b"".join(framing.control(framing.Op.ATTACH, id=i, session=sys.argv[2], mode="watch")
                          for i in range(1, n + 1)))
    print("sent", flush=True)
    connection = hop.Connection(sock)
    sock.settimeout(30)
    answers = []
    while len(answers) < n:
        for frame in connection.receive():
            if frame.type is framing.FrameType.CONTROL:
                message = hop.parse(frame)
                if message.op is framing.Op.ANSWER:
                    answers.append(message)
    ok = sum(1 for a in answers if a.get("ok") is True)
    refusals = {str(a.get("error")) for a in answers if a.get("ok") is not True}
    print("answers", len(answers), "ok", ok, "refused", "|".join(sorted(refusals)), flush=True)
    time.sleep(600)
""")

# A viewer that watches, then stops reading; it says when its connection is lost.
SLOW_WATCHER = textwrap.dedent("""
    import sys, time
    from slaveshell.vocabulary import framing
    from slaveshell.client import connection as hop

    sock = hop.connect(sys.argv[1])
    sock.setblocking(True)
    connection = hop.Connection(sock)
    sock.sendall(framing.control(framing.Op.ATTACH, id=1, session=sys.argv[2], mode="watch"))
    reply = None
    while reply is None:
        for frame in connection.receive():
            if frame.type is framing.FrameType.CONTROL:
                message = hop.parse(frame)
                if message.op is framing.Op.ANSWER:
                    reply = message
    print("watching", reply.get("ok"), flush=True)
    time.sleep(float(sys.argv[3]))  # not reading: the master's buffer for this connection fills
    # Read again: a connection the master dropped then shows as lost.
    sock.settimeout(60)
    try:
        while True:
            connection.receive()
    except hop.HopError as e:
        print("timeout" if "timed out" in str(e) else "dropped", flush=True)
""")


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(str(tmp_path_factory.mktemp("bounds")), workers=["b1", "r1"],
                 service_kwargs=(f"max_connections_per_uid={PER_UID}, max_connections=12, "
                                 "max_viewers_per_session=4, max_viewers_per_operator=6, "
                                 f"max_connection_buffer=512 * 1024, write_stall_timeout=5, "
                                 f"close_deadline={CLOSE_DEADLINE}"))
    sb.create()
    tac = os.path.join(sb.worker_dir("r1"), "buildbot.tac")
    with open(tac) as f:
        text = f.read().replace("\ns = Worker(", "\n" + IGNORES_CLOSE + "\ns = Worker(", 1)
    with open(tac, "w") as f:
        f.write(text)
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", *args, "--socket", sb.socket],
                          capture_output=True, text=True, timeout=60)


def events(sb: Sandbox, kind: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT operator, detail FROM slaveshell_events WHERE kind = ? ORDER BY id",
                               (kind,)))
    finally:
        db.close()


class RecordingTerminal(Terminal):
    """A Terminal that also keeps everything it was sent, to count notices over a whole test."""

    seen = b""

    def write(self, data: bytes) -> None:
        self.seen += data
        super().write(data)


def read_until_quiet(s: socket.socket) -> tuple[bytes, bool]:
    """What the master sent on `s` until the close (True: a reset too, when it closed with our magic unread)
    or a second of silence once it sent something (False); a master that sends nothing is given 15 s (a busy
    machine may take that long to accept a burst of connections)."""
    data = b""
    while True:
        s.settimeout(1.0 if data else 15.0)
        try:
            chunk = s.recv(4096)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def session_id(sb: Sandbox, worker: str) -> str:
    found = wait_until(lambda: [s["id"] for s in json.loads(cli(sb, "sessions", "--json").stdout or "[]")
                                if s["worker"] == worker], timeout=30)
    assert found, cli(sb, "sessions", "--json")
    return str(found[0])


def test_idle_connections_beyond_the_bound_per_uid_are_refused_and_the_master_keeps_serving(bounded):
    sb = bounded
    pid = sb.master_pid()
    before = open_fds(pid)
    idle: list[socket.socket] = []
    try:
        # A user with no rights at all opens many idle connections (the 1,100, scaled to the bound).
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sb.socket)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused and closed already
                s.sendall(MAGIC)
            idle.append(s)
        # The refused ones get one line and the close; the first PER_UID are served (the door's magic).
        answers = [read_until_quiet(s) for s in idle]
        refused = [data for data, closed in answers if data.startswith(b"slaveshell: refused: ")]
        assert len(refused) == 40 - PER_UID
        assert [data for data, closed in answers if not closed] == [MAGIC] * PER_UID
        assert all(closed for data, closed in answers if data in refused)
        assert all(r.startswith(b"slaveshell: refused: root already has 6 connections to the shell socket")
                   and r.endswith(b"\n") for r in refused), refused[:2]
        # The master holds a bounded number of descriptors for them, not one per connection.
        assert open_fds(pid) - before <= PER_UID + 4
        # A client of the same user is refused with the reason, and says it.
        done = cli(sb, "workers")
        assert done.returncode != 0
        assert "the master refused the connection: root already has 6 connections to the shell socket" \
            in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        # Audited, at a bounded rate (one event per user and kind per interval, the rest counted).
        audited = wait_until(lambda: events(sb, "refused"), timeout=15)
        assert audited and audited[0][0] == "root" and "connection refused: root already has 6" in audited[0][1]
        assert len(audited) <= 3
    finally:
        for s in idle:
            s.close()
    # Once they are closed, the user is served again.
    assert wait_until(lambda: cli(sb, "workers", "--json").returncode == 0, timeout=15)
    # The master's own work goes on: a worker reconnects and a build runs.
    sb.stop_worker("b1")
    sb.start_worker("b1")
    sb.wait_for_workers(["b1"], timeout=60)
    sb.send_change()
    assert wait_until(lambda: [b for b in sb.builds() if b[1] is not None], timeout=90), sb.log_tail()
    assert sb.builds()[-1][1] == 0


def test_an_attach_flood_by_a_client_that_never_reads_is_bounded(bounded, tmp_path):
    sb = bounded
    owner = RecordingTerminal(sb, ["b1"]).ready()
    flood = None
    try:
        # Enough output that every new viewer is first sent the recent screen (64 KiB).
        owner.run("seq 1 30000 | tail -n 1")
        owner.child.sendline("seq 1 20000 >/dev/null; seq 1 20000")
        owner.expect("\r\n20000\r\n")
        sid = session_id(sb, "b1")
        pid = sb.master_pid()
        rss_before = rss_kib(pid)
        script = tmp_path / "flood.py"
        script.write_text(FLOOD)
        flood = subprocess.Popen([sys.executable, str(script), sb.socket, sid, "1500"], stdout=subprocess.PIPE,
                                 text=True)
        assert flood.stdout is not None and flood.stdout.readline().strip() == "sent"
        # One view, and 1,499 refusals with the reason (a connection holds one view), nothing audited for them.
        counted = flood.stdout.readline().strip()
        assert counted == "answers 1500 ok 1 refused bad request: this connection already has a session", counted
        assert len(events(sb, "refused")) <= 4
        growth_mib = (rss_kib(pid) - rss_before) / 1024
        assert growth_mib < 32, growth_mib
        # The owner was told of one watcher, not of 1,500; the session still serves its owner.
        assert owner.run("echo still-here").strip() == "still-here"
        assert owner.seen.count(b"is now watching") == 1
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        owner.child.sendline("exit")
        owner.wait()


def test_a_viewer_that_stops_reading_is_dropped(bounded, tmp_path):
    sb = bounded
    owner = Terminal(sb, ["b1"]).ready()
    try:
        sid = session_id(sb, "b1")
        script = tmp_path / "slow.py"
        script.write_text(SLOW_WATCHER)
        watcher = subprocess.Popen([sys.executable, str(script), sb.socket, sid, "20"], stdout=subprocess.PIPE,
                                   text=True)
        assert watcher.stdout is not None and watcher.stdout.readline().split() == ["watching", "True"]
        # The session produces more than the watcher's connection may hold unread.
        owner.run("head -c 1100000 /dev/zero | base64", timeout=120)
        assert watcher.stdout.readline().strip() == "dropped"
        watcher.wait(timeout=60)
        # The owner kept its session throughout.
        assert owner.run("echo owner-fine").strip() == "owner-fine"
    finally:
        owner.child.sendline("exit")
        owner.wait()


def test_a_worker_that_ignores_close_loses_the_session_within_the_deadline(bounded):
    sb = bounded
    shell = subprocess.Popen(shell_argv() + ["--socket", sb.socket, "r1", "sleep 307"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker_pid = int(open(os.path.join(sb.worker_dir("r1"), "twistd.pid")).read())
    try:
        sid = session_id(sb, "r1")
        done = cli(sb, "kill", sid)
        assert done.returncode == 0, done.stderr
        # Gone from the live sessions once the deadline passes, though the worker never confirmed.
        assert wait_until(lambda: sid not in cli(sb, "sessions", "--json").stdout, timeout=60)
        out, err = shell.communicate(timeout=30)
        assert shell.returncode == 255
        reason = f"worker r1 did not confirm the end within {CLOSE_DEADLINE} s"
        assert reason in err, err
        # The audit row is closed with the reason.
        rows = json.loads(cli(sb, "history", "--json", "--worker", "r1").stdout)
        row = next(r for r in rows if r["id"] == sid)
        assert row["state"] != "running"
        assert row["end_reason"] == f"killed by root; {reason}", row
        # The slot is free: the same operator opens another session on that worker.
        again = subprocess.run(shell_argv() + ["--socket", sb.socket, "b1", "echo slot-free"],
                               capture_output=True, text=True, timeout=60)
        assert again.stdout.strip() == "slot-free", again.stderr
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        # The rogue worker's own process is ours to end (by pid).
        children = subprocess.run(["pgrep", "-P", str(worker_pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            try:
                os.killpg(int(child), signal.SIGKILL)
            except OSError:
                pass


# 40,000 pipelined calls of one kind on one connection (sent by one thread, as fast as the master takes them),
# while the main thread reads the answers; once it has `shown` of them it prints how many were ok, how far an
# answer ran ahead of the others, how many bytes of the calls the master had taken by then, and the errors.
PIPELINED_FLOOD = textwrap.dedent("""
    import sys, threading, time
    from slaveshell.vocabulary import framing
    from slaveshell.client import connection as hop

    sock = hop.connect(sys.argv[1])
    sock.setblocking(True)
    n, shown = int(sys.argv[2]), int(sys.argv[4])
    op = framing.Op(sys.argv[3])
    # Small answers: a client that reads its answers slower than they come is dropped (max_connection_buffer).
    fields = {"history": {"filters": {"limit": 1}}, "search": {"text": "quiet", "filters": {"limit": 1}},
              "transcript": {"session": "0123456789ab", "offset": 0}}[op.value]
    frames = b"".join(framing.control(op, id=i, **fields) for i in range(1, n + 1))
    taken = [0]

    def send():
        view = memoryview(frames)
        try:
            while taken[0] < len(frames):
                taken[0] += sock.send(view[taken[0]:taken[0] + 65536])
        except OSError:
            pass  # the master closed the connection

    print("ready", len(frames), flush=True)
    sys.stdin.readline()
    threading.Thread(target=send, daemon=True).start()
    connection = hop.Connection(sock)
    sock.settimeout(120)
    ids, ok, errors = [], 0, set()
    while len(ids) < shown:
        for frame in connection.receive():
            if frame.type is framing.FrameType.CONTROL:
                message = hop.parse(frame)
                if message.op is framing.Op.ANSWER:
                    ids.append(message.get("id"))
                    if message.get("ok") is True or op is framing.Op.TRANSCRIPT:
                        ok += 1
                    else:
                        errors.add(str(message.get("error")))
    ids = ids[:shown]
    # How far an answer ran ahead of the answers before it: at most max_calls_in_progress - 1 calls were in
    # progress beside it when it started.
    ahead = max(max(ids[:i + 1]) - (i + 1) for i in range(len(ids)))
    print("answers", len(ids), "ok", min(ok, shown), "ahead", ahead, "taken", taken[0],
          "errors", "|".join(sorted(errors)), flush=True)
    time.sleep(600)
""")


def timed_echo(sb: Sandbox, text: str) -> float:
    started = time.monotonic()
    done = subprocess.run(shell_argv() + ["--socket", sb.socket, "b1", "--", "echo", text], capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0 and done.stdout.strip() == text, (done.returncode, done.stdout, done.stderr)
    return elapsed


@pytest.mark.parametrize("kind", ["history", "search", "transcript"])
def test_pipelined_calls_are_served_a_few_at_a_time_and_do_not_delay_a_session(bounded, tmp_path, kind):
    """A local user sends 40,000 pipelined `history` calls on one connection (and as a sweep over the kinds that
    read the audit index, `search` and `transcript`): the master works on at most max_calls_in_progress of them at
    once and reads the connection no further meanwhile (the sender is held back by the kernel), and root's
    `buildbot-shell b1 -- echo` opens about as fast as without the flood: the session's own index row never waits
    behind the reads."""
    sb = bounded
    for _ in range(3):  # some rows to read, and the echo's time without a flood
        quiet = timed_echo(sb, "quiet")
    pid = sb.master_pid()
    rss_before = rss_kib(pid)
    script = tmp_path / "pipelined_flood.py"
    script.write_text(PIPELINED_FLOOD)
    flood = subprocess.Popen([sys.executable, str(script), sb.socket, "40000", kind, "1000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None and flood.stdin is not None
        ready = flood.stdout.readline().split()
        assert ready[0] == "ready", ready
        flood.stdin.write("go\n")
        flood.stdin.flush()
        time.sleep(0.5)  # the master is serving the calls
        during = [timed_echo(sb, f"during-{i}") for i in range(3)]
        assert max(during) < quiet + 3.0, (quiet, during)
        out = flood.stdout.readline().split(" ", 9)
        assert out[:4] == ["answers", "1000", "ok", "1000"], out
        assert out[4] == "ahead" and int(out[5]) <= 3, out  # at most 4 calls in progress at once
        assert int(out[7]) < int(ready[1]), out  # the master had not taken all the calls: it reads as it serves
        assert (rss_kib(pid) - rss_before) / 1024 < 32
    finally:
        flood.kill()
        flood.wait()
    assert timed_echo(sb, "after") < quiet + 3.0




def _hold_connections(path: str, uid: int, count: int, report: int) -> None:
    """In a forked child: become `uid`, open `count` framed connections to the socket and keep them; write how
    many the master kept open to the pipe `report`."""
    try:
        os.setgid(uid)
        os.setuid(uid)
        held = []
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused and closed already
                s.sendall(MAGIC)
            held.append(s)
        kept = 0
        for s in held:  # each answered: the door's magic back (kept) or the refusal and the close
            s.settimeout(15.0)  # a busy machine may take seconds to answer a burst
            try:
                data = s.recv(4096)
            except TimeoutError:
                data = MAGIC  # no answer yet: held all the same
            except ConnectionResetError:
                data = b""
            kept += 1 if data.startswith(MAGIC) else 0
        os.write(report, f"{kept}\n".encode())
        time.sleep(120)
    finally:
        os._exit(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as eight other local users")
def test_local_users_without_a_right_cannot_take_the_places_of_operators(tmp_path):
    """The socket open to a group: 8 of its users whom no policy rule names each held 32 idle framed connections,
    all 256 places, and root got `the shell socket already has 256 connections`."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="slaveshell-noright-")  # pytest's tmp_path is behind a 0700 directory
    os.chmod(top, 0o755)
    sb = Sandbox(os.path.join(top, "sb"), workers=["w1"], service_kwargs="policy=[{'users': [0]}]")
    sb.create()
    sb.start()
    children: list[tuple[int, int]] = []
    try:
        os.chmod(os.path.dirname(sb.socket), 0o755)
        os.chmod(sb.socket, 0o666)
        for i in range(8):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _hold_connections(sb.socket, 61000 + i, 32, w)
            os.close(w)
            children.append((pid, r))
        kept = [int(os.read(r, 100).decode().strip() or -1) for _, r in children]
        assert all(0 <= k <= 2 for k in kept) and sum(kept) <= 8, kept
        done = subprocess.run([*shell_argv(), "--socket", sb.socket, "-T", "w1", "--", "echo", "operator-in"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "operator-in", done.stderr
    finally:
        for pid, r in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
        sb.stop()
        shutil.rmtree(top, ignore_errors=True)
