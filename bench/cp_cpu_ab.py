"""CPU per GB of a routed `slaveshell cp` in master A and master B, two checkouts side by side: an A/B of a change to
the routed copy's path that the machine's load cannot flatter either side of.

    python3 bench/cp_cpu_ab.py --trees /work/main,/work/wt/mine --rounds 4

One multi-master site per checkout (slaveshell.client.cluster_sandbox: the router, masters A and B, B with
`ClusterConfig(direct=True)`, a worker b1 on B), each started with PYTHONPATH set to its checkout and held up for
the whole run. Each round copies one random file (`--mb`) up (here -> b1) and down, through A and through B
directly, checkout after checkout (the order reversed every other round), each checked by size and sha256. Per
copy: MB/s (timed whole) and the CPU seconds per GB of master A's and master B's processes (every thread:
utime+stime from /proc over the copy). Printed at the end per direction, checkout and path: the medians and the
range over the rounds. bench/cluster_bench.py judges the rates against ssh; this one prices the CPU of a change.
"""

from __future__ import annotations

import argparse
import collections
import getpass
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cluster_bench import cpu_seconds, sha256  # noqa: E402

from slaveshell.client.cluster_sandbox import ClusterSandbox  # noqa: E402

MB = 1000 * 1000
PATHS = ("via A", "B direct")


def copy(site: ClusterSandbox, tree: str, path: str, direction: str, source: Path, here: Path,
         there: Path) -> tuple[float, float, float]:
    """One copy: MB/s, and CPU s/GB of A and B."""
    socket = site.a.socket if path == "via A" else site.b.socket
    name = path.replace(" ", "-") + ".bin"
    remote, local = there / name, here / name
    if direction == "up":
        argv, result, original = [str(source), f"b1:{remote}"], remote, source
    else:
        if not remote.exists():
            os.link(source, remote)
        argv, result, original = [f"b1:{remote}", str(local)], local, remote
    pids = (site.a.master_pid(), site.b.master_pid())
    before = [cpu_seconds(pid) for pid in pids]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", socket, *argv],
                          capture_output=True, env=dict(os.environ, PYTHONPATH=tree), timeout=600)
    seconds = time.perf_counter() - start
    a, b = (cpu_seconds(pid) - was for pid, was in zip(pids, before, strict=True))
    if done.returncode != 0:
        raise RuntimeError(f"{tree} {path} cp {direction}: exit {done.returncode}: {done.stderr[-300:]!r}")
    size = original.stat().st_size
    if result.stat().st_size != size or sha256(result) != sha256(original):
        raise RuntimeError(f"{tree} {path} cp {direction}: the copy differs from the original")
    if direction == "down":
        result.unlink()
    return size / seconds / MB, a / (size / 1e9), b / (size / 1e9)


def warm_up(site: ClusterSandbox, tree: str, source: Path, here: Path, there: Path) -> None:
    """A first copy through A, once A's routing table has b1 (it learns it from the router a moment after the
    start)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            copy(site, tree, "via A", "up", source, here, there)
            return
        except RuntimeError as e:
            if "no worker named" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", required=True, help="two or more checkouts, comma-separated")
    parser.add_argument("--mb", type=int, default=200, help="the file's size, MB")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    work = Path(tempfile.mkdtemp(prefix="slaveshell-cp-cpu-ab-"))
    policy = (f"[dict(users=[{os.getuid()}]), dict(users=[{'cluster:A/' + getpass.getuser()!r}], "
              "workers=['b*'])], detach_grace=1")
    source = work / "copy.bin"
    with open(source, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(args.mb * MB // len(block)):
            f.write(block)
    sites: dict[str, ClusterSandbox] = {}
    results: dict[tuple[str, str, str], list[tuple[float, float, float]]] = collections.defaultdict(list)
    pythonpath = os.environ.get("PYTHONPATH")
    try:
        for i, tree in enumerate(trees):
            os.environ["PYTHONPATH"] = tree  # the site's processes run this checkout
            site = sites[tree] = ClusterSandbox(str(work / f"site{i}"), {"A": ["a1"], "B": ["b1"]},
                                                policies={"B": policy}, clusters={"B": "direct=True"})
            print(f"cp cpu ab: starting the site of {tree} ...", file=sys.stderr, flush=True)
            site.start(together=True)
            for sub in ("here", "there"):
                (work / f"{sub}{i}").mkdir()
            warm_up(site, tree, source, work / f"here{i}", work / f"there{i}")
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)
        for r in range(args.rounds):
            for direction in ("up", "down"):
                order = list(enumerate(trees))[:: -1 if r % 2 else 1]
                for i, tree in order:
                    for path in PATHS:
                        rate, a, b = copy(sites[tree], tree, path, direction, source, work / f"here{i}",
                                          work / f"there{i}")
                        results[(direction, tree, path)].append((rate, a, b))
                        print(f"round {r + 1} {direction:4} {tree} {path:8} {rate:6.1f} MB/s  A {a:.2f}  B {b:.2f}",
                              flush=True)
        print(f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
        for site in sites.values():
            site.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| dir | tree | path | MB/s | CPU s/GB master A | CPU s/GB master B |\n|---|---|---|---|---|---|")
    for (direction, tree, path), runs in sorted(results.items()):
        cells = []
        for k in range(3):
            values = [run[k] for run in runs]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {direction} | {tree} | {path} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
