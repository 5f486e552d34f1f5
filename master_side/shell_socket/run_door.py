"""A fleet run on the framed door (master_side.shell_socket.door): the RUN call's request decoded and checked at
this edge into a `RunAsk`, the run's progress and end written as PROGRESS and RUN_END messages
(slaveshell.fleet.events), a CLOSE call while it runs as the operator's Ctrl-C, the connection's loss as the
operator gone. One run per connection (it is then the connection's one view). What the client does not read
counts against the connection's buffered bound (master_side.operators.gate): a client that stops reading is
dropped, and its run interrupted."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from twisted.internet import defer

from master_side.fleet.operations import MAX_UNTIL, FleetOperations, RunAsk, Started
from master_side.fleet.run import FleetRun, Phase, Progress
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.fleet import drift, gather, probe
from slaveshell.fleet.events import outcome_to_wire
from slaveshell.fleet.outcome import Outcome
from slaveshell.fleet.targets import Worker
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.checks import MAX_COMMAND, ProtocolError, check_str
from slaveshell.vocabulary.framing import Op
from slaveshell.vocabulary.policy import Identity

if TYPE_CHECKING:
    from master_side.shell_socket.framed import FramedDoor

MAX_PATTERNS = 64  # --workers and --where each


class RunDoor:
    """The framed door's end of a fleet run: a `RunWatcher` writing to the connection."""

    def __init__(self, door: FramedDoor) -> None:
        self.door = door
        self.run: FleetRun | None = None
        self.listed: list[Outcome] = []
        self.asked = False  # a RUN call came on this connection
        self._interrupted = False  # Ctrl-C came before the run started

    def call(self, who: Identity, request: object) -> defer.Deferred[dict[str, object]]:
        if self.door.viewing:
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: this connection already has a session")
        ask = decode(request)
        self.door.viewing = True
        self.asked = True
        d = self.door.service.fleet.run(who, ask, self)
        return d.addCallback(self._started)

    def _started(self, started: Started) -> dict[str, object]:
        run = self.run = started.run
        self.listed = started.listed
        self.door.disconnects.append(run.leave)
        if self.door.disconnected or self._interrupted:
            run.leave()
        return {"run": run.id, "targets": run.scheduler.order, "batch": run.scheduler.batch,
                "listed": [outcome_to_wire(o) for o in started.listed],
                # Workers chosen by old facts, with their age in seconds (-1: never taken).
                "stale": {w: (-1 if a == float("inf") else round(a)) for w, a in started.stale.items()}}

    def interrupt(self) -> bool:
        """The operator's Ctrl-C (a CLOSE call): False when no run was asked for on this connection. A run still
        being resolved is interrupted as soon as it starts."""
        if not self.asked:
            return False
        if self.run is None:
            self._interrupted = True
        else:
            self.run.interrupt()
        return True

    # -- RunWatcher ------------------------------------------------------------------------------

    def progress(self, event: Progress) -> None:
        fields: dict[str, object] = {
            "worker": event.worker, "phase": event.phase.value, "session": event.session,
            "elapsed": round(event.elapsed, 3), "last_line": base64.b64encode(event.last_line).decode("ascii"),
        }
        if event.phase is Phase.DONE and event.outcome is not None:
            fields["outcome"] = outcome_to_wire(event.outcome)
        if event.note is not None:
            fields["note"] = event.note
        self._write(framing.control(Op.PROGRESS, **fields))

    def finished(self, outcomes: list[Outcome]) -> None:
        everything = outcomes + self.listed
        run = self.run
        state = "interrupted" if run is not None and run.scheduler.stopping else "ended"
        self._write(framing.control(Op.RUN_END, state=state, summary=gather.summary(everything),
                                    exit_status=gather.exit_status(everything)))

    def _write(self, frame: bytes) -> None:
        door = self.door
        if not door.disconnected:
            door.write(frame)
            door.gate.check(door)


def _strings(value: object, what: str, most: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > most:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {what} is a list of at most {most} texts")
    try:
        return tuple(check_str(v, what, 1024) for v in value)
    except ProtocolError as e:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None


def decode(request: object) -> RunAsk:
    """The RUN call's request, every value's type and size checked (their meaning is FleetOperations')."""
    if not isinstance(request, dict):
        raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: a run's request is a mapping")
    try:
        command = request.get("command")
        if command is not None:
            command = check_str(command, "command", MAX_COMMAND)
        script = None
        if request.get("script") is not None:
            text = check_str(request.get("script"), "script", 400 * 1024)
            try:
                script = base64.b64decode(text.encode("ascii"), validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("the script is not base64") from None
        batch = request.get("batch")
        if batch is not None:
            batch = check_str(batch, "batch", 16)
        timeout = request.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)):
            raise ProtocolError("timeout is a number of seconds")
        env = request.get("env") or {}
        if not isinstance(env, dict):
            raise ProtocolError("env is a mapping")
        cwd = request.get("cwd")
        reason = request.get("reason")
        if cwd is not None:
            cwd = check_str(cwd, "working directory", 4096)
        if reason is not None:
            reason = check_str(reason, "reason", 1024)
        until = request.get("until")
        if until is not None and (not isinstance(until, (int, float)) or isinstance(until, bool)
                                  or not 0 < until <= MAX_UNTIL):
            raise ProtocolError(f"until is a number of seconds up to {MAX_UNTIL:.0f}")
        include_offline, pause = request.get("include_offline", False), request.get("pause", False)
        if not isinstance(include_offline, bool) or not isinstance(pause, bool):
            raise ProtocolError("include_offline and pause are true or false")
    except ProtocolError as e:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
    return RunAsk(command=command, script=script, workers=_strings(request.get("workers"), "workers", MAX_PATTERNS),
                  where=_strings(request.get("where"), "where", MAX_PATTERNS), batch=batch,
                  timeout=None if timeout is None else float(timeout), env=env, cwd=cwd, reason=reason,
                  include_offline=include_offline, until=None if until is None else float(until), pause=pause)


def runs_answer(fleet: FleetOperations, who: Identity, run_id: object,
                cancel: object = False) -> defer.Deferred[dict[str, object]]:
    """The RUNS call: the runs recorded (with `run`: that one and its workers' outcomes; with `cancel` too: what
    it still has pending cancelled, the answer's text)."""
    if run_id is not None and (not isinstance(run_id, str) or not 1 <= len(run_id) <= 64):
        raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: run is a run's id")
    if cancel is not False:
        if cancel is not True or not isinstance(run_id, str):
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: cancel needs a run's id")
        return fleet.cancel(who, run_id).addCallback(lambda text: {"text": text, "rows": []})
    d = fleet.recorded(who, run_id)
    return d.addCallback(lambda found: {"rows": [{**row, "workers": workers} for row, workers in found]})


def fact_answer(fleet: FleetOperations, who: Identity, workers: object,
                refresh: object) -> defer.Deferred[dict[str, object]]:
    """The FACTS call: the named workers' last facts (taken again first with `refresh`)."""
    import time

    patterns = _strings(workers, "workers", MAX_PATTERNS)
    if not isinstance(refresh, bool):
        raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: refresh is true or false")

    def answer(found: tuple[list[drift.Report], list[Worker]]) -> dict[str, object]:
        reports, named = found
        return {"reports": drift.as_json(reports, time.time(), fleet.stale_after),
                "workers": [w.name for w in named],
                "probes": list(probe.BUILTIN) + list(fleet.probes), "stale_after": fleet.stale_after}

    return fleet.facts(who, patterns, refresh).addCallback(answer)
