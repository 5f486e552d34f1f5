"""Reading a session's process output in larger pieces than Twisted does.

Twisted reads a process's pipes and its PTY 8 KiB per reactor wake-up (`twisted.internet.fdesc.readFromFD`), and
a PTY's master side gives at most 4 KiB per read (the line discipline's read buffer, N_TTY_BUF_SIZE), so a bulk
stream cost the worker one wake-up and one chain of Python calls per 4-8 KiB (py-spy, `-T cat` and `-t cat` of
200 MB). Here each wake-up reads until the descriptor has nothing more (EAGAIN, or a read shorter than SHORT_READ)
or `limit` bytes were read, and hands them on in one call; a pipe's kernel buffer is raised to PIPE_SIZE so that a
writer like `cat` (128 KiB writes) fills more of it between wake-ups. Flow control is unchanged: a paused reader
is not read, and one wake-up reads at most `limit` bytes (the session's largest message) past the window, which
the master tolerates (master_side.sessions.clocks.WINDOW_TOLERANCE).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import Protocol

from twisted.internet import process as twisted_process
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

from slave_side import upstream

# Linux's F_SETPIPE_SZ (fcntl(2)); 1 MiB is /proc/sys/fs/pipe-max-size's default for unprivileged processes.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024
# One read's size: a PTY gives at most 4 KiB per read anyway; a pipe gives what it holds.
READ_SIZE = 256 * 1024
# A read this short (a keystroke's echo, a prompt) ends the wake-up's reading: the descriptor was drained, and a
# second read would only meet EAGAIN (what comes later wakes the reactor again: epoll is level-triggered). A bulk
# stream's reads are 4 KiB from a PTY and more from a pipe, and go on as before.
SHORT_READ = 512


class Readable(Protocol):
    """What Twisted's readers (`ProcessReader` for a pipe, `PTYProcess` for a terminal) have that we use."""

    def fileno(self) -> int: ...


def read_more(reader: Readable, deliver: Callable[[bytes], None], limit: int, pipe: bool = False) -> None:
    """Replace `reader.doRead` (a Twisted reader's, called when its descriptor is readable) by one that reads
    up to `limit` bytes per wake-up and calls `deliver` once with them. End of file and errors are reported as
    Twisted's own doRead reports them (CONNECTION_DONE, CONNECTION_LOST), after the bytes read before them.
    `pipe`: the descriptor is a pipe, widened first (`widen_pipe`)."""
    fd = reader.fileno()
    if pipe:
        widen_pipe(fd)

    def do_read() -> object:
        parts: list[bytes] = []
        got = 0
        result: object = None
        while got < limit:
            try:
                data = os.read(fd, min(READ_SIZE, limit - got))
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EINTR):
                    result = CONNECTION_LOST
                break
            if not data:
                result = CONNECTION_DONE
                break
            parts.append(data)
            got += len(data)
            if len(data) < SHORT_READ:
                break  # drained: no second read only to meet EAGAIN
        if parts:
            deliver(parts[0] if len(parts) == 1 else b"".join(parts))
        return result

    reader.doRead = do_read  # type: ignore[attr-defined]


def widen_pipe(fd: int) -> None:
    """Raise a pipe's kernel buffer to PIPE_SIZE; left as it is where the system refuses (a lower
    pipe-max-size, the user's pipe buffer quota) or where there is no descriptor (a negative one, as a stand-in
    process's reader has)."""
    if fd < 0:
        return
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ValueError):
        pass


def read_in_larger_pieces(transport: object, pty_output: Callable[[bytes], None], limit: int) -> None:
    """Make a spawned process's transport read up to `limit` bytes per wake-up (`read_more`): a PTY's output
    handed to `pty_output`, each pipe's to its own reader. Only Twisted's own process transports are changed (a
    test's stand-in is left as it is), and only when their shape is the one `read_more` was written for
    (slave_side.upstream)."""
    if not upstream.readers():
        return
    if isinstance(transport, twisted_process.PTYProcess):
        read_more(transport, pty_output, limit)
    elif isinstance(transport, twisted_process.Process):
        for reader in transport.pipes.values():
            if isinstance(reader, twisted_process.ProcessReader):
                read_more(reader, reader.dataReceived, limit, pipe=True)


def widen_stdin(transport: object) -> None:
    """Widen a spawned process's stdin pipe (`widen_pipe`), once bulk input comes: a bulk input message then goes
    into the pipe in one write, not 64 KiB at a time with a wake-up of the worker and of the command between
    each. Only then: a pipe's buffer counts against its user's pipe quota (/proc/sys/fs/pipe-user-pages-soft),
    which the worker's builds share. Twisted's own process transports only."""
    if isinstance(transport, twisted_process.Process):
        writer = transport.pipes.get(0)
        if isinstance(writer, twisted_process.ProcessWriter):
            widen_pipe(writer.fileno())
