"""`buildbot-shell`: an ssh-like shell on a Buildbot worker, from the master host.

Exit status: the remote command's; 128+N when it died of signal N; 255 (with a message on stderr) when the
session was refused, the connection was lost, `~.` ended it or the arguments were wrong (as ssh: a remote status
of 2 is not mistaken for a usage error).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from slaveshell import __version__
from slaveshell.vocabulary.protocol import LocalProtocolError, OpenRequest

if TYPE_CHECKING:
    from slaveshell.client.connection import Connection, Loop
    from slaveshell.client.shell_session import HopShell
    from slaveshell.client.terminal import RawTerminal

DEFAULT_SOCKET_NAME = "shell.sock"
SOCKET_ENV = "SLAVESHELL_SOCKET"


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 255, as ssh's own errors do: 2 is a remote command's status."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(255, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="buildbot-shell",
        usage="%(prog)s [-h] [-V] [--master DIR | --socket PATH] [-t | -T] [-e NAME=VALUE]... [-C DIR] [--pause]\n"
              "                      [--builder NAME] [--build ID] [--reason TEXT] [-E CHAR] WORKER [COMMAND...]",
        description="Open a shell (or run a command) on a Buildbot worker through its master.",
        epilog="Escapes (after a newline, in a terminal session): ~. end, ~d detach, ~^Z suspend, ~r release the "
           "held build (with --build), ~? help, ~~ a literal ~. Exit status, as ssh's: the remote command's, 128+N "
           "when it died of signal N, 255 when buildbot-shell failed (refused, connection lost, ~., bad arguments).",
    )
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s (slaveshell) {__version__}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--master", metavar="DIR", help="the master's basedir (its socket is DIR/shell.sock)")
    where.add_argument("--socket", metavar="PATH", help="the master's slaveshell socket")
    tty = p.add_mutually_exclusive_group()
    tty.add_argument("-t", dest="tty", action="store_const", const=True, help="force a PTY")
    tty.add_argument("-T", dest="tty", action="store_const", const=False, help="never a PTY")
    p.add_argument("-e", dest="env", metavar="NAME=VALUE", action="append", default=[],
                   help="set an environment variable in the session (repeatable)")
    p.add_argument("-C", dest="cwd", metavar="DIR",
                   help="working directory on the worker (relative: to the worker's basedir)")
    p.add_argument("--pause", action="store_true",
                   help="pause the worker in Buildbot (no new builds) while the session lasts")
    p.add_argument("--builder", metavar="NAME", help="start in this builder's build directory on the worker")
    p.add_argument("--build", metavar="ID", type=int,
                   help="step into a build held by HoldForShell: its directory and environment (~r releases it); "
                        "on a build still running toward its hold, wait for the hold")
    p.add_argument("--reason", metavar="TEXT",
                   help="why you open this session (a ticket, an incident): one line, kept in the audit index and "
                        "the transcript; a policy rule may require it")
    p.add_argument("-E", dest="escape", metavar="CHAR", default="~",
                   help="escape character, or 'none' to disable escapes (default: ~)")
    # Optional to argparse only so that its error names WORKER alone, not the COMMAND that may follow it.
    p.add_argument("worker", metavar="WORKER", nargs="?",
                   help="the worker, by its name in Buildbot (slaveshell workers lists them)")
    p.add_argument("command", metavar="COMMAND", nargs=argparse.REMAINDER,
                   help="command to run instead of a login shell (as with ssh, words are joined by spaces)")
    return p


def find_socket(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.master:
        return os.path.join(args.master, DEFAULT_SOCKET_NAME)
    return default_socket()


def default_socket() -> str:
    """The socket found without --socket or --master: $SLAVESHELL_SOCKET, else ./shell.sock."""
    return os.environ.get(SOCKET_ENV) or os.path.join(os.getcwd(), DEFAULT_SOCKET_NAME)


def socket_words(socket_path: str) -> str:
    """What a command printed for the operator to run later needs to reach this master: ``--socket PATH``,
    nothing when the socket is the one found without it."""
    import shlex

    if os.path.abspath(socket_path) == os.path.abspath(default_socket()):
        return ""
    return " --socket " + shlex.quote(os.path.abspath(socket_path))


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"-e wants NAME=VALUE, not {item!r}")
        env[name] = value
    return env


# SIGINTs that arrived before the client's own handlers: a KeyboardInterrupt raised inside an import (Twisted's are
# slow) can leave an import lock held and hang the interpreter, so until then a SIGINT is only noted.
_EARLY_SIGINT: list[int] = []


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, lambda signum, frame: _EARLY_SIGINT.append(signum))
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before our own handler is installed, or after it is gone
        print("buildbot-shell: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker is None:
        parser.error("the following argument is required: WORKER")
    command_words = list(args.command)
    if command_words and command_words[0] == "--":
        command_words = command_words[1:]
    command = " ".join(command_words) if command_words else None

    from slaveshell.client.terminal import stdin_is_tty, window_size

    local_tty = stdin_is_tty()
    use_pty = args.tty if args.tty is not None else (command is None and local_tty)
    if args.escape == "none":
        escape_char = None
    elif len(args.escape.encode()) == 1:
        escape_char = args.escape.encode()
    else:
        parser.error("-E takes one character or 'none'")
    size = window_size(0) or window_size(1) or (80, 24)
    try:
        request = OpenRequest(
            worker=args.worker,
            command=command,
            pty=use_pty,
            term=os.environ.get("TERM", "dumb") or "dumb",
            cols=size[0],
            rows=size[1],
            env=parse_env(args.env),
            cwd=args.cwd,
            pause=args.pause,
            builder=args.builder,
            build=args.build,
            reason=args.reason,
        )
    except (LocalProtocolError, ValueError) as e:
        parser.error(str(e))
    if args.tty is None and command is None and not local_tty:
        # A login asked for without a terminal to drive it (`buildbot-shell w1 < script`): no PTY, and said so, as
        # ssh says it (its words, so that scripts and people who know them read them the same).
        print("Pseudo-terminal will not be allocated because stdin is not a terminal.", file=sys.stderr)
    interactive = use_pty and local_tty
    return run(find_socket(args), request, interactive, escape_char)


def run(socket_path: str, request: OpenRequest, interactive: bool, escape_char: bytes | None,
        attach: tuple[str, str] | None = None) -> int:
    """One session over the framed hop (slaveshell.client.shell_session): standard library only, no Twisted."""
    from slaveshell.client.connection import Connection, HopError, Loop, ask_ahead, connect, not_a_stream, passable
    from slaveshell.vocabulary.display import visible
    from slaveshell.vocabulary.framing import MAX_OUTPUT, Op
    from slaveshell.vocabulary.protocol import ExitStatus

    prog = "slaveshell" if attach else "buildbot-shell"
    for name, fd in (("standard input", 0), ("standard output", 1)):
        kind = not_a_stream(fd)
        if kind is not None:  # before anything is asked of the master
            print(f"{prog}: its {name} is {kind}, not a stream of bytes: give it a pipe, a file, a terminal or a "
                  "connected stream socket", file=sys.stderr)
            return 255
    try:
        sock = connect(socket_path)
    except HopError as e:
        print(f"{prog}: {visible(str(e))}", file=sys.stderr)
        return 255
    conn = Connection(sock, max_output=MAX_OUTPUT)  # as HopShell declares it
    # The session is asked for first: the master records and opens it, and the worker starts the login shell,
    # while this client loads the rest of itself (its answer is read once the loop runs).
    passing = passable(request) if attach is None else ()
    asked = ask_ahead(conn, request, attach, passing)
    try:
        from slaveshell.client.terminal import RawTerminal, raw_mode, set_blocking

        terminal = RawTerminal(0) if interactive else None
        loop = Loop()
        client = _session(loop, conn, request, interactive, escape_char, attach, terminal, passing)
    except BaseException:
        # The session opening for nobody: ended as soon as it has opened (the master's close while it opens),
        # rather than left detached for its grace. (Leaving a session joined with attach only detaches us.)
        if asked is not None and attach is None:
            conn.control(Op.CLOSE, id=conn.next_id())
        conn.close()
        raise
    client.reach = socket_words(socket_path)
    # Our own handlers: each only notes the signal, and the loop hands it to the client (HopShell.signalled).
    handlers: dict[int, Callable[[int, FrameType | None], None]] = {
        signum: loop.note_signal for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)
    }
    if terminal is not None:
        handlers[signal.SIGTSTP] = lambda signum, frame: _suspend(terminal, loop)
        handlers[signal.SIGCONT] = lambda signum, frame: _continued(terminal, loop)
    with raw_mode(terminal) if terminal else contextlib.nullcontext():
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        if _EARLY_SIGINT:  # Ctrl-C while starting: handled now, as if it came now
            loop.note_signal(signal.SIGINT)
        try:
            for fd in (1, 2):  # writes never block the loop (signals and the master keep being served)
                with contextlib.suppress(OSError):
                    os.set_blocking(fd, False)
            try:
                client.start(asked)
                if not client.done:
                    loop.run()
            except Exception as e:  # a bug of ours still ends the client with one line, not a traceback
                client.finish(ExitStatus(reason=f"internal error: {type(e).__name__}: {e}"))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            set_blocking(0, 1, 2)
            sock.close()
            loop.close()
    status = client.status or ExitStatus(reason="interrupted")
    # What the master or the worker says (reasons, names) is shown, never interpreted.
    if client.farewell:
        # The cursor is wherever the remote prompt left it.
        print(("\r\n" if interactive else "") + visible(client.farewell), file=sys.stderr)
    elif status.lost:
        print(f"{prog}: {visible(status.reason)}", file=sys.stderr)
    elif interactive:
        print(f"Connection to {visible(client.worker)} closed.", file=sys.stderr)
    return status.cli_status()


def _session(loop: Loop, conn: Connection, request: OpenRequest, interactive: bool,
             escape_char: bytes | None, attach: tuple[str, str] | None, terminal: RawTerminal | None,
             passing: tuple[str, ...] = ()) -> HopShell:
    """The client on `loop`, with the connection's events wired to it; `passing`: the streams whose descriptors
    go to the master with the open (slaveshell.client.connection.passable)."""
    from slaveshell.client.connection import HopError, widen_send
    from slaveshell.client.shell_session import HopShell
    from slaveshell.vocabulary.framing import WireError

    sock = conn.sock
    if not request.pty:
        widen_send(sock)  # a pipe into `-T`: its bulk input messages go to the kernel whole
    client = HopShell(loop, conn, request, interactive=interactive, escape_char=escape_char, attach=attach,
                      suspend=terminal.suspend if terminal else None,
                      passing=passing)
    fd = sock.fileno()

    def lost(error: HopError) -> None:
        loop.watch(fd, selectors.EVENT_READ, None)
        loop.watch(fd, selectors.EVENT_WRITE, None)
        client.lost(error)

    def readable() -> None:
        try:
            frames = conn.receive()
            for frame in frames:
                client.frame(frame)
        except HopError as e:
            lost(e)
        except WireError as e:
            conn.close()
            lost(HopError(f"the master broke the protocol: {e}"))

    def before_wait() -> None:
        if conn.closed:
            return
        conn.flush()
        loop.watch(fd, selectors.EVENT_WRITE, conn.flush if conn.out else None)

    def on_signal(signum: int) -> None:
        if signum == signal.SIGWINCH:
            client.window_changed()
        elif signum == signal.SIGCONT:
            client.resumed()
        else:
            client.signalled(signum)

    loop.watch(fd, selectors.EVENT_READ, readable)
    loop.before_wait = before_wait
    loop.on_signal = on_signal
    return client


def _suspend(terminal: RawTerminal, loop: Loop) -> None:
    """SIGTSTP (kill -TSTP; Ctrl-Z is a byte in raw mode): stop now, with the terminal given back."""
    terminal.suspend()
    loop.note_signal(signal.SIGCONT)


def _continued(terminal: RawTerminal, loop: Loop) -> None:
    terminal.resume()
    loop.note_signal(signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
