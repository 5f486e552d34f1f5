"""The vocabulary of `master_side.operator_api`: its one error (`OperatorError`, with an `ErrorKind`), a
viewer's end of a session as a door provides it (`ViewerSink`), and the `View` that open and attach return.
Re-exported by `operator_api`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .relay import MasterSession
    from .session_model import Viewer
    from .worker_pb import Undo


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


class ViewerSink(Protocol):
    """A viewer's end of a session, as the door provides it. `send` makes answer-less calls (output, exit,
    notice, waiting: slaveshell.protocol.OperatorSink); `connection` identifies the operator's connection for the
    per-connection bounds."""

    connection: object

    @property
    def gone(self) -> bool: ...  # the operator's connection is closed
    def send(self, method: str, *args: object) -> None: ...
    def waiting(self, text: str) -> None: ...
    def on_disconnect(self, callback: Callable[[], None]) -> Undo: ...
    def on_failure(self, callback: Callable[[str | None], None]) -> None: ...  # None: connection lost


@dataclass(frozen=True)
class View:
    """An operator's view of a session, as open and attach return it."""

    session: MasterSession
    viewer: Viewer
