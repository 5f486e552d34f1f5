"""Links from a session to the uploads its command names: `slaveshell cp x.sh w1:` then `buildbot-shell w1 --
sh x.sh`. The upload's row keeps the names its files may have on the worker (`upload_names`, the `files` column);
a later session on that worker whose command names one of them (`named_uploads`) gets the upload's id in its
`uploads` column (docs/audit-schema.md). A link is a pointer for the auditor, not a proof: a command that builds
the name at run time (a glob, a variable, a rename first) names no upload; the upload's bytes stay findable by
search either way.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

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
    file's new name)."""
    names: list[str] = []
    base = dest.rstrip("/") or dest
    if single_file and base and not dest.endswith("/") and base not in (".", ".."):
        names.append(base)
    for path in files:
        names.append(posixpath.join(base, path) if base not in ("", ".") else path)
    out: list[str] = []
    size = 0
    for name in dict.fromkeys(n for n in names if "\n" not in n):
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
