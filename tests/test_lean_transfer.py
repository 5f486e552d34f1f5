"""A transfer's stream as lean calls (slaveshell.plumbing.lean_calls) between real PB brokers in memory: the worker says
it takes them, the master tells it so, entry/data/done_file/ack then travel as Banana lists both ways and the files
arrive byte-exact; a malformed lean call from either side ends the transfer, never the connection. And a download
from a worker running a build step is paced (WorkerOptions.busy_rate)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import pb

from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer, Party, TransferEnd
from slave_side.host import WorkerOptions
from slave_side.transfer import TransferServer
from slaveshell.plumbing import lean_calls
from slaveshell.vocabulary.copying import CHUNK, DOWN, UP, Start, TransferEvent, TransferRequest
from slaveshell.vocabulary.policy import Identity

from .fakes import call, connected
from .test_cp import TransferBot


class Operator:
    """The operator's end as the relay sees it (transfer.PartyEnd): what it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def send(self, event: TransferEvent) -> None:
        self.calls.append((event.call, *event.to_wire()))

    def on_disconnect(self, callback: Any) -> Any:
        return lambda: None


def _opened(tmp_path: Any, direction: str, sources: tuple[str, ...] = ("f",)) -> Any:
    """A relay whose worker end is a real TransferServer behind in-memory PB, negotiated as Transfers.start
    does: (transfer, operator, worker's reply, pump, worker's broker, lean methods the master received)."""
    server = TransferServer(WorkerOptions())
    root, pump, worker_broker = connected(TransferBot(server, str(tmp_path)))
    assert lean_calls.accept(root.broker)  # the master accepts before it opens
    seen: list[str] = []
    handler = root.broker.proto_slaveshell
    root.broker.proto_slaveshell = lambda *a: (seen.append(a[1].decode("ascii", "replace")), handler(*a))
    who = Identity(uid=0, gid=0, pid=1, user="root", groups=frozenset())
    request = TransferRequest(direction, "w1", sources, str(tmp_path / "dest") if direction == UP else "",
                              operator="root")
    transfer = MasterTransfer("t1", who, request, None, lambda _t: None)
    operator = Operator()
    transfer.parties[OPERATOR] = operator
    reply = call(pump, root, "slaveshell_transfer", TransferEnd(transfer, WORKER), request.to_wire())
    assert reply["ok"] is True and reply["lean"] is True
    transfer.parties[WORKER] = Party(reply["transfer"], lean=True)
    return transfer, operator, reply, pump, worker_broker, seen


def test_an_upload_travels_as_lean_calls_and_is_staged_byte_exact(tmp_path):
    from twisted.internet import reactor

    (tmp_path / "dest").mkdir()
    transfer, operator, reply, pump, broker, seen = _opened(tmp_path, UP)
    worker_seen: list[str] = []
    handler = broker.proto_slaveshell
    broker.proto_slaveshell = lambda *a: (worker_seen.append(a[1].decode("ascii", "replace")), handler(*a))
    body = os.urandom(CHUNK + 1000)
    transfer.received(OPERATOR, "entry", ("file", "f", 0o640, len(body), 0.0))
    transfer.received(OPERATOR, "data", (body[:CHUNK],))
    transfer.received(OPERATOR, "data", (body[CHUNK:],))
    transfer.received(OPERATOR, "done_file", (hashlib.sha256(body).hexdigest(),))
    pump.flush()
    reactor.runUntilCurrent()  # the worker sums its acks until the reactor's next turn
    pump.flush()
    assert worker_seen == ["entry", "data", "data", "done_file"]
    assert seen and set(seen) == {"ack"}
    assert sum(c[1] for c in operator.calls if c[0] == "ack") == len(body) + 2 * 1024
    staged = [name for name in os.listdir(tmp_path / "dest") if name.startswith(".slaveshell-cp-")]
    assert len(staged) == 1 and (tmp_path / "dest" / staged[0] / "f").read_bytes() == body
    assert not transfer.ended and not broker.disconnected
    transfer.end(False, "stopped by the operator")  # the worker is told to cancel: nothing is left
    pump.flush()
    assert os.listdir(tmp_path / "dest") == []


def test_a_download_travels_as_lean_calls_and_reaches_the_operator_whole(tmp_path):
    body = os.urandom(2 * CHUNK + 7)
    (tmp_path / "f").write_bytes(body)
    transfer, operator, reply, pump, broker, seen = _opened(tmp_path, DOWN)
    transfer.parties[WORKER].send(Start())
    pump.flush()  # all of it fits in the window: no ack needed
    assert not transfer.ended
    assert [c[0] for c in operator.calls] == ["entry", "data", "data", "data", "done_file", "finish"]
    assert b"".join(c[1] for c in operator.calls if c[0] == "data") == body
    assert seen == ["entry", "data", "data", "data", "done_file"]


_items = st.integers(min_value=-(2**40), max_value=2**40) | st.binary(max_size=70) | st.floats(allow_nan=False) \
    | st.sampled_from([b"file", b"dir", b"f", b"../x", b"\xff\xfe", hashlib.sha256(b"").hexdigest().encode(),
                       0o644, 0, 5, 1.5]) | st.lists(st.integers(), max_size=2)
_methods = st.sampled_from([b"entry", b"data", b"done_file", b"ack", b"finish", b"cancel", b"lean", b"\xff"])


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.tuples(_methods, st.lists(_items, max_size=6)), min_size=1, max_size=6))
def test_a_rogue_master_or_worker_sending_lean_calls_ends_the_transfer_not_the_link(tmp_path_factory, calls):
    tmp_path = tmp_path_factory.mktemp("lean")
    (tmp_path / "dest").mkdir()
    transfer, operator, reply, pump, broker, seen = _opened(tmp_path, UP)
    worker_ref = reply["transfer"]
    master_end = transfer.parties[WORKER].ref.broker  # the master's broker
    for method, items in calls:
        master_end.sendEncoded([b"slaveshell", worker_ref.luid, method, *items])
        pump.flush()
    assert not broker.disconnected and not master_end.disconnected
    assert os.listdir(tmp_path / "dest") == []
    assert call(pump, worker_ref, "cancel", "done") is None  # the link still carries calls
    if any(c[0] == "result" for c in operator.calls):
        assert transfer.outcome is not None and transfer.outcome[0] is False


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.tuples(_methods, st.lists(_items, max_size=6)), min_size=1, max_size=6))
def test_a_rogue_worker_sending_lean_calls_cannot_break_the_masters_relay(tmp_path_factory, calls):
    tmp_path = tmp_path_factory.mktemp("lean")
    (tmp_path / "f").write_bytes(b"abc")
    transfer, operator, reply, pump, broker, seen = _opened(tmp_path, DOWN)
    master_broker = transfer.parties[WORKER].ref.broker
    end_luid = next(luid for luid, obj in master_broker.localObjects.items()
                    if isinstance(obj.object, TransferEnd))
    for method, items in calls:
        broker.sendEncoded([b"slaveshell", end_luid, method, *items])
        pump.flush()
    assert not broker.disconnected and not master_broker.disconnected
    results = [c for c in operator.calls if c[0] == "result"]
    assert len(results) == (1 if transfer.ended else 0)
    if transfer.ended:
        assert transfer.outcome is not None and transfer.outcome[0] is False


class DownloadSink(pb.Referenceable):
    """The master's end of a download as far as pacing goes: the bytes that arrived."""

    def __init__(self) -> None:
        self.data = 0

    def remote_entry(self, *args: object) -> None:
        pass

    def remote_data(self, chunk: bytes) -> None:
        self.data += len(chunk)

    def remote_done_file(self, *args: object) -> None:
        pass

    def remote_finish(self) -> None:
        pass


def test_a_download_is_paced_to_busy_rate_while_a_build_step_runs(tmp_path):
    from twisted.internet import task

    (tmp_path / "f").write_bytes(b"x" * (6 * 1024 * 1024))
    clock = task.Clock()
    building = [True]
    server = TransferServer(WorkerOptions(busy_rate=1024 * 1024), clock=clock)
    bot = TransferBot(server, str(tmp_path))
    bot.remote_slaveshell_transfer = lambda sink, params: server.open(  # type: ignore[method-assign]
        bot.basedir, sink, params, build_running=lambda: building[0])
    root, pump, _ = connected(bot)
    sink = DownloadSink()
    request = TransferRequest(DOWN, "w1", ("f",), operator="root").to_wire()
    reply = call(pump, root, "slaveshell_transfer", sink, request)
    ref = reply["transfer"]
    ref.callRemote("start")
    pump.flush()
    first = sink.data
    assert 0 < first <= 3 * 1024 * 1024  # the window, sent at once; past the 1 MiB burst: paced from here
    ref.callRemote("ack", first + 1024)  # all the credit back...
    pump.flush()
    assert sink.data == first  # ...but nothing more until the rate allows
    clock.advance(2.5)
    pump.flush()
    assert sink.data > first
    building[0] = False  # the build is over: no more pacing
    while sink.data < 6 * 1024 * 1024:
        before = sink.data
        ref.callRemote("ack", before - first)
        first = before
        pump.flush()
        clock.advance(10)  # a timer set while the build ran
        pump.flush()
        assert sink.data > before
