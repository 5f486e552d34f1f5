"""Recording one session: its transcript file, written live; what the audit index learns of it goes through a
`RecordIndex` (master_side.audit.trail.IndexWriter)."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypedDict

from twisted.logger import Logger

from master_side.audit.store import utc
from master_side.audit.transcripts import Attachment, TranscriptFile, attachment_marker, attachment_path
from master_side.audit.upload_links import TypedWords
from slaveshell.vocabulary import hidden as hidden_input
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import STREAM_OUT
from slaveshell.vocabulary.transcript import BULK_INLINE, CastEncoder

if TYPE_CHECKING:
    from master_side.sessions.session import MasterSession

log = Logger()

# A span of hidden input with no new keystroke for this long is ended (and marked) before the next event, or
# at the service's next one-second tick (SessionRegistry.tick).
SPAN_IDLE = 1.0

Seal = Callable[[bytes], str]


class HiddenCounts(TypedDict):
    """A session's hidden input as its row counts it (docs/audit-schema.md, Hidden input)."""

    hidden_bytes: int
    hidden_spans: int
    hidden_flag: bool


class RecordIndex(Protocol):
    """What a recording tells the audit index (master_side.audit.trail.IndexWriter: the trail writes the index)."""

    def hidden_input(self, session_id: str, counts: HiddenCounts) -> None: ...
    def record_error(self, session_id: str, error: OSError) -> None: ...
    def recorded(self, session: MasterSession, ended: float, sha256: str | None, hidden: HiddenCounts,
                 attachment_sha256: str | None = None) -> None: ...


@dataclass(frozen=True)
class _Behind:
    """A bulk chunk being written to the attachment off the reactor thread (`SessionRecorder.input`, `output`):
    `stream` as its `a` event names it (0 input, 1 and 2 output)."""

    data: bytes
    offset: int
    write: concurrent.futures.Future[None]
    recorded: Callable[[], None]
    stream: int


class SessionRecorder:
    """Implements the relay's Recorder. Write-through: each event is in the transcript file (handed to the
    kernel with os.write) when its method returns, and the relay calls it before it relays the event to any
    viewer, so what anyone saw survives a kill -9 of the master (the kernel keeps what was written; only a
    crash of the machine itself can lose what is not yet fsynced, which happens when the session ends).

    A write error (a full disk) is reported once through `on_error`; after it, events are dropped and what was
    already written stays valid (a partial line is cut back).

    `bulk` (a session without a terminal): output chunks are written raw to the attachment
    (master_side.audit.transcripts.Attachment), the transcript gets a short `a` event per chunk: no JSON encoding of
    the bytes, storage about 1.0x of the output instead of 1.5x (text) to 3.7x (binary). A terminal's output that
    is not valid UTF-8 keeps its exact bytes in the attachment too, after the `o` event players show, with an
    `oa` event naming them (CastEncoder.output_attaching): the attachment exists only once there are some.

    A bulk stream's chunks, given a `recorded` callback, may be written behind: with `call_in_reactor` set (the
    audit trail sets Twisted's callFromThread), an attached chunk goes to the attachment on the writing thread
    (Attachment.write_behind) while the reactor goes on; its `a` event is written once the bytes are in the file,
    and only then is `recorded` called: for input, the relay then returns the input's credit to its sender
    (recorded before acknowledged, as when written here); for output, the relay then serves the chunk to the
    viewers and returns the worker's credit (recorded before served: an output chunk whose write failed is served
    only if `on_error` lets the session go on unrecorded, with its warning). The reactor's thread thus never waits
    on the disk for a bulk stream (a write that meets the kernel's writeback throttling sleeps there). Any other
    event waits for the chunks still being written, and is written after their events, so the transcript keeps
    its order and never refers to bytes the attachment does not hold."""

    def __init__(self, session_id: str, path: str, encoder: CastEncoder, audit: RecordIndex | None,
                 started: float, clock: Callable[[], float] = time.time, seal: Seal | None = None,
                 bulk: bool = False) -> None:
        self.session_id = session_id
        self.path = path
        self.encoder = encoder
        self.audit = audit
        self.started = started
        self.clock = clock
        self.file: TranscriptFile | None = None
        self.failed: OSError | None = None
        self.on_error: Callable[[OSError], None] = lambda e: None
        self.sha256: str | None = None
        self.bulk = bulk
        # Created on disk at its first write (bulk output, or a terminal's output that is not UTF-8).
        self.attachment = Attachment(attachment_path(path))
        self.attachment_sha256: str | None = None
        # Runs a function on the reactor's thread from another (callFromThread); None: input is never written
        # behind (`input`).
        self.call_in_reactor: Callable[[Callable[[], None]], object] | None = None
        self._behind: collections.deque[_Behind] = collections.deque()
        self._settling = False  # `_settle` in progress
        self._reporting = False  # `on_error` in progress (`_report`)
        self._unrecorded: list[_Behind] = []  # output from a failed write on, told once `on_error` returned
        self._unreported: OSError | None = None  # a failure `on_error` is not yet told of (`_report`)
        # Runs blocking file work (the final fsync and close) off the reactor thread; None: here.
        self.run_blocking: Callable[[Callable[[], None]], object] | None = None
        # Hidden input: `seal` encrypts a span's bytes to the auditors (None: only lengths are kept).
        self.seal = seal
        self.hidden_bytes = 0
        self.hidden_spans = 0
        self.hidden_flag = False
        self._span = bytearray()
        self._span_last = 0.0
        self._after_hidden_line = False
        # The words typed or piped (not hidden, and only when input is recorded): what a session names besides its
        # command (master_side.audit.upload_links, read by the audit trail at the end).
        self.typed = TypedWords() if encoder.record_input else None

    def create(self, header: str) -> None:
        """Create the file with its header on disk, before anything is served. Raises OSError."""
        self.file = TranscriptFile(self.path)
        self.file.add([header])
        try:
            self.file.flush()
        except OSError:
            self.file.abandon()
            self.file = None
            os.unlink(self.path)
            raise

    def _t(self) -> float:
        return max(0.0, self.clock() - self.started)

    def _add(self, lines: Sequence[str | bytes], flush: bool = True) -> None:
        """Add `lines` to the file and, with `flush`, write everything added so far (an input added without it
        goes with the next event's write); after the events of the input chunks still being written behind."""
        self._drain()
        self._put(lines, flush)

    def _put(self, lines: Sequence[str | bytes], flush: bool = True) -> None:
        if self._span and self.clock() - self._span_last >= SPAN_IDLE:
            self._end_span()  # its marker goes before the event that comes after the idle time
        if self.file is None or self.failed is not None:
            return
        if lines:
            self.file.add(lines)
        if flush and self.file.pending:
            self.flush()

    def flush(self) -> None:
        if self._span and self.clock() - self._span_last >= SPAN_IDLE:
            self._end_span()
        if self.file is None or self.failed is not None:
            return
        try:
            self.file.flush()
        except OSError as e:
            self._fail(e)

    def _fail(self, error: OSError) -> None:
        log.critical("session {sid}: transcript {path} cannot be written: {e}", sid=self.session_id,
                     path=visible(self.path), e=visible(error))
        if self.failed is not None:
            return  # reported once (a later error: closing what the first one failed)
        self.failed = error
        if self.audit is not None:
            self.audit.record_error(self.session_id, error)
        self._unreported = error
        if not self._settling:
            self._report()

    def _report(self) -> None:
        """Tell `on_error` of the failure not yet told (once: it may end the session, which comes back here)."""
        error, self._unreported = self._unreported, None
        if error is not None:
            self._reporting = True
            try:
                self.on_error(error)
            finally:
                self._reporting = False

    # -- the relay's Recorder interface ----------------------------------------------------------

    def output(self, data: bytes, stream: int = STREAM_OUT, recorded: Callable[[], None] | None = None) -> None:
        """`recorded`, when given, is called once the output is recorded: at once, or later for a bulk stream's
        chunk written behind (for one whose write failed, only after `on_error` has ended the session or let it go
        on unrecorded)."""
        if recorded is not None and self._write_behind(data, recorded, stream):
            return
        self._output(data, stream)
        if recorded is not None:
            recorded()

    def _output(self, data: bytes, stream: int) -> None:
        if self.bulk:
            self._bulk(data, stream)
            return
        t = self._t()
        lines, exact = self.encoder.output_attaching(t, data)
        if exact:
            # The exact bytes in the attachment before the event that names them (as a bulk chunk's).
            if self.file is None or self.failed is not None:
                return
            try:
                offset = self.attachment.write(exact)
            except OSError as e:
                self._fail(e)
                return
            self._add([*lines, *self.encoder.exact_attached(t, offset, len(exact))])
        else:
            self._add(lines)

    def _bulk(self, data: bytes, stream: int) -> None:
        """A bulk chunk (stream 0: input): inline when short text, else raw in the attachment, then its event."""
        self._drain()
        t = self._t()
        lines = self.encoder.bulk(t, data, "i" if stream == 0 else "o")
        if lines is None:
            if self.file is None or self.failed is not None:
                return
            data = self.encoder.redact.raw(data)
            try:
                offset = self.attachment.write(data)
            except OSError as e:
                self._fail(e)
                return
            lines = self.encoder.attached(t, stream, offset, len(data))
        self._add(lines)

    def input(self, data: bytes, hidden: bool, flush: bool = True,
              recorded: Callable[[], None] | None = None) -> None:
        """`flush` False: the event is written with the next event's (the relay records a keystroke's echo right
        after it, before relaying either): one write instead of two; hidden input and a bulk stream's ignore it.
        `recorded`: called once the input is recorded, here, or later for a bulk stream's chunk written behind on
        the writing thread (the class's docstring)."""
        if hidden:
            self._hidden(data)
        else:
            self._end_span()
            self._after_hidden_line = False
            if self.typed is not None:
                self.typed.feed(data)
            if self.bulk and self.encoder.record_input:
                # An upload through a pipe: as cheap as output, and off the reactor's thread where it can be.
                if recorded is not None and self._write_behind(data, recorded, 0):
                    return
                self._bulk(data, 0)
            else:
                self._add(self.encoder.input(self._t(), data, hidden), flush)
        if recorded is not None:
            recorded()

    def _write_behind(self, data: bytes, recorded: Callable[[], None], stream: int) -> bool:
        """Hand a bulk chunk of `stream` that goes to the attachment to the writing thread (True); False when it is
        written here: not a bulk stream, no reactor to come back to, a recording that failed, or a chunk that
        stays inline."""
        attachment, call = self.attachment, self.call_in_reactor
        if not self.bulk or call is None or self.file is None or self.failed is not None:
            return False
        if len(data) <= BULK_INLINE:  # it may be an inline event (CastEncoder.bulk): written here
            return False
        data = self.encoder.redact.raw(data)
        try:
            offset, write = attachment.write_behind(data)
        except OSError as e:  # the attachment could not be created
            self._fail(e)
            return False
        self._behind.append(_Behind(data, offset, write, recorded, stream))
        write.add_done_callback(lambda _: call(self._settle))
        return True

    def _settle(self) -> None:
        """On the reactor's thread: the events of the chunks written behind that are in the file, in order, and
        their `recorded` callbacks; a failed write fails the recording (input is still acknowledged; output from
        it on is told only after `on_error`, which ends the session or lets it go on unrecorded).

        Never re-entered: what it writes may end a hidden span (an event of its own, written at its place), and a
        failure's `on_error` (the session's: it may end the session, whose end drains and settles again) is
        called only once every settled chunk is written and acknowledged, in order."""
        if self._settling:
            return  # the call in progress settles what is done, in order
        self._settling = True
        done: list[_Behind] = []
        unrecorded: list[_Behind] = []  # output chunks from a failed write on: told only after on_error
        try:
            while self._behind and self._behind[0].write.done():
                behind = self._behind.popleft()
                error = behind.write.exception()
                attachment = self.attachment
                if error is None and self.failed is None:
                    attachment.written(behind.data)
                    self._put(self.encoder.attached(self._t(), behind.stream, behind.offset, len(behind.data)))
                    done.append(behind)
                    continue
                if error is not None and self.failed is None:
                    attachment.failed()
                    self._fail(error if isinstance(error, OSError) else OSError(str(error)))
                if behind.stream == 0:
                    done.append(behind)  # input: acknowledged all the same
                else:
                    unrecorded.append(behind)
        finally:
            self._settling = False
        for behind in done:
            behind.recorded()
        # Output written behind from the failure on, told once `on_error` has returned (a settling within it, as the
        # session's end drains, keeps them here): it has ended the session (then nothing is served: its viewers are
        # gone), or let it go on unrecorded with a warning (then they are served, and their credit returns).
        self._unrecorded.extend(unrecorded)
        self._report()
        if not self._reporting:
            held, self._unrecorded = self._unrecorded, []
            for behind in held:
                behind.recorded()

    def _drain(self) -> None:
        """Wait for the chunks still being written behind, and settle them (before any other event); within a
        settling (an event it writes itself), nothing: that event goes at its place among the settled ones."""
        if not self._behind or self._settling:
            return
        for behind in self._behind:
            concurrent.futures.wait([behind.write])
        self._settle()

    # -- hidden input (slaveshell.vocabulary.hidden) ---------------------------------------------------------

    def _hidden(self, data: bytes) -> None:
        """Keystrokes the remote terminal did not display: gathered into a span that ends at a line end, at
        visible input, after SPAN_IDLE without keystrokes, at MAX_SPAN bytes or at the session's end; the
        transcript gets the span's marker then. Only `seal` ever sees the bytes."""
        self.encoder.input(self._t(), data, True)  # drops the input decoder's state
        if not self._span and self._after_hidden_line:
            self.hidden_flag = True  # typing went on, hidden, after a hidden line: not a password
        self._span += data
        self._span_last = self.clock()
        self.hidden_bytes += len(data)
        if self.hidden_bytes > hidden_input.HIDDEN_FLAG_BYTES:
            self.hidden_flag = True
        if b"\r" in data or b"\n" in data:
            self._end_span()
            self._after_hidden_line = True
        elif len(self._span) >= hidden_input.MAX_SPAN:
            self._end_span()

    def _end_span(self) -> None:
        if not self._span:
            return
        data, self._span = bytes(self._span), bytearray()
        sealed = None
        if self.seal is not None and self.encoder.record_input:
            try:
                sealed = self.seal(data)
            except Exception as e:
                # Never the bytes, nor the library's message (it could quote them): the kind of failure only.
                log.error("session {sid}: hidden input could not be sealed ({kind})", sid=self.session_id,
                          kind=type(e).__name__)
        nbytes = len(data)
        del data
        self.hidden_spans += 1
        self._add(self.encoder.hidden_span(self._t(), nbytes, sealed))
        if self.audit is not None:
            self.audit.hidden_input(self.session_id, self.hidden_counts())

    def hidden_counts(self) -> HiddenCounts:
        return {"hidden_bytes": self.hidden_bytes, "hidden_spans": self.hidden_spans,
                "hidden_flag": self.hidden_flag}

    def resize(self, cols: int, rows: int) -> None:
        self._add(self.encoder.resize(self._t(), cols, rows))

    def marker(self, text: str) -> None:
        self._end_span()
        self._add(self.encoder.marker(self._t(), text))

    def end(self, session: MasterSession) -> None:
        self._drain()
        self._end_span()
        status = session.status
        t = self._t()
        closing = self._close_attachment(t)
        if status is None:
            self._add(closing)
        else:
            if status.signal is not None:
                text = f"exit: killed by signal {status.signal}"
            elif status.code is not None:
                text = f"exit: code {status.code}"
            else:
                text = f"ended: {status.reason}"
            self._add(self.encoder.flush(t) + closing + self.encoder.marker(t, text))
        if self.file is not None:
            try:
                if self.failed is None:
                    self.sha256 = self.file.close(self.run_blocking)
                else:
                    self.file.abandon()
            except OSError as e:
                self.file.abandon()
                self._fail(e)
        if self.audit is not None:
            self.audit.recorded(session, self.clock(), self.sha256, self.hidden_counts(), self.attachment_sha256)

    def _close_attachment(self, t: float) -> list[str]:
        """Close the attachment (fsync off the reactor thread); its closing marker, if there is one."""
        attachment = self.attachment
        if not attachment.created:
            return []
        try:
            self.attachment_sha256 = attachment.close(self.run_blocking)
        except OSError as e:
            attachment.abandon()
            self._fail(e)
            return []
        return self.encoder.marker(t, attachment_marker(attachment.path, attachment.size,
                                                         self.attachment_sha256 or ""))


def header_for(session: MasterSession, master_name: str) -> str:
    req = session.request
    return CastEncoder.header(
        req.cols, req.rows, session.started,
        command=req.command,
        title=f"{session.identity.user}@{req.worker}" + (f": {req.command}" if req.command else ""),
        env={"TERM": req.term} if req.pty else None,
        slaveshell={
            "session": session.id,
            "worker": req.worker,
            "operator": session.identity.user,
            "uid": session.identity.uid,
            "master": master_name,
            "pty": req.pty,
            "started": utc(session.started).isoformat() + "Z",
            **({"reason": req.reason} if req.reason is not None else {}),
            **(session.build or {}),
        },
    )


def session_row(session: MasterSession, master_name: str, transcript: str | None) -> dict[str, object]:
    req = session.request
    return {
        "id": session.id,
        "worker": req.worker,
        "operator": session.identity.user,
        "uid": session.identity.uid,
        "master": master_name,
        "command": req.command,
        "pty": req.pty,
        "term": req.term if req.pty else None,
        "width": req.cols,
        "height": req.rows,
        "started": utc(session.started),
        "state": "running",
        "transcript": transcript,
        "bytes_in": 0,
        "bytes_out": 0,
        "reason": req.reason,
        "run_id": session.run_id,
        **(session.build or {}),
    }
