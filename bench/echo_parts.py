"""The parts of a keystroke's echo round trip, each measured alone at keystroke spacing (bench/echo_breakdown.py
puts them together). Round trips in ns (time.perf_counter_ns), one list per part.

    python3 bench/echo_parts.py --part pb1-tcp --keys 100 --spacing 0.05   # prints a JSON list of ns
    python3 bench/echo_parts.py --serve unix /tmp/s                        # a peer (what --part starts)

Between processes, on Twisted's epoll reactor as the product runs: `pty` (a PTY echo: kernel + one wake-up),
`unix`/`tcp` (raw ping-pong between two reactors), `pb-unix`/`pb-tcp` (a PB callRemote of one byte and its
answer), `pb1-unix`/`pb1-tcp` (answer-less PB calls one way and back, as the product sends: `input` of one
byte, and back the echo's `output` with what the tree's worker puts in it, echo_python.echo_args), `lean-tcp`
(the same two events as lean calls, slaveshell.plumbing.lean_calls's LeanPeer and receivers, on a tree that has them).
For the framed operator hop (a standard-library client): `unix-stdlib` (a selectors client against a Twisted
peer) and the terminal relays (`relay`: Twisted stdio; `relay-stdlib`: a selectors loop). The in-process parts
(the master's, the worker's and the framing's Python) are in bench/echo_python.py.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar

from echo_python import KEY, echo_args, gap, worker_link

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])

T = TypeVar("T")
TWISTED_PARTS = ("pty", "unix", "tcp", "pb-unix", "pb-tcp", "pb1-unix", "pb1-tcp")
LEAN_PARTS = ("lean-tcp",)  # on a tree with slaveshell/plumbing/lean_calls.py only
STDLIB_PARTS = ("unix-stdlib",)
# The echo's output message as this tree's worker sends it (or as echo_breakdown --worker-link prices it).
ECHO = echo_args(os.environ.get("ECHO_BD_WORKER_LINK") or worker_link())


# -- parts measured between Twisted reactors (each in its own processes) ------------------------------------

def serve(kind: str, addr: str) -> None:
    """A peer for `measure_twisted`: echoes raw bytes, or PB calls (`echo` answers; `ping` answers with an
    answer-less `pong` on the registered reference; `lean`: the registered reference's lean `output` for each
    lean `input`), or relays its raw-mode stdin to its stdout."""
    from twisted.internet import protocol, reactor, stdio
    from twisted.spread import pb

    class Echo(protocol.Protocol):
        def connectionMade(self) -> None:
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    if kind.startswith("relay"):
        import tty
        tty.setraw(0)
        if kind == "relay-stdlib":  # the framed hop's client reads its terminal from a selectors loop
            sel = selectors.DefaultSelector()
            sel.register(0, selectors.EVENT_READ)
            os.write(1, b"R")
            while sel.select() and (data := os.read(0, 65536)):
                os.write(1, data)
            return
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
            self.ref.callRemote("pong", *ECHO, pbanswer=False)
        def remote_lean(self, ref: pb.RemoteReference) -> pb.Referenceable:
            from slaveshell.plumbing import lean_calls  # type: ignore[attr-defined]
            lean_calls.accept(ref.broker)
            peer = lean_calls.LeanPeer(ref, on_lost=lambda: None, on_refused=lambda *a: None)
            peer.lean = True

            class Input(lean_calls.LeanReceiver):  # as the worker's SessionHandle takes input
                lean_methods = frozenset({"input"})
                def remote_input(self, data: object) -> None:
                    peer.send("output", *ECHO)
            return Input()

    if kind in ("unix", "tcp"):
        factory = protocol.Factory.forProtocol(Echo)
    else:
        factory = nodelay(pb.PBServerFactory(Root()))
    port = reactor.listenUNIX(addr, factory) if kind.endswith("unix") else reactor.listenTCP(
        0, factory, interface="127.0.0.1")
    print("READY", getattr(port.getHost(), "port", 0), flush=True)
    reactor.run()


def nodelay(factory: T) -> T:
    """`factory` (a PB one) with TCP_NODELAY on its connections, as slaveshell.plumbing.remote.set_nodelay sets it."""
    from twisted.spread import pb

    class Broker(pb.Broker):
        def connectionMade(self) -> None:
            super().connectionMade()
            if hasattr(self.transport, "setTcpNoDelay"):
                self.transport.setTcpNoDelay(True)

    factory.protocol = Broker  # type: ignore[attr-defined]
    return factory


def start_server(kind: str, addr: str) -> tuple[subprocess.Popen[bytes], int]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, addr], stdout=subprocess.PIPE)
    assert server.stdout is not None
    return server, int(server.stdout.readline().split()[1])


def measure_stdlib(keys: int, spacing: float) -> list[int]:
    """`unix-stdlib`: the framed hop's UNIX link, a selectors client (as slaveshell.client.connection) against a Twisted
    peer (as the master's door): round trips in ns."""
    addr = os.path.join(tempfile.mkdtemp(prefix="echo-bd-"), "s")
    server, _ = start_server("unix", addr)
    samples = []
    with socket.socket(socket.AF_UNIX) as sock, selectors.DefaultSelector() as sel:
        sock.connect(addr)
        sel.register(sock, selectors.EVENT_READ)
        time.sleep(0.3)
        for _ in range(keys):
            t0 = time.perf_counter_ns()
            sock.sendall(KEY)
            if not sel.select(10) or not sock.recv(1024):
                raise RuntimeError("unix-stdlib: no answer within 10 s")
            samples.append(time.perf_counter_ns() - t0)
            time.sleep(gap(spacing))
    server.terminate()
    server.wait()
    return samples


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
        server, port = start_server(kind, addr)

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
            factory = nodelay(pb.PBClientFactory())
            connect(factory)

            class Pong(pb.Referenceable):
                def remote_pong(self, *args: object) -> None:
                    got()

            def lean(root: pb.RemoteReference) -> None:
                from slaveshell.plumbing import lean_calls  # type: ignore[attr-defined]
                lean_calls.accept(root.broker)

                class Output(lean_calls.LeanReceiver):  # as the master's WorkerSink takes output
                    lean_methods = frozenset({"output"})
                    def remote_output(self, stream: object, data: object, acks: object = ()) -> None:
                        got()

                def opened(ref: pb.RemoteReference) -> None:
                    peer = lean_calls.LeanPeer(ref, on_lost=lambda: None, on_refused=lambda *a: None)
                    peer.lean = True
                    start(lambda: peer.send("input", KEY))

                root.callRemote("lean", Output()).addCallback(opened)

            def ready(root: pb.RemoteReference) -> None:
                if kind.startswith("lean"):
                    lean(root)
                elif kind.startswith("pb1"):
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=TWISTED_PARTS + LEAN_PARTS + STDLIB_PARTS)
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "ADDR"))
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--spacing", type=float, default=0.05)
    args = ap.parse_args()
    if args.part in STDLIB_PARTS:
        print(json.dumps(measure_stdlib(args.keys, args.spacing)))
        return 0
    from twisted.internet import epollreactor
    epollreactor.install()  # Linux's default, said out loud: the parts run on the product's reactor
    if args.serve:
        serve(*args.serve)
    elif args.part:
        print(json.dumps(measure_twisted(args.part, args.keys, args.spacing)))
    else:
        ap.error("--part or --serve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
