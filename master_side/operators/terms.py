"""The vocabulary of `master_side.operators.api`: its one error (`OperatorError`, with an `ErrorKind`), a
viewer's end of a session as a door provides it (`ViewerSink`), and the `View` that open and attach return: what
the door then calls with the operator's messages. Re-exported by `master_side.operators.api`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from master_side.sessions.model import LateEvent, ReadOnly, Role
from slaveshell.vocabulary.protocol import MAX_CHUNK, OperatorSink, ProtocolError

if TYPE_CHECKING:
    from master_side.sessions.model import Viewer
    from master_side.sessions.session import MasterSession
    from master_side.sessions.worker_link import Undo


class ErrorKind(enum.Enum):
    BAD_REQUEST = "bad request"
    DENIED = "permission denied"
    NOT_FOUND = "not found"
    LIMIT = "limit"  # a quota or bound of the master's
    UNAVAILABLE = "unavailable"  # the worker, the build or the audit database cannot serve it
    STOPPED = "stopped"  # the operator stopped waiting


class OperatorError(Exception):
    """An operation refused; `message` is for the operator (already as the wire shows it)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def database_unavailable(error: Exception) -> OperatorError:
    """The refusal of a read the audit database could not answer: its error's first line (or its type)."""
    first = (str(error).splitlines() or [type(error).__name__])[0]
    return OperatorError(ErrorKind.UNAVAILABLE, f"the audit database is unavailable: {first}")


class ViewerSink(OperatorSink, Protocol):
    """A viewer's end of a session, as the door provides it: the session's messages to the operator
    (slaveshell.vocabulary.protocol.OperatorSink); `connection` identifies the operator's connection for the
    per-connection bounds."""

    connection: object

    @property
    def gone(self) -> bool: ...  # the operator's connection is closed
    def on_disconnect(self, callback: Callable[[], None]) -> Undo: ...
    def on_failure(self, callback: Callable[[str | None], None]) -> None: ...  # None: connection lost


@dataclass(frozen=True)
class View:
    """An operator's view of a session, as open and attach return it, and the door's handle on it: an
    `OperatorControl` (slaveshell.vocabulary.protocol) that the door calls with the operator's messages, decoded and
    checked at the door's edge.

    A message the session refuses raises `ProtocolError` (a `LateEvent` when the session or the view ended
    while it was on its way); the door hands that, and any value its own decoding refused, to `refused`."""

    session: MasterSession
    viewer: Viewer
    # What a misbehaving owner costs: its session (master_side.sessions.registry.SessionRegistry.peer_error).
    on_error: Callable[[MasterSession, ProtocolError], None]

    @property
    def max_input(self) -> int:
        """The largest input message this view may send (the session's: slaveshell.vocabulary.flow.input_limits;
        a watcher's is never sent, and stays the smallest)."""
        return MAX_CHUNK if self.viewer.role is Role.WATCH else self.session.input_limits.chunk

    def input(self, data: bytes) -> None:
        self.session.viewer_input(self.viewer, data)

    def eof(self) -> None:
        self.session.viewer_eof(self.viewer)

    def stdout_closed(self) -> None:
        self.session.viewer_stdout_closed(self.viewer)

    def resize(self, cols: int, rows: int) -> None:
        self.session.viewer_resize(self.viewer, cols, rows)

    def signal(self, signum: int) -> None:
        self.session.viewer_signal(self.viewer, signum)

    def ack(self, nbytes: int) -> None:
        self.session.viewer_ack(self.viewer, nbytes)

    def close(self) -> None:
        self.session.viewer_close(self.viewer)

    def detach(self) -> None:
        self.session.viewer_detach(self.viewer)

    @property
    def session_id(self) -> str:
        return self.session.id

    @property
    def input_grant(self) -> int:
        return self.viewer.input_grant

    @property
    def live(self) -> bool:
        return self.session.live

    @property
    def worker(self) -> str:
        return self.session.worker

    @property
    def role(self) -> str:
        return self.viewer.role.value

    @property
    def size(self) -> tuple[int, int]:
        return self.session.size

    @property
    def moderated_by(self) -> tuple[str, ...] | None:
        """A four-eyes session's groups and web roles (its rule's `moderated_by`), None for any other."""
        moderation = self.session.moderation
        return None if moderation is None else tuple(str(g) for g in moderation.moderated_by)

    @property
    def moderator(self) -> bool:
        """Whether this view moderates its four-eyes session (a watcher admitted as one)."""
        moderation = self.session.moderation
        return moderation is not None and self.viewer in moderation.moderators

    def end(self, why: str) -> None:
        """End the session on the worker, recorded with `why` (its operator's end is gone for good)."""
        self.session.close(why)

    def refused(self, error: ProtocolError) -> OperatorError | None:
        """What a refused message costs, done, and the refusal for the operator (None for a late event: nobody to
        blame, nothing to answer). A misbehaving owner costs its session; anyone else is refused (a watcher
        trying to type: `ReadOnly`) or, for a real protocol error, loses its own view. The connection stays."""
        if isinstance(error, LateEvent):
            return None
        if self.viewer is self.session.owner:
            self.on_error(self.session, error)
        elif isinstance(error, ReadOnly):
            return OperatorError(ErrorKind.DENIED, str(error))
        else:
            self.session.remove_viewer(self.viewer, f"protocol error: {error}")
        return OperatorError(ErrorKind.BAD_REQUEST, str(error))


class Handle(Protocol):
    """What the framed door holds of an operator's session: a local session's `View`, or a session another master
    of the site serves (master_side.cluster.relay.RoutedView). Each call may raise ProtocolError, handed to
    `refused`."""

    @property
    def session_id(self) -> str: ...
    @property
    def input_grant(self) -> int: ...
    @property
    def max_input(self) -> int: ...  # the largest input message taken (slaveshell.vocabulary.flow.input_limits)
    def input(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def stdout_closed(self) -> None: ...  # whoever read the operator's stdout went away
    def resize(self, cols: int, rows: int) -> None: ...
    def signal(self, signum: int) -> None: ...
    def ack(self, nbytes: int) -> None: ...
    def close(self) -> None: ...
    def detach(self) -> None: ...
    def refused(self, error: ProtocolError) -> OperatorError | None: ...
