"""`slaveshell cp [-r] [-p] [--build ID] SRC... DST`: copy files to or from a worker, as scp does.

Exactly one side is remote, spelled ``WORKER:PATH`` (a colon before any slash; write ``./a:b`` for a local
name with a colon). Remote paths are absolute, or relative to the worker's basedir (to the held build's
directory with ``--build ID``). The transfer goes through the master (policy: the 'copy' right; audited as a
transfer: `slaveshell history` lists it) over the framed hop (slaveshell.client.copy_client); files arrive in temporary
files next to their destination and are renamed once complete and fsynced, so a failure, a Ctrl-C or a lost
worker leaves nothing partial.

A progress bar (prompt_toolkit's) on a terminal's standard error; nothing in a pipe. Every error and warning line
starts with PREFIX (``slaveshell cp: ``), argparse's usage errors included, as scp's all start with ``scp: ``.
Exit status: 0 when every file is in place, 1 with a one-line reason otherwise (as scp), 130 after Ctrl-C (or
SIGTERM, SIGHUP), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from slaveshell.client.connection import EventLoop, HopError, Link
from slaveshell.client.copy_client import PREFIX, CopyClient, Interrupted, Progress, run
from slaveshell.files.receiver import Receiver
from slaveshell.files.sender import TransferError, plan
from slaveshell.vocabulary.copying import DOWN, UP, TransferRequest, path_text
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import ProtocolError


def split_remote(arg: str) -> tuple[str, str] | None:
    """("worker", "path") for ``WORKER:PATH``, None for a local path (no colon, or a slash before it)."""
    head, colon, tail = arg.partition(":")
    if not colon or not head or "/" in head:
        return None
    return head, tail


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="slaveshell cp", description=__doc__.split("\n")[0])
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-r", dest="recursive", action="store_true", help="copy directories recursively")
    p.add_argument("-p", dest="preserve", action="store_true", help="preserve modes and modification times")
    p.add_argument("-q", dest="quiet", action="store_true", help="no progress bar")
    p.add_argument("--build", type=int, metavar="BUILDID",
                   help="relative worker paths are in this held build's directory (HoldForShell)")
    p.add_argument("--reason", metavar="TEXT",
                   help="why you copy (a ticket, an incident): one line, kept in the audit index; a policy rule may "
                        "require it")
    p.add_argument("paths", nargs="+", metavar="PATH", help="sources, then the destination; WORKER:PATH is remote")


def request_of(args: argparse.Namespace) -> TransferRequest:
    """The transfer `args` ask for; ValueError with the reason when it makes no sense."""
    if len(args.paths) < 2:
        raise ValueError("cp needs at least one source and a destination")
    *sources, dest = args.paths
    remote_sources = [split_remote(s) for s in sources]
    remote_dest = split_remote(dest)
    if remote_dest is not None and not any(remote_sources):
        worker, path = remote_dest
        return TransferRequest(UP, worker, tuple(sources), path or ".", args.recursive, args.preserve, args.build,
                               reason=getattr(args, "reason", None))
    if remote_dest is None and all(remote_sources):
        workers = {r[0] for r in remote_sources if r is not None}
        if len(workers) != 1:
            raise ValueError("all remote sources must be on the same worker")
        return TransferRequest(DOWN, workers.pop(), tuple(r[1] or "." for r in remote_sources if r is not None),
                               dest, args.recursive, args.preserve, args.build, reason=getattr(args, "reason", None))
    raise ValueError("exactly one side must be remote (WORKER:PATH): copies between workers, or local ones, "
                     "are not done by slaveshell cp")


def cmd_cp(args: argparse.Namespace, socket_path: str) -> int:
    """The copy `args` ask for, its lines on stderr; the exit status."""
    try:
        return _copy(args, socket_path)
    except KeyboardInterrupt:  # before the transfer's loop takes the signals (a large tree being listed)
        print(f"{PREFIX}interrupted", file=sys.stderr)
        return 130


def _copy(args: argparse.Namespace, socket_path: str) -> int:
    try:
        request = request_of(args)
        request.validate()
    except (ValueError, ProtocolError) as e:
        print(f"{PREFIX}{visible(str(e))}", file=sys.stderr)
        return 2
    planned, receiver = None, None
    try:
        if request.direction == UP:
            planned = plan(list(request.sources), request.recursive)
            request = TransferRequest(UP, request.worker, tuple(p.entry.path for p in planned
                                                                 if "/" not in p.entry.path),
                                      request.dest, request.recursive, request.preserve, request.build,
                                      reason=request.reason)
        else:
            if len(request.sources) > 1 and not os.path.isdir(request.dest):
                raise TransferError(f"{request.dest}: target is not a directory")
            receiver = Receiver(request.dest, request.preserve, asked=request.asked())
    except TransferError as e:
        print(f"{PREFIX}{visible(path_text(str(e)))}", file=sys.stderr)
        return 1
    show = not args.quiet and sys.stderr.isatty()
    title = visible(" ".join(args.paths[:-1]))[:40]

    def make(loop: EventLoop, link: Link) -> CopyClient:
        return CopyClient(loop, link, request, planned, receiver,
                          lambda total: Progress(title, total, sys.stderr if show else None))

    try:
        ok, reason = run(socket_path, make)
    except Interrupted:
        if receiver is not None:
            receiver.abort()
        print(f"{PREFIX}interrupted", file=sys.stderr)
        return 130
    except HopError as e:
        print(f"{PREFIX}{visible(str(e).splitlines()[0] if str(e) else type(e).__name__)}", file=sys.stderr)
        return 1
    if not ok:
        print(f"{PREFIX}{visible(path_text(reason.splitlines()[0]) if reason else 'the transfer failed')}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python3 -m slaveshell.client.copy_cli --socket PATH ...` (the tests and the bench start it so)."""
    from slaveshell.client.shell_cli import find_socket

    p = argparse.ArgumentParser(prog="slaveshell cp")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--master", metavar="DIR")
    where.add_argument("--socket", metavar="PATH")
    add_arguments(p)
    args = p.parse_args(argv)
    return cmd_cp(args, find_socket(args))


if __name__ == "__main__":
    sys.exit(main())
