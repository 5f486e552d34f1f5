"""A transcript file written through to the disk as it grows, and its pages let go of by the page cache.

A transcript (its `.cast` and its attachment) is written once and read rarely. Left to the kernel, every byte of
a session's output stays in the page cache, dirty until the flusher gets to it (30 s, or 10 % of memory dirty),
then clean until memory runs short: a `-T` stream of a few GB fills the cache with audit data, pushing out the
master's database and the builds' files, and the final fsync has GBs to write. The pages cost too: on this kind
of machine (a VM whose memory is touched for the first time) the master's writes of a `-T cat` attachment cost
2.8 CPU s per GB in the kernel, against 0.2 when the pages come back from the file's own earlier ones
(bench/README.md, "Transcripts and the page cache"). The pattern is the streaming write of rsync's
--drop-cache or dd's oflag=nocache, with the writeback started early as PostgreSQL's WAL writer does.

`WriteBack` follows one file as it is appended (`advance`, from whatever thread wrote): each time STEP bytes
more are written, one job on the writeback thread (`_WRITEBACK`, one for the process, never the reactor's)
starts the kernel's writeback of them, waits for it, and drops their pages (sync_file_range, then
POSIX_FADV_DONTNEED). A file then holds about STEP of dirty pages plus what is written while a job waits; the
writers are never held (a job still running is followed by one that takes everything written meanwhile). Jobs use
a descriptor of their own on the file (opened through /proc/self/fd), so an error of the writeback is still told
to the transcript's own fsync at its close, as it would be without this. Files shorter than STEP are not touched.
Where the kernel does not offer sync_file_range (not Linux), nothing is done.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import threading
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

# The bytes written between two writebacks of a file.
STEP = 8 * 1024 * 1024

_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_* (linux/fs.h)

_WRITEBACK = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slaveshell-writeback")


def _sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not hasattr(os, "posix_fadvise"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
AVAILABLE = _SYNC_FILE_RANGE is not None


class WriteBack:
    """The writeback of one append-only file whose descriptor is `fd` (the caller's; it stays the caller's)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._own: int | None = None  # the jobs' descriptor on the file: opened with the first job, closed by the last
        self._done = 0  # written back and dropped: [0, _done)
        self._queued = 0  # handed to a job: [0, _queued)
        self._running = False  # a job is queued or running
        self._failed = False  # the kernel refused once: nothing more is tried
        self._lock = threading.Lock()

    def advance(self, end: int) -> None:
        """The file has been written up to `end`. Cheap; hands a job over once STEP more bytes are written and
        the file's last job is done (the next one then takes everything written meanwhile)."""
        if not AVAILABLE or self._failed or end - self._queued < STEP:
            return
        with self._lock:
            if self._running:
                return
            self._running = True
            start, self._queued = self._queued, end
        if self._own is None:
            try:  # here, while `fd` is surely the file's
                self._own = os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._failed = True
                return
        self._submit(self._job, start, end)

    def close(self) -> None:
        """The file is complete (or abandoned): after its last job, drop what is left of it once its writes are
        on the disk, and close the jobs' descriptor. Nothing for a file that never reached STEP."""
        if self._own is not None:
            self._submit(self._last)

    def _submit(self, job: Callable[..., None], *args: int) -> None:
        try:
            _WRITEBACK.submit(job, *args)
        except RuntimeError:  # the interpreter is shutting down
            self._failed = True

    def _job(self, start: int, end: int) -> None:
        """On the writeback thread: write back [start, end) and drop it from the cache."""
        try:
            self._drop(start, end)
        finally:
            with self._lock:
                self._running = False

    def _last(self) -> None:
        own = self._own
        if own is None:
            return
        try:
            self._drop(self._done, os.fstat(own).st_size)
        except OSError:
            pass
        finally:
            self._own = None
            os.close(own)

    def _drop(self, start: int, end: int) -> None:
        own = self._own
        if self._failed or end <= start or _SYNC_FILE_RANGE is None or own is None:
            return
        try:
            if _SYNC_FILE_RANGE(own, start, end - start, _WAIT_BEFORE | _WRITE | _WAIT_AFTER) != 0:
                raise OSError(ctypes.get_errno(), "sync_file_range")
            os.posix_fadvise(own, start, end - start, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            # The transcript's own fsync at its close reports a write that failed; here, stop trying.
            self._failed = True
            log.info("transcript writeback stopped: {error}", error=e.strerror or type(e).__name__)
            return
        self._done = end
