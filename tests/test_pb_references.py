"""The worker's half gives back what a session or a copy passed over its PB link when it ends: more sessions and
copies than pb.MAX_BROKER_REFS on one connection (two real PB brokers in memory), each side's table and the
worker's disconnect notifications back where they started. (The master's half, and both processes together:
tests/e2e/test_pb_references_e2e.py.)"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.spread import pb

from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slave_side.transfer import TransferServer
from slaveshell.plumbing.remote import RemotePeer, on_disconnect, release, tables
from slaveshell.vocabulary.copying import UP, TransferRequest
from slaveshell.vocabulary.protocol import OpenRequest

from .fakes import Bot, ProcessReactor, Sink, call, connected
from .test_cp import TransferBot, TransferSink

MORE_THAN_PB_ALLOWS = pb.MAX_BROKER_REFS + 100


def test_sessions_past_pb_max_broker_refs_leave_both_tables_as_they_were(tmp_path):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=2), reactor=reactor)
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    master_broker = root.broker
    start = (len(master_broker.localObjects), len(worker_broker.localObjects), len(worker_broker.disconnects))
    for i in range(MORE_THAN_PB_ALLOWS):
        sink = Sink()
        reply = call(pump, root, "slaveshell_open", sink, OpenRequest(worker="w1", pty=False).to_wire())
        assert isinstance(reply, dict) and reply["ok"], (i, reply)
        reactor.processes[-1].proto.processEnded(Failure(error.ProcessDone(0)))
        pump.flush()
        assert sink.calls[-1] == ("exit", 0, None, "")
        release(reply["session"])  # what the master does at the session's end (registry.ended)
        pump.flush()
    # Nothing kept: what the worker held of the master's (sinks, notifications) and the master of the worker's.
    assert (len(master_broker.localObjects), len(worker_broker.localObjects), len(worker_broker.disconnects)) \
        == start
    assert server.sessions == {}
    assert not worker_broker.disconnected


def test_copies_past_pb_max_broker_refs_leave_both_tables_as_they_were(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    server = TransferServer(WorkerOptions())
    root, pump, worker_broker = connected(TransferBot(server, str(tmp_path)))
    master_broker = root.broker
    start = (len(master_broker.localObjects), len(worker_broker.localObjects), len(worker_broker.disconnects))
    up = TransferRequest(UP, "w1", ("f",), str(dest), operator="root").to_wire()
    for i in range(MORE_THAN_PB_ALLOWS):
        sink = TransferSink()
        reply = call(pump, root, "slaveshell_transfer", sink, up)
        assert isinstance(reply, dict) and reply["ok"], (i, reply)
        if i % 2:  # one way to end: refused by the worker (an unsafe path); the other: cancelled by the master
            call(pump, reply["transfer"], "entry", "file", "../escape", 0o644, 1, 0.0)
            assert sink.calls[-1][:2] == ("result", False)
        else:
            call(pump, reply["transfer"], "cancel", "stopped by the operator")
        release(reply["transfer"])
        pump.flush()
    assert (len(master_broker.localObjects), len(worker_broker.localObjects), len(worker_broker.disconnects)) \
        == start
    assert server.live == {}


def test_release_is_pbs_decref_once_and_a_released_peer_sends_nothing(tmp_path):
    class Echo(pb.Root):
        def remote_give(self) -> Any:
            return pb.Referenceable()

    root, pump, server_broker = connected(Echo())
    before = len(server_broker.localObjects)
    ref = call(pump, root, "give")
    assert len(server_broker.localObjects) == before + 1
    peer = RemotePeer(ref, on_lost=lambda: None, on_refused=lambda *_: None)
    undo = on_disconnect(ref, lambda: None)
    undo()
    peer.release()
    peer.release()
    release(ref)
    pump.flush()
    assert len(server_broker.localObjects) == before
    peer.send("anything")  # dropped: never reaches the broker
    pump.flush()
    del ref, peer
    pump.flush()  # finalizing it later sends no second decref (the peer would fail on an unknown id)
    assert not server_broker.disconnected
    assert tables(server_broker) == (before, None)
