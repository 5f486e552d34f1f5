"""Transcript files on the master: created exclusively with mode 0600 in a 0700 directory, appended live,
fsynced at the end, and repaired after a crash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable

from slaveshell.transcript import parse_lines


def transcript_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # makedirs leaves an existing directory's mode alone
    return path


def transcript_name(worker: str, session_id: str, started: float) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", worker)[:64]
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}-{safe}-{session_id}.cast"


class TranscriptFile:
    """Append-only: lines are buffered and written by `flush()`; the sha256 of what was written is kept as it
    goes. Every error is an OSError for the caller to act on (full disk, a vanished directory)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                                       0o600)
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

    def add(self, lines: list[str]) -> None:
        for line in lines:
            data = (line + "\n").encode("utf-8", "surrogateescape")
            self._buffer.append(data)
            self._buffered += len(data)

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

            def sync() -> None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

            if run is None:
                sync()
            else:
                run(sync)
        return self._sha.hexdigest()

    def abandon(self) -> None:
        """Close without flushing (the disk refused): what was written stays valid up to its last line."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sha256(self) -> str:
        return self._sha.hexdigest()


def recover(path: str, reason: str) -> tuple[float, str]:
    """Make a transcript left by a crash playable: cut a partial last line, append a marker saying why it
    stopped. Returns (time of the last event, sha256 of the repaired file)."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            f.truncate(end)
            data = data[:end]
        text = data.decode("utf-8", "surrogateescape")
        cast = parse_lines(text.splitlines(keepends=True))
        last = cast.events[-1].time if cast.events else 0.0
        marker = json.dumps([last, "m", reason], ensure_ascii=False) + "\n"
        f.seek(0, os.SEEK_END)
        f.write(marker.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        return last, hashlib.sha256(f.read()).hexdigest()
