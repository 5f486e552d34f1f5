"""`OperatorAPI`: every operation an operator can ask of the master, whatever the door they came in by.

Operations: workers, open, attach (join, resume, watch), sessions, kill, release, history, transcript,
search. Each takes the operator's `Identity` (who they are, established by the door: the kernel's peer
credentials on the UNIX socket) and fails only with `OperatorError`, whose message is meant for the operator
and whose `kind` says what went wrong. A viewer's end of a session is a `ViewerSink`; each door (the
framed door, master_side.shell_socket.door; the web door, master_side.www) provides its own, calls the `View` that
open and attach return with the operator's messages, and maps errors to its wire answers.

Authorization is asked of the policy (slaveshell.policy); bounds per operator and per session are checked
here, bounds per connection by the door.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from twisted.internet import defer
from twisted.logger import Logger

from master_side.audit.rows import SearchHit, SessionRow, TranscriptChunk
from master_side.audit.trail import RecordingError
from master_side.cluster.records import MAX_HITS
from master_side.cluster.stream import Refused
from master_side.glue.buildbot import BuildbotGlue, RouteError
from master_side.holds.moderator_notices import APPROVALS_PER_MINUTE, OPENED, NoticePace
from master_side.holds.step import MAX_WAITING, MAX_WAITING_PER_OPERATOR, Hold, Holds, NotHeld, hold_ahead
from master_side.operators.approvals import USED as APPROVAL_USED
from master_side.operators.approvals import ApprovalRequest, Approvals, Approved, Kind, Leaving
from master_side.operators.copy_calls import CopyOperations, Transfers
from master_side.operators.hold_calls import extend_hold, list_holds
from master_side.operators.routed import RoutedHandle, operator_error
from master_side.operators.terms import ErrorKind, Handle, OperatorError, View, ViewerSink, database_unavailable
from master_side.sessions.model import Viewer, new_session_id
from master_side.sessions.registry import SessionRegistry
from master_side.sessions.session import MasterSession
from master_side.sessions.worker_link import WorkerPeer, open_on_worker
from slaveshell.fleet.script import SCRIPT_RUNNER, part_text
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.plumbing.remote import deflate_known, link_rtt
from slaveshell.vocabulary.deflate import Deflater
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Action, Identity, Policy, same_operator, vouching_master
from slaveshell.vocabulary.protocol import MAX_CHUNK, OpenRequest, ProtocolError, Role
from slaveshell.vocabulary.windows import WINDOW_MAX, WindowBudget

if TYPE_CHECKING:
    from buildbot.process.botmaster import BotMaster
    from buildbot.worker.protocols.pb import Connection as WorkerConnection

    from master_side.audit.trail import AuditTrail
    from master_side.cluster.part import ClusterPart
    from master_side.operators.gate import ConnectionGate

log = Logger()

# The API's vocabulary (master_side.operators.terms) is importable from here too.
__all__ = ["ErrorKind", "Handle", "OperatorAPI", "OperatorError", "View", "ViewerSink"]


class OperatorAPI(CopyOperations):  # copy: `slaveshell cp` (master_side.operators.copy_calls)
    def __init__(self, registry: SessionRegistry, glue: BuildbotGlue, gate: ConnectionGate,
                 trail: Callable[[], AuditTrail | None], botmaster: Callable[[], BotMaster], holds: Holds) -> None:
        self.registry = registry
        self.holds = holds
        self.glue = glue
        self.gate = gate
        self._trail = trail
        self._botmaster = botmaster
        self.policy = Policy.default()
        # How long a worker may take to start a session before the operator is told it did not answer.
        self.open_timeout = 30.0
        # How long `--build ID` waits for a running build to reach its HoldForShell step.
        self.hold_wait = 600.0
        self._waiting_by_uid: dict[int, int] = {}  # operators waiting for a build to be held, by uid
        self.transfers = Transfers(lambda: self.registry.clock())  # `slaveshell cp` (master_side.operators.copy_calls)
        self.cluster: ClusterPart | None = None  # a multi-master site's router (master_side.cluster.part)
        self._windows = WindowBudget(0, 0)  # sized from the gate's bounds at each use: window_budget
        # A four-eyes session waits for a moderator (why): the reporters' notice, paced (the service sets it:
        # master_side.holds.moderator_notices).
        self.moderator_wanted: Callable[[MasterSession, str], None] = lambda session, why: None
        self.moderator_pace = NoticePace(lambda: self.registry.clock())
        # What a four-eyes worker would run before anyone watches waits for a moderator's approval
        # (master_side.operators.approvals); the reporters are told as for a session (`approval_wanted`), at a pace
        # of their own: a burst of sessions' notices does not hold back a request's, nor the other way round.
        self.approval_pace = NoticePace(lambda: self.registry.clock(), APPROVALS_PER_MINUTE)
        self.approvals = Approvals(lambda: self.policy, _reactor, self._trail, self.refuse)
        self.approvals.wanted = self._approval_wanted
        self.approval_wanted: Callable[[ApprovalRequest], None] = lambda request: None

    def window_budget(self) -> WindowBudget:
        """What sessions' windows may hold above their base windows (slaveshell.vocabulary.windows): per stream half
        a connection's output bound (a window's output may wait in the master's buffer for a slow client, and a
        connection over its bound is dropped), in all half the bound on all connections' output."""
        bounds = self.gate.bounds
        self._windows.per_stream = min(WINDOW_MAX, bounds.connection_buffer // 2)
        self._windows.total = bounds.buffered_total // 2
        return self._windows

    @property
    def trail(self) -> AuditTrail:
        trail = self._trail()
        if trail is None:
            raise OperatorError(ErrorKind.UNAVAILABLE, "the master's shell service is not running")
        return trail

    def trail_or_none(self) -> AuditTrail | None:
        """The audit trail, or None while the service is not running."""
        return self._trail()

    # -- workers and sessions ----------------------------------------------------------------------

    def workers(self, who: Identity) -> list[dict[str, object]]:
        """The workers `who` has some right on (`WorkerFacts`), with whether they may open a shell there."""
        result: list[dict[str, object]] = []
        sessions = list(self.registry)
        for facts in self.glue.workers():
            name = facts.name
            # Only the workers this operator has some right on (as history shows only what they may replay).
            if not any(self.policy.may(who, action, name).allowed for action in Action):
                continue
            result.append({
                "name": name, "connected": facts.connected, "shell": facts.shell, "paused": facts.paused,
                "system": facts.system, "info": facts.info,
                "allowed": self.policy.may(who, Action.SHELL, name).allowed,
                "sessions": sum(1 for s in sessions if s.worker == name),
                "pb_references": facts.pb_references,
            })
        return result

    def sessions(self, who: Identity) -> list[dict[str, object]]:
        """The live sessions `who` may watch (their own, and others' on workers where they have 'watch')."""
        out: list[dict[str, object]] = []
        trail = self._trail()
        for s in sorted(self.registry.live(), key=lambda s: s.started):
            if not self.policy.may(who, Action.WATCH, s.worker, owner=s.identity).allowed:
                continue
            out.append({
                "id": s.id, "worker": s.worker, "operator": s.identity.user, "uid": s.identity.uid,
                "started": s.started, "state": s.state.value, "command": s.request.command,
                "reason": s.request.reason,
                "moderated_by": None if s.moderation is None else [str(g) for g in s.moderation.moderated_by],
                "held": s.moderation is not None and s.moderation.held,
                "viewers": [{"user": v.identity.user, "role": v.role.value,
                             **({"moderator": True} if s.moderation and v in s.moderation.moderators else {})}
                            for v in s.viewers],
                "idle": round(trail.reactor.seconds() - s.last_activity, 1) if trail else 0.0,
            })
        return out

    # -- open --------------------------------------------------------------------------------------

    def refuse(self, who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError:
        """The operator gets `message` every time; the audit index and the log get it at most once per uid and kind of
        refusal per interval, with a count of the others (master_side.audit.refusals.RefusalAudit): a user with no
        rights cannot flood the index, the log, or the write queue that holds real sessions' rows while the database is
        away."""
        if self.gate is not None:
            self.gate.audit(who, "refused", message, worker)
        else:
            self.trail.refused(who, worker, message)
        return OperatorError(kind, message)

    @deferred
    async def open_anywhere(self, who: Identity, request: OpenRequest, sink: ViewerSink) -> Handle | None:
        """`open`, or on a multi-master site, for a worker not attached here that another master holds: the
        session that master opens and serves for `who`, under its own policy (master_side.cluster.relay)."""
        cluster = self.cluster
        if cluster is not None and not cluster.attached_here(request.worker):
            try:
                routed = await cluster.open(who, request, sink)
            except Refused as e:
                raise operator_error(e) from None
            if routed is not None:
                return RoutedHandle(routed)
        view: View | None = await self.open(who, request, sink)
        return view

    @deferred
    async def attach_anywhere(self, who: Identity, sink: ViewerSink, session_id: object, mode: object
                              ) -> tuple[Handle, dict[str, object]]:
        """`attach`, or on a multi-master site, for a session not live here, the session another master holds
        (master_side.cluster.relay): the handle, and what the door answers of it."""
        try:
            view = self.attach(who, sink, session_id, mode)
        except OperatorError as e:
            cluster = self.cluster
            if e.kind is not ErrorKind.NOT_FOUND or cluster is None or not isinstance(session_id, str):
                raise
            holder = await self._site_holder(session_id)
            try:
                routed = await cluster.attach(who, sink, session_id, str(mode), holder)
            except Refused as refused:
                raise operator_error(refused) from None
            if routed is None:
                raise
            handle = RoutedHandle(routed)
            return handle, {"session": routed.session_id, "role": routed.role, "worker": routed.worker,
                            "size": list(routed.size), "input_window": routed.input_grant}
        return view, {"session": view.session.id, "role": view.viewer.role.value, "worker": view.session.worker,
                      "size": list(view.session.size), "input_window": view.viewer.input_grant}

    def attach_for_master(self, who: Identity, sink: ViewerSink, session_id: str, mode: str) -> View:
        """`attach` for the operator of another master of the site, as that master vouches for them
        (master_side.cluster.serve): its refusals as the cluster's."""
        try:
            return self.attach(who, sink, session_id, mode)
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None

    @deferred
    async def open_for_master(self, who: Identity, request: OpenRequest, sink: ViewerSink,
                              run_id: str | None = None, script: bytes | None = None) -> View | None:
        """`open` for the operator of another master of the site, as that master vouches for them
        (master_side.cluster.serve): its refusals as the cluster's. With `run_id`, a part of that master's fleet
        run (the `run` right), and `script`, the run's script when the part runs one: on a four-eyes worker this
        master's moderators approve the part as they would a run of its own (the command, or the script's size,
        sha256 and text); the part's input is then checked against it (master_side.cluster.part_input.PartInput).
        A script's part without its script (from an older master) is refused on a four-eyes worker. A session in a
        held build (`--build`) is refused with where the build is held (its release and its hold's extension are
        this master's operators' calls)."""
        if request.build is not None:
            message = self._held_here(who, request.build)
            raise Refused(self.refuse(who, request.worker, ErrorKind.UNAVAILABLE, message).kind.value, message)
        what = None
        if run_id is not None:
            master = vouching_master(who) or "?"
            runs_script = request.command == SCRIPT_RUNNER
            if runs_script and script is None and self.policy.may(who, Action.RUN, request.worker).moderated_by:
                message = (f"a fleet run's part on {request.worker} needs a moderator's approval (four eyes) of its "
                           f"script, which master {master} did not send: run it on the worker's own master")
                raise Refused(self.refuse(who, request.worker, ErrorKind.DENIED, message).kind.value, message)
            what = part_text(f"{run_id} of master {master}", request.command or "",
                             script if runs_script else None, sorted(request.env.items()), request.cwd)
        try:
            view: View | None = await self.open(who, request, sink, run_id, what)
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        return view

    def _held_here(self, who: Identity, build: int) -> str:
        """The refusal of a routed `--build`: where the build is held, when it is held here and `who` may open a
        shell on its worker (else only that it is not held here)."""
        name = self.cluster.config.master if self.cluster is not None else "?"
        here = f"master {name} ({self.trail.master_name})"
        hold = self.holds.get(build)
        if hold is None or not self.policy.may(who, Action.SHELL, hold.worker).allowed:
            return (f"build {build} is not held for a shell on {here}; a session in a held build (--build) is not "
                    "routed between masters: open it on the master that runs the build")
        return (f"build {build} is held on worker {hold.worker} on {here}: a session in a held build (--build) is "
                f"not routed between masters (its release and extension stay there): open it on master {name}")

    @deferred
    async def open(self, who: Identity, request: OpenRequest, sink: ViewerSink, run_id: str | None = None,
                   what: str | None = None, withdrawn: Leaving | None = None,
                   approved: Approved | None = None) -> View | None:
        """Open a session for `who` (fires a View, or None when the operator left while it started: the session
        then starts detached). With `run_id`, the session is a worker's part of that fleet run (master_side.fleet):
        the policy's `run` right is asked, not `shell`; `what` is how its approval request shows it on a four-eyes
        worker, and `withdrawn` tells when the run no longer waits for it; `approved`: the approval the run asked
        for first (`approval`), which this part starts with. Raises OperatorError."""
        trail = self.trail
        asked = _Asked(run_id, what, withdrawn, approved, holding=approved)
        try:
            # Who the session is for comes from the door, never from the client.
            conn, request, moderated_by, approved = await self._admit(
                who, replace(request, operator=who.user), sink, Action.RUN if run_id is not None else Action.SHELL,
                asked)
            if sink.gone:
                # The operator left (Ctrl-C, a lost connection) before anything was started: start nothing.
                raise OperatorError(ErrorKind.STOPPED, "the operator left before the session opened")
            session = MasterSession(request, who, on_end=self.registry.ended, session_id=new_session_id(),
                                    clock=self.registry.clock)
            session.run_id = run_id
            hold = self.holds.get(request.build)
            if hold is not None:
                session.build = {"build_id": hold.build_id, "builder": hold.builder,
                                 "build_number": hold.build_number}
            # Recorded before served: the transcript and the index row exist before the worker is asked.
            try:
                recorder = await trail.begin(session)
            except RecordingError as e:
                raise OperatorError(ErrorKind.UNAVAILABLE, str(e)) from None
        except Exception as e:
            self.approvals.refused_after(asked.holding, e)  # approved, and what it approved does not start
            raise
        if recorder is not None:
            session.recorder = recorder
            recorder.on_error = lambda error: self.registry.recording_failed(session, error)
        session.viewer_events = trail
        if approved is not None:
            trail.approval(APPROVAL_USED, session.worker, approved.moderator,
                           f"request {approved.request.id} approved by {approved.moderator.user}", session.id)

        # A worker this connection told before sends deflated output from the first message (WorkerPeer).
        session.deflated_output = deflate_known(getattr(conn.mind, "broker", None))
        reply = await open_on_worker(conn, session, request, self.open_timeout, self.registry.peer_error)
        if reply.ref is None:
            trail.not_opened(session, reply.error)
            # The worker's own refusal (its owner's options) is a denial; no answer is the worker unavailable.
            raise OperatorError(ErrorKind.DENIED if reply.refused else ErrorKind.UNAVAILABLE, reply.error)
        worker = WorkerPeer(reply.ref, lost=lambda: self.registry.worker_lost(session),
                            refused=lambda text: self.registry.worker_refused(session, text), lean=reply.lean,
                            deflate=reply.deflate)
        session.stdout_closes = reply.stdout_closes
        session.deflated_output = session.deflated_output or reply.deflate
        if reply.deflate:  # it takes input deflated too: sent so while the link is slow, as the worker does
            broker = getattr(conn.mind, "broker", None)
            session.input_deflater = worker.deflater = Deflater(
                (lambda: None) if reply.deflate_always else lambda: link_rtt(broker, session.input_min_rtt))
        session.grant_windows(self.window_budget(), reply.window, reply.max_input)
        if reply.window:
            worker.grant(session.output_grant)
        owner = session.start(sink, worker)
        self.registry.add(session, worker)
        # A four-eyes session: its input is held from the start, before anyone types; an approved command
        # without a terminal takes its input (a run's script, a pipe) as approved; a login shell never does.
        if moderated_by and (approved is None or request.pty or request.command is None):
            session.hold_input(moderated_by, lambda why: self._wanted(session, why))
        if request.pause:
            self.registry.pause(session)
        if hold is not None:
            hold.listeners.append(lambda why: self.registry.build_released(session, why))
            hold.stepped_in(self.registry.clock())
        trail.opened(session)
        # Never the command: logs are world-readable, session content belongs in the audit store only.
        log.info("slaveshell session {sid}: {who} opened {what} on {worker}", sid=session.id, who=visible(who),
                 what="a command" if request.command else "a login shell", worker=visible(request.worker))
        if sink.gone:
            # The operator left while the worker was starting the session. A login shell starts detached, to be
            # resumed; a command ends (its operator was interrupted, or is gone: nobody waits for its output).
            session.remove_viewer(owner, "connection lost")
            if not request.pty:
                session.close("the operator left before the session opened")
            return None
        self._bind(session, owner, sink)
        told = hold.deadline_notice() if hold is not None and request.command is None else None
        if told is not None:
            session.notice(told)
        if recorder is None:
            session.notice("WARNING: this session is NOT being recorded (the audit trail is unavailable)")
        return View(session, owner, self.registry.peer_error)

    @deferred
    async def _admit(self, who: Identity, request: OpenRequest, sink: ViewerSink, action: Action = Action.SHELL,
                     asked: _Asked | None = None
                     ) -> tuple[WorkerConnection, OpenRequest, tuple[str | int, ...], Approved | None]:
        """The policy's `action` right, the route to the worker (waiting for a build's hold if need be), the
        workdir and the quotas, and on a four-eyes worker a moderator's approval of what the request itself would
        run: fires (the worker's connection, the request with its workdir, the groups that moderate it when the
        rule that allows it makes it a four-eyes session, and the approval), or raises OperatorError (audited as
        a refusal)."""
        asked = asked or _Asked()
        decision = self.policy.may(who, action, request.worker)
        if request.reason is None:
            decision = decision.without_reason(request.worker)
        if not decision.allowed:
            raise self.refuse(who, request.worker, ErrorKind.DENIED, f"permission denied: {decision.reason}")
        try:
            conn = self.glue.route(request.worker)
            if request.build is not None and request.build not in self.holds.held:
                if not (await self._wait_for_hold(who, request.worker, request.build, sink)):
                    raise OperatorError(ErrorKind.STOPPED, "stopped waiting for the build to be held")
                conn = self.glue.route(request.worker)
            request = self.glue.workdir_for(request, self.holds.held)
        except RouteError as e:
            why = str(e) if self.cluster is None else await self.cluster.refusal(request.worker, str(e))
            raise self.refuse(who, request.worker, ErrorKind.UNAVAILABLE, why) from None
        self._quota(who, request.worker)
        # A four-eyes session holds what is typed; what the request itself would run waits for a moderator's
        # approval: its command, or the operator's own -e variables (not yet the build's: PROMPT_COMMAND,
        # BASH_ENV or LD_PRELOAD run code at the start).
        approved = None
        if decision.moderated_by and (request.command is not None or request.env):
            if sink.gone:  # the operator left while it was routed: nothing to ask for
                raise OperatorError(ErrorKind.STOPPED, "the operator left before the session opened")
            given = asked.approved
            if given is not None and _approves(given, who, request.worker, asked.run_id):
                approved = given  # asked by the run before the part took its place (`approval`)
            else:
                approved = asked.holding = await self._ask(who, request, sink, decision.moderated_by, asked)
            # The policy may have changed (a reconfig), the worker gone, or the operator's sessions grown, while
            # the request waited.
            again = self.policy.may(who, action, request.worker)
            if not again.allowed:
                raise self.refuse(who, request.worker, ErrorKind.DENIED, f"permission denied: {again.reason}")
            try:
                conn = self.glue.route(request.worker)
            except RouteError as e:
                raise self.refuse(who, request.worker, ErrorKind.UNAVAILABLE, str(e)) from None
            self._quota(who, request.worker)
        return conn, request, decision.moderated_by, approved

    @deferred
    async def approval(self, who: Identity, request: OpenRequest, sink: ViewerSink, run_id: str, what: str,
                       withdrawn: Leaving) -> Approved | None:
        """A fleet run's part on a four-eyes worker: the moderator's approval, asked before the part takes its
        place in the run's batch (then given to `open`); None when the policy asks none of `who` there (or
        refuses the part: `open` says so). Raises OperatorError: denied, expired, refused (the bounds),
        withdrawn (`withdrawn`, or the operator gone)."""
        decision = self.policy.may(who, Action.RUN, request.worker)
        if not decision.allowed or not decision.moderated_by:
            return None
        if sink.gone:
            raise OperatorError(ErrorKind.STOPPED, "the operator left before the session opened")
        return await self._ask(who, replace(request, operator=who.user), sink, decision.moderated_by,
                               _Asked(run_id, what, withdrawn))

    def _ask(self, who: Identity, request: OpenRequest, sink: ViewerSink, moderated_by: tuple[str | int, ...],
             asked: _Asked) -> defer.Deferred[Approved]:
        leaving = [sink.on_disconnect] + ([asked.withdrawn] if asked.withdrawn is not None else [])
        return self.approvals.ask(
            who, request.worker, Kind.RUN if asked.run_id is not None else Kind.COMMAND,
            asked.what or _request_text(request), request.reason, moderated_by, sink.waiting, leaving, asked.run_id,
            place=asked.run_id is not None)  # a run's part waits for a free place, where a command is refused

    def _quota(self, who: Identity, worker: str) -> None:
        quota = self.policy.quota(who, worker, self.registry.live(), self.registry.limits.per_worker,
                                  self.registry.limits.per_operator)
        if quota:
            raise self.refuse(who, worker, ErrorKind.LIMIT, quota)

    def _bind(self, session: MasterSession, viewer: Viewer, sink: ViewerSink) -> None:
        """Tie the sink's failures and disconnection to `viewer`."""
        viewer.connection = sink.connection
        sink.on_failure(lambda refusal: self.registry.viewer_failed(session, viewer, refusal))
        self.registry.hook(session, sink.on_disconnect(lambda: session.viewer_lost(viewer)))

    @deferred
    async def _wait_for_hold(self, who: Identity, worker: str, build_id: int, sink: ViewerSink) -> bool:
        """`--build` on a running build whose HoldForShell step is still ahead: tell the operator, then wait for
        the hold, up to `hold_wait` s. True once held (or when there is nothing to wait for:
        `BuildbotGlue.workdir_for` refuses a hold-less or finished build at once); False when the operator left
        while waiting; raises RouteError when the build will not be held."""
        from twisted.internet import reactor

        botmaster = self._botmaster()
        if not hold_ahead(botmaster, build_id, worker):
            return True
        if self.holds.waiters() >= MAX_WAITING:
            raise RouteError(f"build {build_id} is not held yet, and {MAX_WAITING} operators already wait for "
                             "builds to be held (the master's limit): try again once it is held")
        if self._waiting_by_uid.get(who.uid, 0) >= MAX_WAITING_PER_OPERATOR:
            raise RouteError(f"build {build_id} is not held yet, and {who.user} already waits for "
                             f"{MAX_WAITING_PER_OPERATOR} builds (the master's limit per operator)")
        self._waiting_by_uid[who.uid] = self._waiting_by_uid.get(who.uid, 0) + 1
        sink.waiting(f"build {build_id} is still running; waiting for it to be held (Ctrl-C stops waiting)")
        waited: defer.Deferred[Hold] = self.holds.wait_for(botmaster, build_id, self.hold_wait, reactor)
        undo = sink.on_disconnect(waited.cancel)
        try:
            await waited
        except defer.CancelledError:
            return False
        except NotHeld as e:
            raise RouteError(str(e)) from None
        finally:
            undo()
            left = self._waiting_by_uid.pop(who.uid, 1) - 1
            if left:
                self._waiting_by_uid[who.uid] = left
        return not sink.gone

    # -- attach ------------------------------------------------------------------------------------

    def attach(self, who: Identity, sink: ViewerSink, session_id: object, mode: object) -> View:
        """`slaveshell attach` (join, or resume a detached session) and `slaveshell watch`. Mode "resume" is an
        attach of one's own session only (a page's reattach without a click, routed from another master). A fleet
        run's part is watched, never joined or resumed (what it runs is the run's, approved as such)."""
        if not isinstance(session_id, str) or mode not in ("attach", "watch", "resume"):
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: attach needs a sink, a session id and a mode")
        session = self.registry.get(session_id)
        if session is None:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no live session {session_id}")
        if mode != "watch" and session.run_id is not None:
            self.gate.audit(who, "refused", f"permission denied: {mode} {session_id}: a fleet run's part",
                            session.worker)
            raise OperatorError(ErrorKind.DENIED, f"permission denied: session {session_id} is a part of fleet run "
                                                  f"{session.run_id}: it may be watched, not joined or resumed")
        if mode == "resume" and not same_operator(session.identity, who):
            self.gate.audit(who, "refused", f"permission denied: resume {session_id}: not the operator's own",
                            session.worker)
            raise OperatorError(ErrorKind.DENIED, f"session {session_id} is not yours: join it with the button")
        if mode == "watch":
            role, action = Role.WATCH, Action.WATCH
        elif session.owner is None:
            # Resuming a detached session: its own operator may (with the shell right), others need join.
            role, action = Role.OWNER, Action.RESUME
        else:
            role, action = Role.JOIN, Action.JOIN
        decision = self.policy.may(who, action, session.worker, owner=session.identity)
        if not decision.allowed:
            # Rate-limited like every refusal; the key is the text before the first colon, so no session id there.
            self.gate.audit(who, "refused", f"permission denied: {mode} {session_id}: {decision.reason}",
                            session.worker)
            raise OperatorError(ErrorKind.DENIED, f"permission denied: {decision.reason}")
        too_many = self.gate.viewer_refusal(who, sink.connection, session, self.registry.live())
        if too_many:
            self.gate.audit(who, "refused", f"view refused: {mode} {session_id}: {too_many}", session.worker)
            raise OperatorError(ErrorKind.LIMIT, too_many)
        not_moderator = self._not_moderator(who, session) if role is Role.WATCH else None
        if not_moderator is not None:
            # Watching is allowed; moderating is not: refused (and audited as such), the view stays read-only.
            self.gate.audit(who, "refused", f"not a moderator: {session_id}: {not_moderator}", session.worker)
        try:
            viewer = session.add_viewer(who, role, sink, moderator=role is Role.WATCH and session.moderation
                                        is not None and not_moderator is None)
        except ProtocolError as e:
            raise OperatorError(ErrorKind.BAD_REQUEST, str(e)) from None
        if not_moderator is not None:
            session.notice(f"you watch without moderating: {not_moderator}; the session's input stays as it "
                           "was", viewer)
        self._bind(session, viewer, sink)
        return View(session, viewer, self.registry.peer_error)

    def _approval_wanted(self, request: ApprovalRequest) -> None:
        """A request waits for a moderator's approval: the reporters are told, as often as the pace allows."""
        if self.approval_pace.take(request.id, first=True):
            self.approval_wanted(request)

    # -- approvals (master_side.operators.approvals) ---------------------------------------------

    def pending_approvals(self, who: Identity, request_id: object = None) -> list[dict[str, object]]:
        return self.approvals.listing(who, request_id)

    def approve(self, who: Identity, request_id: object) -> str:
        return self.approvals.approve(who, request_id)

    def deny(self, who: Identity, request_id: object, reason: object) -> str:
        return self.approvals.deny(who, request_id, reason)

    def _wanted(self, session: MasterSession, why: str) -> None:
        """A four-eyes session waits for a moderator: the reporters are told, as often as the pace allows."""
        if self.moderator_pace.take(session.id, first=why == OPENED):
            self.moderator_wanted(session, why)

    def _not_moderator(self, who: Identity, session: MasterSession) -> str | None:
        """Why `who` may not moderate `session` (None: they may, or it is not a four-eyes session)."""
        moderation = session.moderation
        if moderation is None:
            return None
        return self.policy.may_moderate(who, session.identity, session.worker, moderation.moderated_by)

    # -- kill and release ---------------------------------------------------------------------------

    @deferred
    async def kill_anywhere(self, who: Identity, session_id: object, holder: str | None = None) -> str:
        """`kill`, or on a multi-master site, for a session not live here, the session another master holds: that
        master ends it under its own policy and records it (master_side.cluster.kills); its line, or its refusal.
        `holder`: the master a page watches the session through."""
        missing = OperatorError(ErrorKind.NOT_FOUND, f"no live session {session_id}")
        if holder is None:
            try:
                return self.kill(who, session_id)
            except OperatorError as e:
                if e.kind is not ErrorKind.NOT_FOUND:
                    raise
                missing = e
        cluster = self.cluster
        if cluster is None or not isinstance(session_id, str):
            raise missing
        if holder is None:
            holder = await self._site_holder(session_id)
        try:
            text = await cluster.kills.kill(who, session_id, holder)
        except Refused as refused:
            raise operator_error(refused) from None
        if text is None:
            raise missing
        return text

    @deferred
    async def _site_holder(self, session_id: str) -> str | None:
        """The master of the site that holds live session `session_id` (not live here), as the audit index's row of
        it says (the master that serves a session writes its row first): when the index is the site's shared one,
        only that master is asked to end it or attach to it, so that no other master's answer stands in for its
        holder's. None when the index has no row of it (an index of this master's own, or a row not written yet)
        or cannot be read: each master on the router is then asked in turn. Raises OperatorError: NOT_FOUND when
        the row says the session is not running, UNAVAILABLE when its master is not on the router now."""
        trail, cluster = self.trail_or_none(), self.cluster
        if trail is None or cluster is None:
            return None
        try:
            rows = await trail.store.history(session_id=session_id, limit=1)
        except Exception:
            return None
        if not rows:
            return None
        row = rows[0]
        if row["state"] != "running" or row["master"] == trail.master_name:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no live session {session_id}")
        try:
            return await cluster.records.site_master(row)
        except Refused as refused:
            raise operator_error(refused) from None

    def kill_for_master(self, who: Identity, session_id: str) -> tuple[str, str]:
        """`kill` for the operator of another master of the site, as that master vouches for them
        (master_side.cluster.kills): the line and the session's worker; its refusals as the cluster's."""
        try:
            session = self.registry.get(session_id)
            text = self.kill(who, session_id, f"asked through the router by master {vouching_master(who)}")
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        assert session is not None
        return text, session.worker

    def kill(self, who: Identity, session_id: object, via: str = "") -> str:
        """End a live session of this master: its owner, a moderator of a four-eyes session, or who has the kill
        right on its worker; recorded (`via`: how the call came, for the audit event)."""
        if not isinstance(session_id, str):
            raise OperatorError(ErrorKind.BAD_REQUEST, "kill needs a session id")
        session = self.registry.get(session_id)
        if session is None:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no live session {session_id}")
        # A four-eyes session's moderators may end it, the kill right or not.
        moderator = session.moderation is not None and self._not_moderator(who, session) is None
        if not moderator and not self.policy.may(who, Action.KILL, session.worker, owner=session.identity).allowed:
            raise OperatorError(ErrorKind.DENIED,
                                f"permission denied: {who} may not kill sessions on worker {session.worker}")
        as_whom = " (moderator)" if moderator else ""
        session.notice(f"session killed by {who.user}{as_whom}")
        session.close(f"killed by {who.user}{as_whom}")
        trail = self._trail()
        if trail is not None:
            trail.killed(session, who, ", ".join(d for d in ("as moderator" if moderator else "", via) if d))
        return f"session {session_id} on {session.worker}: hangup sent (then TERM, then KILL)"

    def release(self, who: Identity, build_id: object) -> str:
        if not isinstance(build_id, int) or isinstance(build_id, bool):
            raise OperatorError(ErrorKind.BAD_REQUEST, "release needs a build id")
        hold = self.holds.get(build_id)
        if hold is None:
            raise OperatorError(ErrorKind.NOT_FOUND, f"build {build_id} is not held")
        if not self.policy.may(who, Action.RELEASE, hold.worker).allowed:
            raise OperatorError(ErrorKind.DENIED,
                                f"permission denied: {who} may not release builds on worker {hold.worker}")
        hold.release(f"released by {who.user}")
        trail = self._trail()
        if trail is not None:
            trail.released(hold, who)
        return f"build {hold.builder} #{hold.build_number} (id {build_id}) released; it finishes now"

    def held(self, who: Identity) -> list[dict[str, object]]:
        """The held builds `who` may step into or watch, with their deadlines (master_side.operators.hold_calls)."""
        return list_holds(self.holds, self.policy, who, self.registry.clock())

    def extend(self, who: Identity, build_id: object, seconds: object) -> dict[str, object]:
        """Extend a build's hold (master_side.operators.hold_calls): text and the new deadline."""
        return extend_hold(self.holds, self.policy, self._trail(), who, build_id, seconds, self.registry.clock(),
                           self.refuse)

    # -- the audit trail -----------------------------------------------------------------------------

    @deferred
    async def history(self, who: Identity, filters: object) -> list[SessionRow]:
        """Index rows (newest first) matching `filters` that `who` may replay."""
        trail = self.trail
        if not isinstance(filters, dict):
            raise OperatorError(ErrorKind.BAD_REQUEST, "history filters must be a dict")
        worker = _opt_str(filters.get("worker"), "worker")
        user = _opt_str(filters.get("user"), "user")
        session_id = _opt_str(filters.get("session"), "session")
        reason = _opt_str(filters.get("reason"), "reason")
        run_id = _opt_str(filters.get("run"), "run")
        build_id = filters.get("build")
        if build_id is not None and (not isinstance(build_id, int) or isinstance(build_id, bool)):
            raise OperatorError(ErrorKind.BAD_REQUEST, "build must be a build id")
        since = filters.get("since")
        if since is not None and not isinstance(since, (int, float)):
            raise OperatorError(ErrorKind.BAD_REQUEST, "since must be a number of seconds since the epoch")
        limit = filters.get("limit", 200)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise OperatorError(ErrorKind.BAD_REQUEST, "limit must be between 1 and 10000")
        try:
            rows = await trail.store.history(worker=worker, operator=user, since=since,
                                             session_id=session_id, build_id=build_id, limit=limit,
                                             reason=reason, run_id=run_id)
        except Exception as e:
            raise database_unavailable(e) from None
        return [r for r in rows if self.policy.may(who, Action.REPLAY, r["worker"]).allowed]

    @deferred
    async def site_history(self, who: Identity, filters: object) -> list[SessionRow]:
        """`history`; on a multi-master site, each row with the name in the site of the master that recorded it
        ("site_master": None when that master is not on the router now). Which rows `who` sees is this master's
        policy, for every master's rows (docs/multi-master.md, History across the site)."""
        rows = await self.history(who, filters)
        cluster = self.cluster
        if cluster is not None:
            names = await cluster.records.names()
            names[self.trail.master_name] = cluster.link.name
            for row in rows:
                row["site_master"] = names.get(str(row.get("master")))
        return rows

    @deferred
    async def transcript(self, who: Identity, session_id: object, offset: object) -> TranscriptChunk:
        """Up to MAX_CHUNK bytes of a session's transcript from `offset`: {"data": bytes, "eof": bool}."""
        trail = self.trail
        if not isinstance(session_id, str) or not isinstance(offset, int) or offset < 0:
            raise OperatorError(ErrorKind.BAD_REQUEST, "transcript needs a session id and an offset")
        rows = await self.history(who, {"session": session_id, "limit": 1})
        if not rows:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no session {session_id} that you may replay")
        row = rows[0]
        cluster = self.cluster
        if cluster is not None and row.get("master") != trail.master_name:
            # Recorded by another master of the site: read there, under its policy (master_side.cluster.records).
            try:
                chunk = await cluster.records.transcript(who, row, offset)
            except Refused as e:
                raise operator_error(e) from None
            return {"data": cast(bytes, chunk["data"]), "eof": bool(chunk["eof"])}
        return await self._transcript_here(row, offset)

    @deferred
    async def _transcript_here(self, row: SessionRow, offset: int) -> TranscriptChunk:
        trail = self.trail
        path = trail.transcript_path(row)
        if path is None or not os.path.exists(path):
            raise OperatorError(ErrorKind.NOT_FOUND, f"session {row['id']} has no transcript on this master")
        data = await trail.read_chunk(path, offset, MAX_CHUNK)
        return {"data": data, "eof": len(data) < MAX_CHUNK}

    @deferred
    async def transcript_for_master(self, who: Identity, session_id: str, offset: int) -> dict[str, object]:
        """`transcript` for the operator of another master of the site, as that master vouches for them
        (master_side.cluster.records): only of a session this master recorded, under its policy; with the
        session's worker (for the audit). Its refusals as the cluster's."""
        try:
            rows = await self.history(who, {"session": session_id, "limit": 1})
            if not rows or rows[0].get("master") != self.trail.master_name:
                raise OperatorError(ErrorKind.NOT_FOUND, f"master {self._site_name()} recorded no session "
                                                         f"{session_id} that {who} may replay")
            chunk = await self._transcript_here(rows[0], offset)
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        return {"data": chunk["data"], "eof": chunk["eof"], "worker": rows[0]["worker"]}

    def _site_name(self) -> str:
        cluster = self.cluster
        return cluster.link.name if cluster is not None else self.trail.master_name

    @deferred
    async def search(self, who: Identity, text: object, filters: object) -> list[SearchHit]:
        """Transcript lines containing `text`, in the sessions matching `filters` that `who` may replay."""
        trail = self.trail
        if not isinstance(text, str) or not text or len(text) > 1024:
            raise OperatorError(ErrorKind.BAD_REQUEST, "search needs a text of 1 to 1024 characters")
        rows = await self.history(who, filters if isinstance(filters, dict) else {})
        return await trail.search(rows, text, limit=MAX_HITS)

    @deferred
    async def site_search(self, who: Identity, text: object, filters: object) -> dict[str, object]:
        """`search`; on a multi-master site, the transcripts other masters recorded searched there, each under
        its own policy (master_side.cluster.records): {"rows": hits, "unanswered": masters that did not answer}.
        The reasons of every row are searched here (the index is shared)."""
        cluster = self.cluster
        if cluster is None:
            return {"rows": await self.search(who, text, filters)}
        if not isinstance(text, str) or not text or len(text) > 1024:
            raise OperatorError(ErrorKind.BAD_REQUEST, "search needs a text of 1 to 1024 characters")
        checked = filters if isinstance(filters, dict) else {}
        rows = await self.history(who, checked)
        hits = await self.trail.search(rows, text, limit=MAX_HITS)
        others = [r for r in rows if r.get("master") != self.trail.master_name]
        if not others:
            return {"rows": hits}
        remote, unanswered = await cluster.records.search(who, text, checked, others)
        order = {r["id"]: i for i, r in enumerate(rows)}
        merged = sorted(hits + remote, key=lambda h: order.get(h["session"], len(order)))
        return {"rows": merged[:MAX_HITS], "unanswered": unanswered}

    @deferred
    async def search_for_master(self, who: Identity, text: str, filters: dict[str, object]) -> list[SearchHit]:
        """`search` for the operator of another master of the site, in the transcripts this master recorded (the
        rows' reasons are searched by the caller), under this master's policy. Its refusals as the cluster's."""
        trail = self.trail
        try:
            rows = await self.history(who, filters)
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        mine = [r for r in rows if r.get("master") == trail.master_name]
        hits = await trail.search(mine, text, limit=MAX_HITS + len(mine))
        return [h for h in hits if h["stream"] != "reason"][:MAX_HITS]

    @deferred
    async def site_sessions(self, who: Identity) -> dict[str, object]:
        """`sessions`; on a multi-master site, with every other master's live sessions that `who` may watch
        there (each row with its "master"), and the masters that did not answer named."""
        rows = self.sessions(who)
        cluster = self.cluster
        if cluster is None:
            return {"rows": rows}
        for row in rows:
            row["master"] = cluster.link.name
        remote, unanswered = await cluster.records.sessions(who)
        merged = sorted(rows + remote, key=lambda r: cast(float, r["started"]))
        return {"rows": merged, "unanswered": unanswered}


@dataclass
class _Asked:
    """What an approval request of a fleet run's part says besides the request (master_side.fleet.operations):
    the run, how it shows what runs, when the run no longer waits for it, and the approval the run asked for
    first."""

    run_id: str | None = None
    what: str | None = None
    withdrawn: Leaving | None = None
    approved: Approved | None = None  # asked by the run before the part took its place
    holding: Approved | None = None  # the approval `open` holds and has not used yet (`Approvals.unused` if never)


def _approves(approved: Approved, who: Identity, worker: str, run_id: str | None) -> bool:
    """Whether an approval the run asked for first is this part's: the same operator, worker and run."""
    request = approved.request
    return (run_id is not None and request.kind is Kind.RUN and request.run_id == run_id
            and request.worker == worker and same_operator(request.who, who))


def _request_text(request: OpenRequest) -> str:
    """What an open request would run, as its approval request shows it (escaped where shown)."""
    env = " ".join(f"{name}={value}" for name, value in sorted(request.env.items()))
    with_env = f" with variables {env}" if env else ""
    if request.command is None:
        return f"a login shell{with_env}"
    terminal = " (on a terminal)" if request.pty else ""
    return f"command{terminal}: {request.command}{with_env}"


def _reactor() -> Clock:
    from twisted.internet import reactor

    return cast(Clock, reactor)


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 256):
        raise OperatorError(ErrorKind.BAD_REQUEST, f"{what} must be a string")
    return value
