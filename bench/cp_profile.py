"""Where `slaveshell cp`'s time goes: one file up and down through a throwaway sandbox, with py-spy sampling the
client, the master and the worker at once (issue 14 part 3's profile). Not a benchmark (bench/cp_bench.py is).

    python3 bench/cp_profile.py                 # 200 MB; prints each process's top functions, by own time
    python3 bench/cp_profile.py --size 50 --top 25 --keep /tmp/prof   # keeps the raw (collapsed) stacks
    python3 bench/cp_profile.py --files 3000 --cpu 3   # a tree of 3000 files of 1 KiB (-r); CPU seconds only

Needs py-spy (pip install py-spy) and permission to attach to the processes (root, or ptrace_scope 0). The
processes run with PYTHONPATH set to this checkout. Each copy's wall time is printed with its profile: py-spy's
sampling slows the processes a little, so the times are not comparable with cp_bench's.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cp_bench import copy_source  # noqa: E402

from slaveshell.client.sandbox import Sandbox  # noqa: E402


def pid_of(directory: str) -> int:
    with open(os.path.join(directory, "twistd.pid")) as f:
        return int(f.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat's utime and stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(raw: Path, top: int) -> list[str]:
    """The functions with the most samples of their own (the innermost frame), and the process's total."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[leaf] += n
        if "poll (" in leaf or "select (" in leaf or "epoll" in leaf or "doPoll" in leaf:
            idle += n
    lines = [f"  {total} samples, {idle} of them waiting in poll/select"]
    for leaf, n in own.most_common(top):
        lines.append(f"  {100 * n / max(total, 1):5.1f}%  {leaf[:110]}")
    return lines


def tree_source(local: Path, files: int) -> Path:
    """`files` files of 1 KiB of random bytes under local/tree, 1000 to a directory."""
    tree = local / "tree"
    for n in range(files):
        d = tree / f"d{n // 1000}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{n}").write_bytes(os.urandom(1024))
    return tree


def cases(cp: list[str], src: Path, local: Path, remote: Path, n: int) -> list[tuple[str, list[str]]]:
    """The upload then the download (of what was uploaded), each to a fresh name (round `n`)."""
    return [("up", cp + [str(src), f"w1:{remote}/up{n}"]),
            ("down", cp + [f"w1:{remote}/up{n}", str(local / f"down{n}")])]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=200, help="MB")
    p.add_argument("--files", type=int, default=0, help="a tree of this many 1 KiB files (cp -r) instead of a file")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--keep", help="a directory for the raw stacks")
    p.add_argument("--cpu", type=int, default=0, metavar="ROUNDS",
                   help="no py-spy: each process's CPU seconds per copy (user + system), ROUNDS times; the sum is "
                        "what a loaded machine's noise hides least")
    args = p.parse_args()
    spy = shutil.which("py-spy") or os.path.join(site.getuserbase(), "bin", "py-spy")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    os.environ["PYTHONPATH"] = str(ROOT)  # the sandbox's master and worker inherit it
    with tempfile.TemporaryDirectory(prefix="slaveshell-cp-profile-") as tmp:
        work = Path(tmp)
        out = Path(args.keep) if args.keep else work / "prof"
        out.mkdir(parents=True, exist_ok=True)
        sandbox = Sandbox(str(work / "bb"), workers=["w1"])
        sandbox.create()
        sandbox.start()
        try:
            local, remote, src = copy_source(work, 0 if args.files else args.size)
            cp = [sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", sandbox.socket]
            if args.files:
                src = tree_source(local, args.files)
                cp.append("-r")
            rounds = itertools.count()
            pids = {"master": pid_of(sandbox.master_dir), "worker": pid_of(sandbox.worker_dir("w1"))}
            if args.cpu:
                what = f"{args.files} files" if args.files else f"{args.size} MB"
                print(f"| {what} | wall s | client CPU s | master CPU s | worker CPU s | total CPU s |")
                print("|---|---|---|---|---|---|")
                for _ in range(args.cpu):
                    for name, argv in cases(cp, src, local, remote, next(rounds)):
                        before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                        children = os.times()
                        start = time.perf_counter()
                        subprocess.run(argv, check=True, env=env)
                        took = time.perf_counter() - start
                        after = os.times()
                        client = (after.children_user - children.children_user
                                  + after.children_system - children.children_system)
                        used = {who: cpu_seconds(pid) - before[who] for who, pid in pids.items()}
                        print(f"| {name} | {took:.2f} | {client:.2f} | {used['master']:.2f} | {used['worker']:.2f} |"
                              f" {client + sum(used.values()):.2f} |")
                return 0
            for name, argv in cases(cp, src, local, remote, next(rounds)):
                spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-r", str(args.rate), "-f", "raw", "-o",
                                           str(out / f"{name}-{who}.txt"), "--nonblocking"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for who, pid in pids.items()]
                time.sleep(1.0)  # py-spy attached
                start = time.perf_counter()
                subprocess.run([spy, "record", "-r", str(args.rate), "-f", "raw", "-o",
                                str(out / f"{name}-client.txt"), "--nonblocking", "--", *argv], check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                took = time.perf_counter() - start
                for s in spies:
                    s.send_signal(2)  # py-spy writes its file on SIGINT
                for s in spies:
                    s.wait(30)
                print(f"== {name}: {args.files} files in {took:.2f} s (under py-spy)" if args.files else
                      f"== {name}: {args.size} MB in {took:.2f} s ({args.size / took:.0f} MB/s, under py-spy)")
                for who in ("client", "master", "worker"):
                    raw = out / f"{name}-{who}.txt"
                    print(f" {who}:")
                    print("\n".join(summary(raw, args.top) if raw.exists() else ["  (no profile)"]))
        finally:
            sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
