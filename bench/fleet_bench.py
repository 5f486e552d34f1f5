"""Fleet runs at scale: `slaveshell run` over N real buildbot-worker processes on this machine, against ClusterShell's
`clush -b` and `pdsh -R ssh` over OpenSSH to N targets (ssh host aliases of one throwaway sshd, bench/run.py's),
with the same fan-out, rounds alternated; then the master's memory per worker in flight, `slaveshell facts
--refresh` over all of them, and a pending run reaching N workers that attach at once.

    python3 bench/fleet_bench.py [--workers 100] [--fanout 64] [--rounds 5]

Ratios are slaveshell's time over the other's in the same round (below 1.0: slaveshell is faster); the table gives
their median and min-max. Each round checks that every target answered."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OpenSSH  # noqa: E402

from slaveshell.client.sandbox import BUILDBOT_WORKER, Sandbox  # noqa: E402

COMMAND = "uname -a"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Peak:
    """The highest RSS of `pid` while it runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(argv: list[str], env: dict[str, str] | None = None, expect: int = 0) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr[-500:]}")
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--fanout", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, fanout = args.workers, args.fanout
    for tool in ("clush", "pdsh"):
        if shutil.which(tool) is None:
            print(f"fleet_bench: {tool} is missing (apt-get install clustershell pdsh)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="slaveshell-fleet-bench-"))
    names = [f"w{i}" for i in range(1, n + 1)]
    ssh = OpenSSH(work)
    sandbox = Sandbox(str(work / "bb"), workers=names, build_seconds=0.1,
                      service_kwargs=f"max_run_batch={max(fanout, 1)}, max_connections_per_uid=64")
    try:
        ssh.start()
        config = work / "ssh_config"
        config.write_text("".join(
            f"Host t{i}\n  HostName 127.0.0.1\n  Port {ssh.port}\n  User root\n  IdentityFile {ssh.dir / 'client'}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
            for i in range(1, n + 1)))
        print(f"fleet_bench: starting a master and {n} workers ...", file=sys.stderr)
        t0 = time.perf_counter()
        sandbox.create()
        sandbox.start_master(timeout=600)
        for first in range(0, n, 10):  # ten at a time: a hundred starting at once take minutes on two cores
            batch = names[first:first + 10]
            procs = [subprocess.Popen(BUILDBOT_WORKER + ["start", sandbox.worker_dir(name)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in batch]
            sandbox.started.extend(sandbox.worker_dir(name) for name in batch)
            for proc in procs:
                proc.wait()
        sandbox.wait_for_workers(names, timeout=900)
        print(f"fleet_bench: up in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        master = int(Path(sandbox.master_dir, "twistd.pid").read_text())
        ours = [sys.executable, "-m", "slaveshell.cli", "run", "--socket", sandbox.socket, "--batch", str(fanout),
                "--", COMMAND]
        clush = ["clush", "-b", "-f", str(fanout), "-w", f"t[1-{n}]", "-o", f"-F {config}", COMMAND]
        pdsh = ["pdsh", "-R", "ssh", "-f", str(fanout), "-w", f"t[1-{n}]", COMMAND]
        pdsh_env = dict(os.environ, PDSH_SSH_ARGS=f"-F {config} -2 -a -x -l%u %h")
        rows: dict[str, list[float]] = {"slaveshell": [], "clush": [], "pdsh": []}
        rss_before = rss_kib(master)
        peaks = []
        for rnd in range(args.rounds):
            peak = Peak(master)
            seconds, out = timed(ours)
            peaks.append(peak.stop())
            if f"{n} ok" not in out.strip().splitlines()[-1]:
                raise RuntimeError(f"slaveshell run: {out.strip().splitlines()[-1]}")
            rows["slaveshell"].append(seconds)
            seconds, out = timed(clush)
            if f"({n})" not in out:
                raise RuntimeError("clush: not every target answered")
            rows["clush"].append(seconds)
            seconds, out = timed(pdsh, pdsh_env)
            if len(out.strip().splitlines()) != n:
                raise RuntimeError("pdsh: not every target answered")
            rows["pdsh"].append(seconds)
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), file=sys.stderr)
        time.sleep(2)
        rss_after = rss_kib(master)
        facts = []
        for _ in range(3):
            seconds, out = timed([sys.executable, "-m", "slaveshell.cli", "facts", "--socket", sandbox.socket,
                                  "--refresh"])
            facts.append(seconds)
        # A pending run reaching every worker as they all attach at once.
        for name in names:
            sandbox.stop_worker(name)
        timed([sys.executable, "-m", "slaveshell.cli", "run", "--socket", sandbox.socket, "--include-offline", "--",
               "true"], expect=1)
        run_id = json.loads(timed([sys.executable, "-m", "slaveshell.cli", "runs", "--socket", sandbox.socket,
                                   "--json"])[1])[0]["id"]
        start = time.perf_counter()
        procs = [subprocess.Popen(BUILDBOT_WORKER + ["start", sandbox.worker_dir(name)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for name in names]
        sandbox.started.extend(sandbox.worker_dir(name) for name in names)
        for proc in procs:
            proc.wait()
        while True:
            rows_now = json.loads(timed([sys.executable, "-m", "slaveshell.cli", "runs", "--socket", sandbox.socket,
                                         run_id, "--json"])[1])[0]["workers"]
            if all(w["state"] != "pending" for w in rows_now):
                break
            if time.perf_counter() - start > 900:
                raise RuntimeError("the pending run did not reach every worker within 15 min")
            time.sleep(1)
        pending_seconds = time.perf_counter() - start
        ok = sum(1 for w in rows_now if w["state"] == "ok")
    finally:
        sandbox.stop()
        ssh.stop()
        shutil.rmtree(work, ignore_errors=True)

    def fmt(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\n{n} workers, fan-out {fanout}, {args.rounds} rounds alternated, `{COMMAND}`\n")
    print("| figure | slaveshell | other | ratio, median (min-max) | target | met |")
    print("|---|---|---|---|---|---|")
    for other in ("clush", "pdsh"):
        ratios = [a / b for a, b in zip(rows["slaveshell"], rows[other], strict=True)]
        med = statistics.median(ratios)
        print(f"| run on all, vs `{other}` (s) | {fmt(rows['slaveshell'])} | {fmt(rows[other])} | "
              f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | <= 1.0x | {'yes' if med <= 1.0 else 'no'} |")
    print(f"| master RSS before / peak in flight / after (MiB) | {rss_before / 1024:.0f} / "
          f"{max(peaks) / 1024:.0f} / {rss_after / 1024:.0f} | | growth per worker in flight "
          f"{(max(peaks) - rss_before) / min(n, fanout):.0f} KiB, after {(rss_after - rss_before) / n:.0f} KiB | | |")
    print(f"| `slaveshell facts --refresh` (s) | {fmt(facts)} | | | < 5 s | "
          f"{'yes' if statistics.median(facts) < 5 else 'no'} |")
    print(f"| pending run reaching {n} workers attaching at once (s) | {pending_seconds:.1f} ({ok} ok) | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
