"""Issue 10, parts 2 and 4, at unit level: the resource bounds (connections, calls, views, unread output, notices,
the refusal audit: master_side.operators.gate and what it applies) and the close deadline, with fake transports
and a fake clock."""

from typing import Any, cast

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from master_side.audit.refusals import RefusalAudit
from master_side.operators.bounds import ResourceBounds
from master_side.operators.gate import ConnectionGate
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.notices import NoticeBudget
from master_side.sessions.session import MasterSession, Role
from master_side.shell_socket.door import WireDoor
from master_side.shell_socket.listener import DoorFactory
from slaveshell.plumbing.write_now import buffered_bytes
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import REFUSED_PREFIX, OpenRequest
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
BOB = Identity(1001, 1001, 2, "bob", frozenset())
ROOT = Identity(0, 0, 1, "root", frozenset())


class Peer(StringTransport):
    """A transport whose peer is `who`, with Twisted's FileDescriptor write-buffer fields."""

    def __init__(self, who: Identity) -> None:
        super().__init__()
        self.who = who
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class Refusals:
    """The trail's part the gate writes to (master_side.audit.refusals.RefusalRecord): each refusal or drop as
    (kind, user, detail)."""

    def __init__(self, audited: list[tuple[str, str, str]]) -> None:
        self.audited = audited

    def refused(self, who: Identity, worker: str | None, reason: str) -> None:
        self.audited.append(("refused", who.user, reason))

    def dropped(self, who: Identity, worker: str | None, reason: str) -> None:
        self.audited.append(("dropped", who.user, reason))


def make_gate(clock: MemoryReactorClock, **bounds: Any) -> tuple[ConnectionGate, list[tuple[str, str, str]]]:
    audited: list[tuple[str, str, str]] = []
    refusals = Refusals(audited)
    audit = RefusalAudit(lambda: refusals, clock.seconds)
    gate = ConnectionGate(lambda transport: transport.who, audit, clock.seconds, ResourceBounds(**bounds))
    return gate, audited


def doors(gate: ConnectionGate, clock: MemoryReactorClock) -> DoorFactory:
    """The shell socket's factory, for connections that stay at the gate (no service behind it)."""
    return DoorFactory(cast(Any, None), gate, clock)


def door(gate: ConnectionGate, who: Identity) -> tuple[WireDoor, Peer]:
    """A framed door admitted by `gate` (its service only lends the gate), on a transport whose peer is `who`."""
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate})))
    transport = Peer(who)
    served.makeConnection(transport)
    return served, transport


def connect(factory: DoorFactory, who: Identity) -> tuple[Any, Peer]:
    broker = factory.buildProtocol(None)
    transport = Peer(who)
    broker.makeConnection(transport)
    return broker, transport


# -- connections ---------------------------------------------------------------------------------------------


def test_connections_beyond_the_bound_per_uid_get_a_line_and_the_close_and_are_audited_once():
    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connections_per_uid=2, connections=3)
    factory = doors(gate, clock)
    served = [connect(factory, ALICE) for _ in range(2)]
    assert all(t.value() == b"" and not t.disconnecting for _, t in served)  # waiting for the client's magic
    refused = [connect(factory, ALICE) for _ in range(5)]
    for broker, t in refused:
        assert t.value() == REFUSED_PREFIX + b"alice already has 2 connections to the shell socket (the master's " \
                                              b"limit per user)\n"
        assert t.disconnecting
        broker.dataReceived(b"anything")  # ignored: nothing is read from a refused peer
    assert gate.count(ALICE.uid) == 2
    # One audit event for the burst; the rest are counted and reported once the interval has passed.
    assert audited == [("refused", "alice", "connection refused: alice already has 2 connections to the shell "
                                            "socket (the master's limit per user)")]
    clock.advance(10)
    gate.tick()
    assert audited[-1][2].startswith("4 more: connection refused: alice already has 2 connections")
    # Another user still gets in, up to the total.
    bob, t = connect(factory, BOB)
    assert not t.disconnecting
    _, t = connect(factory, BOB)
    assert t.value().startswith(REFUSED_PREFIX + b"the shell socket already has 3 connections")
    # A closed connection frees its place.
    served[0][0].connectionLost(None)
    _, t = connect(factory, ALICE)
    assert not t.disconnecting and gate.count() == 3


# -- output a peer does not read -----------------------------------------------------------------------------


def test_a_connection_whose_buffer_passes_the_bound_is_dropped_and_audited():
    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connection_buffer=1000)
    broker, t = door(gate, ALICE)
    t.dataBuffer, t.offset, t._tempDataLen = b"x" * 800, 100, 300
    assert buffered_bytes(t) == 1000
    assert not gate.check(broker) and not t.aborted
    t._tempDataLen = 301
    assert gate.check(broker) and t.aborted
    assert audited == [("dropped", "alice", "connection dropped: 1001 bytes of output it did not read (the "
                                            "master's limit is 1000)")]
    assert gate.count() == 0


def test_a_connection_that_stops_reading_is_dropped_even_when_nothing_new_is_sent():
    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, write_stall=5.0)
    reader, r = door(gate, ALICE)
    stalled, s = door(gate, BOB)
    s._tempDataLen = r._tempDataLen = 5000
    stalled.written = reader.written = 5000
    for _ in range(12):
        # More output comes to both as fast as the reader reads: its buffer stays as full, but the kernel takes
        # from it; the stalled peer takes nothing.
        reader.written += 100
        gate.tick()
        clock.advance(1)
    assert s.aborted and not r.aborted
    assert audited == [("dropped", "bob", "connection dropped: it has not read its output for 5 s (5000 bytes "
                                          "waiting)")]


def test_transports_without_a_buffer_figure_count_as_empty():
    assert buffered_bytes(object()) == 0


# -- calls in progress ---------------------------------------------------------------------------------------


def test_calls_in_progress_are_bounded_per_connection():
    clock = MemoryReactorClock()
    gate, _ = make_gate(clock, calls_in_progress=2)
    broker, _ = door(gate, ALICE)
    assert gate.limited(broker, lambda: "sync answers are not held") == "sync answers are not held"
    waiting = [defer.Deferred() for _ in range(2)]
    for d in waiting:
        gate.limited(broker, lambda d=d: d)
    with pytest.raises(OperatorError, match=r"too many calls in progress on this connection \(at most 2\)") as e:
        gate.limited(broker, lambda: defer.Deferred())
    assert e.value.kind is ErrorKind.LIMIT
    waiting[0].callback("done")
    results: list[Any] = []
    gate.limited(broker, lambda: defer.succeed("now it runs")).addCallback(results.append)
    assert results == ["now it runs"]


# -- views ---------------------------------------------------------------------------------------------------


def session_with_owner(clock: MemoryReactorClock) -> tuple[MasterSession, list[tuple[Any, ...]]]:
    session = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None, clock=clock.seconds)
    to_owner: list[tuple[Any, ...]] = []
    owner = session.start(ToViewer(lambda *a: to_owner.append(a)), ToWorker())
    owner.connection = "alice's connection"
    return session, to_owner


def test_views_are_bounded_per_connection_per_session_and_per_operator():
    clock = MemoryReactorClock()
    gate, _ = make_gate(clock, viewers_per_session=3, viewers_per_operator=2)
    s1, _ = session_with_owner(clock)
    s2, _ = session_with_owner(clock)
    sessions = [s1, s2]
    assert gate.viewer_refusal(BOB, "bob-1", s1, sessions) is None
    s1.add_viewer(BOB, Role.WATCH, ToViewer()).connection = "bob-1"
    assert gate.viewer_refusal(BOB, "bob-1", s1, sessions) == f"this connection already views session {s1.id}"
    s1.add_viewer(BOB, Role.WATCH, ToViewer()).connection = "bob-2"
    assert gate.viewer_refusal(ROOT, "root-1", s1, sessions) == (f"session {s1.id} already has 3 viewers (the "
                                                                 "master's limit)")
    assert gate.viewer_refusal(BOB, "bob-3", s2, sessions) == ("bob already has 2 views of sessions (the "
                                                               "master's limit)")
    # The owner's own view does not count against its operator.
    assert gate.viewer_refusal(ALICE, "alice-2", s2, sessions) is None


def test_join_notices_to_the_owner_are_bounded_per_minute():
    clock = MemoryReactorClock()
    session, to_owner = session_with_owner(clock)
    for _ in range(40):
        viewer = session.add_viewer(BOB, Role.WATCH, ToViewer())
        session.remove_viewer(viewer, "left")
    notices = [a[2] for a in to_owner if b"is now watching" in a[2]]
    assert len(notices) == 5
    clock.advance(60)
    session.add_viewer(BOB, Role.WATCH, ToViewer())
    assert b"bob is now watching this session (35 more joins not shown)" in to_owner[-1][2]


def test_notice_budget_counts_what_it_leaves_out():
    clock = MemoryReactorClock()
    budget = NoticeBudget(clock.seconds, per_minute=1)
    assert budget.take() == (True, 0)
    assert budget.take() == (False, 0)
    assert budget.take() == (False, 0)
    clock.advance(60)
    assert budget.take() == (True, 2)


# -- part 4: the close deadline ------------------------------------------------------------------------------


def test_a_close_the_worker_does_not_confirm_ends_the_session_on_the_master_within_the_deadline():
    clock = MemoryReactorClock()
    ended: list[MasterSession] = []
    session = MasterSession(OpenRequest(worker="w1"), ALICE, ended.append, clock=clock.seconds)
    to_owner: list[tuple[Any, ...]] = []
    to_worker: list[tuple[Any, ...]] = []
    session.start(ToViewer(lambda *a: to_owner.append(a)), ToWorker(lambda *a: to_worker.append(a)))
    session.close("killed by root")
    assert to_worker == [("close",)]
    clock.advance(4.9)
    # The worker answers heartbeats, but never the close.
    session.worker_seen = clock.seconds()
    assert not session.close_overdue(clock.seconds(), 5.0) and session.live
    clock.advance(0.1)
    assert session.close_overdue(clock.seconds(), 5.0)
    assert ended == [session] and not session.live
    assert session.end_reason == "killed by root; worker w1 did not confirm the end within 5 s"
    assert to_owner[-1] == ("exit", None, None, "killed by root; worker w1 did not confirm the end within 5 s")
    assert b"session ends: worker w1 did not confirm the end within 5 s" in to_owner[-2][2]


def test_a_worker_that_confirms_in_time_ends_the_session_with_its_own_status():
    clock = MemoryReactorClock()
    session = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None, clock=clock.seconds)
    session.start(ToViewer(), ToWorker())
    session.close("detached for longer than 300 s")
    clock.advance(3)
    session.worker_exit(None, 1, "")
    clock.advance(10)
    assert not session.close_overdue(clock.seconds(), 5.0)
    assert session.end_reason == "detached for longer than 300 s (signal 1)"
    # No close, no deadline.
    other = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None, clock=clock.seconds)
    other.start(ToViewer(), ToWorker())
    clock.advance(100)
    assert not other.close_overdue(clock.seconds(), 5.0) and other.live


def test_the_bounds_are_checked_in_the_master_config():
    from buildbot.config.errors import ConfigErrors

    from master_side.service import ShellService

    for bad in ({"max_connections_per_uid": 0}, {"max_connections": "many"}, {"max_viewers_per_session": True},
                {"max_connection_buffer": -1}, {"close_deadline": -1}, {"write_stall_timeout": "soon"}):
        with pytest.raises(ConfigErrors):
            ShellService(**bad)
    ShellService(max_connections_per_uid=4, close_deadline=None, write_stall_timeout=None)


def test_the_door_counts_what_it_writes_so_the_gate_sees_whether_the_peer_reads():
    class Buffering(Peer):
        def write(self, data: bytes) -> None:  # as FileDescriptor.write: everything waits in the buffer first
            self._tempDataLen += len(data)

    clock = MemoryReactorClock()
    gate, _ = make_gate(clock, write_stall=5.0)
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate})))
    transport = Buffering(ALICE)
    served.makeConnection(transport)  # the master's magic
    assert served.written == transport._tempDataLen > 0
    served.write(b"x" * 1000)
    assert served.written == transport._tempDataLen > 1000


def test_output_held_for_all_connections_together_is_bounded_the_largest_go_first():
    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connection_buffer=1000, buffered_total=2000)
    peers = [door(gate, who) for who in (ALICE, BOB, ROOT)]
    for (_, t), held in zip(peers, (900, 1000, 500), strict=True):
        t._tempDataLen = held
    gate.tick()
    assert [t.aborted for _, t in peers] == [False, True, False]
    assert audited == [("dropped", "bob", "connection dropped: 1000 bytes of output it did not read, while all "
                                          "connections held more than the master's limit of 2000")]


# -- every call kind, answers, watched connections, quotas ------------------------------------------------------


class PendingAPI:
    """An operator API whose reads wait until the test fires them, and whose other calls answer at once."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []

    def _wait(self, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    history = search = site_history = _wait

    def site_search(self, *args: Any) -> defer.Deferred[Any]:
        return self._wait().addCallback(lambda rows: {"rows": rows})
    cluster = None  # one master: no router (master_side.cluster.part)

    def transcript(self, *args: Any) -> defer.Deferred[Any]:
        return self._wait().addCallback(lambda _: {"data": b"", "eof": True})

    def workers(self, who: Identity) -> list[Any]:
        return [{"name": "w1"}]

    def sessions(self, who: Identity) -> list[Any]:
        return []

    def site_sessions(self, who: Identity) -> dict[str, Any]:
        return {"rows": []}

    def release(self, who: Identity, build: object) -> str:
        return "released"

    def kill(self, who: Identity, session: object) -> str:
        return "killed"

    def kill_anywhere(self, who: Identity, session: object) -> defer.Deferred[str]:
        return defer.succeed(self.kill(who, session))


def answers(transport: Peer) -> list[dict[str, Any]]:
    from slaveshell.vocabulary import framing

    decoder = framing.Decoder(max_control=framing.MAX_ANSWER)
    data = transport.value()
    data = data[data.index(framing.MAGIC) + len(framing.MAGIC):]
    return [dict(framing.parse_control(f.payload).fields) for f in decoder.feed(data)
            if f.type is framing.FrameType.CONTROL]


CALLS = {"history": {"filters": {}}, "search": {"text": "x", "filters": {}},
         "transcript": {"session": "s", "offset": 0}, "workers": {}, "sessions": {}, "release": {"build": 1},
         "kill": {"session": "s"}}


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_every_call_kind_waits_past_calls_in_progress_and_the_connection_is_not_read_meanwhile(kind):
    """A sweep over the framed door's calls: with max_calls_in_progress reads in progress on a connection, a call
    of any kind waits, with what follows it, and the connection is paused (nothing more is read from it); once
    one read is answered, the waiting call is served, in order, and reading resumes."""
    from slaveshell.vocabulary import framing

    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, calls_in_progress=4)
    api = PendingAPI()
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate, "api": api})))
    transport = Peer(ALICE)
    served.makeConnection(transport)
    served.dataReceived(b"".join(framing.control(framing.Op.HISTORY, id=i, filters={}) for i in range(1, 5))
                        + framing.control(framing.Op(kind), id=5, **CALLS[kind])
                        + framing.control(framing.Op.WORKERS, id=6))
    assert len(api.pending) == 4 and answers(transport) == []
    assert transport.producerState == "paused"
    api.pending[0].callback([])
    if kind in ("history", "search", "transcript"):
        assert len(api.pending) == 5
        api.pending[-1].callback([])
    assert [a["id"] for a in answers(transport)] == [1, 5, 6]
    assert all(a["ok"] is True for a in answers(transport))
    assert transport.producerState == "producing"
    assert audited == []  # nothing refused
    # The gate's own bound still refuses a call made past it (and audits it), as a safety net.
    for d in api.pending[1:4]:
        assert not d.called
    with pytest.raises(OperatorError, match="too many calls in progress"):
        gate.limited(served, lambda: defer.Deferred())
        gate.limited(served, lambda: defer.Deferred())
    assert audited and audited[0][2].startswith("call refused: too many calls in progress")


def test_an_answer_the_peer_does_not_read_counts_against_the_buffered_bound():
    from slaveshell.vocabulary import framing

    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connection_buffer=1000)
    served = WireDoor(cast(Any, type("Service", (), {"gate": gate, "api": PendingAPI()})))
    transport = Peer(ALICE)
    served.makeConnection(transport)
    transport._tempDataLen = 1001  # what it has not read
    served.dataReceived(framing.control(framing.Op.WORKERS, id=1))
    assert transport.aborted
    assert audited and audited[0][0] == "dropped" and "1001 bytes of output it did not read" in audited[0][2]


class WebPage:
    """A web terminal's socket as the gate sees it (master_side.www.terminal_ws.TerminalProtocol)."""

    def __init__(self) -> None:
        self.transport = Peer(ALICE)
        self.disconnected = False
        self.written = 0


def test_watched_web_sockets_are_dropped_by_the_buffer_bounds_and_do_not_count_as_socket_connections():
    from slaveshell.vocabulary.policy import WebIdentity

    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connections_per_uid=2, connections=2, connection_buffer=1000,
                              buffered_total=1500, write_stall=5.0)
    alice = WebIdentity.from_web("alice", ())
    pages = [WebPage() for _ in range(20)]
    for page in pages:
        gate.watch(page, alice)
    # They do not take the shell socket's places.
    from slaveshell.vocabulary import framing

    assert [t.value() for _, t in (door(gate, ROOT), door(gate, ROOT))] == [framing.MAGIC] * 2
    assert gate.count() == 2
    # Over the bound per connection: dropped at the next check.
    pages[0].transport._tempDataLen = 1001
    assert gate.check(pages[0]) and pages[0].transport.aborted
    # In total: the largest goes.
    pages[1].transport._tempDataLen, pages[2].transport._tempDataLen = 900, 700
    gate.tick()
    assert pages[1].transport.aborted and not pages[2].transport.aborted
    # Not read for write_stall seconds: dropped.
    for _ in range(6):
        clock.advance(1.0)
        gate.tick()
    assert pages[2].transport.aborted
    assert all(kind == "dropped" and who == "web:alice" for kind, who, _ in audited), audited
    assert len(audited) == 1  # one per user and kind per interval; the others counted for the next


def test_quota_property_per_key_and_total_and_give_back():
    """Random takes and give-backs against a model: a place is given exactly when the key has fewer than per_key
    and all keys fewer than total; what is given back can be taken again."""
    import random

    from master_side.www.quota import Quota

    for seed in range(50):
        rng = random.Random(seed)
        per_key, total = rng.randint(1, 4), rng.randint(1, 10)
        quota, model = Quota(per_key, total), {}  # type: ignore[var-annotated]
        for _ in range(300):
            key = rng.choice("abcdef")
            if rng.random() < 0.6:
                room = model.get(key, 0) < per_key and sum(model.values()) < total
                assert quota.take(key) is room
                if room:
                    model[key] = model.get(key, 0) + 1
            elif model.get(key):
                quota.give_back(key)
                model[key] -= 1
            assert len(quota) == sum(model.values()) <= total
            assert all(quota.held.get(k, 0) == n for k, n in model.items())


def test_places_of_users_without_a_right_never_take_those_of_users_with_one():
    """A sweep over how many sockets users without a right hold: the web door's quota for users with a right is
    untouched by any number of them (master_side.www.terminal_ws keeps one Quota per kind)."""
    from master_side.www import terminal_ws

    for flood in (0, 1, 8, 64, 1000):
        factory = terminal_ws.TerminalFactory(cast(Any, None))
        for i in range(flood):
            factory.no_right.take(f"web:u{i % 8}")
            factory.refused.take(f"tcp4:10.0.0.{i % 250}")
        assert len(factory.no_right) <= terminal_ws.MAX_SOCKETS_NO_RIGHT
        assert len(factory.refused) <= terminal_ws.MAX_SOCKETS_REFUSED
        assert all(factory.sockets.take("web:alice") for _ in range(terminal_ws.MAX_SOCKETS_PER_USER))
        assert not factory.sockets.take("web:alice")


def test_connections_of_uids_without_a_right_never_take_those_of_operators():
    """Users of the socket's group whom no policy rule names held every place (8 uids x 32 idle connections
    locked root out): they are counted apart, within NO_RIGHT_CONNECTIONS."""
    from master_side.operators.gate import NO_RIGHT_CONNECTIONS, NO_RIGHT_CONNECTIONS_PER_UID
    from slaveshell.vocabulary.policy import Policy, Rule

    clock = MemoryReactorClock()
    gate, audited = make_gate(clock, connections_per_uid=32, connections=256)
    gate.has_right = Policy([Rule(users=(0,))]).grants_some_right
    factory = doors(gate, clock)
    nobody = [Identity(60000 + i, 60000 + i, 60000 + i, f"u{i}", frozenset()) for i in range(40)]
    held = [connect(factory, who) for who in nobody for _ in range(32)]
    kept = [t for _, t in held if not t.disconnecting]
    assert len(kept) == NO_RIGHT_CONNECTIONS
    _, t = connect(factory, nobody[0])
    assert t.value().startswith(REFUSED_PREFIX + f"u0 has no right on any worker here, and already "
                                                  f"{NO_RIGHT_CONNECTIONS_PER_UID} connections".encode())
    _, t = connect(factory, nobody[-1])
    assert t.value().startswith(REFUSED_PREFIX + b"the shell socket already has 8 connections of users without")
    # Root, who has a right, gets in, up to the bounds of operators.
    served = [connect(factory, ROOT) for _ in range(32)]
    assert not any(t.disconnecting for _, t in served)
    assert gate.count(right=True) == 32 and gate.count(right=False) == NO_RIGHT_CONNECTIONS
    assert audited and all(kind == "refused" for kind, _, _ in audited)


def test_the_refusal_audit_writes_to_the_current_trail_and_nowhere_while_there_is_none():
    """The gate holds the trail as the service has it: none before the service starts (or after it stopped),
    when a refusal is only logged; the trail's `refused` or `dropped` once there is one."""
    clock = MemoryReactorClock()
    audited: list[tuple[str, str, str]] = []
    trail: list[Refusals] = []
    audit = RefusalAudit(lambda: trail[0] if trail else None, clock.seconds)
    audit(ALICE, "refused", "permission denied: alice may not shell on worker w1")
    trail.append(Refusals(audited))
    audit(BOB, "refused", "permission denied: bob may not shell on worker w1", "w1")
    audit(BOB, "dropped", "connection dropped: it has not read its output for 5 s")
    assert audited == [("refused", "bob", "permission denied: bob may not shell on worker w1"),
                       ("dropped", "bob", "connection dropped: it has not read its output for 5 s")]
