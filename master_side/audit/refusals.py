"""Refusals and drops (events of kind ``refused`` and ``dropped``) written through the audit trail and logged, at
most once per uid and kind of refusal per `AUDIT_INTERVAL` seconds, with the number of the others left out: a
user hammering a bound must not flood the index or the log. The doors (the connection gate,
master_side.operators.gate; the web terminal) and the operator API refuse through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from twisted.logger import Logger

from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity

log = Logger()

# At most one audit event and log line per uid and kind of refusal in this many seconds; the rest are counted.
AUDIT_INTERVAL = 10.0

RefusalKind = Literal["refused", "dropped"]


class RefusalRecord(Protocol):
    """Where refusals and drops are written: the audit trail (master_side.audit.trail.AuditTrail)."""

    def refused(self, who: Identity, worker: str | None, reason: str) -> None: ...
    def dropped(self, who: Identity, worker: str | None, reason: str) -> None: ...


class RefusalAudit:
    """Refusals and drops written to `trail()` (the current audit trail; None: the service is not running) and
    logged: at most one per uid and kind of refusal per interval; the ones left out are counted and reported
    with the next one, or by `flush()` once the interval has passed."""

    def __init__(self, trail: Callable[[], RefusalRecord | None], clock: Callable[[], float],
                 interval: float = AUDIT_INTERVAL) -> None:
        self.trail = trail
        self.clock = clock
        self.interval = interval
        self._last: dict[tuple[object, RefusalKind, str], float] = {}
        # Left out since the last event: (count, who, the latest reason, worker).
        self._left_out: dict[tuple[object, RefusalKind, str], tuple[int, Identity, str, str | None]] = {}

    def __call__(self, who: Identity, kind: RefusalKind, reason: str, worker: str | None = None) -> None:
        """`kind` is "refused" or "dropped"; `reason` says what and which bound, its part before the first
        colon naming the kind of refusal; `worker`, if it concerns one."""
        key = (who.key, kind, reason.split(":", 1)[0])  # the uid, or a web user's name (policy.WebIdentity)
        if self.clock() - self._last.get(key, -self.interval) < self.interval:
            count = self._left_out.get(key, (0,))[0]
            self._left_out[key] = (count + 1, who, reason, worker)
            return
        self._emit(key, who, kind, reason, worker)

    def flush(self) -> None:
        """Report what was left out once its interval has passed (called about once a second)."""
        now = self.clock()
        for key, (count, who, reason, worker) in list(self._left_out.items()):
            if now - self._last.get(key, -self.interval) >= self.interval:
                del self._left_out[key]
                self._emit(key, who, key[1], f"{count} more: {reason}" if count > 1 else reason, worker,
                           count_left_out=False)
        # Forget the times of refusals past their interval: the table stays as small as the recent refusals.
        for key, last in list(self._last.items()):
            if now - last >= self.interval and key not in self._left_out:
                del self._last[key]

    def _emit(self, key: tuple[object, RefusalKind, str], who: Identity, kind: RefusalKind, reason: str,
              worker: str | None, count_left_out: bool = True) -> None:
        self._last[key] = self.clock()
        more = self._left_out.pop(key, (0,))[0] if count_left_out else 0
        detail = reason + (f" (and {more} more in the last {self.interval:g} s)" if more else "")
        log.warn("slaveshell: {kind} {who}: {detail}", kind=kind, who=visible(str(who)), detail=visible(detail))
        trail = self.trail()
        if trail is None:
            return
        if kind == "dropped":
            trail.dropped(who, worker, detail)
        else:
            trail.refused(who, worker, detail)
