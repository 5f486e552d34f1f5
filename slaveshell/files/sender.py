"""A transfer's files on the sending machine (the operator's or the worker's), for `slaveshell cp` (wire
vocabulary: slaveshell.vocabulary.copying; the receiving end: slaveshell.files.receiver). Blocking file I/O, nothing
from PB.

`plan` lists a sender's entries (walking trees with -r, following symlinks as scp does, each path checked by the
caller's `check`); `Sender` turns them into events (slaveshell.vocabulary.copying) while credit allows. Errors of both
ends are `TransferError`, one line for the operator that names a path as the operator gave it (a source, and the
names below it), never where it resolves (the worker's basedir, a symlink's target), as scp and GNU cp do.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Generator
from dataclasses import dataclass

from slaveshell.vocabulary.copying import (
    CHUNK,
    ENTRY_COST,
    MAX_ENTRIES,
    NO_CLAIM,
    WINDOW,
    Credit,
    Data,
    DoneFile,
    Entry,
    Finish,
    TransferEvent,
)

Check = Callable[[str], None]  # raises TransferError when a real path is not allowed
Send = Callable[[TransferEvent], None]  # one answer-less event to the master (slaveshell.vocabulary.copying)


class TransferError(Exception):
    """A transfer cannot go on; the message is one line for the operator (as scp prints them)."""


def os_error(path: str, error: OSError) -> TransferError:
    return TransferError(f"{path}: {error.strerror or error}")


@dataclass(frozen=True)
class Planned:
    entry: Entry
    local: str  # the file or directory to read
    shown: str = ""  # its path as the operator knows it (their source, then the names below it); "": `local`

    @property
    def named(self) -> str:
        return self.shown or self.local


def plan(sources: list[str], recursive: bool, check: Check | None = None, base: str | None = None,
         max_entries: int = MAX_ENTRIES) -> list[Planned]:
    """The entries of `sources` (relative ones under `base`), each named by its base name at the top.
    Directories need `recursive`. Raises TransferError, naming the path as given (a source, and below it)."""
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
        _walk(path, source, name, recursive, check, out, set(), max_entries)
    return out


def _resolved(path: str, in_real_dir: bool) -> tuple[str, os.stat_result | None]:
    """What `path` resolves to (symlinks followed, as os.path.realpath), and its stat when already known. A name
    read from a directory whose real path it is joined to (`in_real_dir`) resolves to itself unless it is a
    symlink: one lstat, not one per component of the path (a tree's thousands of entries)."""
    if in_real_dir:
        try:
            st = os.lstat(path)
        except OSError:
            return path, None  # os.stat says why, as for any other path
        if not stat.S_ISLNK(st.st_mode):
            return path, st
    return os.path.realpath(path), None


def _walk(path: str, shown: str, rel: str, recursive: bool, check: Check | None, out: list[Planned],
          seen: set[str], max_entries: int, in_real_dir: bool = False) -> None:
    """`path` (read), named `shown` in errors (as the operator gave it), sent as `rel`."""
    real, known = _resolved(path, in_real_dir)
    if check is not None:
        check(real)
    try:
        st = known if known is not None else os.stat(real)
    except OSError as e:
        raise os_error(shown, e) from None
    if len(out) >= max_entries:
        raise TransferError(f"more than {max_entries} entries")
    if stat.S_ISREG(st.st_mode):
        out.append(Planned(Entry("file", rel, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime), real, shown))
        return
    if not stat.S_ISDIR(st.st_mode):
        raise TransferError(f"{shown}: not a regular file")
    if not recursive:
        raise TransferError(f"{shown}: is a directory (use -r)")
    if real in seen:
        raise TransferError(f"{shown}: a symlink loop")
    out.append(Planned(Entry("dir", rel, stat.S_IMODE(st.st_mode), 0, st.st_mtime), real, shown))
    try:
        names = sorted(os.listdir(real))
    except OSError as e:
        raise os_error(shown, e) from None
    below = seen | {real}
    for name in names:
        _walk(f"{real}/{name}" if real != "/" else f"/{name}", f"{shown.rstrip('/')}/{name}", f"{rel}/{name}",
              recursive, check, out, below, max_entries, in_real_dir=True)


class Sender:
    """Sends planned entries through `send` while credit allows; `ack(n)` returns credit and sends more.
    `on_bytes(n)` counts data sent (progress). A read error raises TransferError from `pump`/`ack`. With
    `claim`, each done_file carries the file's sha256 as read; without, NO_CLAIM (the master hashes:
    slaveshell.vocabulary.copying)."""

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
        self._next: tuple[TransferEvent, int] | None = None

    def ack(self, credit: object) -> None:
        """`credit` returned by the receiver (checked against what was spent: copying.Credit)."""
        self.credit.ack(credit)
        self.pump()

    def pump(self) -> None:
        while not self.done:
            if self._next is None:
                self._next = next(self._messages)
            event, cost = self._next
            if cost > self.credit.available:
                return
            self._next = None
            self.credit.spend(cost)
            self.send(event)
            if isinstance(event, Data):
                self.sent += cost
                if self.on_bytes is not None:
                    self.on_bytes(cost)
            elif isinstance(event, Finish):
                self.done = True

    def close(self) -> None:
        """Stop: the file being read is closed (idempotent)."""
        self.done = True
        self._messages.close()

    def _generate(self, planned: list[Planned]) -> Generator[tuple[TransferEvent, int], None, None]:
        for item in planned:
            entry = item.entry
            yield entry, ENTRY_COST
            if entry.kind != "file":
                continue
            sha = hashlib.sha256() if self.claim else None
            left = entry.size
            try:
                # Never waits to open (a FIFO put there since the plan: its reads then fail, not block).
                fd = os.open(item.local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                raise os_error(item.named, e) from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise TransferError(f"{item.named}: not a regular file")
                while left > 0:
                    try:
                        chunk = os.read(fd, min(CHUNK, left))
                    except OSError as e:
                        raise os_error(item.named, e) from None
                    if not chunk:
                        raise TransferError(f"{item.named}: the file shrank while it was read")
                    if sha is not None:
                        sha.update(chunk)
                    left -= len(chunk)
                    yield Data(chunk), len(chunk)
            finally:
                os.close(fd)
            yield DoneFile(sha.hexdigest() if sha is not None else NO_CLAIM), ENTRY_COST
        yield Finish(), 0
