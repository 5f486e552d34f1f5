"""`slaveshell cp [-r] [-p] [--build ID] SRC... DST`: copy files to or from a worker, as scp does.

Exactly one side is remote, spelled ``WORKER:PATH`` (a colon before any slash; write ``./a:b`` for a local
name with a colon). Remote paths are absolute, or relative to the worker's basedir (to the held build's
directory with ``--build ID``). The transfer goes through the master (policy: the 'copy' right; audited as a
transfer: `slaveshell history` lists it) over PB; files arrive in temporary files next to their destination and
are renamed once complete and fsynced, so a failure, a Ctrl-C or a lost worker leaves nothing partial.

A progress bar (prompt_toolkit's) on a terminal's standard error; nothing in a pipe. Exit status: 0 when every
file is in place, 1 with a one-line reason otherwise (as scp), 130 after Ctrl-C (or SIGTERM, SIGHUP), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .cpfiles import Receiver, Sender, TransferError, plan
from .cpwire import CHUNK, DOWN, ENTRY_COST, UP, Entry, TransferRequest, check_sha
from .display import visible
from .protocol import ProtocolError, check_bytes


def split_remote(arg: str) -> tuple[str, str] | None:
    """("worker", "path") for ``WORKER:PATH``, None for a local path (no colon, or a slash before it)."""
    head, colon, tail = arg.partition(":")
    if not colon or not head or "/" in head:
        return None
    return head, tail


class Progress:
    """A byte counter with prompt_toolkit's ProgressBar on a terminal's standard error (nothing otherwise)."""

    def __init__(self, title: str, total: int, enabled: bool) -> None:
        self.bar: Any = None
        self.counter: Any = None
        self._stack = contextlib.ExitStack()
        if not enabled:
            return
        from prompt_toolkit.input import create_pipe_input
        from prompt_toolkit.output import create_output
        from prompt_toolkit.shortcuts import ProgressBar

        # An input of its own that never sends anything: the bar never puts the terminal in raw mode (Ctrl-C
        # stays a SIGINT), and it does not end at once as with a closed input.
        keys = self._stack.enter_context(create_pipe_input())
        self.bar = self._stack.enter_context(ProgressBar(title=title, output=create_output(stdout=sys.stderr),
                                                         input=keys))
        self.counter = self.bar(label="bytes", total=max(total, 1))

    def add(self, n: int) -> None:
        if self.counter is not None:
            self.counter.items_completed += n
            self.bar.invalidate()

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            if ok:
                self.counter.done = True
            else:
                self.counter.stopped = True
            self.bar = None
        self._stack.close()


class CopyClient:
    """The operator's end of one transfer: the sink the master calls (as a pb.Referenceable, made in
    `_client_end`), and the local sender or receiver."""

    def __init__(self, request: TransferRequest, sender_plan: list[Any] | None, receiver: Receiver | None,
                 progress: Callable[[], Progress]) -> None:
        from twisted.internet import defer

        self.request = request
        self.plan = sender_plan
        self.receiver = receiver
        self.make_progress = progress
        self.progress: Progress | None = None
        self.handle: Any = None
        self.sender: Sender | None = None
        self.done: defer.Deferred[tuple[bool, str]] = defer.Deferred()

    def send(self, method: str, *args: object) -> None:
        from twisted.internet import defer

        kw = {"pbanswer": False} if method in ("entry", "data", "done_file", "ack") else {}
        defer.maybeDeferred(self.handle.callRemote, method, *args, **kw).addErrback(lambda _f: None)

    def _finish(self, ok: bool, reason: str) -> None:
        if self.receiver is not None and not ok:
            self.receiver.abort()
        if self.sender is not None:
            self.sender.close()
        if not self.done.called:
            self.done.callback((ok, reason))

    def lost(self) -> None:
        self._finish(False, "the connection to the master was lost during the transfer")

    def _local_failure(self, reason: str) -> None:
        """Our side failed (a write, a read, a bad message): clean up, tell the master, stop."""
        if self.done.called:
            return
        if self.receiver is not None:
            self.receiver.abort()
            self.send("result", False, reason)
        else:
            self.send("abort", reason)
        self._finish(False, reason)

    def guard(self, fn: Callable[[], None]) -> None:
        if self.done.called:
            return
        try:
            fn()
        except (TransferError, ProtocolError) as e:
            self._local_failure(str(e))

    def started(self, handle: Any, total: int) -> None:
        self.handle = handle
        self.progress = self.make_progress()
        if self.plan is not None:
            self.sender = Sender(self.plan, self.send, on_bytes=self.progress.add)
            self.guard(self.sender.pump)
        elif self.receiver is not None:
            self.receiver.on_bytes = self.progress.add

    # What the master calls (through _client_end's Referenceable).

    def ack(self, credit: object) -> None:
        if self.sender is not None:
            sender = self.sender
            self.guard(lambda: sender.ack(credit))

    def _receiving(self) -> Receiver:
        if self.receiver is None:
            raise ProtocolError("the master sent files to an upload")
        return self.receiver

    def entry(self, *args: object) -> None:
        def take() -> None:
            if len(args) != 5:
                raise ProtocolError("an entry has a kind, a path, a mode, a size and a time")
            self._receiving().entry(Entry.from_wire(*args))
            self.send("ack", ENTRY_COST)

        self.guard(take)

    def data(self, chunk: object) -> None:
        def write() -> None:
            data = check_bytes(chunk, "data", CHUNK)
            self._receiving().data(data)
            self.send("ack", len(data))

        self.guard(write)

    def done_file(self, sha256: object) -> None:
        def done() -> None:
            self._receiving().done_file(check_sha(sha256))
            self.send("ack", ENTRY_COST)

        self.guard(done)

    def finish(self) -> None:
        def commit() -> None:
            from twisted.internet import defer

            self._receiving().commit()
            # The files are in place; the audit row learns it before this process goes (the master's answer).
            d = defer.maybeDeferred(self.handle.callRemote, "result", True, "")
            d.addBoth(lambda _: self._finish(True, ""))

        self.guard(commit)

    def result(self, ok: object, reason: object) -> None:
        self._finish(ok is True, reason if isinstance(reason, str) else "the master ended the transfer")


def _client_end(client: CopyClient) -> Any:
    from twisted.spread import pb

    class ClientEnd(pb.Referenceable):
        def remote_entry(self, *args: object) -> None:
            client.entry(*args)

        def remote_data(self, chunk: object = None) -> None:
            client.data(chunk)

        def remote_done_file(self, sha256: object = None) -> None:
            client.done_file(sha256)

        def remote_finish(self) -> None:
            client.finish()

        def remote_ack(self, credit: object = None) -> None:
            client.ack(credit)

        def remote_result(self, ok: object = None, reason: object = None) -> None:
            client.result(ok, reason)

    return ClientEnd()


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
        return TransferRequest(UP, worker, tuple(sources), path or ".", args.recursive, args.preserve, args.build)
    if remote_dest is None and all(remote_sources):
        workers = {r[0] for r in remote_sources if r is not None}
        if len(workers) != 1:
            raise ValueError("all remote sources must be on the same worker")
        return TransferRequest(DOWN, workers.pop(), tuple(r[1] or "." for r in remote_sources if r is not None),
                               dest, args.recursive, args.preserve, args.build)
    raise ValueError("exactly one side must be remote (WORKER:PATH): copies between workers, or local ones, "
                     "are not done by slaveshell cp")


def cmd_cp(args: argparse.Namespace, socket_path: str) -> int:
    from .cli import Interrupted, with_master

    try:
        request = request_of(args)
        request.validate()
    except (ValueError, ProtocolError) as e:
        print(f"slaveshell cp: {e}", file=sys.stderr)
        return 2
    planned, receiver = None, None
    try:
        if request.direction == UP:
            planned = plan(list(request.sources), request.recursive)
            request = TransferRequest(UP, request.worker, tuple(p.entry.path for p in planned
                                                                 if "/" not in p.entry.path),
                                      request.dest, request.recursive, request.preserve, request.build)
        else:
            if len(request.sources) > 1 and not os.path.isdir(request.dest):
                raise TransferError(f"{request.dest}: target is not a directory")
            receiver = Receiver(request.dest, request.preserve)
    except TransferError as e:
        print(f"slaveshell: {visible(str(e))}", file=sys.stderr)
        return 1
    show = not args.quiet and sys.stderr.isatty()
    total = [sum(p.entry.size for p in planned) if planned else 0]
    client = CopyClient(request, planned, receiver,
                        lambda: Progress(visible(" ".join(args.paths[:-1]))[:60], total[0], show))

    def work(root: Any) -> Any:
        from twisted.internet import defer

        @defer.inlineCallbacks
        def go() -> Any:
            reply = yield root.callRemote("copy", _client_end(client), request.to_wire())
            if not isinstance(reply, dict) or reply.get("ok") is not True:
                error = reply.get("error") if isinstance(reply, dict) else None
                return False, error if isinstance(error, str) else "the master refused the transfer"
            if reply.get("recorded") is False:
                print("slaveshell: WARNING: this transfer is NOT being recorded (the audit trail is unavailable)",
                      file=sys.stderr)
            if request.direction == DOWN:
                total[0] = int(reply.get("total") or 0)
            client.started(reply["transfer"], total[0])
            # The master gone (stopped, or it dropped this connection): the transfer cannot finish.
            root.notifyOnDisconnect(lambda _ref: client.lost())
            outcome = yield client.done
            return outcome

        return go()

    ok, reason = False, ""
    # A closed terminal (SIGHUP) or a kill (SIGTERM) stops a copy as Ctrl-C does: what was staged is removed.
    previous = {sig: signal.signal(sig, lambda _n, _f: signal.raise_signal(signal.SIGINT))
                for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        ok, reason = with_master(socket_path, work)
    except Interrupted:
        if receiver is not None:
            receiver.abort()
        _close(client, False)
        print("slaveshell: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if receiver is not None:
            receiver.abort()
        _close(client, False)
        text = str(e.args[0]) if hasattr(e, "remoteType") and e.args else str(e)
        print(f"slaveshell: {visible(text.splitlines()[0] if text else type(e).__name__)}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _close(client, ok)
    if not ok:
        print(f"slaveshell: {visible(reason.splitlines()[0] if reason else 'the transfer failed')}",
              file=sys.stderr)
        return 1
    return 0


def _close(client: CopyClient, ok: bool) -> None:
    if client.progress is not None:
        try:
            client.progress.close(ok)
        except Exception:  # a terminal gone away: the progress bar is only decoration
            pass


def main(argv: list[str] | None = None) -> int:
    """`python3 -m slaveshell.cp --socket PATH ...` (the tests and the bench start it so)."""
    from .shell_cli import find_socket

    p = argparse.ArgumentParser(prog="slaveshell cp")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--master", metavar="DIR")
    where.add_argument("--socket", metavar="PATH")
    add_arguments(p)
    args = p.parse_args(argv)
    return cmd_cp(args, find_socket(args))


if __name__ == "__main__":
    sys.exit(main())
