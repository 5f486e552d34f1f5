"""Small fakes for deterministic unit tests: a reactor that records spawned processes and their
transports."""

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.spread import pb
from twisted.test import iosim

from slaveshell.vocabulary import framing


class FramedLink:
    """What a framed-hop client's link needs from a test's stand-in: fresh call ids and control frames, each
    handed as bytes to the subclass's `send(frame)`, which decodes and records them."""

    def __init__(self) -> None:
        self._id = 0

    def next_id(self) -> int:
        self._id += 1
        return self._id

    def control(self, op: Any, **fields: Any) -> None:
        self.send(framing.control(op, **fields))

    def later(self, frame: bytes) -> None:
        self.send(frame)  # a test's link has no loop: what is queued is sent in order

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        raise NotImplementedError


# Above Linux's PID_MAX_LIMIT (2**22): no process or process group ever has it, so a signal a test forgets to
# intercept reaches nobody.
FAKE_PID = 2**22 + 1


class FakeProcessTransport:
    def __init__(self, proto: Any, executable: str, args: list, env: dict, path: str, kw: dict) -> None:
        self.proto = proto
        self.executable, self.args, self.env, self.path, self.kw = executable, args, env, path, kw
        self.pid = FAKE_PID
        self.written: list[bytes] = []
        self.paused = False
        self.stdin_closed = False
        self.closed_fds: list[int] = []
        self.lost = False
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeChildFD(self, childFD: int) -> None:
        self.closed_fds.append(childFD)

    def loseConnection(self) -> None:
        self.lost = True


class ProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcessTransport] = []

    def spawnProcess(self, proto: Any, executable: str, args: list, env: Any = None, path: Any = None,
                     uid: Any = None, gid: Any = None, usePTY: Any = 0, childFDs: Any = None) -> Any:
        t = FakeProcessTransport(proto, executable, args, env, path, {"usePTY": usePTY, "childFDs": childFDs})
        proto.makeConnection(t)
        self.processes.append(t)
        return t


class Sink(pb.Referenceable):
    """A session sink that records what it is told, as ("output", stream, data) and so on."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def remote_output(self, *args: Any) -> None:
        self.calls.append(("output", *args))

    def remote_input_ack(self, *args: Any) -> None:
        self.calls.append(("input_ack", *args))

    def remote_exit(self, *args: Any) -> None:
        self.calls.append(("exit", *args))


class Bot(pb.Root):
    """Stands in for the worker's BotPb: the same remote method slave_side.install() adds."""

    def __init__(self, server: Any, basedir: str) -> None:
        self.server, self.basedir = server, basedir

    def remote_slaveshell_open(self, sink: Any, params: Any) -> Any:
        return self.server.open(self.basedir, sink, params)


def connected(root: Any) -> tuple[Any, iosim.IOPump, Any]:
    """Two real PB brokers joined in memory: (the remote root, the pump, the serving broker). `root` is a
    pb.Root or anything providing IPBRoot."""
    server_factory = pb.PBServerFactory(root)
    client_factory = pb.PBClientFactory()
    server_broker = server_factory.buildProtocol(None)
    client_broker = client_factory.buildProtocol(None)
    pump = iosim.connect(server_broker, iosim.makeFakeServer(server_broker),
                         client_broker, iosim.makeFakeClient(client_broker))
    roots: list[Any] = []
    client_factory.getRootObject().addCallback(roots.append)
    pump.flush()
    return roots[0], pump, server_broker


def call(pump: iosim.IOPump, ref: Any, method: str, *args: Any) -> Any:
    """A remote call run to its answer: the result, the failure, or the exception our side raised instead of
    sending (over Banana's limit)."""
    results: list[Any] = []
    try:
        d = ref.callRemote(method, *args)
    except Exception as e:
        return e
    d.addBoth(results.append)
    pump.flush()
    return results[0] if results else None


def offline_service(root: str) -> Any:
    """A ShellService on a fake master with no workers (basedir `root`, name "m"), whose audit trail is not
    started (reads fail plainly): for the doors' unit tests."""
    from master_side.audit.trail import AuditTrail
    from master_side.service import ShellService

    class Workers:
        registrations: dict = {}
        connections: dict = {}

    class Master:
        basedir = root
        workers = Workers()
        name = "m"

    class Parent:
        master = Master()

    service = ShellService()
    service.parent = Parent()
    service.trail = AuditTrail(root, "m")
    return service
