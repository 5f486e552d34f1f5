"""The client's standard output and error (`buildbot-shell`, standard library only): what the master sends is
written as the descriptors take it, never blocking the client's loop (slaveshell.client.connection.Loop) on a slow
terminal or pipe."""

from __future__ import annotations

import errno
import os
import selectors
from collections.abc import Callable

from slaveshell.client.connection import EventLoop


class Outputs:
    """The client's stdout ("out") and stderr ("err"): buffered, written when the descriptor takes it, so the
    loop never blocks on a slow terminal or pipe. `on_gone(name)` when a reader went away (EPIPE, EIO; that
    stream is then dropped), `on_written(name)` after each write."""

    def __init__(self, loop: EventLoop, fds: dict[str, int], on_gone: Callable[[str], None],
                 on_written: Callable[[str], None]) -> None:
        self.loop = loop
        self.fds = fds
        self.buffers: dict[str, bytearray] = {name: bytearray() for name in fds}
        self.on_gone = on_gone
        self.on_written = on_written

    def pending(self, name: str) -> int:
        """Bytes waiting for `name` (0 once it was dropped)."""
        return len(self.buffers.get(name, b""))

    @property
    def empty(self) -> bool:
        return not any(self.buffers.values())

    def write(self, name: str, data: bytes) -> None:
        buffer = self.buffers.get(name)
        if buffer is None:
            return
        if buffer:
            buffer += data  # behind what waits
        else:
            self._write(name, data)  # straight from the frame: only what the descriptor does not take is kept

    def flush(self, name: str) -> None:
        buffer = self.buffers.get(name)
        if buffer is not None:
            self._write(name, buffer)

    def _write(self, name: str, data: bytes | bytearray) -> None:
        """Write what the descriptor takes of `data` (the stream's buffer, or new output when nothing waits)."""
        buffer = self.buffers[name]
        written = write_some(self.fds[name], data)
        if written is None:
            self.drop(name)
            self.on_gone(name)
            return
        if data is buffer:
            del buffer[:written]
        else:
            buffer += memoryview(data)[written:]
        self.loop.watch(self.fds[name], selectors.EVENT_WRITE, (lambda: self.flush(name)) if buffer else None)
        self.on_written(name)

    def discard(self, name: str) -> int:
        """Forget what waits for `name` (a terminal's flush at an interrupt); the stream stays. The bytes dropped."""
        buffer = self.buffers.get(name)
        if not buffer:
            return 0
        dropped = len(buffer)
        buffer.clear()
        self.loop.watch(self.fds[name], selectors.EVENT_WRITE, None)
        return dropped

    def drop(self, name: str) -> None:
        if self.buffers.pop(name, None) is not None:
            self.loop.watch(self.fds[name], selectors.EVENT_WRITE, None)


def write_some(fd: int, data: bytes | bytearray) -> int | None:
    """Write what `fd` takes of `data`: the bytes written (0 when it takes nothing now), None when the reader is
    gone (EPIPE, EIO)."""
    try:
        return os.write(fd, data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EINTR):
            return 0
        return None
