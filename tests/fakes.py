"""Small fakes for deterministic unit tests: a reactor that records spawned processes and their
transports."""

from typing import Any

from twisted.internet.testing import MemoryReactorClock


class FakeProcessTransport:
    def __init__(self, proto: Any, executable: str, args: list, env: dict, path: str, kw: dict) -> None:
        self.proto = proto
        self.executable, self.args, self.env, self.path, self.kw = executable, args, env, path, kw
        self.pid = 4242
        self.written: list[bytes] = []
        self.paused = False
        self.stdin_closed = False
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
