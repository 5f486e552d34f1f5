"""How many views the master serves: one per session and connection, at most `per_session` viewers of a session,
and at most `per_operator` views of sessions by one operator other than those of the sessions it owns (the
bounds ``max_viewers_per_session`` and ``max_viewers_per_operator``, master_side.operators.bounds)."""

from __future__ import annotations

from collections.abc import Iterable

from master_side.sessions.session import MasterSession
from slaveshell.vocabulary.policy import Identity


def viewer_refusal(who: Identity, connection: object, session: MasterSession, sessions: Iterable[MasterSession],
                   per_session: int, per_operator: int) -> str | None:
    """Why `who` may not add a view of `session` on `connection` (any object that identifies the operator's
    connection, as `Viewer.connection` holds it), or None. `sessions` are the live sessions; a view other than a
    session's owner counts against its operator."""
    if any(v.connection is connection for v in session.viewers):
        return f"this connection already views session {session.id}"
    if len(session.viewers) >= per_session:
        return f"session {session.id} already has {per_session} viewers (the master's limit)"
    views = sum(1 for s in sessions if s.live for v in s.viewers if v is not s.owner and v.identity.key == who.key)
    if views >= per_operator:
        return f"{who.user} already has {per_operator} views of sessions (the master's limit)"
    return None
