"""The wire's constants, its two errors and the checks of single values, shared by every hop.

No I/O here. `slaveshell.vocabulary.protocol` builds the typed vocabulary (requests, exit statuses, roles, the message
Protocols and their wire encoders) on these and re-exports every name, so `from slaveshell.vocabulary.protocol import
...` keeps working for all of them.

Each `check_*` takes a value as it came off the wire (`object`: unchecked) and returns it typed, or raises
`ProtocolError` with a message that is safe to show to the peer that sent it.

Errors are split as in h11: `ProtocolError` means the peer sent something wrong (answer it with a plain error);
`LocalProtocolError` means our own code misused the API (a bug).
"""

from __future__ import annotations

import signal as _signal
import unicodedata

PROTOCOL_VERSION = 1
# Advertised in the worker's command list; its presence is the worker owner's opt-in.
WORKER_COMMAND = "slaveshell"
# The remote method added to the worker's Bot object.
WORKER_OPEN_METHOD = "slaveshell_open"
# The master's whole answer to a connection to its socket that it refuses (over its bounds, or not opening with
# the framing's magic: slaveshell.vocabulary.framing): this prefix, a line of ASCII text, a newline, then the close.
REFUSED_PREFIX = b"slaveshell: refused: "

# Banana refuses strings over 640 KiB and a receiver drops the whole connection on one: stay far below.
MAX_CHUNK = 64 * 1024
# Output credit: bytes a sender may have unacknowledged. Large enough for bandwidth, small enough that a
# keystroke's echo is not queued behind megabytes.
OUTPUT_WINDOW = 4 * MAX_CHUNK
INPUT_WINDOW = 4 * MAX_CHUNK

# The streaming calls go without PB's answer message: it would double the traffic on every keystroke and chunk.
# A peer's refusal of one of them is handled on its side (it ends the session); a lost connection still
# surfaces, as DeadReferenceError or the disconnect notification.
NO_ANSWER = frozenset({"output", "input", "ack", "input_ack"})

MAX_TERM = 64
MAX_COMMAND = 64 * 1024
MAX_ENV = 128
MAX_ENV_ITEM = 16 * 1024
MAX_PATH = 4096
MAX_DIMENSION = 10_000
MAX_NAME = 256
# Why a session or a transfer is opened (a ticket, an incident): one line an auditor reads (`check_reason`).
MAX_REASON = 500

STREAM_OUT = 1
STREAM_ERR = 2

# Signals an operator may send, by name (as `kill -s NAME` spells them).
SIGNALS: dict[str, int] = {
    name: int(getattr(_signal, "SIG" + name))
    for name in ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "TSTP", "WINCH", "ALRM")
}
# The wire's name for each of those signal numbers.
SIGNAL_NAMES: dict[int, str] = {number: name for name, number in SIGNALS.items()}


class ProtocolError(Exception):
    """The peer sent something we cannot accept. The message is safe to show to that peer."""


class LocalProtocolError(Exception):
    """Our own code used the protocol wrongly: a bug on this side."""


def check_bytes(data: object, what: str = "data", limit: int = MAX_CHUNK) -> bytes:
    if not isinstance(data, bytes):
        raise ProtocolError(f"{what} must be bytes, not {type(data).__name__}")
    if len(data) > limit:
        raise ProtocolError(f"{what} is {len(data)} bytes, over the limit of {limit}")
    return data


def check_int(value: object, what: str, low: int, high: int) -> int:
    # bool is an int subclass; a peer sending True for a size is confused, not clever.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ProtocolError(f"{what} must be between {low} and {high}, not {value}")
    return value


def check_str(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise ProtocolError(f"{what} is longer than {limit} characters")
    if "\0" in value:
        raise ProtocolError(f"{what} contains a NUL character")
    return value


def check_size(cols: object, rows: object) -> tuple[int, int]:
    return check_int(cols, "cols", 1, MAX_DIMENSION), check_int(rows, "rows", 1, MAX_DIMENSION)


def check_signal(name: object) -> int:
    name = check_str(name, "signal", 16).upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise ProtocolError(f"unknown signal {name!r}; allowed: {', '.join(sorted(SIGNALS))}")
    return SIGNALS[name]


def check_stream(stream: object) -> int:
    return check_int(stream, "stream", STREAM_OUT, STREAM_ERR)


def check_worker_name(name: object) -> str:
    name = check_str(name, "worker name", MAX_NAME)
    if not name:
        raise ProtocolError("worker name is empty")
    return name


def check_reason(value: object) -> str:
    """Why a session or a transfer is opened, as the operator gave it: one line of at most MAX_REASON
    characters with something besides spaces, and nothing a terminal or a reader could act on: no control,
    format, separator, surrogate or unassigned character (those `slaveshell.vocabulary.display.visible` would escape;
    spaces of any kind are kept). Refused rather than cleaned, so that the index keeps what the operator typed."""
    text = check_str(value, "reason", MAX_REASON)
    if not text.strip():
        raise ProtocolError("reason is empty")
    for char in text:
        if not char.isprintable() and unicodedata.category(char) != "Zs":
            raise ProtocolError(f"reason contains the character U+{ord(char):04X}: it must be one line of "
                                "printable text")
    return text
