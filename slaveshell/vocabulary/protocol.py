"""Wire vocabulary shared by the operator client, the master and the worker.

No I/O here. Both hops (operator client -> master over a UNIX socket, master -> worker over the worker's PB
connection) carry the same session vocabulary, so the master is a relay and every hop validates with the same code.

Session control (called on the session handle, towards the process):
    input(data: bytes)            bytes for the PTY / the command's stdin, at most MAX_CHUNK
    eof()                         end of the command's stdin
    stdout_closed()               whoever read the command's stdout went away: the worker closes its end of it
                                  (the command meets EPIPE or SIGPIPE at its next write), as OpenSSH's
                                  eow@openssh.com; a worker whose open answer did not say `stdout_closed` is
                                  closed instead
    resize(cols: int, rows: int)  new window size
    signal(name: str)             a signal name from SIGNALS, delivered to the process group
    ack(nbytes: int)              output consumed; returns credit to the sender
    close()                       end the session (HUP, then TERM, then KILL)

Session sink (called on the sink, towards the operator; `waiting(text)` on the operator's sink only; a notice
from the master travels as output on STREAM_ERR, `notice_bytes`):
    output(stream: int, data: bytes[, acks])   stream 1 (PTY or stdout) or 2 (stderr); from a worker, `acks`
                                       (optional, a list of [nbytes, hidden] pairs) are input_acks that
                                       precede this output, carried in the same message (a keystroke's
                                       acknowledgement rides on its echo: one message, not two)
    input_ack(nbytes: int, hidden: bool)  one input message delivered to the process, in order; returns its
                                       credit. hidden: the terminal did not display it (echo off, and the
                                       program did not echo it either: slave_side.echo); the transcript keeps
                                       only its length (slaveshell.vocabulary.hidden)
    exit(code, signal, reason)         the end: exit code or terminating signal; both None plus a reason
                                       when the session was lost or refused

Roles (`Role`): the owner opened the session and drives it; `join` shares the keyboard; `watch` only sees output.

The typed vocabulary: `SessionControl` (towards the process: what the master sends a worker's session),
`OperatorControl` (what an operator sends the master: the same, plus `detach`), `SessionSink` (towards the
operator: what a worker's session sends the master) and `OperatorSink` (what the master sends an operator: the
same without the input_acks riding on output, plus `waiting`). The receiving logic implements them and
receives only checked values: the adapters (`slave_side.server`, the master's `WorkerSink` and its doors)
validate with the `check_*` functions of `slaveshell.vocabulary.checks` first. Each hop encodes them in its own way: the
operator's hop as frames (slaveshell.vocabulary.framing), the worker's link as PB calls
(`slave_side.server.PbSessionSink`, the master's `WorkerPeer`). `ping` (master to worker) is a call with an answer, not
a message: the worker answers whether the session is still alive.

The wire's constants, errors and value checks live in `slaveshell.vocabulary.checks` and are re-exported here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from slaveshell.vocabulary.checks import (
    INPUT_WINDOW,
    MAX_CHUNK,
    MAX_COMMAND,
    MAX_DIMENSION,
    MAX_ENV,
    MAX_ENV_ITEM,
    MAX_NAME,
    MAX_PATH,
    MAX_REASON,
    MAX_TERM,
    NO_ANSWER,
    OUTPUT_WINDOW,
    PROTOCOL_VERSION,
    REFUSED_PREFIX,
    SIGNAL_NAMES,
    SIGNALS,
    STREAM_ERR,
    STREAM_OUT,
    WORKER_COMMAND,
    WORKER_OPEN_METHOD,
    LocalProtocolError,
    ProtocolError,
    check_bytes,
    check_int,
    check_reason,
    check_signal,
    check_size,
    check_str,
    check_stream,
    check_worker_name,
)
from slaveshell.vocabulary.display import visible

# The vocabulary's own names and slaveshell.vocabulary.checks's, so that importing any of them from here keeps working.
__all__ = [
    "ExitStatus", "INPUT_WINDOW", "LocalProtocolError", "MAX_CHUNK", "MAX_COMMAND", "MAX_DIMENSION", "MAX_ENV",
    "MAX_ENV_ITEM", "MAX_NAME", "MAX_PATH", "MAX_REASON", "MAX_TERM", "NO_ANSWER", "OUTPUT_WINDOW", "OpenRequest",
    "OperatorControl", "OperatorSink", "PROTOCOL_VERSION", "ProtocolError", "REFUSED_PREFIX", "Role", "SIGNALS",
    "SIGNAL_NAMES", "STREAM_ERR", "STREAM_OUT", "SessionControl", "SessionSink", "WORKER_COMMAND",
    "WORKER_OPEN_METHOD", "check_bytes", "check_int", "check_reason", "check_signal", "check_size", "check_str",
    "check_stream", "check_worker_name", "notice_bytes"
]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TERM = re.compile(r"^[A-Za-z0-9._+-]+$")

@dataclass(frozen=True)
class OpenRequest:
    """What an operator asks for. Travels as a plain dict on both hops."""

    worker: str
    command: str | None = None
    pty: bool = True
    term: str = "dumb"
    cols: int = 80
    rows: int = 24
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    # For the master only: pause the worker in Buildbot for the session's life; start in a builder's directory.
    pause: bool = False
    builder: str | None = None
    build: int | None = None  # step into a build held by HoldForShell
    # Why the session is opened (a ticket, an incident): one line (`check_reason`), kept in the index and the
    # transcript's header; for the master only (it is not sent to the worker).
    reason: str | None = None
    # Set by the master (never taken from the operator's client): who the worker is opening the session for.
    operator: str | None = None

    def __post_init__(self) -> None:
        # Our own code builds requests too: the same checks catch our bugs early.
        try:
            self.validate()
        except ProtocolError as e:
            raise LocalProtocolError(str(e)) from None

    def validate(self) -> None:
        check_worker_name(self.worker)
        if self.command is not None:
            check_str(self.command, "command", MAX_COMMAND)
        if not isinstance(self.pty, bool):
            raise ProtocolError("pty must be a boolean")
        term = check_str(self.term, "TERM", MAX_TERM)
        if not _TERM.match(term):
            raise ProtocolError(f"TERM {term!r} has characters a terminal name never has")
        check_size(self.cols, self.rows)
        if not isinstance(self.env, dict) or len(self.env) > MAX_ENV:
            raise ProtocolError(f"env must be a mapping of at most {MAX_ENV} entries")
        for key, value in self.env.items():
            check_str(key, "environment name", MAX_NAME)
            check_str(value, f"environment value of {key}", MAX_ENV_ITEM)
            if not _ENV_NAME.match(key):
                raise ProtocolError(f"bad environment variable name {key!r}")
        if self.cwd is not None:
            check_str(self.cwd, "working directory", MAX_PATH)
        if not isinstance(self.pause, bool):
            raise ProtocolError("pause must be a boolean")
        if self.builder is not None:
            check_str(self.builder, "builder", MAX_NAME)
        if self.build is not None:
            check_int(self.build, "build id", 1, 2**62)
        if self.reason is not None:
            check_reason(self.reason)
        if self.operator is not None:
            check_str(self.operator, "operator", MAX_NAME)

    def to_wire(self) -> dict[str, object]:
        # A request without a reason has no such field, so that a peer that does not know it still takes it.
        return {
            **({"reason": self.reason} if self.reason is not None else {}),
            "version": PROTOCOL_VERSION,
            "worker": self.worker,
            "command": self.command,
            "pty": self.pty,
            "term": self.term,
            "cols": self.cols,
            "rows": self.rows,
            "env": dict(self.env),
            "cwd": self.cwd,
            "pause": self.pause,
            "builder": self.builder,
            "build": self.build,
            "operator": self.operator,
        }

    @classmethod
    def from_wire(cls, wire: object) -> OpenRequest:
        if not isinstance(wire, dict):
            raise ProtocolError("an open request must be a dict")
        known = {"version", "worker", "command", "pty", "term", "cols", "rows", "env", "cwd", "pause", "builder",
                 "build", "operator", "reason"}
        unknown = set(wire) - known
        if unknown:
            raise ProtocolError(f"unknown request fields: {', '.join(sorted(map(str, unknown)))}")
        version = wire.get("version")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version!r} is not supported (this side speaks "
                                f"{PROTOCOL_VERSION})")
        try:
            return cls(
                worker=wire.get("worker"),  # type: ignore[arg-type]
                command=wire.get("command"),
                pty=wire.get("pty", True),
                term=wire.get("term", "dumb"),
                cols=wire.get("cols", 80),
                rows=wire.get("rows", 24),
                env=wire.get("env") or {},
                cwd=wire.get("cwd"),
                pause=wire.get("pause", False),
                builder=wire.get("builder"),
                build=wire.get("build"),
                reason=wire.get("reason"),
                operator=wire.get("operator"),
            )
        except LocalProtocolError as e:
            # From the wire, a failed check is the peer's fault, not ours.
            raise ProtocolError(str(e)) from None
        except TypeError as e:
            raise ProtocolError(f"malformed open request: {e}") from None


@dataclass(frozen=True)
class ExitStatus:
    """How a session ended. Exactly one of code/signal is set for a process that ended; neither when the
    session was lost or refused, and then `reason` says why."""

    code: int | None = None
    signal: int | None = None
    reason: str = ""

    @classmethod
    def from_wire(cls, code: object, signal: object, reason: object) -> ExitStatus:
        if code is not None:
            check_int(code, "exit code", -(2**31), 2**31 - 1)
        if signal is not None:
            check_int(signal, "exit signal", 1, 255)
        check_str(reason, "exit reason", 4096)
        return cls(code, signal, reason)  # type: ignore[arg-type]

    @property
    def lost(self) -> bool:
        return self.code is None and self.signal is None

    def cli_status(self) -> int:
        """The operator tool's exit status, as ssh and shells spell it."""
        if self.signal is not None:
            return 128 + self.signal
        if self.code is not None:
            return self.code & 0xFF
        return 255


class Role(enum.Enum):
    """How a viewer takes part in a session; the value is the wire's and the command line's spelling."""

    OWNER = "owner"  # opened it (or took it over by attaching); types, resizes, signals; its leaving detaches
    JOIN = "join"  # shares the keyboard (input and signals); its leaving does not end the session
    WATCH = "watch"  # sees the output only

    @classmethod
    def from_wire(cls, value: object) -> Role:
        """The role a peer named; ProtocolError for anything else."""
        for role in cls:
            if role.value == value:
                return role
        raise ProtocolError(f"unknown role {value!r}; allowed: {', '.join(r.value for r in cls)}")


def notice_bytes(text: str) -> bytes:
    """How a notice (a line from the master itself) travels to an operator: as output on STREAM_ERR, on a line of
    its own. Notices name users and workers and quote peers, so `text` is shown through `visible` (idempotent)."""
    return f"\r\nslaveshell: {visible(text)}\r\n".encode()


class SessionControl(Protocol):
    """Messages towards a session's process (master to worker session; operator to master), values checked."""

    def input(self, data: bytes) -> None:
        """Bytes for the PTY or the command's stdin, at most MAX_CHUNK; answered later by an input_ack."""

    def eof(self) -> None:
        """End of input: the stdin pipe closed, or VEOF on a PTY."""

    def stdout_closed(self) -> None:
        """Whoever read the process's stdout (stream 1) went away: nothing more of it is read, and the process
        meets EPIPE (or SIGPIPE) at its next write to it, as at the end of a local pipeline; stderr goes on.
        Sent to a worker only when its open answer said it takes it (`stdout_closed`)."""

    def resize(self, cols: int, rows: int) -> None:
        """A new window size in character cells (1..MAX_DIMENSION each)."""

    def signal(self, signum: int) -> None:
        """A signal (one of SIGNALS' numbers) for the foreground process group."""

    def ack(self, nbytes: int) -> None:
        """`nbytes` of output consumed: credit back to the output's sender (slaveshell.vocabulary.flow)."""

    def close(self) -> None:
        """End the session: the process gets SIGHUP, then SIGTERM, then SIGKILL."""


class OperatorControl(SessionControl, Protocol):
    """What an operator sends the master about its view of a session."""

    def detach(self) -> None:
        """Leave the session running (the owner) or leave it (anyone else)."""


class SessionSink(Protocol):
    """Messages towards the operator from a worker's session (to the master), values checked."""

    def output(self, stream: int, data: bytes, acks: Sequence[tuple[int, bool]] = ()) -> None:
        """Output of STREAM_OUT (the PTY, or stdout) or STREAM_ERR, at most MAX_CHUNK; counts against credit.
        `acks`: input_acks (nbytes, hidden), in order, that come before this output."""

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        """One input message of `nbytes` delivered to the process, in order; `hidden`: not displayed."""

    def flushed(self) -> None:
        """The next input_ack's input interrupted the terminal and flushed its output (ISIG): the output sent
        before that input_ack was in flight at the interrupt. Sent only to a master that granted a window."""

    def exit(self, status: ExitStatus) -> None:
        """The end of the session; nothing follows it."""


class OperatorSink(Protocol):
    """What the master sends an operator about its view of a session, values checked."""

    def output(self, stream: int, data: bytes) -> None:
        """Output of STREAM_OUT or STREAM_ERR (a notice from the master: `notice_bytes`); counts against the
        viewer's credit."""

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        """One input message of `nbytes` delivered to the process, in order; `hidden`: not displayed."""

    def exit(self, status: ExitStatus) -> None:
        """The end of the session (or of this view); nothing follows it."""

    def waiting(self, text: str) -> None:
        """Before the open's answer: the master waits (a build not held yet) and says why, in one line."""
