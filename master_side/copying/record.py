"""A transfer's audit record (`slaveshell cp`): the transcript, the index row, the events, and optionally a copy
of the bytes.

- The transcript is an asciicast v2 file in the transcripts directory, like a session's: a header (its
  "slaveshell" object says ``"kind": "transfer"``, the direction, the worker and the operator), then one marker
  per directory and file (its path, size, mode and sha256, and with a kept copy its offset in the copy), then the
  outcome. Created exclusively, mode 0600, written through as the files pass, fsynced at the end (in a thread).
- The index row is a row of the sessions table (what `slaveshell history` lists): ``term`` is ``"transfer"`` (a
  session's is its TERM or NULL), ``command`` describes it (``cp up: SRC... -> WORKER:DEST``), ``bytes_in`` counts
  what went to the worker, ``bytes_out`` what came from it, ``state`` ends as "ended" or "failed" with the
  reason in ``end_reason``. Events: "transfer" at the start, "end" at the end (its detail: the outcome).
- An uploaded file of at most ``keep_uploaded_text`` bytes (a service option, 64 KiB by default, 0 for none) that
  is text (no NUL byte; bytes that are not UTF-8 are kept exactly in an `ob` event) is kept in the transcript:
  an `o` event with its text (after the service's `redact` patterns) right before the file's marker, which then
  ends with ``text kept`` (else ``not kept (binary)`` or ``not kept (larger than keep_uploaded_text)``).
  `slaveshell search` finds it and `slaveshell export` shows it, like a session's output.
- With the service's ``keep_transfer_bytes=True``, every file's bytes (both directions, any size, unredacted)
  in the transcript's attachment (``<transcript>.bin``, mode 0600, as a session's bulk output:
  master_side.audit.transcripts), each chunk referred to by an `a` event before the file's marker, which gives the
  file's offset in it (``kept at N``). Search and export read them as `o` events (master_side.audit.export).
- An upload's row keeps the names its files may have on the worker (``files``, master_side.audit.upload_links): a
  session whose command, or what is typed or piped into it, names one is linked to it.

Fail-closed like sessions: a transfer starts only once its transcript and its row exist, unless the service
serves unrecorded (`require_recording=False`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from master_side.audit.store import utc
from master_side.audit.trail import TransferOutcome, transfer_row
from master_side.audit.transcripts import (
    Attachment,
    TranscriptFile,
    attachment_marker,
    attachment_path,
    remove_transcript,
    transcript_name,
)
from master_side.audit.upload_links import MAX_NAMES, MAX_NAMES_CHARS, upload_names
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.copying import UP, Entry, TransferRequest, path_text
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.transcript import CastEncoder, encode_event

# `keep_uploaded_text`: uploaded text files of at most this many bytes are kept in the transcript by default, and
# the option may not exceed the maximum (a transfer holds one such file in memory while it passes).
KEEP_UPLOADED_TEXT = 64 * 1024
KEEP_UPLOADED_TEXT_MAX = 1024 * 1024
# The stream an `a` event of a kept file names (slaveshell.vocabulary.transcript.attachment_ref): 1, read as output.
_KEPT_STREAM = 1

if TYPE_CHECKING:
    from master_side.audit.trail import AuditTrail


def describe(request: TransferRequest) -> str:
    """One line for the index and the log: ``cp up: a b -> w1:/dest`` / ``cp down: w1:a -> .``.
    Paths that are not UTF-8 are spelled with \\xNN escapes (copying.path_text)."""
    flags = ("-r " if request.recursive else "") + ("-p " if request.preserve else "")
    sources = " ".join(request.sources)
    if request.direction == UP:
        return path_text(f"cp {flags}up: {sources} -> {request.worker}:{request.dest}")[:4000]
    return path_text(f"cp {flags}down: {request.worker}:{sources} -> {request.dest or '.'}")[:4000]


class TransferRecord:
    """Writes one transfer's audit record; every write error of the transcript or the copy raises OSError
    (the transfer then ends: it is not served unrecorded once started)."""

    def __init__(self, trail: AuditTrail, transfer_id: str, who: Identity, request: TransferRequest,
                 started: float, keep_bytes: bool, keep_text: int = KEEP_UPLOADED_TEXT) -> None:
        self.trail = trail
        self.id = transfer_id
        self.who = who
        self.request = request
        self.started = started
        self.keep_bytes = keep_bytes
        self.keep_text = keep_text if request.direction == UP and not keep_bytes else 0
        self.path = os.path.join(trail.directory, transcript_name(request.worker, transfer_id, started))
        self.file: TranscriptFile | None = None
        self.copy: Attachment | None = None
        self.text: bytearray | None = None  # the current file's bytes while it may still be kept as text
        self.offset = 0  # where the current file starts in the kept copy
        self.files: list[str] = []  # an upload's first files, for its `files` column (as upload_names bounds it)
        self.names_size = 0
        self.encoder = CastEncoder()
        self.build: dict[str, object] = {}

    def _t(self) -> float:
        return max(0.0, self.trail.reactor.seconds() - self.started)

    @deferred
    async def begin(self) -> bool:
        """Create the transcript (and the copy) and the index row, as a session's record starts
        (`AuditTrail.start_record`). Raises RecordingError when fail-closed and either cannot be made; returns
        False when serving unrecorded."""
        if not await self.trail.start_record("transfer", self.id, self.request.worker, self.who, self._create,
                                             self._row, self._discard):
            return False
        self.trail.transfer_opened(self.id, self.who, self.request.worker, describe(self.request))
        return True

    def _create(self) -> None:
        """The transcript with its header (and the copy's file), in the trail's thread for it."""
        self.file = TranscriptFile(self.path)
        self.file.add([CastEncoder.header(80, 24, self.started, title=describe(self.request), slaveshell={
            "kind": "transfer", "session": self.id, "direction": self.request.direction,
            "worker": self.request.worker, "operator": self.who.user, "uid": self.who.uid,
            "master": self.trail.master_name, "started": utc(self.started).isoformat() + "Z",
            "recursive": self.request.recursive, "preserve": self.request.preserve,
            **({"reason": self.request.reason} if self.request.reason is not None else {}), **self.build})])
        self.file.flush()
        if self.keep_bytes:
            self.copy = Attachment(attachment_path(self.path))

    def _row(self) -> dict[str, object]:
        return transfer_row(self.id, self.who, self.request.worker, self.trail.master_name, describe(self.request),
                            self.started, self.path if self.file is not None else None, self.build,
                            self.request.reason)

    def _discard(self) -> None:
        for owner in (self.file, self.copy):
            if owner is not None:
                owner.abandon()
        self.file = self.copy = None
        try:
            remove_transcript(self.path)
        except OSError:
            pass

    def _marker(self, text: str) -> None:
        if self.file is not None:
            self.file.add(self.encoder.marker(self._t(), path_text(text)))
            self.file.flush()

    def entry(self, entry: Entry) -> None:
        if entry.kind == "dir":
            self._marker(f"dir {entry.path} mode {entry.mode:04o}")
        else:
            self.text = bytearray() if 0 < entry.size <= self.keep_text else None
            self.offset = self.copy.size if self.copy is not None else 0

    def data(self, chunk: bytes) -> None:
        if self.copy is not None and self.file is not None:
            offset = self.copy.write(chunk)
            self.file.add(CastEncoder.attached(self._t(), _KEPT_STREAM, offset, len(chunk)))
            self.file.flush()
        if self.text is not None:
            if len(self.text) + len(chunk) > self.keep_text:
                self.text = None
            else:
                self.text += chunk

    def file_done(self, entry: Entry, sha256: str) -> None:
        kept = f" kept at {self.offset}" if self.copy is not None else ""
        text = _text(self.text)
        self.text = None
        if text is not None and self.file is not None:
            self.file.add(encode_event(self._t(), "o", self.trail.redact(text)))
            kept = " text kept"
        elif self.keep_text and entry.size:
            kept = " not kept (binary)" if entry.size <= self.keep_text else \
                " not kept (larger than keep_uploaded_text)"
        if self.request.direction == UP and len(self.files) < MAX_NAMES and self.names_size < MAX_NAMES_CHARS:
            name = path_text(entry.path)  # the index's text: a name that is not UTF-8 spelled \\xNN
            self.files.append(name)
            self.names_size += len(name) + 1
        self._marker(f"file {entry.path} {entry.size} bytes mode {entry.mode:04o} sha256 {sha256}{kept}")

    def end(self, ok: bool, reason: str, nbytes: int, files: int) -> None:
        """The outcome; the transcript (and a kept copy) is fsynced and closed in a thread; the row and an "end"
        event are queued. Never raises."""
        counted = f"{files} file{'' if files == 1 else 's'}, {nbytes} byte{'' if nbytes == 1 else 's'}"
        text = path_text(f"ok: {counted}" if ok else f"failed: {reason}")
        sha = kept = None
        copy, self.copy = self.copy, None
        if copy is not None and copy.created:
            try:
                kept = copy.close(self.trail._in_thread)
                self._marker(attachment_marker(copy.path, copy.size, kept or ""))
            except OSError:
                copy.abandon()
        try:
            self._marker(text)
            if self.file is not None:
                sha = self.file.close(self.trail._in_thread)
        except OSError:
            if self.file is not None:
                self.file.abandon()
        self.file = None
        up = self.request.direction == UP
        names = upload_names(self.request.dest, len(self.request.sources) == 1 and not self.request.recursive,
                             self.files) if up and self.files else None
        self.trail.transfer_ended(self.id, self.who, self.request.worker, TransferOutcome(
            ok, text, bytes_in=nbytes if up else 0, bytes_out=0 if up else nbytes, sha256=sha,
            attachment_sha256=kept, files=names))


def _text(data: bytearray | None) -> str | None:
    """A file's bytes as text when they are: without a NUL byte (None otherwise). Bytes that are not UTF-8 (a
    Latin-1 script) stay, as surrogates: the transcript's event shows them as U+FFFD and keeps them exactly in
    its `ob` event (slaveshell.vocabulary.transcript.encode_event)."""
    if not data or b"\0" in data:
        return None
    return data.decode("utf-8", "surrogateescape")
