"""Notices to a session's viewers about others joining, bounded per minute: a flood of watchers must not flood
the owner's terminal (the rest are summed up in the next notice that goes)."""

from __future__ import annotations

from collections.abc import Callable

# Notices about viewers joining, per session: at most this many per minute.
JOIN_NOTICES_PER_MINUTE = 5


class NoticeBudget:
    """At most `per_minute` notices in any minute; `take()` says whether one may go now and how many were
    left out since the last that went."""

    def __init__(self, clock: Callable[[], float], per_minute: int = JOIN_NOTICES_PER_MINUTE) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self._sent: list[float] = []
        self.left_out = 0

    def take(self) -> tuple[bool, int]:
        now = self.clock()
        self._sent = [t for t in self._sent if now - t < 60.0]
        if len(self._sent) >= self.per_minute:
            self.left_out += 1
            return False, 0
        self._sent.append(now)
        left_out, self.left_out = self.left_out, 0
        return True, left_out
