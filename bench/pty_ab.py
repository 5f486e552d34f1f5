"""PTY throughput of `buildbot-shell -t w1 -- cat FILE`, A/B between source trees, with each process's CPU; and
keystroke echo, measured as bench/run.py measures it; with --pipes, `-T` throughput instead.

    python3 bench/pty_ab.py --tree base=/work/wt/x-base --tree new=. --rounds 5 --size-mb 200
    python3 bench/pty_ab.py --tree new=. --rounds 1 --keep   # one tree; prints the sandbox to attach py-spy
    python3 bench/pty_ab.py --tree base=../x-base --tree new=. --echo 1000 --rounds 4   # echo instead: us
    python3 bench/pty_ab.py --tree base=../x-base --tree new=. --tree ssh= --rounds 8   # and `ssh -tt` (run.py's sshd)
    python3 bench/pty_ab.py --tree base=../x-base --tree new=. --kind binary   # fair.py's content kinds
    python3 bench/pty_ab.py --tree base=../x-base --tree new=. --pipes --kind binary   # -T, stdout a pipe to cat

One throwaway master and worker per tree (each started with PYTHONPATH at its tree, so its master, worker and
client run that tree's code), alternated round by round (a, b, a, b...: the machine's load drifts). Each round
times the whole client (session open included, as bench/run.py does) and reads utime+stime of the master, the
worker, the remote `cat` (the worker's reaped children) and the client, in CPU seconds per GB moved. Output goes to
/dev/null: the client's stdout is not a terminal (its own writes are the same either way). With --pipes: `-T` (and
`ssh -T`), the client's stdout a pipe that `cat > /dev/null` reads, as bench/fair.py's `-T` rows (the client passes
that pipe to the master, which writes it; the client's CPU then includes the reader's).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pexpect

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


class Tree:
    def __init__(self, label: str, spec: str, work: Path) -> None:
        path, *assignments = spec.split(":")
        self.label = label
        self.path = Path(path).resolve()
        self.env = dict(os.environ, PYTHONPATH=str(self.path), **dict(a.split("=", 1) for a in assignments))
        self.root = work / label
        self.results: list[dict[str, float]] = []
        self.ssh: Any = None  # bench/run.py's OpenSSH, for the label "ssh"
        self.pipes = False  # -T with stdout a pipe (--pipes), rather than -t to /dev/null

    def start(self) -> None:
        if self.label == "ssh":
            sys.path.insert(0, str(ROOT / "bench"))
            from run import OpenSSH

            self.root.mkdir(parents=True)
            self.ssh = OpenSSH(self.root)
            self.ssh.start()
            self.master = self.worker = 0
            self.socket = ""
            return
        code = (f"import sys; sys.path.insert(0, {str(self.path)!r}); import slaveshell.client.sandbox as s; "
                f"b = s.Sandbox({str(self.root)!r}, workers=['w1']); b.create(); b.start(); "
                "print(b.socket, b.master_pid(), open(b.worker_dir('w1') + '/twistd.pid').read().strip())")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, check=True, capture_output=True,
                             text=True).stdout.split()
        self.socket, self.master, self.worker = out[0], int(out[1]), int(out[2])

    def stop(self) -> None:
        if self.ssh is not None:
            self.ssh.stop()
            return
        for pid in (self.worker, self.master):
            try:
                os.kill(pid, 15)
            except OSError:
                pass

    def argv(self, command: str) -> list[str]:
        if self.ssh is not None:
            return list(self.ssh.argv(command, tty=not self.pipes))
        tool = shutil.which("buildbot-shell")
        head = [tool] if tool else [sys.executable, "-m", "slaveshell.shell_cli"]
        return head + ["--socket", self.socket, "-T" if self.pipes else "-t", "w1", "--", command]

    def echo(self, keys: int) -> None:
        """`keys` keystrokes 2 ms apart, as bench/run.py's echo_rtts: median and p99 round trip (us)."""
        argv = self.argv("stty -icanon; exec cat > /dev/null")
        child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), env=dict(self.env, TERM="xterm"), timeout=30)
        time.sleep(1.0)
        from run import key_rtts

        rtts = [seconds * 1e6 for seconds in key_rtts(child.child_fd, keys)]
        child.sendcontrol("c")
        child.terminate(force=True)
        rtts.sort()
        self.results.append({"echo median us": statistics.median(rtts),
                             "echo p99 us": rtts[min(len(rtts) - 1, round(0.99 * (len(rtts) - 1)))]})

    def _run(self, argv: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[bytes]:
        """The client to its end, its stdout /dev/null, or with --pipes a pipe `cat` reads (waited for too)."""
        if not self.pipes:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env, timeout=600)
        else:
            client = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env)
            assert client.stdout is not None
            reader = subprocess.Popen(["cat"], stdin=client.stdout, stdout=subprocess.DEVNULL)
            client.stdout.close()
            _, err = client.communicate(timeout=600)
            reader.wait(timeout=60)
            done = subprocess.CompletedProcess(argv, client.returncode, b"", err)
        if self.ssh is not None:
            done.check_returncode()
        return done

    def round(self, path: Path, size: int) -> None:
        if self.ssh is not None:
            # sshd's per-connection processes and the remote `cat` end up in the listener's reaped children.
            s0, c0 = cpu(self.ssh.proc.pid, True), resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            self._run(self.argv(f"cat {path}"), None)
            wall = time.perf_counter() - start
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            time.sleep(0.3)
            gb = size / 1024**3
            self.results.append({"MB/s": size / MB / wall, "sshd+cat s/GB": (cpu(self.ssh.proc.pid, True) - s0) / gb,
                                 "client s/GB": (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / gb})
            return
        m0, w0, k0 = cpu(self.master), cpu(self.worker), cpu(self.worker, True)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = self._run(self.argv(f"cat {path}"), self.env)
        wall = time.perf_counter() - start
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(0.3)  # the worker reaps `cat`
        m1, w1, k1 = cpu(self.master), cpu(self.worker), cpu(self.worker, True)
        if done.returncode != 0:
            raise RuntimeError(f"{self.label}: {done.stderr!r}")
        gb = size / 1024**3
        self.results.append({"MB/s": size / MB / wall, "master s/GB": (m1 - m0) / gb,
                             "worker s/GB": (w1 - w0) / gb, "cat s/GB": (k1 - k0 - w1 + w0) / gb,
                             "client s/GB": (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / gb})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, metavar="LABEL=PATH[:VAR=VALUE...]",
                    help="a source tree (its processes get the environment variables after it)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--kind", default="base64", choices=("base64", "text", "binary", "escapes"),
                    help="the content: base64 lines (bench/run.py's), or one of bench/fair.py's kinds")
    ap.add_argument("--echo", type=int, default=0, metavar="KEYS", help="measure echo (KEYS keystrokes) instead")
    ap.add_argument("--keep", action="store_true", help="wait for Enter before stopping (to attach py-spy)")
    ap.add_argument("--pipes", action="store_true", help="-T (ssh -T), stdout a pipe to cat, instead of -t")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pty-ab-"))
    data = work / "data.txt"
    size = args.size_mb * MB
    if args.echo:
        pass
    elif args.kind == "base64":
        with open(data, "wb") as f:  # as bench/run.py: base64 lines of 76 characters
            subprocess.run(f"base64 /dev/urandom | head -c {size}", shell=True, stdout=f, check=True)
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from fair import make_content

        make_content(args.kind, data, size)
    trees = [Tree(label, spec, work) for label, spec in (t.split("=", 1) for t in args.tree)]
    for tree in trees:
        tree.pipes = args.pipes
    try:
        for tree in trees:
            tree.start()
            print(f"{tree.label}: master {tree.master} worker {tree.worker} socket {tree.socket}", file=sys.stderr)
        if args.keep:
            input("Enter to start ")
        for i in range(args.rounds):
            for tree in trees if i % 2 == 0 else trees[::-1]:
                tree.echo(args.echo) if args.echo else tree.round(data, size)
                r = tree.results[-1]
                print(f"round {i} {tree.label}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
                      file=sys.stderr, flush=True)
        for tree in trees:
            keys = tree.results[0].keys()
            print(f"{tree.label}: " + "; ".join(
                f"{k} {statistics.median(r[k] for r in tree.results):.2f} "
                f"({min(r[k] for r in tree.results):.1f}-{max(r[k] for r in tree.results):.1f})" for k in keys))
    finally:
        for tree in trees:
            tree.stop()
        time.sleep(1)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
