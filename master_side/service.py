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
import socket as _socket
import struct
from collections.abc import Iterable
from typing import Any

from buildbot.util.service import BuildbotService
from buildbot.worker.protocols import pb as bbpb
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from slaveshell.policy import Identity, Policy, Rule
from slaveshell.protocol import WORKER_COMMAND, WORKER_OPEN_METHOD, OpenRequest, ProtocolError

from .relay import MasterSession, OperatorHandle, WorkerSink, remote_sender

log = Logger()

DEFAULT_SOCKET = "shell.sock"


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
        return self.service.open_session(self.identity(), self.broker, sink, params)


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

    def checkConfig(
        self,
        socket: str = DEFAULT_SOCKET,
        group: str | int | None = None,
        policy: Any = None,
        name: str = "slaveshell",
    ) -> None:
        from buildbot import config

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
        super().__init__(*args, **kwargs)

    @defer.inlineCallbacks
    def reconfigService(
        self,
        socket: str = DEFAULT_SOCKET,
        group: str | int | None = None,
        policy: Any = None,
        name: str = "slaveshell",
    ) -> Any:
        self.policy = make_policy(policy)
        path = os.path.abspath(os.path.join(self.master.basedir, socket))
        if path != self.socket_path or group != self._group:
            yield self._stop_listening()
            yield self._listen(path, group)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        for session in list(self.sessions.values()):
            session.operator_close()
            session.abort("the master is shutting down")
        yield self._stop_listening()
        yield super().stopService()

    @defer.inlineCallbacks
    def _listen(self, path: str, group: str | int | None) -> Any:
        from twisted.internet import reactor

        # 0600 unless a group is named: the socket is the door to every worker.
        mode = 0o660 if group is not None else 0o600
        endpoint = endpoints.UNIXServerEndpoint(reactor, path, mode=mode, wantPID=True)
        factory = pb.PBServerFactory(_RootFactory(self), unsafeTracebacks=False)
        self._port = yield endpoint.listen(factory)
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
            worker = workers.getWorkerByName(name)
            conn = workers.connections.get(name)
            result.append({
                "name": name,
                "connected": conn is not None,
                "shell": WORKER_COMMAND in (worker.worker_commands or {}) if conn is not None else False,
                "paused": bool(getattr(worker, "_paused", False)),
                "system": str(worker.worker_system or ""),
                "allowed": self.policy.check(who, "shell", name).allowed,
                "sessions": sum(1 for s in self.sessions.values() if s.worker == name),
            })
        return result

    # -- sessions ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def open_session(self, who: Identity, broker: pb.Broker, sink: object, params: object) -> Any:
        try:
            request = OpenRequest.from_wire(params)
        except ProtocolError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        if not isinstance(sink, pb.RemoteReference):
            return {"ok": False, "error": "bad request: the sink must be a remote reference"}
        decision = self.policy.check(who, "shell", request.worker)
        if not decision.allowed:
            log.info("slaveshell: denied {who} a shell on {worker}: {why}", who=who, worker=request.worker,
                     why=decision.reason)
            return {"ok": False, "error": f"permission denied: {decision.reason}"}
        try:
            conn = self.route(request.worker)
        except RouteError as e:
            return {"ok": False, "error": str(e)}

        session = MasterSession(request, who, on_end=self._session_ended)
        worker_sink = WorkerSink(session, self._peer_error)
        try:
            conn.mind.broker.transport.setTcpNoDelay(True)
        except Exception:
            pass
        try:
            reply = yield _answer_within(
                defer.maybeDeferred(conn.mind.callRemote, WORKER_OPEN_METHOD, worker_sink, request.to_wire()),
                self.open_timeout, _close_late_session)
        except defer.TimeoutError:
            return {"ok": False, "error": f"worker {request.worker} did not answer within {self.open_timeout:g} s"}
        except Exception as e:
            # Never forward a remote failure across the second hop: translate it to a plain message.
            return {"ok": False, "error": f"worker {request.worker}: {_describe_failure(e)}"}
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            return {"ok": False, "error": f"worker {request.worker} sent a malformed reply"}
        if not reply["ok"]:
            error = reply.get("error")
            return {"ok": False, "error": f"worker {request.worker}: "
                                          f"{error if isinstance(error, str) else 'refused'}"[:4096]}
        worker_ref = reply.get("session")
        if not isinstance(worker_ref, pb.RemoteReference):
            return {"ok": False, "error": f"worker {request.worker} sent a malformed reply"}

        if broker.disconnected:
            # The operator left while the worker was starting the session: nobody to serve it to.
            _close_late_session(reply)
            return None
        session.attach(
            to_operator=remote_sender(sink, lambda f: self._operator_failed(session, f)),
            to_worker=remote_sender(worker_ref, lambda f: self._worker_failed(session, f)),
        )
        self.sessions[session.id] = session
        worker_lost = lambda _ref: session.abort(  # noqa: E731
            f"connection to worker {request.worker} lost")
        operator_lost = lambda _ref: session.operator_lost()  # noqa: E731
        worker_ref.notifyOnDisconnect(worker_lost)
        sink.notifyOnDisconnect(operator_lost)
        def cleanup() -> None:
            _forget(worker_ref, worker_lost)
            _forget(sink, operator_lost)

        session.cleanup = cleanup
        log.info("slaveshell session {sid}: {who} opened {what} on {worker}", sid=session.id, who=who,
                 what=request.command or "a login shell", worker=request.worker)
        return {"ok": True, "session": OperatorHandle(session, self._peer_error), "id": session.id}

    def _session_ended(self, session: MasterSession) -> None:
        self.sessions.pop(session.id, None)
        if session.cleanup is not None:
            session.cleanup()

    def _peer_error(self, session: MasterSession, error: ProtocolError) -> None:
        # A peer broke the protocol: end its session with the reason, keep every connection up.
        log.warn("slaveshell session {sid}: protocol error: {e}", sid=session.id, e=error)
        session.operator_close()
        session.abort(f"protocol error: {error}")

    def _operator_failed(self, session: MasterSession, failure: Any) -> None:
        if not failure.check(pb.DeadReferenceError, pb.PBConnectionLost):
            log.warn("slaveshell session {sid}: operator refused a call: {e}", sid=session.id,
                     e=failure.getErrorMessage())
        session.operator_lost()

    def _worker_failed(self, session: MasterSession, failure: Any) -> None:
        if failure.check(pb.DeadReferenceError, pb.PBConnectionLost):
            session.abort(f"connection to worker {session.worker} lost")
            return
        log.warn("slaveshell session {sid}: worker refused a call: {e}", sid=session.id,
                 e=failure.getErrorMessage())


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
    try:
        ref.dontNotifyOnDisconnect(callback)
    except ValueError:
        pass


def _describe_failure(error: Exception) -> str:
    if isinstance(error, pb.RemoteError) and "NoSuchMethod" in str(getattr(error, "remoteType", "")):
        return "has not enabled slaveshell"
    if isinstance(error, (pb.DeadReferenceError, pb.PBConnectionLost)):
        return "the connection was lost while opening the session"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:300]


def _group_id(group: str | int) -> int:
    return group if isinstance(group, int) else grp.getgrnam(group).gr_gid
