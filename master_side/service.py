"""`ShellService`: the Buildbot service that serves operator shells from the master host.

In master.cfg::

    from master_side import ShellService
    c['services'].append(ShellService())

It listens on a UNIX socket in the master's basedir, identifies each operator by the socket peer's credentials
(from the kernel), applies the policy, and relays sessions over the workers' live PB connections.
"""

from __future__ import annotations

import os
from typing import Protocol

from buildbot.util.service import BuildbotService
from twisted.internet import defer, task
from twisted.logger import Logger

from master_side.audit import hashing
from master_side.audit.refusals import RefusalAudit
from master_side.audit.retention import Retention
from master_side.audit.trail import AuditTrail
from master_side.cluster.part import ClusterPart
from master_side.config import DEFAULT_SOCKET, ShellConfig, group_id, shell_config
from master_side.fleet.operations import FleetOperations
from master_side.glue import upstream
from master_side.glue.buildbot import BuildbotGlue
from master_side.holds import moderator_notices
from master_side.holds.step import Holds
from master_side.operators.api import OperatorAPI
from master_side.operators.approvals import ApprovalRequest
from master_side.operators.gate import ConnectionGate
from master_side.sessions.registry import SessionRegistry
from master_side.sessions.session import MasterSession
from master_side.sessions.session_limits import SessionLimits
from master_side.shell_socket.listener import DoorFactory
from master_side.shell_socket.peer import peer_identity
from master_side.shell_socket.port import listen
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.policy import Identity, Policy, moderators_text

log = Logger()

__all__ = ["ShellService"]


class ListeningPort(Protocol):
    """The socket's listening port (IListeningPort): `stopListening` may return a Deferred."""

    def stopListening(self) -> defer.Deferred[None] | None: ...


class Consumer(Protocol):
    """A consumer of Buildbot's message queue (buildbot.mq.base.QueueRef)."""

    def stopConsuming(self) -> None: ...


class ShellService(BuildbotService):
    """Configuration, the socket, the life of the service and its clock; the operations are OperatorAPI's
    (master_side.operators.api), the live sessions SessionRegistry's (master_side.sessions.registry)."""

    name = "slaveshell"

    def checkConfig(self, *args: object, **kwargs: object) -> None:
        from buildbot import config

        try:
            options = shell_config(*args, **kwargs)
        except TypeError as e:
            config.error(f"ShellService: {e}")
            return
        for error in options.errors():
            config.error(f"ShellService: {error}")

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.socket_path: str | None = None
        self._group: str | int | None = None
        self._port: ListeningPort | None = None
        self.trail: AuditTrail | None = None
        self.config = ShellConfig()
        self.gate = ConnectionGate(peer_identity, RefusalAudit(lambda: self.trail, _seconds), _seconds)
        self._ticker = task.LoopingCall(self._tick)
        self.glue = BuildbotGlue(lambda: self.master)
        self.registry = SessionRegistry(self.glue, lambda: self.trail, _seconds)
        # Builds held for a shell: the HoldForShell step finds them here (master_side.holds.step.HoldHost).
        self.holds = Holds()
        self.retention = Retention(lambda: self.trail)  # transcript_retention_days (master_side.audit.retention)
        self.api = OperatorAPI(self.registry, self.glue, self.gate, lambda: self.trail,
                               lambda: self.master.botmaster, self.holds)
        self.fleet = FleetOperations(self.api, _reactor)  # fleet runs and facts (master_side.fleet)
        self._attaches: Consumer | None = None  # Buildbot's mq consumer of workers' attaches
        # Local users no policy rule grants anything are admitted among the few places for them
        # (master_side.operators.gate).
        self.gate.has_right = lambda who: self.policy.grants_some_right(who)
        self.api.moderator_wanted = self._moderator_wanted
        self.api.approval_wanted = self._approval_wanted
        super().__init__(*args, **kwargs)

    @property
    def sessions(self) -> dict[str, MasterSession]:
        return self.registry.sessions

    @property
    def policy(self) -> Policy:
        return self.api.policy

    @property
    def limits(self) -> SessionLimits:
        return self.registry.limits

    @property
    def pass_stdio(self) -> bool:
        """Whether the framed door serves a `-T` session's passed stdin and stdout (master_side.shell_socket.passed)."""
        return self.config.pass_stdio

    def build_activity(self, build_id: int) -> dict[str, tuple[int, int]]:
        """The held build's live sessions: their input bytes and viewers, by session id (the HoldForShell step
        watches them: master_side.holds.step.HoldHost)."""
        return {session.id: (session.bytes_in, len(session.viewers)) for session in self.registry.live()
                if session.build is not None and session.build.get("build_id") == build_id}

    def _moderator_wanted(self, session: MasterSession, why: str) -> None:
        """A four-eyes session waits for a moderator: the reporters' notice (master_side.holds.moderator_notices)."""
        moderation = session.moderation
        if moderation is None:
            return
        moderator_notices.announce(self.master, session.id, session.worker, session.identity.user,
                                   moderators_text(moderation.moderated_by), session.started, why,
                                   session.request.reason)

    def _approval_wanted(self, request: ApprovalRequest) -> None:
        """A request on a four-eyes worker waits for a moderator's approval: the reporters' notice."""
        moderator_notices.announce(self.master, request.id, request.worker, request.who.user, request.moderators,
                                   request.asked, moderator_notices.APPROVAL, request.reason,
                                   asks=request.kind.value)

    def command_socket(self, basedir: str) -> str | None:
        """The socket a command must name with ``--socket``: None when there is none, or it is the default one
        in the master's `basedir`, where `buildbot-shell` run in that directory finds it (the held-build notice:
        master_side.holds.notices.SocketHost)."""
        path = self.socket_path
        if not isinstance(path, str):
            return None
        default = os.path.abspath(os.path.join(basedir, DEFAULT_SOCKET))
        return None if os.path.abspath(path) == default else path

    @deferred
    async def reconfigService(self, *args: object, **kwargs: object) -> None:
        options = shell_config(*args, **kwargs)
        self.config = options
        self.api.policy = options.rules()
        self.registry.limits = options.limits()
        self.gate.bounds = options.bounds()
        self.retention.days = options.transcript_retention_days
        self.api.transfers.keep_bytes = bool(options.keep_transfer_bytes)
        self.api.transfers.stall_timeout = options.transfer_stall_timeout
        self.api.transfers.keep_text = options.keep_uploaded_text
        self.fleet.probes = dict(options.facts)
        self.fleet.limits = options.fleet_limits()
        self.api.approvals.limits = options.approval_limits()
        # The one budget of every stream's bytes waiting for the hashing thread (the process's: sessions and
        # transfers alike).
        hashing.BUDGET.total = options.max_hashing_total
        # Buildbot's REST writer from the reactor thread (master_side.glue.rest_write_fix); Banana's receiving without
        # its buffer rebuilt on each read and bounded (slaveshell.plumbing.banana_buffer,
        # slaveshell.plumbing.banana_bounds): each checked against the upstream code first (master_side.glue.upstream).
        # Without the bounds, no shells.
        from master_side.www import session_hook  # the www plugin's package: loaded when the service starts

        if not upstream.install(session_hook.install):
            log.critical("slaveshell: shells are unavailable: this Twisted is not the version slaveshell's bounds "
                         "were written for")
            return
        if not self._ticker.running:
            self._ticker.start(1.0, now=False)
        await self._cluster(options)
        trail = AuditTrail(self.master.basedir, str(getattr(self.master, "name", self.master.basedir)),
                           transcripts=options.transcripts, db_url=options.db_url,
                           record_input=options.record_input, redact=options.redact,
                           require_recording=options.require_recording, on_record_error=options.on_record_error,
                           seal_to=options.seal_to)
        if self.trail is None:
            self.trail = trail
            await self.trail.start()
            await self._watch_attaches()
        elif (trail.directory, trail.db_url) != (self.trail.directory, self.trail.db_url):
            log.warn("slaveshell: a new transcript directory or audit database takes effect at the next "
                     "master restart")
        else:
            # Recording options apply to sessions opened from now on.
            for attr in ("record_input", "redact", "require_recording", "on_record_error", "seal_recipients"):
                setattr(self.trail, attr, getattr(trail, attr))
        path = os.path.abspath(os.path.join(self.master.basedir, options.socket))
        if path != self.socket_path or options.group != self._group:
            await self._stop_listening()
            await self._listen(path, options.group)

    @deferred
    async def stopService(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
        self.registry.end_all("the master is shutting down")
        log.info("slaveshell: stopping (sessions ended)")
        await self._stop_listening()
        log.info("slaveshell: stopping (socket closed)")
        await self._cluster(None)
        self.fleet.interrupt_all()
        self.api.approvals.stop()
        if self._attaches is not None:
            consumer, self._attaches = self._attaches, None
            consumer.stopConsuming()
        if self.trail is not None:
            await self.trail.stop()
            self.trail = None
        log.info("slaveshell: stopped")
        await super().stopService()

    @deferred
    async def _watch_attaches(self) -> None:
        """Workers attaching, as Buildbot announces them (before it offers them builds): pending fleet runs
        (master_side.fleet.pending) pause and run there; and the pending rows, read once now."""
        def attached(_key: tuple[str, ...], data: object) -> None:
            name = data.get("name") if isinstance(data, dict) else None
            if isinstance(name, str):
                self.fleet.pending.attached(name)

        try:
            self._attaches = await self.master.mq.startConsuming(attached, ("workers", None, "connected"))
        except Exception:
            log.failure("slaveshell: workers' attaches cannot be followed: pending fleet runs wait for a reload")
        self.fleet.pending.load()

    @deferred
    async def _listen(self, path: str, group: str | int | None) -> None:
        from twisted.internet import reactor

        # 0600 unless a group is named: the socket is the door to every worker.
        mode = 0o660 if group is not None else 0o600
        # Connections are counted and bounded per uid as they are accepted, before a byte is read; a client
        # that opens with the framed door's magic is served by master_side.shell_socket.door, anything else refused.
        # What a client sent before it closed is served even when a write met the close first (shell_socket.port).
        factory = DoorFactory(self, self.gate)
        _break_dead_lock(path + ".lock")
        try:
            self._port = listen(path, factory, mode, reactor)
        except Exception as e:
            # The shell must never cost the master its start: log loudly and go on without the socket.
            log.critical("slaveshell: cannot listen on {path}: {e}; shells are unavailable until the next "
                         "reconfig or restart", path=path, e=e)
            return
        if group is not None:
            os.chown(path, -1, group_id(group))
        self.socket_path, self._group = path, group
        log.info("slaveshell: listening on {path} (mode {mode:o})", path=path, mode=mode)

    @deferred
    async def _stop_listening(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            await defer.maybeDeferred(port.stopListening)
            self.socket_path = None

    @deferred
    async def _cluster(self, options: ShellConfig | None) -> None:
        """Start, change or stop the link to a multi-master site's router (master_side.cluster.part)."""
        from twisted.internet import reactor

        wanted = options.cluster if options is not None else None
        part = self.api.cluster
        if part is not None and part.config != wanted:
            self.api.cluster = None
            await part.stop()
        if wanted is not None and self.api.cluster is None:
            api = self.api
            part = ClusterPart(wanted, lambda: self.master, self.glue, self.registry, lambda: self.policy, reactor,
                               opener=api.open_for_master, attacher=api.attach_for_master,
                               audit=lambda who, worker, message: self.gate.audit(who, "refused", message, worker),
                               open_timeout=lambda: api.open_timeout, reader=api, event=self._record_event,
                               copier=api.copy_for_master, routed=self._record_routed, killer=api.kill_for_master)
            part.start()
            self.api.cluster = part

    def _record_routed(self, who: Identity, worker: str, record_id: str | None, detail: str) -> None:
        """An audit event of what this master's operator asked of another master (master_side.cluster.relay)."""
        trail = self.trail
        if trail is not None:
            trail.routed(who, worker, record_id, detail)

    def _record_event(self, kind: str, session_id: str, worker: str, who: Identity, detail: str) -> None:
        """An audit event of another master's read of this one's records (master_side.cluster.records)."""
        trail = self.trail
        if trail is not None:
            trail.record_read(kind, session_id, worker, who, detail)

    def _tick(self) -> None:
        try:
            self.gate.tick()
        except Exception:
            log.failure("slaveshell: error checking the operator connections")
        now = self.trail.reactor.seconds() if self.trail is not None else 0.0
        self.registry.tick(now)
        self.api.transfers.tick()
        self.retention.tick(now)
        self.fleet.pending.tick(now)
        if self.api.cluster is not None:
            self.api.cluster.tick(now)


def _seconds() -> float:
    return _reactor().seconds()


def _reactor() -> Clock:
    from twisted.internet import reactor

    clock: Clock = reactor  # type: ignore[assignment]
    return clock


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

