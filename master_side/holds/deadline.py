"""When a build held by `HoldForShell` is released by itself: the hold's deadlines, without I/O.

Three limits, each optional but the last:

- `wait_for_operator`: seconds from the hold's start to the first operator stepping in. Until then the hold waits
  for a person, not for the clock of a night: nothing else ends it earlier.
- `idle_after_attach`: once someone has stepped in, seconds without activity. Activity is an operator stepping in
  (a session into the build, or a viewer joining one) or typing into one of the build's sessions; the idle time
  counts while nobody is connected and while nothing is typed.
- `max_hold`: the hard maximum from the hold's start, whatever happens; no extension goes past it.

An operator with the right may extend the hold (`extend`): its deadline becomes now + the duration they asked,
never past `max_hold`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

# max_hold when wait_for_operator or idle_after_attach is given and neither max_hold nor timeout is.
DEFAULT_MAX_HOLD = 24 * 3600.0
# timeout's default when none of the limits is given.
DEFAULT_TIMEOUT = 1800.0


def limits(timeout: float | None, wait_for_operator: float | None, idle_after_attach: float | None,
           max_hold: float | None) -> tuple[float, str | None]:
    """max_hold as the step uses it, and what is wrong with the limits (None: nothing)."""
    if max_hold is None:
        max_hold = timeout
    if max_hold is None:
        max_hold = DEFAULT_TIMEOUT if wait_for_operator is None and idle_after_attach is None else DEFAULT_MAX_HOLD
    for name, value in (("max_hold", max_hold), ("wait_for_operator", wait_for_operator),
                        ("idle_after_attach", idle_after_attach)):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0
                                  or value == float("inf")):
            return max_hold, f"HoldForShell: {name} must be a positive number of seconds"
    if wait_for_operator is not None and wait_for_operator > max_hold:
        return max_hold, "HoldForShell: wait_for_operator cannot be longer than max_hold"
    return float(max_hold), None


def plain(value: object) -> bool:
    return value is None or isinstance(value, (int, float))


def number(value: object) -> float | None:
    """A rendered timeout: a number, or text that spells one (a build property); None when absent; NaN when it
    is neither (refused by limits)."""
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        return float(str(value))
    except ValueError:
        return float("nan")


class Limit(enum.Enum):
    """Which limit the current deadline is."""

    WAIT = "wait_for_operator"
    IDLE = "idle_after_attach"
    EXTENDED = "extended"
    MAX = "max_hold"


def duration(seconds: float) -> str:
    """`seconds` as people say it: 45 s, 30 min, 2 h, 1 h 30 min."""
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds:g} s"
    hours, rest = divmod(seconds, 3600)
    minutes = round(rest / 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def clock_time(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


class ExtendError(Exception):
    """An extension that cannot be granted; the message is for the operator."""


@dataclass
class HoldTimes:
    """A hold's limits and what happened so far (times in the reactor's seconds since the epoch)."""

    started: float
    max_hold: float
    wait_for_operator: float | None = None
    idle_after_attach: float | None = None
    attached_at: float | None = None  # the first operator stepped in
    last_active: float | None = None  # the last step-in or keystroke
    extended_until: float | None = None
    extended_by: str | None = None

    @property
    def hard_end(self) -> float:
        return self.started + self.max_hold

    def deadline(self) -> tuple[float, Limit]:
        """When the hold ends if nothing more happens, and which limit that is."""
        when, limit = self.hard_end, Limit.MAX
        if self.attached_at is None:
            if self.wait_for_operator is not None:
                when, limit = self.started + self.wait_for_operator, Limit.WAIT
        elif self.idle_after_attach is not None:
            when, limit = (self.last_active or self.attached_at) + self.idle_after_attach, Limit.IDLE
        if self.extended_until is not None and self.extended_until > when:
            when, limit = self.extended_until, Limit.EXTENDED
        if when >= self.hard_end:
            return self.hard_end, Limit.MAX
        return when, limit

    def active(self, now: float) -> None:
        """An operator stepped in or typed."""
        if self.attached_at is None:
            self.attached_at = now
        self.last_active = now

    def extend(self, now: float, seconds: float, who: str) -> float:
        """The hold's new deadline: now + `seconds`, at most `max_hold` from its start. ExtendError when that
        would not move it later."""
        current, limit = self.deadline()
        wanted = now + seconds
        new = min(wanted, self.hard_end)
        if new <= current:
            if limit is Limit.MAX:
                raise ExtendError(f"the hold already ends at its maximum ({duration(self.max_hold)} after it "
                                  f"began, {clock_time(self.hard_end)}): it cannot be extended past max_hold")
            raise ExtendError(f"the hold already ends later ({clock_time(current)}) than {duration(seconds)} "
                              "from now")
        self.extended_until = new
        self.extended_by = who
        return new

    def ended(self, limit: Limit) -> str:
        """Why the hold ended by itself, for the build's log and summary."""
        if limit is Limit.WAIT:
            return f"timed out: nobody stepped in within {duration(self.wait_for_operator or 0)}"
        if limit is Limit.IDLE:
            return f"timed out: idle for {duration(self.idle_after_attach or 0)}"
        if limit is Limit.EXTENDED:
            return f"timed out: the extension by {self.extended_by} ended"
        return f"timed out after {self.max_hold:g} s"

    def summary(self) -> str:
        """The deadline in a few words, for the step's text."""
        when, limit = self.deadline()
        at = clock_time(when)
        if limit is Limit.WAIT:
            text = f"until {at} unless someone steps in"
            if self.idle_after_attach is not None:
                text += f", then {duration(self.idle_after_attach)} idle"
        elif limit is Limit.IDLE:
            text = f"until {at} ({duration(self.idle_after_attach or 0)} idle)"
        elif limit is Limit.EXTENDED:
            text = f"until {at} (extended by {self.extended_by})"
        else:
            return f"until {at} (max_hold)"
        return f"{text}; at most until {clock_time(self.hard_end)}"

    def explained(self) -> list[str]:
        """Each limit, for the hold's log: how the hold ends by itself."""
        lines = []
        if self.wait_for_operator is not None:
            lines.append(f"if nobody steps in by {clock_time(self.started + self.wait_for_operator)} "
                         f"(wait_for_operator: {duration(self.wait_for_operator)})")
        if self.idle_after_attach is not None:
            lines.append(f"once someone has stepped in, after {duration(self.idle_after_attach)} with nothing "
                         "typed or nobody connected (idle_after_attach)")
        lines.append(f"in any case at {clock_time(self.hard_end)} (max_hold: {duration(self.max_hold)})")
        return lines

    def to_row(self, now: float) -> dict[str, object]:
        when, limit = self.deadline()
        return {"deadline": when, "limit": limit.value, "remaining": round(max(0.0, when - now), 1),
                "started": self.started, "max_end": self.hard_end, "attached": self.attached_at is not None,
                "wait_for_operator": self.wait_for_operator, "idle_after_attach": self.idle_after_attach,
                "max_hold": self.max_hold, "extended_by": self.extended_by}
