"""The one display-safety rule for untrusted text shown outside a session's own terminal stream.

Worker names and reports, exit reasons, commands, search context, peers' error messages: whatever a worker, a
session or another user controls reaches tables, notices and log lines only through `visible`, so that no
terminal (or `tail -f` of a log) ever interprets it. Sans-I/O.

The rule: every character a terminal or a reader could act on is shown escaped, spelled as Python's ``repr()``
spells it (``\\x1b``, ``\\n``, ``\\x9b``, ``\\u202e``, ``\\udc9b``, ``\\U000e0001``). That is each character
that is not printable (``str.isprintable``) apart from spaces (Zs) and private-use characters (Co): C0 and C1
controls and DEL (Cc, ECMA-48 section 5), format characters (Cf: the bidirectional embeddings, overrides and
isolates U+202A-202E and U+2066-2069, the marks U+200E, U+200F and U+061C of Unicode UAX #9, zero-width
characters, the soft hyphen), line and paragraph separators (Zl, Zp), lone surrogates (Cs: bytes that were not
UTF-8, decoded with surrogateescape) and unassigned code points (Cn, whose width no terminal agrees on); and a
combining mark (M*) with no character of its own before it (first, or after an escape), which a terminal would
put on the column or line before.

Backslashes are left alone, so the rule is idempotent (``visible(visible(s)) == visible(s)``) and paths and
commands read naturally; a literal ``\\x1b`` typed by someone is therefore shown like an escaped ESC, which
reads the same and does nothing. Machine output (``--json``) is exact instead: JSON escapes every control and
non-ASCII character.

Widths are terminal columns of what is shown (wcwidth: Unicode's East Asian Width, UAX #11, and zero-width
marks, as terminals and pyte count them), so tables align
whatever the text holds: wide CJK counts 2, combining marks 0.
"""

from __future__ import annotations

import unicodedata

# Not printable, but harmless and of a known width: spaces other than ASCII space, private-use characters.
_SHOWN_AS_IS = frozenset({"Zs", "Co"})

ELLIPSIS = "\u2026"
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escaped(char: str) -> str:
    """One character as Python's repr() spells a character it does not print."""
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(value: object) -> str:
    """`value` as text with every control, format and unassigned character escaped (see the module's rule).
    Safe to print on a terminal and to write to a log line; at most 10 characters per input character."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and not (text and unicodedata.category(text[0])[0] == "M"):
        return text
    out: list[str] = []
    # Whether the last character shown can carry a combining mark: a mark with nothing of its own to combine
    # with would sit on the neighbouring column or line on screen, so it is escaped too.
    base = False
    for char in text:
        category = unicodedata.category(char)
        if char.isprintable() or category in _SHOWN_AS_IS:
            if category[0] != "M":
                out.append(char)
                base = True
                continue
            if base:
                out.append(char)
                continue
        out.append(_escaped(char))
        base = False
    return "".join(out)


def width(value: object) -> int:
    """Terminal columns `visible(value)` takes, counted per character as pyte and most terminals do (an emoji
    modifier or a variation selector is not merged into its emoji: terminals disagree on those sequences)."""
    from wcwidth import wcwidth  # here, not at import: logging on a worker needs only `visible`

    return sum(max(0, wcwidth(char)) for char in visible(value))


def cell(value: object, columns: int) -> str:
    """`visible(value)` fitted to exactly `columns` terminal columns: padded with spaces, or cut at a character
    boundary and ended with an ellipsis when longer (a wide character that would straddle the edge is left out
    and replaced by a space)."""
    from wcwidth import wcwidth

    shown = visible(value)
    if columns <= 0:
        return ""
    used = width(shown)
    if used <= columns:
        return shown + " " * (columns - used)
    out: list[str] = []
    used = 0
    for char in shown:
        w = max(0, wcwidth(char))
        if used + w > columns - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + ELLIPSIS + " " * (columns - 1 - used)
