"""`SessionLimits`: a session's time limits and the session quotas, as master.cfg's ShellService options set them
(master_side.config.ShellConfig.limits)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionLimits:
    """Session time limits (seconds, None for none) and session quotas (counts, None for none)."""

    detach_grace: float | None = 300.0
    idle_timeout: float | None = None
    max_duration: float | None = None
    per_worker: int | None = None
    per_operator: int | None = None
    stall_timeout: float | None = 60.0
    close_deadline: float | None = 10.0
