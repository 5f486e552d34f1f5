"""The parts of a session the relay (master_side.relay) is made of: its states and their transition table,
the viewers' roles, a viewer with its credit windows, and what the relay tells the transcript recorder and
the audit index."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from slaveshell.flow import CreditWindow
from slaveshell.policy import Identity
from slaveshell.protocol import INPUT_WINDOW, OUTPUT_WINDOW, STREAM_OUT, ProtocolError
from slaveshell.protocol import Role as Role  # re-exported: the relay names roles from here

if TYPE_CHECKING:
    from .relay import MasterSession

# An answer-less call to a peer: the method's name, then its arguments (see slaveshell.protocol).
Send = Callable[..., None]


class Recorder(Protocol):
    """What the relay tells the audit trail (master_side.recorder implements it)."""

    def output(self, data: bytes, stream: int = STREAM_OUT) -> None: ...
    # flush False: the caller records an output right after, which writes this input's event with its own (one
    # write for a keystroke and its echo), still before anything is relayed.
    def input(self, data: bytes, hidden: bool, flush: bool = True) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def marker(self, text: str) -> None: ...
    def flush(self) -> None: ...
    def end(self, session: MasterSession) -> None: ...


class NullRecorder:
    def flush(self) -> None:
        pass

    def output(self, data: bytes, stream: int = STREAM_OUT) -> None:
        pass

    def input(self, data: bytes, hidden: bool, flush: bool = True) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        pass

    def marker(self, text: str) -> None:
        pass

    def end(self, session: MasterSession) -> None:
        pass


class ViewerEvents(Protocol):
    """What the relay tells the audit index of a session's viewers (master_side.audit_trail.AuditTrail)."""

    def viewer_joined(self, session: MasterSession, viewer: Viewer) -> None: ...
    def viewer_left(self, session: MasterSession, viewer: Viewer, why: str) -> None: ...
    def viewer_attached(self, session: MasterSession, viewer: Viewer) -> None: ...
    def viewer_detached(self, session: MasterSession, viewer: Viewer, why: str) -> None: ...


class NoViewerEvents:
    """A session nobody audits (a session made outside `OperatorAPI.open`)."""

    def viewer_joined(self, session: MasterSession, viewer: Viewer) -> None:
        pass

    def viewer_left(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        pass

    def viewer_attached(self, session: MasterSession, viewer: Viewer) -> None:
        pass

    def viewer_detached(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        pass


class LateEvent(ProtocolError):
    """A peer's event for a session, or a view, that has already ended: a race with the end, not misbehaviour.
    The PB adapters drop it without an answer to the peer, as for any answer-less call."""


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
    def __init__(self, identity: Identity, role: Role, send: Send) -> None:
        self.identity = identity
        self.role = role
        self.send = send
        self.window = CreditWindow(OUTPUT_WINDOW)  # worker output in flight to this viewer
        self.own = 0  # bytes the master itself sent (notices, the recent-output replay) not yet acknowledged
        self.input_window = CreditWindow(INPUT_WINDOW)
        # The operator connection (PB broker) this view is on, for the per-connection bounds (master_side.limits).
        self.connection: object = None

    def __repr__(self) -> str:
        return f"<Viewer {self.identity.user} {self.role.value}>"
