"""Soak of one worker connection: sessions (and copies) for a long time, the PB reference tables of the worker's
link, the descriptors and the memory of the master and the worker printed as it goes.

    python3 bench/pb_soak.py --minutes 30            # 20 sessions at a time, a copy each way every 10 sessions
    python3 bench/pb_soak.py --minutes 5 --at-once 1  # one at a time

The suite's long run (tests/e2e/test_pb_references_e2e.py: 2,100 sessions and 300 copies, under a minute) is the
same loop, shorter. Exits 1 when a session or a copy fails, or when the master's table is not back at its start
at the end (a decref is a message: it waits up to 30 s for it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slaveshell.client.sandbox import Sandbox  # noqa: E402
from tests.e2e.test_pb_references_e2e import (  # noqa: E402
    _copy,
    _usage,
    references,
    run_session,
    settled,
    worker_table,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--at-once", type=int, default=20)
    p.add_argument("--copy-every", type=int, default=10, help="one copy each way every N sessions (0: none)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-soak-") as root:
        sb = Sandbox(root, workers=["w1"], opt_in_args=f"max_sessions={args.at_once + 4}",
                     service_kwargs=f"max_connections_per_uid={4 * args.at_once + 8}")
        sb.create()
        sb.start()
        try:
            return soak(sb, Path(root), args.minutes * 60, args.at_once, args.copy_every)
        finally:
            sb.stop()


def soak(sb: Sandbox, root: Path, seconds: float, at_once: int, copy_every: int) -> int:
    src = root / "up.txt"
    src.write_bytes(b"x" * 3000)
    assert run_session(sb.socket) == 0
    assert _copy(sb, str(src), "w1:up.txt") == 0
    master_start = references(sb)["master"] or 0
    worker_start = worker_table(sb)
    usage = _usage(sb)
    print(f"start: master table {master_start}, worker's {worker_start}, {json.dumps(usage)}", flush=True)
    stop = time.monotonic() + seconds
    counts = {"sessions": 0, "copies": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def sessions() -> None:
        while time.monotonic() < stop and not failures:
            try:
                code = run_session(sb.socket)
                assert code == 0, f"exit code {code}"
            except Exception as e:
                failures.append(f"session: {type(e).__name__}: {e}")
                return
            with lock:
                counts["sessions"] += 1

    threads = [threading.Thread(target=sessions, daemon=True) for _ in range(at_once)]
    for t in threads:
        t.start()
    last = time.monotonic()
    copied = 0
    while any(t.is_alive() for t in threads):
        # Copies from this (the main) thread: cp_client's loop takes signals.
        if copy_every and counts["sessions"] // copy_every > copied // 2 and not failures:
            if _copy(sb, str(src), "w1:up.txt") or _copy(sb, "w1:up.txt", str(root / "down.txt")):
                failures.append("a copy failed")
            copied += 2
            counts["copies"] = copied
        else:
            time.sleep(0.05)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            print(f"{counts}: tables {references(sb)}, {json.dumps(_usage(sb))}", flush=True)
    end = settled(sb, master_start)
    worker_end = worker_table(sb)
    print(f"end: {counts}; master table {master_start} -> {end['master']}, worker's {worker_start} -> "
          f"{worker_end}; {json.dumps(_usage(sb))}", flush=True)
    if failures:
        print("FAILED:", failures[:3])
        return 1
    return 0 if end["master"] == master_start and worker_end == worker_start else 1


if __name__ == "__main__":
    sys.exit(main())
