"""ShellService's socket and operator boundary, in process: a real UNIX socket, the framed door, the kernel's
peer credentials; the master's worker registry is a stand-in (the e2e tier has the real one)."""

import grp
import os
import stat

import pytest
import pytest_twisted
from twisted.internet import reactor

from master_side.service import ShellService
from slaveshell.vocabulary.framing import Op
from slaveshell.vocabulary.policy import Rule
from slaveshell.vocabulary.protocol import OpenRequest
from tests.framed import connect


class FakeWorkers:
    registrations: dict = {}
    connections: dict = {}


class FakeMaster:
    def __init__(self, basedir):
        self.basedir = str(basedir)
        self.workers = FakeWorkers()
        self.master = self  # what a child service's .master finds by walking up its parents


class NeverConnected:
    worker_commands = None


@pytest_twisted.inlineCallbacks
def start(tmp_path, **kwargs):
    service = ShellService(**kwargs)
    service.parent = FakeMaster(tmp_path)
    yield service.reconfigService(**kwargs)
    return service


@pytest_twisted.inlineCallbacks
def stop(service):
    yield service._stop_listening()
    yield service.trail.stop()


@pytest_twisted.inlineCallbacks
def test_socket_is_0600_by_default_and_0660_for_a_named_group(tmp_path):
    service = yield start(tmp_path)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "shell.sock").st_mode) == 0o600
    finally:
        yield stop(service)
    service = yield start(tmp_path, group="daemon")
    try:
        st = os.stat(tmp_path / "shell.sock")
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam("daemon").gr_gid
    finally:
        yield stop(service)


@pytest_twisted.inlineCallbacks
def test_operator_is_known_by_kernel_credentials_and_policy_applies(tmp_path):
    service = yield start(tmp_path, policy=[Rule(users=["nobody"])])
    try:
        root = yield connect(reactor, str(tmp_path / "shell.sock"))
        reply = yield root.call(Op.OPEN, request=OpenRequest(worker="w1").to_wire())
        user = "root" if os.getuid() == 0 else str(os.getuid())
        assert reply["ok"] is False
        assert reply["error"].startswith(f"permission denied: {user} (uid {os.getuid()}) may not shell on worker w1")
        root.close()
    finally:
        yield stop(service)


@pytest_twisted.inlineCallbacks
def test_unknown_worker_and_bad_requests_get_a_message_not_a_dropped_connection(tmp_path):
    service = yield start(tmp_path)
    try:
        root = yield connect(reactor, str(tmp_path / "shell.sock"))
        reply = yield root.call(Op.OPEN, request=OpenRequest(worker="nope").to_wire())
        assert reply == {"ok": False, "error": "no worker named 'nope' on this master (it has no workers "
                                               "configured yet: still starting?)", "kind": "unavailable"}
        # One connection holds one session request: each bad request on a connection of its own.
        other = yield connect(reactor, str(tmp_path / "shell.sock"))
        reply = yield other.call(Op.OPEN, request={"version": 1, "worker": "w1", "pty": "yes"})
        assert reply == {"ok": False, "error": "bad request: pty must be a boolean", "kind": "bad request"}
        other.close()
        assert (yield root.call(Op.WORKERS)) == {"ok": True, "rows": []}
        # A configured worker that never connected has no system or command list yet: still listed.
        service.master.workers.registrations = {"w1": object()}
        service.master.workers.getWorkerByName = lambda name: NeverConnected()
        listed = (yield root.call(Op.WORKERS))["rows"]
        assert listed[0]["name"] == "w1" and listed[0]["connected"] is False and listed[0]["shell"] is False
        other = yield connect(reactor, str(tmp_path / "shell.sock"))
        reply = yield other.call(Op.OPEN, request=OpenRequest(worker="w1").to_wire())
        assert reply == {"ok": False, "error": "worker w1 is not connected to the master", "kind": "unavailable"}
        other.close()
        service.master.workers.registrations = {}
        root.close()
    finally:
        yield stop(service)


@pytest_twisted.inlineCallbacks
def test_an_operator_cannot_claim_another_identity_to_the_worker(tmp_path):
    from buildbot.worker.protocols import pb as bbpb
    from twisted.internet import defer

    seen = []

    class Mind:
        broker = None

        def callRemote(self, method, sink, params):
            seen.append(params)
            return defer.succeed({"ok": False, "error": "stop here"})

    conn = bbpb.Connection.__new__(bbpb.Connection)
    conn.mind = Mind()

    class Worker:
        worker_commands = {"slaveshell": "3.3"}

    service = yield start(tmp_path)
    try:
        service.master.workers.registrations = {"w1": object()}
        service.master.workers.connections = {"w1": conn}
        service.master.workers.getWorkerByName = lambda name: Worker()
        root = yield connect(reactor, str(tmp_path / "shell.sock"))
        claim = OpenRequest(worker="w1", operator="alice").to_wire()
        reply = yield root.call(Op.OPEN, request=claim)
        assert reply == {"ok": False, "error": "worker w1: stop here", "kind": "permission denied"}
        user = "root" if os.getuid() == 0 else str(os.getuid())
        assert seen[0]["operator"] == user  # from the kernel's credentials, not from the request
        root.close()
    finally:
        service.master.workers.registrations = {}
        service.master.workers.connections = {}
        yield stop(service)


@pytest_twisted.inlineCallbacks
def test_a_pb_client_gets_a_refusal_line_and_the_socket_serves_on(tmp_path):
    """The socket speaks only the framed protocol: a PB client (which waits for the server to speak first), or
    one that sends anything but the magic, gets one refusal line and the close; audited; others are served."""
    from twisted.internet import defer, protocol
    from twisted.spread import pb

    service = yield start(tmp_path)
    path = str(tmp_path / "shell.sock")
    try:
        factory = pb.PBClientFactory()
        reactor.connectUNIX(path, factory)
        with pytest.raises(Exception):  # noqa: B017 (PB reports the close in its own words)
            yield factory.getRootObject()

        class Raw(protocol.Protocol):
            def __init__(self):
                self.got, self.lost = b"", defer.Deferred()

            def connectionMade(self):
                self.transport.write(b"\x02\x80\x02\x82pb")  # Banana, as a client that speaks first

            def dataReceived(self, data):
                self.got += data

            def connectionLost(self, reason=None):
                self.lost.callback(self.got)

        raw = yield protocol.ClientCreator(reactor, Raw).connectUNIX(path)
        got = yield raw.lost
        assert got == (b"slaveshell: refused: this master serves slaveshell's framed protocol only, and this "
                       b"client does not speak it (a slaveshell older than the master? upgrade it)\n")
        client = yield connect(reactor, path)
        assert (yield client.call(Op.WORKERS)) == {"ok": True, "rows": []}
        client.close()
        assert service.gate.count() <= 1
    finally:
        yield stop(service)


@pytest_twisted.inlineCallbacks
def test_the_bytes_held_for_hashing_are_the_operators_to_bound(tmp_path, monkeypatch):
    """`ShellService(max_hashing_total=N)` is the bound of what all sessions and transfers together hold for the
    hashing thread (master_side.audit.hashing.BUDGET): past it a stream is hashed on the main thread, its sha256
    whole, and the master's log names the option; a reconfig without it brings the default back."""
    import hashlib
    import threading

    from twisted.logger import globalLogPublisher

    from master_side.audit import hashing

    monkeypatch.setattr(hashing, "BUDGET", hashing.HashBudget())
    mib = 1024 * 1024
    warnings = []

    def observe(event):
        if "bytes waiting to be hashed" in event.get("log_format", ""):
            warnings.append(event)

    service = yield start(tmp_path, max_hashing_total=3 * mib)
    globalLogPublisher.addObserver(observe)
    busy = threading.Event()
    hashing._HASHING.submit(busy.wait, 30)  # the hashing thread busy: what is handed over stays held
    try:
        assert hashing.BUDGET.total == 3 * mib
        first, second = hashing.BatchedSha256(), hashing.BatchedSha256()
        sent = {first: b"", second: b""}
        for stream, chunks in ((first, 4), (second, 3)):  # 2 MiB handed over, then 1 MiB gathered, then past 3
            for i in range(chunks):
                chunk = bytes([i]) * (512 * 1024)
                stream.update(chunk)
                sent[stream] += chunk
                assert hashing.BUDGET.settled() <= 3 * mib
        assert hashing.BUDGET.hashed_here == 512 * 1024
        busy.set()
        for stream, data in sent.items():
            assert stream.hexdigest() == hashlib.sha256(data).hexdigest()
        assert hashing.BUDGET.settled() == 0
        assert len(warnings) == 1
        assert "max_hashing_total=3145728 bytes" in warnings[0]["log_format"].format(**warnings[0])
        yield service.reconfigService()
        assert hashing.BUDGET.total == hashing.HELD_TOTAL == 64 * mib
    finally:
        busy.set()
        globalLogPublisher.removeObserver(observe)
        yield stop(service)


def test_a_bad_hashing_bound_is_a_config_error_naming_it():
    from buildbot.config.errors import ConfigErrors

    for bad in (0, -1, "64M", True, 1.5):
        with pytest.raises(ConfigErrors) as caught:
            ShellService(max_hashing_total=bad)
        assert caught.value.errors == ["ShellService: max_hashing_total must be a whole number of at least 1"]
    ShellService(max_hashing_total=1)
