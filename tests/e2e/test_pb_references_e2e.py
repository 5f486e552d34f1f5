"""Long run on one worker connection: thousands of sessions and hundreds of copies leave the PB reference tables
of the worker's link (the master's and the worker's), the descriptors and the memory of both processes where
they started. Twisted's PB refuses to export more than ``pb.MAX_BROKER_REFS`` (1024) objects per connection: one
reference kept per session or copy is a worker that stops serving at its 1,024th session ("Maximum PB reference
count exceeded") until it reconnects.

Sessions go through the master's framed door as buildbot-shell's do (open, the worker's exit; a stdlib client
here, so that no interpreter starts per session: thousands fit CI's time), one at a time and 20 at a time; copies
are `slaveshell cp` (its client in this process, and 20 processes at once). The tables are read from the master's
``workers`` answer (``pb_references``: what the master exports to the worker now, and what the worker said it
exported at its last open answer).

SLAVESHELL_PB_SESSIONS and SLAVESHELL_PB_COPIES change the counts (bench/pb_soak.py runs the same for longer).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.copy_cli import cmd_cp, parse
from slaveshell.client.sandbox import Sandbox
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.protocol import OpenRequest

pytestmark = pytest.mark.e2e

# Half of them one at a time, half AT_ONCE at a time: each half past pb.MAX_BROKER_REFS (1024) on its own.
SESSIONS = int(os.environ.get("SLAVESHELL_PB_SESSIONS", "2100"))
COPIES = int(os.environ.get("SLAVESHELL_PB_COPIES", "300"))
AT_ONCE = 20
REQUEST = OpenRequest(worker="w1", command="true", pty=False).to_wire()


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A master and one worker of their own: the worker takes AT_ONCE sessions and transfers at once, the master
    as many connections from one user as AT_ONCE clients may hold while it has yet to see the last ones close."""
    sb = Sandbox(str(tmp_path_factory.mktemp("pbrefs")), workers=["w1"],
                 opt_in_args=f"max_sessions={AT_ONCE + 4}", service_kwargs=f"max_connections_per_uid={4 * AT_ONCE}")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


def run_session(path: str, request: object = REQUEST) -> int | None:
    """One session through the master's framed door, as buildbot-shell opens it: the exit code the worker
    reported. AssertionError when the master refuses it (its message)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        sock.sendall(framing.MAGIC)
        head = b""
        while framing.MAGIC not in head:
            more = sock.recv(4096)
            assert more, f"the master closed the connection: {head!r}"
            head += more
        rest = head[head.index(framing.MAGIC) + len(framing.MAGIC):]
        decoder = framing.Decoder(refused=frozenset({FrameType.INPUT}), max_control=framing.MAX_ANSWER)
        sock.sendall(framing.control(Op.OPEN, id=1, request=request))
        while True:
            for frame in decoder.feed(rest):
                if frame.type is not FrameType.CONTROL:
                    continue
                message = framing.parse_control(frame.payload, framing.FROM_MASTER)
                if message.op is Op.ANSWER:
                    assert message.get("ok"), message.get("error")
                elif message.op is Op.EXIT:
                    code = message.get("code")
                    return code if isinstance(code, int) else None
            rest = sock.recv(65536)
            assert rest, "the master closed the connection before the session's exit"


def references(sb: Sandbox) -> dict[str, int | None]:
    (row,) = [w for w in sb.workers_status() if w["name"] == "w1"]
    refs = row["pb_references"]
    assert isinstance(refs, dict), row
    return refs


def settled(sb: Sandbox, master: int, timeout: float = 30) -> dict[str, int | None]:
    """The tables once the master's is back at `master` (a decref is a message: it may still be on its way)."""
    deadline = time.monotonic() + timeout
    refs = references(sb)
    while refs["master"] != master and time.monotonic() < deadline:
        time.sleep(0.2)
        refs = references(sb)
    return refs


def worker_table(sb: Sandbox) -> int | None:
    """What the worker's broker exported at a new session's open (before its own handle)."""
    assert run_session(sb.socket) == 0
    return references(sb)["worker"]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _pids(sb: Sandbox) -> tuple[int, int]:
    with open(os.path.join(sb.worker_dir("w1"), "twistd.pid")) as f:
        return sb.master_pid(), int(f.read().strip())


def _usage(sb: Sandbox) -> dict[str, float]:
    master, worker = _pids(sb)
    return {"master fds": _fds(master), "worker fds": _fds(worker), "master MB": _rss_mb(master),
            "worker MB": _rss_mb(worker)}


def _sessions(sb: Sandbox, count: int, at_once: int) -> None:
    """`count` sessions, `at_once` at a time, each exiting 0."""
    failures: list[str] = []
    per_thread = [count // at_once + (1 if i < count % at_once else 0) for i in range(at_once)]

    def loop(n: int) -> None:
        try:
            for _ in range(n):
                code = run_session(sb.socket)
                assert code == 0, f"exit code {code}"
        except Exception as e:  # reported below, with the others
            failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=loop, args=(n,)) for n in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not failures, failures[:3]


def _copy(sb: Sandbox, *paths: str) -> int:
    return cmd_cp(parse(["-q", *paths]), sb.socket)


def test_thousands_of_sessions_and_copies_leave_the_reference_tables_as_they_were(long_run: Sandbox,
                                                                                    tmp_path) -> None:
    sb = long_run
    src = tmp_path / "up.txt"
    src.write_bytes(b"x" * 3000)
    down = tmp_path / "down"
    down.mkdir()
    # Warm up: a session, a copy each way (caches, the first transcript, the worker's first file).
    assert run_session(sb.socket) == 0
    assert _copy(sb, str(src), "w1:up.txt") == 0
    assert _copy(sb, "w1:up.txt", str(down / "warm.txt")) == 0
    start = settled(sb, references(sb)["master"] or 0)
    master_start = start["master"]
    assert master_start is not None
    worker_start = worker_table(sb)
    start = settled(sb, master_start)
    usage = _usage(sb)
    began = time.monotonic()

    # Past pb.MAX_BROKER_REFS in each mode, on the same connection.
    _sessions(sb, SESSIONS // 2, 1)
    _sessions(sb, SESSIONS - SESSIONS // 2, AT_ONCE)
    sessions_took = time.monotonic() - began

    # Copies: in this process one after the other, each way; then AT_ONCE processes at once, each way.
    began = time.monotonic()
    one_by_one = COPIES - 2 * AT_ONCE
    for i in range(one_by_one):
        if i % 2:
            assert _copy(sb, "w1:up.txt", str(down / f"{i}.txt")) == 0, i
        else:
            assert _copy(sb, str(src), "w1:up.txt") == 0, i
    for argv in ([str(src), "w1:up.txt"], None):
        procs = [subprocess.Popen([sys.executable, "-m", "slaveshell.client.copy_cli", "--socket", sb.socket, "-q",
                                   *(argv or ["w1:up.txt", str(down / f"p{i}.txt")])],
                                  stderr=subprocess.PIPE, text=True) for i in range(AT_ONCE)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    copies_took = time.monotonic() - began

    end = settled(sb, master_start)
    assert end["master"] == master_start, (start, end)
    assert worker_table(sb) == worker_start, (worker_start, end)
    # A session still opens after all that (the 1,024th used to fail), and the tables are still where they were.
    assert settled(sb, master_start)["master"] == master_start
    after = _usage(sb)
    print(f"pb references: {SESSIONS} sessions in {sessions_took:.1f} s, {COPIES} copies in {copies_took:.1f} s; "
          f"master table {master_start} -> {end['master']}, worker's {worker_start}; "
          f"before {json.dumps(usage)}; after {json.dumps(after)}")
    assert after["master fds"] <= usage["master fds"] + 5 and after["worker fds"] <= usage["worker fds"] + 5
    assert after["master MB"] <= usage["master MB"] + 32 and after["worker MB"] <= usage["worker MB"] + 32
