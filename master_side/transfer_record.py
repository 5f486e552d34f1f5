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
- With the service's ``keep_transfer_bytes=True``, every file's bytes in stream order, in ``<transcript>.bytes``
  (mode 0600) next to the transcript; the markers give each file's offset and size in it.

Fail-closed like sessions: a transfer starts only once its transcript and its row exist, unless the service
serves unrecorded (`require_recording=False`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from slaveshell.cpwire import UP, Entry, TransferRequest, path_text
from slaveshell.policy import Identity
from slaveshell.transcript import CastEncoder

from .audit import utc
from .audit_trail import RecordingError
from .transcripts import TranscriptFile, transcript_dir, transcript_name

if TYPE_CHECKING:
    from .audit_trail import AuditTrail


def describe(request: TransferRequest) -> str:
    """One line for the index and the log: ``cp up: a b -> w1:/dest`` / ``cp down: w1:a -> .``.
    Paths that are not UTF-8 are spelled with \\xNN escapes (cpwire.path_text)."""
    flags = ("-r " if request.recursive else "") + ("-p " if request.preserve else "")
    sources = " ".join(request.sources)
    if request.direction == UP:
        return path_text(f"cp {flags}up: {sources} -> {request.worker}:{request.dest}")[:4000]
    return path_text(f"cp {flags}down: {request.worker}:{sources} -> {request.dest or '.'}")[:4000]


class TransferRecord:
    """Writes one transfer's audit record; every write error of the transcript or the copy raises OSError
    (the transfer then ends: it is not served unrecorded once started)."""

    def __init__(self, trail: AuditTrail, transfer_id: str, who: Identity, request: TransferRequest,
                 started: float, keep_bytes: bool) -> None:
        self.trail = trail
        self.id = transfer_id
        self.who = who
        self.request = request
        self.started = started
        self.keep_bytes = keep_bytes
        self.path = os.path.join(trail.directory, transcript_name(request.worker, transfer_id, started))
        self.file: TranscriptFile | None = None
        self.copy_fd: int | None = None
        self.copied = 0
        self.encoder = CastEncoder()
        self.build: dict[str, object] = {}

    def _t(self) -> float:
        return max(0.0, self.trail.reactor.seconds() - self.started)

    @defer.inlineCallbacks
    def begin(self) -> Any:
        """Create the transcript (and the copy) and the index row. Raises RecordingError when fail-closed and
        either cannot be made; returns False when serving unrecorded."""
        problem = None
        try:
            transcript_dir(self.trail.directory)
            self.file = TranscriptFile(self.path)
            self.file.add([CastEncoder.header(80, 24, self.started, title=describe(self.request), slaveshell={
                "kind": "transfer", "session": self.id, "direction": self.request.direction,
                "worker": self.request.worker, "operator": self.who.user, "uid": self.who.uid,
                "master": self.trail.master_name, "started": utc(self.started).isoformat() + "Z",
                "recursive": self.request.recursive, "preserve": self.request.preserve, **self.build})])
            self.file.flush()
            if self.keep_bytes:
                self.copy_fd = os.open(self.path[: -len(".cast")] + ".bytes",
                                       os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            problem = f"cannot create the transcript: {e.strerror or e}"
        if problem is None:
            try:
                yield self.trail.store.open_session(self._row())
            except Exception as e:
                problem = f"cannot write the audit index: {str(e).splitlines()[0] if str(e) else e!r}"
        if problem is None:
            self.trail.store.event("transfer", self.id, self.request.worker, self.who.user, self.who.uid,
                                   detail=describe(self.request))
            return True
        self._discard()
        self.trail.store.event("record-error", self.id, self.request.worker, self.who.user, self.who.uid,
                               detail=problem)
        if self.trail.require_recording:
            raise RecordingError(f"transfer not started: it cannot be recorded ({problem})")
        return False

    def _row(self) -> dict[str, object]:
        return {"id": self.id, "worker": self.request.worker, "operator": self.who.user, "uid": self.who.uid,
                "master": self.trail.master_name, "command": describe(self.request), "pty": False,
                "term": "transfer", "width": 80, "height": 24, "started": utc(self.started), "state": "running",
                "transcript": self.path if self.file is not None else None, "bytes_in": 0, "bytes_out": 0,
                **self.build}

    def _discard(self) -> None:
        for fd_owner in (self.file,):
            if fd_owner is not None:
                fd_owner.abandon()
        self.file = None
        for path in (self.path, self.path[: -len(".cast")] + ".bytes"):
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.copy_fd is not None:
            os.close(self.copy_fd)
            self.copy_fd = None

    def _marker(self, text: str) -> None:
        if self.file is not None:
            self.file.add(self.encoder.marker(self._t(), path_text(text)))
            self.file.flush()

    def entry(self, entry: Entry) -> None:
        if entry.kind == "dir":
            self._marker(f"dir {entry.path} mode {entry.mode:04o}")

    def data(self, chunk: bytes) -> None:
        if self.copy_fd is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.copy_fd, view):]

    def file_done(self, entry: Entry, sha256: str) -> None:
        kept = f" kept at {self.copied}" if self.copy_fd is not None else ""
        self.copied += entry.size
        self._marker(f"file {entry.path} {entry.size} bytes mode {entry.mode:04o} sha256 {sha256}{kept}")

    def end(self, ok: bool, reason: str, nbytes: int, files: int) -> None:
        """The outcome; the transcript is fsynced and closed in a thread; the row and an "end" event are
        queued. Never raises."""
        text = path_text(f"ok: {files} files, {nbytes} bytes" if ok else f"failed: {reason}")
        sha = None
        try:
            self._marker(text)
            if self.file is not None:
                sha = self.file.close(self.trail._in_thread)
        except OSError:
            if self.file is not None:
                self.file.abandon()
        self.file = None
        if self.copy_fd is not None:
            fd, self.copy_fd = self.copy_fd, None

            def sync() -> None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            self.trail._in_thread(sync)
        up = self.request.direction == UP
        self.trail.store.update_session(self.id, state="ended" if ok else "failed",
                                        ended=utc(self.trail.reactor.seconds()), end_reason=text,
                                        bytes_in=nbytes if up else 0, bytes_out=0 if up else nbytes,
                                        transcript_sha256=sha)
        self.trail.store.event("end", self.id, self.request.worker, self.who.user, self.who.uid, detail=text)
