"""Transcript files on the master: created exclusively with mode 0600 in a 0700 directory, appended live,
fsynced at the end, and repaired after a crash. A session with bulk output, or a terminal's output that is not
UTF-8, has an attachment next to its `.cast`: `<name>.bin`, the raw bytes its `a` and `oa` events refer to
(slaveshell.vocabulary.transcript, docs/audit-schema.md)."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence

from master_side.audit.hashing import BatchedSha256
from master_side.audit.writeback import WriteBack
from slaveshell.vocabulary.transcript import ATTACHED, EXACT_ATTACHED, attachment_ref, parse_lines


def transcript_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # makedirs leaves an existing directory's mode alone
    return path


def transcript_name(worker: str, session_id: str, started: float) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", worker)[:64]
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}-{safe}-{session_id}.cast"


def attachment_path(path: str) -> str:
    """The attachment of the transcript at `path` (which may not exist: only bulk output makes one)."""
    return (path[: -len(".cast")] if path.endswith(".cast") else path) + ".bin"


def _sync_and_close(fd: int, run: Callable[[Callable[[], None]], object] | None) -> None:
    """fsync and close `fd`, here (errors raised here) or through `run(work)` (e.g. in a thread)."""

    def sync() -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if run is None:
        sync()
    else:
        run(sync)


class TranscriptFile:
    """Append-only: lines are buffered and written by `flush()`; the sha256 of what was written is kept as it
    goes. Every error is an OSError for the caller to act on (full disk, a vanished directory)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                                       0o600)
        self._writeback = WriteBack(self._fd)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.size = 0
        self._sha = hashlib.sha256()

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def pending(self) -> int:
        return self._buffered

    def add(self, lines: Sequence[str | bytes]) -> None:
        """Lines without their newline: text, or bytes already encoded (CastEncoder.output_encoded)."""
        for line in lines:
            if isinstance(line, str):
                data = (line + "\n").encode("utf-8", "surrogateescape")
                self._buffer.append(data)
                self._buffered += len(data)
            else:
                self._buffer += (line, b"\n")
                self._buffered += len(line) + 1

    def flush(self) -> None:
        if self._fd is None or not self._buffer:
            return
        data = b"".join(self._buffer)
        size_before, sha_before = self.size, self._sha.copy()
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self._sha.update(view[:written])
                self.size += written
                view = view[written:]
        except OSError:
            # A full disk may take part of a line: cut back to the last whole line, so the file stays valid
            # and playable, and keep everything buffered for a retry.
            try:
                os.ftruncate(self._fd, size_before)
            except OSError:
                pass
            self.size, self._sha = size_before, sha_before
            raise
        self._buffer = []
        self._buffered = 0
        self._writeback.advance(self.size)

    def close(self, run: Callable[[Callable[[], None]], object] | None = None) -> str:
        """Flush (os.write, here), then fsync and close; returns the sha256 of the file's contents (known once
        flushed). `run(work)` runs the fsync and the close elsewhere (a slow disk can block for seconds: the
        audit trail runs them in a thread); by default they run here, and an error is raised here."""
        if self._fd is not None:
            fd = self._fd
            try:
                self.flush()
            except OSError:
                os.close(fd)
                self._fd = None
                raise
            self._fd = None
            self._writeback.close()
            _sync_and_close(fd, run)
        return self._sha.hexdigest()

    def abandon(self) -> None:
        """Close without flushing (the disk refused): what was written stays valid up to its last line."""
        if self._fd is not None:
            self._writeback.close()
            os.close(self._fd)
            self._fd = None

    def sha256(self) -> str:
        return self._sha.hexdigest()


# Write attachments' chunks off the reactor thread (`Attachment.write_behind`), all sessions together. Each
# attachment has its own queue, written one chunk at a time in the order handed over; after each chunk it goes to
# the back of the line, so a session waits for its own chunks and at most one chunk of each other session's.
WRITERS = 4
_WRITING = concurrent.futures.ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="slaveshell-attachment")

_Chunk = tuple[int, int, bytes, "concurrent.futures.Future[None]"]


class Attachment:
    """A transcript's attachment: raw bytes appended as they come (os.write, before the chunk is relayed),
    created (0600, exclusively) at the first write, its sha256 kept as it goes (on a hashing thread, HASH_BATCH
    bytes at a time). Errors are OSError; a failed write is cut back, so every `a` event written after it still
    matches the file.

    `write_behind` appends on the writing thread instead (the reactor's thread goes on meanwhile; the kernel's
    copy of a 512 KiB chunk, and a wait for writeback, are not on it); its caller counts the chunk in
    (`written`) once the future says it is in the file, in the order handed over, and writes nothing else to the
    attachment while one is in progress (`behind`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0  # the bytes written and counted in (hashed)
        self._end = 0  # the end of what was handed over: `size` and the chunks still being written behind
        self._error: OSError | None = None  # a write behind failed: none after it is attempted
        self._sha = BatchedSha256()
        self._queue: collections.deque[_Chunk] = collections.deque()  # handed to write_behind, not yet written
        self._lock = threading.Lock()  # the queue, between the reactor's thread and the writing threads
        self._writing = False  # a writing thread has (or is about to have) this attachment's next chunk
        self._writeback: WriteBack | None = None

    @property
    def created(self) -> bool:
        return self._fd is not None or self.size > 0

    @property
    def behind(self) -> bool:
        """Chunks handed to `write_behind` and not yet counted in."""
        return self._end > self.size

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                               0o600)
            self._writeback = WriteBack(self._fd)
        return self._fd

    def write(self, data: bytes) -> int:
        """Append `data` (bytes: kept, unchanged, until it is hashed); returns its offset in the file."""
        assert not self.behind, "a write while chunks are still being written behind"
        fd = self._open()
        offset = self.size
        _append(fd, offset, data)
        self._end = self.size = self.size + len(data)
        self._sha.update(data)
        if self._writeback is not None:
            self._writeback.advance(self.size)
        return offset

    def write_behind(self, data: bytes) -> tuple[int, concurrent.futures.Future[None]]:
        """Append `data` on the writing thread; its offset, and the future of the write (its OSError, the
        write cut back, and every write handed over after it refused). Count it in with `written` once done."""
        fd = self._open()
        offset, self._end = self._end, self._end + len(data)
        write: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((fd, offset, data, write))
            if self._writing:
                return offset, write
            self._writing = True
        self._next()
        return offset, write

    def _next(self) -> None:
        """This attachment's next chunk, at the back of the writing threads' line."""
        try:
            _WRITING.submit(self._write_one)
        except RuntimeError as e:  # the interpreter is shutting down: nothing more is written
            with self._lock:
                chunks, self._writing = list(self._queue), False
                self._queue.clear()
            for chunk in chunks:
                chunk[3].set_exception(OSError(f"the attachment's writer stopped: {e}"))

    def _write_one(self) -> None:
        """On a writing thread: the oldest chunk of this attachment's queue; then the next, behind others'."""
        with self._lock:
            fd, offset, data, write = self._queue.popleft()
        if write.set_running_or_notify_cancel():
            try:
                self._write_at(fd, offset, data)
            except BaseException as e:
                write.set_exception(e)
            else:
                write.set_result(None)
        with self._lock:
            more = bool(self._queue)
            self._writing = more
        if more:
            self._next()

    def _write_at(self, fd: int, offset: int, data: bytes) -> None:
        """On the writing thread: `data`, expected at `offset` (everything before it written)."""
        if self._error is not None:
            raise self._error
        try:
            _append(fd, offset, data)
        except OSError as e:
            self._error = e
            raise
        if self._writeback is not None:
            self._writeback.advance(offset + len(data))

    def written(self, data: bytes) -> None:
        """A chunk `write_behind` wrote, counted in (size, sha256), in the order they were handed over."""
        self.size += len(data)
        self._sha.update(data)

    def failed(self) -> None:
        """A write behind failed: what is still handed over is not in the file (nor counted)."""
        self._end = self.size

    def sha256(self) -> str:
        """The sha256 of everything written (waits for the hashing thread to catch up)."""
        return self._sha.hexdigest()

    def close(self, run: Callable[[Callable[[], None]], object] | None = None) -> str | None:
        """Fsync and close (through `run`, as TranscriptFile.close); the sha256, None when never created."""
        if self._fd is None:
            return self.sha256() if self.size else None
        fd, self._fd = self._fd, None
        digest = self.sha256()
        if self._writeback is not None:
            self._writeback.close()
        _sync_and_close(fd, run)
        return digest

    def abandon(self) -> None:
        if self._fd is not None:
            if self._writeback is not None:
                self._writeback.close()
            os.close(self._fd)
            self._fd = None


def _append(fd: int, offset: int, data: bytes) -> None:
    """Write all of `data` at the end of `fd` (O_APPEND), which is at `offset`; on an error, cut it back there
    and raise."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        try:
            os.ftruncate(fd, offset)
        except OSError:
            pass
        raise


def _sha256_of(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _attached_end(events: list[object]) -> int:
    end = 0
    for event in events:
        if getattr(event, "code", None) in (ATTACHED, EXACT_ATTACHED):
            try:
                _, offset, length = attachment_ref(getattr(event, "data", None))
            except ValueError:
                continue
            end = max(end, offset + length)
    return end


def recover(path: str, reason: str) -> tuple[float, str]:
    """Make a transcript left by a crash playable: cut a partial last line, cut its attachment back to what
    the transcript refers to (and mark it with its size and sha256), append a marker saying why it stopped.
    Returns (time of the last event, sha256 of the repaired file)."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            data = data[:end]
        # Split at "\n" only: str.splitlines would also split at U+2028 or NEL inside an event's text.
        cast = parse_lines(line.decode("utf-8", "surrogateescape") for line in data.split(b"\n") if line)
        last = cast.events[-1].time if cast.events else 0.0
        markers = []
        bin_path = attachment_path(path)
        if os.path.exists(bin_path):
            with open(bin_path, "rb+") as b:
                b.truncate(_attached_end(list(cast.events)))
                os.fsync(b.fileno())
            markers.append(attachment_marker(bin_path, os.path.getsize(bin_path), _sha256_of(bin_path)))
        markers.append(reason)
        f.seek(0, os.SEEK_END)
        for marker in markers:
            f.write((json.dumps([last, "m", marker], ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        return last, hashlib.sha256(f.read()).hexdigest()


def attachment_marker(path: str, size: int, sha256: str) -> str:
    """The `m` event that closes a transcript with an attachment: its name, size and sha256 (so the
    transcript's own sha256 vouches for the attachment too)."""
    return f"attachment: {os.path.basename(path)}, {size} bytes, sha256 {sha256}"


def owned_files(path: str) -> tuple[str, ...]:
    """Every file a record with the transcript at `path` may own: the transcript, its attachment, and a copy of
    a transfer's bytes as earlier versions kept it (`<name>.bytes`, before kept bytes became the attachment)."""
    stem = path[: -len(".cast")] if path.endswith(".cast") else path
    return path, attachment_path(path), stem + ".bytes"


def remove_transcript(path: str) -> int:
    """Delete a transcript and every file it owns (`owned_files`: retention); returns the bytes freed (0 for
    files already gone). Blocking: run it in a thread."""
    freed = 0
    for name in owned_files(path):
        try:
            size = os.path.getsize(name)
            os.unlink(name)
        except FileNotFoundError:
            continue
        freed += size
    return freed
