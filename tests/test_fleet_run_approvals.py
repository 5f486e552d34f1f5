"""A fleet run's four-eyes parts (master_side.fleet.run.FleetRun with an approver): the approval is asked before
the part takes a place in the batch or one of the master's slots, so that the other workers run meanwhile; an
approved part opens with its approval; a denied one is listed refused; Ctrl-C withdraws what is still asked.
Against real processes: tests/e2e/test_approvals_e2e.py."""

from __future__ import annotations

from twisted.internet import defer, task

from master_side.fleet.run import Command, FleetRun, Progress, RunSink, Slots
from master_side.operators.approvals import ApprovalRequest, Approved, Kind
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.fleet.outcome import Outcome, State
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
