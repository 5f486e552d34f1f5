"""The worker owner's own record of what operators did on this worker (`slave_side.install(local_log=PATH)`).

One line per event, written on the worker's disk with the worker's permissions: a session started, ended or was
refused, a transfer started or ended. A line is tab-separated: the UTC time, the kind (`session`, `transfer`),
the worker's id of it, the event, then `key=value` fields. Every value the master or an operator controls
(operator names, commands, paths, reasons) goes through `slaveshell.vocabulary.display.visible`, so it holds no tab, no
newline and no terminal control: a line can neither be split into two nor gain a field, and `tail -f` of the
log interprets nothing. A value is cut at MAX_VALUE characters.

With `transcripts`, each session's output (what the worker sends its master) is also written as an asciicast v2
file beside the log (`<log>.<time>-<id>.cast`), at most `max_bytes` each; the oldest beyond `keep_transcripts`
are removed.

Files are created with `mode` (0600 by default) and opened with O_NOFOLLOW and O_APPEND: a symlink put at the
log's path is never followed, and anything but a regular file there is not written to. The log is rotated by
size (`<log>.1` ... `<log>.<backups>`). Writing never fails or holds up a session or a transfer: when the disk
is full or the log cannot be written, the event is dropped and twistd.log gets one line saying so (the error's
name only, no content, no path) until a write succeeds again.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence

from twisted.logger import Logger

from slaveshell.vocabulary.display import ELLIPSIS, visible
from slaveshell.vocabulary.protocol import ExitStatus, OpenRequest, SessionSink
from slaveshell.vocabulary.transcript import CastEncoder

log = Logger()

MAX_VALUE = 512
MAX_PATHS = 16
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
DEFAULT_KEEP_TRANSCRIPTS = 50
# Refusals (a master can ask for them as fast as it likes) are written at most this many per REFUSAL_WINDOW
# seconds; the others are counted, and the count is written with the next one that is.
REFUSALS_PER_WINDOW = 30
REFUSAL_WINDOW = 60.0
CAST_SUFFIX = ".cast"


def field(key: str, value: object) -> str:
    shown = visible(value)
    if len(shown) > MAX_VALUE:
        shown = shown[:MAX_VALUE] + ELLIPSIS
    return f"{key}={shown}"


def stamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def outcome_of(status: ExitStatus) -> str:
    if status.signal is not None:
        return f"killed by signal {status.signal}"
    if status.code is not None:
        return f"exit {status.code}"
    return f"lost: {status.reason}" if status.reason else "lost"


def write_whole(fd: int, data: bytes) -> None:
    """Append all of `data` or nothing: a short write (the disk filled up in the middle) is cut off again, so
    the file never holds half a line for the next one to be glued to."""
    size = os.fstat(fd).st_size
    written = os.write(fd, data)
    if written != len(data):
        os.ftruncate(fd, size)
        raise OSError(errno.ENOSPC, "short write")


def _open(path: str, flags: int, mode: int) -> int:
    """A descriptor of the regular file at `path`, never through a symlink; OSError otherwise."""
    fd = os.open(path, flags | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0), mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
    except OSError:
        os.close(fd)
        raise
    return fd


class OwnerLog:
    """The owner's log file and, with `transcripts`, its session transcripts."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS,
                 transcripts: bool = False, keep_transcripts: int = DEFAULT_KEEP_TRANSCRIPTS, mode: int = 0o600,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 1024:
            raise ValueError("local_log_max_bytes must be at least 1024")
        if backups < 0 or keep_transcripts < 0:
            raise ValueError("local_log_backups and local_transcripts_keep cannot be negative")
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.transcripts = transcripts
        self.keep_transcripts = keep_transcripts
        self.mode = mode
        self.clock = clock
        self._failing = False
        self._casts = 0
        self._refusal_window = 0.0
        self._refusals = 0
        self._unwritten_refusals = 0

    # -- failures ----------------------------------------------------------------------------------

    def failed(self, error: OSError) -> None:
        """Once per streak of failures: a line in twistd.log naming the error, nothing of what was written."""
        if not self._failing:
            self._failing = True
            name = errno.errorcode.get(error.errno or 0, "error")
            log.warn("slaveshell owner log: cannot write ({name}); events are dropped until it can", name=name)

    def _ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("slaveshell owner log: writing again")

    # -- the log -----------------------------------------------------------------------------------

    def line(self, kind: str, ident: str, event: str, fields: Iterable[str]) -> None:
        text = "\t".join([stamp(self.clock()), kind, visible(ident), event, *fields]) + "\n"
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > self.max_bytes:  # never one line longer than a whole log
            data = data[:self.max_bytes - 4].decode("utf-8", "ignore").encode("utf-8") + ELLIPSIS.encode() + b"\n"
        try:
            self._rotate_for(len(data))
            fd = _open(self.path, os.O_APPEND | os.O_CREAT, self.mode)
            try:
                write_whole(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            self.failed(e)
            return
        self._ok()

    def _rotate_for(self, nbytes: int) -> None:
        try:
            size = os.lstat(self.path).st_size
        except FileNotFoundError:
            return
        if size + nbytes <= self.max_bytes:
            return
        # rename moves names, never what a symlink points to.
        if self.backups == 0:
            os.unlink(self.path)
            return
        for n in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{n}"
            if os.path.lexists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")

    # -- sessions ----------------------------------------------------------------------------------

    def session_started(self, sid: str, request: OpenRequest, cwd: str, cast: str | None) -> None:
        fields = [field("operator", request.operator or "?"),
                  field("command", request.command) if request.command is not None else "command=(login shell)",
                  field("cwd", cwd), f"pty={'yes' if request.pty else 'no'}"]
        if request.build is not None:
            fields.append(f"build={request.build}")
        if cast is not None:
            fields.append(field("transcript", os.path.basename(cast)))
        self.line("session", sid, "started", fields)

    def session_ended(self, sid: str, request: OpenRequest, status: ExitStatus, seconds: float) -> None:
        self.line("session", sid, "ended", [field("operator", request.operator or "?"),
                                            field("outcome", outcome_of(status)), f"seconds={seconds:.1f}"])

    def _refusal_fields(self) -> list[str] | None:
        """None when this refusal is not to be written (over REFUSALS_PER_WINDOW); else the fields that count
        those that were not."""
        now = self.clock()
        if now - self._refusal_window >= REFUSAL_WINDOW:
            self._refusal_window, self._refusals = now, 0
        self._refusals += 1
        if self._refusals > REFUSALS_PER_WINDOW:
            self._unwritten_refusals += 1
            return None
        skipped, self._unwritten_refusals = self._unwritten_refusals, 0
        return [f"refusals_not_written={skipped}"] if skipped else []

    def session_refused(self, request: object, reason: str) -> None:
        extra = self._refusal_fields()
        if extra is None:
            return
        operator = getattr(request, "operator", None)
        command = getattr(request, "command", None)
        fields = [field("operator", operator or "?")]
        if isinstance(command, str):
            fields.append(field("command", command))
        self.line("session", "-", "refused", fields + [field("outcome", reason)] + extra)

    # -- transfers ---------------------------------------------------------------------------------

    def transfer_started(self, tid: str, operator: str | None, direction: str, sources: Sequence[str],
                         dest: str) -> None:
        towards = "to this worker" if direction == "up" else "from this worker"
        fields = [field("operator", operator or "?"), f"direction={towards}"]
        fields += [field("source", s) for s in sources[:MAX_PATHS]]
        if len(sources) > MAX_PATHS:
            fields.append(f"sources_not_shown={len(sources) - MAX_PATHS}")
        if dest:
            fields.append(field("dest", dest))
        self.line("transfer", tid, "started", fields)

    def transfer_ended(self, tid: str, operator: str | None, outcome: str, nbytes: int) -> None:
        self.line("transfer", tid, "ended", [field("operator", operator or "?"), field("outcome", outcome),
                                             f"bytes={nbytes}"])

    def transfer_refused(self, operator: str | None, reason: str) -> None:
        extra = self._refusal_fields()
        if extra is not None:
            self.line("transfer", "-", "refused", [field("operator", operator or "?"), field("outcome", reason)]
                      + extra)

    # -- transcripts -------------------------------------------------------------------------------

    def open_cast(self, sid: str, request: OpenRequest) -> LocalCast | None:
        """A new transcript file for session `sid`, or None (transcripts off, or it cannot be created)."""
        if not self.transcripts:
            return None
        now = self.clock()
        self._casts += 1
        name = f"{self.path}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{os.getpid()}-{self._casts}-{sid}"
        path = name + CAST_SUFFIX
        try:
            self._prune_casts()
            fd = _open(path, os.O_CREAT | os.O_EXCL, self.mode)
        except OSError as e:
            self.failed(e)
            return None
        cast = LocalCast(self, fd, path, now)
        cast.write([CastEncoder.header(request.cols, request.rows, now,
                                       title=f"{visible(request.operator or '?')} on this worker")])
        return cast

    def _prune_casts(self) -> None:
        folder, base = os.path.split(self.path)
        casts = sorted((entry for entry in os.scandir(folder or ".")
                        if entry.name.startswith(base + ".") and entry.name.endswith(CAST_SUFFIX)
                        and entry.is_file(follow_symlinks=False)),
                       key=lambda entry: entry.stat(follow_symlinks=False).st_mtime)
        for entry in casts[:max(0, len(casts) - self.keep_transcripts + 1)]:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass


class LocalCast:
    """One session's output as asciicast v2, at most the log's max_bytes; stops (with a marker) at the bound or at
    the first error."""

    def __init__(self, owner: OwnerLog, fd: int, path: str, start: float) -> None:
        self.owner = owner
        self.fd: int | None = fd
        self.path = path
        self.start = start
        self.written = 0
        self.encoder = CastEncoder(record_input=False)

    def write(self, lines: Sequence[str | bytes]) -> None:
        if self.fd is None or not lines:
            return
        data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")) + b"\n"
                        for line in lines)
        if self.written + len(data) > self.owner.max_bytes:
            data = CastEncoder().marker(self.owner.clock() - self.start, "transcript cut: size bound")[0]\
                .encode() + b"\n"
            self._put(data)
            self.close()
            return
        self._put(data)

    def _put(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            write_whole(self.fd, data)
            self.written += len(data)
        except OSError as e:
            self.owner.failed(e)
            if self.written:
                self.close()
            else:
                self.discard()  # not even its header: no file that no player could read

    def output(self, data: bytes) -> None:
        if self.fd is not None:
            self.write(self.encoder.output_encoded(self.owner.clock() - self.start, data))

    def end(self, status: ExitStatus) -> None:
        if self.fd is not None:
            t = self.owner.clock() - self.start
            self.write([*self.encoder.flush(t), *self.encoder.marker(t, visible(outcome_of(status)))])
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        """The session never started: no transcript."""
        self.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class RecordingSink:
    """A session's sink that also tells the owner's log: output into the transcript, the exit as the end line."""

    def __init__(self, inner: SessionSink, owner: OwnerLog, sid: str, request: OpenRequest,
                 cast: LocalCast | None) -> None:
        self.inner = inner
        self.owner = owner
        self.sid = sid
        self.request = request
        self.cast = cast
        self.start = owner.clock()
        self.ended = False

    def output(self, stream: int, data: bytes, acks: Sequence[tuple[int, bool]] = ()) -> None:
        self.inner.output(stream, data, acks)
        if self.cast is not None:
            self.cast.output(data)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.inner.input_ack(nbytes, hidden)

    def flushed(self) -> None:
        self.inner.flushed()

    def exit(self, status: ExitStatus) -> None:
        self.inner.exit(status)
        self.finish(status)

    def finish(self, status: ExitStatus) -> None:
        if self.ended:
            return
        self.ended = True
        if self.cast is not None:
            self.cast.end(status)
        self.owner.session_ended(self.sid, self.request, status, self.owner.clock() - self.start)
