"""`slaveshell cp` against `scp` on loopback, side by side in one run (issue 14 item 3).

    python3 bench/cp_bench.py                # a 200 MB file up and down, 3 rounds each; prints a table
    python3 bench/cp_bench.py --size 1024    # MB
    python3 bench/cp_bench.py --smoke        # 4 MB, one round
    python3 bench/cp_bench.py --files 10000  # also a tree of 10,000 files of 1 KiB, up and down (-r)

The sshd is bench/run.py's (a throwaway one on 127.0.0.1, a generated host key and client key; it has no sftp
subsystem, so scp runs with -O, the classic scp protocol: a remote `scp -t`/`-f` over the ssh channel); the master
and worker are a throwaway sandbox (slaveshell.client.sandbox). Both copy the same random file between the same two
directories; each copy is timed from the client's start to its exit (so it includes connecting), and is checked
byte for byte (sha256) afterwards. Medians; the ratio is scp's time over slaveshell's (>= 1.0x: as fast as scp).
Nothing here is a timed assertion in a test.
"""

from __future__ import annotations

import argparse
import hashlib
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

from run import OpenSSH  # noqa: E402

from slaveshell.client.sandbox import Sandbox  # noqa: E402

MB = 1024 * 1024


def copy_source(work: Path, size_mb: int) -> tuple[Path, Path, Path]:
    """Under `work`: a local and a "remote" directory, and a file of `size_mb` MB of random bytes in the local
    one: (local, remote, file)."""
    local, remote = work / "local", work / "remote"
    local.mkdir()
    remote.mkdir()
    src = local / "file.bin"
    with open(src, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))
    return local, remote, src


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MB):
            h.update(chunk)
    return h.hexdigest()


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=200, help="file size in MB (default 200)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--files", type=int, default=0, help="also a tree of this many 1 KiB files (scp -r, cp -r)")
    args = p.parse_args()
    # A timeout's SIGTERM still stops the sandbox and sshd (the finally below).
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))
    size, rounds = (4, 1) if args.smoke else (args.size, args.rounds)
    with tempfile.TemporaryDirectory(prefix="slaveshell-cp-bench-") as tmp:
        work = Path(tmp)
        ssh = OpenSSH(work)
        ssh.start()
        sandbox = Sandbox(str(work / "bb"), workers=["w1"])
        sandbox.create()
        sandbox.start()
        try:
            local, remote, src = copy_source(work, size)
            digest = sha(src)
            scp = ["scp", "-O", "-q", "-P", str(ssh.port), "-i", str(ssh.dir / "client"), "-o",
                   "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o",
                   "BatchMode=yes"]
            cp = [sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", sandbox.socket]
            cases = {
                ("up", "scp"): scp + [str(src), f"root@127.0.0.1:{remote}/up.bin"],
                ("up", "slaveshell cp"): cp + [str(src), f"w1:{remote}/up.bin"],
                ("down", "scp"): scp + [f"root@127.0.0.1:{remote}/up.bin", str(local / "down.bin")],
                ("down", "slaveshell cp"): cp + [f"w1:{remote}/up.bin", str(local / "down.bin")],
            }
            if args.files:
                tree = local / "tree"
                tree.mkdir()
                for n in range(args.files):
                    sub = tree / f"d{n // 1000}"
                    sub.mkdir(exist_ok=True)
                    (sub / f"f{n}").write_bytes(os.urandom(1024))
                cases.update({
                    ("tree up", "scp"): scp + ["-r", str(tree), f"root@127.0.0.1:{remote}/tree-scp"],
                    ("tree up", "slaveshell cp"): cp + ["-r", str(tree), f"w1:{remote}/tree-cp"],
                    ("tree down", "scp"): scp + ["-r", f"root@127.0.0.1:{remote}/tree-scp", str(local / "back-scp")],
                    ("tree down", "slaveshell cp"): cp + ["-r", f"w1:{remote}/tree-cp", str(local / "back-cp")],
                })
            fresh = {("tree up", "scp"): remote / "tree-scp", ("tree up", "slaveshell cp"): remote / "tree-cp",
                     ("tree down", "scp"): local / "back-scp", ("tree down", "slaveshell cp"): local / "back-cp"}
            times: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
            for _ in range(rounds):
                for key, argv in cases.items():  # interleaved: both see the same moment of the machine
                    if key in fresh:  # a fresh destination each round (-r copies into an existing directory)
                        shutil.rmtree(fresh[key], ignore_errors=True)
                    times[key].append(timed(argv))
                    if key[0] in ("up", "down"):
                        out = remote / "up.bin" if key[0] == "up" else local / "down.bin"
                        assert sha(out) == digest, f"{key}: the copy differs"
        finally:
            sandbox.stop()
            ssh.stop()
    print(f"| {size} MB file, median of {rounds} | scp | slaveshell cp | ratio (scp time / cp time) |")
    print("|---|---|---|---|")
    for direction in ("up", "down", "tree up", "tree down"):
        if (direction, "scp") not in times:
            continue
        a, b = statistics.median(times[(direction, "scp")]), statistics.median(times[(direction, "slaveshell cp")])
        if direction.startswith("tree"):
            print(f"| {direction}: {args.files} files of 1 KiB | {a:.2f} s | {b:.2f} s | {a / b:.2f}x |")
        else:
            print(f"| {direction} | {a:.2f} s ({size / a:.0f} MB/s) | {b:.2f} s ({size / b:.0f} MB/s) | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
