"""Where a first prompt's time goes, slaveshell against OpenSSH: before the login shell, in it, and after it.

    python3 bench/prompt_split.py                  # 6 alternated rounds, the bench user's own startup files
    python3 bench/prompt_split.py --skel-home      # both sessions' HOME a copy of /etc/skel (bench/run.py)
    python3 bench/prompt_split.py --rounds 10 --true   # also `-T true`, split the same way

bench/fair.py's "first prompt" (the interactive client spawned in a PTY until `[#$] ` is read off it) and "open +
`true`" rows, each measured the same way here, with a system-wide `perf record` of the scheduler's fork, exec and
exit events beside them (no system call is traced, so nothing in the session is slowed), on the same clock
(CLOCK_MONOTONIC). From the events, per measurement:

- **to the shell**: from spawning the client to the exec of the user's shell by a descendant of the server
  (the worker, or the sshd listener): the client's start, the connection, what each server does before it starts
  the shell;
- **shell processes**: the processes the shell and its descendants started before the prompt (the startup files'
  work: `id`, `dircolors`, a version manager's init...);
- **in the shell**: from the shell's exec to the exit of the last of those processes;
- **to the screen**: from that exit to the prompt read off the client's terminal (the rest of the shell's start,
  and the way back through the server and the client). For `-T true`: to the client's exit.

Needs root and perf (Debian's linux-perf). The totals move with the machine's load as fair.py's do; the split
says which part moved. Nothing is written: it prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pexpect  # noqa: E402
from run import OpenSSH, Slaveshell, cache_bytecode, skel_home  # noqa: E402

EVENTS = "sched:sched_process_fork,sched:sched_process_exec,sched:sched_process_exit"
_FORK = re.compile(r"\bpid=(?P<parent>\d+) child_comm=.* child_pid=(?P<child>\d+)$")
_LINE = re.compile(r"\s*(?P<comm>.+?)\s+(?P<pid>\d+)\s+\[\d+\]\s+(?P<t>\d+\.\d+):\s+"
                   r"sched:(?P<kind>\w+):\s+(?P<rest>.*)")


@dataclass(frozen=True)
class Event:
    """One scheduler event as `perf script` prints it: seconds on CLOCK_MONOTONIC, the kind, the process, and
    for a fork the child, for an exec the file."""

    t: float
    kind: str  # fork, exec, exit
    pid: int
    child: int = 0
    filename: str = ""


def parse(lines: Iterable[str]) -> list[Event]:
    events = []
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        kind, rest, pid = m["kind"].removeprefix("sched_process_"), m["rest"], int(m["pid"])
        if kind == "fork":
            f = _FORK.search(rest)
            if f:
                events.append(Event(float(m["t"]), kind, int(f["parent"]), child=int(f["child"])))
        elif kind == "exec":
            f = re.search(r"filename=(\S+)", rest)
            events.append(Event(float(m["t"]), kind, pid, filename=f.group(1) if f else ""))
        elif kind == "exit":
            events.append(Event(float(m["t"]), kind, pid))
    return events


@dataclass(frozen=True)
class Split:
    to_shell: float  # milliseconds
    processes: int
    in_shell: float
    to_screen: float

    @property
    def total(self) -> float:
        return self.to_shell + self.in_shell + self.to_screen


def split(events: list[Event], server: int, shell: str, start: float, end: float) -> Split | None:
    """The split of one measurement from `start` to `end` (CLOCK_MONOTONIC seconds): `shell` exec'd by a
    descendant of `server`, its descendants' forks and exits. None when no such exec is in the window."""
    parent: dict[int, int] = {}
    for e in events:
        if e.kind == "fork" and e.t <= end:
            parent[e.child] = e.pid

    def under_server(pid: int) -> bool:
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid == server:
                return True
        return False

    window = [e for e in events if start <= e.t <= end]
    login = next((e for e in window if e.kind == "exec" and e.filename == shell and under_server(e.pid)), None)
    if login is None:
        return None
    family, processes, last = {login.pid}, 0, login.t
    for e in window:
        if e.t < login.t:
            continue
        if e.kind == "fork" and e.pid in family:
            family.add(e.child)
            processes += 1
        elif e.kind == "exit" and e.pid in family and e.pid != login.pid:
            last = e.t
    return Split((login.t - start) * 1000, processes, (last - login.t) * 1000, (end - last) * 1000)


def first_prompt(argv: list[str]) -> tuple[float, float]:
    start = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), env=dict(os.environ, TERM="xterm"), timeout=30)
    try:
        child.expect(r"[#$] ")
        return start, time.monotonic()
    finally:
        child.terminate(force=True)


def open_true(argv: list[str]) -> tuple[float, float]:
    start = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=True)
    return start, time.monotonic()


def _fmt(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(results: dict[str, list[Split]]) -> str:
    rows = ["| measurement | total (ms) | to the shell | shell processes | in the shell | to the screen |",
            "|---|---|---|---|---|---|"]
    for name, splits in results.items():
        if splits:
            rows.append(f"| {name} | {_fmt([s.total for s in splits])} | {_fmt([s.to_shell for s in splits])} | "
                        f"{_fmt([float(s.processes) for s in splits], 0)} | {_fmt([s.in_shell for s in splits])} | "
                        f"{_fmt([s.to_screen for s in splits])} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--skel-home", action="store_true", help="both sessions' HOME a copy of /etc/skel")
    ap.add_argument("--true", action="store_true", help="also `-T true`, split the same way")
    args = ap.parse_args()
    if not shutil.which("perf") or os.geteuid() != 0:
        ap.error("needs root and perf (apt-get install linux-perf)")
    shell = pwd.getpwuid(os.getuid()).pw_shell
    work = Path(tempfile.mkdtemp(prefix="slaveshell-split-"))
    cache_bytecode(work)
    home = skel_home(work) if args.skel_home else None
    ours, ssh = Slaveshell(work, work / "step-time", home=home), OpenSSH(work, home=home)
    recorder = None
    marks: list[tuple[str, int, float, float]] = []
    try:
        ours.start()
        ssh.start()
        assert ssh.proc is not None
        servers = {"slaveshell": ours.pids()["worker"], "OpenSSH": ssh.proc.pid}
        data = work / "perf.data"
        recorder = subprocess.Popen(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-a", "-e", EVENTS,
                                     "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # perf's own start
        systems: list[Slaveshell | OpenSSH] = [ours, ssh]
        for rnd in range(args.rounds):
            for system in systems if rnd % 2 == 0 else systems[::-1]:
                marks.append((f"{system.name}, first prompt", servers[system.name],
                              *first_prompt(system.argv(None, tty=True))))
                time.sleep(0.3)
                if args.true:
                    marks.append((f"{system.name}, open + `true`", servers[system.name],
                                  *open_true(system.argv("true", tty=False))))
                    time.sleep(0.3)
        time.sleep(0.3)
        recorder.send_signal(signal.SIGINT)
        recorder.wait()
        recorder = None
        out = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True)
        events = parse(out.stdout.splitlines())
    finally:
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        ours.stop()
        ssh.stop()
        shutil.rmtree(work, ignore_errors=True)
    results: dict[str, list[Split]] = {}
    for name, server, start, end in marks:
        s = split(events, server, shell, start, end)
        results.setdefault(name, [])
        if s is not None:
            results[name].append(s)
    print(f"`python3 bench/prompt_split.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')} "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); {args.rounds} rounds, alternated"
          + ("; both sessions' HOME a copy of /etc/skel" if home else "") + ". Median (min-max).\n")
    print(table(dict(sorted(results.items()))))
    missing = {name: args.rounds - len(splits) for name, splits in results.items() if len(splits) < args.rounds}
    if missing:
        print("\nno shell exec found in the window (not counted): " + json.dumps(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
