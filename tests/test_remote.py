"""slaveshell.plumbing.remote over two real PB brokers in memory: answer-less calls, refusals, dead references and lost
connections each end in the right injected callable, never as an exception in the caller."""

from twisted.spread import pb

from slaveshell.plumbing.remote import RemotePeer, set_nodelay

from .fakes import connected


class Peer(pb.Root):
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def remote_input(self, data: object) -> None:
        self.calls.append(("input", data))
        raise pb.Error("input refused")

    def remote_close(self) -> str:
        self.calls.append(("close",))
        return "closed"

    def remote_signal(self, name: object) -> None:
        raise pb.Error(f"bad signal \x1b[31m{name}")


def wired():
    peer = Peer()
    root, pump, server_broker = connected(peer)
    lost: list[bool] = []
    refused: list[tuple[str, str]] = []
    remote = RemotePeer(root, on_lost=lambda: lost.append(True), on_refused=lambda m, e: refused.append((m, e)))
    return peer, remote, pump, server_broker, lost, refused


def test_answerless_methods_reach_the_peer_and_wait_for_nothing():
    peer, remote, pump, _, lost, refused = wired()
    remote.send("input", b"ls\r")
    pump.flush()
    # The peer raised, but "input" is in NO_ANSWER: no answer was asked for, so no refusal comes back.
    assert peer.calls == [("input", b"ls\r")]
    assert (lost, refused) == ([], [])
    assert remote.ref.broker.waitingForAnswers == {}


def test_a_refusal_goes_to_on_refused_with_the_method_and_the_peers_text():
    peer, remote, pump, _, lost, refused = wired()
    remote.send("signal", "SEGV")
    pump.flush()
    assert lost == []
    assert refused == [("signal", "bad signal \x1b[31mSEGV")]  # raw: the caller shows it through visible()


def test_a_dead_reference_goes_to_on_lost_and_never_raises():
    peer, remote, pump, server_broker, lost, refused = wired()
    server_broker.transport.loseConnection()
    pump.flush()
    remote.send("input", b"x")  # callRemote raises DeadReferenceError synchronously here
    remote.send("close")
    assert lost == [True, True]
    assert refused == []


def test_a_connection_lost_before_the_answer_goes_to_on_lost():
    peer, remote, pump, server_broker, lost, refused = wired()
    remote.send("close")
    remote.ref.broker.connectionLost(pb.failure.Failure(ConnectionError("gone")))
    assert lost == [True]
    assert refused == []


def test_an_argument_over_bananas_limit_is_a_refusal_not_an_exception():
    peer, remote, pump, _, lost, refused = wired()
    remote.send("input", b"x" * (pb.banana.SIZE_LIMIT + 1))
    pump.flush()
    assert peer.calls == []
    assert lost == [] and len(refused) == 1 and refused[0][0] == "input"


def test_set_nodelay_leaves_a_connection_that_is_not_tcp_alone():
    peer, remote, pump, _, lost, refused = wired()
    set_nodelay(remote.ref)
    remote.send("close")
    pump.flush()
    assert peer.calls == [("close",)]
