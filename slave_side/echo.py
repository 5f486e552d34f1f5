"""Was a keystroke hidden? Decided on the worker, per input message, before its input_ack.

The rule (docs/audit-schema.md, "Hidden input"), from the terminal's modes at delivery (termios(3)) and from
what the program shows afterwards:

1. ECHO set: the terminal line discipline displays what is typed. Visible.
2. ECHO clear, ICANON set: the program receives nothing before the line ends, so it cannot display keystrokes as
   they are typed (getpass, sudo, ssh, `read -s`, `stty -echo` at a plain shell). Hidden.
3. ECHO clear, ICANON clear: the program reads byte by byte and displays, or not, what it gets. GNU readline
   (bash's command line) runs in this mode and writes each typed character back (readline's rltty.c
   `prepare_terminal_settings` clears ICANON and ECHO; its display code echoes); `read -s -n`, pinentry-curses
   and raw-mode password prompts do not. A message is visible when the PTY output that follows it, control
   sequences stripped, begins with its printable text within ECHO_WINDOW; otherwise it is hidden. Once a message
   of a stretch is hidden, the rest of the stretch is hidden too, without looking at the output again: a
   stretch ends at a line end (CR or LF) typed, at a delivery with ECHO set, or when the terminal's modes differ
   from the ones it began with (another program, or readline back after `read -s -n`). Messages with no
   printable text (Enter, arrows, Ctrl keys) follow the stretch: hidden inside a hidden one, visible otherwise.

When unsure the rule hides: no echo seen in time (a loaded machine, paused output) means hidden, and a PTY whose
modes cannot be read hides. Full-screen programs that do not echo their keys literally (vim's normal mode,
less) have their keys hidden: what they did shows in the recorded output, and sealing keeps the keys.
"""

from __future__ import annotations

import re
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from slave_side.pty import TermModes
from slaveshell.plumbing.clock import Clock, DelayedCall

# How long a program in non-canonical mode may take to echo a keystroke before it counts as hidden. Readline
# echoes within milliseconds; the margin is for a loaded worker. Only the input_ack waits, never the operator.
ECHO_WINDOW = 1.0
# Output kept for matching echoes: far more than any keystroke message's echo needs.
MAX_ECHO_TEXT = 256 * 1024

# Terminal control sequences (ECMA-48): CSI, OSC/DCS/APC/PM strings, SS3 and other two-byte escapes; then every
# remaining control character. What is left is what a terminal prints as text.
_CONTROL_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]P_^X][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1bO."
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x1f\x7f-\x9f]"
)


# A whole control sequence at the start of a string, terminator required: what is not one yet, after the last ESC
# of a read, is held back until the next read completes it (reads cut sequences anywhere).
_WHOLE_SEQUENCE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]"
    rb"|\x1b[\]P_^X][^\x07\x1b]*(?:\x07|\x1b\\)"
    rb"|\x1bO."
    rb"|\x1b[ -/]*[0-9:;<=>?@A-NQ-WYZ\\`a-~]",  # not [ ] P X ^ _ O: those introduce the longer ones above
    re.DOTALL)
MAX_HELD = 4096


def split_incomplete(data: bytes) -> tuple[bytes, bytes]:
    """(what can be read as text now, a tail that may be the start of a control sequence or of a UTF-8
    character)."""
    esc = data.rfind(b"\x1b", max(0, len(data) - MAX_HELD))
    if esc >= 0 and not _WHOLE_SEQUENCE.match(data, esc):
        return data[:esc], data[esc:]
    for back in (1, 2, 3):  # a UTF-8 lead byte whose continuation bytes have not come yet
        if len(data) < back:
            break
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        if need > back:
            return data[:-back], data[-back:]
        break
    return data, b""


def printable_text(data: bytes) -> str:
    """The text a terminal would print for `data`, control sequences and characters removed."""
    return _CONTROL_SEQUENCE.sub("", data.decode("utf-8", "replace"))


@dataclass
class Keystrokes:
    """One input message delivered to the process, and the decision about it (None until decided)."""

    nbytes: int
    text: str = ""
    line_end: bool = False
    modes: TermModes | None = None
    hidden: bool | None = None
    expired: bool = False
    timer: DelayedCall | None = None


def local_modes(modes: TermModes) -> int:
    """The local modes (c_lflag: ECHO, ICANON, ...) of a tcgetattr attribute list."""
    lflag = modes[3]
    if not isinstance(lflag, int):
        raise TypeError(f"c_lflag must be an int, not {type(lflag).__name__}")
    return lflag


def terminal_modes(fd: int) -> TermModes | None:
    """The PTY's termios attributes (tcgetattr), or None when they cannot be read."""
    try:
        return termios.tcgetattr(fd)
    except (termios.error, OSError):
        return None


class HiddenInputJudge:
    """Applies the rule above to one PTY session's input, in order. `on_decided` is called whenever messages
    at the front of the queue have been decided (the session then acknowledges them)."""

    def __init__(self, reactor: Clock, on_decided: Callable[[], None], window: float = ECHO_WINDOW) -> None:
        self.reactor = reactor
        self.on_decided = on_decided
        self.window = window
        self.pending: deque[Keystrokes] = deque()
        self._echo = ""
        self._held = b""
        # The modes a hidden stretch began with, while one is going on.
        self._hiding: TermModes | None = None

    def delivered(self, data: bytes, modes: TermModes | None) -> Keystrokes:
        """`data` was written to the PTY while its modes were `modes` (read just before the write)."""
        item = Keystrokes(len(data), printable_text(data), b"\r" in data or b"\n" in data, modes)
        if self._needs_echo(item):
            item.timer = self.reactor.callLater(self.window, self._expire, item)
        self.pending.append(item)
        self._decide()
        return item

    def output(self, data: bytes) -> None:
        """The process wrote `data` to the PTY."""
        if not self.pending:
            return
        if len(self._echo) < MAX_ECHO_TEXT:
            text, self._held = split_incomplete(self._held + data)
            self._echo += printable_text(text)
        self._decide()

    def close(self) -> None:
        for item in self.pending:
            if item.timer is not None and item.timer.active():
                item.timer.cancel()

    # -- the rule ------------------------------------------------------------------------------

    @staticmethod
    def _needs_echo(item: Keystrokes) -> bool:
        lflag = local_modes(item.modes) if item.modes is not None else termios.ECHO
        return bool(item.text) and not lflag & (termios.ECHO | termios.ICANON)

    def _expire(self, item: Keystrokes) -> None:
        item.expired = True
        self._decide()

    def _decide(self) -> None:
        decided = False
        while self.pending:
            item = self.pending[0]
            hidden = self._verdict(item)
            if hidden is None:
                break
            self.pending.popleft()
            if item.timer is not None and item.timer.active():
                item.timer.cancel()
            item.hidden = hidden
            decided = True
            if hidden and self._hiding is None:
                self._hiding = item.modes
            if item.line_end or (item.modes is not None and local_modes(item.modes) & termios.ECHO):
                self._hiding = None
            if not self.pending:
                self._echo, self._held = "", b""
        if decided:
            self.on_decided()

    def _verdict(self, item: Keystrokes) -> bool | None:
        """True (hidden), False (visible) or None (wait for more output)."""
        modes = item.modes
        if modes is None:
            return True  # the modes cannot be read: hide
        lflag = local_modes(modes)
        if lflag & termios.ECHO:
            return False
        if lflag & termios.ICANON:
            return True
        if self._hiding is not None:
            if self._hiding == modes:
                return True
            self._hiding = None  # another program, or another mode: a fresh stretch
        if not item.text:
            return False
        if self._echo.startswith(item.text):
            self._echo = self._echo[len(item.text):]
            return False
        if item.text.startswith(self._echo) and not item.expired:
            return None  # the echo so far is the start of what was typed: more may come
        self._echo, self._held = "", b""
        return True
