"""`slaveshell cp` on the worker: the master's transfer call and the per-transfer handles (wire vocabulary:
slaveshell.vocabulary.copying; file work: slaveshell.files.sender).

`remote_*` methods are the security boundary, as in buildbot-worker's commands: they take plain values, check
every one, and answer a bad call with a plain refusal (``{"ok": False, "error": text}`` or a `result(False,
reason)` to the master), never by dropping the worker's connection. Every path the master names must resolve
(symlinks included) inside the owner's `allowed_dirs`, when given. The owner's `allowed_users` applies, and
`max_sessions` bounds the transfers at once (counted apart from the sessions). What the operator is told names a
path as they gave it (relative to the basedir or the build's directory, when it was), never where it resolves here.

Downloads (DOWN) read files in CHUNK pieces while the master's credit allows (`Sender`); uploads (UP) are
written to temporary files next to their destination and renamed once complete, after an fsync run in a thread
(`Receiver.commit`). A lost master connection, a `cancel` or any error removes what was staged.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import cast

from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from slave_side.host import WorkerOptions, login_umask
from slave_side.owner_log import OwnerLog
from slave_side.session import BUSY_BURST
from slaveshell.files.receiver import Receiver
from slaveshell.files.sender import Sender, TransferError, plan
from slaveshell.plumbing.clock import Clock, DelayedCall
from slaveshell.plumbing.lean_calls import LeanPeer, LeanReceiver, accept
from slaveshell.plumbing.remote import Undo, exported, on_disconnect, opening, set_nodelay
from slaveshell.vocabulary.copying import (
    ENTRY_COST,
    JOINED_CALLS,
    STREAM_CALLS,
    UP,
    Abort,
    Ack,
    Data,
    DoneFile,
    Entry,
    Result,
    TransferEvent,
    TransferRequest,
    check_sha,
    path_text,
)
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import Pacer
from slaveshell.vocabulary.protocol import MAX_PATH, ProtocolError, check_str

log = Logger()



class OutsideAllowed(TransferError):
    """A path resolves outside the owner's allowed directories. It names no path: the resolved one (a symlink's
    target) is not what the operator gave; `refusal` words it with what they gave."""

    def __init__(self) -> None:
        super().__init__("outside the directories this worker allows")


def inside_allowed(options: WorkerOptions) -> Callable[[str], None] | None:
    """A check that a real path lies in the owner's allowed directories (None when all are allowed); it raises
    OutsideAllowed."""
    if options.allowed_dirs is None:
        return None
    allowed = [os.path.realpath(d).rstrip("/") for d in options.allowed_dirs]

    def check(real: str) -> None:
        if not any(real == d or real.startswith(d + "/") for d in allowed):
            raise OutsideAllowed()

    return check


def refusal(error: Exception, request: TransferRequest, source: str | None = None) -> str:
    """What the operator is told of a refused path: an OutsideAllowed names the path as they gave it (the
    destination of an upload, the source of a download), never where it resolves on the worker."""
    if isinstance(error, OutsideAllowed):
        given = source if source is not None else (request.dest or ".") if request.direction == UP else \
            " ".join(request.sources)
        return f"{given}: {error}"
    return str(error)


def _dropped(*_args: object) -> None:
    """A single send's failure: dropped (the disconnect notification ends the transfer; chunks are at most CHUNK,
    so Banana refuses none)."""


class _StreamPeer(LeanPeer):
    """A transfer's PB reference: the stream's calls answer-less (copying.STREAM_CALLS)."""

    answerless = STREAM_CALLS

    def at_once(self, method: str, args: tuple[object, ...]) -> bool:
        return method not in JOINED_CALLS  # a large chunk goes at once all the same (lean_calls.WRITE_APART)


class _Peer:
    """The master's end of one transfer: each event as its answer-less PB call with plain values; a failure of
    the connection is noticed by the disconnect notification, so errors of single sends are dropped. Acks are
    summed and go once the reactor has handled what it read (one message for the several chunks of one read, not
    one each). Once the master says it takes them (`lean`), the stream's events go as slaveshell.plumbing.lean_calls."""

    def __init__(self, ref: pb.RemoteReference, clock: Clock) -> None:
        self.peer = _StreamPeer(ref, _dropped, _dropped)
        self.clock = clock
        self._acks = 0

    def take_lean(self) -> None:
        """The master takes lean calls on this connection."""
        self.peer.lean = True

    def release(self) -> None:
        self.peer.release()

    def send(self, event: TransferEvent) -> None:
        if isinstance(event, Ack):
            self.credit(event.credit)
            return
        if isinstance(event, Result) and self._acks:
            self._send_acks()  # the credit before the outcome, in order
        self._call(event)

    def credit(self, n: int) -> None:
        """Credit returned for what was taken: summed, sent once the reactor has handled what it read."""
        if not self._acks:
            self.clock.callLater(0, self._send_acks)
        self._acks += n

    def _send_acks(self) -> None:
        n, self._acks = self._acks, 0
        if n:
            self._call(Ack(n))

    def _call(self, event: TransferEvent) -> None:
        self.peer.send(event.call, *event.to_wire())


class WorkerTransfer(LeanReceiver):
    """What the master holds for one transfer: the sending (DOWN) or the receiving (UP) end. The stream's calls
    may also come as lean calls (slaveshell.plumbing.lean_calls), checked by the same methods; a malformed one fails
    the transfer, never the connection."""

    lean_methods = STREAM_CALLS

    def __init__(self, transfer_id: str, request: TransferRequest, peer: _Peer, sender: Sender | None,
                 receiver: Receiver | None, on_end: Callable[[WorkerTransfer], None],
                 pacer: Pacer | None = None, build_running: Callable[[], bool] = lambda: False) -> None:
        self.id = transfer_id
        self.request = request
        self.peer = peer
        self.sender = sender
        self.receiver = receiver
        self.on_end = on_end
        self.ended = False
        self.committing = False
        # How it ended, for the owner's log (slave_side.owner_log).
        self.outcome = ""
        # While a build step runs here, what a download sends is paced (WorkerOptions.busy_rate, as a session's
        # output): past the burst, the sender waits for `_paced` before it uses the credit it has.
        self.pacer = pacer
        self.build_running = build_running
        self._paced: DelayedCall | None = None

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self._fail(f"the master sent a bad {method}: {error}")

    def remote_lean(self) -> None:
        """The master takes lean calls on this connection: the stream's calls to it go that way. A master that
        sends this also takes done_file without the sender's sha256 (copying.NO_CLAIM): a download's files are
        not hashed here (the master hashes what it relays)."""
        self.peer.take_lean()
        if self.sender is not None:
            self.sender.claim = False

    def _fail(self, reason: str) -> None:
        """Give up: remove what was staged, tell the master (as the receiver's result, or as the sender's
        abort)."""
        if self.ended:
            return
        reason = path_text(reason)  # PB's text is UTF-8: a name that is not is spelled with \\xNN escapes
        self._end(f"failed: {reason}", Result(False, reason) if self.receiver is not None else Abort(reason))

    def _end(self, outcome: str, last: TransferEvent | None = None) -> None:
        """End once with `outcome` (for the owner's log); `last`, when given, is the last event to the master,
        sent before the master's end of the transfer is given back (`on_end`)."""
        self.ended = True
        self.outcome = outcome
        paced, self._paced = self._paced, None
        if paced is not None and paced.active():
            paced.cancel()
        if self.sender is not None:
            self.sender.close()
        if self.receiver is not None and not self.committing:
            self.receiver.abort()
        if last is not None:
            self.peer.send(last)
        self.on_end(self)

    def _guard(self, fn: Callable[[], None]) -> None:
        if self.ended:
            return
        try:
            fn()
        except (TransferError, ProtocolError) as e:
            self._fail(refusal(e, self.request))

    # -- sending (DOWN) ----------------------------------------------------------------------------

    def _send(self, step: Callable[[Sender], None]) -> None:
        sender = self.sender
        if sender is None:
            return
        before = sender.sent
        self._guard(lambda: step(sender))
        if sender.done and not self.ended:
            self._end("sent")  # everything sent: the master and the operator's client do the rest
        elif not self.ended:
            self._pace(sender.sent - before)

    def _pace(self, nbytes: int) -> None:
        if self.pacer is None or not nbytes or self._paced is not None or not self.build_running():
            return
        wait = self.pacer.spend(nbytes, self.peer.clock.seconds())
        if wait > 0:
            self._paced = self.peer.clock.callLater(wait, self._pace_over)

    def _pace_over(self) -> None:
        self._paced = None
        self._send(lambda sender: sender.pump())

    def remote_start(self) -> None:
        self._send(lambda sender: sender.pump())

    def remote_ack(self, credit: object) -> None:
        if self._paced is not None and self.sender is not None:
            sender = self.sender  # paced: the credit is kept for _pace_over

            def keep() -> None:
                sender.credit.ack(Ack.from_wire(credit).credit)

            self._guard(keep)
            return
        self._send(lambda sender: sender.ack(Ack.from_wire(credit).credit))

    # -- receiving (UP) ----------------------------------------------------------------------------

    def _receiving(self) -> Receiver:
        if self.receiver is None:
            raise ProtocolError("this transfer sends; it receives nothing")
        return self.receiver

    # The stream's three calls, once per file of a tree (thousands a second): each checked and taken as
    # `_guard` would, without a closure per call; the credit goes back once taken.

    def remote_entry(self, kind: object, path: object, mode: object, size: object, mtime: object) -> None:
        if self.ended:
            return
        try:
            self._receiving().entry(Entry.from_wire(kind, path, mode, size, mtime))
        except (TransferError, ProtocolError) as e:
            self._fail(refusal(e, self.request))
            return
        self.peer.credit(ENTRY_COST)

    def remote_data(self, chunk: object) -> None:
        if self.ended:
            return
        try:
            data = Data.from_wire(chunk).chunk
            self._receiving().data(data)
        except (TransferError, ProtocolError) as e:
            self._fail(refusal(e, self.request))
            return
        self.peer.credit(len(data))

    def remote_done_file(self, sha256: object) -> None:
        if self.ended:
            return
        try:
            self._receiving().done_file(check_sha(DoneFile.from_wire(sha256).sha256))
        except (TransferError, ProtocolError) as e:
            self._fail(refusal(e, self.request))
            return
        self.peer.credit(ENTRY_COST)

    def remote_finish(self) -> None:
        if self.ended or self.receiver is None or self.committing:
            return
        receiver = self.receiver
        self.committing = True

        def committed(_: object) -> None:
            self.committing = False
            if not self.ended:
                self._end("received and put in place", Result(True, ""))

        def failed(failure: Failure) -> None:
            self.committing = False
            receiver.abort()
            error = failure.value
            self._fail(refusal(error, self.request) if isinstance(error, (TransferError, ProtocolError)) else
                       f"cannot put the files in place: {visible(str(error))}")

        threads.deferToThread(receiver.commit).addCallbacks(committed, failed)

    def remote_cancel(self, reason: object = "") -> None:
        """The master ends the transfer (the operator left or stopped, the audit failed)."""
        if not self.ended:
            # Not the reason: it may name a path (the master's audit record has it).
            log.info("slaveshell transfer {tid}: cancelled by the master", tid=self.id)
            self._end("cancelled by the master")

    def lost(self) -> None:
        if not self.ended:
            log.warn("slaveshell transfer {tid}: the master connection was lost", tid=self.id)
            self._end("the master connection was lost")


class TransferServer:
    """The worker's transfers: opens them for the master within the owner's limits."""

    def __init__(self, options: WorkerOptions, clock: Clock | None = None, owner_log: OwnerLog | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(Clock, reactor)
        self.clock = clock
        self.options = options
        self.live: dict[str, WorkerTransfer] = {}
        # Each live transfer's disconnect notification, undone when it ends.
        self._undo: dict[str, Undo] = {}
        self.owner_log = owner_log
        self._ids = itertools.count(1)

    def open(self, basedir: str, sink: object, params: object,
             build_running: Callable[[], bool] = lambda: False) -> dict[str, object]:
        """`BotPb.remote_slaveshell_transfer`: the master's `TransferRequest.to_wire()` and its end of the
        transfer. Answers ``{"ok": True, "transfer": WorkerTransfer, "total": bytes, "entries": n, "lean": bool,
        "exported": n}`` (total and entries are what a download will send; lean: this connection takes
        slaveshell.plumbing.lean_calls; exported: as a session's open answers it, slave_side.server)
        or ``{"ok": False, "error": text}``. `build_running()` tells whether a build step runs on this worker
        now (what a download sends is then paced: WorkerOptions.busy_rate)."""
        opened = opening(TransferRequest.from_wire, params, sink)
        if isinstance(opened, str):
            return {"ok": False, "error": opened}
        request, ref = opened
        refused = self._refusal(request)
        if refused is not None:
            return self._refused(request, refused)
        base = request.cwd or basedir
        if not os.path.isabs(base):
            base = os.path.join(basedir, base)
        check = inside_allowed(self.options)
        peer = _Peer(ref, self.clock)
        transfer_id = f"t{next(self._ids)}"
        try:
            if request.direction == UP:
                dest = check_str(request.dest, "destination", MAX_PATH)
                with login_umask(self.options):  # new files' modes, without -p, as a login's umask gives them
                    # Errors name the destination as the operator gave it, never the basedir it is under.
                    receiver = Receiver(dest if os.path.isabs(dest) else os.path.join(base, dest), request.preserve,
                                        check, asked=request.asked(), shown=dest)
                transfer = WorkerTransfer(transfer_id, request, peer, None, receiver, self._ended)
                total, entries = 0, 0
            else:
                planned = plan(list(request.sources), request.recursive, check, base)
                sender = Sender(planned, peer.send)
                pacer = Pacer(self.options.busy_rate, BUSY_BURST) if self.options.busy_rate > 0 else None
                transfer = WorkerTransfer(transfer_id, request, peer, sender, None, self._ended, pacer, build_running)
                total, entries = sender.total, len(planned)
        except OutsideAllowed as e:
            peer.release()
            return self._refused(request, refusal(e, request, _outside_source(request, check, base)))
        except TransferError as e:
            peer.release()
            return self._refused(request, path_text(str(e)))
        self.live[transfer_id] = transfer
        if self.owner_log is not None:
            self.owner_log.transfer_started(transfer_id, request.operator, request.direction, request.sources,
                                            request.dest)
        broker = getattr(ref, "broker", None)
        lean = accept(broker)
        set_nodelay(ref)  # the tail of each chunk would otherwise wait for the master's delayed ACK
        # Undone, and the master's end given back, when the transfer ends (`_ended`).
        self._undo[transfer_id] = on_disconnect(ref, transfer.lost)
        log.info("slaveshell transfer {tid}: {op} copies {what}", tid=transfer_id,
                 op=visible(request.operator or "?"), what="to this worker" if request.direction == UP else
                 "from this worker")
        return {"ok": True, "transfer": transfer, "total": total, "entries": entries, "lean": lean,
                "exported": exported(broker)}

    def _refusal(self, request: TransferRequest) -> str | None:
        allowed = self.options.allowed_users
        if allowed is not None and request.operator not in allowed:
            return f"this worker's owner does not allow {request.operator or 'anonymous'} to copy files here"
        if len(self.live) >= self.options.max_sessions:
            return f"the worker allows at most {self.options.max_sessions} transfers at once"
        return None

    def _refused(self, request: TransferRequest, error: str) -> dict[str, object]:
        if self.owner_log is not None:
            self.owner_log.transfer_refused(request.operator, error)
        return {"ok": False, "error": error}

    def _ended(self, transfer: WorkerTransfer) -> None:
        """The transfer ended (its last call to the master is sent): drop it, and the master's end it held."""
        self.live.pop(transfer.id, None)
        undo = self._undo.pop(transfer.id, None)
        if undo is not None:
            undo()
        transfer.peer.release()
        if self.owner_log is not None:
            moved = transfer.sender.sent if transfer.sender is not None else getattr(transfer.receiver, "bytes", 0)
            self.owner_log.transfer_ended(transfer.id, transfer.request.operator, transfer.outcome,
                                          moved if isinstance(moved, int) else 0)


def _outside_source(request: TransferRequest, check: Callable[[str], None] | None, base: str) -> str | None:
    """Which source of a refused download leads outside the allowed directories, as the operator gave it (None
    for an upload, or when none does on its own)."""
    if request.direction == UP:
        return None
    for source in request.sources:
        try:
            plan([source], request.recursive, check, base)
        except OutsideAllowed:
            return source
        except TransferError:
            continue
    return None
