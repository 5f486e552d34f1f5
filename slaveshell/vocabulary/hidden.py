"""Hidden input in transcripts: the span marker, the flag on sessions, and sealing to the auditors' age key.

Keystrokes the remote terminal did not display (slave_side.echo decides) never reach a transcript in clear.
Each hidden span becomes, at the time it ended:

    [t, "i", "[hidden input: 20 bytes]"]    what players, replay and search show
    [t, "ih", "20"]                         the span's length in bytes (authoritative: an operator can type the
                                            text of an `i` marker, not an `ih` event)
    [t, "is", "-----BEGIN AGE ENCRYPTED FILE-----..."]   only with a seal key: the span's bytes, encrypted
                                            to the auditors' age recipients (age v1, ASCII armor), which
                                            `age -d -i key.txt` and `slaveshell reveal` open

age: https://age-encryption.org/v1 (C2SP age specification), through pyrage.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyrage
from pyrage import x25519

# More hidden input than a password: over this many bytes in a session, or hidden input going on after a
# hidden line ended (a second line typed while the terminal still hides: `stty -echo`, or a retried password).
HIDDEN_FLAG_BYTES = 64
# A span that grows past this is ended and a new one begun (memory held per session is bounded).
MAX_SPAN = 4096

_MARKER = re.compile(r"^\[hidden input: (\d+) bytes?\]$")


def marker(nbytes: int) -> str:
    return f"[hidden input: {nbytes} byte{'' if nbytes == 1 else 's'}]"


def flagged(hidden_bytes: int, went_on_after_a_line: bool) -> bool:
    return hidden_bytes > HIDDEN_FLAG_BYTES or went_on_after_a_line


def summary(row: Mapping[str, object]) -> str:
    """For tables: '-' without hidden input, '20B/1' (bytes/spans), with a leading '!' when flagged."""
    nbytes, spans = row.get("hidden_bytes") or 0, row.get("hidden_spans") or 0
    if not nbytes and not spans:
        return "-"
    return f"{'!' if row.get('hidden_flag') else ''}{nbytes}B/{spans}"


# -- sealing (master side) -----------------------------------------------------------------------------

def load_recipients(seal_to: str | Sequence[str]) -> list[x25519.Recipient]:
    """age X25519 recipients from `seal_to`: an `age1...` public key, a list of them, or the path of a
    recipients file (one per line, `#` comments, as `age -R` reads). Raises ValueError with the reason."""
    if isinstance(seal_to, str):
        items = [seal_to]
    elif isinstance(seal_to, Sequence) and all(isinstance(s, str) for s in seal_to):
        items = list(seal_to)
    else:
        raise ValueError("seal_to must be an age public key (age1...), a list of them, or a file of them")
    keys: list[str] = []
    for item in items:
        if item.strip().startswith("age1"):
            keys.append(item.strip())
            continue
        try:
            with open(os.path.expanduser(item), encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except OSError as e:
            raise ValueError(f"seal_to: {item!r} is neither an age public key nor a readable file: "
                             f"{e.strerror or e}") from None
        keys += [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ValueError("seal_to names no age public key")
    recipients = []
    for key in keys:
        try:
            recipients.append(x25519.Recipient.from_str(key))
        except pyrage.RecipientError as e:
            raise ValueError(f"seal_to: {key[:16]}... is not an age X25519 public key: {e}") from None
    return recipients


def seal(data: bytes, recipients: Sequence[x25519.Recipient]) -> str:
    """`data` encrypted to every recipient, as an ASCII-armored age file."""
    return bytes(pyrage.encrypt(data, list(recipients), armored=True)).decode("ascii")


# -- revealing (an auditor's side) --------------------------------------------------------------------

def load_identities(path: str) -> list[x25519.Identity]:
    """age identities (`AGE-SECRET-KEY-1...` lines, `#` comments, as `age-keygen` writes). Raises ValueError."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise ValueError(f"cannot read the identity file {path}: {e.strerror or e}") from None
    identities = []
    for line in lines:
        if line and not line.startswith("#"):
            try:
                identities.append(x25519.Identity.from_str(line))
            except pyrage.IdentityError:
                raise ValueError(f"{path} holds a line that is not an age identity (AGE-SECRET-KEY-1...)") from None
    if not identities:
        raise ValueError(f"{path} holds no age identity")
    return identities


def unseal(armored: str, identities: Sequence[x25519.Identity]) -> bytes:
    """Raises ValueError when none of the identities opens it."""
    try:
        return bytes(pyrage.decrypt(armored.encode("ascii"), list(identities)))
    except (pyrage.DecryptError, UnicodeEncodeError) as e:
        raise ValueError(f"cannot open it with this identity: {e}") from None


def escaped(data: bytes) -> str:
    """Revealed keystrokes for a terminal: printable text as it is; controls, format characters (bidi
    overrides), bytes that are not UTF-8 and the backslash as Python escapes (\\r, \\x1b, \\u202e)."""
    out = []
    for ch in data.decode("utf-8", "surrogateescape"):
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Span:
    time: float
    nbytes: int
    sealed: str | None = None


class CodedEvent(Protocol):
    """A transcript's event as parsed (slaveshell.vocabulary.transcript.Event): its time, code and data."""

    @property
    def time(self) -> float: ...
    @property
    def code(self) -> str: ...
    @property
    def data(self) -> str: ...


def spans(events: Iterable[CodedEvent]) -> list[Span]:
    """The hidden spans of a parsed transcript (slaveshell.vocabulary.transcript.Event items), from `ih`/`is` events."""
    found: list[Span] = []
    for event in events:
        if event.code == "ih" and isinstance(event.data, str) and event.data.isdigit():
            found.append(Span(event.time, int(event.data)))
        elif event.code == "is" and found and found[-1].sealed is None and isinstance(event.data, str):
            found[-1].sealed = event.data
    return found
