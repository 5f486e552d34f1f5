"""The parts of a session the relay (master_side.sessions.session) is made of: its states and their transition table,
the viewers' roles, a viewer with its end and its credit windows, and the worker's session as the relay holds it
before the start and after the end (`NOWHERE`). What the relay tells the transcript recorder and the audit index
(`Recorder`, `ViewerEvents`) is typed against the session itself, and stands beside it."""

from __future__ import annotations

import enum
import secrets

from slaveshell.vocabulary.flow import CreditWindow
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import (
    INPUT_WINDOW,
    OUTPUT_WINDOW,
    OperatorSink,
    ProtocolError,
    SessionControl,
)
from slaveshell.vocabulary.protocol import Role as Role  # re-exported: the relay names roles from here


class _Nowhere:
    """The worker's session before the start and after the end: nothing to tell it."""

    def input(self, data: bytes) -> None:
        pass

    def eof(self) -> None:
        pass

    def stdout_closed(self) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        pass

    def signal(self, signum: int) -> None:
        pass

    def ack(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


NOWHERE: SessionControl = _Nowhere()


class LateEvent(ProtocolError):
    """A peer's event for a session, or a view, that has already ended: a race with the end, not misbehaviour.
    The adapters (the worker's `WorkerSink`, a door's `View`) drop it without an answer to the peer."""


class ReadOnly(ProtocolError):
    """A watcher tried to type, resize or signal: refused to it, its view stays."""


class State(enum.Enum):
    OPENING = "opening"
    ATTACHED = "attached"
    DETACHED = "detached"
    ENDED = "ended"


# The session's life: what each state may become. Anything else is a bug in the master, not a peer's doing.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPENING: frozenset({State.ATTACHED, State.ENDED}),
    State.ATTACHED: frozenset({State.DETACHED, State.ENDED}),
    State.DETACHED: frozenset({State.ATTACHED, State.ENDED}),
    State.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """The master tried to move a session between states that TRANSITIONS does not join."""



def new_session_id() -> str:
    return secrets.token_hex(6)


class Viewer:
    """One operator's view of a session: who, in which role, its end of the session (`sink`, the door's), and its
    credit windows."""

    def __init__(self, identity: Identity, role: Role, sink: OperatorSink) -> None:
        self.identity = identity
        self.role = role
        self.sink = sink
        self.window = CreditWindow(OUTPUT_WINDOW)  # worker output in flight to this viewer
        self.own = 0  # bytes the master itself sent (notices, the recent-output replay) not yet acknowledged
        self.input_window = CreditWindow(INPUT_WINDOW)
        # The input window this viewer may use: INPUT_WINDOW, or the session's grant for its owner
        # (MasterSession.grant_windows, slaveshell.vocabulary.windows).
        self.input_grant = INPUT_WINDOW
        # The operator's connection this view is on, for the per-connection bounds
        # (master_side.sessions.viewer_bounds).
        self.connection: object = None

    def __repr__(self) -> str:
        return f"<Viewer {self.identity.user} {self.role.value}>"
