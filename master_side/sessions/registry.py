"""`SessionRegistry`: the master's live sessions, and everything that happens to them without an operator
asking: disconnect hooks, heartbeats to their workers, stall detection, close deadlines, session time limits,
and the routing of failures (a peer's protocol error, a lost viewer or worker, a transcript that cannot be
written, a held build that was stopped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from twisted.logger import Logger

from master_side.glue.buildbot import BuildbotGlue
from master_side.holds.step import StopReason
from master_side.sessions.model import State, Viewer
from master_side.sessions.session import MasterSession
from master_side.sessions.session_limits import SessionLimits
from master_side.sessions.worker_link import Undo, WorkerPeer
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import ProtocolError

log = Logger()

# Heartbeats on quiet sessions (seconds), well within the stall timeout.
HEARTBEAT = 15.0


class SessionTrail(Protocol):
    """What the registry asks of the audit trail (master_side.audit.trail.AuditTrail): what to do when a
    transcript cannot be written, and that a session ended."""

    on_record_error: str

    def ended(self, session: MasterSession) -> None: ...


class SessionRegistry:
    """Live sessions by id. `trail` gives the current audit trail (None before the service starts or after it
    stopped); `clock` is the reactor's `seconds`."""

    def __init__(self, glue: BuildbotGlue, trail: Callable[[], SessionTrail | None],
                 clock: Callable[[], float]) -> None:
        self.sessions: dict[str, MasterSession] = {}
        self.glue = glue
        self.trail = trail
        self.clock = clock
        self.limits = SessionLimits()
        self.heartbeat = HEARTBEAT
        # Disconnect notifications to undo when a session ends, by session id.
        self._hooks: dict[str, list[Undo]] = {}
        # Each live session's worker, for heartbeats.
        self._workers: dict[str, WorkerPeer] = {}
        self._pinging: set[str] = set()

    def __iter__(self) -> Iterator[MasterSession]:
        return iter(list(self.sessions.values()))

    def get(self, session_id: str) -> MasterSession | None:
        """The live session `session_id`, or None."""
        session = self.sessions.get(session_id)
        return session if session is not None and session.live else None

    def live(self) -> list[MasterSession]:
        return [s for s in self.sessions.values() if s.live]

    def add(self, session: MasterSession, worker: WorkerPeer) -> None:
        """A session the worker has started: heartbeats and the worker's disconnection apply from now."""
        self.sessions[session.id] = session
        self._workers[session.id] = worker
        self.hook(session, worker.on_disconnect(lambda: session.abort(f"connection to worker {session.worker} lost")))

    def hook(self, session: MasterSession, undo: Undo) -> None:
        """Keep `undo` (a disconnect notification's undoing) to run when the session ends."""
        self._hooks.setdefault(session.id, []).append(undo)

    def pause(self, session: MasterSession) -> None:
        if self.glue.pause(session.worker, session.id, f"slaveshell session {session.id} by {session.identity.user}"):
            session.recorder.marker("worker paused in Buildbot for this session")

    def ended(self, session: MasterSession) -> None:
        """The session's `on_end`: forget it, undo its hooks, give the worker's reference back, unpause its worker,
        close its audit record."""
        self.sessions.pop(session.id, None)
        worker = self._workers.pop(session.id, None)
        self._pinging.discard(session.id)
        for undo in self._hooks.pop(session.id, []):
            undo()
        if worker is not None:
            worker.release()  # the worker's end of the session leaves its PB table now (slaveshell.plumbing.remote)
        self.glue.unpause(session.worker, session.id)
        trail = self.trail()
        if trail is not None:
            trail.ended(session)

    def end_all(self, why: str) -> None:
        for session in self:
            try:
                session.close(why)
                session.abort(why)
            except Exception:
                log.failure("slaveshell session {sid}: error while ending it at shutdown", sid=session.id)

    # -- the clock -----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second: close deadlines, stalled workers, heartbeats, hidden-input spans, time limits."""
        limits = self.limits
        for session in self:
            try:
                if session.close_overdue(now, limits.close_deadline):
                    continue
                if session.worker_stalled(now, limits.stall_timeout):
                    continue
                self._heartbeat(session, now)
                session.recorder.flush()  # ends a span of hidden input gone idle, with its marker
                session.tick(now, limits.detach_grace, limits.idle_timeout, limits.max_duration)
            except Exception:
                # One session's trouble must not stop the clock for the others (a LoopingCall dies on errors).
                log.failure("slaveshell session {sid}: error in its timers", sid=session.id)

    def _heartbeat(self, session: MasterSession, now: float) -> None:
        worker = self._workers.get(session.id)
        # Ping well within the stall timeout, so only a worker that really stopped answering trips it.
        stall = self.limits.stall_timeout
        interval = min(self.heartbeat, stall / 3) if stall else self.heartbeat
        if worker is None or session.id in self._pinging or now - session.worker_seen < interval:
            return
        self._pinging.add(session.id)

        def answered(alive: bool) -> None:
            self._pinging.discard(session.id)
            if alive:
                session.worker_seen = self.clock()

        worker.ping().addCallback(answered)

    # -- failures ------------------------------------------------------------------------------

    def peer_error(self, session: MasterSession, error: ProtocolError) -> None:
        """A peer broke the protocol: end its session with the reason, keep every connection up. Once the session
        has ended, a peer's further bad calls on it are dropped unlogged: logged, each ~20-byte call a rogue worker
        sends would be a line of the master's log, and a flood of them would rotate its history away."""
        if session.state is State.ENDED:
            return
        log.warn("slaveshell session {sid}: protocol error: {e}", sid=session.id, e=visible(error))
        session.close(f"protocol error: {error}")
        session.abort(f"protocol error: {error}")

    def viewer_failed(self, session: MasterSession, viewer: Viewer, refusal: str | None) -> None:
        """A call to a viewer failed: its connection is gone (`refusal` None) or it refused the call."""
        if refusal is not None:
            log.warn("slaveshell session {sid}: a viewer refused a call: {e}", sid=session.id, e=visible(refusal))
        session.viewer_lost(viewer)

    def worker_lost(self, session: MasterSession) -> None:
        session.abort(f"connection to worker {session.worker} lost")

    def worker_refused(self, session: MasterSession, refusal: str) -> None:
        log.warn("slaveshell session {sid}: worker refused a call: {e}", sid=session.id, e=visible(refusal))

    def recording_failed(self, session: MasterSession, error: OSError) -> None:
        """The session's transcript cannot be written: end it, or warn its viewers (on_record_error)."""
        trail = self.trail()
        assert trail is not None
        reason = f"the transcript cannot be written ({error.strerror or error})"
        if trail.on_record_error == "continue":
            session.notice(f"WARNING: {reason}; the session continues UNRECORDED")
        else:
            session.close(f"session ended: {reason}")
            session.abort(f"session ended: {reason}")

    def build_released(self, session: MasterSession, why: StopReason) -> None:
        """A stopped build takes its shells with it; a release or a timeout leaves them open."""
        if why is StopReason.STOPPED and session.live:
            session.notice("the build was stopped; this session ends")
            session.close("the held build was stopped")
