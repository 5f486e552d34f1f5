"""The receiving end of a `slaveshell cp` transfer (the operator's client for a download, the worker for an
upload): `Receiver` takes only what was asked (copying.Asked) and stages it in a directory of its own next to its
destination (mode 0700), creating and opening every path relative to directory descriptors without following
symlinks below the destination the operator named; each file's fsync starts as it completes, and `commit`
waits for them and renames into place (an existing file the
operator named is written into, as scp does); `abort` removes whatever was staged, so a failure, a Ctrl-C or a
lost peer leaves nothing partial. Blocking file I/O, nothing from PB; errors are cpfiles.TransferError.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from slaveshell.files.sender import Check, TransferError, os_error
from slaveshell.vocabulary.copying import CHUNK, Asked, Entry, StreamOrder


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# Opening a directory of a received tree: never through a symlink.
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID = stat.S_ISUID | stat.S_ISGID


def received_mode(mode: int, preserve: bool, umask: int) -> int:
    """The mode a received file or directory gets: never set-uid or set-gid (as scp without root and GNU cp
    without --preserve=all); with -p the sender's otherwise, else its permission bits less the umask."""
    mode &= 0o7777 & ~_SETID
    return mode if preserve else mode & 0o777 & ~umask


class _Dirs:
    """Directories below `root` (a descriptor) opened component by component, never through a symlink. Only the
    last one opened stays open (a stream comes depth first: its next entries are in it or below it), so a deep
    tree holds one descriptor; `close` closes it, never `root`."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._path = ""
        self._fd: int | None = None

    def open(self, rel: str) -> int:
        """The descriptor of `rel` ("/"-separated, "" for the root); valid until the next call."""
        if self._fd is not None and rel == self._path:
            return self._fd
        if self._fd is not None and rel.startswith(self._path + "/"):
            at, rest = self._fd, rel[len(self._path) + 1:]
        else:
            self.close()
            at, rest = self.root, rel
        self._fd = None
        try:
            for part in rest.split("/") if rest else []:
                below = os.open(part, _DIR, dir_fd=at)
                if at != self.root:
                    os.close(at)
                at = below
        except OSError:
            if at != self.root:
                os.close(at)
            raise
        if at != self.root:
            self._fd, self._path = at, rel
        return at

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@dataclass
class _Top:
    name: str  # its name in the destination directory
    kind: str
    in_place: bool = False  # an existing file the operator named: written into (as scp), not replaced


class Receiver:
    """Writes a stream into `dest`: into it when it is a directory, else as it (one top-level entry only).

    `dest` is the destination the operator named: it is followed when it is a symlink, as scp does, and an
    existing file there is written into (its inode and mode kept). Nothing below it is ever followed: every path
    of the received tree is created and opened relative to directory descriptors with O_NOFOLLOW, a staged
    directory `.slaveshell-cp-*` (mode 0700) holds the tree until the commit, and what exists in the destination
    is replaced by rename (a symlink is replaced, not written through). `asked` (the request's `Asked`) refuses
    what was not asked for; modes never keep set-uid or set-gid. `check(real_dir)` (the worker's allowed
    directories) is asked of the directory written into. Every method raises TransferError (or ProtocolError
    from the stream's checks), naming paths under `shown`, the destination as the operator gave it (default:
    `dest`; the worker's is relative to its basedir, and the operator is not told where that is); the caller then
    calls `abort`."""

    def __init__(self, dest: str, preserve: bool, check: Check | None = None,
                 on_bytes: Callable[[int], None] | None = None, asked: Asked | None = None,
                 shown: str | None = None) -> None:
        self.dest = dest
        self.shown = dest if shown is None else shown
        self.preserve = preserve
        self.check = check
        self.on_bytes = on_bytes
        self.asked = asked
        self.order = StreamOrder()
        # The named destination is opened by the kernel, following symlinks as scp does (and as the kernel's
        # protected_symlinks allows), never resolved here.
        self.into = os.path.isdir(dest)
        if dest.endswith("/") and not self.into:
            raise TransferError(f"{self.shown}: not a directory" if os.path.lexists(dest.rstrip("/")) else
                                f"{self.shown}: No such file or directory")
        parent = dest if self.into else os.path.dirname(os.path.abspath(dest))
        self.final_name = None if self.into else os.path.basename(os.path.abspath(dest))
        self.target_fd: int | None = None  # an existing file the operator named: written into at the commit
        try:
            self.parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise os_error(self.shown, e) from None
        try:
            if check is not None:
                check(_opened_path(self.parent_fd, parent))
            if self.final_name is not None:
                self.target_fd = self._named_file(self.final_name, check)
        except TransferError:
            self._close_named()
            raise
        self.stage_name = f".slaveshell-cp-{secrets.token_hex(6)}"
        self.stage_fd: int | None = None
        self._dirs: _Dirs | None = None
        self.tops: dict[str, _Top] = {}
        self.received_dirs: set[str] = set()
        self.staged: list[Entry] = []  # files and directories, as they came
        self._fd: int | None = None
        self._written_back = 0  # bytes of the current file whose writeback was started (WRITEBACK)
        self._staged_only = False  # the current file is read back into the file the operator named (`entry`)
        self._umask = _umask()
        self.bytes = 0
        self.files: list[tuple[Entry, str]] = []  # each file received, with the master's sha256
        self._syncs = _Syncs(self._shown)  # each received file's fsync, started as it completes
        # Small files (SYNC_LATER), closed as they complete, synced once created (`_sync_later`).
        self._later: list[tuple[str, int, float | None]] = []  # path, mode, mtime to set once synced

    def _named_file(self, name: str, check: Check | None) -> int | None:
        """The existing file the operator named, opened for writing in place (following a symlink there, as scp
        does); None when there is none. A dangling symlink is not written through (GNU cp); a device, a FIFO or
        a socket is neither written nor replaced."""
        existing = self._lstat(name)
        if existing is None or stat.S_ISDIR(existing.st_mode):
            return None
        if stat.S_ISLNK(existing.st_mode):
            try:
                existing = os.stat(name, dir_fd=self.parent_fd)
            except FileNotFoundError:
                raise TransferError(f"{self.shown}: not writing through dangling symlink") from None
            except OSError as e:
                raise os_error(self.shown, e) from None
            if stat.S_ISDIR(existing.st_mode):
                return None  # became a directory since: the entry's kind decides (_top)
        if not stat.S_ISREG(existing.st_mode):
            raise TransferError(f"{self.shown}: not a regular file")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=self.parent_fd)
        except OSError as e:
            raise os_error(self.shown, e) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TransferError(f"{self.shown}: not a regular file")
            if check is not None:
                check(_opened_path(fd, self.dest))
        except TransferError:
            os.close(fd)
            raise
        return fd

    def _close_named(self) -> None:
        for fd in (self.target_fd, self.parent_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.target_fd, self.parent_fd = None, -1

    def _shown(self, path: str) -> str:
        """A received path as the operator knows it: under the destination as they named it."""
        top, _, rest = path.partition("/")
        base = self.shown if not self.into else os.path.join(self.shown, top)
        return os.path.join(base, rest) if rest else base

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(self._shown(name), e) from None

    def _top(self, entry: Entry) -> None:
        name = entry.path
        if self.tops and not self.into:
            raise TransferError(f"{self.shown}: target is not a directory")
        final = name if self.into else str(self.final_name)
        existing = self._lstat(final)
        shown = self._shown(name)
        if existing is not None and stat.S_ISDIR(existing.st_mode) and entry.kind == "file":
            raise TransferError(f"{shown}: is a directory")
        if existing is not None and not stat.S_ISDIR(existing.st_mode) and entry.kind == "dir":
            raise TransferError(f"{shown}: cannot overwrite non-directory with directory")
        self.tops[name] = _Top(final, entry.kind, self.target_fd is not None)

    def _stage(self) -> _Dirs:
        if self._dirs is None:
            try:
                os.mkdir(self.stage_name, 0o700, dir_fd=self.parent_fd)
            except OSError as e:
                raise os_error(self.shown, e) from None
            try:
                self.stage_fd = os.open(self.stage_name, _DIR, dir_fd=self.parent_fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.rmdir(self.stage_name, dir_fd=self.parent_fd)
                raise os_error(self.shown, e) from None
            self._dirs = _Dirs(self.stage_fd)
        return self._dirs

    def entry(self, entry: Entry) -> None:
        self.order.entry(entry)
        if self.asked is not None:
            self.asked.entry(entry)
        parent, _, name = entry.path.rpartition("/")
        if not parent:
            if entry.path in self.tops:
                raise TransferError(f"{entry.path}: sent twice")
            self._top(entry)
        elif parent not in self.received_dirs:
            raise TransferError(f"{entry.path}: its directory was not sent first")
        dirs = self._stage()
        try:
            at = dirs.open(parent)
            if entry.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=at)
                self.received_dirs.add(entry.path)
                if not self.preserve:  # its mode now; it stays writable by its owner (-p: after the commit)
                    os.fchmod(dirs.open(entry.path), received_mode(entry.mode, False, self._umask) | 0o700)
            else:
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600,
                                   dir_fd=at)
                self._written_back = 0
                # A staged copy that the commit reads back into the file the operator named stays in memory: not
                # written back as it arrives (that would drop its pages, for the commit to read from the disk).
                self._staged_only = not parent and self.tops[entry.path].in_place
        except FileExistsError:
            raise TransferError(f"{self._shown(entry.path)}: sent twice") from None
        except OSError as e:
            raise os_error(self._shown(entry.path), e) from None
        self.staged.append(entry)

    def data(self, chunk: bytes | memoryview) -> None:
        entry = self.order.data(chunk)
        assert self._fd is not None
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            raise os_error(self._shown(entry.path), e) from None
        self.bytes += len(chunk)
        if self.order.received - self._written_back >= WRITEBACK and not self._staged_only:
            _start_writeback(self._fd, self._written_back, self.order.received - self._written_back)
            self._written_back = self.order.received
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))

    def done_file(self, sha256: str) -> None:
        """The current file is complete; `sha256` is the master's hash of the bytes it relayed (the audit
        record's). Not hashed again here: the bytes came over a reliable socket from the master that hashed them.
        Its fsync starts now, then its mode (and times, with -p) are set on the same descriptor (`_Syncs`). The
        staged copy of a file written in place is closed as it is (0600, not synced): the commit reads it back
        into the file the operator named, syncs that one and removes the copy."""
        entry = self.order.done_file()
        fd, self._fd = self._fd, None
        if fd is not None:
            parent, _, _name = entry.path.rpartition("/")
            if not parent and self.tops[entry.path].in_place:
                try:
                    os.close(fd)
                except OSError as e:
                    raise os_error(self._shown(entry.path), e) from None
            elif entry.size < SYNC_LATER:
                try:
                    os.close(fd)
                except OSError as e:
                    raise os_error(self._shown(entry.path), e) from None
                self._later.append((entry.path, received_mode(entry.mode, self.preserve, self._umask),
                                    entry.mtime if self.preserve else None))
                if len(self._later) >= SYNC_BATCH:
                    self._sync_later(self._stage())
            else:
                self._syncs.add((fd, received_mode(entry.mode, self.preserve, self._umask),
                                 entry.mtime if self.preserve else None), entry.path)
        self.files.append((entry, sha256))

    def commit(self) -> None:
        """After finish: the files' fsyncs waited for, renames into place (an existing file the operator named
        is written into), the directories' modes and times with -p, fsync of the directories. Blocking (the
        worker runs it in a thread)."""
        self.order.finish()
        dirs = self._stage() if self.staged else None
        if dirs is not None:
            self._sync_later(dirs)
            dirs.close()
            self._syncs.wait()
            for name, top in self.tops.items():
                if top.kind == "dir":
                    self._merge_checked(name, top)
            for name, top in self.tops.items():
                self._put(name, top)
            if self.preserve:
                self._dir_modes()
            _fsync_fd(self.parent_fd)
        self._clean()

    def _sync_later(self, dirs: _Dirs) -> None:
        """The small files, reopened in the staged tree (ours, 0700; never through a symlink) in the order they
        came, each synced then given its mode (and times) by `_Syncs` as a large file is at its done_file. At the
        commit, and every SYNC_BATCH files before it (what the commit has left to sync, and what is kept for it,
        stays bounded however large the tree)."""
        later, self._later = self._later, []
        for path, mode, mtime in later:
            parent, _, name = path.rpartition("/")
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirs.open(parent))
            except OSError as e:
                raise os_error(self._shown(path), e) from None
            self._syncs.add((fd, mode, mtime), path)

    def _merge_checked(self, name: str, top: _Top) -> None:
        """A directory going into an existing one: every clash found before anything is moved."""
        existing = self._lstat(top.name)
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            return
        assert self.stage_fd is not None
        src = os.open(name, _DIR, dir_fd=self.stage_fd)
        try:
            dst = os.open(top.name, _DIR, dir_fd=self.parent_fd)
        except OSError as e:
            os.close(src)
            raise os_error(self._shown(name), e) from None
        try:
            _merge(src, dst, self._shown(name), move=False)
        finally:
            os.close(src)
            os.close(dst)

    def _put(self, name: str, top: _Top) -> None:
        assert self.stage_fd is not None
        shown = self._shown(name)
        try:
            if top.in_place:
                self._write_in_place(name, top)
                return
            existing = self._lstat(top.name)
            if top.kind == "dir" and existing is not None and stat.S_ISDIR(existing.st_mode):
                src = os.open(name, _DIR, dir_fd=self.stage_fd)
                try:
                    dst = os.open(top.name, _DIR, dir_fd=self.parent_fd)
                    try:
                        _merge(src, dst, shown, move=True)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
                return
            # rename(2) never follows: a symlink there is replaced, a directory onto a non-directory refused.
            os.rename(name, top.name, src_dir_fd=self.stage_fd, dst_dir_fd=self.parent_fd)
        except NotADirectoryError:
            raise TransferError(f"{shown}: cannot overwrite non-directory with directory") from None
        except IsADirectoryError:
            raise TransferError(f"{shown}: is a directory") from None
        except OSError as e:
            raise os_error(shown, e) from None

    def _write_in_place(self, name: str, top: _Top) -> None:
        """The existing file the operator named gets the staged bytes written into it (its inode, links and
        mode kept, as scp does; with -p its mode and times set as the sender's)."""
        assert self.stage_fd is not None
        entry = next(e for e in self.staged if e.path == name)
        dst = self.target_fd
        assert dst is not None
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.stage_fd)
        try:
            _copy(src, dst, entry.size)
            os.ftruncate(dst, entry.size)
            if self.preserve:
                os.fchmod(dst, received_mode(entry.mode, True, self._umask))
                os.utime(dst, (entry.mtime, entry.mtime))
            os.fsync(dst)
        finally:
            os.close(src)

    def _dir_modes(self) -> None:
        """With -p, each received directory's mode and times once nothing more is written into it (a 0500
        directory), deepest first, opened from the destination without following symlinks."""
        dirs = _Dirs(self.parent_fd)
        try:
            for entry in reversed(self.staged):
                if entry.kind != "dir":
                    continue
                top, _, rest = entry.path.partition("/")
                final = self.tops[top].name + (f"/{rest}" if rest else "")
                try:
                    fd = dirs.open(final)
                    os.fchmod(fd, received_mode(entry.mode, True, self._umask))
                    os.utime(fd, (entry.mtime, entry.mtime))
                except OSError:
                    pass
        finally:
            dirs.close()

    def _clean(self) -> None:
        """Close what is open and remove the staged directory with what is left in it (never raises); the
        receiver takes nothing more."""
        self._syncs.drop()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._dirs is not None:
            with contextlib.suppress(OSError):
                self._dirs.close()
            self._dirs = None
        if self.stage_fd is not None:
            with contextlib.suppress(OSError):
                _empty(self.stage_fd)
            with contextlib.suppress(OSError):
                os.close(self.stage_fd)
            self.stage_fd = None
            with contextlib.suppress(OSError):
                os.rmdir(self.stage_name, dir_fd=self.parent_fd)
        self.tops.clear()
        self.staged.clear()
        self._close_named()

    def abort(self) -> None:
        """Remove everything staged (idempotent, never raises); the receiver is done."""
        self._clean()


def _opened_path(fd: int, fallback: str) -> str:
    """The real path of an opened directory (what was opened, not what its name says now)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def _merge(src: int, dst: int, shown: str, move: bool) -> None:
    """A staged directory into an existing one, by descriptors: a directory into a directory, each file renamed
    over what is there (a symlink replaced, never followed). Without `move`, only the clashes are looked for."""
    for name in sorted(os.listdir(src)):
        here = f"{shown}/{name}"
        theirs = None
        with contextlib.suppress(FileNotFoundError):
            theirs = os.stat(name, dir_fd=dst, follow_symlinks=False)
        mine = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(mine.st_mode):
            if theirs is not None and not stat.S_ISDIR(theirs.st_mode):
                raise TransferError(f"{here}: cannot overwrite non-directory with directory")
            if theirs is not None:
                sub_src = os.open(name, _DIR, dir_fd=src)
                try:
                    sub_dst = os.open(name, _DIR, dir_fd=dst)
                    try:
                        _merge(sub_src, sub_dst, here, move)
                    finally:
                        os.close(sub_dst)
                finally:
                    os.close(sub_src)
                continue
        elif theirs is not None and stat.S_ISDIR(theirs.st_mode):
            raise TransferError(f"{here}: is a directory")
        if move:
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
    if move:
        _fsync_fd(dst)


def _empty(fd: int) -> None:
    """Remove everything inside the directory `fd` (never following symlinks)."""
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _DIR, dir_fd=fd)
            try:
                os.fchmod(sub, 0o700)
                _empty(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def _copy(src: int, dst: int, size: int) -> None:
    """`size` bytes from the start of `src` to the start of `dst`, WRITEBACK at a time: the writeback of each
    piece of `dst` starts as the next is copied (the fsync after it then finds most of it on disk already)."""
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, min(WRITEBACK, size - offset), offset, offset)
            if n <= 0:
                break
            _start_writeback(dst, offset, n)
            offset += n
    except OSError:
        pass
    while offset < size:
        chunk = os.pread(src, min(CHUNK, size - offset), offset)
        if not chunk:
            raise TransferError("the staged file shrank")
        view = memoryview(chunk)
        at = offset
        while view:
            n = os.pwrite(dst, view, at)
            view, at = view[n:], at + n
        offset += len(chunk)


# A large file's writeback is started every WRITEBACK bytes as it arrives (not waited for), so that the fsync
# before the renames finds most of it on disk already: 512 MB written then fsynced on this machine, 0.24 s of
# fsync against 0.10 s (and the same write time). Small files are left alone: the advice cost their writes more
# (0.1 ms a file) than it saved their fsyncs.
WRITEBACK = 8 * 1024 * 1024


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the range back to disk without waiting (Linux: POSIX_FADV_DONTNEED starts the writeback of
    its dirty pages, then drops the pages already clean). Durability still comes from the fsync at the commit."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):  # not supported here: the fsync does all of it
        pass


# A received file smaller than this is closed as it completes and synced at the commit, once every file is
# created (`Receiver._sync_later`), not as it completes: an fsync then writes the inode table's block that the
# next files' creation writes too, and each creation waited for it (this machine's ext4, no journal). 10,000
# files of 1 KiB, A/B alternated beside other work (load 4-6.5): up 5.96 -> 4.31 s and the worker's CPU 3.25 ->
# 2.40 s; down 4.81 -> 4.53 s and the client's CPU 2.06 -> 1.26 s (none synced at all: 3.11 s up).
SYNC_LATER = CHUNK
# Small files waiting to be synced, at most: past it they are synced before the next file is taken (the
# stream waits, as it would for their creations), so that a commit never has more than this many left: a
# worker's commit must end within the master's stall timeout (master_side.copying.relay: 60 s), and 4096
# fsyncs take about half a second here.
SYNC_BATCH = 4096

# fsyncs at once: a filesystem commits concurrent fsyncs together (ext4's journal), so a tree of small files is
# made durable faster than one file after another (1000 files of 1 KiB on this machine's ext4: 0.3 s -> 0.12-0.22 s
# with the disk idle, 2.4 s -> 0.33 s while other tests used it).
FSYNC_THREADS = 8


def _fsync_opened(opened: tuple[int, int | None, float | None]) -> None:
    """fsync an opened file, then set its mode and times when given; it is closed."""
    fd, mode, mtime = opened
    try:
        os.fsync(fd)
        if mode is not None:
            os.fchmod(fd, mode)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


class _Syncs:
    """The received files' fsyncs (then their modes and times), each started as its file completes, so that
    the disk works while the next files arrive and the commit waits only for the last ones. The first file is
    held (no thread for a copy of one file); from the second on, FSYNC_THREADS run at once and at most
    FSYNC_THREADS * 4 files are open here (`add` then waits for the oldest). `wait` gives the first failure as a
    TransferError naming the file as shown (`shown(path)`, asked only then); `drop` (an abort) lets nothing more
    start and closes every file."""

    def __init__(self, shown: Callable[[str], str]) -> None:
        self._shown = shown
        self._held: tuple[tuple[int, int | None, float | None], str] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: collections.deque[tuple[Future[None], int, str]] = collections.deque()

    def add(self, opened: tuple[int, int | None, float | None], path: str) -> None:
        """The file `path` (as received) opened, to be synced then closed."""
        if self._pool is None:
            if self._held is None:
                self._held = (opened, path)
                return
            self._pool = ThreadPoolExecutor(max_workers=FSYNC_THREADS, thread_name_prefix="slaveshell-fsync")
            held, self._held = self._held, None
            self._submit(*held)
        if len(self._pending) >= FSYNC_THREADS * 4:
            self._wait_oldest()
        self._submit(opened, path)

    def _submit(self, opened: tuple[int, int | None, float | None], path: str) -> None:
        assert self._pool is not None
        try:
            future = self._pool.submit(_fsync_opened, opened)
        except RuntimeError:  # no thread can start: this one does it
            future = Future()
            try:
                _fsync_opened(opened)
                future.set_result(None)
            except OSError as e:
                future.set_exception(e)
        self._pending.append((future, opened[0], path))

    def _wait_oldest(self) -> None:
        future, _fd, path = self._pending.popleft()
        try:
            future.result()
        except OSError as e:
            raise os_error(self._shown(path), e) from None

    def wait(self) -> None:
        """Every file's fsync done (the held one's here); the first failure raised."""
        if self._held is not None:
            (opened, path), self._held = self._held, None
            try:
                _fsync_opened(opened)
            except OSError as e:
                raise os_error(self._shown(path), e) from None
        while self._pending:
            self._wait_oldest()
        self._shutdown()

    def drop(self) -> None:
        """Nothing more starts; the files not begun are closed here, the others by their threads (waited for).
        Never raises."""
        if self._held is not None:
            (opened, _path), self._held = self._held, None
            with contextlib.suppress(OSError):
                os.close(opened[0])
        while self._pending:
            future, fd, _path = self._pending.popleft()
            if future.cancel():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._shutdown()

    def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _fsync_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass
