"""File transfer rows (issue 14): `slaveshell cp` against `scp` and against Buildbot's own transfer steps, and
the CPU each side spends per GB moved, all in one run on this machine.

    python3 bench/transfer_bench.py            # all rows below (5-7 minutes on 2 cores shared with other jobs)
    python3 bench/transfer_bench.py --smoke    # tiny sizes, one round
    python3 bench/transfer_bench.py --only buildbot,cpu --size 200 --rounds 3
    python3 bench/run.py --only transfer       # the same rows at run.py's --size-mb, in its table

Parts (each timed whole, from the client's start to its exit, and checked: sha256 for files, count and bytes
for trees):
- file:     one random file of --file-size MB (default 1024), `scp -O` against `slaveshell cp`, up and down;
            --big-rounds rounds (default 1: each copy takes 10-30 s).
- tree:     --files files of 1 KiB (default 10,000) in directories of 1000, `scp -O -r` against `cp -r`;
            --big-rounds rounds.
- buildbot: a real build on the sandbox's master: FileUpload (worker -> master) then FileDownload (master ->
            worker) of a random file of --size MB (default 200), Buildbot's defaults (4.3: FileUpload 256 KiB
            blocks, FileDownload 16 KiB blocks, each block one PB call answered before the next); --rounds
            rounds (default 3), as for cpu. Each step's
            run() is timed inside the master (a subclass that only adds the clock), and the steps table's
            started_at/complete_at (whole seconds) are read as a check. Against `slaveshell cp` of the same
            file between the same two directories: down (worker -> here) for FileUpload, up for FileDownload.
- cpu:      utime+stime from /proc/<pid>/stat of the master and the worker before and after `-T cat` of the
            --size file and `cp` of it up and down; the worker's reaped children (the remote `cat`) are added
            to it, and the client's CPU comes from getrusage(RUSAGE_CHILDREN). For OpenSSH: the throwaway sshd's
            own and reaped children's CPU (its per-connection processes and the remote `cat`/`scp -t`, reaped
            in a chain), and the client (`ssh`, or `scp` with its `ssh`). Seconds per GB (1024 MB) moved.

The sshd is bench/run.py's (no sftp subsystem, hence `scp -O`); the master and worker are a throwaway sandbox.
Nothing here is a timed assertion in a test.
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cp_bench import sha  # noqa: E402
from delay_proxy import DelayProxy  # noqa: E402
from run import MB, OpenSSH, Row, med, render  # noqa: E402

from slaveshell.client.sandbox import Sandbox  # noqa: E402

PARTS = ("file", "tree", "buildbot", "cpu")
GB = 1024 * MB
TICK = os.sysconf("SC_CLK_TCK")

# Appended to the sandbox's master.cfg: a builder whose two steps are Buildbot's own transfer steps with their
# defaults, triggered by a change on the branch 'transfer'. The subclass only records run()'s duration.
TRANSFER_CFG = """
# -- bench/transfer_bench.py: Buildbot's file transfer steps with their defaults, timed in the master --
import time as _bench_time
from twisted.internet import defer as _bench_defer


def _bench_timed(base):
    class Timed(base):
        @_bench_defer.inlineCallbacks
        def run(self):
            start = _bench_time.perf_counter()
            result = yield super().run()
            with open(@TIMES@, 'a') as f:
                f.write(f'{self.build.number} {self.name} {_bench_time.perf_counter() - start:.6f} {result}\\n')
            return result
    return Timed


c['schedulers'].append(schedulers.AnyBranchScheduler(
    name='transfer', treeStableTimer=None, builderNames=['transfer'],
    change_filter=util.ChangeFilter(branch='transfer')))
c['builders'].append(util.BuilderConfig(
    name='transfer', workernames=[@WORKER@],
    factory=util.BuildFactory([
        _bench_timed(steps.FileUpload)(workersrc=@SRC@, masterdest=@UP@, name='upload'),
        _bench_timed(steps.FileDownload)(mastersrc=@UP@, workerdest=@DOWN@, name='download'),
    ])))
"""


class Places:
    """Where the transfer builder's files are (absolute paths; master and worker share this machine)."""

    def __init__(self, work: Path) -> None:
        self.worker = work / "worker-data"  # the worker's side: the steps' source and destination
        self.master = work / "master-data"  # the master's side: FileUpload's destination
        self.times = work / "step-times"  # "build step seconds result" lines, written by the master
        self.src, self.up, self.down = self.worker / "src.bin", self.master / "up.bin", self.worker / "down.bin"


def add_transfer_builder(sandbox: Sandbox, work: Path, worker: str = "w1") -> Places:
    """Append the 'transfer' builder to a created (not yet started) sandbox's master.cfg."""
    places = Places(work)
    places.worker.mkdir(exist_ok=True)
    places.master.mkdir(exist_ok=True)
    text = TRANSFER_CFG
    for key, value in (("@TIMES@", places.times), ("@SRC@", places.src), ("@UP@", places.up),
                       ("@DOWN@", places.down), ("@WORKER@", worker)):
        text = text.replace(key, repr(str(value)))
    with open(Path(sandbox.master_dir, "master.cfg"), "a") as f:
        f.write(text)
    return places


def random_file(path: Path, size_mb: int) -> str:
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))
    return sha(path)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a live process from /proc/<pid>/stat, in seconds (plus cutime+cstime: its reaped
    children's, when asked); clock-tick resolution (10 ms here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICK


def run_timed(argv: list[str]) -> tuple[float, float]:
    """Run to completion, output discarded: (wall seconds, the child's CPU seconds with its reaped children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))),
                          timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} ... failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


class Tools:
    """The command lines of both systems."""

    def __init__(self, sandbox: Sandbox, ssh: OpenSSH | None, worker: str = "w1") -> None:
        self.sandbox, self.ssh, self.worker = sandbox, ssh, worker
        self.scp = [] if ssh is None else ["scp", "-O", "-q", "-P", str(ssh.client_port), "-i",
                    str(ssh.dir / "client"), "-o", "StrictHostKeyChecking=no", "-o",
                    "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
        self.cp = [sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", sandbox.socket]

    def copy(self, system: str, src: str, dst: str, recursive: bool = False) -> list[str]:
        """src and dst: local paths, or 'remote:' + a path on the worker / the sshd's host."""
        host = "root@127.0.0.1:" if system == "ssh" else f"{self.worker}:"
        src, dst = (s.replace("remote:", host, 1) for s in (src, dst))
        return (self.scp if system == "ssh" else self.cp) + (["-r"] if recursive else []) + [src, dst]

    def cat(self, system: str, path: Path) -> list[str]:
        if system == "ssh":
            assert self.ssh is not None
            return self.ssh.argv(f"cat {path}", tty=False)
        return [sys.executable, "-m", "slaveshell.shell_cli", "--socket", self.sandbox.socket, "-T", self.worker,
                "--", "cat", str(path)]


def file_rows(tools: Tools, work: Path, size_mb: int, rounds: int) -> list[Row]:
    d = work / "file"
    (d / "local").mkdir(parents=True)
    (d / "remote").mkdir()
    src = d / "local" / "src.bin"
    digest = random_file(src, size_mb)
    up, down = d / "remote" / "up.bin", d / "local" / "down.bin"
    rows = {key: Row(f"`slaveshell cp` of one {size_mb} MB file, {key}", "MB/s", target=">= 1.0x",
                     met=lambda o, s: s is not None and o >= s) for key in ("up", "down")}
    for _ in range(rounds):
        for system, attr in (("ssh", "ssh"), ("ours", "ours")):  # interleaved
            for key, argv, out in (("up", tools.copy(system, str(src), f"remote:{up}"), up),
                                   ("down", tools.copy(system, f"remote:{up}", str(down)), down)):
                wall, _ = run_timed(argv)
                if sha(out) != digest:
                    raise RuntimeError(f"{system} {key}: the copy differs")
                getattr(rows[key], attr).append(size_mb / wall)
    for row in rows.values():
        row.note = f"scp -O: {size_mb / med(row.ssh):.2f} s, cp: {size_mb / med(row.ours):.2f} s"
    shutil.rmtree(d)
    return list(rows.values())


def tree_rows(tools: Tools, work: Path, files: int, rounds: int) -> list[Row]:
    d = work / "tree"
    tree = d / "local" / "tree"
    tree.mkdir(parents=True)
    (d / "remote").mkdir()
    for n in range(files):
        sub = tree / f"d{n // 1000}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{n}").write_bytes(os.urandom(1024))
    rows = {key: Row(f"`cp -r` of {files} files of 1 KiB, {key}", "files/s", target=">= 1.0x",
                     met=lambda o, s: s is not None and o >= s) for key in ("up", "down")}

    def check(path: Path) -> None:
        got = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
        if len(got) != files or sum(got) != files * 1024:
            raise RuntimeError(f"{path}: {len(got)} files, {sum(got)} bytes")

    for _ in range(rounds):
        for system, attr in (("ssh", "ssh"), ("ours", "ours")):
            there, back = d / "remote" / f"tree-{system}", d / "local" / f"back-{system}"
            for key, argv, out in (("up", tools.copy(system, str(tree), f"remote:{there}", True), there),
                                   ("down", tools.copy(system, f"remote:{there}", str(back), True), back)):
                shutil.rmtree(out, ignore_errors=True)  # -r copies into an existing directory
                wall, _ = run_timed(argv)
                check(out)
                getattr(rows[key], attr).append(files / wall)
    for row in rows.values():
        row.note = f"scp -O -r: {files / med(row.ssh):.2f} s, cp -r: {files / med(row.ours):.2f} s"
    shutil.rmtree(d)
    return list(rows.values())


def transfer_build(sandbox: Sandbox, places: Places, timeout: float = 900) -> dict[str, tuple[float, int]]:
    """Force one build of 'transfer' (a change on its branch) and wait for it: {step name: (run() seconds as
    the master timed it, the steps table's complete_at - started_at in whole seconds)}."""
    before = len(sandbox.build_rows("transfer"))
    sandbox.send_change(branch="transfer")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sandbox.build_rows("transfer")[before:]
        if rows and rows[0][2] is not None:
            build_id, number, results = rows[0]
            if results != 0:
                raise RuntimeError(f"transfer build {number} ended with results {results}\n" + sandbox.log_tail())
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("the transfer build did not finish\n" + sandbox.log_tail())
    timed = {}
    for line in places.times.read_text().splitlines():
        n, name, seconds, _result = line.split()
        if int(n) == number:
            timed[name] = float(seconds)
    db = sqlite3.connect(os.path.join(sandbox.master_dir, "state.sqlite"), timeout=10)
    try:
        db_times = {name: complete - started for name, started, complete in db.execute(
            "SELECT name, started_at, complete_at FROM steps WHERE buildid = ?", (build_id,))}
    finally:
        db.close()
    return {name: (timed[name], db_times[name]) for name in ("upload", "download")}


# How the worker reaches the master in this run (--rtt-ms), for the rows' names.
LINK = ""


def through_proxy(sandbox: Sandbox, port: int, worker: str = "w1") -> None:
    """Point `worker` (created, not started) at `port` on 127.0.0.1 instead of the master's PB port. The proxy
    delays the bytes above TCP, so the worker's kernel measures a loopback round trip on its connection: the worker
    is told `deflate="always"` (slaveshell.vocabulary.deflate), as an owner whose link's delay TCP does not see
    would tell it; a worker really that far away measures the round trip itself."""
    tac = Path(sandbox.worker_dir(worker)) / "buildbot.tac"
    text = tac.read_text()
    old = f"port = {sandbox.port}\n"
    if old not in text:
        raise RuntimeError(f"{tac}: no '{old.strip()}' line")
    text = text.replace(old, f"port = {port}\n", 1)
    if "slave_side.install(" in text and "deflate=" not in text:
        text = text.replace("slave_side.install(", "slave_side.install(deflate='always', ", 1)
    tac.write_text(text)


def default_blocksize(step: str) -> int:
    """The blocksize (bytes) a Buildbot transfer step class uses by default, from its signature."""
    from buildbot.steps import transfer

    return int(inspect.signature(getattr(transfer, step).__init__).parameters["blocksize"].default)


def buildbot_rows(tools: Tools, places: Places, size_mb: int, rounds: int) -> list[Row]:
    digest = random_file(places.src, size_mb)
    here = places.worker.parent / "cp-here"
    here.mkdir(exist_ok=True)
    steps: dict[str, list[float]] = {"upload": [], "download": []}
    db: dict[str, list[float]] = {"upload": [], "download": []}
    cps: dict[str, list[float]] = {"upload": [], "download": []}
    for _ in range(rounds):
        for name, (seconds, whole) in transfer_build(tools.sandbox, places).items():
            steps[name].append(seconds)
            db[name].append(whole)
        if sha(places.up) != digest or sha(places.down) != digest:
            raise RuntimeError("Buildbot's transfer steps' copies differ")
        # The same file between the same two directories: worker -> here, then here -> worker.
        for name, argv, out in (("upload", tools.copy("ours", f"remote:{places.src}", str(here / "up.bin")),
                                 here / "up.bin"),
                                ("download", tools.copy("ours", str(places.up), f"remote:{here / 'down.bin'}"),
                                 here / "down.bin")):
            cps[name].append(run_timed(argv)[0])
            if sha(out) != digest:
                raise RuntimeError(f"cp for {name}: the copy differs")
    rows = []
    for name, step, direction in (("upload", "FileUpload", "worker -> master"),
                                  ("download", "FileDownload", "master -> worker")):
        block = default_blocksize(step) // 1024
        ratios = [s / c for s, c in zip(steps[name], cps[name], strict=True)]
        rows.append(Row(f"`slaveshell cp` against Buildbot's {step} ({direction}), {size_mb} MB{LINK}", "x", ratios, [],
                        ">= 5x", "higher", lambda o, s: o >= 5,
                        note=f"{step} step (defaults: {block} KiB blocks, one answered PB call each) "
                             f"{med(steps[name]):.2f} s ({size_mb / med(steps[name]):.0f} MB/s; steps table "
                             f"{med(db[name]):.0f} s), `slaveshell cp` {med(cps[name]):.2f} s "
                             f"({size_mb / med(cps[name]):.0f} MB/s); ratio = step time / cp time"))
    return rows


def cpu_rows(tools: Tools, work: Path, size_mb: int, rounds: int) -> list[Row]:
    d = work / "cpu"
    d.mkdir()
    src = d / "src.bin"
    digest = random_file(src, size_mb)
    master, worker = tools.sandbox.master_pid(), int(Path(tools.sandbox.worker_dir(tools.worker),
                                                          "twistd.pid").read_text())
    assert tools.ssh is not None and tools.ssh.proc is not None
    sshd = tools.ssh.proc.pid
    cases: dict[str, Callable[[str], list[str]]] = {
        f"`-T cat` of {size_mb} MB": lambda system: tools.cat(system, src),
        f"`cp` up of {size_mb} MB": lambda system: tools.copy(system, str(src), f"remote:{d / f'up-{system}'}"),
        f"`cp` down of {size_mb} MB": lambda system: tools.copy(system, f"remote:{src}", str(d / f"down-{system}")),
    }
    per_gb = GB / (size_mb * MB)
    # per case: lists of s/GB for the master, the worker (with its children), our client, sshd, ssh's client
    got: dict[str, dict[str, list[float]]] = {case: {k: [] for k in ("master", "worker", "client", "sshd", "ssh")}
                                              for case in cases}
    for _ in range(rounds):
        for case, argv in cases.items():
            for system in ("ssh", "ours"):
                pids = {"sshd": (sshd, True)} if system == "ssh" else {"master": (master, False),
                                                                      "worker": (worker, True)}
                before = {k: cpu_seconds(pid, ch) for k, (pid, ch) in pids.items()}
                _, client = run_timed(argv(system))
                time.sleep(0.3)  # the worker's and sshd's children reaped, the master's end-of-session work done
                for k, (pid, ch) in pids.items():
                    got[case][k].append((cpu_seconds(pid, ch) - before[k]) * per_gb)
                got[case]["client" if system == "ours" else "ssh"].append(client * per_gb)
        for system in ("ssh", "ours"):
            for name in ("up", "down"):
                path = d / f"{name}-{system}"
                if path.exists() and sha(path) != digest:
                    raise RuntimeError(f"cpu {name} {system}: the copy differs")
    rows = []
    for case, g in got.items():
        ours = [m + w + c for m, w, c in zip(g["master"], g["worker"], g["client"], strict=True)]
        theirs = [s + c for s, c in zip(g["sshd"], g["ssh"], strict=True)]
        rows.append(Row(f"master CPU per GB moved, {case}", "s/GB", g["master"], [], "report", "lower"))
        rows.append(Row(f"CPU per GB moved, all processes, {case}", "s/GB", ours, theirs, "report", "lower",
                        note=f"master {med(g['master']):.2f}, worker {med(g['worker']):.2f} (with the remote "
                             f"command), client {med(g['client']):.2f}; sshd {med(g['sshd']):.2f} (its "
                             f"per-connection processes and the remote command), ssh/scp {med(g['ssh']):.2f}"))
    shutil.rmtree(d)
    return rows


def measure(sandbox: Sandbox, ssh: OpenSSH | None, work: Path, places: Places | None, parts: set[str], size_mb: int,
            file_mb: int, files: int, rounds: int, big_rounds: int = 1) -> list[Row]:
    """The rows of `parts` on a started sandbox (with add_transfer_builder's builder, for 'buildbot') and
    sshd (every part but 'buildbot' needs it); scratch files go under `work`."""
    tools = Tools(sandbox, ssh)
    rows: list[Row] = []
    if "file" in parts:
        print(f"bench: cp against scp, {file_mb} MB ...", file=sys.stderr)
        rows += file_rows(tools, work, file_mb, big_rounds)
    if "tree" in parts:
        print(f"bench: cp -r against scp -r, {files} files ...", file=sys.stderr)
        rows += tree_rows(tools, work, files, big_rounds)
    if "buildbot" in parts:
        assert places is not None, "the sandbox needs add_transfer_builder for 'buildbot'"
        print(f"bench: cp against Buildbot's FileUpload/FileDownload, {size_mb} MB ...", file=sys.stderr)
        rows += buildbot_rows(tools, places, size_mb, rounds)
    if "cpu" in parts:
        print(f"bench: CPU per GB, {size_mb} MB ...", file=sys.stderr)
        rows += cpu_rows(tools, work, size_mb, rounds)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=200, help="MB, for the Buildbot and CPU parts (default 200)")
    ap.add_argument("--file-size", type=int, default=1024, help="MB, for the file part (default 1024)")
    ap.add_argument("--files", type=int, default=10000, help="files of 1 KiB, for the tree part (default 10000)")
    ap.add_argument("--rounds", type=int, default=3, help="for the buildbot and cpu parts (default 3)")
    ap.add_argument("--big-rounds", type=int, default=1, help="for the file and tree parts (default 1)")
    ap.add_argument("--only", metavar="PARTS", help=f"comma-separated, of: {','.join(PARTS)}")
    ap.add_argument("--smoke", action="store_true", help="2 MB, 20 files, one round")
    ap.add_argument("--rtt-ms", type=float, default=0,
                    help="the worker's link to the master through a proxy adding this round trip (delay_proxy.py; "
                         "the operator's side stays local, as on a master whose workers are far away)")
    ap.add_argument("--rate-mbit", type=float, default=0, help="with --rtt-ms: the link's cap each way (0: none)")
    args = ap.parse_args()
    parts = set(args.only.split(",") if args.only else PARTS)
    if parts - set(PARTS):
        ap.error(f"unknown part(s): {','.join(sorted(parts - set(PARTS)))}")
    if args.smoke:
        args.size, args.file_size, args.files, args.rounds, args.big_rounds = 2, 2, 20, 1, 1
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))  # still stops the sandbox and sshd
    global LINK
    LINK = (f", worker link RTT {args.rtt_ms:g} ms" + (f" {args.rate_mbit:g} Mbit/s" if args.rate_mbit else "")
            if args.rtt_ms else "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slaveshell-transfer-bench-") as tmp:
        work = Path(tmp)
        ssh = OpenSSH(work)
        sandbox = Sandbox(str(work / "bb"), workers=["w1"])
        try:
            ssh.start()
            sandbox.create()
            places = add_transfer_builder(sandbox, work)
            if args.rtt_ms:
                proxy = DelayProxy(sandbox.port, args.rtt_ms / 2000, args.rate_mbit)
                proxy.start()
                through_proxy(sandbox, proxy.port)
            sandbox.start()
            rows = measure(sandbox, ssh, work, places, parts, args.size, args.file_size, args.files, args.rounds,
                           args.big_rounds)
        finally:
            sandbox.stop()
            ssh.stop()
    report = render(rows, args, "python3 bench/transfer_bench.py" + " ".join([""] + sys.argv[1:]))
    print(report.replace("round(s) each,", f"round(s) each ({args.big_rounds} for the file and tree parts),", 1))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
