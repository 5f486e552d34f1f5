"""Issue 10, parts 2 and 4, as the issue tells them, before and after: run it against a tree of your choice.

    (ulimit -Sn 1024; PYTHONPATH=/path/to/tree python3 bench/bounds_demo.py)

A throwaway master (default ShellService options) with a normal worker w1 and a worker r1 that ignores the
master's close. It opens 1,100 idle connections to the shell socket and tries the CLI and a build; floods one
connection with 1,500 attach(watch) calls and never reads; then kills a session on r1. It prints what it saw;
nothing is asserted (tests/e2e/test_bounds_e2e.py asserts).
"""

from __future__ import annotations

import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pexpect

from slaveshell.client.sandbox import Sandbox

IGNORES_CLOSE = '\nfrom slave_side import session as _s\n_s.WorkerSession.close = lambda self, why="": None\n'
FLOOD = textwrap.dedent("""
    import sys, time
    from slaveshell.vocabulary import framing
    from slaveshell.client import connection as hop
    sock = hop.connect(sys.argv[1])
    sock.setblocking(True)
    sock.sendall(b"".join(framing.control(framing.Op.ATTACH, id=i, session=sys.argv[2], mode="watch")
                          for i in range(1, 1501)))
    print("sent", flush=True)
    time.sleep(600)  # never reads
""")


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", *args, "--socket", sb.socket],
                          capture_output=True, text=True, timeout=120)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def sessions_on(sb: Sandbox, worker: str) -> list[str]:
    return [s["id"] for s in json.loads(cli(sb, "sessions", "--json").stdout or "[]") if s["worker"] == worker]


def idle_connections(sb: Sandbox, pid: int) -> None:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    idle = []
    for _ in range(1100):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sb.socket)
        idle.append(s)
    time.sleep(5)
    print("1100 idle connections: master fds", fds, "->", len(os.listdir(f"/proc/{pid}/fd")))
    done = cli(sb, "workers")
    print("  slaveshell workers as root: rc", done.returncode, "|", (done.stderr or done.stdout).strip()[-200:])
    before = len(sb.builds())
    try:
        sb.send_change()
    except Exception as e:
        print("  sendchange to the master failed:", str(e).strip().splitlines()[-1][:160])
    deadline = time.time() + 40
    while time.time() < deadline and not [b for b in sb.builds()[before:] if b[1] is not None]:
        time.sleep(1)
    print("  a build while they are open (number, results):", sb.builds()[before:] or "none started in 40 s")
    for s in idle:
        s.close()
    time.sleep(3)


def attach_flood(sb: Sandbox, pid: int, root: str) -> None:
    seen = io.BytesIO()
    owner = pexpect.spawn("buildbot-shell", ["--socket", sb.socket, "w1", "seq 1 20000; sleep 90"], timeout=60)
    owner.logfile_read = seen
    owner.expect("20000")
    sid = sessions_on(sb, "w1")[0]
    before = rss_kib(pid)
    script = os.path.join(root, "flood.py")
    with open(script, "w") as f:
        f.write(FLOOD)
    flood = subprocess.Popen([sys.executable, script, sb.socket, sid], stdout=subprocess.PIPE, text=True)
    assert flood.stdout is not None
    flood.stdout.readline()
    owner.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=20)
    print(f"attach flood (1500 watch calls, never read): master RSS {before // 1024} MiB -> "
          f"{rss_kib(pid) // 1024} MiB")
    flood.kill()
    flood.wait()
    owner.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=5)
    owner.terminate(force=True)
    print("  owner's 'is now watching' notices:", seen.getvalue().count(b"is now watching"))
    time.sleep(3)


def rogue_close(sb: Sandbox) -> None:
    shell = subprocess.Popen(["buildbot-shell", "--socket", sb.socket, "r1", "sleep 307"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sids: list[str] = []
    for _ in range(60):
        sids = sessions_on(sb, "r1")
        if sids:
            break
        time.sleep(1)
    sid = sids[0]
    print("kill:", cli(sb, "kill", sid).stdout.strip())
    time.sleep(20)
    live = [s["state"] for s in json.loads(cli(sb, "sessions", "--json").stdout) if s["id"] == sid]
    print("  20 s after kill, session listed:", live or "gone")
    row = next(r for r in json.loads(cli(sb, "history", "--json").stdout) if r["id"] == sid)
    print("  audit row:", row["state"], "|", row["end_reason"])
    shell.kill()
    shell.wait()


def main() -> None:
    root = tempfile.mkdtemp(prefix="bounds-demo-")
    sb = Sandbox(root, workers=["w1", "r1"])
    sb.create()
    tac = os.path.join(sb.worker_dir("r1"), "buildbot.tac")
    with open(tac) as f:
        text = f.read().replace("\ns = Worker(", "\n" + IGNORES_CLOSE + "\ns = Worker(", 1)
    with open(tac, "w") as f:
        f.write(text)
    try:
        sb.start()
        # The master keeps the soft limit it was started with; this script needs more for its own sockets.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        pid = sb.master_pid()
        with open(f"/proc/{pid}/limits") as f:
            limit = next(line for line in f if "open files" in line).split()[3]
        print("code under test:", os.environ.get("PYTHONPATH", "(installed)"), "| master fd limit:", limit)
        idle_connections(sb, pid)
        attach_flood(sb, pid, root)
        rogue_close(sb)
    finally:
        sb.stop()


if __name__ == "__main__":
    main()
