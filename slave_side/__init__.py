"""slaveshell, the worker's half. The worker owner opts in with one line in `buildbot.tac`, before the
`Worker` is created::

    import slave_side; slave_side.install()

Only this import happens on the worker: no SQLAlchemy, no prompt_toolkit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from slave_side import upstream
from slave_side.owner_log import DEFAULT_BACKUPS, DEFAULT_KEEP_TRANSCRIPTS, DEFAULT_MAX_BYTES, OwnerLog
from slave_side.server import ShellServer
from slave_side.session import WorkerOptions
from slave_side.transfer import TransferServer
from slaveshell.vocabulary.copying import WORKER_TRANSFER_METHOD
from slaveshell.vocabulary.deflate import deflate_setting
from slaveshell.vocabulary.protocol import WORKER_COMMAND, WORKER_OPEN_METHOD

__all__ = ["install", "uninstall", "WorkerOptions", "ShellServer"]

_server: ShellServer | None = None
_transfers: TransferServer | None = None


def install(
    enabled: bool = True,
    shell: str | None = None,
    max_sessions: int = 8,
    allowed_dirs: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
    allowed_users: Iterable[str] | None = None,
    busy_rate: int = WorkerOptions.busy_rate,
    umask: int | None = WorkerOptions.umask,
    local_log: str | None = None,
    local_transcripts: bool = False,
    local_log_max_bytes: int = DEFAULT_MAX_BYTES,
    local_log_backups: int = DEFAULT_BACKUPS,
    local_transcripts_keep: int = DEFAULT_KEEP_TRANSCRIPTS,
    local_log_mode: int = 0o600,
    max_window: int = 4 * 1024 * 1024,
    deflate: bool | str = True,
) -> ShellServer | None:
    """Let this worker's master open shell sessions on it.

    enabled: False leaves the worker exactly as it was (nothing advertised, nothing reachable).
    shell: the program for login shells and commands (default: the worker user's login shell).
    max_sessions: sessions at once; more are refused with a message to the operator.
    allowed_dirs: if given, sessions may only start in these directories or below them.
    env: extra environment variables for every session.
    allowed_users: if given, only these operators (user names on the master host, as the master reports them)
        may open sessions here, whatever the master's policy says.
    busy_rate: while a build step runs on this worker, each session's output, and what each `slaveshell cp`
        from this worker sends, is paced to this many bytes per second once a 1 MiB burst is spent, so that a
        flood in a shell or a large download does not take the build's CPU; 0: never.
    umask: the file mode creation mask sessions start with and copies to this worker apply to new files'
        modes (without -p), as a login's: 0o022 by default, not the worker daemon's (twistd's 0o077); None keeps
        the daemon's.
    local_log: the owner's own record (slave_side.owner_log): a file on this worker's disk where the worker writes
        a line per session and transfer (when, operator, command or paths, outcome, session id), whatever the
        master logs. None: no such file.
    local_transcripts: with local_log, each session's output is also kept beside it as an asciicast v2 file.
    local_log_max_bytes: the log is rotated past this size, and a transcript is cut at it.
    local_log_backups: rotated logs kept (`PATH.1` ... `PATH.N`).
    local_transcripts_keep: transcripts kept; the oldest are removed.
    local_log_mode: the permissions the log and the transcripts are created with.
    max_window: the most output (bytes) a session may have sent and not yet acknowledged, which this worker then
        holds: a session's window grows to the link's bandwidth-delay product, as far as the master grants and this
        allows (at least the 256 KiB base).
    deflate: a session's output without a terminal (-T), and input piped to it, may go deflated (zlib's fastest
        level) while its link is slow (a round trip of 10 ms or more, as the kernel's TCP measures it on the
        master's connection) and it deflates well, as `ssh -C` does for a whole connection; False: never;
        "always": whatever the round trip (a link whose delay TCP does not see: a tunnel or a proxy that ends
        TCP near this worker).
    """
    global _server, _transfers
    if not enabled:
        uninstall()
        return None
    if max_sessions < 1:
        raise ValueError("max_sessions must be at least 1")
    if umask is not None and not 0 <= umask <= 0o777:
        raise ValueError("umask must be between 0 and 0o777")
    from buildbot_worker.commands import registry

    options = WorkerOptions(
        shell=shell,
        max_sessions=max_sessions,
        allowed_dirs=tuple(allowed_dirs) if allowed_dirs is not None else None,
        extra_env=dict(env or {}),
        allowed_users=frozenset(allowed_users) if allowed_users is not None else None,
        busy_rate=max(0, int(busy_rate)),
        umask=umask,
        max_window=max(0, int(max_window)),
        deflate=deflate_setting(deflate),
    )
    # An upload's 256 KiB chunks without Banana's buffer rebuilt on each read (slaveshell.plumbing.banana_buffer), what
    # the master's connection may make Banana hold bounded (slaveshell.plumbing.banana_bounds), BotPb's methods: each
    # checked against the upstream code first (slave_side.upstream). Without them, no shells on this worker.
    if not upstream.install():
        uninstall()
        return None
    owner_log = None
    if local_log is not None:
        owner_log = OwnerLog(local_log, max_bytes=local_log_max_bytes, backups=local_log_backups,
                             transcripts=local_transcripts, keep_transcripts=local_transcripts_keep,
                             mode=local_log_mode)
    _server = ShellServer(options, owner_log=owner_log)
    # `slaveshell cp`: the same opt-in, the same limits (slave_side.transfer).
    _transfers = TransferServer(options, owner_log=owner_log)
    # The master learns what a worker can do from its command list; this entry is how it knows we opted in.
    registry.commandRegistry[WORKER_COMMAND] = _NotABuildCommand
    upstream.add_bot_methods({WORKER_OPEN_METHOD: _remote_open, WORKER_TRANSFER_METHOD: _remote_transfer})
    return _server


def uninstall() -> None:
    global _server, _transfers
    from buildbot_worker.commands import registry

    _server = None
    _transfers = None
    registry.commandRegistry.pop(WORKER_COMMAND, None)
    upstream.remove_bot_methods((WORKER_OPEN_METHOD, WORKER_TRANSFER_METHOD))


class _Bot(Protocol):
    """buildbot_worker's Bot (BotPb), as far as opening a session needs it."""

    basedir: str


def _remote_open(bot: _Bot, sink: object, params: object) -> dict[str, object]:
    if _server is None:
        return {"ok": False, "error": "shell sessions are disabled on this worker"}
    return _server.open(str(bot.basedir), sink, params, build_running=lambda: _step_running(bot))


def _step_running(bot: object) -> bool:
    """Whether one of the bot's builders runs a step command now (buildbot_worker.pb.WorkerForBuilderPbLike
    sets `protocol_command` for the command's life)."""
    builders = getattr(bot, "builders", None)
    return isinstance(builders, dict) and any(getattr(b, "protocol_command", None) is not None
                                              for b in builders.values())


def _remote_transfer(bot: _Bot, sink: object, params: object) -> dict[str, object]:
    if _transfers is None:
        return {"ok": False, "error": "slaveshell is disabled on this worker"}
    return _transfers.open(str(bot.basedir), sink, params, build_running=lambda: _step_running(bot))


def _not_a_build_command() -> type:
    from buildbot_worker.commands.base import Command

    class NotABuildCommand(Command):
        """Advertised so the master knows the worker opted in; a build step cannot run it."""

        def start(self) -> None:
            raise RuntimeError("slaveshell sessions are opened with buildbot-shell, not from a build step")

    return NotABuildCommand


_NotABuildCommand = _not_a_build_command()
