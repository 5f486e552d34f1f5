"""PTY work, kept apart from the session logic (as conch keeps it apart from its channels)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios


def open_pty(cols: int, rows: int) -> tuple[int, int, str]:
    """A new PTY pair with its window size set before any process sees it (so `stty size` is right at once)."""
    master_fd, slave_fd = pty.openpty()
    try:
        set_window_size(master_fd, cols, rows)
        name = os.ttyname(slave_fd)
    except Exception:
        os.close(master_fd)
        os.close(slave_fd)
        raise
    return master_fd, slave_fd, name


def set_window_size(fd: int, cols: int, rows: int) -> None:
    # On the master side the kernel also sends SIGWINCH to the terminal's foreground process group.
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def eof_byte(fd: int) -> bytes:
    """The terminal's VEOF character: on a PTY, end of input is a byte, not a close."""
    try:
        cc = termios.tcgetattr(fd)[6]
        value = cc[termios.VEOF]
        return value if isinstance(value, bytes) else bytes([value])
    except (termios.error, OSError):
        return b"\x04"


def foreground_group(fd: int) -> int | None:
    """The PTY's foreground process group (the job a Ctrl-C would reach), if the kernel tells us."""
    try:
        pgid = os.tcgetpgrp(fd)
    except OSError:
        return None
    return pgid if pgid > 0 else None
