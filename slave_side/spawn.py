"""Starting a session's process on the worker: the owner's login shell, or a command through it, in a new PTY or
on pipes in a process group of its own.

As sshd does: without a command, a login shell (argv[0] "-" + its name, login(1)); with one, `shell -c COMMAND`
(the command line goes through the user's shell). Without a PTY there is no new session from the terminal, so
`setsid` (or a Python trampoline calling setsid(2)) gives the command its own process group: signals and a close
reach its children and never the worker itself.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from twisted.internet.protocol import ProcessProtocol

from slave_side import pty as ptyutil
from slave_side.host import (
    ProcessReactor,
    ProcessTransport,
    WorkerOptions,
    login_umask,
    resolve_cwd,
    session_environment,
)
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError

_SETSID_TRAMPOLINE = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"


@dataclass(frozen=True)
class Spawned:
    """A started process: its transport, the PTY's master side (None on pipes), our own descriptor of the PTY's
    slave side (to close once the process has exited: see `spawn`), and the directory it runs in."""

    transport: ProcessTransport
    pty_fd: int | None
    slave_hold: int | None
    cwd: str


def spawn(reactor: ProcessReactor, proto: ProcessProtocol, request: OpenRequest, options: WorkerOptions,
          basedir: str) -> Spawned:
    """Start the session's process. Raises ProtocolError with an operator-facing message when it cannot (the
    directory refused by `resolve_cwd`, or the spawn's OSError)."""
    shell = options.login_shell()
    cwd = resolve_cwd(request, options, basedir)
    env = session_environment(request, options, shell)
    name = os.path.basename(shell)
    if request.command is None:
        argv = ["-" + name]  # a login shell, as login(1) and sshd start it
    else:
        argv = [name, "-c", request.command]  # as ssh: the command line goes through the user's shell
    hold = None
    try:
        if request.pty:
            master_fd, slave_fd, ttyname = ptyutil.open_pty(request.cols, request.rows)
            # A process that closes its standard descriptors before exiting (cat, as coreutils do) would otherwise
            # let the master read EIO first: Twisted then closes the master, and the kernel hangs up the terminal,
            # killing the still-living process with SIGHUP (exit 129 instead of 0). sshd likewise keeps the PTY
            # until the child has been reaped.
            hold = os.dup(slave_fd)
            with login_umask(options):
                transport = reactor.spawnProcess(proto, shell, argv, env, cwd, usePTY=(master_fd, slave_fd, ttyname))
            return Spawned(transport, master_fd, hold, cwd)
        setsid = shutil.which("setsid")
        if setsid:
            exe, full = setsid, [setsid, shell] + argv[1:]
        else:
            exe, full = sys.executable, [sys.executable, "-c", _SETSID_TRAMPOLINE, shell] + argv[1:]
        with login_umask(options):
            transport = reactor.spawnProcess(proto, exe, full, env, cwd, childFDs={0: "w", 1: "r", 2: "r"})
        return Spawned(transport, None, None, cwd)
    except OSError as e:
        if hold is not None:
            os.close(hold)
        raise ProtocolError(f"cannot start {shell} on the worker: {e.strerror or e}") from None
