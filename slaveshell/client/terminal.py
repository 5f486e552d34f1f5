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

# termios.tcgetattr's attribute list [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]: six ints, then the
# control characters (bytes of length 1, or ints for VMIN and VTIME in non-canonical mode); as tcsetattr takes it.
TermModes = list[int | list[bytes | int]]


def window_size(fd: int) -> tuple[int, int] | None:
    """(cols, rows) of the terminal on fd, or None when fd is not a terminal or the size is unset."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if rows == 0 or cols == 0:
        return None
    return cols, rows


class RawTerminal:
    """The operator's terminal on fd: raw while the session has it (every key goes to the remote side, as ssh's
    enter_raw_mode in sshtty.c), back as it was while this process is stopped and at the end.

    Job control as a shell expects it of a full-screen program: `suspend` gives the terminal back cooked and
    blocking, then stops this process; `resume` (on SIGCONT) takes it raw again, but only as the terminal's
    foreground job (after `bg`, touching the modes would stop us with SIGTTOU; `fg` sends another SIGCONT).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.active = False
        self._saved: TermModes | None = None
        self._nonblocking: list[int] = []

    def enter(self) -> None:
        """Raw mode; the modes found are what `leave` restores. Raises termios.error when fd is no terminal."""
        if self._saved is None:
            self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSADRAIN)
        self.active = True

    def leave(self) -> None:
        """The modes `enter` found; safe to call at any time and more than once."""
        self.active = False
        saved, self._saved = self._saved, None
        if saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def in_foreground(self) -> bool:
        try:
            return os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:
            return False

    def suspend(self) -> None:
        """Stop this process (SIGTSTP, default action) with the terminal restored; returns once continued.

        As ssh's client_suspend_self: stopping yourself, not the process group. Where the kernel discards the
        stop (an orphaned process group, with nobody to continue it) this returns at once.
        """
        was_raw = self.active
        self.leave()
        self._nonblocking = [fd for fd in (0, 1, 2) if _is_nonblocking(fd)]
        set_blocking(*self._nonblocking)
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, previous)
        self.active = was_raw
        self.resume()

    def resume(self) -> None:
        """After SIGCONT (from our own suspend or a SIGSTOP/SIGCONT pair we never saw): descriptors as Twisted
        wants them, and raw mode again if we had it and the terminal is ours. A shell may have put the terminal
        back in cooked mode while we were stopped, so raw mode is set again even when we think we have it."""
        for fd in self._nonblocking:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._nonblocking = []
        if self.active and self.in_foreground():
            with contextlib.suppress(termios.error, OSError):
                self.enter()


@contextlib.contextmanager
def raw_mode(terminal: RawTerminal) -> Iterator[None]:
    """Raw mode for the `with` body, restored on every way out, including SIGHUP and SIGQUIT arriving before
    anyone else handles them, which would otherwise leave the operator's terminal raw."""
    previous = {}

    def on_fatal_signal(signum: int, frame: object) -> None:
        terminal.leave()
        set_blocking(0, 1, 2)
        # Die of the same signal, so the caller sees the true cause.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGHUP, signal.SIGQUIT):
        previous[signum] = signal.signal(signum, on_fatal_signal)
    terminal.enter()
    try:
        yield
    finally:
        terminal.leave()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _is_nonblocking(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
    except OSError:
        return False


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
