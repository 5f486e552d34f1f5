"""The Fleet page's end of the web door: the fleet with its facts, a fleet run asked for by the page and watched
live, on the terminal's WebSocket (master_side.www.terminal_ws: its Origin, login, shell grant and quotas).

Every worker here is one the web user has some right on in slaveshell's policy (`FleetOperations.fleet`) *and* on
which Buildbot's authz grants the ``shell`` action (`access.shell_allowed`, failing closed): a run's patterns are
resolved among those only, so a worker Buildbot's authz keeps from this user is neither run on nor listed, as in
every other list of these pages. The run itself is `FleetOperations.run` (the policy's ``run`` right, the owner's
opt-in and ``allowed_users``, the runs' bounds, recorded before served), as for ``slaveshell run``.

Messages (JSON; page -> master):

- a question, on a socket of questions (master_side.www.lists): ``{"type": "fleet", "refresh": bool?}`` ->
  ``{"type": "fleet", "workers": [{"name", "connected", "opted_in", "may_run", "refusal", "facts": {..} | null,
  "taken": float | null, "age": float | null, "stale": bool, "workerid"}], "facts": [names], "probes": [names],
  "stale_after": float, "refreshed": {"workers"} | null}``; with ``refresh``, the facts are taken again first
  (`FleetOperations.facts`: a run of the probe on each worker, recorded as a run);
- a run, on a socket of its own (it is then that socket's one purpose, as a session is):
  ``{"type": "run", "command": str?, "script": str?, "workers": [glob]?, "where": [FACT=VALUE]?, "batch": str?,
  "timeout": number?, "env": {NAME: VALUE}?, "cwd": str?, "reason": str?, "include_offline": bool?, "until":
  number?, "pause": bool?}`` (a command or a script: the script's text, UTF-8; ``env`` and ``cwd`` as ``slaveshell
  run -e NAME=VALUE -C DIR``, checked as the RUN request's are; ``include_offline``: pending runs for the workers
  not connected now, as ``slaveshell run --include-offline [--until] [--pause]``); then ``{"type": "stop"}`` is
  the operator's Ctrl-C, and closing the socket the operator gone (both end what runs);
- a question: ``{"type": "cancel_run", "run": str}`` -> ``{"type": "cancel_run", "run", "message"}`` (what the
  run still has pending cancelled, as ``slaveshell runs cancel``);
- a question, for a worker's view: ``{"type": "worker_runs", "worker": str}`` -> ``{"type": "worker_runs",
  "worker", "runs": [{"id", "kind", "operator", "command", "script_sha256", "reason", "started", "ended",
  "run_state", "state", "exit_status", "duration", "why", "session"}]}`` (`worker_runs_answer`: the worker's
  recent fleet runs, each with its outcome there, as ``slaveshell runs ID`` shows it, and nothing of the other
  workers' outcomes; texts as the index holds them: the page escapes them).

master -> page, on a run's socket: ``{"type": "run_started", "run", "targets": [names], "batch", "listed":
[outcome]}``; ``{"type": "progress", "worker", "phase", "session", "elapsed", "last_line", "outcome"?, "note"?}``
(with ``outcome`` once ``phase`` is ``done``; ``note``: why a part waits before it starts, as ``slaveshell run``
prints it: the line of the master that holds a four-eyes worker, its request waiting for a moderator's approval,
escaped, at most MAX_NOTE characters); ``{"type": "run_end", "run", "state", "summary", "exit_status", "groups":
[{"digest", "workers": [names], "header"}], "exits": [{"status", "workers"}], "not_ran": [{"state", "workers",
"reasons"}]}``; ``{"type": "error", "message"}`` (then the socket closes). An outcome is ``{"worker", "state",
"exit_status", "duration", "session", "reason", "digest", "output_bytes", "cut", "lines"?}``: ``lines`` (the kept
output, line by line) comes with the first outcome of each distinct output only, so that a run whose workers print
the same thing sends it once; the ``run_end`` groups name outputs by digest. Everything a worker controls (its
output, its last line, a reason, the folded names) is sent through `slaveshell.vocabulary.display.visible`, as
``slaveshell run`` prints it; names are sent as they are (the page escapes them for display, and needs them for its
links). What the page does not read counts against the gate's bounds, as a session's output does: a page that stops
reading is dropped, and its run ends as for a lost connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from master_side.audit.rows import WorkerRun
from master_side.fleet.operations import RunAsk, Started
from master_side.fleet.run import FleetRun, Phase, Progress
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.www import access, buildbot_pages
from master_side.www.access import UserInfo
from master_side.www.host import WebHost
from master_side.www.site import site_workers, where
from slaveshell.fleet import drift, gather, probe
from slaveshell.fleet.nodeset import count, fold
from slaveshell.fleet.outcome import Outcome, State
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.checks import (
    MAX_CHUNK,
    MAX_COMMAND,
    MAX_ENV,
    MAX_ENV_ITEM,
    MAX_NAME,
    MAX_PATH,
    ProtocolError,
    check_str,
)
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import WebIdentity

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

MAX_PATTERNS = 64  # worker patterns and --where conditions, each
MAX_PATTERN = 1024  # characters of one
MAX_BATCH = 16  # characters of a --batch
MAX_NOTE = 400  # characters of a part's note (why it waits), as `slaveshell run` shows it
# A run's message may carry a script: it may be as large as the socket's largest message (MAX_CHUNK, the
# WebSocket's bound), where other control messages have terminal_ws.MAX_CONTROL.
MAX_RUN_MESSAGE = MAX_CHUNK
MAX_SCRIPT = MAX_CHUNK

Message = dict[str, object]


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise ProtocolError(f"{what} is a list of at most {MAX_PATTERNS} texts")
    return tuple(check_str(v, what, MAX_PATTERN) for v in value if not (isinstance(v, str) and not v.strip()))


def _text(message: Message, key: str, most: int) -> str | None:
    value = message.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return check_str(value, key, most)


def _seconds(message: Message, key: str) -> float | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"{key} is a number of seconds")
    return float(value)


def _env(value: object) -> dict[str, str]:
    """The run's ``env`` (``-e NAME=VALUE``...): texts within the request's bounds (the names' form is checked
    with the rest of the request: FleetOperations' `OpenRequest`)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise ProtocolError(f"env is a mapping of at most {MAX_ENV} names to values")
    return {check_str(k, "environment name", MAX_NAME): check_str(v, f"environment value of {k}", MAX_ENV_ITEM)
            for k, v in value.items()}


def decode(message: Message) -> RunAsk:
    """The page's run message, every value's type and size checked (their meaning is FleetOperations')."""
    command = _text(message, "command", MAX_COMMAND)
    script_text = _text(message, "script", MAX_SCRIPT)
    try:
        script = script_text.encode("utf-8") if script_text is not None else None
    except UnicodeEncodeError:
        raise ProtocolError("the script is not valid Unicode (a lone surrogate)") from None
    if script is not None and not script.endswith(b"\n"):
        script += b"\n"
    timeout, until = _seconds(message, "timeout"), _seconds(message, "until")
    include_offline, pause = message.get("include_offline", False), message.get("pause", False)
    if not isinstance(include_offline, bool) or not isinstance(pause, bool):
        raise ProtocolError("include_offline and pause are true or false")
    return RunAsk(command=command, script=script, workers=_strings(message.get("workers"), "workers"),
                  where=_strings(message.get("where"), "where"), batch=_text(message, "batch", MAX_BATCH),
                  timeout=timeout, env=_env(message.get("env")), cwd=_text(message, "cwd", MAX_PATH),
                  reason=_text(message, "reason", 1024), include_offline=include_offline,
                  until=until, pause=pause)


@deferred
async def cancel_answer(message: Message, service: WebHost, who: WebIdentity) -> Message:
    """The ``cancel_run`` question: what run ``run`` still has pending cancelled (`FleetOperations.cancel`: its
    operator may, and whoever has the ``kill`` right on a pending worker)."""
    run_id = message.get("run")
    if not isinstance(run_id, str) or not 1 <= len(run_id) <= 64:
        raise ProtocolError("cancel_run needs a run's id")
    return {"type": "cancel_run", "run": run_id, "message": visible(await service.fleet.cancel(who, run_id))}


@deferred
async def gate(master: BuildMaster, service: WebHost, who: WebIdentity, info: UserInfo) -> set[str]:
    """The workers this web user may be shown and run on from here: some right in the policy (on a multi-master
    site, also the workers the other masters hold: master_side.www.site), and Buildbot's authz's shell action."""
    return await access.shell_allowed(master, info, {str(w["name"]) for w in await site_workers(service, who)})


@deferred
async def fleet_answer(message: Message, service: WebHost, master: BuildMaster, who: WebIdentity,
                       info: UserInfo) -> Message:
    """The ``fleet`` question: the workers with their facts (taken again first with ``refresh``). On a
    multi-master site, the workers the other masters hold too, where each is: a run's part on one of them is a
    session routed to its master, whose policy decides (FleetOperations)."""
    refresh = message.get("refresh", False)
    if not isinstance(refresh, bool):
        raise ProtocolError("refresh is true or false")
    fleet = service.fleet
    site = {str(w["name"]): w for w in await site_workers(service, who)}
    among = await access.shell_allowed(master, info, set(site))
    refreshed: Message | None = None
    if refresh:
        if not among:
            raise OperatorError(ErrorKind.BAD_REQUEST, "no worker here that you may act on")
        await fleet.facts(who, [], True, among)
        refreshed = {"workers": len(among)}
    workers = await fleet.fleet(who, among)
    ids = await buildbot_pages.worker_ids(master, {w.name for w in workers})
    now = time.time()
    reports = [drift.Report(w.name, w.facts, w.facts_taken or 0.0) for w in workers if w.facts is not None]
    multi = service.api.cluster is not None
    return {"type": "fleet", "facts": drift.fact_names(reports, fleet.probes), "probes": list(fleet.probes),
            "builtin": list(probe.BUILTIN), "stale_after": fleet.stale_after, "refreshed": refreshed,
            "workers": [{
                "name": w.name, "connected": w.connected, "opted_in": w.opted_in, "may_run": w.allowed,
                "refusal": visible(w.refusal), "workerid": ids.get(w.name),
                "facts": None if w.facts is None else {k: visible(drift.shown_value(k, v))
                                                       for k, v in sorted(w.facts.items())},
                "taken": w.facts_taken,
                "age": None if w.facts_taken is None else round(max(0.0, now - w.facts_taken), 3),
                "stale": w.facts_taken is None or now - w.facts_taken > fleet.stale_after,
                **(where(site.get(w.name, {})) if multi else where({})),
            } for w in workers]}


WORKER_RUNS = 20  # a worker's recent fleet runs shown in its view


@deferred
async def worker_runs_answer(message: Message, service: WebHost, master: BuildMaster, who: WebIdentity,
                             info: UserInfo) -> Message:
    """The ``worker_runs`` question: the recent fleet runs that named one worker (`FleetOperations.of_worker`: the
    web user's own, or runs on workers where the policy gives them ``replay`` on every target), each with that
    worker's outcome; only when Buildbot's authz gives the shell action on the worker and on every target of the
    run (as every list of these pages, failing closed), else no run."""
    worker = message.get("worker")
    if not isinstance(worker, str) or not 1 <= len(worker) <= 256:
        raise ProtocolError("worker_runs needs a worker's name")
    answer: Message = {"type": "worker_runs", "worker": worker, "runs": []}
    if worker not in await gate(master, service, who, info):
        return answer

    async def authorized(page: list[WorkerRun]) -> list[WorkerRun]:
        allowed = await access.shell_allowed(master, info, {t for r in page for t in r.run["targets"].split()})
        return [r for r in page if set(r.run["targets"].split()) <= allowed]

    # Both checks a page at a time as the runs are read: up to WORKER_RUNS of the runs this web user may see.
    found = await service.fleet.of_worker(who, worker, WORKER_RUNS, authorized)
    shown = []
    for run, outcome, session in found:
        shown.append({
            "id": run["id"], "kind": run["kind"], "operator": run["operator"], "command": run["command"],
            "script_sha256": run["script_sha256"], "reason": run["reason"], "started": run["started"],
            "ended": run["ended"], "run_state": run["state"],
            "state": outcome["state"] if outcome is not None else
            ("running" if run["state"] == "running" else run["state"]),
            "exit_status": outcome["exit_status"] if outcome is not None else None,
            "duration": outcome["duration"] if outcome is not None else None,
            "why": outcome["reason"] if outcome is not None else None, "session": session})
    answer["runs"] = shown
    return answer


def outcome_message(o: Outcome, with_lines: bool) -> Message:
    """A worker's outcome for the page (its output's lines only when asked: the first of each distinct output)."""
    out = o.output
    message: Message = {
        "worker": o.worker, "state": o.state.value, "exit_status": o.exit_status,
        "duration": None if o.duration is None else round(o.duration, 3), "session": o.session,
        "reason": visible(o.reason), "digest": None if out is None else out.digest,
        "output_bytes": 0 if out is None else out.size, "cut": bool(out is not None and out.cut),
        "kept_bytes": 0 if out is None else len(out.kept),
    }
    if with_lines and out is not None:
        message["lines"] = gather.shown_lines(bytes(out.kept)) if out.size else []
    return message


def end_message(run_id: str, state: str, outcomes: list[Outcome]) -> Message:
    """The gathered answer, as ``slaveshell run`` prints it (slaveshell.fleet.gather.render), in parts."""
    groups = [{"digest": o.output.digest if o.output is not None else None, "workers": workers,
               "header": visible(count(workers))} for workers, o in gather.groups(outcomes)]
    exits: dict[int, list[str]] = {}
    for o in outcomes:
        if o.state is State.FAILED and o.exit_status is not None:
            exits.setdefault(o.exit_status, []).append(o.worker)
    not_ran = []
    for st in (State.TIMED_OUT, State.INTERRUPTED, *gather.NOT_RAN):
        names = [o.worker for o in outcomes if o.state is st]
        if names:
            reasons = sorted({o.reason for o in outcomes if o.state is st and o.reason})
            not_ran.append({"state": st.value, "workers": visible(fold(names)),
                            "reasons": [visible(r) for r in reasons[:gather.SUMMARY_NAMES]]})
    return {"type": "run_end", "run": run_id, "state": state, "summary": gather.summary(outcomes),
            "exit_status": gather.exit_status(outcomes), "groups": groups,
            "exits": [{"status": s, "workers": visible(fold(w))} for s, w in sorted(exits.items())],
            "not_ran": not_ran}


class WebRun:
    """A fleet run asked for on one page's socket: a `RunWatcher` writing to it (`send`), the operator's Ctrl-C
    (`stop`), the socket's loss (`lost`)."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        self.send = send
        self.run: FleetRun | None = None
        self.listed: list[Outcome] = []
        self.stopped = False  # the Stop button came before the run started
        self.gone = False  # the socket closed
        self._digests: set[str] = set()  # outputs whose lines the page has
        self._outcomes: list[Outcome] | None = None  # the run's, when it ended before `start` had it

    @deferred
    async def start(self, master: BuildMaster, service: WebHost, who: WebIdentity, info: UserInfo,
                    message: Message) -> None:
        ask = decode(message)
        among = await gate(master, service, who, info)
        if not among:
            raise access.Refused("there is no worker here that you may act on (slaveshell's policy and Buildbot's "
                                 "authz give you none)")
        started: Started = await service.fleet.run(who, ask, self, among)
        run = self.run = started.run
        self.listed = started.listed
        self.send({"type": "run_started", "run": run.id, "targets": run.scheduler.order,
                   "batch": run.scheduler.batch, "listed": [outcome_message(o, False) for o in started.listed]})
        if self._outcomes is not None:
            self._end(run, self._outcomes)
        elif self.gone or self.stopped:
            run.leave()

    def stop(self) -> None:
        """The Stop button: nothing more starts, what runs is ended (HUP, TERM, KILL), as Ctrl-C."""
        if self.run is None:
            self.stopped = True
        else:
            self.run.interrupt()

    def lost(self) -> None:
        self.gone = True
        if self.run is not None:
            self.run.leave()

    # -- RunWatcher ------------------------------------------------------------------------------

    def progress(self, event: Progress) -> None:
        fields: Message = {"type": "progress", "worker": event.worker, "phase": event.phase.value,
                           "session": event.session, "elapsed": round(event.elapsed, 3),
                           "last_line": gather.shown_lines(event.last_line)[0] if event.last_line else ""}
        if event.phase is Phase.DONE and event.outcome is not None:
            out = event.outcome.output
            first = out is not None and out.digest not in self._digests
            if out is not None:
                self._digests.add(out.digest)
            fields["outcome"] = outcome_message(event.outcome, first)
        if event.note is not None:
            fields["note"] = visible(event.note[:MAX_NOTE])
        self.send(fields)

    def finished(self, outcomes: list[Outcome]) -> None:
        if self.run is None:
            # A run that ended as it started (no targets, every session refused at once): told once
            # run_started is sent.
            self._outcomes = outcomes
            return
        self._end(self.run, outcomes)

    def _end(self, run: FleetRun, outcomes: list[Outcome]) -> None:
        state = "interrupted" if run.scheduler.stopping else "ended"
        self.send(end_message(run.id, state, outcomes + self.listed))

