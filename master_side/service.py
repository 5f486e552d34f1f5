"""`ShellService`: the Buildbot service that serves operator shells from the master host.

In master.cfg::

    from master_side import ShellService
    c['services'].append(ShellService())

It listens on a UNIX socket in the master's basedir, identifies each operator by the socket peer's credentials
(from the kernel), applies the policy, and relays sessions over the workers' live PB connections.
"""

from __future__ import annotations

import grp
import os
import re
import socket as _socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from buildbot.util.service import BuildbotService
from buildbot.worker.protocols import pb as bbpb
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from slaveshell import hidden as hidden_input
from slaveshell.display import visible
from slaveshell.policy import RIGHTS, Identity, Policy, Rule
from slaveshell.protocol import MAX_CHUNK, WORKER_COMMAND, WORKER_OPEN_METHOD, OpenRequest, ProtocolError

from .audit_trail import ON_RECORD_ERROR, AuditTrail, RecordingError
from .hold import HOLDS, MAX_WAITING, WAITING, NotHeld, hold_ahead, wait_for_hold
from .limits import Bounds, ConnectionGate, GatedFactory, RefusalAudit
from .relay import MasterSession, Role, Viewer, ViewerHandle, WorkerSink, new_session_id, remote_sender

log = Logger()

DEFAULT_SOCKET = "shell.sock"


@dataclass(frozen=True)
class Limits:
    detach_grace: float | None = 300.0
    idle_timeout: float | None = None
    max_duration: float | None = None
    per_worker: int | None = None
    per_operator: int | None = None
    stall_timeout: float | None = 60.0
    close_deadline: float | None = 10.0


class RouteError(Exception):
    """The worker cannot be reached for a shell; the message names it and is meant for the operator."""


def peer_identity(transport: Any) -> Identity:
    """Who is at the other end of a UNIX socket, as the kernel says (SO_PEERCRED): never what they claim."""
    sock = transport.getHandle()
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Identity.from_credentials(pid, uid, gid)


def make_policy(policy: Policy | Iterable[Rule | dict[str, Any]] | None) -> Policy:
    if policy is None:
        return Policy.default()
    if isinstance(policy, Policy):
        return policy
    return Policy(rule if isinstance(rule, Rule) else Rule(**rule) for rule in policy)


class OperatorRoot(pb.Referenceable):
    """The root object one operator connection sees."""

    def __init__(self, service: ShellService, broker: pb.Broker) -> None:
        self.service = service
        self.broker = broker
        self._identity: Identity | None = None

    def identity(self) -> Identity:
        # The broker has no transport while the root object is made; by the first call it has.
        if self._identity is None:
            self._identity = peer_identity(self.broker.transport)
        return self._identity

    def remote_workers(self) -> list[dict[str, Any]]:
        return self.service.list_workers(self.identity())

    def remote_open(self, sink: object, params: object) -> Any:
        return self.service.gate.limited(self.broker, self.service.open_session, self.identity(), self.broker,
                                         sink, params)

    def remote_attach(self, sink: object, session_id: object, mode: object) -> Any:
        return self.service.gate.limited(self.broker, self.service.attach_session, self.identity(), self.broker,
                                         sink, session_id, mode)

    def remote_sessions(self) -> list[dict[str, Any]]:
        return self.service.list_sessions(self.identity())

    def remote_kill(self, session_id: object) -> str:
        return self.service.kill_session(self.identity(), session_id)

    def remote_release(self, build_id: object) -> str:
        return self.service.release_build(self.identity(), build_id)

    def remote_history(self, filters: object) -> Any:
        return self.service.gate.limited(self.broker, self.service.history, self.identity(), filters)

    def remote_transcript(self, session_id: object, offset: object) -> Any:
        return self.service.gate.limited(self.broker, self.service.transcript_chunk, self.identity(), session_id,
                                         offset)

    def remote_search(self, text: object, filters: object = None) -> Any:
        return self.service.gate.limited(self.broker, self.service.search, self.identity(), text, filters)


@implementer(pb.IPBRoot)
class _RootFactory:
    def __init__(self, service: ShellService) -> None:
        self.service = service

    def rootObject(self, broker: pb.Broker) -> OperatorRoot:
        return OperatorRoot(self.service, broker)


class ShellService(BuildbotService):
    name = "slaveshell"
    # How long a worker may take to start a session before the operator is told it did not answer.
    open_timeout = 30.0
    # Heartbeats on quiet sessions, and how long a worker may stay silent before its sessions are ended.
    heartbeat = 15.0
    # How long `--build ID` waits for a running build to reach its HoldForShell step (a user, or a test, a little
    # early): after it, the open is refused. Ctrl-C of the client stops waiting sooner.
    hold_wait = 600.0

    def checkConfig(
        self,
        socket: str = DEFAULT_SOCKET,
        group: str | int | None = None,
        policy: Any = None,
        transcripts: str = "transcripts",
        db_url: str | None = None,
        record_input: bool = True,
        redact: Sequence[str] = (),
        require_recording: bool = True,
        on_record_error: str = "end",
        seal_to: str | Sequence[str] | None = None,
        detach_grace: float | None = 300.0,
        idle_timeout: float | None = None,
        max_duration: float | None = None,
        max_sessions_per_worker: int | None = None,
        max_sessions_per_operator: int | None = None,
        stall_timeout: float | None = 60.0,
        close_deadline: float | None = 10.0,
        max_connections_per_uid: int = Bounds.connections_per_uid,
        max_connections: int = Bounds.connections,
        max_viewers_per_session: int = Bounds.viewers_per_session,
        max_viewers_per_operator: int = Bounds.viewers_per_operator,
        max_connection_buffer: int = Bounds.connection_buffer,
        max_buffered_total: int = Bounds.buffered_total,
        write_stall_timeout: float | None = Bounds.write_stall,
        max_calls_in_progress: int = Bounds.calls_in_progress,
        name: str = "slaveshell",
    ) -> None:
        from buildbot import config

        for what, value in (("detach_grace", detach_grace), ("idle_timeout", idle_timeout),
                            ("max_duration", max_duration), ("max_sessions_per_worker", max_sessions_per_worker),
                            ("max_sessions_per_operator", max_sessions_per_operator),
                            ("stall_timeout", stall_timeout), ("close_deadline", close_deadline),
                            ("write_stall_timeout", write_stall_timeout)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                config.error(f"ShellService: {what} must be a non-negative number or None")
        # Resource bounds (master_side.limits): always on, whole numbers of at least 1.
        for what, value in (("max_connections_per_uid", max_connections_per_uid),
                            ("max_connections", max_connections),
                            ("max_viewers_per_session", max_viewers_per_session),
                            ("max_viewers_per_operator", max_viewers_per_operator),
                            ("max_connection_buffer", max_connection_buffer),
                            ("max_buffered_total", max_buffered_total),
                            ("max_calls_in_progress", max_calls_in_progress)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                config.error(f"ShellService: {what} must be a whole number of at least 1")
        if on_record_error not in ON_RECORD_ERROR:
            config.error(f"ShellService: on_record_error must be one of {ON_RECORD_ERROR}")
        for pattern in redact:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                config.error(f"ShellService: bad redact pattern {pattern!r}: {e}")
        if seal_to is not None:
            try:
                hidden_input.load_recipients(seal_to)
            except ValueError as e:
                config.error(f"ShellService: {e}")

        if not isinstance(socket, str) or not socket:
            config.error("ShellService: socket must be a path (relative to the master's basedir)")
        if group is not None:
            try:
                _group_id(group)
            except KeyError:
                config.error(f"ShellService: no such group {group!r}")
        try:
            make_policy(policy)
        except (TypeError, ValueError) as e:
            config.error(f"ShellService: bad policy: {e}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sessions: dict[str, MasterSession] = {}
        self.policy = Policy.default()
        self.socket_path: str | None = None
        self._group: str | int | None = None
        self._port: Any = None
        self.trail: AuditTrail | None = None
        self.limits = Limits()
        self.gate = ConnectionGate(peer_identity, RefusalAudit(self._audit_refusal, _seconds), _seconds)
        self._ticker = task.LoopingCall(self._tick)
        # Disconnect notifications to undo when a session ends, by session id.
        self._hooks: dict[str, list[tuple[Any, Any]]] = {}
        # Each live session's handle on its worker, for heartbeats.
        self._worker_refs: dict[str, Any] = {}
        self._pinging: set[str] = set()
        # Sessions holding each worker paused, and whether we paused it (never unpause someone else's pause).
        self._pausing: dict[str, set[str]] = {}
        super().__init__(*args, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(
        self,
        socket: str = DEFAULT_SOCKET,
        group: str | int | None = None,
        policy: Any = None,
        transcripts: str = "transcripts",
        db_url: str | None = None,
        record_input: bool = True,
        redact: Sequence[str] = (),
        require_recording: bool = True,
        on_record_error: str = "end",
        seal_to: str | Sequence[str] | None = None,
        detach_grace: float | None = 300.0,
        idle_timeout: float | None = None,
        max_duration: float | None = None,
        max_sessions_per_worker: int | None = None,
        max_sessions_per_operator: int | None = None,
        stall_timeout: float | None = 60.0,
        close_deadline: float | None = 10.0,
        max_connections_per_uid: int = Bounds.connections_per_uid,
        max_connections: int = Bounds.connections,
        max_viewers_per_session: int = Bounds.viewers_per_session,
        max_viewers_per_operator: int = Bounds.viewers_per_operator,
        max_connection_buffer: int = Bounds.connection_buffer,
        max_buffered_total: int = Bounds.buffered_total,
        write_stall_timeout: float | None = Bounds.write_stall,
        max_calls_in_progress: int = Bounds.calls_in_progress,
        name: str = "slaveshell",
    ) -> Any:
        self.policy = make_policy(policy)
        self.limits = Limits(detach_grace, idle_timeout, max_duration, max_sessions_per_worker,
                             max_sessions_per_operator, stall_timeout, close_deadline)
        self.gate.bounds = Bounds(max_connections_per_uid, max_connections, max_viewers_per_session,
                                  max_viewers_per_operator, max_connection_buffer, max_buffered_total,
                                  write_stall_timeout, max_calls_in_progress)
        if not self._ticker.running:
            self._ticker.start(1.0, now=False)
        trail = AuditTrail(self.master.basedir, str(getattr(self.master, "name", self.master.basedir)),
                           transcripts=transcripts, db_url=db_url, record_input=record_input, redact=redact,
                           require_recording=require_recording, on_record_error=on_record_error,
                           seal_to=seal_to)
        if self.trail is None:
            self.trail = trail
            yield self.trail.start()
        elif (trail.directory, trail.db_url) != (self.trail.directory, self.trail.db_url):
            log.warn("slaveshell: a new transcript directory or audit database takes effect at the next "
                     "master restart")
        else:
            # Recording options apply to sessions opened from now on.
            for attr in ("record_input", "redact", "require_recording", "on_record_error", "seal_recipients"):
                setattr(self.trail, attr, getattr(trail, attr))
        path = os.path.abspath(os.path.join(self.master.basedir, socket))
        if path != self.socket_path or group != self._group:
            yield self._stop_listening()
            yield self._listen(path, group)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self._ticker.running:
            self._ticker.stop()
        for session in list(self.sessions.values()):
            try:
                session.close("the master is shutting down")
                session.abort("the master is shutting down")
            except Exception:
                log.failure("slaveshell session {sid}: error while ending it at shutdown", sid=session.id)
        log.info("slaveshell: stopping (sessions ended)")
        yield self._stop_listening()
        log.info("slaveshell: stopping (socket closed)")
        if self.trail is not None:
            yield self.trail.stop()
            self.trail = None
        log.info("slaveshell: stopped")
        yield super().stopService()

    @defer.inlineCallbacks
    def _listen(self, path: str, group: str | int | None) -> Any:
        from twisted.internet import reactor

        # 0600 unless a group is named: the socket is the door to every worker.
        mode = 0o660 if group is not None else 0o600
        endpoint = endpoints.UNIXServerEndpoint(reactor, path, mode=mode, wantPID=True)
        # Connections are counted and bounded per uid as they are accepted, before PB is spoken.
        factory = GatedFactory(_RootFactory(self), self.gate)
        _break_dead_lock(path + ".lock")
        try:
            self._port = yield endpoint.listen(factory)
        except Exception as e:
            # The shell must never cost the master its start: log loudly and go on without the socket.
            log.critical("slaveshell: cannot listen on {path}: {e}; shells are unavailable until the next "
                         "reconfig or restart", path=path, e=e)
            return
        if group is not None:
            os.chown(path, -1, _group_id(group))
        self.socket_path, self._group = path, group
        log.info("slaveshell: listening on {path} (mode {mode:o})", path=path, mode=mode)

    @defer.inlineCallbacks
    def _stop_listening(self) -> Any:
        if self._port is not None:
            port, self._port = self._port, None
            yield port.stopListening()
            self.socket_path = None

    # -- routing -------------------------------------------------------------------------------

    def route(self, name: str) -> Any:
        """The live PB connection to worker `name`, or a RouteError that says why not."""
        workers = self.master.workers
        if name not in workers.registrations:
            if not workers.registrations:
                # Right after a (re)start the socket can answer before the workers are configured.
                raise RouteError(f"no worker named {name!r} on this master (it has no workers configured yet: "
                                 "still starting?)")
            raise RouteError(f"no worker named {name!r} on this master")
        worker = workers.getWorkerByName(name)
        conn = workers.connections.get(name)
        if conn is None:
            raise RouteError(f"worker {name} is not connected to the master")
        if not isinstance(conn, bbpb.Connection):
            raise RouteError(f"worker {name} uses the msgpack protocol; slaveshell needs a PB worker")
        if WORKER_COMMAND not in (worker.worker_commands or {}):
            raise RouteError(f"worker {name} has not enabled slaveshell (its owner adds "
                             "'import slave_side; slave_side.install()' to buildbot.tac)")
        return conn

    def list_workers(self, who: Identity) -> list[dict[str, Any]]:
        workers = self.master.workers
        result = []
        for name in sorted(workers.registrations):
            # Only the workers this operator has some right on (as history shows only what they may replay).
            if not any(self.policy.check(who, right, name).allowed for right in sorted(RIGHTS)):
                continue
            worker = workers.getWorkerByName(name)
            conn = workers.connections.get(name)
            result.append({
                "name": name,
                "connected": conn is not None,
                "shell": WORKER_COMMAND in (worker.worker_commands or {}) if conn is not None else False,
                "paused": bool(getattr(worker, "_paused", False)),
                "system": str(getattr(worker, "worker_system", None) or ""),
                "info": _worker_info(worker),
                "allowed": self.policy.check(who, "shell", name).allowed,
                "sessions": sum(1 for s in self.sessions.values() if s.worker == name),
            })
        return result

    # -- sessions ------------------------------------------------------------------------------

    def _check_limits(self, who: Identity, worker: str) -> str | None:
        live = [s for s in self.sessions.values() if s.live]
        if self.limits.per_worker is not None and \
                sum(1 for s in live if s.worker == worker) >= self.limits.per_worker:
            return f"worker {worker} already has {self.limits.per_worker} sessions (the master's limit)"
        if self.limits.per_operator is not None and \
                sum(1 for s in live if s.identity.uid == who.uid) >= self.limits.per_operator:
            return f"{who.user} already has {self.limits.per_operator} sessions (the master's limit)"
        return None

    def _workdir_for(self, request: OpenRequest) -> OpenRequest:
        """`--build ID`: the held build's directory and environment; `--builder NAME`: the builder's build
        directory. Both relative to the worker's basedir."""
        if request.build is not None:
            hold = HOLDS.get(request.build)
            if hold is None:
                raise RouteError(f"build {request.build} is not held for a shell (not a HoldForShell build, or "
                                 "already released)")
            if hold.worker != request.worker:
                raise RouteError(f"build {request.build} is held on worker {hold.worker}, not {request.worker}")
            return replace(request, cwd=hold.workdir, env={**hold.env, **request.env})
        if request.builder is None:
            return request
        builders = getattr(self.master.botmaster, "builders", {})
        builder = builders.get(request.builder)
        if builder is None:
            raise RouteError(f"no builder named {request.builder!r} on this master")
        if request.worker not in builder.config.workernames:
            raise RouteError(f"builder {request.builder} does not run on worker {request.worker}")
        return replace(request, cwd=os.path.join(builder.config.workerbuilddir, "build"))

    @defer.inlineCallbacks
    def _wait_for_hold(self, build_id: int, broker: pb.Broker, sink: Any) -> Any:
        """`--build` on a running build whose HoldForShell step is still ahead: tell the operator, then wait for
        the hold, up to `hold_wait` s. True once held (or when there is nothing to wait for: `_workdir_for`
        refuses a hold-less or finished build at once); False when the operator left while waiting; raises
        RouteError when the build will not be held."""
        from twisted.internet import reactor

        if not hold_ahead(self.master.botmaster, build_id):
            return True
        if sum(len(waiters) for waiters in WAITING.values()) >= MAX_WAITING:
            raise RouteError(f"build {build_id} is not held yet, and {MAX_WAITING} operators already wait for "
                             "builds to be held (the master's limit): try again once it is held")
        text = f"build {build_id} is still running; waiting for it to be held (Ctrl-C stops waiting)"
        defer.maybeDeferred(sink.callRemote, "waiting", text).addErrback(lambda _: None)
        waited = wait_for_hold(self.master.botmaster, build_id, self.hold_wait, reactor)
        broker.notifyOnDisconnect(waited.cancel)
        try:
            yield waited
        except defer.CancelledError:
            return False
        except NotHeld as e:
            raise RouteError(str(e)) from None
        finally:
            try:
                broker.dontNotifyOnDisconnect(waited.cancel)
            except ValueError:
                pass
        return not broker.disconnected

    @defer.inlineCallbacks
    def open_session(self, who: Identity, broker: pb.Broker, sink: object, params: object) -> Any:
        assert self.trail is not None
        try:
            request = OpenRequest.from_wire(params)
        except ProtocolError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        if not isinstance(sink, pb.RemoteReference):
            return {"ok": False, "error": "bad request: the sink must be a remote reference"}
        # Who the session is for comes from the kernel, never from the client.
        request = replace(request, operator=who.user)
        decision = self.policy.check(who, "shell", request.worker)
        if not decision.allowed:
            log.info("slaveshell: denied {who} a shell on {worker}: {why}", who=visible(who),
                     worker=visible(request.worker), why=visible(decision.reason))
            self.trail.refused(who, request.worker, f"permission denied: {decision.reason}")
            return {"ok": False, "error": f"permission denied: {decision.reason}"}
        try:
            conn = self.route(request.worker)
            if request.build is not None and request.build not in HOLDS:
                if not (yield self._wait_for_hold(request.build, broker, sink)):
                    return {"ok": False, "error": "stopped waiting for the build to be held"}
                conn = self.route(request.worker)
            request = self._workdir_for(request)
        except RouteError as e:
            self.trail.refused(who, request.worker, str(e))
            return {"ok": False, "error": str(e)}
        too_many = self._check_limits(who, request.worker)
        if too_many:
            self.trail.refused(who, request.worker, too_many)
            return {"ok": False, "error": too_many}

        session = MasterSession(request, who, on_end=self._session_ended, session_id=new_session_id())
        if request.build is not None and request.build in HOLDS:
            hold = HOLDS[request.build]
            session.build = {"build_id": hold.build_id, "builder": hold.builder, "build_number": hold.build_number}
        # Recorded before served: the transcript and the index row exist before the worker is asked.
        try:
            recorder = yield self.trail.begin(session)
        except RecordingError as e:
            return {"ok": False, "error": str(e)}
        if recorder is not None:
            session.recorder = recorder
            recorder.on_error = lambda error: self._recording_failed(session, error)
        session.on_event = lambda kind, viewer, detail: self.trail.store.event(
            kind, session.id, session.worker, viewer.identity.user, viewer.identity.uid, detail) \
            if self.trail is not None else None

        worker_sink = WorkerSink(session, self._peer_error)
        try:
            conn.mind.broker.transport.setTcpNoDelay(True)
        except Exception:
            pass
        to_worker = replace(request, pause=False, builder=None, build=None)
        try:
            reply = yield _answer_within(
                defer.maybeDeferred(conn.mind.callRemote, WORKER_OPEN_METHOD, worker_sink, to_worker.to_wire()),
                self.open_timeout, _close_late_session)
        except defer.TimeoutError:
            reply = {"ok": False, "error": f"did not answer within {self.open_timeout:g} s"}
        except Exception as e:
            # Never forward a remote failure across the second hop: translate it to a plain message.
            reply = {"ok": False, "error": _describe_failure(e)}
        worker_ref = reply.get("session") if isinstance(reply, dict) else None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool) or (
                reply["ok"] and not isinstance(worker_ref, pb.RemoteReference)):
            reply = {"ok": False, "error": "sent a malformed reply"}
        if not reply["ok"]:
            error = reply.get("error")
            message = f"worker {request.worker}: {error if isinstance(error, str) else 'refused'}"[:4096]
            self.trail.not_opened(session, recorder, message)
            return {"ok": False, "error": message}
        assert worker_ref is not None
        self.sessions[session.id] = session
        send, bind = self._viewer_sender(session, sink)
        owner = session.start(to_owner=send, to_worker=remote_sender(
            worker_ref, lambda f: self._worker_failed(session, f)))
        self._hook(session, worker_ref, lambda _ref: session.abort(f"connection to worker {request.worker} lost"))
        self._worker_refs[session.id] = worker_ref
        if request.pause:
            self._pause(session)
        if request.build is not None and request.build in HOLDS:
            HOLDS[request.build].listeners.append(lambda why: self._build_released(session, why))
        self.trail.opened(session)
        # Never the command: logs are world-readable, session content belongs in the audit store only.
        log.info("slaveshell session {sid}: {who} opened {what} on {worker}", sid=session.id, who=visible(who),
                 what="a command" if request.command else "a login shell", worker=visible(request.worker))
        if broker.disconnected:
            # The operator left while the worker was starting the session: it starts detached.
            session.remove_viewer(owner, "connection lost")
            return None
        owner.connection = broker
        bind(owner)
        if recorder is None:
            session.notice("WARNING: this session is NOT being recorded (the audit trail is unavailable)")
        return {"ok": True, "session": ViewerHandle(session, owner, self._peer_error), "id": session.id}

    def _viewer_sender(self, session: MasterSession, sink: Any) -> tuple[Any, Any]:
        """The send function for a viewer's sink, and `bind(viewer)` to tie the sink's failures and
        disconnection to that viewer once it exists."""
        bound: list[Viewer] = []

        def on_failure(failure: Any) -> None:
            if bound:
                self._viewer_failed(session, bound[0], failure)

        def bind(viewer: Viewer) -> None:
            bound.append(viewer)
            self._hook(session, sink, lambda _ref: session.viewer_lost(viewer))

        raw = remote_sender(sink, on_failure)

        def send(method: str, *args: Any) -> None:
            raw(method, *args)
            # A peer that does not read is dropped once its buffered output passes the bound.
            self.gate.check(sink.broker)

        return send, bind

    def _hook(self, session: MasterSession, ref: Any, callback: Any) -> None:
        ref.notifyOnDisconnect(callback)
        self._hooks.setdefault(session.id, []).append((ref, callback))

    def attach_session(self, who: Identity, broker: pb.Broker, sink: object, session_id: object,
                       mode: object) -> dict[str, Any]:
        """`slaveshell attach` (join, or resume a detached session) and `slaveshell watch`."""
        if not isinstance(sink, pb.RemoteReference) or not isinstance(session_id, str) or \
                mode not in ("attach", "watch"):
            return {"ok": False, "error": "bad request: attach needs a sink, a session id and a mode"}
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            return {"ok": False, "error": f"no live session {session_id}"}
        mine = who.uid == session.identity.uid
        if mode == "watch":
            role, right = Role.WATCH, "watch"
        elif session.owner is None:
            # Resuming a detached session: its own operator may (with the shell right), others need join.
            role, right = Role.OWNER, "shell" if mine else "join"
        else:
            role, right = Role.JOIN, "join"
        decision = self.policy.check(who, right, session.worker)
        if not decision.allowed:
            assert self.trail is not None
            self.trail.refused(who, session.worker, f"permission denied ({mode} {session_id}): {decision.reason}")
            return {"ok": False, "error": f"permission denied: {decision.reason}"}
        too_many = self.gate.viewer_refusal(who, broker, session, self.sessions.values())
        if too_many:
            self.gate.audit(who, "refused", f"view refused ({mode} {session_id}): {too_many}", session.worker)
            return {"ok": False, "error": too_many}
        send, bind = self._viewer_sender(session, sink)
        try:
            viewer = session.add_viewer(who, role, send)
        except ProtocolError as e:
            return {"ok": False, "error": str(e)}
        viewer.connection = broker
        bind(viewer)
        return {"ok": True, "session": ViewerHandle(session, viewer, self._peer_error), "id": session.id,
                "role": role.value, "worker": session.worker, "size": list(session.size)}

    def list_sessions(self, who: Identity) -> list[dict[str, Any]]:
        out = []
        for s in self.sessions.values():
            if not s.live:
                continue
            if who.uid != s.identity.uid and not self.policy.check(who, "watch", s.worker).allowed:
                continue
            out.append({
                "id": s.id, "worker": s.worker, "operator": s.identity.user, "uid": s.identity.uid,
                "started": s.started, "state": s.state.value, "command": s.request.command,
                "viewers": [{"user": v.identity.user, "role": v.role.value} for v in s.viewers],
                "idle": round(self.trail.reactor.seconds() - s.last_activity, 1) if self.trail else 0.0,
            })
        return sorted(out, key=lambda r: r["started"])

    def _build_released(self, session: MasterSession, why: str) -> None:
        # A stopped build takes its shells with it; a release or a timeout leaves them open.
        if why.startswith("build stopped") and session.live:
            session.notice("the build was stopped; this session ends")
            session.close("the held build was stopped")

    def release_build(self, who: Identity, build_id: object) -> str:
        if not isinstance(build_id, int) or isinstance(build_id, bool):
            raise pb.Error("release needs a build id")
        hold = HOLDS.get(build_id)
        if hold is None:
            raise pb.Error(f"build {build_id} is not held")
        if not self.policy.check(who, "shell", hold.worker).allowed:
            raise pb.Error(f"permission denied: {who} may not release builds on worker {hold.worker}")
        hold.release(f"released by {who.user}")
        if self.trail is not None:
            self.trail.store.event("release", None, hold.worker, who.user, who.uid,
                                   f"build {hold.builder} #{hold.build_number} (id {build_id})")
        return f"build {hold.builder} #{hold.build_number} (id {build_id}) released; it finishes now"

    def kill_session(self, who: Identity, session_id: object) -> str:
        if not isinstance(session_id, str):
            raise pb.Error("kill needs a session id")
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            raise pb.Error(f"no live session {session_id}")
        if who.uid != session.identity.uid and not self.policy.check(who, "kill", session.worker).allowed:
            raise pb.Error(f"permission denied: {who} may not kill sessions on worker {session.worker}")
        session.notice(f"session killed by {who.user}")
        session.close(f"killed by {who.user}")
        if self.trail is not None:
            self.trail.store.event("kill", session.id, session.worker, who.user, who.uid, "")
        return f"session {session_id} on {session.worker}: hangup sent (then TERM, then KILL)"

    def _tick(self) -> None:
        now = self.trail.reactor.seconds() if self.trail is not None else 0.0
        try:
            self.gate.tick()
        except Exception:
            log.failure("slaveshell: error checking the operator connections")
        for session in list(self.sessions.values()):
            try:
                if session.close_overdue(now, self.limits.close_deadline):
                    continue
                if session.worker_stalled(now, self.limits.stall_timeout):
                    continue
                self._heartbeat(session, now)
                session.recorder.flush()  # ends a span of hidden input gone idle, with its marker
                session.tick(now, self.limits.detach_grace, self.limits.idle_timeout, self.limits.max_duration)
            except Exception:
                # One session's trouble must not stop the clock for the others (a LoopingCall dies on errors).
                log.failure("slaveshell session {sid}: error in its timers", sid=session.id)

    def _heartbeat(self, session: MasterSession, now: float) -> None:
        ref = self._worker_refs.get(session.id)
        # Ping well within the stall timeout, so only a worker that really stopped answering trips it.
        interval = min(self.heartbeat, self.limits.stall_timeout / 3) if self.limits.stall_timeout else self.heartbeat
        if ref is None or session.id in self._pinging or now - session.worker_seen < interval:
            return
        self._pinging.add(session.id)

        def answered(result: Any) -> None:
            # Any answer, even an error from a worker without remote_ping, shows the worker is alive.
            self._pinging.discard(session.id)
            if not (isinstance(result, Failure) and result.check(pb.DeadReferenceError, pb.PBConnectionLost)):
                session.worker_seen = self.trail.reactor.seconds() if self.trail else now

        defer.maybeDeferred(ref.callRemote, "ping").addBoth(answered)

    # -- pausing the worker for a session's life -------------------------------------------------

    def _pause(self, session: MasterSession) -> None:
        worker = self.master.workers.getWorkerByName(session.worker)
        holders = self._pausing.setdefault(session.worker, set())
        if not holders:
            if getattr(worker, "_paused", False):
                # Somebody else paused it: leave their pause alone, now and at the end.
                self._pausing.pop(session.worker)
                return
            worker.pause(f"slaveshell session {session.id} by {session.identity.user}")
        holders.add(session.id)
        session.recorder.marker("worker paused in Buildbot for this session")

    def _unpause(self, session: MasterSession) -> None:
        holders = self._pausing.get(session.worker)
        if not holders or session.id not in holders:
            return
        holders.discard(session.id)
        if not holders:
            self._pausing.pop(session.worker, None)
            worker = self.master.workers.getWorkerByName(session.worker)
            if worker is not None:
                worker.unpause()

    def _recording_failed(self, session: MasterSession, error: OSError) -> None:
        assert self.trail is not None
        reason = f"the transcript cannot be written ({error.strerror or error})"
        if self.trail.on_record_error == "continue":
            session.notice(f"WARNING: {reason}; the session continues UNRECORDED")
        else:
            session.close(f"session ended: {reason}")
            session.abort(f"session ended: {reason}")

    # -- the audit trail, for operators --------------------------------------------------------

    @defer.inlineCallbacks
    def history(self, who: Identity, filters: object) -> Any:
        assert self.trail is not None
        if not isinstance(filters, dict):
            raise pb.Error("history filters must be a dict")
        worker = _opt_str(filters.get("worker"), "worker")
        user = _opt_str(filters.get("user"), "user")
        session_id = _opt_str(filters.get("session"), "session")
        build_id = filters.get("build")
        if build_id is not None and (not isinstance(build_id, int) or isinstance(build_id, bool)):
            raise pb.Error("build must be a build id")
        since = filters.get("since")
        if since is not None and not isinstance(since, (int, float)):
            raise pb.Error("since must be a number of seconds since the epoch")
        limit = filters.get("limit", 200)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise pb.Error("limit must be between 1 and 10000")
        try:
            rows = yield self.trail.store.history(worker=worker, operator=user, since=since,
                                                  session_id=session_id, build_id=build_id, limit=limit)
        except Exception as e:
            raise pb.Error(f"the audit database is unavailable: {str(e).splitlines()[0]}") from None
        # Who may read which sessions follows the policy ('replay' on the session's worker).
        return [r for r in rows if self.policy.check(who, "replay", r["worker"]).allowed]

    @defer.inlineCallbacks
    def transcript_chunk(self, who: Identity, session_id: object, offset: object) -> Any:
        assert self.trail is not None
        if not isinstance(session_id, str) or not isinstance(offset, int) or offset < 0:
            raise pb.Error("transcript needs a session id and an offset")
        rows = yield self.history(who, {"session": session_id, "limit": 1})
        if not rows:
            raise pb.Error(f"no session {session_id} that you may replay")
        path = self.trail.transcript_path(rows[0])
        if path is None or not os.path.exists(path):
            raise pb.Error(f"session {session_id} has no transcript on this master")
        data = yield self.trail.read_chunk(path, offset, MAX_CHUNK)
        return {"data": data, "eof": len(data) < MAX_CHUNK}

    @defer.inlineCallbacks
    def search(self, who: Identity, text: object, filters: object) -> Any:
        assert self.trail is not None
        if not isinstance(text, str) or not text or len(text) > 1024:
            raise pb.Error("search needs a text of 1 to 1024 characters")
        rows = yield self.history(who, filters if isinstance(filters, dict) else {})
        hits = yield self.trail.search(rows, text, limit=500)
        return hits

    def _session_ended(self, session: MasterSession) -> None:
        self.sessions.pop(session.id, None)
        self._worker_refs.pop(session.id, None)
        self._pinging.discard(session.id)
        for ref, callback in self._hooks.pop(session.id, []):
            _forget(ref, callback)
        self._unpause(session)
        if self.trail is not None:
            self.trail.ended(session)

    def _audit_refusal(self, kind: str, who: Identity, detail: str, worker: str | None) -> None:
        if self.trail is not None:
            self.trail.store.event(kind, None, worker, who.user, who.uid, detail)

    def _peer_error(self, session: MasterSession, error: ProtocolError) -> None:
        # A peer broke the protocol: end its session with the reason, keep every connection up.
        log.warn("slaveshell session {sid}: protocol error: {e}", sid=session.id, e=visible(error))
        session.close(f"protocol error: {error}")
        session.abort(f"protocol error: {error}")

    def _viewer_failed(self, session: MasterSession, viewer: Viewer, failure: Any) -> None:
        if not failure.check(pb.DeadReferenceError, pb.PBConnectionLost):
            log.warn("slaveshell session {sid}: a viewer refused a call: {e}", sid=session.id,
                     e=visible(failure.getErrorMessage()))
        session.viewer_lost(viewer)

    def _worker_failed(self, session: MasterSession, failure: Any) -> None:
        if failure.check(pb.DeadReferenceError, pb.PBConnectionLost):
            session.abort(f"connection to worker {session.worker} lost")
            return
        log.warn("slaveshell session {sid}: worker refused a call: {e}", sid=session.id,
                 e=visible(failure.getErrorMessage()))


def _seconds() -> float:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    return float(reactor.seconds())


def _answer_within(d: defer.Deferred[Any], seconds: float, on_late: Any) -> defer.Deferred[Any]:
    """`d`'s result, or TimeoutError after `seconds`. A PB call's Deferred must not be cancelled (its late
    answer would then hit an already-fired Deferred inside the broker), so the race happens on a second
    Deferred and a late answer goes to `on_late`."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    out: defer.Deferred[Any] = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: out.errback(defer.TimeoutError(f"no answer in {seconds} s")))

    def settle(result: Any) -> None:
        if out.called:
            if not isinstance(result, Failure):
                on_late(result)
            return None
        timer.cancel()
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)
        return None

    d.addBoth(settle)
    return out


def _close_late_session(reply: Any) -> None:
    """A session the worker started for nobody: end it there."""
    if isinstance(reply, dict) and isinstance(reply.get("session"), pb.RemoteReference):
        defer.maybeDeferred(reply["session"].callRemote, "close").addErrback(lambda f: None)


def _forget(ref: Any, callback: Any) -> None:
    # A reference whose broker is already gone has no callback list left (AttributeError in Twisted).
    try:
        ref.dontNotifyOnDisconnect(callback)
    except (ValueError, AttributeError):
        pass


def _describe_failure(error: Exception) -> str:
    if isinstance(error, pb.RemoteError) and "NoSuchMethod" in str(getattr(error, "remoteType", "")):
        return "has not enabled slaveshell"
    if isinstance(error, (pb.DeadReferenceError, pb.PBConnectionLost)):
        return "the connection was lost while opening the session"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]


def _worker_info(worker: Any) -> str:
    """A short line about the worker's machine, from what it reported when it connected."""
    info = getattr(worker, "info", None)
    if info is None:
        return ""
    parts = []
    for key in ("os_pretty_name", "version", "host"):
        if info.hasProperty(key):
            value = str(info.getProperty(key)).strip().splitlines()
            if value:
                parts.append(("buildbot-worker " if key == "version" else "") + value[0][:60])
    return ", ".join(parts)


def _opt_str(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 256):
        raise pb.Error(f"{what} must be a string")
    return value


def _break_dead_lock(lock: str) -> None:
    """Twisted's socket lock names the pid that holds it and counts a zombie as alive; a master killed with
    SIGKILL can stay a zombie for a while. A lock whose process is dead or a zombie is stale: remove it."""
    try:
        pid = int(os.readlink(lock))
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "gone" if not os.path.exists(f"/proc/{pid}") else "?"
    if state in ("Z", "X", "gone"):
        log.warn("slaveshell: removing the stale socket lock of dead process {pid}", pid=pid)
        for stale in (lock, lock[: -len(".lock")]):
            try:
                os.unlink(stale)
            except OSError:
                pass


def _group_id(group: str | int) -> int:
    return group if isinstance(group, int) else grp.getgrnam(group).gr_gid
