"""The wire vocabulary of `slaveshell cp` (a transfer), shared by the client, the master and the worker. No I/O.

A transfer is one stream of entries from a sender to a receiver, through the master: over the framed hop between
the operator and the master (slaveshell.vocabulary.framing: these calls as controls, `data` as DATA frames) and over PB
on the worker's own connection (entry, data, done_file and ack as slaveshell.plumbing.lean_calls once the master's
``lean`` call said so). The sender's calls, all answer-less:

    entry(kind: str, path: str, mode: int, size: int, mtime: float)
                                   a directory ("dir") or a regular file ("file") to create, at `path` relative to
                                   the destination ("/"-separated, no "..", no empty or absolute part); a file's
                                   bytes follow as `data` calls, `size` of them in all, then `done_file`
    data(chunk: bytes)             at most CHUNK bytes of the current file
    done_file(sha256: str)         the current file is complete; from a sender, its sha256 (64 hex digits) as it
                                   read it, or "" (NO_CLAIM: the master's own hash stands, see below); from the
                                   master to the receiver, always the master's sha256 of the bytes it relayed
    finish()                       no more entries: the receiver commits (renames into place) and answers
    abort(reason: str)             the sender gave up: the receiver removes everything it staged

The receiver's call back is `ack(credit: int)`: credit returned. Each entry costs ENTRY_COST and each data call
its length; a sender may have at most WINDOW unacknowledged (checked by every hop: `Credit`). The receiver's end,
`result(ok: bool, reason: str)`, says whether the files are in place.

The master hashes every file it relays: its sha256 is the audit record's and the receiver's, whoever sent the
bytes (the worker is not trusted). A sender's own sha256 adds nothing over reliable sockets (it hashes what it
read, as the master does), so a sender skips it where the master said it takes NO_CLAIM: the operator's client
when the ``copy`` answer says ``"unclaimed": true``, the worker once the master's ``lean`` call came (both came
with the same version). A claim that is made is still checked. Receivers do not hash.

Each call is a frozen event here (`Entry`, `Data`, `DoneFile`, `Finish`, `Abort`, `Ack`, `Result`, and the
master's `Start` and `Cancel` to the worker), defined once with its encoding to plain values: `to_wire()` gives
its arguments in order, `from_wire(*args)` checks them and makes the event (`decode` by the call's name), and
`fields()`/`names` spell them as a framing control's fields. Every hop decodes at its edge and handles events by
type. Requests (`TransferRequest`) travel as plain dicts. Every check here raises `ProtocolError` (the peer's
fault).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from slaveshell.vocabulary.flow import TRANSFER_CHUNK
from slaveshell.vocabulary.protocol import (
    MAX_NAME,
    MAX_PATH,
    ProtocolError,
    check_bytes,
    check_int,
    check_reason,
    check_str,
    check_worker_name,
)

# The remote method added to the worker's Bot object for transfers.
WORKER_TRANSFER_METHOD = "slaveshell_transfer"
# Banana refuses strings over 640 KiB and drops the connection on one: a chunk stays well below
# (slaveshell.vocabulary.flow.TRANSFER_CHUNK, 256 KiB).
CHUNK = TRANSFER_CHUNK
# Credit a sender may hold unacknowledged: 12 chunks, 3 MiB (2 MiB measured ~25 % slower on loopback). It also
# bounds what each hop buffers per transfer, and it stays below the master's per-connection output bound
# (master_side.operators.bounds.ResourceBounds.connection_buffer, 4 MiB: a larger window gets the operator's
# connection dropped).
WINDOW = 12 * CHUNK
# The credit one entry or done_file costs (bounds a flood of empty files like a flood of bytes).
ENTRY_COST = 1024
MAX_SOURCES = 1024
# Entries in one transfer, and parts in one entry's path: what a receiver keeps per entry (its path, to commit)
# and the depth its walks go to stay bounded, whatever a hostile sender streams.
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 256
MAX_FILE = 2**50
MODE_MASK = 0o7777
UP = "up"  # the operator's files to the worker
DOWN = "down"  # the worker's files to the operator
NO_CLAIM = ""  # a sender's done_file without its own sha256
_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_relpath(path: object) -> str:
    """A relative path inside a destination: "/"-separated, no empty, "." or ".." part, no NUL, a file name
    (check_file_name)."""
    text = check_file_name(check_str(path, "path", MAX_PATH), "path")
    parts = text.split("/")
    if not text or "\0" in text or any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(f"unsafe path in a transfer: {text!r}")
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"a path deeper than {MAX_DEPTH} directories in a transfer")
    return text


def check_file_name(text: str, what: str) -> str:
    """A path as Python's os functions take it: POSIX names are bytes, and those that are not UTF-8 travel as
    text with each such byte decoded to a lone surrogate U+DC80-U+DCFF (surrogateescape), the one spelling of
    those bytes. Any other lone surrogate, or bytes that are UTF-8 spelled as surrogates, is refused."""
    if text.isascii():
        return text
    try:
        if text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") == text:
            return text
    except UnicodeEncodeError:
        pass
    raise ProtocolError(f"{what} is not a file name (a lone surrogate that stands for no byte)")


def path_text(text: str) -> str:
    """`text` as UTF-8 text for a record, an index or a PB answer: each byte that was not UTF-8 (a surrogate of
    check_file_name) spelled \\xNN, any other lone surrogate \\udNNN; the rest as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else
                   f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)


def path_bytes(value: object) -> object:
    """A path as PB carries it: text, or bytes when it is not UTF-8 (Banana's text is UTF-8 only)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


def _path_from_wire(value: object) -> object:
    """The inverse of path_bytes: bytes back to text (surrogateescape); anything else as it is."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def check_claim(value: object) -> str:
    """A sender's done_file argument: NO_CLAIM or a sha256 (check_sha)."""
    return NO_CLAIM if value == NO_CLAIM else check_sha(value)


def check_sha(value: object) -> str:
    text = check_str(value, "sha256", 64)
    if not _SHA.match(text):
        raise ProtocolError("sha256 must be 64 lowercase hex digits")
    return text


class TransferEvent:
    """One call of a transfer's stream as a frozen event. `call` is its name on every wire (the PB method, the
    lean call, the framing control's op), `names` its arguments' names in a framing control; `to_wire()` its
    arguments as plain values, in order, and `from_wire(*args)` the event from them, checked (ProtocolError)."""

    call: ClassVar[str]
    names: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> tuple[object, ...]:
        return ()

    @classmethod
    def from_wire(cls, *args: object) -> TransferEvent:
        if args:
            raise ProtocolError(f"{cls.call} takes no arguments")
        return cls()

    def fields(self) -> dict[str, object]:
        """The event as a framing control's fields."""
        return dict(zip(self.names, self.to_wire(), strict=True))


@dataclass(frozen=True)
class Entry(TransferEvent):
    """One directory or regular file of a transfer (the sender's ``entry``)."""

    call: ClassVar[str] = "entry"
    names: ClassVar[tuple[str, ...]] = ("kind", "path", "mode", "size", "mtime")

    kind: str  # "dir" or "file"
    path: str
    mode: int
    size: int = 0
    mtime: float = 0.0

    @classmethod
    def from_wire(cls, *args: object) -> Entry:
        if len(args) != 5:
            raise ProtocolError("entry takes kind, path, mode, size and mtime")
        kind, path, mode, size, mtime = args
        if kind not in ("dir", "file"):
            raise ProtocolError("an entry is a 'dir' or a 'file'")
        if not isinstance(mtime, (int, float)) or isinstance(mtime, bool) or not 0 <= mtime < 2**40:
            raise ProtocolError("mtime must be seconds since the epoch")
        return cls(str(kind), check_relpath(path), check_int(mode, "mode", 0, MODE_MASK),
                   check_int(size, "size", 0, MAX_FILE), float(mtime))

    def to_wire(self) -> tuple[str, str, int, int, float]:
        return (self.kind, self.path, self.mode, self.size, self.mtime)


@dataclass(frozen=True)
class Data(TransferEvent):
    """At most CHUNK bytes of the current file (the sender's ``data``; a framing DATA frame)."""

    call: ClassVar[str] = "data"

    chunk: bytes

    @classmethod
    def from_wire(cls, *args: object) -> Data:
        return cls(check_bytes(args[0] if len(args) == 1 else None, "data", CHUNK))

    def to_wire(self) -> tuple[bytes]:
        return (self.chunk,)


@dataclass(frozen=True)
class DoneFile(TransferEvent):
    """The current file is complete (the sender's ``done_file``): its sha256, or NO_CLAIM from a sender that
    leaves it to the master; to a receiver, always the master's sha256 (`check_sha` there)."""

    call: ClassVar[str] = "done_file"
    names: ClassVar[tuple[str, ...]] = ("sha256",)

    sha256: str

    @classmethod
    def from_wire(cls, *args: object) -> DoneFile:
        return cls(check_claim(args[0] if len(args) == 1 else None))

    def to_wire(self) -> tuple[str]:
        return (self.sha256,)


@dataclass(frozen=True)
class Finish(TransferEvent):
    """No more entries: the receiver commits and answers with `Result`."""

    call: ClassVar[str] = "finish"


@dataclass(frozen=True)
class Abort(TransferEvent):
    """The sender gave up: the receiver removes what it staged. Any reason is taken (a malformed one as "")."""

    call: ClassVar[str] = "abort"
    names: ClassVar[tuple[str, ...]] = ("reason",)

    reason: str = ""

    @classmethod
    def from_wire(cls, *args: object) -> Abort:
        return cls(args[0] if len(args) == 1 and isinstance(args[0], str) else "")

    def to_wire(self) -> tuple[str]:
        return (self.reason,)


@dataclass(frozen=True)
class Ack(TransferEvent):
    """The receiver's credit returned (`Credit.ack` checks it against what was spent)."""

    call: ClassVar[str] = "ack"
    names: ClassVar[tuple[str, ...]] = ("n",)

    credit: int

    @classmethod
    def from_wire(cls, *args: object) -> Ack:
        return cls(check_int(args[0] if len(args) == 1 else None, "ack", 1, WINDOW))

    def to_wire(self) -> tuple[int]:
        return (self.credit,)


@dataclass(frozen=True)
class Result(TransferEvent):
    """The receiver's end: whether the files are in place, and why not."""

    call: ClassVar[str] = "result"
    names: ClassVar[tuple[str, ...]] = ("ok", "reason")

    ok: bool
    reason: str = ""

    @classmethod
    def from_wire(cls, *args: object) -> Result:
        if len(args) != 2 or not isinstance(args[0], bool):
            raise ProtocolError("result comes from the receiver: ok and a reason")
        return cls(args[0], check_str(args[1], "reason", 4096))

    @classmethod
    def told(cls, ok: object, reason: object, otherwise: str) -> Result:
        """The outcome as the master tells its operator: ok only when True, any reason text (`otherwise` when
        there is none)."""
        return cls(ok is True, reason if isinstance(reason, str) else otherwise)

    def to_wire(self) -> tuple[bool, str]:
        return (self.ok, self.reason)


@dataclass(frozen=True)
class Start(TransferEvent):
    """The master to the worker of a download: start sending."""

    call: ClassVar[str] = "start"


@dataclass(frozen=True)
class Cancel(TransferEvent):
    """The master to the worker: the transfer ended (the operator left or stopped, the record failed). Any
    reason is taken (a malformed one as "")."""

    call: ClassVar[str] = "cancel"
    names: ClassVar[tuple[str, ...]] = ("reason",)

    reason: str = ""

    @classmethod
    def from_wire(cls, *args: object) -> Cancel:
        return cls(args[0] if len(args) == 1 and isinstance(args[0], str) else "")

    def to_wire(self) -> tuple[str]:
        return (self.reason,)


EVENTS: dict[str, type[TransferEvent]] = {e.call: e for e in (Entry, Data, DoneFile, Finish, Abort, Ack, Result,
                                                              Start, Cancel)}
# What a sender streams, and what comes back to it.
FROM_SENDER: tuple[type[TransferEvent], ...] = (Entry, Data, DoneFile, Finish, Abort)
# The stream's calls, both ways: answer-less (PB's pbanswer=False), and slaveshell.plumbing.lean_calls once negotiated.
STREAM_EVENTS: tuple[type[TransferEvent], ...] = (Entry, Data, DoneFile, Ack)
STREAM_CALLS = frozenset(e.call for e in STREAM_EVENTS)
# The sender's stream calls: a small one (an entry, a done_file, the data of a small file, the finish) waits for
# the reactor's next turn and goes joined with the others written in that turn, one write for many (a tree of
# small files); a chunk of a large file, the acks and the outcome go to the kernel at once.
JOINED_CALLS = frozenset(e.call for e in (Entry, Data, DoneFile, Finish))


def event_type(call: object) -> type[TransferEvent]:
    """The event a call's name stands for; ProtocolError for any other name."""
    kind = EVENTS.get(call) if isinstance(call, str) else None
    if kind is None:
        raise ProtocolError(f"unknown transfer call {_call_name(call)}")
    return kind


def decode(call: object, args: tuple[object, ...]) -> TransferEvent:
    """The event of a call by its name and plain arguments (a door's edge); ProtocolError when either is wrong."""
    return event_type(call).from_wire(*args)


def from_fields(call: object, get: Callable[[str], object]) -> TransferEvent:
    """The event of a framing control (its op's name, and `get(field)` its fields); ProtocolError."""
    kind = event_type(call)
    return kind.from_wire(*(get(name) for name in kind.names))


def _call_name(call: object) -> str:
    return call[:40] if isinstance(call, str) else type(call).__name__


def top_name(source: str) -> str | None:
    """The name a source's entries carry at the top of the stream (its base name, as `cpfiles.plan` names it);
    None when the sender names it by what it resolves to (".", "..", "/", "dir/.."): any one name then."""
    name = posixpath.basename(posixpath.normpath(source))
    return None if name in ("", ".", "..") else name


class Asked:
    """What a receiver takes of a stream: for each source of the request, one top-level entry under that
    source's name (`top_name`); a directory only with `recursive`, and the entries below a top-level directory
    only. `entry` raises ProtocolError on anything else (scp's check against CVE-2019-6111)."""

    def __init__(self, sources: Iterable[str], recursive: bool) -> None:
        names = [top_name(s) for s in sources]
        self.names = {n for n in names if n is not None}
        self.unnamed = sum(1 for n in names if n is None)  # sources any one name may answer
        self.recursive = recursive
        self.tops: dict[str, str] = {}  # name -> kind, as received

    def entry(self, entry: Entry) -> None:
        top, _, rest = entry.path.partition("/")
        if rest:
            if self.tops.get(top) != "dir":
                raise ProtocolError(f"{entry.path}: not inside a directory that was asked for")
            return
        if top in self.tops:
            raise ProtocolError(f"{top}: sent twice")
        if top not in self.names:
            if self.unnamed <= sum(1 for n in self.tops if n not in self.names):
                raise ProtocolError(f"{top}: not asked for")
        if entry.kind == "dir" and not self.recursive:
            raise ProtocolError(f"{top}: a directory, and -r was not asked for")
        self.tops[top] = entry.kind


@dataclass(frozen=True)
class TransferRequest:
    """What an operator asks: `direction` UP (local `sources` to the worker's `dest`; `sources` then holds the
    top-level names the stream will carry) or DOWN (the worker's `sources` to a local destination). Worker
    paths are absolute or relative to the worker's basedir (to the held build's directory with `build`)."""

    direction: str
    worker: str
    sources: tuple[str, ...]
    dest: str = ""
    recursive: bool = False
    preserve: bool = False
    build: int | None = None
    operator: str | None = None  # set by the master, never taken from the client
    cwd: str | None = None  # set by the master (the held build's directory)
    # Why (`slaveshell cp --reason`, slaveshell.vocabulary.checks.check_reason): for the master only.
    reason: str | None = None

    def validate(self) -> None:
        if self.direction not in (UP, DOWN):
            raise ProtocolError("direction must be 'up' or 'down'")
        check_worker_name(self.worker)
        if not 1 <= len(self.sources) <= MAX_SOURCES:
            raise ProtocolError(f"a transfer has 1 to {MAX_SOURCES} sources")
        for source in self.sources:
            if not check_file_name(check_str(source, "source", MAX_PATH), "a source") or "\0" in source:
                raise ProtocolError("a source must be a non-empty path")
        if "\0" in check_file_name(check_str(self.dest, "destination", MAX_PATH), "the destination"):
            raise ProtocolError("bad destination")
        if self.direction == UP and not self.dest:
            raise ProtocolError("an upload needs a destination on the worker")
        if not isinstance(self.recursive, bool) or not isinstance(self.preserve, bool):
            raise ProtocolError("recursive and preserve must be booleans")
        if self.build is not None:
            check_int(self.build, "build id", 1, 2**62)
        if self.operator is not None:
            check_str(self.operator, "operator", MAX_NAME)
        if self.cwd is not None:
            check_file_name(check_str(self.cwd, "working directory", MAX_PATH), "the working directory")
        if self.reason is not None:
            check_reason(self.reason)

    def asked(self) -> Asked:
        """What a receiver of this transfer takes (for an upload, `sources` are the top-level names)."""
        return Asked(self.sources, self.recursive)

    def to_wire(self) -> dict[str, object]:
        return {"direction": self.direction, "worker": self.worker, "sources": list(self.sources),
                "dest": self.dest, "recursive": self.recursive, "preserve": self.preserve, "build": self.build,
                "operator": self.operator, "cwd": self.cwd,
                # Only when given: a peer that does not know the field still takes a request without one.
                **({"reason": self.reason} if self.reason is not None else {})}

    def to_pb(self) -> dict[str, object]:
        """to_wire() for PB: a path that is not UTF-8 as bytes (path_bytes); from_wire takes both."""
        wire = self.to_wire()
        wire.pop("reason", None)  # the master's record only: the worker is not told
        wire["sources"] = [path_bytes(s) for s in self.sources]
        wire["dest"], wire["cwd"] = path_bytes(self.dest), path_bytes(self.cwd)
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> TransferRequest:
        if not isinstance(wire, dict) or set(wire) - {"direction", "worker", "sources", "dest", "recursive",
                                                      "preserve", "build", "operator", "cwd", "reason"}:
            raise ProtocolError("a transfer request must be a dict of known fields")
        sources = wire.get("sources")
        if not isinstance(sources, (list, tuple)):
            raise ProtocolError("sources must be a list of paths")
        request = cls(direction=wire.get("direction", ""), worker=wire.get("worker", ""),
                      sources=tuple(_path_from_wire(s) for s in sources),  # type: ignore[misc]
                      dest=_path_from_wire(wire.get("dest", "")),  # type: ignore[arg-type]
                      recursive=wire.get("recursive", False), preserve=wire.get("preserve", False),
                      build=wire.get("build"), operator=wire.get("operator"), reason=wire.get("reason"),
                      cwd=_path_from_wire(wire.get("cwd")))  # type: ignore[arg-type]
        request.validate()
        return request


class Credit:
    """The sender's unacknowledged credit as one hop sees it (bytes of data plus ENTRY_COST per entry and
    done_file). `spend` raises ProtocolError past WINDOW (a sender ignoring the window); `ack` one past what
    was spent."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.outstanding = 0

    @property
    def available(self) -> int:
        return self.window - self.outstanding

    def spend(self, n: int) -> None:
        if self.outstanding + n > self.window:
            raise ProtocolError(f"the sender passed its window of {self.window} bytes")
        self.outstanding += n

    def ack(self, n: object) -> int:
        credit = check_int(n, "ack", 1, self.window)
        if credit > self.outstanding:
            raise ProtocolError("acknowledged more than was sent")
        self.outstanding -= credit
        return credit


class StreamOrder:
    """Checks a stream's order: data only inside a file, the declared size respected, done_file only after
    exactly `size` bytes, nothing after finish."""

    def __init__(self) -> None:
        self.current: Entry | None = None
        self.received = 0
        self.finished = False
        self.entries = 0

    def entry(self, entry: Entry) -> None:
        if self.finished or self.current is not None:
            raise ProtocolError("an entry came inside a file or after the end")
        if self.entries >= MAX_ENTRIES:
            raise ProtocolError(f"more than {MAX_ENTRIES} entries in a transfer")
        self.entries += 1
        if entry.kind == "file":
            self.current, self.received = entry, 0

    def data(self, chunk: bytes | memoryview) -> Entry:
        if self.current is None:
            raise ProtocolError("data came outside a file")
        if self.received + len(chunk) > self.current.size:
            raise ProtocolError(f"{self.current.path}: more bytes than its declared size")
        self.received += len(chunk)
        return self.current

    def done_file(self) -> Entry:
        if self.current is None or self.received != self.current.size:
            raise ProtocolError("a file ended before its declared size")
        done, self.current = self.current, None
        return done

    def finish(self) -> None:
        if self.current is not None or self.finished:
            raise ProtocolError("the transfer ended inside a file")
        self.finished = True
