"""Transcript retention: `ShellService(transcript_retention_days=N)` removes from disk the transcripts (and their
attachments) of sessions that ended more than N days ago. The index rows stay, marked with the time of the
prune (`pruned`), and each prune is an audit event (kind "prune", docs/audit-schema.md), both written by the
trail (`AuditTrail.pruned`). None (the default) keeps transcripts forever.

Driven by the service's one-second tick, at most once per `interval` (an hour, or a tenth of the retention
when that is shorter); the query runs in the audit store's read pool (master_side.audit.reads) and the
deletions in a thread, never on the reactor thread. A run that fails (the database away, a file that cannot be
removed) is logged and tried again at the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.audit.transcripts import remove_transcript
from slaveshell.vocabulary.display import visible

if TYPE_CHECKING:
    from master_side.audit.trail import AuditTrail

log = Logger()

DAY = 86400.0
# Rows handled per run: a master with a long backlog catches up over a few runs.
BATCH = 100


class Retention:
    def __init__(self, trail: Callable[[], AuditTrail | None]) -> None:
        self.trail = trail
        self.days: float | None = None
        self._next = 0.0
        self._running: defer.Deferred[object] | None = None

    @property
    def interval(self) -> float:
        """Seconds between runs."""
        return min(3600.0, max(1.0, (self.days or 0.0) * DAY / 10))

    def tick(self, now: float) -> defer.Deferred[object] | None:
        """Start a run when one is due (and none is going on); its Deferred, or None."""
        trail = self.trail()
        if self.days is None or trail is None or self._running is not None or now < self._next:
            return None
        self._next = now + self.interval
        d = self._running = self._run(trail, now - self.days * DAY, now)

        def done(result: object) -> object:
            self._running = None
            if isinstance(result, Failure):
                log.failure("slaveshell: transcript retention failed; next try in {s:g} s", result, s=self.interval)
                return None
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def _run(self, trail: AuditTrail, cutoff: float, now: float) -> Any:
        days = self.days or 0.0
        try:
            rows = yield trail.store.prunable(trail.master_name, cutoff, BATCH)
        except Exception as e:
            log.warn("slaveshell: transcript retention: the audit database is unavailable ({e}); next try in "
                     "{s:g} s", e=visible(str(e).splitlines()[0] if str(e) else repr(e)), s=self.interval)
            return 0
        pruned = 0
        for row in rows:
            path = trail.transcript_path(row)
            if path is None:
                detail = "transcript not removed: it is not in this master's transcript directory"
            else:
                try:
                    freed = yield threads.deferToThread(remove_transcript, path)
                except OSError as e:
                    log.error("slaveshell: transcript retention: cannot remove {path}: {e}", path=visible(path),
                              e=visible(e.strerror or str(e)))
                    continue
                detail = (f"transcript removed after {days:g} days of retention: {os.path.basename(path)} "
                          f"({freed} bytes with its attachment)")
            trail.pruned(row, now, detail)
            pruned += 1
        if pruned:
            log.info("slaveshell: transcript retention: {n} transcripts older than {days:g} days pruned",
                     n=pruned, days=days)
        return pruned
