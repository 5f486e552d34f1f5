"""Sessions routed between two masters (master_side.cluster.serve on the worker's master B,
master_side.cluster.relay on the operator's master A, master_side.cluster.stream between them), over the router
of tests/test_cluster.py: B's authority over who calls and with what, its bounds, the stream's order and checks,
and the end of a session when either master goes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task
from twisted.python.failure import Failure

from master_side.cluster import serve
from master_side.cluster.config import ClusterConfig, session_uri, worker_uri
from master_side.cluster.link import ClusterLink, Listing
from master_side.cluster.relay import MAX_WAITING_LINES, Relays
from master_side.cluster.serve import MAX_PER_MASTER, RouterSink, ServedSessions
from master_side.cluster.stream import (
    MAX_GROUPS,
    MAX_MODERATED_BY,
    MAX_NAME,
    MAX_OUTPUT,
    OpenCall,
    Refused,
    ToOperatorSide,
    ToWorkerSide,
    check_moderated_by,
    to_operator_side,
    to_worker_side,
)
from master_side.operators.approvals import ApprovalLimits, Approvals, Kind
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.policy import Action, ClusterIdentity, Identity, Policy, Rule
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest, ProtocolError

from .test_cluster import Router

ALICE = Identity(1000, 1000, 1, "alice", frozenset({"alice", "ops"}))
TOKEN = "0" * 32


def link_of(name: str, clock: task.Clock, workers: tuple[str, ...] = ()) -> ClusterLink:
    """A master's link; its listing names `workers`, each with whether the link registered it."""
    config = ClusterConfig(router_url="ws://127.0.0.1:1/ws", realm="r", authid=name, ticket="t", master=name)

    def listing() -> Listing:
        return Listing(name, f"h:/{name}", None, tuple({"name": w, "registered": link.registered(w)}
                                                       for w in workers))

    link = ClusterLink(config, listing, clock)
    return link


class FakeView:
    """The session B's operators' API opens: what the calling master's messages did to it."""

    def __init__(self, who: Identity, sink: RouterSink) -> None:
        self.who, self.sink = who, sink
        self.got: list[tuple[str, object]] = []
        self.live = True
        self.session_id = "s1"
        self.input_grant = 4096
        self.worker, self.role, self.size = "b1", "owner", (80, 24)
        self.moderated_by: tuple[str, ...] | None = None  # a four-eyes session's rule's groups, as B's View says
        self.moderator = False

    def input(self, data: bytes) -> None:
        self.got.append(("input", data))

    def eof(self) -> None:
        self.got.append(("eof", None))

    def stdout_closed(self) -> None:
        self.got.append(("stdout_closed", None))

    def resize(self, cols: int, rows: int) -> None:
        self.got.append(("resize", (cols, rows)))

    def signal(self, signum: int) -> None:
        self.got.append(("signal", signum))

    def ack(self, nbytes: int) -> None:
        self.got.append(("ack", nbytes))

    def close(self) -> None:
        self.got.append(("close", None))

    def detach(self) -> None:
        self.got.append(("detach", None))

    def end(self, why: str) -> None:
        self.got.append(("end", why))
        self.live = False

    def refused(self, error: ProtocolError) -> object:
        self.got.append(("refused", str(error)))
        return None


class OperatorSink:
    """The operator's end on A (the door's sink)."""

    def __init__(self) -> None:
        self.out: list[tuple[str, object]] = []
        self.gone = False
        self.disconnects: list[Callable[[], None]] = []

    def output(self, stream: int, data: bytes) -> None:
        self.out.append(("output", data))

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.out.append(("input_ack", nbytes))

    def exit(self, status: ExitStatus) -> None:
        self.out.append(("exit", status))

    def waiting(self, text: str) -> None:
        self.out.append(("waiting", text))

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.disconnects.append(callback)
        return lambda: None


class Site:
    """Masters A and B on one router; B holds worker b1 and serves with `policy`."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.clock = task.Clock()
        self.router = Router()
        self.a = link_of("A", self.clock)
        self.b = link_of("B", self.clock, ("b1",))
        self.views: list[FakeView] = []
        self.audited: list[tuple[str, str, str]] = []
        self.policy = policy or Policy([Rule(users=["cluster:A/alice"])])
        # What B's views say of their four-eyes rule (B's View.moderated_by, .moderator).
        self.moderated_by: tuple[str, ...] | None = None
        self.moderator = False
        self.served = ServedSessions(self.b, self.open, self.attach,
                                     lambda who, w, m: self.audited.append((who.user, w, m)), self.clock.seconds)
        self.relays = Relays(self.a, self.clock.seconds, lambda: 30.0)
        self.a._joined(self.router.session(authid="A"), None)
        self.b._joined(self.router.session(authid="B"), None)
        self.b.sync(["b1"], 0.0)

    def open(self, who: Identity, request: OpenRequest, sink: RouterSink) -> FakeView:
        decision = self.policy.may(who, Action.SHELL, request.worker)
        if not decision.allowed:
            raise Refused("permission denied", f"permission denied: {decision.reason}")
        sink.output(1, b"hello ")  # a notice before the open's answer
        view = FakeView(who, sink)
        view.moderated_by, view.moderator = self.moderated_by, self.moderator
        self.views.append(view)
        return view

    def attach(self, who: Identity, sink: RouterSink, session_id: str, mode: str) -> FakeView:
        if session_id != "s1":
            raise Refused("not found", f"no live session {session_id}")
        if not self.policy.may(who, Action.WATCH, "b1").allowed:
            raise Refused("permission denied", "permission denied")
        view = FakeView(who, sink)
        view.role = mode if mode == "watch" else "join"
        view.moderated_by, view.moderator = self.moderated_by, self.moderator
        self.views.append(view)
        return view

    def routed(self, sink: OperatorSink | None = None) -> Any:
        """A's open of a session on b1: its RoutedView, or what it raised."""
        d = self.relays.open(ALICE, OpenRequest(worker="b1"), sink or OperatorSink())
        result = d.result
        if isinstance(result, Failure):
            d.addErrback(lambda _: None)
            result.raiseException()
        return result


def test_b_opens_for_the_identity_a_vouches_for_under_the_routers_name_of_a() -> None:
    site = Site()
    sink = OperatorSink()
    view = site.routed(sink)
    assert view is not None and view.session_id == "s1" and view.master == "B"
    who = site.views[0].who
    assert isinstance(who, ClusterIdentity)
    assert who.user == "cluster:A/alice" and who.uid == -1
    assert who.groups == {"cluster:A", "cluster:A/alice", "cluster:A/ops"}
    assert sink.out == [("output", b"hello ")]  # B's notice before its answer, delivered after it
    view.input(b"ls\n")
    view.resize(100, 30)
    view.signal(2)
    view.ack(10)
    view.eof()
    assert site.views[0].got == [("input", b"ls\n"), ("resize", (100, 30)), ("signal", 2), ("ack", 10), ("eof", None)]
    site.views[0].sink.output(1, b"x" * 200_000)  # more than one message holds: in pieces, in order
    site.views[0].sink.exit(ExitStatus(code=3))
    assert b"".join(d for k, d in sink.out[1:] if k == "output") == b"x" * 200_000  # type: ignore[misc]
    assert sink.out[-1] == ("exit", ExitStatus(code=3))
    # Both per-session procedures are gone from the router.
    assert not [uri for uri in site.router.procedures if ".session." in uri]
    assert not site.served.served and not site.relays.views


def test_bs_policy_refusal_reaches_a_as_b_wrote_it_and_a_gives_up_its_procedure() -> None:
    site = Site(Policy([Rule(users=["cluster:C/alice"])]))
    with pytest.raises(Refused) as refused:
        site.routed()
    assert refused.value.kind == "permission denied"
    assert "cluster:A/alice (vouched for by master A) may not shell on worker b1" in refused.value.message
    assert not [uri for uri in site.router.procedures if ".session." in uri]


def test_a_worker_no_master_holds_is_not_routed() -> None:
    site = Site()
    assert site.relays.open(ALICE, OpenRequest(worker="nowhere"), OperatorSink()).result is None
    assert not [uri for uri in site.router.procedures if ".session." in uri]


def test_b_refuses_a_caller_that_is_not_a_slaveshell_master() -> None:
    site = Site()
    stranger = site.router.session(authid="anonymous", role="anonymous")
    call = OpenCall(OpenRequest(worker="b1"), "alice", (), TOKEN).to_wire()
    failure = stranger.call(worker_uri("b1", "open"), call)
    error = failure.result.value
    failure.addErrback(lambda f: None)
    assert isinstance(error, ApplicationError) and error.error == "slaveshell.error.not_authorized"
    assert not site.views


def test_b_bounds_the_sessions_one_master_makes_it_hold_and_audits_the_refusal() -> None:
    site = Site()
    for _ in range(MAX_PER_MASTER):
        assert site.routed() is not None
    with pytest.raises(Refused) as refused:
        site.routed()
    assert refused.value.kind == "limit"
    assert f"already serves {MAX_PER_MASTER} sessions for master A" in refused.value.message
    assert site.audited[-1][0] == "cluster:A/alice" and "its limit per master" in site.audited[-1][2]
    assert len(site.views) == MAX_PER_MASTER


def test_only_the_master_that_opened_the_session_is_heard_and_in_order() -> None:
    site = Site()
    view = site.routed()
    in_uri = view.in_uri
    # Another slaveshell master that learnt the URI from the router's meta API: ignored.
    other = site.router.session(authid="C")
    other.call(in_uri, [0, "input", b"rm -rf /\n"])
    assert site.views[0].got == []
    # A out of sequence: the session is refused (on B, as a misbehaving owner's message).
    site.a.call(in_uri, [5, "input", b"x"])
    assert site.views[0].got[-1][0] == "refused" and "where 0 was expected" in str(site.views[0].got[-1][1])
    # Output from another master for A's session: ignored.
    sink = view.sink
    before = list(sink.out)
    other.call(session_uri(view.token, "out"), [1, "output", 1, b"fake"])
    assert sink.out == before


def test_when_a_is_gone_b_ends_the_session() -> None:
    site = Site()
    view = site.routed()
    # A's procedure leaves the router (A killed): B's next message fails.
    del site.router.procedures[session_uri(view.token, "out")]
    site.clock.advance(serve.PING)
    site.served.tick(site.clock.seconds())
    assert site.views[0].got[-1][0] == "end" and "the operator's master" in str(site.views[0].got[-1][1])


def test_when_b_is_gone_a_ends_the_session_with_a_line() -> None:
    site = Site()
    sink = OperatorSink()
    view = site.routed(sink)
    del site.router.procedures[view.in_uri]
    site.clock.advance(serve.PING)
    site.relays.tick(site.clock.seconds())
    status = sink.out[-1][1]
    assert isinstance(status, ExitStatus) and status.lost
    assert status.reason == "the session on b1 ended: master B is gone"


def test_losing_the_router_ends_the_sessions_on_both_sides() -> None:
    site = Site()
    sink = OperatorSink()
    site.routed(sink)
    site.a._left(None, "lost")
    site.b._left(None, "lost")
    assert sink.out[-1][1] == ExitStatus(reason="the session on b1 ended: this master lost the cluster's router")
    assert site.views[0].got[-1] == ("end", "this master lost the cluster's router")


def test_the_stream_checks_what_comes_off_the_wire() -> None:
    assert to_worker_side([0, "input", b"a"]).kind is ToWorkerSide.INPUT
    assert to_operator_side([3, "exit", None, 9, ""]).values == (ExitStatus(signal=9),)
    assert to_operator_side([0, "output", 2, b"e"]).kind is ToOperatorSide.OUTPUT
    for bad in ([0, "input", "text"], [0, "input", b"x" * (64 * 1024 + 1)], [True, "eof"], [0, "shutdown"],
                [0, "ack", -1], [0, "resize", 0, 10], [0, "signal", "NOSUCH"], [0, "eof", 1], "eof", [0]):
        with pytest.raises(ProtocolError):
            to_worker_side(bad)
    for bad in ([0, "output", 3, b"x"], [0, "output", 1, b"x" * (MAX_OUTPUT + 1)], [0, "input_ack", 1, 0, False],
                [0, "exit", None, None, 7]):
        with pytest.raises(ProtocolError):
            to_operator_side(bad)


@pytest.mark.parametrize("change", [
    {"user": "a/b"}, {"user": ""}, {"user": "x" * 200}, {"user": "bell\x07"}, {"groups": ["ok", "a/b"]},
    {"groups": ["g"] * (MAX_GROUPS + 1)}, {"token": "ZZ" * 16}, {"token": "0" * 31}, {"extra": 1},
])
def test_an_open_call_is_checked(change: dict[str, object]) -> None:
    wire = {**OpenCall(OpenRequest(worker="b1"), "alice", ("ops",), TOKEN).to_wire(), **change}
    with pytest.raises(ProtocolError):
        OpenCall.from_wire(wire)


def test_a_cluster_identity_matches_only_rules_that_name_it() -> None:
    who = ClusterIdentity.vouched("A", "root", ["root"])
    assert not Policy.default(master_uid=0).may(who, Action.SHELL, "b1").allowed
    assert Policy([Rule(groups=["cluster:A"])]).check(who, "shell", "b1").allowed
    assert not Policy([Rule(users=["root"], groups=["root"])]).check(who, "shell", "b1").allowed


def test_b_waits_for_a_to_take_its_messages() -> None:
    """At most MAX_OUTSTANDING calls in flight: the rest waits on B, in order."""
    clock = task.Clock()
    pending: list[defer.Deferred[object]] = []

    class Link:
        def call(self, uri: str, *args: object, timeout: float | None = None) -> defer.Deferred[object]:
            d: defer.Deferred[object] = defer.Deferred()
            pending.append(d)
            return d

    sink = RouterSink(Link(), "uri", clock.seconds)  # type: ignore[arg-type]
    sink.output(1, b"y" * (20 * MAX_OUTPUT))
    assert len(pending) == serve.MAX_OUTSTANDING
    pending[0].callback(None)
    assert len(pending) == serve.MAX_OUTSTANDING + 1


def test_a_watches_a_session_b_holds_and_leaving_does_not_end_it() -> None:
    site = Site()
    sink = OperatorSink()
    view = site.relays.attach(ALICE, "s1", "watch", sink).result
    assert view is not None and (view.role, view.worker, view.session_id) == ("watch", "b1", "s1")
    site.views[-1].sink.output(1, b"tick")
    assert sink.out[-1] == ("output", b"tick")
    # A watcher's detach: it leaves, B says so, and both ends let go of their procedures.
    view.detach()
    assert site.views[-1].got[-1] == ("close", None)
    assert sink.out[-1] == ("exit", ExitStatus(reason="left the session"))
    assert not [uri for uri in site.router.procedures if ".session." in uri]
    # A gone while it watches: B's viewer goes, the session is not ended.
    view = site.relays.attach(ALICE, "s1", "watch", OperatorSink()).result
    del site.router.procedures[session_uri(view.token, "out")]
    site.views[-1].sink.output(1, b"more")
    assert all(kind != "end" for kind, _ in site.views[-1].got)
    assert not site.served.served
    assert site.relays.attach(ALICE, "nope", "watch", OperatorSink()).result is None
    # Its holder known (the shared index's row): only that master is asked.
    watched = len(site.views)
    assert site.relays.attach(ALICE, "s1", "watch", OperatorSink(), holder="C").result is None
    assert len(site.views) == watched  # B was not asked
    view = site.relays.attach(ALICE, "s1", "watch", OperatorSink(), holder="B").result
    assert view is not None and view.session_id == "s1"


def test_a_worker_whose_procedures_another_client_holds_is_not_routed_to_it() -> None:
    """C squats b9's procedures before B registers them: B lists b9 as not registered, so A does not call them."""
    site = Site()
    b = link_of("B2", site.clock, ("b9",))
    b._joined(site.router.session(authid="B2"), None)
    squatter = site.router.session(authid="C")
    called: list[object] = []
    squatter.register(lambda *args: called.append(args), worker_uri("b9", "open"))
    squatter.register(lambda *args: called.append(args), worker_uri("b9"))
    b.sync(["b9"], 0.0)  # refused: the router holds them for C
    assert not b.registered("b9")
    d = site.relays.open(ALICE, OpenRequest(worker="b9"), OperatorSink())
    site.clock.advance(2)
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure, Failure) and isinstance(failure.value, Refused)
    assert "another router client holds its name on the router" in failure.value.message
    assert called == []


def test_a_worker_name_two_other_masters_hold_is_never_routed_to_one_of_them() -> None:
    site = Site()
    c = link_of("C", site.clock, ("b1",))
    c._joined(site.router.session(authid="C"), None)
    with pytest.raises(Refused) as refused:
        site.routed()
    assert "worker b1 is attached to 2 masters: B, C; slaveshell does not pick one" in refused.value.message
    assert not site.views


class Trail:
    """B's audit trail as its approvals write it (AuditTrail.approval)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def approval(self, kind: str, worker: str, who: Identity, detail: str, record_id: str | None = None) -> None:
        self.events.append((kind, who.user, detail))


BOB = Identity(2000, 2000, 2, "bob", frozenset({"bob", "ops"}))


class FourEyesSite(Site):
    """B's b1 is a four-eyes worker for cluster:A/alice: its open waits for B's moderators (its own Approvals)."""

    def __init__(self) -> None:
        super().__init__(Policy([Rule(users=["cluster:A/alice"], moderated_by=["ops"]), Rule(users=["bob"])]))
        self.trail = Trail()
        self.approvals = Approvals(lambda: self.policy, lambda: self.clock, lambda: self.trail, self.refuse)
        self.served._opener = self.open_moderated  # type: ignore[assignment]
        self.records: list[tuple[str, str, str | None, str]] = []
        self.relays.record = lambda who, worker, record_id, detail: self.records.append(
            (who.user, worker, record_id, detail))

    @staticmethod
    def refuse(who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError:
        return OperatorError(kind, message)

    @defer.inlineCallbacks
    def open_moderated(self, who: Identity, request: OpenRequest, sink: RouterSink) -> Any:
        try:
            yield self.approvals.ask(who, request.worker, Kind.COMMAND, str(request.command), None, ("ops",),
                                     sink.waiting, [sink.on_disconnect])
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        view = FakeView(who, sink)
        self.views.append(view)
        return view

    def ticks(self, seconds: int, b: bool = True) -> None:
        for _ in range(seconds):
            self.clock.advance(1)
            if b:
                self.served.tick(self.clock.seconds())
            self.relays.tick(self.clock.seconds())

    def asked(self, sink: OperatorSink) -> defer.Deferred[Any]:
        d = self.relays.open(ALICE, OpenRequest(worker="b1", command="make test"), sink)
        assert not d.called
        return d


def test_a_routed_command_on_a_four_eyes_worker_waits_for_bs_moderator_as_long_as_b_is_there() -> None:
    site = FourEyesSite()
    sink = OperatorSink()
    d = site.asked(sink)
    ((request_id, pending),) = site.approvals.pending.items()
    assert pending.request.who.user == "cluster:A/alice" and pending.request.what == "make test"
    ((kind, text),) = sink.out  # B's waiting line, shown on A before B's answer
    assert kind == "waiting" and text.startswith(f"worker b1 is moderated: request {request_id} waits for a "
                                                 "moderator's approval")
    site.ticks(120)  # longer than a worker's open (30 s): B says it is there
    assert not d.called and site.approvals.pending
    assert site.approvals.approve(BOB, request_id).endswith("approved: it starts now")
    view = d.result
    assert view.session_id == "s1" and site.views[0].who.user == "cluster:A/alice"
    assert [(k, who) for k, who, _ in site.trail.events] == [("approval-asked", "cluster:A/alice"),
                                                            ("approved", "bob")]
    assert site.records == [("alice", "b1", "s1", "open of a command routed to master B: session s1 opened there")]


def test_the_operator_leaving_a_withdraws_the_request_on_b() -> None:
    site = FourEyesSite()
    sink = OperatorSink()
    d = site.asked(sink)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    for leave in sink.disconnects:
        leave()
    site.ticks(int(serve.PING) + 1)
    assert not site.approvals.pending
    assert [k for k, _, _ in site.trail.events] == ["approval-asked", "approval-withdrawn"]
    assert failures and isinstance(failures[0].value, Refused) and failures[0].value.kind == "stopped"
    assert not site.served.served and not [uri for uri in site.router.procedures if ".session." in uri]
    assert site.records == [("alice", "b1", None, "open of a command routed to master B: refused (stopped)")]


def test_a_gives_up_a_waiting_open_when_b_falls_silent() -> None:
    site = FourEyesSite()
    sink = OperatorSink()
    d = site.asked(sink)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    site.ticks(int(serve.DEAD) + 2, b=False)  # B says nothing more (gone without the router noticing yet)
    assert failures, "A still waits"
    assert failures[0].value.message == "master B, which holds b1, stopped answering while the session opened"


def test_b_bounds_the_requests_of_one_calling_master_whoever_it_vouches_for() -> None:
    site = FourEyesSite()
    approvals = site.approvals
    approvals.limits = ApprovalLimits(per_operator=4, total=32, per_master=8)
    for n in range(8):
        approvals.ask(ClusterIdentity.vouched("C", f"u{n}", ()), "b1", Kind.COMMAND, "x", None, ("ops",),
                      lambda text: None, [])
    with pytest.raises(OperatorError) as refused:
        approvals.ask(ClusterIdentity.vouched("C", "u9", ()), "b1", Kind.COMMAND, "x", None, ("ops",),
                      lambda text: None, [])
    assert refused.value.message.startswith("approvals refused: the operators of master C already wait for 8 "
                                            "approvals (this master's limit per calling master)")
    # Another master's operators and this master's own still may ask.
    approvals.ask(ClusterIdentity.vouched("A", "alice", ()), "b1", Kind.COMMAND, "x", None, ("ops",),
                  lambda text: None, [])
    approvals.ask(BOB, "b1", Kind.COMMAND, "x", None, ("ops",), lambda text: None, [])
    assert len(approvals.pending) == 10
    approvals.stop()


def test_a_records_the_refusal_of_a_routed_open_without_bs_line() -> None:
    site = FourEyesSite()
    site.policy = Policy([Rule(users=["bob"])])  # nothing for cluster:A/alice
    site.served._opener = site.open  # type: ignore[assignment]
    with pytest.raises(Refused):
        site.routed()
    assert site.records == [("alice", "b1", None, "open of a login shell routed to master B: refused "
                                                  "(permission denied)")]


def test_b_refuses_a_routed_held_build_with_where_it_is_held() -> None:
    """`buildbot-shell --build N b1` on A for a build B holds: B's refusal names the worker, B and its Buildbot
    name; a build it does not hold (or whose worker the operator has no right on) only says that."""
    from types import SimpleNamespace

    from master_side.holds.step import Hold, Holds
    from master_side.operators.api import OperatorAPI

    class Registry:
        limits = None

    refused: list[str] = []
    trail = SimpleNamespace(master_name="host-b:/srv/B/master",
                            refused=lambda who, worker, message: refused.append(message))
    holds = Holds()
    holds.add(Hold(7, "holder", 3, "b1", "holder/build"))
    holds.add(Hold(8, "holder", 4, "z1", "holder/build"))
    api = OperatorAPI(Registry(), None, None, lambda: trail, lambda: None, holds)  # type: ignore[arg-type]
    api.policy = Policy([Rule(users=["cluster:A/alice"], workers=["b*"])])
    api.cluster = SimpleNamespace(config=SimpleNamespace(master="B"))  # type: ignore[assignment]
    who = ClusterIdentity.vouched("A", "alice", ())
    lines = []
    for build in (7, 8, 9):
        d = api.open_for_master(who, OpenRequest(worker="b1", build=build), OperatorSink())  # type: ignore[arg-type]
        failure = d.result
        d.addErrback(lambda _: None)
        assert isinstance(failure.value, Refused) and failure.value.kind == "unavailable"
        lines.append(failure.value.message)
    assert lines[0] == ("build 7 is held on worker b1 on master B (host-b:/srv/B/master): a session in a held build "
                        "(--build) is not routed between masters (its release and extension stay there): open it on "
                        "master B")
    for build, line in zip((8, 9), lines[1:], strict=True):
        assert line == (f"build {build} is not held for a shell on master B (host-b:/srv/B/master); a session in a "
                        "held build (--build) is not routed between masters: open it on the master that runs the "
                        "build")
    assert refused == lines  # audited on B


def test_the_owner_detaches_a_routed_session_and_resumes_it_through_a() -> None:
    """~d on A: B keeps the session without its owner (its View's detach), both ends let go of their procedures,
    A's operator leaving afterwards ends nothing, and B's later messages or A going away end nothing; the operator
    resumes it through A with attach."""
    site = Site()
    sink = OperatorSink()
    view = site.routed(sink)
    view.input(b"x")
    view.detach()
    b_view = site.views[0]
    assert b_view.got == [("input", b"x"), ("detach", None)]
    assert not site.served.served and not site.relays.views
    assert not [uri for uri in site.router.procedures if ".session." in uri]
    for leave in sink.disconnects:  # the client goes once it is told it detached
        leave()
    b_view.sink.output(1, b"after")  # the session goes on on B; nothing goes to A
    site.clock.advance(serve.DEAD + 1)
    site.served.tick(site.clock.seconds())
    site.relays.tick(site.clock.seconds())
    assert [kind for kind, _ in b_view.got] == ["input", "detach"]  # never closed nor ended
    with pytest.raises(ProtocolError):
        view.input(b"late")
    again = OperatorSink()
    resumed = site.relays.attach(ALICE, "s1", "attach", again).result
    assert resumed is not None and resumed.session_id == "s1"
    assert site.views[-1].who.user == "cluster:A/alice"


def test_a_worker_the_shared_database_does_not_show_on_its_master_is_refused_never_routed() -> None:
    from master_side.cluster.verify import SiteDatabase, checked

    site = Site()
    b_listing = site.b._listing
    # B says it is master #2 and holds b1; the shared database has b1 connected to master #1 (A) only.
    site.b._listing = lambda: Listing("B", "host:/srv/B", 2, b_listing().workers)
    database = SiteDatabase({1: ("host:/srv/A", True), 2: ("host:/srv/B", True)}, {"b1": frozenset({1})})
    site.a.check = lambda listings: defer.succeed(checked(listings, database, 1))
    with pytest.raises(Refused) as refused:
        site.routed()
    assert refused.value.message == ("master B says it holds b1, but the shared database has b1 connected to "
                                     "host:/srv/A: not routed")
    assert not site.views and not [uri for uri in site.router.procedures if ".session." in uri]
    # Once the database has it there, it is routed.
    database = SiteDatabase(database.masters, {"b1": frozenset({2})})
    site.clock.advance(1.0)  # past SITE_FRESH: the routing decision asks again
    assert site.routed() is not None and site.views


def test_the_owners_lost_connection_detaches_a_routed_session_on_b() -> None:
    """The operator's connection to A lost (a killed client, a closed page): B keeps the owner's session detached,
    to be resumed within its detach grace, as a local session is (a fleet run's part: test_cluster_routed_runs)."""
    site = Site()
    sink = OperatorSink()
    view = site.routed(sink)
    for leave in sink.disconnects:
        leave()
    b_view = site.views[0]
    assert b_view.got == [("detach", None)] and view.detached
    assert not site.served.served and not [uri for uri in site.router.procedures if ".session." in uri]


def test_an_open_whose_operator_left_is_not_held_past_dead_by_a_b_that_never_answers() -> None:
    """The operator leaves while B's open waits; B never answers (its withdrawal would): A cancels the call DEAD
    seconds later (the router tells B), so a silent master cannot make A hold opens by the thousand."""
    site = FourEyesSite()
    sink = OperatorSink()
    d = site.asked(sink)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    for leave in sink.disconnects:
        leave()
    site.ticks(int(serve.DEAD) - 1, b=False)
    assert not failures and site.approvals.pending  # B (silent here) still holds its request
    site.ticks(2, b=False)
    assert failures and not site.approvals.pending  # the call cancelled: B is told (its request withdrawn)
    assert [k for k, _, _ in site.trail.events] == ["approval-asked", "approval-withdrawn"]


def test_a_records_a_routed_open_before_it_serves_what_b_sent_first() -> None:
    """B's output that came before its answer (a notice) reaches the operator only after A's `routed` event."""
    site = Site()
    order: list[str] = []
    site.relays.record = lambda who, worker, record_id, detail: order.append(f"record {detail}")

    class Sink(OperatorSink):
        def output(self, stream: int, data: bytes) -> None:
            order.append(f"output {data.decode()}")

    view = site.routed(Sink())
    assert view is not None
    assert order == ["record open of a login shell routed to master B: session s1 opened there", "output hello "]


def test_a_session_that_b_opened_and_that_ended_before_its_answer_is_recorded_so_on_a_and_not_opened_again() -> None:
    """B opens the session, and it ends before B's answer reaches A (a quick command): A's `routed` event names
    B's session and says it ended, and A's open gives the (ended) session, so no caller opens it again here."""
    site = Site()
    records: list[tuple[str | None, str]] = []
    site.relays.record = lambda who, worker, record_id, detail: records.append((record_id, detail))

    def quick(who: Identity, request: OpenRequest, sink: RouterSink) -> FakeView:
        view = Site.open(site, who, request, sink)
        sink.exit(ExitStatus(code=3))
        return view

    site.served._opener = quick  # type: ignore[assignment]
    sink = OperatorSink()
    view = site.routed(sink)
    assert view is not None and view.ended and view.session_id == "s1"
    assert records == [("s1", "open of a login shell routed to master B: session s1 opened there, then it ended "
                              "there before its answer came (exit code 3)")]
    assert sink.out == [("output", b"hello "), ("exit", ExitStatus(code=3))]


def test_a_session_b_opened_after_the_operator_left_is_recorded_with_its_id_and_refused_stopped() -> None:
    site = Site()
    records: list[tuple[str | None, str]] = []
    site.relays.record = lambda who, worker, record_id, detail: records.append((record_id, detail))
    answer: defer.Deferred[object] = defer.Deferred()
    opened: list[RouterSink] = []

    def slow(who: Identity, request: OpenRequest, sink: RouterSink) -> defer.Deferred[object]:
        opened.append(sink)
        return answer

    site.served._opener = slow  # type: ignore[assignment]
    sink = OperatorSink()
    d = site.relays.open(ALICE, OpenRequest(worker="b1"), sink)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    for leave in sink.disconnects:
        leave()  # the operator leaves while B opens
    answer.callback(FakeView(ALICE, opened[0]))
    site.clock.advance(0)
    assert failures and isinstance(failures[0].value, Refused) and failures[0].value.kind == "stopped"
    assert records == [("s1", "open of a login shell routed to master B: session s1 opened there, then the "
                              "operator had left before its answer came (that master ends it)")]


def test_b_says_whether_its_session_is_four_eyes_and_a_keeps_it_as_bs_word() -> None:
    """B's answer names a four-eyes session's groups and whether the view moderates it (for A's pages to show);
    a plain session's says null; a watcher B admitted as a moderator is told so."""
    site = Site(Policy([Rule(users=["cluster:A/alice"])]))
    plain = site.routed()
    assert plain.moderated_by is None and plain.moderator is False
    site.moderated_by = ("leads", "web:leads", "1234")
    four_eyes = site.routed()
    assert four_eyes.moderated_by == ("leads", "web:leads", "1234") and four_eyes.moderator is False
    site.moderator = True
    watched = site.relays.attach(ALICE, "s1", "watch", OperatorSink()).result
    assert watched.role == "watch" and watched.moderator is True and watched.moderated_by == four_eyes.moderated_by


def test_a_refuses_bs_answer_when_its_four_eyes_rule_is_malformed_and_b_cuts_an_honest_long_one() -> None:
    site = Site()
    site.moderated_by = ("leads\x1b]0;owned\x07",)  # B passes on what its View says: a hostile B's text
    with pytest.raises(Refused) as refused:
        site.routed()
    assert "malformed answer" in refused.value.message and "moderated_by must be null or a list" in \
        refused.value.message
    assert site.views[0].got[-1][0] in ("close", "end")  # A ended what B opened
    # An honest B with a long rule sends the first MAX_MODERATED_BY groups, each cut at MAX_NAME characters.
    site.moderated_by = tuple(f"g{i}" + "x" * 200 for i in range(MAX_MODERATED_BY + 5))
    view = site.routed()
    assert view.moderated_by is not None and len(view.moderated_by) == MAX_MODERATED_BY
    assert all(len(g) == MAX_NAME for g in view.moderated_by)
    for bad in ([], "leads", ["x" * (MAX_NAME + 1)], [""], [1], ["g"] * (MAX_MODERATED_BY + 1), {"a": 1}):
        with pytest.raises(ProtocolError):
            check_moderated_by(bad)
    assert check_moderated_by(None) is None and check_moderated_by(["web:leads"]) == ("web:leads",)


def test_a_b_that_floods_the_operator_with_waiting_lines_or_breaks_the_protocol_is_audited_and_cut_off() -> None:
    """B's lines of what a session waits for reach the operator up to MAX_WAITING_LINES; past them, and at any
    breach of the protocol, the session ends on A with a line naming B, and A's audit has the event (how, never
    what B sent)."""
    for flood in (True, False):
        site = Site()
        records: list[tuple[str | None, str]] = []
        site.relays.record = lambda who, worker, record_id, detail, records=records: records.append((record_id, detail))
        sink = OperatorSink()
        view = site.routed(sink)
        out = session_uri(view.token, "out")
        if flood:
            for _ in range(MAX_WAITING_LINES + 5):
                site.b.call(out, [view._expected, "waiting", "waiting for \x1b[2Jnothing"])
            waited = [text for kind, text in sink.out if kind == "waiting"]
            assert len(waited) == MAX_WAITING_LINES
            how = "too many waiting lines"
        else:
            site.b.call(out, [view._expected, "output", "not bytes", b"SECRET"])
            how = "a malformed message"
        assert view.ended and sink.out[-1][0] == "exit"
        status = sink.out[-1][1]
        assert isinstance(status, ExitStatus) and "master B broke the protocol" in (status.reason or "")
        assert records[-1] == ("s1", f"routed session s1 ended here: master B broke the protocol ({how})")
        assert not any("SECRET" in detail for _, detail in records)


def test_a_routed_sessions_reader_gone_closes_the_commands_stdout_on_b_or_closes_an_older_bs_session() -> None:
    """`buildbot-shell -T b1 -- yes | head -1` through A: B's answer says it takes stdout_closed, and its View
    gets it (the worker then closes the command's stdout, as for a local session); a B whose answer does not say so
    has its session closed, as before."""
    site = Site()
    view = site.routed()
    assert view.stdout_closes
    view.stdout_closed()
    assert site.views[0].got == [("stdout_closed", None)]
    older = Site()
    old_view = older.routed()
    old_view.stdout_closes = False  # as from a B whose answer has no `stdout_closed`
    old_view.stdout_closed()
    assert older.views[0].got == [("close", None)]
