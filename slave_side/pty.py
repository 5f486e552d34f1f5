"""PTY work, kept apart from the session logic (as conch keeps it apart from its channels)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios

from slaveshell.client.terminal import TermModes

__all__ = ["TermModes", "open_pty", "set_window_size", "eof_bytes", "foreground_group"]


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


def eof_bytes(fd: int, last_byte: bytes | None) -> bytes:
    """What to write to the PTY so that the program reading it sees the end of input.

    In canonical mode (termios(3), "Canonical and noncanonical mode") one VEOF character delivers the pending
    partial line, and only a VEOF at the start of a line makes read(2) return 0. So: VEOF, and a second one when
    `last_byte` (the last byte written to the PTY, None for none) left a partial line, that is, was not one of
    the line delimiters NL, VEOL, VEOL2, VEOF, or CR turned into NL by ICRNL. In non-canonical mode there is no
    end of input on a terminal at all: the program (readline, an editor, a REPL) reads VEOF as a key, and one
    is what a user would type, so one is sent.
    """
    try:
        attrs = termios.tcgetattr(fd)
    except (termios.error, OSError):
        return b"\x04"
    iflag, lflag, cc = attrs[0], attrs[3], attrs[6]
    veof = _cc_byte(cc[termios.VEOF]) or b"\x04"
    if not lflag & termios.ICANON or last_byte is None:
        return veof
    ends = {b"\n", veof} | {c for c in (_cc_byte(cc[termios.VEOL]), _cc_byte(cc[termios.VEOL2])) if c}
    if iflag & termios.ICRNL and not iflag & termios.IGNCR:
        ends.add(b"\r")
    return veof if last_byte in ends else veof + veof


def _cc_byte(value: bytes | int) -> bytes | None:
    """A control character from termios' cc list; None when disabled (_POSIX_VDISABLE, 0 on Linux)."""
    b = value if isinstance(value, bytes) else bytes([value])
    return None if b == b"\0" else b


def foreground_group(fd: int) -> int | None:
    """The PTY's foreground process group (the job a Ctrl-C would reach), if the kernel tells us."""
    try:
        pgid = os.tcgetpgrp(fd)
    except OSError:
        return None
    return pgid if pgid > 0 else None
