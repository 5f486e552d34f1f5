"""A transfer's files on one machine (the operator's or the worker's): what a sender reads and what a receiver
writes, for `slaveshell cp` (wire vocabulary: slaveshell.cpwire). Blocking file I/O, nothing from PB.

`plan` lists a sender's entries (walking trees with -r, following symlinks as scp does, each path checked by the
caller's `check`); `Sender` turns them into messages while credit allows; `Receiver` stages what arrives next
to its destination (a temporary file or directory in the same directory, mode 0600/0700) and `commit` fsyncs,
applies the modes (and times with -p) and renames into place; `abort` removes whatever was staged, so a failure,
a Ctrl-C or a lost peer leaves nothing partial. Errors are `TransferError`, one line for the operator.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .cpwire import CHUNK, ENTRY_COST, NO_CLAIM, WINDOW, Credit, Entry, StreamOrder

Check = Callable[[str], None]  # raises TransferError when a real path is not allowed
Send = Callable[..., None]  # send(method, *args): one answer-less wire call


class TransferError(Exception):
    """A transfer cannot go on; the message is one line for the operator (as scp prints them)."""


def _os_error(path: str, error: OSError) -> TransferError:
    return TransferError(f"{path}: {error.strerror or error}")


@dataclass(frozen=True)
class Planned:
    entry: Entry
    local: str  # the file or directory to read


def plan(sources: list[str], recursive: bool, check: Check | None = None, base: str | None = None,
         max_entries: int = 1_000_000) -> list[Planned]:
    """The entries of `sources` (relative ones under `base`), each named by its base name at the top.
    Directories need `recursive`. Raises TransferError."""
    out: list[Planned] = []
    tops: set[str] = set()
    for source in sources:
        path = os.path.join(base, source) if base and not os.path.isabs(source) else source
        name = os.path.basename(os.path.normpath(path))
        if name in ("", ".", ".."):
            name = os.path.basename(os.path.realpath(path))
        if name in tops:
            raise TransferError(f"{source}: two sources have the same name {name}")
        tops.add(name)
        _walk(path, name, recursive, check, out, set(), max_entries)
    return out


def _walk(path: str, rel: str, recursive: bool, check: Check | None, out: list[Planned], seen: set[str],
          max_entries: int) -> None:
    real = os.path.realpath(path)
    if check is not None:
        check(real)
    try:
        st = os.stat(real)
    except OSError as e:
        raise _os_error(path, e) from None
    if len(out) >= max_entries:
        raise TransferError(f"more than {max_entries} entries")
    if stat.S_ISREG(st.st_mode):
        out.append(Planned(Entry("file", rel, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime), real))
        return
    if not stat.S_ISDIR(st.st_mode):
        raise TransferError(f"{path}: not a regular file")
    if not recursive:
        raise TransferError(f"{path}: is a directory (use -r)")
    if real in seen:
        raise TransferError(f"{path}: a symlink loop")
    out.append(Planned(Entry("dir", rel, stat.S_IMODE(st.st_mode), 0, st.st_mtime), real))
    try:
        names = sorted(os.listdir(real))
    except OSError as e:
        raise _os_error(path, e) from None
    for name in names:
        _walk(os.path.join(real, name), f"{rel}/{name}", recursive, check, out, seen | {real}, max_entries)


class Sender:
    """Sends planned entries through `send` while credit allows; `ack(n)` returns credit and sends more.
    `on_bytes(n)` counts data sent (progress). A read error raises TransferError from `pump`/`ack`. With
    `claim`, each done_file carries the file's sha256 as read; without, NO_CLAIM (the master hashes: cpwire)."""

    def __init__(self, planned: list[Planned], send: Send, on_bytes: Callable[[int], None] | None = None,
                 window: int = WINDOW, claim: bool = True) -> None:
        self.send = send
        self.claim = claim  # read as each file starts
        self.credit = Credit(window)
        self.on_bytes = on_bytes
        self.total = sum(p.entry.size for p in planned)
        self.sent = 0  # bytes of data sent so far
        self.done = False
        self._messages = self._generate(planned)
        self._next: tuple[str, tuple[object, ...], int] | None = None

    def ack(self, n: object) -> None:
        self.credit.ack(n)
        self.pump()

    def pump(self) -> None:
        while not self.done:
            if self._next is None:
                self._next = next(self._messages)
            method, args, cost = self._next
            if cost > self.credit.available:
                return
            self._next = None
            self.credit.spend(cost)
            self.send(method, *args)
            if method == "data":
                self.sent += cost
                if self.on_bytes is not None:
                    self.on_bytes(cost)
            if method == "finish":
                self.done = True

    def close(self) -> None:
        """Stop: the file being read is closed (idempotent)."""
        self.done = True
        self._messages.close()

    def _generate(self, planned: list[Planned]) -> Generator[tuple[str, tuple[object, ...], int], None, None]:
        for item in planned:
            entry = item.entry
            yield "entry", entry.to_wire(), ENTRY_COST
            if entry.kind != "file":
                continue
            sha = hashlib.sha256() if self.claim else None
            left = entry.size
            try:
                with open(item.local, "rb") as f:
                    while left > 0:
                        chunk = f.read(min(CHUNK, left))
                        if not chunk:
                            raise TransferError(f"{item.local}: the file shrank while it was read")
                        if sha is not None:
                            sha.update(chunk)
                        left -= len(chunk)
                        yield "data", (chunk,), len(chunk)
            except OSError as e:
                raise _os_error(item.local, e) from None
            yield "done_file", (sha.hexdigest() if sha is not None else NO_CLAIM,), ENTRY_COST
        yield "finish", (), 0


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@dataclass
class _Top:
    final: str  # where it goes
    stage: str  # where it is written until the commit
    kind: str


class Receiver:
    """Writes a stream into `dest`: into it when it is a directory, else as it (one top-level entry only).
    `check(real_dir)` (the worker's allowed directories) is asked of every directory written into. Every
    method raises TransferError (or ProtocolError from the stream's checks); the caller then calls `abort`."""

    def __init__(self, dest: str, preserve: bool, check: Check | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.dest = dest
        self.preserve = preserve
        self.check = check
        self.on_bytes = on_bytes
        self.order = StreamOrder()
        self.into = os.path.isdir(dest)
        parent = dest if self.into else os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise TransferError(f"{dest}: No such file or directory")
        if check is not None:
            check(os.path.realpath(parent))
        self.tops: dict[str, _Top] = {}
        self.staged: list[tuple[str, Entry]] = []  # staged path, entry (files and directories)
        self._fd: int | None = None
        self._written_back = 0  # bytes of the current file whose writeback was started (WRITEBACK)
        self._umask = _umask()
        self.bytes = 0
        self.files: list[tuple[Entry, str]] = []  # each file received, with the master's sha256

    def _top(self, entry: Entry) -> _Top:
        name, _, rest = entry.path.partition("/")
        top = self.tops.get(name)
        if top is not None:
            if not rest:
                raise TransferError(f"{name}: sent twice")
            return top
        if rest:
            raise TransferError(f"{entry.path}: its directory was not sent first")
        if self.tops and not self.into:
            raise TransferError(f"{self.dest}: target is not a directory")
        final = os.path.join(self.dest, name) if self.into else self.dest
        if os.path.isdir(final) and entry.kind == "file":
            raise TransferError(f"{final}: is a directory")
        if os.path.lexists(final) and not os.path.isdir(final) and entry.kind == "dir":
            raise TransferError(f"{final}: not a directory")
        stage = os.path.join(os.path.dirname(final),
                             f".slaveshell-cp-{secrets.token_hex(4)}-{os.path.basename(final)}"[:255])
        top = _Top(final, stage, entry.kind)
        self.tops[name] = top
        return top

    def entry(self, entry: Entry) -> None:
        self.order.entry(entry)
        top = self._top(entry)
        rest = entry.path.partition("/")[2]
        path = os.path.join(top.stage, rest) if rest else top.stage
        try:
            if entry.kind == "dir":
                os.mkdir(path, 0o700)
            else:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                self._written_back = 0
        except OSError as e:
            raise _os_error(os.path.join(top.final, rest) if rest else top.final, e) from None
        self.staged.append((path, entry))

    def data(self, chunk: bytes) -> None:
        entry = self.order.data(chunk)
        assert self._fd is not None
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            raise _os_error(entry.path, e) from None
        self.bytes += len(chunk)
        if self.order.received - self._written_back >= WRITEBACK:
            _start_writeback(self._fd, self._written_back, self.order.received - self._written_back)
            self._written_back = self.order.received
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))

    def done_file(self, sha256: str) -> None:
        """The current file is complete; `sha256` is the master's hash of the bytes it relayed (the audit
        record's). Not hashed again here: the bytes came over a reliable socket from the master that hashed them."""
        entry = self.order.done_file()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.files.append((entry, sha256))

    def commit(self) -> None:
        """After finish: fsync, modes, times, renames into place, fsync of the directories. Blocking (the
        worker runs it in a thread)."""
        self.order.finish()
        _fsync_files([(path, entry.path) for path, entry in self.staged if entry.kind == "file"])
        dirs: set[str] = set()
        for path, entry in reversed(self.staged):  # children before their directory (its mode may forbid)
            try:
                mode = entry.mode if self.preserve else entry.mode & 0o777 & ~self._umask
                os.chmod(path, mode | (0o700 if entry.kind == "dir" else 0))
                if self.preserve:
                    os.utime(path, (entry.mtime, entry.mtime))
            except OSError as e:
                raise _os_error(entry.path, e) from None
        for top in self.tops.values():
            parent = os.path.dirname(top.final)
            if self.check is not None:
                self.check(os.path.realpath(parent))
            try:
                if top.kind == "dir" and os.path.isdir(top.final):
                    self._merge(top.stage, top.final, dirs)
                else:
                    os.replace(top.stage, top.final)
            except OSError as e:
                raise _os_error(top.final, e) from None
            dirs.add(parent)
        # With -p, the directories' own modes once nothing more is written into them (a 0500 directory);
        # without, a copied directory stays writable by its owner.
        if self.preserve:
            for top in self.tops.values():
                self._dir_modes(top)
        for d in dirs:
            _fsync_dir(d)
        self.tops.clear()
        self.staged.clear()

    def _dir_modes(self, top: _Top) -> None:
        for path, entry in self.staged:
            if entry.kind == "dir" and path.startswith(top.stage):
                final = top.final + path[len(top.stage):]
                try:
                    os.chmod(final, entry.mode)
                    os.utime(final, (entry.mtime, entry.mtime))
                except OSError:
                    pass

    def _merge(self, stage: str, final: str, dirs: set[str]) -> None:
        """A staged directory into an existing one: each file renamed over its target (each one atomic)."""
        for name in sorted(os.listdir(stage)):
            src, dst = os.path.join(stage, name), os.path.join(final, name)
            if self.check is not None:
                self.check(os.path.realpath(final))
            if os.path.isdir(src) and not os.path.islink(src):
                if os.path.islink(dst) or (os.path.lexists(dst) and not os.path.isdir(dst)):
                    raise TransferError(f"{dst}: not a directory")
                if os.path.isdir(dst):
                    self._merge(src, dst, dirs)
                    continue
            elif os.path.isdir(dst) and not os.path.islink(dst):
                raise TransferError(f"{dst}: is a directory")
            os.replace(src, dst)
            dirs.add(final)
        os.rmdir(stage)

    def abort(self) -> None:
        """Remove everything staged (idempotent, never raises)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        for top in self.tops.values():
            try:
                if os.path.isdir(top.stage) and not os.path.islink(top.stage):
                    shutil.rmtree(top.stage, ignore_errors=True)
                elif os.path.lexists(top.stage):
                    os.unlink(top.stage)
            except OSError:
                pass
        self.tops.clear()
        self.staged.clear()


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


# fsyncs at once: a filesystem commits concurrent fsyncs together (ext4's journal), so a tree of small files is
# made durable faster than one file after another (1000 files of 1 KiB on this machine's ext4: 0.3 s -> 0.12-0.22 s
# with the disk idle, 2.4 s -> 0.33 s while other tests used it).
FSYNC_THREADS = 8


def _fsync_one(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(files: list[tuple[str, str]]) -> None:
    """fsync each staged file (staged path, path as sent), FSYNC_THREADS at once; the first failure as a
    TransferError naming the file as sent."""
    if len(files) <= 1:
        for path, shown in files:
            try:
                _fsync_one(path)
            except OSError as e:
                raise _os_error(shown, e) from None
        return
    with ThreadPoolExecutor(max_workers=FSYNC_THREADS, thread_name_prefix="slaveshell-fsync") as pool:
        futures = [(pool.submit(_fsync_one, path), shown) for path, shown in files]
        for future, shown in futures:
            try:
                future.result()
            except OSError as e:
                raise _os_error(shown, e) from None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
