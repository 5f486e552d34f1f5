"""The operator's local terminal: raw mode that is always undone, and the window size."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import Iterator


def window_size(fd: int) -> tuple[int, int] | None:
    """(cols, rows) of the terminal on fd, or None when fd is not a terminal or the size is unset."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if rows == 0 or cols == 0:
        return None
    return cols, rows


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal on fd in raw mode (as ssh does: every key goes to the remote side) and restore it on
    every way out, including SIGTERM and SIGHUP, which would otherwise leave the operator's terminal raw."""
    saved = termios.tcgetattr(fd)

    def restore() -> None:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    previous = {}

    def on_fatal_signal(signum: int, frame: object) -> None:
        restore()
        set_blocking(0, 1, 2)
        # Die of the same signal, so the caller sees the true cause.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGHUP, signal.SIGQUIT):
        previous[signum] = signal.signal(signum, on_fatal_signal)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        restore()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def set_blocking(*fds: int) -> None:
    """Twisted leaves the standard descriptors non-blocking; the operator's shell must not inherit that."""
    for fd in fds:
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def stdin_is_tty() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (ValueError, OSError):
        return False
