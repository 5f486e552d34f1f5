"""Pending runs: the part of a fleet run (`slaveshell run --include-offline`) for workers that were not connected
when it was asked for. Each is a row of the audit index (`slaveshell_run_workers`, state `pending`, with its
`until` and `pause`), so it survives the master's restart; it runs when its worker next attaches, as one
ordinary audited session opened for the run's operator (the policy is asked again then), and expires after
`until`.

With `pause`, the worker is paused in Buildbot as it attaches, before Buildbot gives it a build: the attach
event is taken from Buildbot's message queue (`workers.<id>.connected`, produced before the botmaster offers the
worker to its builders; with the `simple` mq the pause is in place by then, with the `wamp` mq it comes a
moment later), and the worker is unpaused once its run has succeeded; on failure it stays paused, and the row
says so. A master learns of pending rows written by another master of the site at its next reload (every
minute) and reads the worker's rows again when it attaches."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twisted.logger import Logger

from master_side.audit.store import seconds
from master_side.fleet.run import Awaited, Command, FleetRun, Slots, approval_text, outcome_row
from slaveshell.fleet.outcome import State
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity

if TYPE_CHECKING:
    from master_side.operators.api import OperatorAPI

log = Logger()

EXPIRED = {"state": "expired", "reason": "its worker did not attach before the run's --until"}
RELOAD_EVERY = 60.0  # seconds between reloads of the pending rows (other masters', expiries)


class Pausing(Protocol):
    """Pausing a worker in Buildbot on behalf of a key (master_side.glue.buildbot.BuildbotGlue)."""

    def pause(self, worker_name: str, session_id: str, why: str) -> bool: ...
    def unpause(self, worker_name: str, session_id: str) -> None: ...


@dataclass(frozen=True)
class Pending:
    """One pending row: the worker's part of run `run_id`, what to run and for whom."""

    row: int
    run_id: str
    worker: str
    who: Identity
    command: Command
    timeout: float | None
    until: float
    pause: bool

    @property
    def key(self) -> str:
        """What the worker's pause is held for (BuildbotGlue.pause)."""
        return f"run-{self.run_id}"


def request_json(command: Command, timeout: float | None, who: Identity) -> str:
    """What a run's pending workers will run, and for whom, as the runs row keeps it."""
    import base64

    return json.dumps({
        "command": command.command if command.script is None else None,
        "script": base64.b64encode(command.script).decode("ascii") if command.script is not None else None,
        "env": dict(command.env), "cwd": command.cwd, "reason": command.reason, "timeout": timeout,
        "gid": who.gid, "groups": sorted(who.groups),
    })


def pending_of(row: Mapping[str, object]) -> Pending | None:
    """A pending row (joined with its run's row) as read from the index; None when it cannot be read."""
    import base64

    try:
        req = json.loads(str(row["request"]))
        script = base64.b64decode(req["script"]) if req.get("script") is not None else None
        who = Identity(int(str(row["uid"])), int(req["gid"]), 0, str(row["operator"]),
                       frozenset(str(g) for g in req["groups"]))
        command = Command(str(req.get("command") or ""), script,
                          tuple(sorted((str(k), str(v)) for k, v in dict(req.get("env") or {}).items())),
                          req.get("cwd"), req.get("reason"))
        return Pending(int(str(row["id"])), str(row["run_id"]), str(row["worker"]), who, command,
                       float(req["timeout"]) if req.get("timeout") is not None else None,
                       seconds(row["until"]), bool(row["pause"]))
    except (KeyError, TypeError, ValueError) as e:
        log.error("slaveshell: a pending run's row cannot be read: {e}", e=visible(str(e)))
        return None


class PendingRuns:
    def __init__(self, api: OperatorAPI, pausing: Pausing, clock: Callable[[], Clock],
                 runs: dict[str, FleetRun], slots: Slots) -> None:
        self.api = api
        self.pausing = pausing
        self._clock = clock
        self.runs = runs  # the runs in progress (FleetOperations.runs)
        self.slots = slots  # pending runs' sessions take places among all fleet runs' (master_side.fleet.run.Slots)
        self.by_worker: dict[str, list[Pending]] = {}
        self.running: set[str] = set()  # workers whose pending runs are being run now
        self._loaded_at: float | None = None
        self.max_per_operator = 1000
        self.max_total = 10000

    def count(self, who: Identity | None = None) -> int:
        return sum(1 for entries in self.by_worker.values() for p in entries
                   if who is None or (p.who.user == who.user and p.who.uid == who.uid))

    # -- the rows --------------------------------------------------------------------------------

    @deferred
    async def load(self) -> None:
        """The pending rows of every worker, from the index (all masters' runs)."""
        trail = self.api.trail_or_none()
        if trail is None:
            return
        try:
            rows = await trail.store.pending_runs()
        except Exception as e:
            log.warn("slaveshell: pending runs not read: {e}", e=visible(str(e).splitlines()[0] if str(e) else e))
            return
        found: dict[str, list[Pending]] = {}
        for row in rows:
            entry = pending_of(row)
            if entry is not None:
                found.setdefault(entry.worker, []).append(entry)
        self.by_worker = found
        self._loaded_at = self._clock().seconds()
        for name in list(found):
            if self._connected(name):
                self._run_for(name)

    def added(self, entries: list[Pending]) -> None:
        """Rows this master just wrote (a run with --include-offline)."""
        for entry in entries:
            self.by_worker.setdefault(entry.worker, []).append(entry)

    def tick(self, now: float) -> None:
        if self._loaded_at is None or now - self._loaded_at >= RELOAD_EVERY:
            self._loaded_at = now
            self._expire(time.time())
            self.load()

    def _expire(self, now: float) -> None:
        trail = self.api.trail_or_none()
        for name, entries in list(self.by_worker.items()):
            for entry in [e for e in entries if e.until <= now]:
                entries.remove(entry)
                if trail is not None:
                    trail.pending_changed(entry.row, EXPIRED)
            if not entries:
                self.by_worker.pop(name, None)

    # -- a worker attaches ---------------------------------------------------------------------------

    def attached(self, name: str) -> None:
        """Buildbot says `name` attached: pause it at once when a pending run wants that, then run them."""
        entries = self.by_worker.get(name, [])
        for entry in entries:
            if entry.pause and entry.until > time.time():
                self.pausing.pause(name, entry.key, f"slaveshell: fleet run {entry.run_id} is pending for this "
                                   "worker (it runs first)")
        self._run_for(name, reread=True)

    def _connected(self, name: str) -> bool:
        return any(w.name == name and w.shell for w in self.api.glue.workers())

    def _run_for(self, name: str, reread: bool = False) -> None:
        if name in self.running:
            return
        self.running.add(name)
        d = self._run_all(name, reread)
        d.addErrback(lambda f: log.failure("slaveshell: pending runs of a worker", f))
        d.addBoth(lambda _: self.running.discard(name))

    @deferred
    async def _run_all(self, name: str, reread: bool) -> None:
        if reread:
            trail = self.api.trail_or_none()
            if trail is not None:
                try:
                    rows = await trail.store.pending_runs(worker=name)
                    fresh = [e for e in (pending_of(r) for r in rows) if e is not None]
                    self.by_worker[name] = fresh
                except Exception as e:
                    log.warn("slaveshell: pending runs not read: {e}", e=visible(str(e).splitlines()[0]))
        while self.by_worker.get(name):
            entry = self.by_worker[name].pop(0)
            if not self.by_worker[name]:
                self.by_worker.pop(name)
            await self._run_one(entry)

    @deferred
    async def _run_one(self, entry: Pending) -> None:
        trail = self.api.trail_or_none()
        if trail is None:
            return
        if entry.until <= time.time():
            trail.pending_changed(entry.row, EXPIRED)
            if entry.pause:
                self.pausing.unpause(entry.worker, entry.key)
            return
        if entry.pause:
            self.pausing.pause(entry.worker, entry.key, f"slaveshell: fleet run {entry.run_id} runs first")
        trail.pending_changed(entry.row, {"state": "running"})
        waiting = Awaited()
        run = FleetRun(entry.run_id, entry.who, [entry.worker], entry.command, 1, entry.timeout,
                       lambda who, request, sink, run_id, approved: self.api.open(
                           who, request, sink, run_id, approval_text(run_id, entry.command), sink.on_withdraw,
                           approved),
                       self._clock(), waiting, self.slots)
        run.start()
        outcome = (await waiting.done)[0]
        values = outcome_row(outcome)
        if entry.pause:
            if outcome.state is State.OK:
                self.pausing.unpause(entry.worker, entry.key)
            else:
                values["reason"] = ((outcome.reason + "; ") if outcome.reason else "") + (
                    "the worker stays paused in Buildbot: its pending run did not succeed (unpause it there once "
                    "it is fixed)")
        trail.pending_changed(entry.row, values)
        log.info("slaveshell fleet run {run}: its pending part ran on {worker}: {state}", run=entry.run_id,
                 worker=visible(entry.worker), state=outcome.state.value)

    @deferred
    async def cancel(self, who: Identity, run_id: str, may: Callable[[Pending], bool]) -> int:
        """Cancel what `run_id` still has pending (the entries `may` allows): how many were cancelled."""
        trail = self.api.trail
        rows = await trail.store.pending_runs(run_id=run_id)
        cancelled = 0
        for entry in (pending_of(r) for r in rows):
            if entry is None or not may(entry):
                continue
            trail.pending_changed(entry.row, {"state": "cancelled", "reason": f"cancelled by {who.user}"})
            listed = self.by_worker.get(entry.worker, [])
            self.by_worker[entry.worker] = [e for e in listed if e.row != entry.row]
            if not self.by_worker[entry.worker]:
                self.by_worker.pop(entry.worker)
            if entry.pause:
                self.pausing.unpause(entry.worker, entry.key)
            cancelled += 1
        return cancelled
