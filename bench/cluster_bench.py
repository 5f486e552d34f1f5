"""A routed session (through master A to a worker of master B) against the same on B directly and against
`ssh -J` (a jump through the master's host), in one run.

    python3 bench/cluster_bench.py                    # 3 rounds: -T 200 MB, PTY 50 MB, 200 keystrokes, 5 opens
    python3 bench/cluster_bench.py --smoke            # tiny sizes, one round: proves the harness, judges nothing
    python3 bench/cluster_bench.py --rounds 5 --output table.md

It starts a multi-master site (slaveshell/client/cluster_sandbox.py: the router, a fresh PostgreSQL database,
masters A and B, a worker on B) and bench/run.py's throwaway sshd, then measures, round by round, the three
paths in an order that changes each round:

- "via A": `buildbot-shell --socket <A's socket> b1` (A routes the session through the router to B);
- "B direct": `buildbot-shell --socket <B's socket> b1`;
- "ssh -J": `ssh -J root@127.0.0.1 root@127.0.0.1` through the throwaway sshd (two ssh hops on this host, as an
  operator would jump through the master's host to reach a worker).

Rows: -T throughput (`head -c N /dev/zero`, from the first byte read to the end), PTY throughput (`cat` of a
base64 file through `-t` / `ssh -tt`), keystroke echo (bench/run.py's loop in `stty -icanon; cat`, 2 ms after the
previous echo; the median per round), Ctrl-C under a flood (bench/run.py's: `yes` read as fast as it comes for
0.7 s, then ^C, until the prompt) and open (`true` as a command, whole). A row's ratio is via-A / other per
round; the table gives the median of the per-round ratios and their min-max. Then `cp` of one file of `--cp-mb` MB
up (here -> b1) and down (b1 -> here): `slaveshell cp --socket <A's or B's socket>` against `scp -O -J` (the same
jump), each timed whole (start-up included) and checked by size and sha256. Beside the -T and cp rows: CPU seconds
per GB of master A, master B and the router (utime+stime from /proc, over the transfer).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OpenSSH, ctrl_c_latency, drain, key_rtts  # noqa: E402

from slaveshell.client.cluster_sandbox import ClusterSandbox, SiteUnavailable  # noqa: E402

MB = 1000 * 1000
WORKER = "b1"
PATHS = ("via A", "B direct", "ssh -J")
ROWS = ("-T", "pty", "echo", "ctrl-c", "open", "cp up", "cp down")  # as --only names them


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class Paths:
    def __init__(self, site: ClusterSandbox, ssh: OpenSSH, workdir: Path) -> None:
        self.site = site
        self.ssh = ssh
        self.config = workdir / "ssh_config"
        self.config.write_text(
            f"Host *\n  User root\n  Port {ssh.port}\n  IdentityFile {ssh.dir / 'client'}\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n")

    def argv(self, path: str, command: str | None, tty: bool) -> list[str]:
        if path == "ssh -J":
            return (["ssh", "-F", str(self.config), "-J", "127.0.0.1", "-tt" if tty else "-T", "127.0.0.1"]
                    + ([command] if command else []))
        socket = (self.site.a if path == "via A" else self.site.b).socket
        argv = [sys.executable, "-m", "slaveshell.shell_cli", "--socket", socket, "-t" if tty else "-T", WORKER]
        return argv + (["--", command] if command else [])

    def cp_argv(self, path: str, source: str, target: str) -> list[str]:
        """`slaveshell cp` through A or B, or `scp -O -J` (the remote side named `b1:` in `source` or `target`)."""
        if path == "ssh -J":
            source, target = (x.replace(f"{WORKER}:", "127.0.0.1:") for x in (source, target))
            return ["scp", "-O", "-q", "-F", str(self.config), "-J", "127.0.0.1", source, target]
        socket = (self.site.a if path == "via A" else self.site.b).socket
        return [sys.executable, "-m", "slaveshell.cli", "cp", "-q", "--socket", socket, source, target]

    def pids(self) -> dict[str, int]:
        router = self.site.router.proc
        workers = children(router.pid) if router else []
        out = {"master A": self.site.a.master_pid(), "master B": self.site.b.master_pid()}
        out["router"] = workers[0] if workers else (router.pid if router else 0)
        return out


def timed_read(fd: int, proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Bytes read from `fd` until its end, and the seconds from the first byte to the end."""
    got, first = 0, 0.0
    while True:
        if not select.select([fd], [], [], 120)[0]:
            raise RuntimeError("no output for 120 s")
        try:
            data = os.read(fd, 1 << 20)
        except OSError:  # a PTY's other end is gone
            data = b""
        if not data:
            break
        if not first:
            first = time.perf_counter()
        got += len(data)
    end = time.perf_counter()
    proc.wait(60)
    return got, end - first


def pipe_throughput(paths: Paths, path: str, size: int) -> tuple[float, dict[str, float]]:
    """MB/s of `head -c size /dev/zero` over -T / ssh -T, and the CPU seconds per GB of each site process."""
    pids = paths.pids()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    proc = subprocess.Popen(paths.argv(path, f"head -c {size} /dev/zero", tty=False), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    got, seconds = timed_read(proc.stdout.fileno(), proc)
    if got != size:
        raise RuntimeError(f"{path}: {got} bytes of {size}")
    cpu = {name: (cpu_seconds(pid) - before[name]) / (size / 1e9) for name, pid in pids.items()}
    return size / seconds / MB, cpu


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def copy_throughput(paths: Paths, path: str, direction: str, source: Path, here: Path,
                    there: Path) -> tuple[float, dict[str, float]]:
    """MB/s of one copy of `source` up (to `there` on b1) or down (from there to `here`), timed whole, and the CPU
    seconds per GB of each site process; the copy is checked by size and sha256."""
    name = path.replace(" ", "-")
    remote, local = there / f"{name}.bin", here / f"{name}.bin"
    if direction == "up":
        argv, result, original = paths.cp_argv(path, str(source), f"{WORKER}:{remote}"), remote, source
    else:
        if not remote.exists():
            os.link(source, remote)  # the same bytes on the worker's side, without a copy
        argv, result, original = paths.cp_argv(path, f"{WORKER}:{remote}", str(local)), local, remote
    pids = paths.pids()
    before = {n: cpu_seconds(pid) for n, pid in pids.items()}
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{path} cp {direction}: exit {done.returncode}: {done.stderr[-300:]!r}")
    size = original.stat().st_size
    if result.stat().st_size != size or sha256(result) != sha256(original):
        raise RuntimeError(f"{path} cp {direction}: the copy differs from the original")
    cpu = {n: (cpu_seconds(pid) - before[n]) / (size / 1e9) for n, pid in pids.items()}
    if direction == "down":
        result.unlink()
    return size / seconds / MB, cpu


def pty_throughput(paths: Paths, path: str, payload: Path, size: int) -> float:
    """MB/s of `cat payload` through a terminal (-t / ssh -tt), counted on our side of the client's PTY."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(paths.argv(path, f"stty -echo; cat {payload}", tty=True), stdin=follower,
                            stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    try:
        got, seconds = timed_read(leader, proc)
    finally:
        os.close(leader)
    if got < size:  # the terminal turns \n into \r\n: more bytes, never fewer
        raise RuntimeError(f"{path}: {got} bytes of at least {size}")
    return got / seconds / MB


def echo_ms(paths: Paths, path: str, count: int) -> float:
    import pexpect

    argv = paths.argv(path, None, tty=True)
    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), env=dict(os.environ, TERM="xterm"), timeout=60)
    try:
        child.expect(r"[#$] ")
        child.sendline("bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='P''> '")
        child.expect("P> ")
        child.sendline("stty -icanon; cat > /dev/null")
        time.sleep(0.5)
        drain(child.child_fd, 0.3)
        rtts = key_rtts(child.child_fd, count)
    finally:
        child.terminate(force=True)
    return statistics.median(rtts) * 1000


class _System:
    """One path as bench/run.py's ctrl_c_latency takes a system: its name and its argv."""

    def __init__(self, paths: Paths, path: str) -> None:
        self.name, self._paths, self._path = path, paths, path

    def argv(self, command: str | None, tty: bool) -> list[str]:
        return self._paths.argv(self._path, command, tty)


def ctrl_c_ms(paths: Paths, path: str) -> float:
    """Milliseconds from Ctrl-C to the prompt under `yes` in the remote terminal (bench/run.py's)."""
    return ctrl_c_latency(_System(paths, path))[0]  # type: ignore[arg-type]


def open_ms(paths: Paths, path: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(paths.argv(path, "true", tty=False), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{path}: true exited {done.returncode}: {done.stderr[-300:]!r}")
    return (time.perf_counter() - start) * 1000


def run(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="slaveshell-cluster-bench-"))
    policy = f"[dict(users=[{os.getuid()}]), dict(users=[{'cluster:A/' + getpass.getuser()!r}], workers=['b*'])]"
    # The echo and Ctrl-C rows end their clients with a signal: each session then waits, detached, for its owner
    # (ShellService's detach_grace); a second's grace keeps them from filling the worker's sessions.
    policy += ", detach_grace=1"
    site = ClusterSandbox(str(workdir / "site"), {"A": ["a1"], "B": [WORKER]}, policies={"B": policy},
                          clusters={"B": "direct=True"} if args.direct else None)
    ssh = OpenSSH(workdir)
    payload = workdir / "payload.txt"
    with open(payload, "wb") as f:
        chunk = base64.encodebytes(os.urandom(3 * 1024 * 1024))
        while f.tell() < args.pty_mb * MB:
            f.write(chunk)
    pty_size = payload.stat().st_size
    here, there = workdir / "here", workdir / "there"
    here.mkdir()
    there.mkdir()
    source = workdir / "copy.bin"
    with open(source, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(args.cp_mb * MB // len(block)):
            f.write(block)
        f.write(block[:args.cp_mb * MB % len(block)])
    results: dict[str, dict[str, list[float]]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}

    def note(row: str, path: str, value: float) -> None:
        results.setdefault(row, {}).setdefault(path, []).append(value)

    try:
        print("cluster bench: starting the site and sshd ...", file=sys.stderr, flush=True)
        site.start(on_step=lambda text: print(f"cluster bench: {text}", file=sys.stderr, flush=True), together=True)
        ssh.start()
        paths = Paths(site, ssh, workdir)
        # The routing table on A: a first open through A waits for it.
        open_ms(paths, "via A")
        rows: list[tuple[str, Callable[[str], None]]] = []

        def t_row(path: str) -> None:
            rate, per_gb = pipe_throughput(paths, path, args.t_mb * MB)
            note("-T throughput (MB/s)", path, rate)
            if path != "ssh -J":
                for name, value in per_gb.items():
                    cpu.setdefault(f"-T, {path}", {}).setdefault(name, []).append(value)

        def cp_row(direction: str) -> Callable[[str], None]:
            def measure(path: str) -> None:
                rate, per_gb = copy_throughput(paths, path, direction, source, here, there)
                note(f"cp {direction}, {args.cp_mb} MB (MB/s)", path, rate)
                if path != "ssh -J":
                    for name, value in per_gb.items():
                        cpu.setdefault(f"cp {direction}, {path}", {}).setdefault(name, []).append(value)
            return measure

        rows.append(("-T", t_row))
        rows.append(("pty", lambda path: note("PTY throughput (MB/s)", path,
                                              pty_throughput(paths, path, payload, pty_size))))
        rows.append(("echo", lambda path: note("echo, median (ms)", path, echo_ms(paths, path, args.keys))))
        rows.append(("ctrl-c", lambda path: note("Ctrl-C under a flood, to the prompt (ms)", path,
                                                 ctrl_c_ms(paths, path))))

        def o_row(path: str) -> None:
            note("open + true (ms)", path, statistics.median(open_ms(paths, path) for _ in range(args.opens)))

        rows.append(("open", o_row))
        rows.append(("cp up", cp_row("up")))
        rows.append(("cp down", cp_row("down")))
        if args.only:
            rows = [(name, measure) for name, measure in rows if name in args.only]
        for r in range(args.rounds):
            for i, (name, measure) in enumerate(rows):
                order = list(PATHS)
                shift = (r + i) % len(order)
                order = order[shift:] + order[:shift]
                for path in order:
                    print(f"cluster bench: round {r + 1}/{args.rounds} {name} {path}", file=sys.stderr, flush=True)
                    measure(path)
    finally:
        ssh.stop()
        site.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return render(results, cpu, args)


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def render(results: dict[str, dict[str, list[float]]], cpu: dict[str, dict[str, list[float]]],
           args: argparse.Namespace) -> str:
    direct = " --direct" if args.direct else ""
    if args.only:
        direct += f" --only '{','.join(args.only)}'"
    lines = [f"`python3 bench/cluster_bench.py --rounds {args.rounds}{direct}` (-T {args.t_mb} MB, "
             f"PTY {args.pty_mb} MB, "
             f"{args.keys} keystrokes, {args.opens} opens, cp {args.cp_mb} MB per round); medians per path over the "
             "rounds, and the median (min-max) of the per-round ratios via A / other.", "",
             "| row | via A | B direct | ssh -J | via A / B direct | via A / ssh -J |",
             "|---|---|---|---|---|---|"]
    for row, by_path in results.items():
        meds = [f"{statistics.median(by_path[p]):.2f}" if p in by_path else "-" for p in PATHS]
        ratios = []
        for other in ("B direct", "ssh -J"):
            pairs = list(zip(by_path.get("via A", []), by_path.get(other, []), strict=False))
            ratios.append(_fmt([a / o for a, o in pairs]) if pairs else "-")
        lines.append(f"| {row} | {' | '.join(meds)} | {' | '.join(ratios)} |")
    lines += ["", "CPU seconds per GB over the -T transfer and the copies (median of the rounds):", "",
              "| transfer, path | master A | master B | router |", "|---|---|---|---|"]
    for path, by_name in cpu.items():
        cells = [f"{statistics.median(by_name[n]):.2f}" for n in ("master A", "master B", "router")]
        lines.append(f"| {path} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--t-mb", type=int, default=200, help="-T throughput size, MB")
    parser.add_argument("--pty-mb", type=int, default=50, help="PTY throughput size, MB")
    parser.add_argument("--keys", type=int, default=200, help="keystrokes per echo measurement")
    parser.add_argument("--opens", type=int, default=5, help="opens per round and path")
    parser.add_argument("--cp-mb", type=int, default=200, help="cp size, MB")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round")
    parser.add_argument("--direct", action="store_true",
                        help="B offers routed sessions a direct stream to its PB port (ClusterConfig direct=True)")
    parser.add_argument("--output", help="write the table to this file too")
    parser.add_argument("--only", type=lambda text: [r.strip() for r in text.split(",")],
                        help=f"only these rows, comma-separated: {', '.join(ROWS)}")
    args = parser.parse_args()
    if args.only and not set(args.only) <= set(ROWS):
        parser.error(f"--only takes rows among: {', '.join(ROWS)}")
    if args.smoke:
        args.rounds, args.t_mb, args.pty_mb, args.keys, args.opens, args.cp_mb = 1, 5, 2, 10, 1, 2
    try:
        table = run(args)
    except SiteUnavailable as e:
        print(f"cluster bench: cannot start a multi-master site here: {e}", file=sys.stderr)
        return 2
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
