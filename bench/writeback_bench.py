"""What writing a transcript costs the master's kernel, with and without master_side.audit.writeback, alternated.

    python3 bench/writeback_bench.py --files 3 --size-mb 1024 --rounds 3

Each round writes `--files` new files of `--size-mb` (512 KiB writes, as a `-T` stream's attachment gets them),
kept until the round ends (as transcripts are), once plainly and once through `WriteBack`, in alternating order;
per file: the CPU seconds (system, user) of the writing thread and the wall time per GB, and at the end the page
cache the files hold (util-linux's fincore). The files go in a temporary directory under --dir (default: the
current directory, whose file system is the one measured) and are removed after each round.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from master_side.audit import writeback  # noqa: E402

MB = 1024 * 1024


def cached(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else -1


def write_file(path: Path, size: int, through: bool, block: bytes) -> dict[str, float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    back = writeback.WriteBack(fd) if through else None
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    t0 = time.perf_counter()
    written = 0
    while written < size:
        written += os.write(fd, block)
        if back is not None:
            back.advance(written)
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    wall = time.perf_counter() - t0
    if back is not None:
        back.close()
        writeback._WRITEBACK.submit(lambda: None).result()
    os.close(fd)
    gb = size / 1024**3
    return {"sys s/GB": (r1.ru_stime - r0.ru_stime) / gb, "user s/GB": (r1.ru_utime - r0.ru_utime) / gb,
            "wall s/GB": wall / gb, "cached MB": cached(path) / MB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    if not writeback.AVAILABLE:
        print("no sync_file_range on this system: nothing to compare", file=sys.stderr)
        return 1
    block = os.urandom(512 * 1024)
    results: dict[str, list[dict[str, float]]] = {"plain": [], "writeback": []}
    for i in range(args.rounds):
        for kind in ("plain", "writeback") if i % 2 == 0 else ("writeback", "plain"):
            work = Path(tempfile.mkdtemp(prefix="writeback-", dir=args.dir))
            try:
                for n in range(args.files):
                    r = write_file(work / f"{n}.bin", args.size_mb * MB, kind == "writeback", block)
                    results[kind].append(r)
                    print(f"round {i} {kind} file {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                          file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(work)
    for kind, rows in results.items():
        print(f"{kind}: " + "; ".join(f"{k} {statistics.median(r[k] for r in rows):.2f} "
                                      f"({min(r[k] for r in rows):.2f}-{max(r[k] for r in rows):.2f})"
                                      for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
