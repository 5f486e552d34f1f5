"""`FleetRun`: one command on many workers, each in one ordinary audited non-interactive session opened through
`OperatorAPI.open` (the policy's `run` right, the owner's consent and allowed_users, recorded before served,
the session's limits and credit windows), in the order and batches the sans-I/O scheduler decides
(slaveshell.fleet.batch.Scheduler).

A run's end of each session is a `RunSink`: the session's output kept bounded (slaveshell.fleet.outcome.Output;
the transcript keeps all of it) and its credit returned at once, stdin given (a script) or closed, the exit status
handed to the scheduler. Decisions to end a session (the run's `--timeout`, the operator's Ctrl-C) close it as a
session's close does: hangup, then TERM, then KILL. What happens is told to a `RunWatcher` (the door: a live
table, plain lines) as it happens."""

from __future__ import annotations

import collections
import enum
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.operators.approvals import Approved
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.worker_link import Undo, subscribe
from slaveshell.fleet.batch import Ask, Decision, End, Scheduler, Start
from slaveshell.fleet.outcome import Outcome, Output, State
from slaveshell.fleet.script import SCRIPT_RUNNER, part_text
from slaveshell.plumbing.clock import Clock, DelayedCall
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import MAX_CHUNK, ExitStatus, OpenRequest

log = Logger()


class PartSession(Protocol):
    """A run part's session as the run ends it: its id, and close (MasterSession; a routed session's, on the
    master that holds the worker: master_side.operators.routed.RoutedPart)."""

    @property
    def id(self) -> str: ...
    def close(self, reason: str) -> None: ...


class PartView(Protocol):
    """A run part's view of its session (the operators' API's View, or a routed session's RoutedPart)."""

    @property
    def session(self) -> PartSession: ...
    def input(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def ack(self, nbytes: int) -> None: ...


class Opener(Protocol):
    """What a run opens its sessions with (OperatorAPI.open, for the `run` right and linked to the run; on a
    four-eyes worker with the moderator's approval the run asked for first (`Approver`), else the part waits for
    one there, withdrawn by `RunSink.withdraw`)."""

    def __call__(self, who: Identity, request: OpenRequest, sink: RunSink, run_id: str,
                 approved: Approved | None) -> Awaitable[PartView | None]:
        ...


class Approver(Protocol):
    """What a run asks a four-eyes worker's approval with, before the part takes a place in the batch
    (OperatorAPI.approval: fires the approval, or None when the worker needs none; fails with OperatorError when
    denied, expired, refused, or withdrawn by `RunSink.withdraw`)."""

    def __call__(self, who: Identity, request: OpenRequest, sink: RunSink,
                 run_id: str) -> Awaitable[Approved | None]:
        ...


class Phase(enum.Enum):
    """What a watcher is told of a worker as it happens."""

    STARTING = "starting"
    RUNNING = "running"
    ENDING = "ending"
    DONE = "done"


@dataclass(frozen=True)
class Progress:
    """A worker's state in a run as a live table shows it: the phase, the session, seconds since it started, the
    last line of output (as the worker wrote it: a display escapes it), once done its outcome, and what the master
    says of a part that waits before it starts (`note`: a moderator's approval)."""

    worker: str
    phase: Phase
    session: str | None = None
    elapsed: float = 0.0
    last_line: bytes = b""
    outcome: Outcome | None = None
    note: str | None = None


class RunWatcher(Protocol):
    def progress(self, event: Progress) -> None: ...
    def finished(self, outcomes: list[Outcome]) -> None: ...


def outcome_row(o: Outcome) -> dict[str, object]:
    """A worker's outcome as its row of the audit index's run_workers keeps it (its worker aside)."""
    return {
        "state": o.state.value, "exit_status": o.exit_status,
        "duration": None if o.duration is None else round(o.duration, 3), "session_id": o.session,
        "output_bytes": o.output.size if o.output is not None else None,
        "output_sha256": o.output.digest if o.output is not None else None, "reason": o.reason or None,
    }


class Awaited:
    """A watcher that only waits for the outcomes (`done` fires with them)."""

    def __init__(self) -> None:
        self.done: defer.Deferred[list[Outcome]] = defer.Deferred()

    def progress(self, event: Progress) -> None:
        pass

    def finished(self, outcomes: list[Outcome]) -> None:
        self.done.callback(outcomes)


@dataclass(frozen=True)
class Command:
    """What each worker runs: a command line, or a script (given on the session's stdin to a command that
    keeps it in a private temporary file, runs it and removes it); its environment and directory."""

    command: str
    script: bytes | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    reason: str | None = None


def approval_text(run_id: str, command: Command) -> str:
    """A run's part as its approval request on a four-eyes worker shows it (slaveshell.fleet.script.part_text)."""
    return part_text(run_id, command.command, command.script, command.env, command.cwd)


class RunSink:
    """The run's end of one worker's session (a `ViewerSink`, master_side.operators.terms): output kept bounded
    and acknowledged at once, a script fed within the input window, the exit handed to the run."""

    connection: object

    def __init__(self, run: FleetRun, worker: str) -> None:
        self.run = run
        self.worker = worker
        self.connection = run  # a run's sessions count as one connection's views
        self.output_kept = Output()
        self.view: PartView | None = None
        self.status: ExitStatus | None = None
        self._unacked = 0
        self._script = b""
        self._eof_sent = False
        self._disconnects: list[Callable[[], None]] = []
        self._withdrawn: list[Callable[[], None]] = []  # the run no longer waits for the part to start
        self.withdrawn = False
        self._gone = False

    # -- ViewerSink --------------------------------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self._gone

    def output(self, stream: int, data: bytes) -> None:
        self.output_kept.add(data)
        self._unacked += len(data)
        self._ack()
        self.run.output(self.worker)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self._feed()

    def exit(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self.run.exited(self.worker, status)

    def waiting(self, text: str) -> None:
        self.run.waiting(self.worker, text)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return subscribe(self._disconnects, callback)

    def on_withdraw(self, callback: Callable[[], None]) -> Undo:
        """`callback` once the run stops waiting for this part to start (`withdraw`; at once if it did)."""
        if self.withdrawn:
            callback()
            return lambda: None
        return subscribe(self._withdrawn, callback)

    def withdraw(self) -> None:
        """The run was interrupted before this part started: what it waits for (an approval) is withdrawn."""
        self.withdrawn = True
        callbacks, self._withdrawn = self._withdrawn, []
        for callback in callbacks:
            callback()

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        pass

    # -- the run's side ----------------------------------------------------------------------------

    def bound(self, view: PartView, script: bytes | None) -> None:
        """The session is open: its view, the script to feed (None: stdin closed at once)."""
        self.view = view
        self._ack()
        self._script = script or b""
        self._feed()

    def leave(self) -> None:
        """The run is gone (its operator's connection): the session loses this view."""
        self._gone = True
        callbacks, self._disconnects = self._disconnects, []
        for callback in callbacks:
            callback()

    def _ack(self) -> None:
        if self.view is not None and self._unacked and self.status is None:
            n, self._unacked = self._unacked, 0
            self.view.ack(n)

    def _feed(self) -> None:
        """The next piece of the script, one at a time (each acknowledged before the next: within any input
        window), then end of input."""
        view = self.view
        if view is None or self.status is not None:
            return
        if self._script:
            piece, self._script = self._script[:MAX_CHUNK], self._script[MAX_CHUNK:]
            view.input(piece)
        elif not self._eof_sent:
            self._eof_sent = True
            view.eof()


class Slots:
    """The sessions of fleet runs in flight, bounded in total and per operator: a worker's start waits for a
    place (in the order asked), and gives it back when its session has ended or could not open."""

    def __init__(self, total: int = 128, per_operator: int = 64) -> None:
        self.total = total
        self.per_operator = per_operator
        self.used: dict[tuple[str, int], int] = {}
        self.waiting: collections.deque[tuple[tuple[str, int], Callable[[], None]]] = collections.deque()

    def in_use(self) -> int:
        return sum(self.used.values())

    def _free(self, key: tuple[str, int]) -> bool:
        return self.in_use() < self.total and self.used.get(key, 0) < self.per_operator

    def take(self, key: tuple[str, int], start: Callable[[], None]) -> None:
        """`start()` now, or once a place is free."""
        if self._free(key) and not self.waiting:
            self.used[key] = self.used.get(key, 0) + 1
            start()
        else:
            self.waiting.append((key, start))

    def drop(self, start: Callable[[], None]) -> bool:
        """A start that waits no more (its run was interrupted): True when it was waiting."""
        for item in list(self.waiting):
            if item[1] is start:
                self.waiting.remove(item)
                return True
        return False

    def give_back(self, key: tuple[str, int]) -> None:
        left = self.used.get(key, 0) - 1
        if left > 0:
            self.used[key] = left
        else:
            self.used.pop(key, None)
        for item in list(self.waiting):
            if not self._free(item[0]):
                continue
            self.waiting.remove(item)
            self.used[item[0]] = self.used.get(item[0], 0) + 1
            item[1]()
            if self.in_use() >= self.total:
                return


class FleetRun:
    """One fleet run over `targets` (resolved: connected, opted in, allowed), `batch` at once, each session
    ended after `timeout` seconds. `start()` begins; `interrupt()` is the operator's Ctrl-C; `leave()` the
    operator gone (it interrupts too). The watcher hears of every worker and, once, of the outcomes.

    The workers of `moderated` (four-eyes) have their approval asked through `approver` before they take a place
    in the batch or a slot, at most `asking` at once: the other workers run while a moderator is awaited. An
    approval given to a part that then never opens (the run interrupted while it waited for a place) is told to
    `unused`."""

    def __init__(self, run_id: str, who: Identity, targets: list[str], command: Command, batch: int,
                 timeout: float | None, opener: Opener, clock: Clock, watcher: RunWatcher,
                 slots: Slots | None = None, approver: Approver | None = None,
                 moderated: Collection[str] = (), asking: int = 4,
                 unused: Callable[[Approved, str], None] = lambda approved, why: None) -> None:
        self.id = run_id
        self.slots = slots if slots is not None else Slots()
        self._key = (who.user, who.uid)
        self._waiting: dict[str, Callable[[], None]] = {}  # workers whose start waits for a place
        self._holding: set[str] = set()  # workers holding a place
        self._approvals: dict[str, Approved] = {}  # given, until the part opens with it
        self._unused = unused  # told of an approval given to a part that will not open (audited)
        self.who = who
        self.command = command
        self.approver = approver
        self.scheduler = Scheduler(targets, batch, timeout, moderated if approver is not None else (), asking)
        self.opener = opener
        self.clock = clock
        self.watcher = watcher
        self.sinks: dict[str, RunSink] = {}
        self.started_at: dict[str, float] = {}
        self._timers: dict[str, DelayedCall] = {}
        self._last_told: dict[str, float] = {}
        self.finished = False
        self.on_finished: list[Callable[[list[Outcome]], None]] = []

    def start(self) -> None:
        self._apply(self.scheduler.begin())
        self._check_done()

    def interrupt(self) -> None:
        if not self.finished:
            decisions = self.scheduler.interrupted()
            for worker, start in list(self._waiting.items()):
                if self.slots.drop(start):
                    del self._waiting[worker]
                    decisions += self.scheduler.failed(worker, State.NOT_STARTED, "the run was interrupted first")
            self._apply(decisions)
            for sink in list(self.sinks.values()):
                if sink.view is None and sink.status is None:
                    sink.withdraw()  # a part waiting for a moderator's approval waits no more
            self._not_used("the run was interrupted before the part opened")
            self._check_done()

    def _not_used(self, why: str) -> None:
        """The approvals given to parts that did not open (they waited for a place) and now never will."""
        approvals, self._approvals = self._approvals, {}
        for approved in approvals.values():
            try:
                self._unused(approved, why)
            except Exception:
                log.failure("slaveshell fleet run {run}: an unused approval", run=self.id)

    def leave(self) -> None:
        """The operator's connection is gone: nothing more starts, what runs is ended, and the sessions lose
        their viewer (each then ends as a command whose operator left)."""
        self.interrupt()

    # -- decisions -----------------------------------------------------------------------------------

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Start):
                self._take(decision.worker)
            elif isinstance(decision, End):
                self._end(decision.worker, decision.reason.value)
            elif isinstance(decision, Ask):
                self._ask(decision.worker)

    def _request(self, worker: str) -> OpenRequest:
        c = self.command
        return OpenRequest(worker=worker, command=SCRIPT_RUNNER if c.script is not None else c.command,
                           pty=False, env=dict(c.env), cwd=c.cwd, reason=c.reason)

    def _ask(self, worker: str) -> None:
        """A moderator's approval for `worker`'s part, asked before it takes a place (its sink tells the run what
        it waits for, and withdraws the request if the run is interrupted)."""
        assert self.approver is not None
        sink = self.sinks[worker] = RunSink(self, worker)
        self._tell(worker, Phase.STARTING)
        d = defer.maybeDeferred(self.approver, self.who, self._request(worker), sink, self.id)
        d.addCallbacks(lambda approved: self._approved(worker, approved), lambda f: self._not_opened(worker, f))
        d.addErrback(lambda f: log.failure("slaveshell fleet run {run}: a worker's approval", f, run=self.id))

    def _approved(self, worker: str, approved: Approved | None) -> None:
        if approved is not None:
            self._approvals[worker] = approved
        self._apply(self.scheduler.approved(worker))
        self._check_done()

    def _take(self, worker: str) -> None:
        def start() -> None:
            self._waiting.pop(worker, None)
            self._holding.add(worker)
            self._open(worker)

        self._waiting[worker] = start
        self.slots.take(self._key, start)

    def _give_back(self, worker: str) -> None:
        if worker in self._holding:
            self._holding.discard(worker)
            self.slots.give_back(self._key)

    def _open(self, worker: str) -> None:
        sink = self.sinks.get(worker)
        if sink is None:
            sink = self.sinks[worker] = RunSink(self, worker)
        self._tell(worker, Phase.STARTING)
        d = defer.maybeDeferred(self.opener, self.who, self._request(worker), sink, self.id,
                                self._approvals.pop(worker, None))
        d.addCallbacks(lambda view: self._opened(worker, sink, view), lambda f: self._not_opened(worker, f))
        d.addErrback(lambda f: log.failure("slaveshell fleet run {run}: a worker's session", f, run=self.id))

    def _opened(self, worker: str, sink: RunSink, view: PartView | None) -> None:
        if view is None:
            self._give_back(worker)
            self._apply(self.scheduler.failed(worker, State.ERROR, "the session started without the run"))
            self._check_done()
            return
        now = self.clock.seconds()
        self.started_at[worker] = now
        decisions = self.scheduler.started(worker, now, view.session.id)
        sink.bound(view, self.command.script)
        deadline = self.scheduler.deadline(worker)
        if deadline is not None:
            self._timers[worker] = self.clock.callLater(max(0.0, deadline - now), self._timed_out, worker)
        self._tell(worker, Phase.RUNNING)
        self._apply(decisions)
        if sink.status is not None:  # it ended while it was being bound
            self.exited(worker, sink.status)

    def _not_opened(self, worker: str, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, OperatorError):
            state = {ErrorKind.DENIED: State.REFUSED, ErrorKind.STOPPED: State.NOT_STARTED}.get(error.kind,
                                                                                                 State.ERROR)
            message = error.message
        else:
            log.failure("slaveshell fleet run {run}: opening a session failed", failure, run=self.id)
            state, message = State.ERROR, "the master could not open the session (see its log)"
        self._give_back(worker)
        self._apply(self.scheduler.failed(worker, state, message))
        self._tell(worker, Phase.DONE)
        self._check_done()

    def _timed_out(self, worker: str) -> None:
        self._timers.pop(worker, None)
        self._apply(self.scheduler.timed_out(worker))

    def _end(self, worker: str, why: str) -> None:
        sink = self.sinks.get(worker)
        if sink is not None and sink.view is not None and sink.status is None:
            sink.view.session.close(f"fleet run {why}")
        self._tell(worker, Phase.ENDING)

    # -- the sessions' events ---------------------------------------------------------------------------

    def waiting(self, worker: str, text: str) -> None:
        """The master says why `worker`'s part waits before it starts (a moderator's approval)."""
        self._tell(worker, Phase.STARTING, text)

    def output(self, worker: str) -> None:
        # At most one live line per worker per half second: a flood costs the watcher nothing more.
        now = self.clock.seconds()
        if now - self._last_told.get(worker, 0.0) >= 0.5:
            self._last_told[worker] = now
            self._tell(worker, Phase.RUNNING)

    def exited(self, worker: str, status: ExitStatus) -> None:
        sink = self.sinks[worker]
        if sink.view is None:
            return  # told again once bound (_opened)
        timer = self._timers.pop(worker, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._give_back(worker)
        now = self.clock.seconds()
        if status.code is None and status.signal is None and not self.scheduler.ending(worker):
            decisions = self.scheduler.failed(worker, State.ERROR, status.reason or "the session was lost",
                                              sink.view.session.id)
        else:
            code = status.code if status.code is not None else (128 + status.signal if status.signal else None)
            decisions = self.scheduler.ended(worker, code, sink.output_kept, now)
        self._tell(worker, Phase.DONE)
        self._apply(decisions)
        self._check_done()

    # -- telling -----------------------------------------------------------------------------------------

    def _tell(self, worker: str, phase: Phase, note: str | None = None) -> None:
        sink = self.sinks.get(worker)
        session = sink.view.session.id if sink is not None and sink.view is not None else None
        started = self.started_at.get(worker)
        elapsed = self.clock.seconds() - started if started is not None else 0.0
        outcome = None
        if phase is Phase.DONE:
            outcome = next((o for o in self.scheduler.outcomes() if o.worker == worker), None)
        last = sink.output_kept.last_line if sink is not None else b""
        try:
            self.watcher.progress(Progress(worker, phase, session, elapsed, last, outcome, note))
        except Exception:
            log.failure("slaveshell fleet run {run}: telling the operator", run=self.id)

    def _check_done(self) -> None:
        if self.finished or not self.scheduler.done:
            return
        self.finished = True
        self._not_used("the run ended before the part opened")
        outcomes = self.scheduler.outcomes()
        for o in outcomes:
            if o.state is State.NOT_STARTED:
                self._tell(o.worker, Phase.DONE)
        for callback in self.on_finished:
            callback(outcomes)
        try:
            self.watcher.finished(outcomes)
        except Exception:
            log.failure("slaveshell fleet run {run}: telling the operator", run=self.id)
        log.info("slaveshell fleet run {run}: {who} ran on {n} workers", run=self.id, who=visible(self.who),
                 n=len(outcomes))
