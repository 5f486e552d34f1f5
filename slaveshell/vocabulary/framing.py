"""The operator hop's framing: between the operator's tools (`buildbot-shell`, `slaveshell`) and the master's UNIX
socket.

Standard library only (the client must start without Twisted), no I/O: the master uses it from a Twisted
protocol (master_side.shell_socket.door), the client from a selectors loop (slaveshell.client.connection).

The exchange:

1. The client sends `MAGIC`; the master answers with its own `MAGIC` when it takes the connection, or with one
   line starting with `REFUSED_PREFIX`, then the close, when it refuses it (over its bounds,
   master_side.operators.gate; or first bytes that are not `MAGIC`).
2. Then frames both ways: a 5-byte header, the frame's type (1 byte, `FrameType`) and its payload's length in
   bytes (4 bytes, big-endian), then the payload. Byte streams travel raw: `INPUT` (client to master, keystrokes
   or stdin), `STDOUT` and `STDERR` (master to client), each at most `MAX_CHUNK` bytes (`STDOUT` and `STDERR`: up
   to what the client declared with its ``open`` or ``attach``, `max_output`, at most `MAX_OUTPUT`: a bulk stream's
   512 KiB messages then reach it whole; `INPUT`: up to what the master's answer to that open or attach said it
   takes on the session, ``max_input``, at most `MAX_INPUT`: a bulk stream's input, slaveshell.vocabulary.flow).
   Everything else is a
   `CONTROL` frame: one JSON object of at most `MAX_CONTROL` bytes with an ``"op"`` from `Op` and that op's
   fields (`Control`). `slaveshell cp`'s file bytes travel raw too, as `DATA` frames (both ways, at most
   `MAX_DATA` bytes: slaveshell.vocabulary.copying.CHUNK), its other messages as controls (entry, done_file, finish,
   abort, ack, result: slaveshell.vocabulary.copying's vocabulary, the same both ways).

Calls that expect an answer carry an ``"id"`` (an integer the caller chooses); the answer is an ``answer``
control with the same id, ``"ok"`` and either ``"error"`` (a line for the operator) or the result's fields.
Session messages (eof, resize, signal, ack; input_ack, exit, waiting) are answer-less; the master answers a
session message it refuses with a ``refused`` control. The client's session messages are typed events
(`SessionMessage`: `Input`, `Eof`, `Resize`, `Signal`, `Ack`, each with its `Op`), made into a frame by
`session_frame`. A frame of an unknown type, an oversized frame,
JSON that is not an object, an unknown op, or a frame in the wrong direction is a `WireError`: the receiver
closes the connection.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.flow import TRANSFER_CHUNK as MAX_DATA
from slaveshell.vocabulary.protocol import MAX_CHUNK, REFUSED_PREFIX, SIGNAL_NAMES, ProtocolError

__all__ = ["MAGIC", "MAX_ANSWER", "MAX_CHUNK", "MAX_CONTROL", "MAX_DATA", "MAX_INPUT", "MAX_OUTPUT", "REFUSED_PREFIX",
           "Ack", "Control", "Decoder", "Eof", "Frame", "FrameType", "Input", "Op", "Resize", "SessionMessage",
           "Signal", "WireError", "answer", "control", "encode", "header", "max_input", "max_output", "parse_control",
           "session_frame"]

MAGIC = b"SLAVESHELL/1\n"
# A control message's JSON, in bytes. An open request's own bounds (slaveshell.vocabulary.protocol) are far larger in
# theory (128 variables of 16 KiB); a request over this is refused on the client, with the reason.
MAX_CONTROL = 256 * 1024
# An answer's JSON from the master (rows of history or search, a transcript chunk): the client holds one at a time.
MAX_ANSWER = 16 * 1024 * 1024
# The largest STDOUT/STDERR frame a client may declare it takes (``max_output`` in its open or attach): a bulk
# stream's largest message (slaveshell.vocabulary.flow.BULK_CHUNK), so that the master relays each one as one frame. A
# client that declares nothing gets MAX_CHUNK.
MAX_OUTPUT = BULK_CHUNK
# The largest INPUT frame a master may say it takes on a session (``max_input`` in its answer to an open or an
# attach): a bulk stream's largest input message. A connection takes MAX_CHUNK until then, and with no answer saying
# more (a terminal's session, an older master).
MAX_INPUT = BULK_CHUNK
HEADER = struct.Struct("!BI")
MAX_ID = 2**31 - 1


class WireError(ProtocolError):
    """The peer broke the framing; the connection cannot go on."""


class FrameType(enum.IntEnum):
    CONTROL = 1  # a JSON object: Control
    INPUT = 2  # client to master: bytes for the session
    STDOUT = 3  # master to client: the session's stream 1 (the PTY, or stdout)
    STDERR = 4  # master to client: stream 2, and the master's notices
    DATA = 5  # both ways: a transfer's file bytes (slaveshell cp), at most MAX_DATA


class Op(enum.Enum):
    """Every control message, by its wire spelling."""

    # client to master: calls (with an "id", answered)
    OPEN = "open"  # request: OpenRequest.to_wire(), max_output (optional: max_output()); answer: id (the session's),
    # input_window, max_input (max_input(): the largest INPUT frame taken from now on)
    ATTACH = "attach"  # session, mode ("attach" | "watch"), max_output (optional); answer: id, role, worker, size,
    # input_window, max_input
    RELEASE = "release"  # build; answer: text
    HOLDS = "holds"  # answer: rows (the held builds, with their deadlines)
    EXTEND = "extend"  # build, seconds; answer: text, deadline
    KILL = "kill"  # session; answer: text
    WORKERS = "workers"  # answer: rows
    SESSIONS = "sessions"  # answer: rows
    HISTORY = "history"  # filters (OperatorAPI.history's); answer: rows
    SEARCH = "search"  # text, filters; answer: rows
    TRANSCRIPT = "transcript"  # session, offset; answer: data (base64 of up to MAX_CHUNK bytes), eof
    CLOSE = "close"  # end the session (answered once the master has it)
    DETACH = "detach"  # leave it running (answered once the master has it)
    RUN = "run"  # request (a fleet run: command or script (base64), workers, where, batch, timeout, env, cwd,
    # reason); answer: run (its id), targets, listed (outcomes of the workers that will not run), batch; then
    # PROGRESS messages and one RUN_END (slaveshell.fleet.events); a CLOSE call interrupts the run (Ctrl-C)
    RUNS = "runs"  # run (optional: one run's id), cancel (optional: cancel what it has pending); answer: rows
    # (fleet runs; with run: its workers' outcomes), text (with cancel)
    FACTS = "facts"  # workers (patterns), refresh; answer: reports, workers, probes, stale_after
    COPY = "copy"  # request: TransferRequest.to_wire(); answer: transfer (its id), total, entries, recorded,
    # unclaimed (true: done_file may carry "" for the sender's sha256, slaveshell.vocabulary.copying.NO_CLAIM); on a
    # four-eyes worker a WAITING message first, while it waits for a moderator's approval
    APPROVALS = "approvals"  # request (optional: one's id, with all of what it would do); answer: rows (the
    # requests waiting for a moderator's approval that you may decide, and your own: master_side.operators.approvals)
    APPROVE = "approve"  # request (its id); answer: text
    DENY = "deny"  # request (its id), reason (optional); answer: text
    # client to master: session messages (answer-less)
    EOF = "eof"
    STDOUT_CLOSED = "stdout_closed"  # whoever read the session's stdout went away (sent when the open answered
    # stdout_closed: true; a client of an older master closes the session instead)
    RESIZE = "resize"  # cols, rows
    SIGNAL = "signal"  # name (slaveshell.vocabulary.protocol.SIGNALS)
    ACK = "ack"  # n: output bytes consumed; on a transfer (both ways): credit returned (slaveshell.vocabulary.copying)
    # a transfer's stream (slaveshell.vocabulary.copying), both ways: from its sender, and to its receiver
    ENTRY = "entry"  # kind, path, mode, size, mtime
    DONE_FILE = "done_file"  # sha256
    FINISH = "finish"
    ABORT = "abort"  # reason: the client's sender gave up (client to master)
    RESULT = "result"  # ok, reason: the receiver's outcome; from the client it is a call (with an id)
    # master to client
    ANSWER = "answer"  # id, ok, error | the call's fields
    REFUSED = "refused"  # method, error: a session message the master refused
    INPUT_ACK = "input_ack"  # n, hidden
    EXIT = "exit"  # code, signal, reason
    WAITING = "waiting"  # text: the master waits before it opens or copies (a build not held yet, an approval)
    PROGRESS = "progress"  # a fleet run's worker: worker, phase, session, elapsed, last_line, outcome (when done)
    RUN_END = "run_end"  # a fleet run's end: state, summary, exit_status
    ERROR = "error"  # text: the framing was broken; the master closes the connection


CALLS = frozenset({Op.OPEN, Op.ATTACH, Op.RELEASE, Op.KILL, Op.WORKERS, Op.SESSIONS, Op.HISTORY, Op.SEARCH,
                   Op.TRANSCRIPT, Op.CLOSE, Op.DETACH, Op.COPY, Op.HOLDS, Op.EXTEND, Op.RUN, Op.RUNS,
                   Op.FACTS, Op.APPROVALS, Op.APPROVE, Op.DENY})
# A transfer's messages (besides DATA frames), in either direction.
TRANSFER = frozenset({Op.ENTRY, Op.DONE_FILE, Op.FINISH, Op.ACK, Op.RESULT})
FROM_CLIENT = CALLS | TRANSFER | {Op.EOF, Op.STDOUT_CLOSED, Op.RESIZE, Op.SIGNAL, Op.ABORT}
FROM_MASTER = (frozenset(Op) - FROM_CLIENT) | TRANSFER
_OPS = {op.value: op for op in Op}
_TYPES = {t.value: t for t in FrameType}  # a header's type by its code (a dict lookup: FrameType(code) costs more)
_LIMITS = {FrameType.CONTROL: MAX_CONTROL, FrameType.INPUT: MAX_CHUNK, FrameType.STDOUT: MAX_CHUNK,
           FrameType.STDERR: MAX_CHUNK, FrameType.DATA: MAX_DATA}


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes


@dataclass(frozen=True)
class Control:
    """One control message: its op and its fields (plain JSON values, unchecked: the receiver checks each one,
    slaveshell.vocabulary.checks's check_* functions)."""

    op: Op
    fields: dict[str, object] = field(default_factory=dict)

    def get(self, name: str, default: object = None) -> object:
        return self.fields.get(name, default)

    @property
    def call_id(self) -> int | None:
        """The call's id: an int in 0..MAX_ID, or None when absent. WireError for anything else."""
        value = self.fields.get("id")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise WireError(f"{self.op.value}: the id must be an integer from 0 to {MAX_ID}")
        return value


def encode(ftype: FrameType, payload: bytes, limit: int | None = None) -> bytes:
    """One frame. ValueError (our bug, not the peer's) when the payload is over its type's limit (or `limit`)."""
    most = _LIMITS[ftype] if limit is None else limit
    if len(payload) > most:
        raise ValueError(f"a {ftype.name} frame of {len(payload)} bytes (at most {most})")
    return HEADER.pack(ftype, len(payload)) + payload


def header(ftype: FrameType, length: int, limit: int | None = None) -> bytes:
    """A frame's header alone, for a payload written after it (no copy of a large payload). ValueError over
    the type's limit (or `limit`: a client's max_output)."""
    most = _LIMITS[ftype] if limit is None else limit
    if length > most:
        raise ValueError(f"a {ftype.name} frame of {length} bytes (at most {most})")
    return HEADER.pack(ftype, length)


def max_output(value: object) -> int:
    """The ``max_output`` of an open or attach: the largest STDOUT/STDERR frame the client takes, in bytes.
    Absent (None): MAX_CHUNK. ProtocolError for anything but an integer from MAX_CHUNK to MAX_OUTPUT."""
    if value is None:
        return MAX_CHUNK
    if isinstance(value, bool) or not isinstance(value, int) or not MAX_CHUNK <= value <= MAX_OUTPUT:
        raise ProtocolError(f"max_output must be an integer from {MAX_CHUNK} to {MAX_OUTPUT}")
    return value


def max_input(value: object) -> int:
    """The ``max_input`` of the master's answer to an open or attach: the largest INPUT frame it takes on the
    session, in bytes. Absent (None: an older master): MAX_CHUNK. ProtocolError for anything but an integer from
    MAX_CHUNK to MAX_INPUT."""
    if value is None:
        return MAX_CHUNK
    if isinstance(value, bool) or not isinstance(value, int) or not MAX_CHUNK <= value <= MAX_INPUT:
        raise ProtocolError(f"max_input must be an integer from {MAX_CHUNK} to {MAX_INPUT}")
    return value


def control(op: Op, **fields: object) -> bytes:
    """A CONTROL frame. ValueError when the JSON is over MAX_CONTROL; TypeError for a value JSON cannot hold."""
    body = dict(fields, op=op.value)
    return encode(FrameType.CONTROL, json.dumps(body, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Input:
    """Bytes for the session's process (keystrokes, stdin): an INPUT frame, at most MAX_CHUNK, or what the master
    said it takes on the session (``max_input``)."""

    data: bytes


@dataclass(frozen=True)
class Eof:
    """End of the session's input."""

    op: ClassVar[Op] = Op.EOF


@dataclass(frozen=True)
class StdoutClosed:
    """Whoever read the session's stdout went away (slaveshell.vocabulary.protocol.SessionControl.stdout_closed)."""

    op: ClassVar[Op] = Op.STDOUT_CLOSED


@dataclass(frozen=True)
class Resize:
    """A new window size, in character cells."""

    cols: int
    rows: int
    op: ClassVar[Op] = Op.RESIZE


@dataclass(frozen=True)
class Signal:
    """A signal (one of slaveshell.vocabulary.protocol.SIGNALS' numbers) for the session's foreground process group; it
    travels by name."""

    signum: int
    op: ClassVar[Op] = Op.SIGNAL


@dataclass(frozen=True)
class Ack:
    """`n` bytes of the session's output consumed: credit back to its sender."""

    n: int
    op: ClassVar[Op] = Op.ACK


# What a client tells the master about its session besides its calls (close and detach are calls: answered).
SessionMessage = Input | Eof | StdoutClosed | Resize | Signal | Ack


def session_frame(message: SessionMessage, max_input: int = MAX_CHUNK) -> bytes:
    """The frame of one session message: input as raw bytes, the others as controls. ValueError (our bug) for
    input over `max_input` (what the master said it takes); KeyError for a signal not in SIGNALS."""
    if isinstance(message, Input):
        return encode(FrameType.INPUT, message.data, max_input)
    if isinstance(message, Resize):
        return control(Op.RESIZE, cols=message.cols, rows=message.rows)
    if isinstance(message, Signal):
        return control(Op.SIGNAL, name=SIGNAL_NAMES[message.signum])
    if isinstance(message, Ack):
        return control(Op.ACK, n=message.n)
    return control(message.op)


def answer(**fields: object) -> bytes:
    """The master's ANSWER to a call, up to MAX_ANSWER (ValueError over it; TypeError for a value JSON cannot
    hold)."""
    body = dict(fields, op=Op.ANSWER.value)
    return encode(FrameType.CONTROL, json.dumps(body, separators=(",", ":")).encode(), MAX_ANSWER)


def parse_control(payload: bytes, allowed: frozenset[Op] = frozenset(Op)) -> Control:
    """A CONTROL frame's payload as a Control; WireError for bad JSON, a non-object, an op not in `allowed`."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError(f"a control message that is not JSON ({type(e).__name__})") from None
    if not isinstance(body, dict):
        raise WireError("a control message must be a JSON object")
    name = body.pop("op", None)
    op = _OPS.get(name) if isinstance(name, str) else None
    if op is None or op not in allowed:
        raise WireError(f"unknown control message {str(name)[:40]!r}")
    return Control(op, body)


class Decoder:
    """Frames out of a byte stream, incrementally. Holds at most one frame's header and payload (5 bytes +
    `max_control`: MAX_CONTROL from a client, MAX_ANSWER from the master; `max_output` for STDOUT and STDERR:
    what a client declared it takes; MAX_CHUNK for INPUT until `take_input` says more); `feed` raises WireError on
    an unknown type, a frame over its type's limit, or a type in `refused` (the other direction's), as soon as the
    header is in."""

    def __init__(self, refused: frozenset[FrameType] = frozenset(), max_control: int = MAX_CONTROL,
                 max_output: int = MAX_CHUNK) -> None:
        self._buffer = bytearray()
        self._refused = refused
        self._limits = {**_LIMITS, FrameType.CONTROL: max_control, FrameType.STDOUT: max_output,
                        FrameType.STDERR: max_output}
        self.broken = False

    def take_input(self, limit: int) -> None:
        """Take INPUT frames of up to `limit` bytes from now on (the master, once a view of a session whose input
        is a bulk stream's is on the connection: slaveshell.vocabulary.flow.input_limits). ValueError (our bug)
        outside MAX_CHUNK..MAX_INPUT."""
        if not MAX_CHUNK <= limit <= MAX_INPUT:
            raise ValueError(f"an INPUT limit of {limit} bytes (from {MAX_CHUNK} to {MAX_INPUT})")
        self._limits[FrameType.INPUT] = limit

    @property
    def pending(self) -> int:
        """Bytes held towards the next frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The frames `data` completes (nothing of `data` is kept after the call: what is held is copied)."""
        if self.broken:
            return []
        # The frame held from earlier reads is completed with the bytes it lacks, and only those; the frames
        # after it are cut from `data` itself. Each payload is copied once, through a memoryview; only the bytes
        # of a frame that spans reads are copied twice (into the buffer, then out of it).
        frames: list[Frame] = []
        pos = 0
        with memoryview(data) as view:
            if self._buffer:
                pos = self._complete(view, frames)
                if not frames:
                    return frames
            size = len(data)
            while size - pos >= HEADER.size:
                ftype, length = self._header(data, pos)
                end = pos + HEADER.size + length
                if size < end:
                    break
                frames.append(Frame(ftype, bytes(view[pos + HEADER.size:end])))
                pos = end
            self._buffer += view[pos:]
        return frames

    def cut(self, view: memoryview) -> tuple[list[Frame | memoryview], int]:
        """The whole frames at the start of `view`, and the bytes they take; unlike `feed`, nothing is held: the
        caller keeps the bytes after them (an incomplete frame, whose header, when in, is already checked) and
        gives them again with what follows. A DATA frame comes as its payload alone, a view of `view` (valid as
        long as what it views is not overwritten: no copy), any other frame as a `Frame` (its payload copied).
        WireError as `feed`. Not to be mixed with `feed` on one decoder."""
        if self.broken:
            return [], 0
        if self._buffer:
            raise ValueError("cut() on a decoder that holds bytes fed to it")
        frames: list[Frame | memoryview] = []
        pos = 0
        size = len(view)
        while size - pos >= HEADER.size:
            ftype, length = self._header(view, pos)
            end = pos + HEADER.size + length
            if size < end:
                break
            payload = view[pos + HEADER.size:end]
            frames.append(payload if ftype is FrameType.DATA else Frame(ftype, bytes(payload)))
            pos = end
        return frames, pos

    def _complete(self, view: memoryview, frames: list[Frame]) -> int:
        """Add to the held frame what it lacks of `view` (its header first, checked as soon as it is in); append
        it to `frames` when whole. Returns the bytes of `view` taken."""
        buffer = self._buffer
        taken = 0
        if len(buffer) < HEADER.size:
            taken = min(HEADER.size - len(buffer), len(view))
            buffer += view[:taken]
            if len(buffer) < HEADER.size:
                return taken
        ftype, length = self._header(buffer, 0)
        more = min(HEADER.size + length - len(buffer), len(view) - taken)
        buffer += view[taken:taken + more]
        taken += more
        if len(buffer) == HEADER.size + length:
            with memoryview(buffer) as held:
                frames.append(Frame(ftype, bytes(held[HEADER.size:])))
            self._buffer = bytearray()
        return taken

    def _header(self, source: bytes | bytearray | memoryview, pos: int) -> tuple[FrameType, int]:
        """The frame header at `pos`, checked: WireError (and the decoder broken) for an unknown type, a type
        refused here, or a length over the type's limit."""
        code, length = HEADER.unpack_from(source, pos)
        ftype = _TYPES.get(code)
        if ftype is None:
            self.broken = True
            raise WireError(f"a frame of unknown type {code}")
        if ftype in self._refused:
            self.broken = True
            raise WireError(f"a {ftype.name} frame in the wrong direction")
        if length > self._limits[ftype]:
            self.broken = True
            raise WireError(f"a {ftype.name} frame of {length} bytes (at most {self._limits[ftype]})")
        return ftype, length
