"""Links from a session to the uploads it names: `slaveshell cp x.sh w1:` then `buildbot-shell w1 -- sh x.sh`.
The upload's row keeps the names its files may have on the worker (`upload_names`, the `files` column); a session
on that worker whose command, or what was typed or piped into it (`TypedWords`), names one of them
(`named_uploads`) gets the upload's id in its `uploads` column (docs/audit-schema.md). A link is a pointer for the
auditor, not a proof: a command that builds the name at run time (a glob, a variable, a rename first) names no
upload; the upload's kept text stays findable by search either way.
"""

from __future__ import annotations

import codecs
import posixpath
import re
from collections.abc import Iterable

from slaveshell.vocabulary.copying import path_text

# What an upload's row keeps of its names: at most this many, in at most this many characters.
MAX_NAMES = 1000
MAX_NAMES_CHARS = 64 * 1024
# The most recent uploads to the worker a session's command is compared with.
UPLOADS_LOOKED_AT = 100
# The words of a command: what lies between blanks and the shell's own punctuation.
_WORD_SEPARATORS = re.compile(r"[\s;&|<>()`$'\"=,{}]+")


def upload_names(dest: str, single_file: bool, files: Iterable[str]) -> str:
    """The `files` column of an upload: where each file may be on the worker, one per line (DEST/PATH, or PATH
    when the destination is the default, `.`), and DEST itself when one file was copied to a name (it may be the
    file's new name). Names that are not UTF-8 are spelled with \\xNN escapes."""
    names: list[str] = []
    base = dest.rstrip("/") or dest
    if single_file and base and not dest.endswith("/") and base not in (".", ".."):
        names.append(base)
    for path in files:
        names.append(posixpath.join(base, path) if base not in ("", ".") else path)
    out: list[str] = []
    size = 0
    # A name that is not UTF-8 is spelled with \xNN escapes, as the row's command (copying.path_text): the index
    # takes text only, and the row's end would not be written.
    for name in dict.fromkeys(path_text(n) for n in names if "\n" not in n):
        if len(out) >= MAX_NAMES or size + len(name) + 1 > MAX_NAMES_CHARS:
            break
        out.append(name)
        size += len(name) + 1
    return "\n".join(out)


def _base(name: str) -> str:
    return posixpath.basename(name.rstrip("/"))


def named_uploads(command: str, uploads: Iterable[tuple[str, str | None]]) -> list[str]:
    """The ids of `uploads` ((id, files column), most recent first) that `command` names: a word of the command
    whose last path component is the last component of one of the upload's names."""
    words = {_base(word) for word in _WORD_SEPARATORS.split(command)}
    words -= {"", ".", ".."}
    out = []
    for upload_id, files in uploads:
        if files and any(_base(name) in words for name in files.split("\n")):
            out.append(upload_id)
    return out


# What a session's typed input (or piped stdin) may add to its links: the distinct words of at most this many
# bytes of it, at most this many characters of words in all (a session that types more is linked by what came
# first: its transcript has the rest).
TYPED_EXAMINED = 1024 * 1024
TYPED_KEPT = 16 * 1024
_ERASE = ("\x7f", "\b")
# A word of typed input: a run of characters that are neither the command's separators nor control characters.
_KEY_SEQUENCE = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|.)?")
_TYPED_WORD = re.compile(r"[^\s;&|<>()`$'\"=,{}\x00-\x1f\x7f-\x9f]+")


class TypedWords:
    """The words a session's operator typed (or piped), gathered as the input passes, for `named_uploads` at the
    session's end: `sh x.sh` typed at a prompt names x.sh. A backspace erases the character before it in the
    word being typed (in keystroke-sized pieces); escape sequences and control characters separate words."""

    def __init__(self) -> None:
        self.words: dict[str, None] = {}
        self.size = 0
        self.examined = 0
        self._word = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> None:
        if self.examined >= TYPED_EXAMINED or self.size >= TYPED_KEPT:
            return
        data = data[: TYPED_EXAMINED - self.examined]
        self.examined += len(data)
        text = self._word + self._decoder.decode(data)
        if len(text) <= 4096 and ("\x7f" in text or "\b" in text):
            text = _erased(text)  # keystrokes; in a longer piece (piped), a backspace only separates words
        if "\x1b" in text:
            text = _KEY_SEQUENCE.sub(" ", text)  # an arrow or a function key separates words
        words = _TYPED_WORD.findall(text)
        # A word running to the end of the input may go on in the next keystrokes.
        self._word = words.pop()[-4096:] if words and _TYPED_WORD.fullmatch(text[-1]) else ""
        for word in words:
            self._add(word)

    def _add(self, word: str) -> None:
        if word not in self.words and self.size + len(word) + 1 <= TYPED_KEPT:
            self.words[word] = None
            self.size += len(word) + 1

    def text(self) -> str:
        """The words, space-separated (the word being typed at the end included)."""
        if self._word:
            self._add(self._word)
            self._word = ""
        return " ".join(self.words)


def _erased(text: str) -> str:
    """`text` with each backspace (DEL or BS) and the character before it removed, as a line editor shows it."""
    out: list[str] = []
    for char in text:
        if char in _ERASE:
            if out:
                out.pop()
        else:
            out.append(char)
    return "".join(out)
