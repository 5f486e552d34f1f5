"""`slaveshell.shell_cli`: the `buildbot-shell` console script's target; the code is slaveshell.client.shell_cli
(whose `main` returns the status: call that one in a process that goes on).

The script ends its process as soon as the session is over: what Python holds for stdout and stderr written, then
os._exit with the session's status, without the interpreter's teardown (every module's objects freed and
collected: 15-50 ms of CPU on a loaded 2-core machine, after the last byte was written, while stdout stayed open
and whoever waited for it, a pipe's reader or a shell, waited on). Nothing of the client needs that teardown: it
registers no exit handler and leaves no thread behind; its terminal and its descriptors are restored before `main`
returns. A usage error or a crash still ends through the interpreter (SystemExit, a traceback).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from slaveshell.client.shell_cli import main as client_main

__all__ = ["main"]


def main(argv: list[str] | None = None) -> NoReturn:
    """`buildbot-shell` (`argv`: its arguments, by default the process's): the session, then the process ends
    with its status."""
    os._exit(flushed(client_main(argv)))


def flushed(status: int) -> int:
    """`status`, once stdout and stderr are flushed; 120 when stdout could not be, as the interpreter's own exit
    says a failed flush of stdout."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a reader gone, a full disk; a stream closed
            if stream is sys.stdout:
                status = 120
    return status


if __name__ == "__main__":
    main()
