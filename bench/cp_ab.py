"""`slaveshell cp` of two checkouts against `scp`, alternated round by round in one run: an A/B of a change to the
copy path (client, master or worker) that cannot flatter either side.

    python3 bench/cp_ab.py --trees /work/main,/work/wt/mine --size 512 --files 5000 --rounds 3

One throwaway sshd (bench/run.py's, `scp -O`) and one throwaway sandbox per checkout, each started with PYTHONPATH
set to its checkout, so its master, its worker and its client run that checkout's code. Each round copies the
same random file up and down (and the tree of 1 KiB files, up and down, into a fresh destination) with scp and
with each checkout's `slaveshell cp`, in a rotating order (so that no side always goes first after the file was
written), each timed from the client's start to its exit and checked (sha256; count for trees). Printed per row
and checkout: the median time, and the ratio scp time / cp time per round as median (min-max), >= 1.0x as fast as
scp; the load average before and after. CPU seconds of each process are not taken here (fair.py does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cp_bench import copy_source, sha  # noqa: E402
from run import OpenSSH  # noqa: E402

from slaveshell.client.sandbox import Sandbox  # noqa: E402


def timed(argv: list[str], tree: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=tree))
    return time.perf_counter() - start


def count(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trees", required=True, help="two or more checkouts, comma-separated (A first)")
    p.add_argument("--size", type=int, default=512, help="the file, MB (0: none)")
    p.add_argument("--files", type=int, default=0, help="a tree of this many 1 KiB files (0: none)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="up,down,tree up,tree down")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))
    trees = [str(Path(t).resolve()) for t in args.trees.split(",")]
    names = [Path(t).name for t in trees]
    rows = [r for r in args.only.split(",") if (args.size or r not in ("up", "down"))
            and (args.files or not r.startswith("tree"))]
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cpspeed-ab-") as tmp:
        work = Path(tmp)
        ssh = OpenSSH(work)
        ssh.start()
        boxes: list[Sandbox] = []
        saved = os.environ.get("PYTHONPATH")
        try:
            for n, tree in enumerate(trees):
                os.environ["PYTHONPATH"] = tree
                box = Sandbox(str(work / f"bb{n}"), workers=["w1"])
                boxes.append(box)
                box.create()
                box.start()
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
            local, remote, src = copy_source(work, max(args.size, 1))
            digest = sha(src)
            shutil.copy(src, remote / "source.bin")  # what each download copies
            tree_src = local / "tree"
            if args.files:
                tree_src.mkdir()
                for i in range(args.files):
                    sub = tree_src / f"d{i // 1000}"
                    sub.mkdir(exist_ok=True)
                    (sub / f"f{i}").write_bytes(os.urandom(1024))
                shutil.copytree(tree_src, remote / "tree-down")  # what each tree download copies
            scp = ["scp", "-O", "-q", "-P", str(ssh.port), "-i", str(ssh.dir / "client"), "-o",
                   "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o",
                   "BatchMode=yes"]
            sides = ["scp"] + names
            times: dict[tuple[str, str], list[float]] = {}
            for rnd in range(args.rounds):
                order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
                for row in rows:
                    for side in order:
                        if side == "scp":
                            base, tree = scp, str(ROOT)
                            at = "root@127.0.0.1:"
                        else:
                            i = names.index(side)
                            tree = trees[i]
                            base = [sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", boxes[i].socket]
                            at = "w1:"
                        tag = side.replace("/", "_")
                        if row == "up":
                            out = remote / f"up-{tag}.bin"
                            argv = base + [str(src), f"{at}{out}"]
                        elif row == "down":
                            out = local / f"down-{tag}.bin"
                            argv = base + [f"{at}{remote / 'source.bin'}", str(out)]
                        elif row == "tree up":
                            out = remote / f"tree-{tag}"
                            argv = base + ["-r", str(tree_src), f"{at}{out}"]
                        else:
                            out = local / f"back-{tag}"
                            argv = base + ["-r", f"{at}{remote / 'tree-down'}", str(out)]
                        if row.startswith("tree"):
                            shutil.rmtree(out, ignore_errors=True)
                        elif out.exists():
                            out.unlink()
                        t = timed(argv, tree)
                        times.setdefault((row, side), []).append(t)
                        if row.startswith("tree"):
                            assert count(out) == args.files, f"{row} {side}: {count(out)} files"
                        else:
                            assert sha(out) == digest, f"{row} {side}: the copy differs"
                        if row == "down":
                            out.unlink()
                load.append(os.getloadavg())
        finally:
            for box in boxes:
                box.stop()
            ssh.stop()
    print(f"load average (1 min) during the run: {min(x[0] for x in load):.1f}-{max(x[0] for x in load):.1f}")
    print(f"| row ({args.size} MB; {args.files} files) | scp median | " +
          " | ".join(f"{n}: median s, ratio median (min-max)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in rows:
        scp_times = times[(row, "scp")]
        cells = []
        for name in names:
            cp_times = times[(row, name)]
            ratios = [a / b for a, b in zip(scp_times, cp_times, strict=True)]
            cells.append(f"{statistics.median(cp_times):.2f} s, {statistics.median(ratios):.2f}x "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {row} | {statistics.median(scp_times):.2f} s | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
