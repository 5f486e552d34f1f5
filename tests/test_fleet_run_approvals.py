"""A fleet run's four-eyes parts (master_side.fleet.run.FleetRun with an approver): the approval is asked before
the part takes a place in the batch or one of the master's slots, so that the other workers run meanwhile; an
approved part opens with its approval; a denied one is listed refused; Ctrl-C withdraws what is still asked.
Against real processes: tests/e2e/test_approvals_e2e.py."""

from __future__ import annotations

from twisted.internet import defer, task

from master_side.fleet.run import Command, FleetRun, Progress, RunSink, Slots
from master_side.operators.approvals import ApprovalLimits, ApprovalRequest, Approvals, Approved, Kind
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.fleet.outcome import Outcome, State
from slaveshell.policy import Policy, Rule
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
BOB = Identity(1001, 1001, 2, "bob", frozenset())


class Part:
    """A part's session and view as the run holds them."""

    def __init__(self, worker: str) -> None:
        self.id = f"s-{worker}"
        self.closed: str | None = None

    @property
    def session(self) -> Part:
        return self

    def close(self, reason: str) -> None:
        self.closed = reason

    def input(self, data: bytes) -> None:
        pass

    def eof(self) -> None:
        pass

    def ack(self, nbytes: int) -> None:
        pass


class Fleet:
    def __init__(self) -> None:
        self.asked: dict[str, defer.Deferred[Approved | None]] = {}
        self.opened: list[tuple[str, Approved | None]] = []
        self.sinks: dict[str, RunSink] = {}
        self.outcomes: list[Outcome] = []
        self.told: list[Progress] = []

    def approver(self, who: Identity, request: OpenRequest, sink: RunSink, run_id: str
                 ) -> defer.Deferred[Approved | None]:
        d: defer.Deferred[Approved | None] = defer.Deferred()

        def withdrawn() -> None:
            if not d.called:
                d.errback(OperatorError(ErrorKind.STOPPED, "withdrawn"))

        sink.on_withdraw(withdrawn)
        self.asked[request.worker] = d
        return d

    def opener(self, who: Identity, request: OpenRequest, sink: RunSink, run_id: str,
               approved: Approved | None) -> defer.Deferred[Part]:
        self.opened.append((request.worker, approved))
        self.sinks[request.worker] = sink
        return defer.succeed(Part(request.worker))

    def progress(self, event: Progress) -> None:
        self.told.append(event)

    def finished(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes

    def end(self, worker: str, code: int = 0) -> None:
        self.sinks[worker].exit(ExitStatus(code=code))


def approval(worker: str) -> Approved:
    request = ApprovalRequest("r-" + worker, ALICE, worker, Kind.RUN, "what", None, ("leads",), 0.0, 900.0, "run1")
    return Approved(request, BOB)


def run(fleet: Fleet, targets: list[str], moderated: list[str], batch: int = 1, slots: Slots | None = None
        ) -> FleetRun:
    r = FleetRun("run1", ALICE, targets, Command("touch x"), batch, None, fleet.opener, task.Clock(), fleet,
                 slots, fleet.approver, moderated, asking=batch)
    r.start()
    return r


def test_with_a_batch_of_one_the_others_run_while_the_approval_is_asked() -> None:
    fleet = Fleet()
    slots = Slots(total=1, per_operator=1)
    r = run(fleet, ["m1", "m2", "m3"], ["m1"], slots=slots)
    assert list(fleet.asked) == ["m1"] and fleet.opened == [("m2", None)]
    assert slots.in_use() == 1  # m2's: the asked approval holds no slot
    fleet.end("m2")
    assert [w for w, _ in fleet.opened] == ["m2", "m3"]
    fleet.asked["m1"].callback(approval("m1"))
    assert [w for w, _ in fleet.opened] == ["m2", "m3"]  # the batch is full: m1 starts next
    fleet.end("m3")
    assert fleet.opened[-1] == ("m1", approval("m1"))  # opened with its approval
    fleet.end("m1")
    assert r.finished and [(o.worker, o.state) for o in fleet.outcomes] == [
        ("m1", State.OK), ("m2", State.OK), ("m3", State.OK)]
    assert slots.in_use() == 0


def test_a_denied_part_is_refused_and_ctrl_c_withdraws_what_is_asked() -> None:
    fleet = Fleet()
    r = run(fleet, ["m1", "m2", "w3"], ["m1", "m2"], batch=2)
    assert list(fleet.asked) == ["m1", "m2"] and fleet.opened == [("w3", None)]
    fleet.asked["m1"].errback(OperatorError(ErrorKind.DENIED, "request r-m1 denied by moderator bob"))
    r.interrupt()
    assert fleet.asked["m2"].called and not r.finished  # w3 still ends
    fleet.end("w3", 130)
    assert r.finished
    got = {o.worker: o for o in fleet.outcomes}
    assert got["m1"].state is State.REFUSED and got["m1"].reason == "request r-m1 denied by moderator bob"
    assert got["m2"].state is State.NOT_STARTED and got["w3"].state is State.INTERRUPTED
    assert [w for w, _ in fleet.opened] == ["w3"]


def test_a_part_approved_then_interrupted_before_it_opened_is_told_unused() -> None:
    fleet = Fleet()
    unused: list[tuple[str, str]] = []
    r = FleetRun("run1", ALICE, ["m1", "m2"], Command("touch x"), 1, None, fleet.opener, task.Clock(), fleet,
                 None, fleet.approver, ["m1"], asking=1, unused=lambda a, why: unused.append((a.request.id, why)))
    r.start()
    assert fleet.opened == [("m2", None)]
    fleet.asked["m1"].callback(approval("m1"))  # approved: waits for m2's place in the batch
    r.interrupt()
    assert unused == [("r-m1", "the run was interrupted before the part opened")]
    fleet.end("m2", 130)
    assert r.finished and {o.worker: o.state for o in fleet.outcomes}["m1"] is State.NOT_STARTED
    assert [w for w, _ in fleet.opened] == ["m2"] and len(unused) == 1


class Record:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def approval(self, kind: str, worker: str, who: Identity, detail: str, record_id: str | None = None) -> None:
        self.events.append((kind, who.user, detail))


def test_a_runs_parts_wait_for_a_free_approval_place_behind_the_operators_own_request() -> None:
    """alice already waits for a moderator on her own command; her run over three four-eyes workers asks what the
    bound per operator leaves, and each other part waits (told so), not refused, until a place is free."""
    clock = task.Clock()
    record = Record()
    refused: list[str] = []

    def refuse(who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError:
        refused.append(message)
        return OperatorError(kind, message)

    lead = Identity(1002, 1002, 3, "lea", frozenset({"leads"}))
    policy = Policy([Rule(groups=["leads"], rights=["watch"])])
    approvals = Approvals(lambda: policy, lambda: clock, lambda: record, refuse)
    approvals.limits = ApprovalLimits(per_operator=2)
    told: list[str] = []
    own = approvals.ask(ALICE, "other", Kind.COMMAND, "command: make deploy", None, ("leads",), told.append, [])

    fleet = Fleet()

    def approver(who: Identity, request: OpenRequest, sink: RunSink, run_id: str) -> defer.Deferred[Approved]:
        return approvals.ask(who, request.worker, Kind.RUN, f"fleet run {run_id}", None, ("leads",), sink.waiting,
                             [sink.on_withdraw], run_id, place=True)

    r = FleetRun("run1", ALICE, ["m1", "m2", "m3"], Command("true"), 3, None, fleet.opener, clock, fleet, None,
                 approver, ["m1", "m2", "m3"], asking=2)
    r.start()
    assert refused == [] and len(approvals.pending) == 2 and len(approvals.queued) == 1
    notes = {e.worker: e.note for e in fleet.told if e.note}
    assert "waits for a free place (alice already waits for 2 approvals" in str(notes["m2"])

    def approve_all() -> None:
        for request_id, pending in list(approvals.pending.items()):
            if pending.request.run_id == "run1":
                approvals.approve(lead, request_id)

    approve_all()  # m1 asked; m2 waits behind alice's command, m3 not asked yet (two at once)
    assert [w for w, _ in fleet.opened] == ["m1"] and refused == []
    own.addErrback(lambda f: None)
    approvals._withdrawn(next(iter(approvals.pending)))  # alice's command: Ctrl-C
    approve_all()
    approve_all()
    assert sorted(w for w, _ in fleet.opened) == ["m1", "m2", "m3"] and refused == []
    for worker in ("m1", "m2", "m3"):
        fleet.end(worker)
    assert r.finished and all(o.state is State.OK for o in fleet.outcomes)


def test_a_part_that_waited_for_a_place_as_long_as_an_approval_waits_ends_with_the_masters_line() -> None:
    """alice's command holds her one place; run1's part on m1 (t=0) and run2's on m2 (t=10) wait for it. At t=20
    her command is withdrawn: run1's part is asked in its place, for what remains of its wait: unapproved, it ends
    at t=60, its run listing it as an error with the master's line, and the audit index says it expired. run2's
    part, asked then in its place, has the 10 s it has left: it ends at t=70, its wait counted from its start."""
    clock = task.Clock()
    record = Record()
    approvals = Approvals(lambda: Policy([Rule(groups=("leads",), rights=("watch",))]), lambda: clock, lambda: record,
                          lambda who, worker, kind, message: OperatorError(kind, message))
    approvals.limits = ApprovalLimits(per_operator=1, wait=60)
    own = approvals.ask(ALICE, "other", Kind.COMMAND, "command: make deploy", None, ("leads",), lambda text: None,
                        [])
    own.addErrback(lambda f: None)

    def approver(who: Identity, request: OpenRequest, sink: RunSink, run_id: str) -> defer.Deferred[Approved]:
        return approvals.ask(who, request.worker, Kind.RUN, f"fleet run {run_id}", None, ("leads",), sink.waiting,
                             [sink.on_withdraw], run_id, place=True)

    fleets = [Fleet(), Fleet()]
    runs = []
    for n, (fleet, worker) in enumerate(zip(fleets, ["m1", "m2"], strict=True)):
        runs.append(FleetRun(f"run{n + 1}", ALICE, [worker], Command("true"), 1, None, fleet.opener, clock, fleet,
                             None, approver, [worker], asking=1))
        runs[-1].start()
        clock.advance(10)
    assert len(approvals.queued) == 2
    approvals._withdrawn(next(iter(approvals.pending)))  # alice's command: Ctrl-C
    assert [a.request.run_id for a in approvals.pending.values()] == ["run1"]
    clock.advance(39)
    assert not runs[0].finished and not runs[1].finished
    clock.advance(1)
    assert runs[0].finished and not runs[1].finished
    (outcome,) = fleets[0].outcomes
    assert outcome.state is State.ERROR and outcome.reason is not None
    assert outcome.reason.endswith(": no moderator approved it within 60 s (the master's limit, 20 s of it spent "
                                   "waiting for a free place to be asked); worker m1 is moderated (moderated_by: "
                                   "leads)")
    kind, user, detail = record.events[-2]
    assert (kind, user) == ("approval-expired", "alice") and detail.endswith(": " + outcome.reason)
    assert record.events[-1][0] == "approval-asked" and [a.request.run_id for a in approvals.pending.values()] == [
        "run2"]
    clock.advance(9)
    assert not runs[1].finished
    clock.advance(1)
    (outcome,) = fleets[1].outcomes
    assert runs[1].finished and outcome.state is State.ERROR and outcome.reason is not None
    assert "no moderator approved it within 60 s (the master's limit, 50 s of it spent waiting" in outcome.reason
    assert fleets[0].opened == fleets[1].opened == [] and not approvals.queued and not approvals.pending


def test_an_approved_part_whose_open_is_refused_after_its_approval_is_audited_unused() -> None:
    """The policy changed while the approved part waited for its place (a reconfig took the run right away): the
    open is refused, audited, and the approval is said not used."""
    from types import SimpleNamespace

    from master_side.holds.step import Holds
    from master_side.operators.api import OperatorAPI

    events: list[tuple[str, str, str]] = []
    refused: list[str] = []
    trail = SimpleNamespace(master_name="host:/srv/master",
                            refused=lambda who, worker, message: refused.append(message),
                            approval=lambda kind, worker, who, detail, record_id=None: events.append(
                                (kind, who.user, detail)))
    registry = SimpleNamespace(limits=None)
    api = OperatorAPI(registry, None, None, lambda: trail, lambda: None, Holds())  # type: ignore[arg-type]
    api.policy = Policy([Rule(users=["bob"], rights=["watch"])])  # alice's run right is gone
    fleet = Fleet()
    sink = RunSink(FleetRun("run1", ALICE, ["m1"], Command("touch x"), 1, None, fleet.opener, task.Clock(), fleet),
                   "m1")
    d = api.open(ALICE, OpenRequest(worker="m1", pty=False, command="touch x"), sink, "run1", "fleet run run1",
                 None, approval("m1"))
    failures: list = []
    d.addErrback(failures.append)
    assert failures and failures[0].value.kind is ErrorKind.DENIED
    assert events == [("approval-unused", "alice", "request r-m1 of alice on m1, run: approved by bob, not used: "
                                                   "the session did not open: " + failures[0].value.message)]
