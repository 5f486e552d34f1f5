"""The clocks of one session (master_side.sessions.session.MasterSession): a stalled worker, an unconfirmed close, the
detach grace, the idle and running limits. Called by the registry's one-second tick (master_side.sessions.registry)."""

from __future__ import annotations

from typing import Protocol

# A well-behaved peer overshoots its window by at most one read (and, after exit, what the kernel still held).
# Past this much, it is not overshoot but a peer that ignores flow control.
WINDOW_TOLERANCE = 4


class _Timed(Protocol):
    """What the clocks need of a session."""

    worker: str
    started: float
    last_activity: float
    worker_seen: float
    detached_at: float | None
    closing_since: float | None
    close_reason: str | None
    _warned: dict[str, float]

    @property
    def live(self) -> bool: ...
    def close(self, reason: str) -> None: ...
    def abort(self, reason: str) -> None: ...
    def _notice_all(self, text: str) -> None: ...


class SessionTimers:
    """Mixed into MasterSession: each method is a check against `now` (seconds, the session's clock)."""

    def worker_stalled(self: _Timed, now: float, stall_timeout: float | None) -> bool:
        """True when the worker has not answered for longer than the timeout (heartbeats included): a stopped
        or wedged worker process keeps its TCP connection up, so nothing else would notice."""
        if not self.live or stall_timeout is None or now - self.worker_seen < stall_timeout:
            return False
        reason = f"worker {self.worker} stopped answering for {stall_timeout:g} s (stalled or stopped?)"
        self._notice_all(f"session ends: {reason}")
        self.close(reason)
        self.abort(reason)
        return True

    def close_overdue(self: _Timed, now: float, deadline: float | None) -> bool:
        """True (and the session ended on the master's side) when the worker has not confirmed the end within
        `deadline` seconds of the master's close: a worker that ignores close must not hold the session, its
        slot and its open audit row."""
        if not self.live or self.closing_since is None or deadline is None or now - self.closing_since < deadline:
            return False
        reason = f"worker {self.worker} did not confirm the end within {deadline:g} s"
        self._notice_all(f"session ends: {reason}")
        self.abort(f"{self.close_reason}; {reason}" if self.close_reason else reason)
        return True

    def tick(self: _Timed, now: float, detach_grace: float | None, idle_timeout: float | None,
             max_duration: float | None, warn_before: float = 60.0) -> None:
        """Called about once a second: the detach grace, the idle timeout and the maximum duration."""
        if not self.live or self.close_reason is not None:
            return
        if self.detached_at is not None and detach_grace is not None and now - self.detached_at >= detach_grace:
            self.close(f"detached for longer than {detach_grace:g} s")
            return
        for limit, since, what in ((idle_timeout, self.last_activity, "idle"),
                                   (max_duration, self.started, "running")):
            if limit is None:
                continue
            left = limit - (now - since)
            if left <= 0:
                self._notice_all(f"session ends: {what} for {limit:g} s")
                self.close(f"{what} for {limit:g} s")
                return
            if left <= min(warn_before, limit / 2) and self._warned.get(what) != since:
                self._warned[what] = since
                self._notice_all(f"this session ends in {left:.0f} s ({what} limit {limit:g} s)"
                                 + (" unless you type" if what == "idle" else ""))
