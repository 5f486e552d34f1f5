"""The typed vocabulary of a routed session between two masters of a site (docs/multi-master.md): what the
operator's master (A) asks the worker's master (B) to open, and the messages each then sends the other, one WAMP
call per message on the other's per-session procedure (master_side.cluster.config.session_uri), carried by the
router's msgpack serializer (bytes stay bytes).

Every message is `[seq, kind, *values]`: `seq` counts the messages of one direction of one session from 0 (a gap
or a repeat ends the session), `kind` is one of `ToWorkerSide` or `ToOperatorSide`, and the values are checked
here, where they come off the wire, as the framed door checks a client's (slaveshell.vocabulary.protocol). A
message holds at most MAX_INPUT bytes of input (slaveshell's chunk) or MAX_OUTPUT of output (a session without a
terminal's bulk message, slaveshell.vocabulary.flow.BULK_CHUNK): far below the router's message limit (crossbar:
16 MiB).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from slaveshell.fleet.script import MAX_SCRIPT, SCRIPT_RUNNER
from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.protocol import (
    MAX_CHUNK,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_int,
    check_signal,
    check_size,
    check_str,
    check_stream,
)

# The most data one message carries: input, slaveshell's own chunk; output, a bulk message.
MAX_INPUT = MAX_CHUNK
MAX_OUTPUT = BULK_CHUNK
# An operator's name and groups as the operator's master vouches for them.
MAX_NAME = 128
MAX_GROUPS = 256
# A token naming one routed session's procedures: 32 hexadecimal digits (128 random bits).
TOKEN_LENGTH = 32
# The groups and web roles of a four-eyes session's rule that the worker's master names in its answers (the rest are
# left out: they are shown, never used for a decision by the master that is told).
MAX_MODERATED_BY = 32


class ToWorkerSide(enum.Enum):
    """What the operator's master sends the worker's master, for the session's View there."""

    INPUT = "input"  # bytes
    ACK = "ack"  # output bytes the operator's client has taken
    RESIZE = "resize"  # cols, rows
    SIGNAL = "signal"  # signal number
    EOF = "eof"
    # Whoever read the operator's stdout went away (`| head -1`): the worker closes the command's stdout, as for a
    # local session (MasterSession.viewer_stdout_closed); sent only to a master whose answer said it takes it.
    STDOUT_CLOSED = "stdout_closed"
    CLOSE = "close"  # the operator ends the session (~., Ctrl-C of -T, or its connection lost)
    ALIVE = "alive"  # nothing: the operator's master is there (master_side.cluster.relay.PING)
    DETACH = "detach"  # the owner detaches (~d): the session goes on there, to be resumed (`attach`)


class ToOperatorSide(enum.Enum):
    """What the worker's master sends the operator's master, for the operator's client."""

    OUTPUT = "output"  # stream, bytes
    INPUT_ACK = "input_ack"  # nbytes, hidden, flush
    EXIT = "exit"  # code, signal, reason: the last message
    WAITING = "waiting"  # text
    ALIVE = "alive"


@dataclass(frozen=True)
class Message:
    """One message of a routed session, values checked."""

    seq: int
    kind: ToWorkerSide | ToOperatorSide
    values: tuple[object, ...] = ()

    def to_wire(self) -> list[object]:
        return [self.seq, self.kind.value, *self.values]


def to_worker_side(wire: object) -> Message:
    """A message from the operator's master, checked. ProtocolError when it is not one."""
    seq, kind, values = _split(wire)
    try:
        what = ToWorkerSide(kind)
    except ValueError:
        raise ProtocolError(f"unknown message {str(kind)[:40]!r}") from None
    if what is ToWorkerSide.INPUT:
        (data,) = _count(values, 1)
        return Message(seq, what, (check_bytes(data, "input", MAX_INPUT),))
    if what is ToWorkerSide.ACK:
        (n,) = _count(values, 1)
        return Message(seq, what, (check_int(n, "ack", 0, 2**40),))
    if what is ToWorkerSide.RESIZE:
        cols, rows = _count(values, 2)
        return Message(seq, what, check_size(cols, rows))
    if what is ToWorkerSide.SIGNAL:
        (name,) = _count(values, 1)
        return Message(seq, what, (check_signal(name),))
    _count(values, 0)
    return Message(seq, what)


def to_operator_side(wire: object) -> Message:
    """A message from the worker's master, checked. ProtocolError when it is not one."""
    seq, kind, values = _split(wire)
    try:
        what = ToOperatorSide(kind)
    except ValueError:
        raise ProtocolError(f"unknown message {str(kind)[:40]!r}") from None
    if what is ToOperatorSide.OUTPUT:
        stream, data = _count(values, 2)
        return Message(seq, what, (check_stream(stream), check_bytes(data, "output", MAX_OUTPUT)))
    if what is ToOperatorSide.INPUT_ACK:
        n, hidden, flush = _count(values, 3)
        if not isinstance(hidden, bool) or not isinstance(flush, bool):
            raise ProtocolError("input_ack: hidden and flush must be booleans")
        return Message(seq, what, (check_int(n, "input_ack", 0, 2**40), hidden, flush))
    if what is ToOperatorSide.EXIT:
        code, signal, reason = _count(values, 3)
        return Message(seq, what, (ExitStatus.from_wire(code, signal, reason),))
    if what is ToOperatorSide.WAITING:
        (text,) = _count(values, 1)
        return Message(seq, what, (check_str(text, "waiting", 4096),))
    _count(values, 0)
    return Message(seq, what)


def _split(wire: object) -> tuple[int, object, list[object]]:
    if not isinstance(wire, (list, tuple)) or len(wire) < 2:
        raise ProtocolError("a message must be a list [seq, kind, values...]")
    return check_int(wire[0], "seq", 0, 2**62), wire[1], list(wire[2:])


def _count(values: list[object], n: int) -> list[object]:
    if len(values) != n:
        raise ProtocolError(f"a message has {len(values)} values where {n} were expected")
    return values


@dataclass(frozen=True)
class OpenCall:
    """What the operator's master asks of the worker's master (the worker's `open` procedure): the request, the
    operator as it vouches for them (a name and groups, never a uid), the token of its per-session `out`
    procedure, already registered, and for a fleet run's part the run's id (the worker's master then asks its
    policy's `run` right, not `shell`) and, for a part that runs a script (`SCRIPT_RUNNER`), the script: what the
    worker's moderators approve, and all that part's input may be (master_side.cluster.part_input)."""

    request: OpenRequest
    user: str
    groups: tuple[str, ...]
    token: str
    run: str | None = None  # the fleet run (its id on the operator's master) the session is a part of
    script: bytes | None = None  # the run's script, given on the part's stdin

    def to_wire(self) -> dict[str, object]:
        return {"request": self.request.to_wire(), "user": self.user, "groups": list(self.groups),
                "token": self.token, **({"run": self.run} if self.run is not None else {}),
                **({"script": self.script} if self.script is not None else {})}

    @classmethod
    def from_wire(cls, wire: object) -> OpenCall:
        if not isinstance(wire, dict) or set(wire) - {"run", "script"} != {"request", "user", "groups", "token"}:
            raise ProtocolError("an open call must be a dict of request, user, groups, token (and run, script)")
        user, groups = check_name(wire["user"], "user"), _groups(wire["groups"])
        run = check_run(wire["run"]) if "run" in wire else None
        request = OpenRequest.from_wire(wire["request"])
        script = None
        if "script" in wire:
            script = check_bytes(wire["script"], "script", MAX_SCRIPT)
            if run is None or not script or request.command != SCRIPT_RUNNER or request.pty:
                raise ProtocolError("a script comes only with a fleet run's part that runs it (1 byte to "
                                    f"{MAX_SCRIPT // 1024} KiB)")
        return cls(request, user, groups, check_token(wire["token"]), run, script)

    def stdin(self) -> bytes | None:
        """All that a fleet run's part may take as input: its script, nothing for a command (a run closes a
        command's stdin at once); None when it is not a run's part, or a script's part that came without its
        script (from an older master)."""
        if self.run is None:
            return None
        if self.request.command == SCRIPT_RUNNER:
            return self.script
        return b""


@dataclass(frozen=True)
class AttachCall:
    """What the operator's master asks of another master (its `attach` procedure): watch or join (resume) one of
    its live sessions, for the operator it vouches for, with the token of its per-session `out` procedure."""

    session: str
    mode: str  # "watch", "attach", or "resume" (attach one's own session only)
    user: str
    groups: tuple[str, ...]
    token: str

    def to_wire(self) -> dict[str, object]:
        return {"session": self.session, "mode": self.mode, "user": self.user, "groups": list(self.groups),
                "token": self.token}

    @classmethod
    def from_wire(cls, wire: object) -> AttachCall:
        if not isinstance(wire, dict) or set(wire) != {"session", "mode", "user", "groups", "token"}:
            raise ProtocolError("an attach call must be a dict of session, mode, user, groups and token")
        session, mode = check_name(wire["session"], "session"), wire["mode"]
        if mode not in ("watch", "attach", "resume"):
            raise ProtocolError("mode must be watch, attach or resume")
        user, groups = check_name(wire["user"], "user"), _groups(wire["groups"])
        return cls(session, mode, user, groups, check_token(wire["token"]))


def _groups(groups: object) -> tuple[str, ...]:
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
        raise ProtocolError(f"groups must be a list of at most {MAX_GROUPS} names")
    return tuple(check_name(group, "group") for group in groups)


class Refused(Exception):
    """A refusal as one master tells another, and the operator's master its door: `kind` is the operators' API's
    kind of error (master_side.operators.terms.ErrorKind's value: "permission denied", "limit", ...), `message`
    the operator's line."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def to_wire(self) -> dict[str, object]:
        return {"ok": False, "error": self.message, "kind": self.kind}


# The kinds of refusal this vocabulary sends (ErrorKind's values).
BAD_REQUEST, LIMIT, UNAVAILABLE, STOPPED, NOT_FOUND = "bad request", "limit", "unavailable", "stopped", "not found"


def check_name(value: object, what: str) -> str:
    """A user or group name as another master vouches for it: printable, at most MAX_NAME characters, without the
    '/' that separates it from the master's name in a ClusterIdentity."""
    check_str(value, what, MAX_NAME)
    assert isinstance(value, str)
    if not value or not value.isprintable() or "/" in value:
        raise ProtocolError(f"{what} must be a printable name without '/' of 1 to {MAX_NAME} characters")
    return value


def moderated_by_wire(groups: tuple[str, ...] | None) -> list[str] | None:
    """A four-eyes session's groups and web roles as the worker's master sends them: at most MAX_MODERATED_BY, each
    cut at MAX_NAME characters (None: not a four-eyes session)."""
    return [g[:MAX_NAME] for g in groups[:MAX_MODERATED_BY] if g] or None if groups else None


def check_moderated_by(value: object) -> tuple[str, ...] | None:
    """What the worker's master says of a session's four-eyes rule (`moderated_by_wire`), checked where it arrives:
    null, or a list of at most MAX_MODERATED_BY printable names of 1 to MAX_NAME characters. It is that master's
    word about its own policy: shown (escaped), never used for a decision here."""
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MODERATED_BY or not all(
            isinstance(g, str) and 1 <= len(g) <= MAX_NAME and g.isprintable() for g in value):
        raise ProtocolError(f"moderated_by must be null or a list of 1 to {MAX_MODERATED_BY} printable names of 1 to "
                            f"{MAX_NAME} characters")
    return tuple(value)


def check_run(value: object) -> str:
    """A fleet run's id as the operator's master gives it: letters, digits, '-' and '_' only (its own are hexadecimal),
    so that the text of an approval request that names it cannot be made to read as another's."""
    check_str(value, "run", MAX_NAME)
    assert isinstance(value, str)
    if not value or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise ProtocolError(f"run must be 1 to {MAX_NAME} letters, digits, '-' or '_'")
    return value


def check_token(value: object) -> str:
    if not isinstance(value, str) or len(value) != TOKEN_LENGTH or value.strip("0123456789abcdef"):
        raise ProtocolError(f"a session token must be {TOKEN_LENGTH} lower-case hexadecimal digits")
    return value
