"""slaveshell against OpenSSH on loopback, side by side in one run.

    python3 bench/run.py                 # the full run (about 3 minutes); writes bench/RESULTS.md
    python3 bench/run.py --smoke         # tiny sizes, one round: keeps the benchmark from rotting
    python3 bench/run.py --only throughput,echo,record --no-ssh   # some parts only (prints, writes nothing)
    python3 bench/run.py --only transfer  # bench/transfer_bench.py's rows (not in the full run; in --smoke)

It starts a throwaway sshd on 127.0.0.1 (installing openssh-server with apt-get if it is missing; a generated
host key and client key) and a throwaway Buildbot master and worker, then measures both the same way. Absolute
figures drift between machines and runs: read the ratios. The rows against OpenSSH (throughput, echo, open,
ctrlc) are bench/fair.py's: alternated round by round, judged on the per-round ratios' median and worst round.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pexpect  # noqa: E402

from slaveshell.client.sandbox import Sandbox, free_port  # noqa: E402

MB = 1024 * 1024


# -- the two systems under test ------------------------------------------------------------------

def client_tool(name: str, module: str) -> list[str]:
    """How one of our console scripts is started: the script pip installed beside this interpreter (where a
    venv's or the system's PATH finds it, as `ssh` is /usr/bin/ssh), not whatever PATH finds first: a version
    manager's shim (pyenv's is a bash script that runs about 20 more processes to pick the interpreter) would
    be timed with it. `python -m MODULE` when the script is not installed."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", module]


def skel_home(work: Path) -> Path:
    """A home directory made from /etc/skel, as a new user's: with it as both systems' HOME (bench/fair.py
    --skel-home), both login shells run the same startup files (/etc/profile, then the skeleton's .profile and
    .bashrc) instead of the bench user's own, whose cost (a version manager's init, say) would otherwise dwarf
    what the two systems themselves do. The same files on both sides: neither skips a startup file."""
    home = work / "home"
    shutil.copytree("/etc/skel", home)
    return home


def cache_bytecode(work: Path) -> None:
    """Let our processes (client, master, worker) keep compiled modules: an installed package has them (pip
    compiles at install), while a checkout run with PYTHONDONTWRITEBYTECODE=1 would compile every module of the
    client again at each start and be timed doing it. The checkout's modules are compiled into its own
    `__pycache__` directories (ignored by git), as a developer's runs would; the installed packages' own stay in
    use (a PYTHONPYCACHEPREFIX would have the master and worker compile all of Buildbot and Twisted again at each
    run's start). `work`: where the compiling runs."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # The package as our processes import it (PYTHONPATH may name another tree than the bench's own).
    where = subprocess.run([sys.executable, "-c", "import slaveshell; print(*slaveshell.__path__, sep='\\n')"],
                           check=True, capture_output=True, text=True, cwd=work).stdout.split("\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", *filter(None, where)], check=True,
                   stdout=subprocess.DEVNULL)


class OpenSSH:
    name = "OpenSSH"

    def __init__(self, workdir: Path, home: Path | None = None) -> None:
        self.dir = workdir / "ssh"
        self.dir.mkdir()
        self.home = home  # HOME for sessions (sshd's SetEnv), instead of the user's: see `skel_home`
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.client_port = 0  # where clients connect: the port, or a delay proxy's in front of it

    def start(self) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            print("bench: installing openssh-server ...", file=sys.stderr)
            subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], check=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture_output=True)
        d = self.dir
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True)
        shutil.copy(d / "client.pub", d / "authorized_keys")
        os.chmod(d / "authorized_keys", 0o600)
        self.port = self.client_port = free_port()
        (d / "sshd_config").write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {d / 'host'}
            AuthorizedKeysFile {d / 'authorized_keys'}
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            StrictModes no
            UsePAM no
            PidFile {d / 'sshd.pid'}
            MaxStartups 200
            MaxSessions 200
            """) + (f"SetEnv HOME={self.home}\n" if self.home else ""))
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(self.argv("true", tty=False), capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("sshd did not come up")

    def argv(self, command: str | None, tty: bool) -> list[str]:
        argv = ["ssh", "-p", str(self.client_port), "-i", str(self.dir / "client"), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "-tt" if tty else "-T", "root@127.0.0.1"]
        return argv + ([command] if command else [])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


class Slaveshell:
    name = "slaveshell"

    def __init__(self, workdir: Path, build_marker: Path, step_loops: int = 3 * 10**7,
                 home: Path | None = None) -> None:
        # A CPU-bound build step that records its own duration: contention shows in it.
        step = (f"python3 -c \"import time; t=time.perf_counter(); sum(range({step_loops})); "
                f"open('{build_marker}', 'w').write(str(time.perf_counter() - t))\"")
        # 100 concurrent sessions of one user: above the default bounds per user (32 connections, 8 sessions).
        # HOME for sessions (the worker owner's env=), instead of the user's: see `skel_home`.
        opt_in = "max_sessions=200" + (f", env={{'HOME': {str(home)!r}}}" if home else "")
        self.sandbox = Sandbox(str(workdir / "bb"), workers=["w1"], opt_in_args=opt_in,
                               build_command=step,
                               service_kwargs="max_connections_per_uid=256, max_sessions_per_operator=200, "
                                              "max_sessions_per_worker=200")

    def start(self, configure: Callable[[Sandbox], None] | None = None) -> None:
        """Create and start the sandbox; `configure` runs in between (it may add to master.cfg)."""
        self.sandbox.create()
        if configure is not None:
            configure(self.sandbox)
        self.sandbox.start()

    def argv(self, command: str | None, tty: bool) -> list[str]:
        argv = client_tool("buildbot-shell", "slaveshell.shell_cli")
        argv += ["--socket", self.sandbox.socket, "-t" if tty else "-T", "w1"]
        return argv + (["--", command] if command else [])

    def pids(self) -> dict[str, int]:
        out = {}
        for name, d in (("master", self.sandbox.master_dir), ("worker", self.sandbox.worker_dir("w1"))):
            out[name] = int(Path(d, "twistd.pid").read_text().strip())
        return out

    def stop(self) -> None:
        self.sandbox.stop()


# -- measurements ---------------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    unit: str
    ours: list[float] = field(default_factory=list)
    ssh: list[float] = field(default_factory=list)
    target: str = ""
    better: str = "higher"  # or "lower"
    # How the target is judged: a function of (ours median, ssh median) -> bool, or None for "see note".
    met: Callable[[float, float | None], bool] | None = None
    note: str = ""


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def spawn_shell(system: OpenSSH | Slaveshell) -> pexpect.spawn:
    argv = system.argv(None, tty=True)
    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), env=dict(os.environ, TERM="xterm"), timeout=30)
    try:
        child.expect(r"[#$] ")
        child.sendline("bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='P''> '")
        child.expect("P> ")
    except pexpect.ExceptionPexpect:
        child.terminate(force=True)
        raise RuntimeError(f"{system.name}: no shell prompt within 30 s; last output "
                           f"{bytes(child.before or b'')[-200:]!r}") from None
    return child


def echo_rtts(system: OpenSSH | Slaveshell, count: int, spacing: float = 0.002) -> list[float]:
    """Milliseconds from each of `count` keystrokes to its echo, in `stty -icanon; cat` (see key_rtts)."""
    child = spawn_shell(system)
    child.sendline("stty -icanon; cat > /dev/null")
    time.sleep(0.5)
    drain(child.child_fd, 0.3)  # the command line's own echo holds the first keys' letters
    rtts = [seconds * 1000 for seconds in key_rtts(child.child_fd, count, spacing)]
    child.sendcontrol("c")
    child.terminate(force=True)
    return rtts


def key_rtts(fd: int, count: int, spacing: float = 0.002) -> list[float]:
    """`count` keystrokes written to the terminal `fd`, each `spacing` seconds after the previous one's echo:
    seconds until each one's echo is read back."""
    rtts = []
    for i in range(count):
        ch = bytes([ord("a") + i % 26])
        start = time.perf_counter()
        os.write(fd, ch)
        got = b""
        while ch not in got:
            if not select.select([fd], [], [], 30)[0]:
                raise RuntimeError(f"no echo of keystroke {i} within 30 s")
            got += os.read(fd, 1024)
        rtts.append(time.perf_counter() - start)
        time.sleep(spacing)
    return rtts


def time_to_true(system: OpenSSH | Slaveshell) -> float:
    start = time.perf_counter()
    subprocess.run(system.argv("true", tty=False), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return (time.perf_counter() - start) * 1000


def time_to_prompt(system: OpenSSH | Slaveshell) -> float:
    argv = system.argv(None, tty=True)
    start = time.perf_counter()
    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), env=dict(os.environ, TERM="xterm"), timeout=30)
    child.expect(r"[#$] ")
    elapsed = (time.perf_counter() - start) * 1000
    child.terminate(force=True)
    return elapsed


def drain(fd: int, quiet: float) -> int:
    """Read `fd` until nothing has come for `quiet` seconds: the bytes read."""
    got = 0
    while select.select([fd], [], [], quiet)[0]:
        try:
            got += len(os.read(fd, 65536))
        except OSError:  # the terminal's other end is gone
            break
    return got


def ctrl_c_latency(system: OpenSSH | Slaveshell, flood: float = 0.7) -> tuple[float, int]:
    """`yes` in the remote terminal, read as fast as it arrives for `flood` seconds, then Ctrl-C: (milliseconds
    until the prompt is back, bytes that arrived after the ^C)."""
    child = spawn_shell(system)
    fd = child.child_fd
    child.sendline("yes")
    end = time.monotonic() + flood
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.05)[0]:
            os.read(fd, 65536)
    start = time.perf_counter()
    child.sendcontrol("c")
    got, tail = 0, b""
    while b"P> " not in tail:
        if time.perf_counter() - start > 60:
            raise RuntimeError(f"{system.name}: no prompt 60 s after Ctrl-C")
        if select.select([fd], [], [], 1)[0]:
            chunk = os.read(fd, 65536)
            got += len(chunk)
            tail = tail[-2:] + chunk
    elapsed = (time.perf_counter() - start) * 1000
    child.terminate(force=True)
    return elapsed, got


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slow_reader_rss(system: Slaveshell, total: int) -> dict[str, float]:
    """RSS growth of master and worker while a reader consumes `total` bytes at a fraction of the rate."""
    pids = system.pids()
    base = {name: rss_kb(pid) for name, pid in pids.items()}
    peak = dict(base)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_kb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    proc = subprocess.Popen(system.argv(f"head -c {total} /dev/zero", tty=False), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    got = 0
    while True:
        chunk = proc.stdout.read(256 * 1024)
        if not chunk:
            break
        got += len(chunk)
        time.sleep(0.004)  # a slow terminal: ~60 MB/s at most
    proc.wait()
    stop.set()
    sampler.join()
    if got != total:
        raise RuntimeError(f"slow reader got {got} of {total} bytes")
    return {name: (peak[name] - base[name]) / 1024 for name in pids}


def concurrent_sessions(system: Slaveshell, count: int, rounds: int) -> tuple[int, list[float]]:
    procs = [subprocess.Popen(system.argv("cat", tty=False), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(count)]
    try:
        rtts: list[float] = []
        alive = 0
        for r in range(rounds):
            alive = 0
            for p in procs:
                assert p.stdin is not None and p.stdout is not None
                start = time.perf_counter()
                try:
                    p.stdin.write(b"ping\n")
                    p.stdin.flush()
                except BrokenPipeError:  # refused or ended: not alive
                    continue
                line = p.stdout.readline()
                if line == b"ping\n":
                    alive += 1
                    if r:  # the first round includes the sessions' start
                        rtts.append((time.perf_counter() - start) * 1000)
        return alive, rtts
    finally:
        for p in procs:
            p.kill()
            p.wait()


def build_step_seconds(system: Slaveshell, marker: Path, flood: list[str] | None) -> float:
    flooder = None
    if flood:
        flooder = subprocess.Popen(flood, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(1)
    try:
        marker.unlink(missing_ok=True)
        before = len(system.sandbox.builds())
        system.sandbox.send_change()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = [b for b in system.sandbox.builds()[before:] if b[1] is not None]
            if done and marker.exists():
                return float(marker.read_text())
            time.sleep(0.2)
        raise RuntimeError("the build did not finish")
    finally:
        if flooder is not None:
            flooder.send_signal(signal.SIGTERM)
            flooder.wait()


def record_cost(chunk: bytes, count: int, write_through: bool) -> float:
    """Microseconds of the master's recording work per output chunk (encode and write to a real transcript
    file): write-through (each chunk reaches the kernel before it is relayed, as the master does) or batched
    (written per 64 KiB, as before write-through)."""
    from master_side.audit.recorder import SessionRecorder
    from slaveshell.vocabulary.transcript import CastEncoder

    with tempfile.TemporaryDirectory(prefix="slaveshell-record-") as d:
        rec = SessionRecorder("bench", os.path.join(d, "s.cast"), CastEncoder(), None, started=0.0)
        rec.create(CastEncoder.header(80, 24, 0))
        assert rec.file is not None
        start = time.perf_counter()
        for _ in range(count):
            if write_through:
                rec.output(chunk)
            else:
                rec.file.add(rec.encoder.output(rec._t(), chunk))
                if rec.file.pending >= 64 * 1024:
                    rec.file.flush()
        rec.file.flush()
        elapsed = time.perf_counter() - start
        rec.file.close()
    return elapsed / count * 1e6


# -- the run --------------------------------------------------------------------------------------

PARTS = ("record", "storage", "throughput", "echo", "open", "ctrlc", "memory", "concurrent", "build", "transfer")
# Measured by bench/fair.py's code (throughput: PTY and -T output, and piped input, per content kind).
COMPARED = ("throughput", "echo", "open", "ctrlc")
# Not in the full run (bench/transfer_bench.py, ~6 minutes on its own): asked for with --only, and in --smoke.
OPT_IN_PARTS = {"transfer"}

def storage_ratio(system: Slaveshell, payload: Path) -> float:
    """`-T cat` of `payload`: what the master's transcripts directory grew by, over the payload's size."""
    directory = Path(system.sandbox.master_dir, "transcripts")

    def used() -> int:
        return sum(p.stat().st_size for p in directory.iterdir()) if directory.exists() else 0

    before = used()
    done = subprocess.run(system.argv(f"cat {payload}", tty=False), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"cat failed: {done.stderr!r}")
    time.sleep(0.5)  # the end's markers
    return (used() - before) / payload.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round (for the test suite)")
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-ssh", action="store_true", help="measure slaveshell only")
    ap.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--only", metavar="PARTS",
                    help=f"comma-separated parts to run, of: {','.join(PARTS)} (then nothing is written)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda _n, _f: sys.exit(143))  # still stops the sandbox and sshd
    parts = set(PARTS) - OPT_IN_PARTS if not args.only else set(args.only.split(","))
    if parts - set(PARTS):
        ap.error(f"unknown part(s): {','.join(sorted(parts - set(PARTS)))}")
    if args.smoke:
        args.size_mb, args.rounds = 2, 1
        if not args.only:
            parts = set(PARTS)
    size = args.size_mb * MB
    keys = 20 if args.smoke else 1000
    flood_total = 8 * MB if args.smoke else 1024 * MB
    sessions = 5 if args.smoke else 100

    import transfer_bench  # here: it imports this module's OpenSSH and Row

    work = Path(tempfile.mkdtemp(prefix="slaveshell-bench-"))
    cache_bytecode(work)
    data = work / "data.txt"
    with open(data, "wb") as f:  # text, like a build log: base64 lines of 76 characters
        subprocess.run(f"base64 /dev/urandom | head -c {size}", shell=True, stdout=f, check=True)
    marker = work / "step-time"
    ours = Slaveshell(work, marker, 3 * 10**6 if args.smoke else 3 * 10**7)  # the smoke's build step: ~0.1 s
    ssh = None if args.no_ssh else OpenSSH(work)
    rows: list[Row] = []
    compared_table = ""
    places: list[transfer_bench.Places] = []  # the transfer builder's files, when that part runs

    def configure(sandbox: Sandbox) -> None:
        if "transfer" in parts:
            places.append(transfer_bench.add_transfer_builder(sandbox, work))

    try:
        ours.start(configure)
        if ssh:
            ssh.start()
        if "record" in parts:
            print("bench: recording cost ...", file=sys.stderr)
            text = data.read_bytes()
            for label, chunk, count in (("a 64 KiB output chunk", text[:64 * 1024], 1000),
                                        ("a 4 KiB output chunk", text[:4096], 10000),
                                        ("a 1-byte echo", b"a", 20000)):
                n = max(1, count // 10) if args.smoke else count
                through, batched = [], []
                for _ in range(args.rounds):  # interleaved: a loaded machine drifts
                    through.append(record_cost(chunk, n, True))
                    batched.append(record_cost(chunk, n, False))
                rows.append(Row(f"recording {label}, write-through", "us", through, [], "see note", "lower",
                                note=f"batched per 64 KiB as before: {med(batched):.1f} us in the same run"))

        if "storage" in parts:
            print("bench: transcript storage ...", file=sys.stderr)
            binary, lines = work / "storage.bin", work / "storage.txt"
            storage_size = (2 if args.smoke else 20) * MB
            binary.write_bytes(os.urandom(storage_size))
            lines.write_bytes(data.read_bytes()[:storage_size])
            for label, payload in (("binary", binary), ("text", lines)):
                ratio = storage_ratio(ours, payload)
                rows.append(Row(f"transcript storage, {storage_size // MB} MB of {label} through `-T`", "x",
                                [ratio], [], "<= 1.05x", "lower", lambda o, s: o <= 1.05,
                                note=f"{ratio:.4f}x: bytes the transcripts directory grew by, over the bytes "
                                     "printed"))

        compared = parts & set(COMPARED)
        if compared and ssh:  # bench/fair.py's rows: alternated rounds, per-round ratios, the 20 % rule
            import fair
            from transfer_bench import Tools

            kinds = ["text"] if args.smoke else list(fair.KINDS)
            fair.SETTLE_BY_POLL = args.smoke
            fair_parts = (compared - {"throughput"}) | ({"throughput", "input"} if "throughput" in compared else set())
            sizes = fair.Sizes(args.size_mb, 0, 0, keys, 3 if args.smoke else 50)
            files = fair.prepare(work, kinds, fair_parts, sizes)
            tools = Tools(ours.sandbox, ssh)
            steps = fair.steps(fair.Link(None), fair_parts, kinds, sizes, files, work)
            # At least 2 rounds, for a spread; the smoke run takes 1 (bench/fair.py --smoke runs the alternation
            # itself, 2 rounds, in the test suite).
            fair.run_rounds([fair.Side("ours", ours, tools), fair.Side("ssh", ssh, tools)], steps,
                            1 if args.smoke else max(2, args.rounds))
            compared_table = fair.render([p for step in steps for p in step.pairs],
                                         "## Against OpenSSH, alternated (bench/fair.py's rows)")
        elif compared:
            print("bench: the comparison rows need OpenSSH (bench/fair.py): left out with --no-ssh", file=sys.stderr)

        if "memory" in parts:
            print("bench: memory under a slow reader ...", file=sys.stderr)
            growth = slow_reader_rss(ours, flood_total)
            rows.append(Row(f"RSS growth, master, slow reader of {flood_total // MB} MB", "MB", [growth["master"]],
                            [], "< 32 MB", "lower", lambda o, s: o < 32))
            rows.append(Row(f"RSS growth, worker, slow reader of {flood_total // MB} MB", "MB", [growth["worker"]],
                            [], "bounded", "lower", lambda o, s: o < 32))

        if "concurrent" in parts:
            print(f"bench: {sessions} concurrent sessions ...", file=sys.stderr)
            alive, rtts = concurrent_sessions(ours, sessions, 3 if args.smoke else 6)
            rows.append(Row(f"{sessions} concurrent sessions alive", "sessions", [alive], [], f"all {sessions}",
                            "higher", lambda o, s: o == sessions))
            rows.append(Row(f"echo p99 across {sessions} concurrent sessions", "ms", [p99(rtts)], [], "< 10 ms",
                            "lower", lambda o, s: o < 10))

        if "build" in parts:
            print("bench: a build during a flood ...", file=sys.stderr)
            quiet = [build_step_seconds(ours, marker, None) for _ in range(max(1, args.rounds))]
            flooded = [build_step_seconds(ours, marker, ours.argv("yes", tty=False))
                       for _ in range(max(1, args.rounds))]
            ssh_flooded = [build_step_seconds(ours, marker, ssh.argv("yes", tty=False))
                           for _ in range(max(1, args.rounds))] if ssh else []
            slow = med(flooded) / med(quiet) - 1
            rows.append(Row("build step slowdown while a shell floods (`yes`)", "%", [slow * 100],
                            [(med(ssh_flooded) / med(quiet) - 1) * 100] if ssh else [], "< 10 %", "lower",
                            lambda o, s: o < 10,
                            note=f"step alone {med(quiet):.2f} s; with our flood {med(flooded):.2f} s"
                                 + (f"; with an ssh flood {med(ssh_flooded):.2f} s" if ssh else "")))

        if "transfer" in parts:  # bench/transfer_bench.py's rows (without ssh: Buildbot's steps only)
            rows += transfer_bench.measure(
                ours.sandbox, ssh, work, places[0], set(transfer_bench.PARTS) if ssh else {"buildbot"},
                size_mb=args.size_mb, file_mb=2 if args.smoke else 1024, files=20 if args.smoke else 10000,
                rounds=args.rounds)
    finally:
        ours.stop()
        if ssh:
            ssh.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = render(rows, args) + ("\n" + compared_table if compared_table else "")
    print(report)
    if not args.smoke and not args.only:
        Path(args.output).write_text(report)
    return 0


def render(rows: list[Row], args: argparse.Namespace, command: str = "python3 bench/run.py") -> str:
    lines = [
        "# slaveshell vs OpenSSH on loopback",
        "",
        f"One run of `{command}` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores"
        f"{', smoke sizes' if args.smoke else ''}); {args.rounds} round(s) each, median (min-max).",
        "",
        "| metric | slaveshell | OpenSSH | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        o = med(row.ours)
        s = med(row.ssh) if row.ssh else None

        def fmt(values: list[float]) -> str:
            if not values:
                return "-"
            m = med(values)
            text = f"{m:.1f}" if abs(m) >= 1 or m == 0 else f"{m:.2f}"
            if len(values) > 1:
                text += f" ({min(values):.1f}-{max(values):.1f})"
            return text

        ratio = f"{o / s:.2f}x" if s not in (None, 0) else "-"
        met = "?" if row.met is None else ("yes" if row.met(o, s) else "**no**")
        lines.append(f"| {row.metric} ({row.unit}) | {fmt(row.ours)} | {fmt(row.ssh)} | {ratio} | {row.target} "
                     f"| {met} |")
    notes = [f"- {row.metric}: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
