"""What one worker's part of a fleet run runs, as the master that runs the part and a four-eyes worker's
moderators see it: the command that runs a script given on stdin (`SCRIPT_RUNNER`), the bound on a script, and the
part's text in an approval request (`part_text`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAX_SCRIPT = 256 * 1024  # bytes of a --script

# The command that runs a script given on stdin: a private temporary file (mktemp: mode 0600 in $TMPDIR), made
# executable for its owner only, run with stdin closed, removed, the script's own exit status kept.
SCRIPT_RUNNER = ('f=$(mktemp "${TMPDIR:-/tmp}/slaveshell-run.XXXXXXXX") || exit 127; '
                 'trap \'rm -f "$f"\' EXIT; cat > "$f" && chmod 700 "$f" && "$f" </dev/null')


def part_text(run: str, command: str, script: bytes | None, env: Iterable[tuple[str, str]], cwd: str | None) -> str:
    """A run's part as its approval request on a four-eyes worker shows it (escaped where shown): the command, or
    the script (its size, sha256 and text: bytes that are not UTF-8 as \\xNN, nothing hidden); the variables and
    directory. `run` names the run ("<id>", or "<id> of master A" for a part routed from another master)."""
    if script is not None:
        what = (f"script of {len(script)} bytes (sha256 {hashlib.sha256(script).hexdigest()}): "
                f"{script.decode('utf-8', 'backslashreplace')}")
    else:
        what = f"command: {command}"
    variables = " ".join(f"{k}={v}" for k, v in env)
    return (f"fleet run {run}, {what}" + (f" with variables {variables}" if variables else "")
            + (f" in {cwd}" if cwd else ""))
