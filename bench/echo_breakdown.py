"""Where a keystroke's echo round trip goes, at keystroke spacing: the totals and their parts, in one run.

    python3 bench/echo_breakdown.py            # ~5 minutes on 2 cores; prints Markdown, writes JSON (--json)
    python3 bench/echo_breakdown.py --keys 150 --rounds 3 --spacing 0.05 --no-ssh
    python3 bench/echo_breakdown.py --client-cmd 'buildbot-shell --socket {socket} -t w1'   # another client
    python3 bench/echo_breakdown.py --smoke    # 10 keys, one round

Totals as bench/run.py measures echo (one byte into a local PTY running the client, remote `stty -icanon; cat >
/dev/null`, until its echo is read back) but 50-100 ms apart: the client against a sandbox master and worker,
and `ssh -tt` to a throwaway sshd. Parts, each alone at the same spacing, on this Python and Twisted's epoll
reactor: a PTY echo, a raw-mode Twisted stdin->stdout relay (the client's terminal side), raw UNIX and TCP
ping-pongs between two reactors, PB `callRemote` round trips and answer-less PB ping-pongs (as the product
sends) of one byte, and the master's and worker's Python per keystroke (their session objects in process, with
a real transcript file and a real PTY). `model` counts the hops; total minus the parts is "other Python work".
Rounds interleave everything (the machine drifts). Wall time: time.perf_counter_ns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])

KEY = b"k"
DEFAULT_CLIENT = f"{shlex.quote(sys.executable)} -m slaveshell.shell_cli --socket {{socket}} -t w1"
TWISTED_PARTS = ("pty", "unix", "tcp", "pb-unix", "pb-tcp", "pb1-unix", "pb1-tcp")


def gap(spacing: float) -> float:
    return random.uniform(spacing, 2 * spacing)  # keystrokes are not a metronome


# -- parts measured between Twisted reactors (each in its own processes) ------------------------------------

def serve(kind: str, addr: str) -> None:
    """A peer for `measure_twisted`: echoes raw bytes, or PB calls (`echo` answers; `ping` answers with an
    answer-less `pong` on the registered reference), or relays its raw-mode stdin to its stdout."""
    from twisted.internet import protocol, reactor, stdio
    from twisted.spread import pb

    class Echo(protocol.Protocol):
        def connectionMade(self) -> None:
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    if kind == "relay":
        import tty
        tty.setraw(0)
        stdio.StandardIO(Echo())
        os.write(1, b"R")
        reactor.run()
        return

    class Root(pb.Root):
        ref = None
        def remote_echo(self, data: bytes) -> bytes:
            return data
        def remote_register(self, ref: pb.RemoteReference) -> None:
            self.ref = ref
        def remote_ping(self, data: bytes) -> None:
            self.ref.callRemote("pong", data, pbanswer=False)

    if kind in ("unix", "tcp"):
        factory = protocol.Factory.forProtocol(Echo)
    else:
        factory = pb.PBServerFactory(Root())
        factory.protocol = NoDelayBroker
    port = reactor.listenUNIX(addr, factory) if kind.endswith("unix") else reactor.listenTCP(
        0, factory, interface="127.0.0.1")
    print("READY", getattr(port.getHost(), "port", 0), flush=True)
    reactor.run()


def _no_delay_broker() -> type:
    from twisted.spread import pb

    class Broker(pb.Broker):
        """TCP_NODELAY, as slaveshell.remote.set_nodelay does on both ends of the worker's link."""
        def connectionMade(self) -> None:
            super().connectionMade()
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)

    return Broker


NoDelayBroker: type = object  # replaced in the processes that import Twisted (serve, measure_twisted)


def measure_twisted(kind: str, keys: int, spacing: float) -> list[int]:
    """Round trips (ns) of `keys` one-byte messages of `kind`, driven from a Twisted epoll reactor."""
    from twisted.internet import protocol, reactor
    from twisted.spread import pb

    samples: list[int] = []
    state = {"t0": 0}
    tmp = tempfile.mkdtemp(prefix="echo-bd-")
    server = None

    def fire(send) -> None:
        state["t0"] = time.perf_counter_ns()
        send()

    def got() -> None:
        samples.append(time.perf_counter_ns() - state["t0"])
        if len(samples) >= keys:
            reactor.stop()
        else:
            reactor.callLater(gap(spacing), fire, state["send"])

    def start(send) -> None:
        state["send"] = send
        reactor.callLater(0.3, fire, send)

    if kind == "pty":
        class Shell(protocol.ProcessProtocol):
            ready = False
            def childDataReceived(self, fd: int, data: bytes) -> None:
                if not self.ready and b"R" in data:
                    self.ready = True
                    start(lambda: os.write(self.transport.fd, KEY))
                elif self.ready and KEY in data:
                    got()

        reactor.spawnProcess(Shell(), "/bin/sh", ["sh", "-c", "stty -icanon echo; echo R; exec cat > /dev/null"],
                             env=dict(os.environ), usePTY=True)
    else:
        addr = os.path.join(tmp, "s")
        base = kind.split("-")[-1]
        server = subprocess.Popen([sys.executable, __file__, "--serve", kind, addr], stdout=subprocess.PIPE)
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])

        def connect(factory: protocol.ClientFactory) -> None:
            if base == "unix":
                reactor.connectUNIX(addr, factory)
            else:
                reactor.connectTCP("127.0.0.1", port, factory)

        if kind in ("unix", "tcp"):
            class Client(protocol.Protocol):
                def connectionMade(self) -> None:
                    if base == "tcp":
                        self.transport.setTcpNoDelay(True)
                    start(lambda: self.transport.write(KEY))
                def dataReceived(self, data: bytes) -> None:
                    got()

            connect(protocol.ClientFactory.forProtocol(Client))
        else:
            factory = pb.PBClientFactory()
            factory.protocol = NoDelayBroker
            connect(factory)

            class Pong(pb.Referenceable):
                def remote_pong(self, data: bytes) -> None:
                    got()

            def ready(root: pb.RemoteReference) -> None:
                if kind.startswith("pb1"):
                    root.callRemote("register", Pong()).addCallback(
                        lambda _: start(lambda: root.callRemote("ping", KEY, pbanswer=False)))
                else:
                    start(lambda: root.callRemote("echo", KEY).addCallback(lambda _: got()))

            factory.getRootObject().addCallback(ready)
    reactor.callLater(60 + keys * spacing * 3, reactor.stop)
    reactor.run()
    if server is not None:
        server.terminate()
        server.wait()
    return samples


def run_part(kind: str, keys: int, spacing: float) -> list[int]:
    out = subprocess.run([sys.executable, __file__, "--part", kind, "--keys", str(keys), "--spacing", str(spacing)],
                         capture_output=True, text=True, timeout=120 + keys * spacing * 3)
    if out.returncode != 0:
        raise RuntimeError(f"part {kind} failed: {out.stderr[-2000:]}")
    return [int(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


# -- parts measured in process: the master's and the worker's Python per keystroke ---------------------------

def master_python(keys: int, spacing: float) -> dict[str, list[int]]:
    """ns per call of the master's per-keystroke work: ViewerHandle.remote_input, WorkerSink.remote_input_ack
    and remote_output (with a real transcript file, written through as the master does) and remote_ack. The
    sends to the peers are no-ops: their PB cost is measured by the pb1 parts."""
    from master_side.recorder import SessionRecorder
    from master_side.relay import MasterSession
    from master_side.session_pb import ViewerHandle, WorkerSink
    from slaveshell.policy import Identity
    from slaveshell.protocol import OpenRequest
    from slaveshell.transcript import CastEncoder

    out: dict[str, list[int]] = {"input": [], "input_ack": [], "output": [], "ack": []}
    with tempfile.TemporaryDirectory(prefix="echo-bd-") as d:
        session = MasterSession(OpenRequest(worker="w1"), Identity(1000, 1000, 1, "op", frozenset()),
                                lambda s: None)
        rec = SessionRecorder(session.id, os.path.join(d, "s.cast"), CastEncoder(), None, started=time.time())
        rec.create(CastEncoder.header(80, 24, 0))
        session.recorder = rec
        owner = session.start(lambda *a: None, lambda *a: None)
        viewer, worker = ViewerHandle(session, owner, lambda *a: None), WorkerSink(session, lambda *a: None)
        steps = (("input", lambda: viewer.remote_input(KEY)), ("input_ack", lambda: worker.remote_input_ack(1, False)),
                 ("output", lambda: worker.remote_output(1, KEY)), ("ack", lambda: viewer.remote_ack(1)))
        for _ in range(keys):
            for name, step in steps:
                t0 = time.perf_counter_ns()
                step()
                out[name].append(time.perf_counter_ns() - t0)
            time.sleep(gap(spacing))  # cold caches, as between keystrokes
        rec.file.close()
    return out


def worker_python(keys: int, spacing: float) -> dict[str, list[int]]:
    """ns per keystroke of the worker's work: SessionHandle.remote_input (the terminal's modes, the write, the
    hidden-input decision, the input_ack) and the echo's read handler (hidden-input matching, the flush to the
    sink), on a real PTY in `stty -icanon echo` modes; tests/fakes' reactor stands in for Twisted's."""
    import termios

    from slave_side.server import SessionHandle
    from slave_side.session import WorkerOptions, WorkerSession, _ProcessProtocol
    from slaveshell.protocol import OpenRequest, WireSink
    from tests.fakes import ProcessReactor

    out: dict[str, list[int]] = {"input": [], "output": []}
    with tempfile.TemporaryDirectory(prefix="echo-bd-") as d:
        session = WorkerSession(ProcessReactor(), "s1", OpenRequest(worker="w1", cwd=d), WorkerOptions(), d,
                                WireSink(lambda *a: None))
        session.start()
        assert session._slave_hold is not None
        modes = termios.tcgetattr(session._slave_hold)
        modes[3] = (modes[3] & ~termios.ICANON) | termios.ECHO
        termios.tcsetattr(session._slave_hold, termios.TCSANOW, modes)
        handle, proto = SessionHandle(session), _ProcessProtocol(session)
        for _ in range(keys):
            t0 = time.perf_counter_ns()
            handle.remote_input(KEY)
            t1 = time.perf_counter_ns()
            proto.childDataReceived(1, KEY)
            t2 = time.perf_counter_ns()
            out["input"].append(t1 - t0)
            out["output"].append(t2 - t1)
            session.ack(1)
            time.sleep(gap(spacing))
        session._release_slave()
        if session._pty_fd is not None:
            os.close(session._pty_fd)
    return out


# -- totals (and the terminal relay) from a blocking reader, as bench/run.py measures echo ---------------------

def blocking_rtts(fd: int, keys: int, spacing: float) -> list[int]:
    rtts = []
    for _ in range(keys):
        t0 = time.perf_counter_ns()
        os.write(fd, KEY)
        got = b""
        while KEY not in got:
            if not select.select([fd], [], [], 10)[0]:
                raise RuntimeError("no echo within 10 s")
            got += os.read(fd, 1024)
        rtts.append(time.perf_counter_ns() - t0)
        time.sleep(gap(spacing))
    return rtts


def pty_rtts(argv: list[str], keys: int, spacing: float, shell: bool = True) -> list[int]:
    """Echo round trips (ns) in a local PTY running `argv`: a remote shell (bench/run.py's spawn_shell, then
    `stty -icanon; cat > /dev/null`), or (shell=False) a peer that writes "R" when it echoes."""
    import pexpect
    from run import spawn_shell

    class Cmd:  # bench/run.py's spawn_shell takes a system with argv(None, tty=True)
        def argv(self, command: None, tty: bool) -> list[str]:
            return argv

    if shell:
        child: pexpect.spawn = spawn_shell(Cmd())  # type: ignore[arg-type]
        child.sendline("stty -icanon; cat > /dev/null")
        time.sleep(0.5)
    else:
        child = pexpect.spawn(argv[0], argv[1:], timeout=30)
        child.expect("R")
    try:
        return blocking_rtts(child.child_fd, keys, spacing)
    finally:
        child.sendcontrol("c")
        child.terminate(force=True)


# -- the model --------------------------------------------------------------------------------------------------

def us(values: list[int], q: float = 0.5) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] / 1000 if s else float("nan")


Row = tuple[str, int, int, float, float, bool]  # part, hops (slaveshell), hops (ssh), unit median, p99, summed


def model(pool: dict[str, list[int]]) -> tuple[list[Row], dict[str, float]]:
    """(rows, units in us). Counted from the keystroke's path (docs/architecture.md, "A keystroke", "An output
    chunk"; slaveshell/client.py, master_side/relay.py, slave_side/session.py): terminal -> client -(UNIX)->
    master -(TCP)-> worker -> PTY echo -> worker -(TCP)-> master -(UNIX)-> client -> terminal. The worker sends
    input_ack as it writes the PTY, so it crosses both links ahead of the echo; the client's `ack` of the echo
    (client -> master -> worker) follows it. ssh: terminal -> ssh -(TCP)-> sshd -> PTY echo -> sshd -(TCP)-> ssh
    -> terminal (its TCP hops priced at Twisted's, an upper bound for C)."""
    def u(name: str, q: float) -> float:
        return us(pool[name], q)

    units = {}
    for q, tag in ((0.5, "med"), (0.99, "p99")):
        for link in ("unix", "tcp"):
            units[f"{link}_{tag}"] = u(link, q) / 2
            units[f"pb_{link}_{tag}"] = (u(f"pb1-{link}", q) - u(link, q)) / 2
        units[f"ack_pb_{tag}"] = units[f"pb_unix_{tag}"] + units[f"pb_tcp_{tag}"]
    rows: list[Row] = []
    for name, count, ssh, key, summed in (
            ("your terminal <-> client (2 PTY crossings, the client's wake-up)", 1, 1, "relay", True),
            ("client <-> master: UNIX hop + wake-up (input, echo)", 2, 0, "unix", True),
            ("master <-> worker: TCP hop + wake-up (input, echo)", 2, 2, "tcp", True),
            ("PB message on the UNIX link (Banana + jelly): input, echo", 2, 0, "pb_unix", True),
            ("PB message on the TCP link: input, echo", 2, 0, "pb_tcp", True),
            ("worker PTY echo (kernel + one wake-up)", 1, 1, "pty", True),
            ("worker Python: input (modes, write, hidden-input decision)", 1, 0, "w.input", True),
            ("worker Python: the echo's read and flush", 1, 0, "w.output", True),
            ("master Python: ViewerHandle.input", 1, 0, "m.input", True),
            ("master Python: WorkerSink.output (transcript write)", 1, 0, "m.output", True),
            ("input_ack ahead of the echo: PB message, TCP link", 1, 0, "pb_tcp", True),
            ("input_ack ahead of the echo: PB message, UNIX link", 1, 0, "pb_unix", True),
            ("input_ack ahead of the echo: master Python (transcript write)", 1, 0, "m.input_ack", True),
            ("ack after the echo: 2 PB messages (not summed)", 1, 0, "ack_pb", False),
            ("ack after the echo: master Python (not summed)", 1, 0, "m.ack", False)):
        if f"{key}_med" in units:
            med, p99 = units[f"{key}_med"], units[f"{key}_p99"]
        else:
            med, p99 = u(key, 0.5), u(key, 0.99)
        rows.append((name, count, ssh, med, p99, summed))
    return rows, units


def bar(value: float) -> str:
    return "█" * int(value // 100) + ("▌" if value % 100 >= 50 else "") if value > 0 else ""


def render(pool: dict[str, list[int]], rounds: list[dict[str, list[int]]], args: argparse.Namespace) -> str:
    rows, units = model(pool)
    lines = [f"## Keystroke echo, where each 100 us goes ({len(rounds)} round(s) x {args.keys} keys, "
             f"{args.spacing * 1000:.0f}-{args.spacing * 2000:.0f} ms apart, {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Client: `{args.client_cmd}`. Each █ is 100 us of the slaveshell median; p99 columns add the parts' "
             "p99s (not the p99 of a sum).", "",
             "| part of the round trip | hops | unit us (median) | slaveshell us median | p99 | ssh hops "
             "| ssh us median | p99 | 100 us blocks |", "|---|---|---|---|---|---|---|---|---|"]
    ours, ssh = [0.0, 0.0], [0.0, 0.0]
    for name, count, ssh_count, med, p99, summed in rows:
        if summed:
            ours[0] += med * count
            ours[1] += p99 * count
        ssh[0] += med * ssh_count
        ssh[1] += p99 * ssh_count
        ssh_txt = f"{ssh_count} | {med * ssh_count:.0f} | {p99 * ssh_count:.0f}" if ssh_count else "- | - | -"
        lines.append(f"| {name} | {count} | {med:.0f} | {med * count:.0f} | {p99 * count:.0f} | {ssh_txt} "
                     f"| {bar(med * count) if summed else ''} |")
    total = (us(pool["slaveshell"]), us(pool["slaveshell"], 0.99))
    stotal = (us(pool["ssh"]), us(pool["ssh"], 0.99)) if pool.get("ssh") else None
    sres = f"{stotal[0] - ssh[0]:.0f} | {stotal[1] - ssh[1]:.0f}" if stotal else "- | -"
    lines += [f"| **sum of the parts** | | | {ours[0]:.0f} | {ours[1]:.0f} | | {ssh[0]:.0f} | {ssh[1]:.0f} | |",
              f"| **other Python work** (total - sum; for ssh: its own work) | | | {total[0] - ours[0]:.0f} "
              f"| {total[1] - ours[1]:.0f} | | {sres} | {bar(total[0] - ours[0])} |",
              f"| **measured round trip** | | | {total[0]:.0f} | {total[1]:.0f} | | "
              + (f"{stotal[0]:.0f} | {stotal[1]:.0f}" if stotal else "- | -") + f" | {bar(total[0])} |",
              "", "Each measurement (us): median and p99 of all rounds, and each round's median:", "",
              "| measurement | median | p99 | per-round medians |", "|---|---|---|---|"]
    for name in pool:
        per = ", ".join(f"{us(r[name]):.0f}" for r in rounds if r.get(name))
        lines.append(f"| {name} | {us(pool[name]):.1f} | {us(pool[name], 0.99):.1f} | {per} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=150, help="keys per measurement per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--spacing", type=float, default=0.05, help="seconds between keys: uniform in [s, 2s]")
    ap.add_argument("--client-cmd", default=DEFAULT_CLIENT,
                    help="the interactive client ({socket}: the sandbox master's socket); default: %(default)s")
    ap.add_argument("--no-ssh", action="store_true")
    ap.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "echo_breakdown.json"))
    ap.add_argument("--smoke", action="store_true", help="10 keys, one round, 10 ms apart")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve or args.part:
        from twisted.internet import epollreactor
        epollreactor.install()  # Linux's default, said out loud: the parts must run on the product's reactor
        global NoDelayBroker
        NoDelayBroker = _no_delay_broker()
        if args.serve:
            serve(*args.serve)
        else:
            print(json.dumps(measure_twisted(args.part, args.keys, args.spacing)))
        return 0
    if args.smoke:
        args.keys, args.rounds, args.spacing = 10, 1, 0.01

    from run import OpenSSH, Slaveshell

    work = Path(tempfile.mkdtemp(prefix="echo-breakdown-"))
    ours = Slaveshell(work, work / "marker")
    ssh = None if args.no_ssh else OpenSSH(work)
    rounds: list[dict[str, list[int]]] = []
    try:
        print("echo_breakdown: starting the sandbox master and worker (and sshd) ...", file=sys.stderr)
        ours.start()
        if ssh:
            ssh.start()
        client = shlex.split(args.client_cmd.format(socket=ours.sandbox.socket))
        for r in range(args.rounds):
            got: dict[str, list[int]] = {}
            print(f"echo_breakdown: round {r + 1} of {args.rounds} ...", file=sys.stderr)
            got["slaveshell"] = pty_rtts(client, args.keys, args.spacing)
            if ssh:
                got["ssh"] = pty_rtts(ssh.argv(None, tty=True), args.keys, args.spacing)
            got["relay"] = pty_rtts([sys.executable, __file__, "--serve", "relay", "-"], args.keys, args.spacing,
                                    shell=False)
            for part in TWISTED_PARTS:
                got[part] = run_part(part, args.keys, args.spacing)
            got.update({f"m.{k}": v for k, v in master_python(args.keys, args.spacing).items()})
            got.update({f"w.{k}": v for k, v in worker_python(args.keys, args.spacing).items()})
            rounds.append(got)
    finally:
        ours.stop()
        if ssh:
            ssh.stop()
    pool = {name: [v for r in rounds for v in r.get(name, [])] for name in rounds[0]} if rounds else {}
    report = render(pool, rounds, args)
    print(report)
    rows, units = model(pool)
    Path(args.json).write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items() if k not in ("part", "serve")}, "unit": "ns",
        "rounds": rounds, "units_us": units,
        "model_us": [dict(zip(("part", "hops", "ssh_hops", "median", "p99", "summed"), r, strict=True)) for r in rows]},
        indent=1))
    print(f"echo_breakdown: raw numbers in {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
