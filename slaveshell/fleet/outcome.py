"""What happened to each worker of a fleet run, and the output kept of it (bounded: the session's transcript
keeps all of it)."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

# Output kept per worker in a run's answer (the transcript keeps all of it), and of its last line.
OUTPUT_LIMIT = 64 * 1024
LAST_LINE_LIMIT = 512


class State(enum.Enum):
    """A worker's state in a run. The first four are a worker that ran; the others are listed, never
    silently skipped."""

    OK = "ok"  # ran and returned 0
    FAILED = "failed"  # ran and returned another status, or was ended by a signal
    TIMED_OUT = "timed out"  # ended by the run's --timeout
    INTERRUPTED = "interrupted"  # ended by the operator's Ctrl-C
    NOT_STARTED = "not started"  # Ctrl-C came before its turn
    NOT_CONNECTED = "not connected"
    NOT_OPTED_IN = "not opted in"
    REFUSED = "refused"  # by the master's policy or the worker owner's allowed_users
    MISSING_FACT = "missing fact"  # a --where names a fact this worker has not reported
    PENDING = "pending"  # not connected now: runs when it attaches (slaveshell run --include-offline)
    ERROR = "error"  # the session could not be opened, or was lost

    @property
    def ran(self) -> bool:
        return self in (State.OK, State.FAILED, State.TIMED_OUT, State.INTERRUPTED)


class Output:
    """A worker's output as the run keeps it: the first `limit` bytes, whether more came (`cut`), how many
    bytes came in all, a digest of all of them (so that outputs are told apart even past the limit) and the
    last line (for a live table)."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.size = 0
        self._digest = hashlib.sha256()
        self._line = bytearray()  # the end of the line being written
        self._last = b""  # the end of the last complete line with text
        self._restored_digest: str | None = None  # the digest another party computed (`restored`)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self._digest.update(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._line += piece[-LAST_LINE_LIMIT:]
            if self._line.strip():
                self._last = bytes(self._line[-LAST_LINE_LIMIT:])
            self._line.clear()
        self._line += rest[-LAST_LINE_LIMIT:]
        del self._line[:-LAST_LINE_LIMIT]

    @classmethod
    def restored(cls, kept: bytes, size: int, digest: str, last_line: bytes = b"") -> Output:
        """An output as another party kept it (the master, for the client): its kept part, its size in all and
        the digest of all of it."""
        out = cls(max(len(kept), 1))
        out.kept = bytearray(kept)
        out.size = max(size, len(kept))
        out._restored_digest = digest
        out._last = last_line
        return out

    @property
    def cut(self) -> bool:
        return self.size > len(self.kept)

    @property
    def digest(self) -> str:
        return self._restored_digest or self._digest.hexdigest()

    @property
    def last_line(self) -> bytes:
        """The last line with text (at most LAST_LINE_LIMIT bytes of its end; "\\r" left out)."""
        line = bytes(self._line) if self._line.strip() else self._last
        return line.rstrip(b"\r")


@dataclass(frozen=True)
class Outcome:
    """One worker's outcome: its state, exit status (None unless it ran to an exit or a signal), duration in
    seconds (None unless it ran), output (None unless it ran), session id (None unless one was opened) and
    the reason for a state other than ok (shown escaped: a peer may have written it)."""

    worker: str
    state: State
    exit_status: int | None = None
    duration: float | None = None
    output: Output | None = None
    session: str | None = None
    reason: str = ""
