"""Lean calls (slaveshell.plumbing.lean_calls) between real PB brokers in memory: the worker says it takes them, the
master switches, a session's stream events then travel as Banana lists with the same values and order as PB
calls, and whatever a peer sends that way gets a report and leaves the connection up."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.spread import banana

from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slaveshell.plumbing import lean_calls
from slaveshell.plumbing.lean_calls import LeanPeer, LeanReceiver
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError

from .fakes import Bot, ProcessReactor, Sink, call, connected


class LeanSink(Sink, LeanReceiver):
    """The master's side of a session, as far as these tests need: what arrived (fakes.Sink), and the refusals."""

    lean_methods = frozenset({"output", "input_ack"})

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self.refused.append(f"{method}: {error}")


def opened(tmp_path, pty=False):
    reactor = ProcessReactor()
    server = ShellServer(WorkerOptions(shell="/bin/sh", max_sessions=2), reactor=reactor)
    root, pump, worker_broker = connected(Bot(server, str(tmp_path)))
    lean_calls.accept(root.broker)  # the master's side accepts before it opens
    seen: list[str] = []
    handler = root.broker.proto_slaveshell
    root.broker.proto_slaveshell = lambda *a: (seen.append(a[1].decode()), handler(*a))
    sink = LeanSink()
    reply = call(pump, root, "slaveshell_open", sink, OpenRequest(worker="w1", pty=pty).to_wire())
    lost: list[str] = []
    peer = LeanPeer(reply["session"], on_lost=lambda: lost.append("lost"),
                    on_refused=lambda m, text: lost.append(f"{m}: {text}"))
    return reply, peer, sink, seen, reactor, pump, worker_broker, lost


def test_the_worker_says_it_takes_lean_calls_and_its_events_keep_their_values_and_order(tmp_path):
    reply, peer, sink, seen, reactor, pump, broker, lost = opened(tmp_path)
    assert reply["lean"] is True
    proc = reactor.processes[0]
    proc.proto.childDataReceived(1, b"before")
    reactor.advance(0)
    pump.flush()
    assert seen == []  # until the master says so, PB calls

    peer.lean = True
    peer.send("lean")
    peer.send("input", b"ls\n")
    pump.flush()
    assert proc.written == [b"ls\n"]
    proc.proto.childDataReceived(1, b"after")
    proc.proto.childDataReceived(2, b"err" * 5000)
    reactor.advance(1)
    pump.flush()
    assert sink.calls == [("output", 1, b"before"), ("input_ack", 3, False), ("output", 1, b"after"),
                          ("output", 2, b"err" * 5000)]
    assert seen == ["input_ack", "output", "output"]
    assert sink.refused == [] and lost == [] and not broker.disconnected


def test_acks_ride_on_output_in_their_lean_form(tmp_path):
    peer = lean_calls.CODECS["output"]
    wire = peer.encode(1, b"x", [[3, False], [5, True]])
    assert wire == [1, [3, 0, 5, 1], b"x"]
    assert peer.decode(wire) == (1, b"x", [[3, False], [5, True]])
    assert peer.decode([1, [], b"x"]) == (1, b"x")


def test_a_lost_connection_and_an_oversized_payload_reach_the_senders_callables(tmp_path):
    reply, peer, sink, seen, reactor, pump, broker, lost = opened(tmp_path)
    peer.lean = True
    peer.send("input", b"x" * (banana.SIZE_LIMIT + 1))
    assert lost == [f"input: byte string is too long to send ({banana.SIZE_LIMIT + 1})"]
    peer.ref.broker.connectionLost(None)
    peer.send("input", b"x")
    assert lost[-1] == "lost"


banana_items = st.recursive(
    st.integers(min_value=-(2**40), max_value=2**40) | st.binary(max_size=40) | st.floats(allow_nan=False)
    | st.sampled_from([b"x" * 70000, 2, 0, 1, -1]),
    lambda children: st.lists(children, max_size=4), max_leaves=8)
methods = st.sampled_from([b"input", b"ack", b"output", b"input_ack", b"exit", b"close", b"", b"\xff"])


@given(calls=st.lists(st.tuples(st.sampled_from(["handle", 0, 99, -3, b"root", 1.5]), methods,
                                st.lists(banana_items, max_size=4)), max_size=8))
def test_a_rogue_master_sending_lean_calls_cannot_break_the_worker(tmp_path_factory, calls):
    reply, peer, sink, seen, reactor, pump, broker, lost = opened(tmp_path_factory.mktemp("w"))
    for luid, method, items in calls:
        target = peer.ref.luid if luid == "handle" else luid
        peer.ref.broker.sendEncoded([b"slaveshell", target, method, *items])
        pump.flush()
        assert not broker.disconnected
    # The worker still serves its master.
    assert call(pump, peer.ref, "ping") is True
