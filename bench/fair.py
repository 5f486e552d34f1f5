"""slaveshell against OpenSSH, alternated round by round, judged on the spread: a measurement that cannot flatter us.

    python3 bench/fair.py                     # loopback, 5 rounds, full sizes (a quiet machine: ~30-40 minutes)
    python3 bench/fair.py --quick             # 2 rounds at small sizes: proves the harness, judges nothing
    python3 bench/fair.py --rtt-ms 20,100,200 --rate-mbit 50   # the internet rows, each link through a proxy
    python3 bench/fair.py --only throughput,echo --kinds text --rounds 7   # parts, content kinds, rounds
    python3 bench/fair.py --smoke --rtt-ms 10  # tiny sizes (tests/e2e/test_bench_smoke.py)

One throwaway sshd (bench/run.py's) and one throwaway master and worker, in one run. Every row is measured once per
round on each system, the two back to back, the order swapped from row to row and round to round (a loaded
machine's drift then falls on both). A row's ratio is slaveshell / OpenSSH per round; the table gives the median
of those per-round ratios and their min-max, not a ratio of medians. A target is met only when the median meets
it and the worst round is within 20 % of it (`meets`); what the ratio is judged on is in the target column.

Rows (PARTS):
- throughput: `cat FILE` through a PTY (`buildbot-shell -t` / `ssh -tt`) and through pipes (`-T` / `ssh -T`),
  timed from the first byte read to the end (the session's opening is a row of its own, so a fast open does not
  pad a throughput figure); for each content kind (KINDS).
- input: the same file piped into `-T 'echo go; exec wc -c'`, timed from `go` to wc's count (checked).
- echo: keystrokes in `stty -icanon; cat` (bench/run.py's loop), each a fixed spacing after the previous echo:
  2 ms (keys queue) and 100 ms (human typing) on loopback, 100 ms through the proxy; per round, each system's
  median and p99.
- open: `true` as a command, whole; first prompt of an interactive shell. Both login shells run the user's startup
  files, and both `-T true` too on OpenSSH's side: Debian's bash reads ~/.bashrc for a command when sshd starts
  it (SSH_CLIENT set), which slaveshell's worker does not. Where those files are slow (a version manager's init),
  they, not either system, set both figures: --skel-home gives both systems' sessions the same new user's files.
- ctrlc: `yes` read as fast as it arrives, then Ctrl-C: milliseconds until the prompt, and bytes after the ^C.
- cp: one random file up and down (`slaveshell cp` / `scp -O`), timed whole (session open included: use a size
  where it does not matter), checked with sha256.
- tree: `cp -r` / `scp -O -r` of --files files of 1 KiB, up and down, timed whole, counted (through the proxy
  fewer files as the round trip grows: `tree_files`).

CPU seconds per GB per process beside each throughput and copy row (utime+stime, /proc and getrusage, as
bench/transfer_bench.py): slaveshell's client, master and worker (with its reaped children: the remote command),
OpenSSH's client (`ssh`, or `scp` with its `ssh`) and sshd (its per-connection processes and the remote command).

--rtt-ms: the worker's link to the master, and the ssh client's link to sshd, each through its own
bench/delay_proxy.py process with the same settings (rtt, --rate-mbit each way, --jitter-ms, --queue-ms); the
operator's side of slaveshell stays local (a master near its operators, workers far away). All listed round trips
run in the same run, on the same sandbox and sshd (the proxies are reconfigured between them).
Under each such table, the bytes each proxy delivered per row, each way (`Side.wire`): what a session cost on the
wire, headers, acknowledgements and deflating included.
slaveshell's client is the `buildbot-shell` script installed beside this interpreter (not a version manager's shim
on PATH), with its modules compiled once (bench/run.py's client_tool and cache_bytecode).
Nothing here is a timed assertion in a test; --output writes the table to a file (nothing is written otherwise).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pexpect  # noqa: E402
from cp_bench import sha  # noqa: E402
from delay_proxy import ProxyProcess  # noqa: E402
from run import (  # noqa: E402
    MB,
    OpenSSH,
    Slaveshell,
    cache_bytecode,
    ctrl_c_latency,
    echo_rtts,
    med,
    p99,
    skel_home,
    time_to_prompt,
    time_to_true,
)
from transfer_bench import Tools, cpu_seconds, run_timed, through_proxy  # noqa: E402

GB = 1024 * MB
SLACK = 0.20  # the worst round may miss the target by this much
# After a metered measurement, seconds for the remote command and sshd's per-connection processes to be reaped (the
# CPU of the master's end-of-session work counted too). --smoke instead waits, up to this, only until the server
# processes have no child that was not there before (its figures are not judged).
SETTLE = 0.3
SETTLE_BY_POLL = False
PARTS = ("throughput", "input", "echo", "open", "ctrlc", "cp", "tree")
KINDS = ("text", "binary", "escapes")


def meets(values: list[float], limit: float, better: str) -> bool:
    """The rule: the median meets `limit` and the worst value is within SLACK of it."""
    if not values:
        return False
    m = statistics.median(values)
    if better == "higher":
        return m >= limit and min(values) >= limit * (1 - SLACK)
    return m <= limit and max(values) <= limit * (1 + SLACK)


@dataclass
class Pair:
    """One row: a figure per round for each system; judged on the per-round ratio or on slaveshell's figure."""

    metric: str
    unit: str
    better: str  # "higher" or "lower": which way is good, for the figure and its ratio
    limit: float | None  # the target; None: reported only
    on: str = "ratio"  # "ratio": slaveshell / OpenSSH per round; "value": slaveshell's figure
    ours: list[float] = field(default_factory=list)
    ssh: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process -> CPU s/GB, one per round
    retried: list[str] = field(default_factory=list)  # measurements that failed once and were taken again
    windows: list[str] = field(default_factory=list)  # slaveshell's windows per round (`Windows`), for the notes
    # Bytes through each system's proxy per round (`Side.wire`): system key -> [(toward the operator, the other way)].
    wire: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def ratios(self) -> list[float]:
        return [o / s for o, s in zip(self.ours, self.ssh, strict=False) if s]

    def target(self) -> str:
        if self.limit is None:
            return "report"
        sign = ">=" if self.better == "higher" else "<="
        return f"ratio {sign} {self.limit:g}x" if self.on == "ratio" else f"{sign} {self.limit:g} {self.unit}"

    def verdict(self) -> str:
        if self.limit is None:
            return "-"
        judged = self.ratios() if self.on == "ratio" else self.ours
        return "met" if meets(judged, self.limit, self.better) else "**missed**"


# -- content ----------------------------------------------------------------------------------------

def _build_log(rnd: random.Random) -> str:
    mod, name = rnd.choice(("core", "net", "ui", "db", "io")), f"{rnd.choice('abcdefgh')}{rnd.randrange(999)}"
    return rnd.choice((
        f"[{rnd.randrange(100):3d}%] Building CXX object src/{mod}/CMakeFiles/{mod}.dir/{name}.cpp.o\n",
        f"/usr/bin/c++ -DNDEBUG -I/home/buildbot/worker/build/include -O2 -g -Wall -std=c++17 -o "
        f"CMakeFiles/{mod}.dir/{name}.cpp.o -c /home/buildbot/worker/build/src/{mod}/{name}.cpp\n",
        f"make[2]: Leaving directory '/home/buildbot/worker/build/src/{mod}'\n",
        f"test_{name} ({mod}.tests.Test{name.title()}) ... ok\n",
    ))


def _escapes(rnd: random.Random) -> str:
    """gcc's coloured diagnostics and `ls --color` lines (SGR sequences, UTF-8 quotes)."""
    mod, var, line = rnd.choice(("core", "net", "ui")), f"v{rnd.randrange(99)}", rnd.randrange(1, 2000)
    b, m, e = "\x1b[01m\x1b[K", "\x1b[01;35m\x1b[K", "\x1b[m\x1b[K"
    return rnd.choice((
        f"{b}src/{mod}/x{line}.c:{line}:9:{e} {m}warning: {e}unused variable \u2018{b}{var}{e}\u2019 "
        f"[{m}-Wunused-variable{e}]\n{line:5d} |   int {m}{var}{e} = 0;\n      |       {m}^~~{e}\n",
        f"\x1b[0m\x1b[01;34mbuild\x1b[0m  \x1b[01;32mrun-{var}.sh\x1b[0m  \x1b[01;36mlatest\x1b[0m  "
        f"\x1b[01;31mlogs-{line}.tar.gz\x1b[0m  README.md\n",
    ))


def make_content(kind: str, path: Path, size: int) -> None:
    """`size` bytes of one content kind: build-log text lines, random binary, or escape-heavy output."""
    with open(path, "wb") as f:
        if kind == "binary":
            for left in range(size, 0, -MB):
                f.write(os.urandom(min(MB, left)))
            return
        rnd, make = random.Random(25), _build_log if kind == "text" else _escapes
        block = bytearray()
        while len(block) < MB:
            block += make(rnd).encode()
        for left in range(size, 0, -MB):
            f.write(block[:min(MB, left)])


# -- the two systems, as measured here -----------------------------------------------------------

class Side:
    """A system under test: its command lines, and the processes whose CPU is counted."""

    def __init__(self, key: str, system: OpenSSH | Slaveshell, tools: Tools) -> None:
        self.key, self.system, self.tools = key, system, tools
        if isinstance(system, Slaveshell) or system.name == "slaveshell":  # run.py's own, run as __main__
            assert not isinstance(system, OpenSSH)
            pids = system.pids()
            self.servers = {"master": (pids["master"], False), "worker": (pids["worker"], True)}
            self.client = "client"
        else:
            assert system.proc is not None
            self.servers = {"sshd": (system.proc.pid, True)}
            self.client = "ssh"
        self.proxy: ProxyProcess | None = None  # the link's proxy, when there is one

    def wire(self) -> tuple[int, int] | None:
        """The bytes the link's proxy has delivered so far: toward the operator (the worker's output to the master;
        sshd's to the client), and toward the remote side."""
        if self.proxy is None:
            return None
        to_target, from_target = self.proxy.delivered()
        # slaveshell's proxy is connected to by the worker (its target: the master); OpenSSH's by the client.
        return (to_target, from_target) if self.key == "ours" else (from_target, to_target)

    def argv(self, command: str, tty: bool) -> list[str]:
        return self.system.argv(command, tty)

    def metered(self, run: Callable[[], float]) -> tuple[float, dict[str, float]]:
        """run()'s result, and the CPU seconds each process spent meanwhile (the client's: reaped children)."""
        before = {name: cpu_seconds(pid, children) for name, (pid, children) in self.servers.items()}
        kids = {pid: child_pids(pid) for pid, children in self.servers.values() if children}
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        settle(kids)  # the remote command and sshd's per-connection processes reaped
        cpu = {name: cpu_seconds(pid, children) - before[name] for name, (pid, children) in self.servers.items()}
        cpu[self.client] = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        return result, cpu


def child_pids(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except OSError:
        return set()


def settle(kids: dict[int, set[int]]) -> None:
    """Wait SETTLE seconds; polling (SETTLE_BY_POLL), at most that, until each process in `kids` (pid -> its
    children before) has no child but those."""
    if not SETTLE_BY_POLL:
        time.sleep(SETTLE)
        return
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline and any(child_pids(pid) - before for pid, before in kids.items()):
        time.sleep(0.01)


def watchdog(proc: subprocess.Popen[bytes], seconds: float = 900) -> None:
    """Kill `proc` if it is still running after `seconds` (a stalled measurement then fails instead of hanging)."""
    def expire() -> None:
        if proc.poll() is None:
            proc.kill()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def output_rate(side: Side, path: Path, size: int, tty: bool) -> float:
    """MB/s of `cat path` from the first byte read to the end of the output."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(side.argv(f"cat {path}", tty), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
        assert proc.stdout is not None
        watchdog(proc)
        fd, first, got, start = proc.stdout.fileno(), 0, 0, 0.0
        while chunk := os.read(fd, MB):
            if not first:
                first, start = len(chunk), time.perf_counter()
            got += len(chunk)
        end = time.perf_counter()
        if proc.wait() != 0 or got < size:  # a terminal's output may be longer (\n -> \r\n), never shorter
            err.seek(0)
            raise RuntimeError(f"{side.key}: cat gave {got} of {size} bytes: {err.read()[-500:]!r}")
    return (size - first) / MB / max(end - start, 1e-6)


def input_rate(side: Side, path: Path, size: int) -> float:
    """MB/s of `path` piped into the remote `wc -c`, from its `go` to its count (checked)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(side.argv("echo go; exec wc -c", False), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None and proc.stdout is not None
        watchdog(proc)
        if proc.stdout.readline() != b"go\n":
            proc.kill()
            raise RuntimeError(f"{side.key}: no 'go' from the remote command")
        start = time.perf_counter()
        with open(path, "rb") as f:
            while chunk := f.read(MB):
                proc.stdin.write(chunk)
        proc.stdin.close()
        count = proc.stdout.read()
        end = time.perf_counter()
        if proc.wait() != 0 or count.split()[:1] != [str(size).encode()]:
            err.seek(0)
            raise RuntimeError(f"{side.key}: wc -c said {count!r} for {size} bytes: {err.read()[-500:]!r}")
    return size / MB / (end - start)


def copy_rate(side: Side, src: str, dst: str, size: int, check: Callable[[], None],
              recursive: bool = False) -> float:
    """Units per second of one copy (size: MB, or files), timed whole, then checked."""
    wall, _ = run_timed(side.tools.copy(side.key, src, dst, recursive))
    check()
    return size / wall


# -- the rows ---------------------------------------------------------------------------------------

@dataclass
class Step:
    """What one round does on one system: its figures, one per Pair, and the CPU spent per GB (or None)."""

    pairs: list[Pair]
    run: Callable[[Side], list[float]]
    gb: float = 0.0  # data moved, for CPU s/GB; 0: no CPU column

    def once(self, side: Side) -> None:
        before = side.wire()
        self._once(side)
        after = side.wire()
        if before is not None and after is not None:
            self.pairs[0].wire.setdefault(side.key, []).append((after[0] - before[0], after[1] - before[1]))

    def _once(self, side: Side) -> None:
        if self.gb:
            values, cpu = side.metered(lambda: self.run(side)[0])
            figures = [values]
            for name, seconds in cpu.items():
                self.pairs[0].cpu.setdefault(name, []).append(seconds / self.gb)
        else:
            figures = self.run(side)
        for pair, figure in zip(self.pairs, figures, strict=True):
            getattr(pair, side.key).append(figure)


@dataclass
class Link:
    """Where the links are: loopback (rtt None), or through the proxies with these settings."""

    rtt_ms: float | None
    rate_mbit: float = 0
    jitter_ms: float = 0

    def label(self) -> str:
        if self.rtt_ms is None:
            return ""
        rate = f", {self.rate_mbit:g} Mbit/s" if self.rate_mbit else ""
        jitter = f", jitter {self.jitter_ms:g} ms" if self.jitter_ms else ""
        return f" @ {self.rtt_ms:g} ms{rate}{jitter}"


@dataclass
class Sizes:
    stream_mb: int
    cp_mb: int
    files: int
    keys: int  # at 2 ms spacing (loopback only)
    slow_keys: int  # at 100 ms spacing
    files_said: bool = False  # --files given: every link's `cp -r` rows use that many files


def _one(measure: Callable[..., float], *args: object) -> list[float]:
    """A Step's run for a measurement of one figure: partial(_one, measure, args...)(side)."""
    *head, side = args
    return [measure(side, *head)]


def steps(link: Link, parts: set[str], kinds: list[str], sizes: Sizes, files: dict[str, Path],
          work: Path) -> list[Step]:
    at = link.label()
    wan = link.rtt_ms is not None
    even = 1.0  # internet targets: no worse than OpenSSH through the same proxy
    out: list[Step] = []
    size = sizes.stream_mb * MB
    gb = size / GB
    if "throughput" in parts:
        for kind in kinds:
            path = files[kind]
            out.append(Step([Pair(f"PTY `cat`, {kind}{at}", "MB/s", "higher", 1.0)],
                            functools.partial(_one, output_rate, path, size, True), gb))
            out.append(Step([Pair(f"`-T cat`, {kind}{at}", "MB/s", "higher", 1.0)],
                            functools.partial(_one, output_rate, path, size, False), gb))
    if "input" in parts:
        for kind in kinds:
            out.append(Step([Pair(f"piped into `-T wc -c`, {kind}{at}", "MB/s", "higher", 1.0)],
                            functools.partial(_one, input_rate, files[kind], size), gb))
    if "echo" in parts:
        for spacing, keys in ((() if wan else ((2, sizes.keys),)) + ((100, sizes.slow_keys),)):
            def echo(s: Side, spacing: int = spacing, keys: int = keys) -> list[float]:
                rtts = echo_rtts(s.system, keys, spacing / 1000)
                return [med(rtts), p99(rtts)]
            out.append(Step([Pair(f"keystroke echo, median, {keys} keys {spacing} ms apart{at}", "ms", "lower",
                                  even if wan else 2.0),
                             Pair(f"keystroke echo, p99, {keys} keys {spacing} ms apart{at}", "ms", "lower",
                                  even if wan else 2.0, "ratio" if wan else "value")], echo))
    if "open" in parts:
        out.append(Step([Pair(f"open + `true`{at}", "ms", "lower", even if wan else 0.5)],
                        lambda s: [time_to_true(s.system)]))
        out.append(Step([Pair(f"first prompt{at}", "ms", "lower", even if wan else 0.5)],
                        lambda s: [time_to_prompt(s.system)]))
    if "ctrlc" in parts:
        out.append(Step([Pair(f"Ctrl-C under a flood, to the prompt{at}", "ms", "lower",
                              (link.rtt_ms or 0) + 100, "value"),
                         Pair(f"Ctrl-C under a flood, bytes after ^C{at}", "bytes", "lower", even if wan else None)],
                        lambda s: list(ctrl_c_latency(s.system))))
    if "cp" in parts:
        src, digest = files["cp"], files["cp-sha"].read_text()
        for key in ("up", "down"):
            def copy(s: Side, key: str = key) -> list[float]:
                there, back = work / "remote" / f"up-{s.key}", work / f"down-{s.key}"
                if key == "up":
                    def check() -> None:
                        if sha(there) != digest:
                            raise RuntimeError(f"{s.key} cp up: the copy differs")
                    return [copy_rate(s, str(src), f"remote:{there}", sizes.cp_mb, check)]
                if not there.exists():  # rows run in order, but a part may be asked for alone
                    shutil.copy(src, there)

                def check_back() -> None:
                    if sha(back) != digest:
                        raise RuntimeError(f"{s.key} cp down: the copy differs")
                return [copy_rate(s, f"remote:{there}", str(back), sizes.cp_mb, check_back)]
            out.append(Step([Pair(f"cp of one {sizes.cp_mb} MB file, {key}{at}", "MB/s", "higher", 1.0)], copy,
                            sizes.cp_mb / 1024))
    if "tree" in parts:
        # Each copy into a directory of a new name, none removed before the run's end: 10,000 files removed just
        # before 10,000 are created made creating them crawl (up to ~1 ms a file, for scp as for us).
        count = tree_files(link, sizes)
        source = files[f"tree-{count}"]
        for key in ("up", "down"):
            def tree(s: Side, key: str = key) -> list[float]:
                n = next(_COPIES)
                there, back = work / "remote" / f"tree-{s.key}-of-{count}", work / f"back-{s.key}-{n}"
                if key == "up":
                    there = work / "remote" / f"tree-{s.key}-{n}"
                src, dst = (str(source), f"remote:{there}") if key == "up" else (f"remote:{there}", str(back))
                out_dir = there if key == "up" else back
                if key == "down" and not there.exists():
                    shutil.copytree(source, there)

                def check() -> None:
                    got = [p.stat().st_size for p in out_dir.rglob("*") if p.is_file()]
                    if len(got) != count or sum(got) != count * 1024:
                        raise RuntimeError(f"{s.key} cp -r {key}: {len(got)} files, {sum(got)} bytes")
                return [copy_rate(s, src, dst, count, check, recursive=True)]
            out.append(Step([Pair(f"cp -r of {count} files of 1 KiB, {key}{at}", "files/s", "higher", 1.0)],
                            tree))
    return out


class Windows:
    """The credit windows slaveshell chose (slaveshell.vocabulary.windows), read from what the worker and the master
    log at each session's end: the worker's output window (its peak and the sizes it chose, KiB) and the input in
    flight the master saw (KiB), for the sessions that ended since the last look."""

    WORKER = re.compile(r"output window: base (\d+) KiB, cap (\d+) KiB, peak (\d+) KiB, min rtt ([\d.]+ ms|-), "
                        r"sizes \(KiB\) \[([\d,]*)\]")
    MASTER = re.compile(r"windows: output granted (\d+) KiB, peak (\d+) KiB in flight; input granted (\d+) KiB, "
                        r"peak (\d+) KiB in flight")

    def __init__(self, system: Slaveshell) -> None:
        self.logs = [Path(system.sandbox.worker_dir("w1"), "twistd.log"), Path(system.sandbox.master_dir, "twistd.log")]
        self.at = [self._size(p) for p in self.logs]

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def _read(self, i: int) -> bytes:
        """Log `i` from where the last look ended (from its start, when it was rotated)."""
        if self._size(self.logs[i]) < self.at[i]:
            self.at[i] = 0
        with open(self.logs[i], "rb") as f:
            f.seek(self.at[i])
            return f.read()

    def since(self, wait: float = 0.6) -> str:
        """What the sessions that ended since the last look chose. A session's end is logged just after its client
        exits: this waits up to `wait` seconds until both logs have a session's line."""
        deadline = time.monotonic() + wait
        while True:
            got = [self._read(i) for i in range(len(self.logs))]
            texts = [data.decode("utf-8", "replace") for data in got]
            if time.monotonic() >= deadline or (self.WORKER.search(texts[0]) and self.MASTER.search(texts[1])):
                break
            time.sleep(0.02)
        for i, data in enumerate(got):
            self.at[i] += len(data)
        out = []
        for m in self.WORKER.finditer(texts[0]):
            base, cap, peak, rtt, sizes = m.groups()
            if int(peak) > int(base) or sizes:
                chosen = sizes.split(",")
                shown = ",".join(chosen if len(chosen) <= 8 else chosen[:4] + ["..."] + chosen[-3:])
                out.append(f"output peak {peak} of {cap} KiB (rtt {rtt}; sizes {shown})")
            else:
                out.append(f"output {base} KiB (rtt {rtt})")
        for m in self.MASTER.finditer(texts[1]):
            _og, _op, ig, ip = m.groups()
            if int(ip):
                out.append(f"input peak {ip} of {ig} KiB in flight")
        return "; ".join(out) or "no session ended"


def run_rounds(sides: list[Side], rows: list[Step], rounds: int, windows: Windows | None = None) -> None:
    """Each round runs every row on both systems back to back, the order swapped from row to row and round to
    round."""
    for r in range(rounds):
        for i, step in enumerate(rows):
            for side in sides if (r + i) % 2 == 0 else sides[::-1]:
                try:
                    if windows is not None and side.key == "ours":
                        windows.since(wait=0)  # what ended before (the last look waited for its session's end)
                    step.once(side)
                    if windows is not None and side.key == "ours":
                        step.pairs[0].windows.append(f"round {r + 1}: {windows.since()}")
                except (RuntimeError, pexpect.ExceptionPexpect) as e:
                    # Once more, and said under the table; a second failure ends the run.
                    print(f"bench: round {r + 1}: {step.pairs[0].metric}: {side.key} failed, once more: {e}",
                          file=sys.stderr, flush=True)
                    step.pairs[0].retried.append(f"round {r + 1}, {side.system.name}: {str(e)[:160]}")
                    step.once(side)
            p = step.pairs[0]
            print(f"bench: round {r + 1}/{rounds}: {p.metric}: slaveshell {p.ours[-1]:.2f}, OpenSSH "
                  f"{p.ssh[-1]:.2f} {p.unit}", file=sys.stderr, flush=True)


# -- the table -------------------------------------------------------------------------------------

def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = med(values)
    digits = 0 if abs(m) >= 1000 else 1 if abs(m) >= 10 else 2
    text = f"{m:.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def _cpu(pair: Pair) -> str:
    if not pair.cpu:
        return ""
    def part(names: tuple[str, ...]) -> str:
        got = [(n, med(pair.cpu[n])) for n in names if n in pair.cpu]
        return " + ".join(f"{n} {v:.2f}" for n, v in got) + f" = {sum(v for _, v in got):.2f}"
    return f"{part(('client', 'master', 'worker'))}; {part(('ssh', 'sshd'))}"


def _wire(pair: Pair) -> str:
    def side(key: str) -> str:
        counts = pair.wire.get(key, [])
        if not counts:
            return "-"
        return f"{med([c[0] for c in counts]) / 1000:.1f} / {med([c[1] for c in counts]) / 1000:.1f}"
    return f"slaveshell {side('ours')}; OpenSSH {side('ssh')}"


def render(pairs: list[Pair], title: str) -> str:
    lines = [title, "",
             "| row | slaveshell | OpenSSH | ratio per round: median (min-max) | target | met | "
             "CPU s/GB, medians: slaveshell; OpenSSH |",
             "|---|---|---|---|---|---|---|"]
    for p in pairs:
        r = p.ratios()
        ratio = f"{med(r):.2f}x ({min(r):.2f}-{max(r):.2f})" if r else "-"
        lines.append(f"| {p.metric} ({p.unit}) | {_fmt(p.ours)} | {_fmt(p.ssh)} | {ratio} | {p.target()} | "
                     f"{p.verdict()} | {_cpu(p)} |")
    retried = [f"- {p.metric}: measured again after a failure ({r})" for p in pairs for r in p.retried]
    if retried:
        lines += ["", *retried]
    chosen = [f"- {p.metric}: {w}" for p in pairs for w in p.windows]
    if chosen:
        lines += ["", "Windows slaveshell chose (KiB; the worker's output window, and the input the master saw in "
                  "flight):", "", *chosen]
    wire = [f"- {p.metric}: {_wire(p)}" for p in pairs if p.wire]
    if wire:
        lines += ["", "Bytes through each system's proxy per round (KB toward the operator / toward the worker or "
                  "sshd, medians; slaveshell's proxy carries the worker's link, OpenSSH's the client's connection):",
                  "", *wire]
    met = sum(p.verdict() == "met" for p in pairs)
    judged = sum(p.limit is not None for p in pairs)
    return "\n".join(lines + ["", f"{met} of {judged} targets met (median meets it, worst round within "
                                  f"{SLACK:.0%} of it)."]) + "\n"


# -- the run ---------------------------------------------------------------------------------------

# Each `cp -r` of a run into a directory of its own, whatever its link (a second link's first copy up went into
# the first link's directory, which holds a copy already).
_COPIES = itertools.count()


def tree_files(link: Link, sizes: Sizes) -> int:
    """The files of the `cp -r` rows on `link`: `sizes.files`, or through the proxy, unless --files said,
    fewer as the round trip grows (1000 at 20 ms, 200 at 100 ms, 100 at 200 ms): `scp -O -r` waits about a round
    trip per file, so 1000 files at 200 ms took ~7 minutes a round. The rate per file is what the row compares."""
    if link.rtt_ms is None or sizes.files_said or link.rtt_ms <= 0:
        return sizes.files
    return min(sizes.files, max(100, round(20_000 / link.rtt_ms)))


def prepare(work: Path, kinds: list[str], parts: set[str], sizes: Sizes,
            trees: set[int] | None = None) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if parts & {"throughput", "input"}:
        for kind in kinds:
            files[kind] = work / f"content.{kind}"
            make_content(kind, files[kind], sizes.stream_mb * MB)
    if "cp" in parts:
        files["cp"], files["cp-sha"] = work / "cp.bin", work / "cp.sha"
        make_content("binary", files["cp"], sizes.cp_mb * MB)
        files["cp-sha"].write_text(sha(files["cp"]))
    if "tree" in parts:
        for count in sorted(trees or {sizes.files}):
            tree = files[f"tree-{count}"] = work / f"tree-{count}"
            for n in range(count):
                sub = tree / f"d{n // 1000}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"f{n}").write_bytes(os.urandom(1024))
    (work / "remote").mkdir()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds at small sizes: a smoke of the harness")
    ap.add_argument("--smoke", action="store_true", help="2 rounds at tiny sizes (the test suite's)")
    ap.add_argument("--only", metavar="PARTS", help=f"comma-separated, of: {','.join(PARTS)}")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"content kinds, of: {','.join(KINDS)}")
    ap.add_argument("--size-mb", type=int, help="for throughput and input (default 200; 20 through the proxy)")
    ap.add_argument("--cp-mb", type=int, help="the copied file (default 1024; 20 through the proxy)")
    ap.add_argument("--files", type=int, help="files of the tree (default 10000; through the proxy 1000 at 20 ms, "
                                              "fewer at longer round trips: 20000 / the round trip in ms, >= 100)")
    ap.add_argument("--keys", type=int, default=300, help="keystrokes 2 ms apart (loopback)")
    ap.add_argument("--slow-keys", type=int, help="keystrokes 100 ms apart (default 50; 30 through the proxy)")
    ap.add_argument("--rtt-ms", help="comma-separated round trips: the rows through the proxies, each in turn")
    ap.add_argument("--rate-mbit", type=float, default=50, help="the proxies' cap each way (0: none; default 50)")
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--queue-ms", type=float, default=None, help="the bottleneck's queue (default: one RTT)")
    ap.add_argument("--rows", metavar="WORDS", help="comma-separated: only the rows whose name holds one of them "
                    "(e.g. PTY: the PTY `cat` rows only)")
    ap.add_argument("--skel-home", action="store_true",
                    help="both systems' sessions get HOME, a copy of /etc/skel, instead of the user's own: the same "
                         "startup files as a new user's on both (bench/run.py's skel_home)")
    ap.add_argument("--output", help="also write the table to this file")
    args = ap.parse_args()
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    kinds = args.kinds.split(",")
    if parts - set(PARTS) or set(kinds) - set(KINDS):
        ap.error(f"parts: {','.join(PARTS)}; kinds: {','.join(KINDS)}")
    links = [Link(float(r), args.rate_mbit, args.jitter_ms) for r in args.rtt_ms.split(",")] if args.rtt_ms \
        else [Link(None)]
    wan = args.rtt_ms is not None
    if args.smoke:
        args.rounds, sizes = 2, Sizes(1, 1, 20, 5, 2)
        global SETTLE_BY_POLL
        SETTLE_BY_POLL = True
    elif args.quick:
        args.rounds, sizes = 2, Sizes(5 if wan else 20, 5 if wan else 50, 100 if wan else 500, 100, 10)
    else:
        sizes = Sizes(20 if wan else 200, 20 if wan else 1024, 1000 if wan else 10000, args.keys,
                      30 if wan else 50)
    sizes.stream_mb = args.size_mb or sizes.stream_mb
    sizes.cp_mb = args.cp_mb or sizes.cp_mb
    sizes.files = args.files or sizes.files
    sizes.files_said = args.files is not None
    sizes.slow_keys = args.slow_keys or sizes.slow_keys
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))  # still stops the sandbox, sshd and proxies
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="slaveshell-fair-"))
    cache_bytecode(work)
    home = skel_home(work) if args.skel_home else None
    ours, ssh = Slaveshell(work, work / "step-time", home=home), OpenSSH(work, home=home)
    proxies: list[ProxyProcess] = []
    tables = []
    try:
        files = prepare(work, kinds, parts, sizes, {tree_files(link, sizes) for link in links})
        first = links[0]

        def through(sandbox: object) -> None:
            if first.rtt_ms is not None:
                proxies.append(ProxyProcess(ours.sandbox.port, first.rtt_ms, first.rate_mbit, first.jitter_ms,
                                            args.queue_ms))
                through_proxy(ours.sandbox, proxies[-1].port)

        ours.start(through)
        ssh.start()
        if first.rtt_ms is not None:
            proxies.append(ProxyProcess(ssh.port, first.rtt_ms, first.rate_mbit, first.jitter_ms, args.queue_ms))
            ssh.client_port = proxies[-1].port
        tools = Tools(ours.sandbox, ssh)
        sides = [Side("ours", ours, tools), Side("ssh", ssh, tools)]
        if proxies:
            sides[0].proxy, sides[1].proxy = proxies
        for link in links:
            if link.rtt_ms is not None:
                for proxy in proxies:
                    proxy.configure(link.rtt_ms, link.rate_mbit, link.jitter_ms, args.queue_ms)
            rows = steps(link, parts, kinds, sizes, files, work)
            if args.rows:
                words = args.rows.split(",")
                rows = [step for step in rows if any(w in p.metric for p in step.pairs for w in words)]
            run_rounds(sides, rows, args.rounds, Windows(ours))
            where = ("loopback" if link.rtt_ms is None else
                     f"both links through bench/delay_proxy.py: {link.rtt_ms:g} ms round trip, "
                     + (f"{link.rate_mbit:g} Mbit/s each way, " if link.rate_mbit else "no rate cap, ")
                     + (f"jitter 0-{link.jitter_ms:g} ms, " if link.jitter_ms else "")
                     + f"queue {args.queue_ms if args.queue_ms is not None else max(link.rtt_ms, 20):g} ms")
            tables.append(render([p for step in rows for p in step.pairs],
                                 f"## slaveshell against OpenSSH, {where}\n\n`python3 bench/fair.py "
                                 f"{' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')} "
                                 f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); {args.rounds} rounds, "
                                 "alternated" + ("; both sessions' HOME a copy of /etc/skel" if home else "") + "."))
    finally:
        for proxy in proxies:
            proxy.stop()
        ours.stop()
        ssh.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join(tables) + f"\n({time.monotonic() - started:.0f} s)\n"
    print(report)
    if args.output:
        Path(args.output).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
