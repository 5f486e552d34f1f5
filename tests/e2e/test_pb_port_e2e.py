"""Anyone on the master's PB port (the port every worker reaches, often over the internet), before logging in:
an unfinished Banana list of 600,000 items on one connection and 400 strings of 512 KiB on another no longer
make the master hold what they send (they grew it by 400 MB and stayed open): each connection is closed once it
passes what Banana may hold before login (slaveshell.plumbing.banana_bounds), with one log line and nothing of what it
sent; real workers still attach and build."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from twisted.spread import banana

from slaveshell.client.sandbox import Sandbox
from slaveshell.plumbing.banana_bounds import LOGGED_IN, PRE_LOGIN

from .conftest import shell_argv, wait_until

pytestmark = pytest.mark.e2e

# A hostile worker: it logs in with a configured worker's name and password, then sends one message that never
# ends (40 strings of 512 KiB of a list of 41; or 1,200,000 small items in two lists of a list of 3).
ROGUE_WORKER = """import sys
from twisted.cred import credentials
from twisted.internet import reactor
from twisted.spread import banana, pb

port, name, kind = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Mind(pb.Referenceable):
    def remote_print(self, *a, **kw): pass
    def remote_getWorkerInfo(self, *a, **kw): return {}
    def remote_getCommands(self, *a, **kw): return {}
    def remote_setBuilderList(self, *a, **kw): return {}
    def remote_getVersion(self, *a, **kw): return "4.3.0"

def header(n):
    out = bytearray(); banana.int2b128(n, out.extend); return bytes(out) + banana.LIST

f = pb.PBClientFactory()
reactor.connectTCP("127.0.0.1", port, f)

def logged(perspective):
    print("logged in", flush=True)
    t = perspective.broker.transport
    if kind == "strings":
        big = b"s" * (512 * 1024)
        for _ in range(40):
            t.write(header(41) if _ == 0 else b"")
            t.write(banana.encode(big))
    else:
        t.write(header(3) + header(600_000) + banana.encode(1) * 600_000 + header(600_000)
                + banana.encode(2) * 600_000)
    print("written", flush=True)

def lost(*_):
    print("closed", flush=True)
    reactor.stop()

def failed(failure):
    print("login failed", failure.getErrorMessage(), flush=True)
    reactor.stop()

f.login(credentials.UsernamePassword(name.encode(), b"pass"), client=Mind()).addCallbacks(
    lambda p: (p.notifyOnDisconnect(lost), logged(p)), failed)
reactor.callLater(60, lambda: (print("still open", flush=True), reactor.stop()))
reactor.run()
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def list_header(n: int) -> bytes:
    out = bytearray()
    banana.int2b128(n, out.extend)
    return bytes(out) + banana.LIST


def attack(port: int, pieces: list[bytes], outcome: dict[str, object], name: str) -> None:
    """Send `pieces` on a new connection to the PB port until the master closes it; note how much went, and
    whether the master closed it (a reset or the end of its stream), within 30 s."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                sent += len(piece)
            # Everything went (the kernel took it): the master must close it all the same.
            while sock.recv(65536):
                pass
            outcome[name] = ("closed", sent)
        except (ConnectionResetError, BrokenPipeError):
            outcome[name] = ("closed", sent)
        except TimeoutError:
            outcome[name] = ("open", sent)


def test_what_anyone_on_the_pb_port_may_make_the_master_hold_before_login_is_bounded(sandbox: Sandbox):
    sb = sandbox
    pid = sb.master_pid()
    before = rss_mib(pid)
    log = os.path.join(sb.master_dir, "twistd.log")
    with open(log, "rb") as f:
        start = len(f.read())
    big = os.urandom(512 * 1024)
    # What the attacker sent: 600,000 small items of an unfinished list; 400 strings of 512 KiB of one.
    items = [list_header(600_001)] + [banana.encode(1) * 10_000] * 60
    strings = [list_header(401)] + [banana.encode(big)] * 400
    outcome: dict[str, object] = {}
    threads = [threading.Thread(target=attack, args=(sb.port, items, outcome, "items")),
               threading.Thread(target=attack, args=(sb.port, strings, outcome, "strings"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    grown = rss_mib(pid) - before
    print(f"PB port before login: {outcome}; the master grew by {grown:.1f} MiB")
    # Both closed by the master, long before they were through (the kernel's buffers take a few MiB at most).
    assert outcome["items"][0] == "closed" and outcome["strings"][0] == "closed", outcome
    assert outcome["strings"][1] < 64 * 1024 * 1024, outcome
    assert grown < 16, f"the master grew by {grown:.1f} MiB"
    # One line each: who, and which bound; nothing of what they sent.
    with open(log, "rb") as f:
        f.seek(start)
        added = f.read().decode("utf-8", "replace")
    lines = [line for line in added.splitlines() if "Banana may hold" in line]
    assert len(lines) == 2, lines
    assert all("127.0.0.1:" in line and "before logging in" in line and f"{PRE_LOGIN.bytes} bytes" in line
               for line in lines), lines
    assert "Traceback" not in added and big[:8].hex() not in added
    # A logged-in worker's messages are not bounded as before login: a session's 512 KiB output messages pass.
    done = subprocess.run(shell_argv() + ["--socket", sb.socket, "-T", "w1", "--",
                                          "head -c 4000000 /dev/zero | tr '\\0' x"], capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout == b"x" * 4_000_000, done.stderr
    # Workers still attach (one reconnects) and build.
    sb.stop_worker("w2")
    sb.start_worker("w2")
    sb.wait_for_workers(["w1", "w2"], timeout=90)
    done = len([b for b in sb.builds() if b[1] is not None])
    sb.send_change()
    assert wait_until(lambda: len([b for b in sb.builds() if b[1] is not None]) > done, timeout=90), sb.log_tail()
    assert sb.builds()[-1][1] == 0


def test_a_hostile_worker_cannot_make_the_master_hold_more_than_its_connections_bound(sandbox: Sandbox, tmp_path):
    sb = sandbox
    pid = sb.master_pid()
    script = tmp_path / "rogue_worker.py"
    script.write_text(ROGUE_WORKER)
    log = os.path.join(sb.master_dir, "twistd.log")
    with open(log, "rb") as f:
        start = len(f.read())
    sb.stop_worker("w2")
    try:
        before = rss_mib(pid)
        for kind in ("strings", "items"):
            done = subprocess.run([sys.executable, str(script), str(sb.port), "w2", kind], capture_output=True,
                                  text=True, timeout=120)
            assert done.stdout.split() == ["logged", "in", "written", "closed"], (kind, done.stdout, done.stderr)
        grown = rss_mib(pid) - before
        print(f"hostile worker: the master grew by {grown:.1f} MiB")
        assert grown < 48, grown
        with open(log, "rb") as f:
            f.seek(start)
            added = f.read().decode("utf-8", "replace")
        lines = [line for line in added.splitlines() if "Banana may hold" in line]
        assert len(lines) == 2 and all("after login" in line for line in lines), lines
        assert f"{LOGGED_IN.items} items" in lines[0] and "Traceback" not in added
    finally:
        sb.start_worker("w2")
    # The real worker logs in again, and w1 still builds.
    sb.wait_for_workers(["w1", "w2"], timeout=90)
    done_builds = len([b for b in sb.builds() if b[1] is not None])
    sb.send_change()
    assert wait_until(lambda: len([b for b in sb.builds() if b[1] is not None]) > done_builds, timeout=90)
    assert sb.builds()[-1][1] == 0


def test_a_large_download_from_an_honest_worker_keeps_its_connection(sandbox: Sandbox, tmp_path):
    """A copy's chunks come back to back: the master's reads seldom end where a message does, and the finished
    messages before the one in progress are not counted against the connection's bound (a 96 MiB download closed
    the worker's connection at 16 MiB)."""
    sb = sandbox
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(4 * 1024 * 1024))
    log = os.path.join(sb.master_dir, "twistd.log")
    with open(log, "rb") as f:
        start = len(f.read())
    for i in range(2):
        dest = tmp_path / f"dest{i}"
        dest.mkdir()
        done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", sb.socket,
                               f"w2:{src}", str(dest)], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert (dest / "big.bin").stat().st_size == src.stat().st_size
    with open(log, "rb") as f:
        f.seek(start)
        added = f.read().decode("utf-8", "replace")
    assert "Banana may hold" not in added and "Traceback" not in added
