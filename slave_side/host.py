"""What the worker's owner allows, and the setting a session's process starts in. No I/O beyond reading the
password database and checking a directory; nothing from PB.

`WorkerOptions` come from `slave_side.install(...)`; `Admission` decides whether the master may open one more
session here (the owner's list of operators, the number of sessions at once) and names it. `ProcessReactor` and
`ProcessTransport` are the parts of Twisted's process API (IReactorProcess, IProcessTransport) the session uses,
as typing Protocols.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.protocol import ProcessProtocol

from slaveshell.plumbing.clock import Clock
from slaveshell.vocabulary.protocol import OUTPUT_WINDOW, OpenRequest, ProtocolError


class ProcessTransport(Protocol):
    """A spawned process as the session drives it (IProcessTransport, and the push producer behind its output)."""

    pid: int | None

    def write(self, data: bytes) -> None: ...
    def closeStdin(self) -> None: ...
    def closeChildFD(self, childFD: int) -> None: ...
    def loseConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class ProcessReactor(Clock, Protocol):
    """The reactor as the session uses it: time, timers and spawnProcess (IReactorProcess)."""

    def spawnProcess(self, processProtocol: ProcessProtocol, executable: str, args: Sequence[str],
                     env: Mapping[str, str] | None = None, path: str | None = None, uid: int | None = None,
                     gid: int | None = None, usePTY: bool | tuple[int, int, str] = False,
                     childFDs: Mapping[int, int | str] | None = None) -> ProcessTransport: ...


@dataclass(frozen=True)
class WorkerOptions:
    """What the worker owner allows, from `slave_side.install(...)`."""

    shell: str | None = None
    max_sessions: int = 8
    allowed_dirs: tuple[str, ...] | None = None
    output_window: int = OUTPUT_WINDOW
    # The largest output window a master may grant one session (bytes sent and not yet acknowledged, which this
    # worker holds): the window follows the link's bandwidth-delay product up to it (slaveshell.vocabulary.windows).
    max_window: int = 4 * 1024 * 1024
    # A session's output may go deflated while its link is slow (slaveshell.vocabulary.deflate: a little of this
    # worker's CPU for a build log's bytes on a slow line, as `ssh -C`); False: never; ALWAYS: whatever the link.
    deflate: bool | str = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # Operators (as the master names them) this worker accepts; None: whoever the master allows.
    allowed_users: frozenset[str] | None = None
    # While a build step runs on this worker, a session's output (and what a `slaveshell cp` from it sends) is paced
    # to this many bytes per second after a burst of BUSY_BURST (a `yes` flood otherwise takes the build's CPU:
    # bench/run.py's build row); 0: never.
    busy_rate: int = 8 * 1024 * 1024
    # The file mode creation mask a session's process starts with and a copy's new files get their modes by, as
    # a login's (022, as login(1) and sshd leave it); None: the worker daemon's own (twistd's 077).
    umask: int | None = 0o022

    def login_shell(self) -> str:
        if self.shell:
            return self.shell
        try:
            shell = pwd.getpwuid(os.getuid()).pw_shell
        except KeyError:
            shell = ""
        return shell or os.environ.get("SHELL") or "/bin/sh"


@contextlib.contextmanager
def login_umask(options: WorkerOptions) -> Iterator[None]:
    """The owner's `umask` (WorkerOptions.umask) in force in the `with` body, the daemon's again after: around
    starting a session's process (the child inherits it at the fork) and making a copy's receiver (which takes
    the mask in force then). The mask is the process's: the body is short and runs in the reactor's thread, and
    this worker creates files in other threads only with explicit modes (a copy's commit)."""
    if options.umask is None:
        yield
        return
    previous = os.umask(options.umask)
    try:
        yield
    finally:
        os.umask(previous)


def session_environment(request: OpenRequest, options: WorkerOptions, shell: str) -> dict[str, str]:
    """A login-like environment, as sshd builds one: not the worker daemon's whole environment."""
    try:
        pw = pwd.getpwuid(os.getuid())
        user, home = pw.pw_name, pw.pw_dir
    except KeyError:
        user, home = str(os.getuid()), os.environ.get("HOME", "/")
    env = {
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": shell,
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
    }
    for name in ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(options.extra_env)
    if request.pty:
        env["TERM"] = request.term
    env.update(request.env)
    return env


def resolve_cwd(request: OpenRequest, options: WorkerOptions, basedir: str) -> str:
    path = request.cwd or basedir
    if not os.path.isabs(path):
        path = os.path.join(basedir, path)
    given = request.cwd or "(the worker's base directory)"
    path = os.path.realpath(path)
    # The refusals name the directory as it was asked for, never where it resolves (a symlink's target).
    if options.allowed_dirs is not None:
        allowed = [os.path.realpath(d) for d in options.allowed_dirs]
        if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in allowed):
            raise ProtocolError(f"working directory {given} is outside the directories this worker allows")
    if not os.path.isdir(path):
        raise ProtocolError(f"no such directory on the worker: {given}")
    return path


class Admission:
    """The owner's limits on opening sessions, and the names of those it admits."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self._ids = itertools.count(1)

    def admit(self, request: OpenRequest, live: int) -> str:
        """A new session id for `request` while `live` sessions run; ProtocolError with the refusal the operator
        sees when the owner's list of operators or the number of sessions at once refuses it."""
        allowed = self.options.allowed_users
        if allowed is not None and request.operator not in allowed:
            raise ProtocolError(f"this worker's owner does not allow {request.operator or 'anonymous'} "
                                "to open shells here")
        if live >= self.options.max_sessions:
            raise ProtocolError(f"the worker allows at most {self.options.max_sessions} shell sessions at once")
        return f"w{next(self._ids)}"
