"""`FleetOperations`: what an operator may ask of the fleet, whatever the door: start a fleet run (`slaveshell
run`), the workers' facts (`slaveshell facts`, refreshed through the same run path) and the runs recorded
(`slaveshell runs`).

A run is resolved against the fleet as the master knows it (each worker's connection, its owner's opt-in, the
policy's `run` right; the facts the audit index keeps), recorded in the index before any session is asked for,
bounded (runs in progress per operator and in total, workers at once per run, a script's size), and its outcome
written at its end, every targeted or listed worker included. Refusals are `OperatorError`s, audited as every
refusal is."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet import defer

from master_side.audit.rows import RunRow, RunWorkerRow, WorkerRun
from master_side.audit.store import seconds, utc
from master_side.audit.trail import RecordingError
from master_side.cluster.stream import Refused
from master_side.fleet.pending import Pending, PendingRuns, request_json
from master_side.fleet.run import (
    Awaited,
    Command,
    FleetRun,
    PartView,
    RunSink,
    RunWatcher,
    Slots,
    approval_text,
    outcome_row,
)
from master_side.operators.approvals import Approved
from master_side.operators.routed import RoutedPart, operator_error
from master_side.operators.terms import ErrorKind, OperatorError, View, database_unavailable
from slaveshell.fleet import drift, gather, probe
from slaveshell.fleet.batch import Batch, BatchError
from slaveshell.fleet.outcome import Outcome, State
from slaveshell.fleet.script import MAX_SCRIPT
from slaveshell.fleet.targets import Resolution, Selection, TargetError, Worker, resolve
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.checks import check_reason
from slaveshell.vocabulary.policy import Action, Identity
from slaveshell.vocabulary.protocol import PROTOCOL_VERSION, OpenRequest, ProtocolError

if TYPE_CHECKING:
    from master_side.operators.api import OperatorAPI

MAX_TIMEOUT = 7 * 24 * 3600.0
DEFAULT_UNTIL = 7 * 24 * 3600.0  # how long a pending run waits for its worker, unless --until says
MAX_UNTIL = 90 * 24 * 3600.0
FACTS_TIMEOUT = 60.0  # seconds a worker's facts probe may take
RUNS_SHOWN = 50  # `slaveshell runs`: the last runs the operator may see
RUNS_READ = 100  # runs read from the index at a time, then those the operator may not see left out
RUNS_PAGES = 10  # pages of them read at most for one question
WORKER_RUNS_READ = 100  # a worker's runs read from the index at a time, then those the viewer may not see left out
WORKER_RUNS_PAGES = 10  # pages of them read at most for one question (a viewer who may see few of many runs)


@dataclass(frozen=True)
class FleetLimits:
    """Bounds of fleet runs: runs in progress per operator and in total, workers at once per run (and per
    operator, all their runs together), and sessions of fleet runs in flight in total."""

    runs_per_operator: int = 4
    runs: int = 16
    batch: int = 64
    sessions: int = 128  # sessions of fleet runs in flight, all runs together (a worker's start waits for one)


@dataclass(frozen=True)
class RunAsk:
    """What an operator asks for (as the door decoded it; checked here)."""

    command: str | None = None
    script: bytes | None = None
    workers: tuple[str, ...] = ()
    where: tuple[str, ...] = ()
    batch: str | None = None
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    reason: str | None = None
    include_offline: bool = False  # pending runs for the workers not connected now (master_side.fleet.pending)
    until: float | None = None  # seconds they stay pending (default DEFAULT_UNTIL)
    pause: bool = False  # paused in Buildbot as they attach, until their run succeeded


@dataclass
class Started:
    """A run as it starts: the run itself, the workers that will not run (listed, with their state), and the
    workers a --where decided on by facts older than the master's limit (their age in seconds)."""

    run: FleetRun
    listed: list[Outcome]
    stale: dict[str, float] = field(default_factory=dict)


class FleetOperations:
    def __init__(self, api: OperatorAPI, clock: Callable[[], Clock]) -> None:
        self.api = api
        self._clock = clock
        self.limits = FleetLimits()
        self.probes: dict[str, str] = {}  # ShellService(facts=...): name -> one-line command
        self.stale_after = drift.STALE_AFTER
        self.runs: dict[str, FleetRun] = {}  # in progress, by id
        self.slots = Slots(self.limits.sessions, self.limits.batch)
        self.pending = PendingRuns(api, api.glue, clock, self.runs, self.slots)

    # -- the fleet as the master knows it ------------------------------------------------------

    @deferred
    async def fleet(self, who: Identity, among: Collection[str] | None = None) -> list[Worker]:
        """The workers `who` has some right on (of `among`, when given: a door's own gate, as the web's
        Buildbot authz), with whether they may run there and their last facts."""
        reports = {r.worker: r for r in await self._reports()}
        rows = self.api.workers(who)
        cluster = self.api.cluster
        if cluster is not None:  # a multi-master site: the workers the other masters hold too
            rows = await cluster.workers(who, rows)
        out = []
        for row in rows:
            name = str(row["name"])
            if among is not None and name not in among:
                continue
            report = reports.get(name)
            facts = (dict(report.values) if report else None, report.taken if report else None)
            if row.get("here") is False and row.get("master") is not None:
                # Held by another master: it decides, under its own policy, when the part opens there.
                out.append(Worker(name, bool(row["connected"]), bool(row["shell"]), True, "", *facts))
                continue
            decision = self.api.policy.may(who, Action.RUN, name)
            out.append(Worker(name, bool(row["connected"]), bool(row["shell"]), decision.allowed,
                              "" if decision.allowed else decision.reason, *facts))
        return out

    @deferred
    async def _reports(self) -> list[drift.Report]:
        try:
            rows = await self.api.trail.store.facts()
        except OperatorError:
            raise
        except Exception as e:
            raise database_unavailable(e) from None
        by_worker: dict[str, dict[str, str]] = {}
        taken: dict[str, float] = {}
        for row in rows:
            by_worker.setdefault(row["worker"], {})[row["name"]] = row["value"]
            when = seconds(row["taken"])
            taken[row["worker"]] = min(taken.get(row["worker"], when), when)
        return [drift.Report(w, values, taken[w]) for w, values in by_worker.items()]

    # -- runs ----------------------------------------------------------------------------------

    @deferred
    async def run(self, who: Identity, ask: RunAsk, watcher: RunWatcher,
                  among: Collection[str] | None = None) -> Started:
        """Resolve, bound, record and start a run for `who` (on workers of `among` only, when given: `fleet`).
        Raises OperatorError (bad usage: BAD_REQUEST)."""
        command = _command(ask)
        selection, batch, timeout = _selection(ask)
        self._bound(who)
        fleet = await self.fleet(who, among)
        if not fleet:
            raise self._no_right(who)
        try:
            resolution = resolve(selection, fleet, fact_names=list(probe.BUILTIN) + list(self.probes),
                                 now=time.time(), stale_after=self.stale_after)
        except TargetError as e:
            raise OperatorError(ErrorKind.BAD_REQUEST, str(e)) from None
        for name, (state, why) in resolution.listed.items():
            if state is State.REFUSED:  # the policy's refusals are audited as every refusal is (rate-limited)
                self.api.refuse(who, name, ErrorKind.DENIED, f"permission denied: {why}")
        self._bound(who)  # again: the facts were read meanwhile
        pending: list[str] = []
        if ask.include_offline:
            pending = self._pending_targets(who, resolution, fleet)
        until = ask.until if ask.until is not None else DEFAULT_UNTIL
        started = await self._start(who, "run", str(selection), resolution, command, batch, timeout, watcher,
                                    pending, time.time() + until, ask.pause)
        started.stale = dict(resolution.stale)
        return started

    def _pending_targets(self, who: Identity, resolution: Resolution, fleet: list[Worker]) -> list[str]:
        """The workers not connected now that `who` may run on: pending, within the bounds."""
        allowed = {w.name for w in fleet if w.allowed}
        names = [n for n in resolution.of(State.NOT_CONNECTED) if n in allowed]
        mine, total = self.pending.count(who), self.pending.count()
        if mine + len(names) > self.pending.max_per_operator:
            raise self.api.refuse(who, "", ErrorKind.LIMIT, f"{who.user} would have more than "
                                  f"{self.pending.max_per_operator} pending runs (the master's limit)")
        if total + len(names) > self.pending.max_total:
            raise self.api.refuse(who, "", ErrorKind.LIMIT, f"the master would hold more than "
                                  f"{self.pending.max_total} pending runs (its limit)")
        return names

    @deferred
    async def _start(self, who: Identity, kind: str, selection: str, resolution: Resolution, command: Command,
                     batch: Batch, timeout: float | None, watcher: RunWatcher, pending: Sequence[str] = (),
                     until: float = 0.0, pause: bool = False) -> Started:
        targets = resolution.targets
        size = min(batch.size(max(1, len(targets))), self.limits.batch)
        run_id = secrets.token_hex(6)
        script = command.script
        row = {
            "id": run_id, "kind": kind, "operator": who.user, "uid": who.uid, "master": self.api.trail.master_name,
            "command": None if script is not None else command.command,
            "script_sha256": hashlib.sha256(script).hexdigest() if script is not None else None,
            "script_bytes": len(script) if script is not None else None,
            "selection": selection, "targets": " ".join(targets), "batch": size, "timeout": timeout,
            "reason": command.reason, "started": utc(time.time()), "state": "running",
            "request": request_json(command, timeout, who) if pending else None,
        }
        waits: list[Mapping[str, object]] = [
            {"worker": w, "state": State.PENDING.value, "until": utc(until), "pause": pause,
             "reason": "runs when it attaches"} for w in pending]
        try:
            await self.api.trail.run_started(row, waits)
        except RecordingError as e:
            raise OperatorError(ErrorKind.UNAVAILABLE, str(e)) from None
        if pending:
            self.pending.load()
        shown_until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        listed = [Outcome(o.worker, State.PENDING, reason=f"runs when it attaches (until {shown_until}"
                          + (", paused in Buildbot until it succeeds)" if pause else ")"))
                  if o.worker in pending else o for o in resolution.outcomes()]
        self.slots.total, self.slots.per_operator = self.limits.sessions, self.limits.batch
        cluster = self.api.cluster
        moderated = [w for w in targets if self.api.policy.may(who, Action.RUN, w).moderated_by
                     and (cluster is None or cluster.attached_here(w))]
        run = FleetRun(run_id, who, targets, command, size, timeout, self._open, self._clock(), watcher, self.slots,
                       self._approval, moderated, min(size, self.api.approvals.limits.per_operator),
                       self.api.approvals.unused)
        self.runs[run_id] = run
        run.on_finished.append(lambda outcomes: self._finished(
            run, outcomes + [o for o in listed if o.state is not State.PENDING]))
        run.start()
        return Started(run, listed)

    def _approval(self, who: Identity, request: OpenRequest, sink: RunSink, run_id: str
                  ) -> defer.Deferred[Approved | None]:
        """A part's approval on a four-eyes worker of this master, asked before it takes a place in the batch."""
        run = self.runs.get(run_id)
        what = approval_text(run_id, run.command) if run is not None else f"fleet run {run_id}"
        return self.api.approval(who, request, sink, run_id, what, sink.on_withdraw)

    @deferred
    async def _open(self, who: Identity, request: OpenRequest, sink: RunSink, run_id: str,
                    approved: Approved | None = None) -> PartView | None:
        cluster = self.api.cluster
        if cluster is not None and not cluster.attached_here(request.worker):
            # A part on a worker another master holds: an ordinary session routed to it (master_side.cluster.relay),
            # opened, recorded and refused there; on its four-eyes worker, approved by its moderators, who see the
            # command or the script, which it checks the part's input against.
            run = self.runs.get(run_id)
            script = None if run is None else run.command.script
            try:
                routed = await cluster.open(who, request, sink, run_id, script, sink.on_withdraw)
            except Refused as e:
                raise operator_error(e) from None
            if routed is not None:
                return RoutedPart(routed)
        run = self.runs.get(run_id)
        what = None if run is None else approval_text(run_id, run.command)
        view: View | None = await self.api.open(who, request, sink, run_id, what, sink.on_withdraw, approved)
        return view

    def _no_right(self, who: Identity) -> OperatorError:
        """`who` has no right on any worker of this master (or it has none): refused, and audited."""
        if not self.api.glue.workers():
            return OperatorError(ErrorKind.BAD_REQUEST, "the master has no workers")
        return self.api.refuse(who, "", ErrorKind.DENIED, f"permission denied: {who.user} may not run on any worker "
                               "of this master")

    def _bound(self, who: Identity) -> None:
        mine = sum(1 for r in self.runs.values() if r.who.uid == who.uid and r.who.user == who.user)
        if mine >= self.limits.runs_per_operator:
            raise self.api.refuse(who, "", ErrorKind.LIMIT, f"{who.user} already has {mine} fleet runs in progress "
                                   "(the master's limit)")
        if len(self.runs) >= self.limits.runs:
            raise self.api.refuse(who, "", ErrorKind.LIMIT, f"the master already has {len(self.runs)} fleet runs "
                                   "in progress (its limit)")

    def _finished(self, run: FleetRun, outcomes: list[Outcome]) -> None:
        self.runs.pop(run.id, None)
        state = "interrupted" if run.scheduler.stopping else "ended"
        workers: list[Mapping[str, object]] = [{"worker": o.worker, **outcome_row(o)} for o in outcomes]
        trail = self.api.trail_or_none()
        if trail is not None:
            trail.run_ended(run.id, run.who, {"state": state, "summary": gather.summary(outcomes),
                                              "exit_status": gather.exit_status(outcomes)}, workers)

    def interrupt_all(self) -> None:
        """The master stops: every run stops starting sessions and ends what runs."""
        for run in list(self.runs.values()):
            run.interrupt()

    # -- facts -----------------------------------------------------------------------------------

    @deferred
    async def facts(self, who: Identity, workers: Sequence[str], refresh: bool,
                    among: Collection[str] | None = None) -> tuple[list[drift.Report], list[Worker]]:
        """The last facts of the workers `workers` names (none: all) that `who` may see (of `among`, when
        given: `fleet`), taken again first with `refresh` (through a run of the probe on each, its outcome
        recorded, its facts kept in the index). Fires (their reports, the workers named)."""
        try:
            selection = Selection.parse(workers, ())
        except TargetError as e:
            raise OperatorError(ErrorKind.BAD_REQUEST, str(e)) from None
        if refresh:
            self._bound(who)
            fleet = await self.fleet(who, among)
            if not fleet:
                raise self._no_right(who)
            try:
                resolution = resolve(selection, fleet)
            except TargetError as e:
                raise OperatorError(ErrorKind.BAD_REQUEST, str(e)) from None
            waiting = Awaited()
            script = probe.script(self.probes).encode()
            started = await self._start(who, "facts", str(selection), resolution,
                                        Command("facts probe", script=script), Batch(self.limits.batch),
                                        FACTS_TIMEOUT, waiting)
            outcomes = await waiting.done
            taken = {o.worker: probe.parse(bytes(o.output.kept), self.probes).values for o in outcomes
                     if o.state is State.OK and o.output is not None}
            if taken:
                self.api.trail.facts_taken(taken, time.time(), started.run.id)
        fleet = await self.fleet(who, among)
        named = [w for w in fleet if selection.named(w.name)]
        if not named:
            raise OperatorError(ErrorKind.BAD_REQUEST, "no worker matches " + str(selection))
        shown = {w.name for w in named}
        reports = [r for r in await self._reports() if r.worker in shown]
        return reports, named

    # -- the record --------------------------------------------------------------------------------

    @deferred
    async def recorded(self, who: Identity, run_id: str | None) -> list[tuple[RunRow, list[RunWorkerRow]]]:
        """Fleet runs (newest first, at most `RUNS_SHOWN`; `run_id`: that one with its workers' outcomes) that
        `who` may see: their own, or any on workers where they have `replay` for each target. Read a page of
        `RUNS_READ` at a time until enough are found, the runs end, or `RUNS_PAGES` pages were read."""
        store = self.api.trail.store
        out: list[tuple[RunRow, list[RunWorkerRow]]] = []
        after: RunRow | None = None
        try:
            for _ in range(1 if run_id else RUNS_PAGES):
                page = await store.runs(run_id=run_id, limit=1 if run_id else RUNS_READ, after=after)
                for row in page:
                    if self._may_see(who, row):
                        out.append((row, await store.run_workers(row["id"]) if run_id else []))
                if len(out) >= RUNS_SHOWN or len(page) < RUNS_READ:
                    break
                after = page[-1]
        except OperatorError:
            raise
        except Exception as e:
            raise database_unavailable(e) from None
        out = out[:RUNS_SHOWN]
        if run_id and not out:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no fleet run {run_id} that you may see")
        return out

    @deferred
    async def of_worker(self, who: Identity, worker: str, limit: int = 20,
                        shown: Callable[[list[WorkerRun]], Awaitable[list[WorkerRun]]] | None = None
                        ) -> list[WorkerRun]:
        """The last fleet runs (at most `limit`, newest first) that named `worker`, with its outcome in each, that
        `who` may see (as `recorded`: their own, or any on workers where they have `replay` for each target) and
        that `shown` keeps (the door's own check, a page at a time). Read a page of `WORKER_RUNS_READ` at a time,
        until `limit` are found, the runs end, or `WORKER_RUNS_PAGES` pages were read (bounded work a question)."""
        store = self.api.trail.store
        out: list[WorkerRun] = []
        after: WorkerRun | None = None
        for _ in range(WORKER_RUNS_PAGES):
            try:
                page = await store.worker_runs(worker, limit=WORKER_RUNS_READ, after=after)
            except OperatorError:
                raise
            except Exception as e:
                raise database_unavailable(e) from None
            seen = [r for r in page if self._may_see(who, r.run)]
            if seen and shown is not None:
                seen = await shown(seen)
            out.extend(seen)
            if len(out) >= limit or len(page) < WORKER_RUNS_READ:
                break
            after = page[-1]
        return out[:limit]

    @deferred
    async def cancel(self, who: Identity, run_id: str) -> str:
        """Cancel what run `run_id` still has pending: its operator may, and whoever has the `kill` right on a
        pending worker (for that worker)."""
        def may(entry: Pending) -> bool:
            mine = entry.who.user == who.user and entry.who.uid == who.uid
            return mine or self.api.policy.may(who, Action.KILL, entry.worker).allowed

        try:
            cancelled = await self.pending.cancel(who, run_id, may)
        except OperatorError:
            raise
        except Exception as e:
            raise database_unavailable(e) from None
        if not cancelled:
            raise OperatorError(ErrorKind.NOT_FOUND, f"fleet run {run_id} has nothing pending that you may cancel")
        trail = self.api.trail
        trail.run_cancelled(run_id, who, cancelled)
        return f"fleet run {run_id}: {cancelled} pending worker{'s' if cancelled != 1 else ''} cancelled"

    def _may_see(self, who: Identity, row: RunRow) -> bool:
        if row["operator"] == who.user and row["uid"] == who.uid:
            return True
        targets = row["targets"].split()
        return bool(targets) and all(self.api.policy.may(who, Action.REPLAY, t).allowed for t in targets)


def _command(ask: RunAsk) -> Command:
    if (ask.command is None) == (ask.script is None):
        raise OperatorError(ErrorKind.BAD_REQUEST, "a run needs a command or a script (one of them)")
    if ask.script is not None and not 0 < len(ask.script) <= MAX_SCRIPT:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"a script is 1 byte to {MAX_SCRIPT // 1024} KiB "
                            f"(this one: {len(ask.script)} bytes)")
    reason = None
    try:
        if ask.reason is not None:
            reason = check_reason(ask.reason)
        # The request's own checks (command, environment, directory) before anything starts.
        OpenRequest.from_wire({"version": PROTOCOL_VERSION, "worker": "check", "command": ask.command or "script",
                               "pty": False, "env": dict(ask.env), "cwd": ask.cwd})
    except ProtocolError as e:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
    except ValueError as e:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
    return Command(ask.command or "", ask.script, tuple(sorted(ask.env.items())), ask.cwd, reason)


def _selection(ask: RunAsk) -> tuple[Selection, Batch, float | None]:
    try:
        selection = Selection.parse(ask.workers, ask.where)
        batch = Batch.parse(ask.batch) if ask.batch is not None else Batch(100, percent=True)
    except (TargetError, BatchError) as e:
        raise OperatorError(ErrorKind.BAD_REQUEST, str(e)) from None
    timeout = ask.timeout
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"--timeout is more than 0 and at most {MAX_TIMEOUT:.0f} s")
    return selection, batch, timeout

