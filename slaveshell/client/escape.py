"""ssh-style escape sequences on the operator's keyboard input, without I/O.

As in OpenSSH, the escape character is recognised only right after a newline (or at the very start):
`~.` ends the session, `~d` detaches, `~^Z` suspends the client (as a shell's job), `~?` shows help, `~~` sends
one `~`; any other character after `~` sends both. The `~` is held back until the next byte decides.
"""

from __future__ import annotations

from dataclasses import dataclass

HELP = (
    "Supported escape sequences:\r\n"
    "{end}"
    "{suspend}"
    " {c}?   - this message\r\n"
    " {c}{c}   - send the escape character by typing it twice\r\n"
    "(Note that escapes are only recognized immediately after newline.)\r\n"
)


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Terminate:
    pass


@dataclass(frozen=True)
class Detach:
    pass


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class Suspend:
    """Stop the client as Ctrl-Z stops a local job (ssh: `~^Z`)."""


@dataclass(frozen=True)
class Help:
    text: str


Action = Send | Terminate | Detach | Release | Suspend | Help

_NEWLINES = (b"\r", b"\n")
CTRL_Z = b"\x1a"


class EscapeParser:
    def __init__(self, escape_char: bytes | None = b"~", detach: bool = False, release: bool = False,
                 suspend: str | None = None) -> None:
        """`suspend`: the program's name for `~^Z` and its help line; None leaves Ctrl-Z after `~` as data.
        `leave_only` (set once known: a watcher or someone else's joiner): `~.` and `~d` only leave the session,
        and the help says so."""
        if escape_char is not None and len(escape_char) != 1:
            raise ValueError("the escape character must be one byte")
        self.escape = escape_char
        self.detach = detach
        self.release = release
        self.suspend = suspend
        self.leave_only = False
        self._at_line_start = True
        self._pending = False

    def feed(self, data: bytes) -> list[Action]:
        if self.escape is None:
            return [Send(data)] if data else []
        actions: list[Action] = []
        out = bytearray()

        def flush() -> None:
            if out:
                actions.append(Send(bytes(out)))
                out.clear()

        for i in range(len(data)):
            byte = data[i : i + 1]
            if self._pending:
                self._pending = False
                if byte == b".":
                    flush()
                    actions.append(Terminate())
                    return actions  # nothing after ~. is sent
                if byte == b"?":
                    flush()
                    c = self.escape.decode("latin-1")
                    if self.leave_only:
                        extra = f" {c}.   - leave the session (it keeps running for its owner)\r\n"
                    else:
                        extra = f" {c}.   - terminate session\r\n"
                        if self.detach:
                            extra += f" {c}d   - detach (the session keeps running; slaveshell attach resumes it)\r\n"
                    if self.release:
                        extra += f" {c}r   - release the held build (it finishes; this shell stays)\r\n"
                    stop = f" {c}^Z  - suspend {self.suspend}\r\n" if self.suspend else ""
                    actions.append(Help(HELP.format(c=c, end=extra, suspend=stop)))
                    self._at_line_start = True  # ssh accepts another escape right after help
                    continue
                if byte == b"d" and self.detach:
                    flush()
                    actions.append(Detach())
                    return actions
                if byte == b"r" and self.release:
                    flush()
                    actions.append(Release())
                    self._at_line_start = True
                    continue
                if byte == CTRL_Z and self.suspend:
                    flush()
                    actions.append(Suspend())
                    self._at_line_start = True  # as ssh: another escape may follow at once
                    continue
                if byte == self.escape:
                    out += byte
                    self._at_line_start = False
                    continue
                out += self.escape + byte
                self._at_line_start = byte in _NEWLINES
                continue
            if self._at_line_start and byte == self.escape:
                self._pending = True
                continue
            out += byte
            self._at_line_start = byte in _NEWLINES
        flush()
        return actions
