"""Typed views of the parts of a Twisted reactor that slaveshell's logic uses: time and timers.

Structural (typing Protocols): any Twisted reactor fits, and so does `twisted.internet.task.Clock` (or a
`MemoryReactorClock`) in tests. Twisted's zope interfaces (`IReactorTime`, `IDelayedCall` in
twisted.internet.interfaces) say the same, but mypy cannot read zope interfaces without a plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class DelayedCall(Protocol):
    """A call scheduled with `Clock.callLater` (IDelayedCall)."""

    def active(self) -> bool:
        """True until it has run or been cancelled."""
        ...

    def cancel(self) -> None:
        """Stop it from running; only while `active()`."""
        ...


class Clock(Protocol):
    """The reactor's time (IReactorTime): seconds since the epoch, and timers."""

    def seconds(self) -> float:
        """The current time in seconds (a float, as time.time)."""
        ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object,
                  **kw: object) -> DelayedCall:
        """Run `callable(*args, **kw)` after `delay` seconds."""
        ...
