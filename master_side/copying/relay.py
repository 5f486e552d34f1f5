"""`slaveshell cp` on the master: one transfer relayed between the operator's client and the worker, checked,
counted and recorded (`MasterTransfer`: each of slaveshell.vocabulary.copying's events to its handler by type), and the
live transfers with their start (`Transfers`: recorded and opened on the worker as a session is). Wire vocabulary:
slaveshell.vocabulary.copying.

The sender (the operator for an upload, the worker for a download) streams entries, data, done_file and
finish; the master checks every message (types, order, declared sizes, the credit window:
master_side.copying.stream), hashes each file (its sha256 is the record's and the receiver's) and compares the
sender's when it sends one, writes the record
(master_side.copying.record) before it forwards, and passes the receiver's acks back as credit: what it holds
per transfer is bounded by the window. The receiver's
`result(ok, reason)` ends the transfer; so do a bad message, either party's lost connection (the operator's
Ctrl-C closes its connection) and a record that cannot be written. The operator always gets `result(ok,
reason)`, unless it reported it. The worker's end is PB (master_side.copying.worker_end: `Party`, `TransferEnd`); the
operator's is the framed door's (master_side.shell_socket.copy_door).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.logger import Logger

from master_side.audit.hashing import BatchedSha256
from master_side.copying.record import KEEP_UPLOADED_TEXT, TransferRecord
from master_side.copying.stream import HeldStream
from master_side.copying.worker_end import Party, TransferEnd
from master_side.sessions.model import new_session_id
from master_side.sessions.worker_link import Opening, Undo, ask_worker, on_disconnect
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.copying import (
    CHUNK,
    FROM_SENDER,
    NO_CLAIM,
    UP,
    WORKER_TRANSFER_METHOD,
    Abort,
    Ack,
    Cancel,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    Start,
    TransferEvent,
    TransferRequest,
    event_type,
)
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity, Policy
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError

if TYPE_CHECKING:
    from master_side.audit.trail import AuditTrail
    from master_side.glue.buildbot import BuildbotGlue
    from master_side.holds.step import Holds

log = Logger()

OPERATOR = "operator"
WORKER = "worker"
# A file's bytes are hashed on the hashing thread this many at a time (master_side.audit.hashing): a transfer holds at
# most three times this for hashing, the size of its window (copying.WINDOW); a smaller file on the reactor thread.
TRANSFER_HASH_BATCH = 1024 * 1024
# Transfers at once on this master, whatever the per-worker and per-operator quotas say.
MAX_TRANSFERS = 64
# Seconds a transfer may go without a call from either party before it ends (ShellService's
# transfer_stall_timeout): a worker that stops sending half-way must not keep the operator waiting forever. A
# receiver's commit (fsyncs, renames) sends nothing either: a minute covers a large tree on a busy disk.
TRANSFER_STALL_TIMEOUT = 60.0


class PartyEnd(TypingProtocol):
    """A party's end as the master calls it: answer-less `send(event)` (slaveshell.vocabulary.copying's events) and
    `on_disconnect(callback)` (returns its undo). `Party` is the worker's (PB); the operator's is its door's
    (master_side.shell_socket.copy_door.WireParty)."""

    def send(self, event: TransferEvent) -> None: ...
    def on_disconnect(self, callback: Callable[[], None]) -> Undo: ...


class MasterTransfer:
    """One transfer's relay. `take(side, event)` takes each party's event, decoded at its door's edge
    (`arrived`, `received`); each type of event has its handler (`_HANDLERS`)."""

    def __init__(self, transfer_id: str, who: Identity, request: TransferRequest, record: TransferRecord | None,
                 on_end: Callable[[MasterTransfer], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.id = transfer_id
        self.identity = who
        self.request = request
        self.worker = request.worker
        self.record = record
        self.on_end = on_end
        self.sender_side = OPERATOR if request.direction == UP else WORKER
        self.receiver_side = self._other(self.sender_side)
        self.parties: dict[str, PartyEnd] = {}
        # Both parties held to the stream: its order, what the receiver takes (the request's entries) and the
        # credit window.
        self.stream = HeldStream(request.asked())
        self.sha = BatchedSha256(TRANSFER_HASH_BATCH)
        self.bytes = 0
        self.files = 0
        self.ended = False
        self.outcome: tuple[bool, str] | None = None
        self.undo: list[Callable[[], None]] = []
        self.clock = clock
        self.progressed = clock()  # when either party last sent a call (`stalled`)

    def stalled(self, now: float, timeout: float | None) -> bool:
        """End the transfer when neither party sent anything for `timeout` seconds (a worker that stopped
        sending half-way, a receiver that stopped acknowledging, a worker that never puts the files in place).
        True when it ended it. An operator's client putting a download in place is not timed: that is its own
        disk's time, and its connection's end ends the transfer."""
        if self.ended or timeout is None or now - self.progressed < timeout:
            return False
        receiver = self.receiver_side
        if self.stream.order.finished and receiver == OPERATOR:
            return False  # the operator's client commits a download (its fsyncs may take long): its own time
        if self.stream.order.finished:
            waiting = f"the {self._party(receiver)} did not put the files in place"
        elif self.stream.credit.available < CHUNK:
            waiting = f"the {self._party(receiver)} stopped taking what was sent"
        else:
            waiting = f"the {self._party(self.sender_side)} stopped sending"
        self.end(False, f"no progress for {timeout:g} s: {waiting}")
        return True

    def _party(self, side: str) -> str:
        return f"worker {self.worker}" if side == WORKER else "operator"

    def _other(self, side: str) -> str:
        return WORKER if side == OPERATOR else OPERATOR

    # -- a party's events, decoded at its door's edge ---------------------------------------------------

    def received(self, side: str, call: object, args: tuple[object, ...]) -> None:
        """A party's call by its name, with plain values (a door that names it): decoded, then taken."""
        self.decoded(side, lambda: event_type(call).from_wire(*args))

    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None:
        """A party's `kind` of event, with plain values (a PB method's): decoded, then taken."""
        self.decoded(side, lambda: kind.from_wire(*args))

    def decoded(self, side: str, decode: Callable[[], TransferEvent]) -> None:
        """A party's event as `decode()` makes it at the door's edge (ProtocolError ends the transfer)."""
        if self.ended:
            return  # late: racing the end
        try:
            event = decode()
            if event != _NOTHING:
                self.progressed = self.clock()  # an empty chunk moves nothing: it does not hold the transfer open
            if isinstance(event, FROM_SENDER) and side != self.sender_side:
                raise ProtocolError(f"{event.call} comes from the sender")
            _HANDLERS[type(event)](self, side, event)
        except ProtocolError as e:
            self.end(False, f"the {side} sent a bad message: {e}")
        except OSError as e:
            self.end(False, f"the master cannot record the transfer: {e.strerror or e}")

    def _entry(self, _side: str, entry: Entry) -> None:
        self.stream.entry(entry)
        self.sha = BatchedSha256(TRANSFER_HASH_BATCH)
        if self.record is not None:
            self.record.entry(entry)
        self.parties[self.receiver_side].send(entry)

    def _data(self, _side: str, data: Data) -> None:
        chunk = data.chunk
        self.stream.data(chunk)
        self.sha.update(chunk)
        self.bytes += len(chunk)
        if self.record is not None:
            self.record.data(chunk)
        self.parties[self.receiver_side].send(data)

    def _done_file(self, _side: str, done: DoneFile) -> None:
        entry = self.stream.done_file()
        mine = self.sha.hexdigest()
        if done.sha256 != NO_CLAIM and done.sha256 != mine:
            raise ProtocolError(f"{entry.path}: the sender's sha256 does not match its bytes")
        self.files += 1
        if self.record is not None:
            self.record.file_done(entry, mine)
        self.parties[self.receiver_side].send(DoneFile(mine))

    def _finish(self, _side: str, finish: Finish) -> None:
        self.stream.finish()
        self.parties[self.receiver_side].send(finish)

    def _abort(self, side: str, abort: Abort) -> None:
        self.end(False, f"the {side} gave up: {abort.reason[:1000]}")

    def _ack(self, side: str, ack: Ack) -> None:
        if side != self.receiver_side:
            raise ProtocolError("ack comes from the receiver, with a credit")
        self.parties[self.sender_side].send(Ack(self.stream.acked(ack.credit)))

    def _result(self, side: str, result: Result) -> None:
        if side != self.receiver_side:
            raise ProtocolError("result comes from the receiver: ok and a reason")
        self.stream.result(result.ok)
        self.end(result.ok, result.reason, reported_by=side)

    def _cancel(self, side: str, _cancel: Cancel) -> None:
        if side != OPERATOR:
            raise ProtocolError("unknown transfer call cancel")
        self.cancelled("stopped by the operator")

    def cancelled(self, why: str) -> None:
        """The operator's side ended it (its cancel), `why` as this master words that: the operator's own stop, or
        the operator's master's end of a routed transfer (master_side.cluster.copy_serve)."""
        self.end(False, why)

    def _start(self, _side: str, _start: Start) -> None:
        raise ProtocolError("unknown transfer call start")

    def end(self, ok: bool, reason: str, reported_by: str | None = None) -> None:
        """End once: the record closed, the operator told `result(ok, reason)`, the worker told `cancel`."""
        if self.ended:
            return
        self.ended = True
        self.outcome = (ok, reason)
        for undo in self.undo:
            undo()
        if self.record is not None:
            self.record.end(ok, reason, self.bytes, self.files)
        if OPERATOR in self.parties and reported_by != OPERATOR:
            self.parties[OPERATOR].send(Result(ok, reason))
        if WORKER in self.parties and reported_by != WORKER:
            self.parties[WORKER].send(Cancel(reason))
        # Who, where, which way, how it ended and how much: never a path or a reason (which may name one); the
        # audit record has them.
        log.info("slaveshell transfer {tid}: {who} {direction} {worker}: {outcome}, {files} files, {nbytes} bytes",
                 tid=self.id, who=visible(self.identity), worker=visible(self.worker),
                 direction="copied to" if self.request.direction == UP else "copied from",
                 outcome="done" if ok else "failed (the reason is in the audit record)", files=self.files,
                 nbytes=self.bytes)
        self.on_end(self)


# Each event's handler in the relay (`MasterTransfer.decoded`).
_HANDLERS: dict[type[TransferEvent], Callable[[MasterTransfer, str, Any], None]] = {
    Entry: MasterTransfer._entry, Data: MasterTransfer._data, DoneFile: MasterTransfer._done_file,
    Finish: MasterTransfer._finish, Abort: MasterTransfer._abort, Ack: MasterTransfer._ack,
    Result: MasterTransfer._result, Cancel: MasterTransfer._cancel, Start: MasterTransfer._start}
_NOTHING = Data(b"")


class Transfers:
    """The master's live transfers. `keep_bytes` and `keep_text`: the service's keep_transfer_bytes and
    keep_uploaded_text options (master_side.copying.record)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.live: dict[str, MasterTransfer] = {}
        self.keep_bytes = False
        self.keep_text = KEEP_UPLOADED_TEXT  # the service's keep_uploaded_text option
        self.open_timeout = 30.0
        self.stall_timeout: float | None = TRANSFER_STALL_TIMEOUT  # the service's transfer_stall_timeout

    def tick(self) -> None:
        """Once a second: transfers that made no progress for `stall_timeout` end (MasterTransfer.stalled)."""
        now = self.clock()
        for transfer in list(self.live.values()):
            try:
                transfer.stalled(now, self.stall_timeout)
            except Exception:
                log.failure("slaveshell transfer {tid}: error ending it", tid=transfer.id)

    def _ended(self, transfer: MasterTransfer) -> None:
        self.live.pop(transfer.id, None)
        worker = transfer.parties.get(WORKER)
        if isinstance(worker, Party):
            worker.release()  # after the transfer's last call to it: the worker's end leaves its PB table now

    @staticmethod
    def route(glue: BuildbotGlue, holds: Holds, request: TransferRequest) -> tuple[Any, TransferRequest,
                                                                                    dict[str, object]]:
        """The worker's connection, the request with the held build's directory (`--build`), and the build's
        columns for the index row. Raises RouteError (glue.route, glue.workdir_for: a build must be held)."""
        conn = glue.route(request.worker)
        if request.build is None:
            return conn, request, {}
        opened = glue.workdir_for(OpenRequest(worker=request.worker, build=request.build), holds.held)
        hold = holds.get(request.build)
        build = {"build_id": hold.build_id, "builder": hold.builder, "build_number": hold.build_number} if hold else {}
        return conn, replace(request, cwd=opened.cwd), build

    def quota(self, policy: Policy, who: Identity, worker: str, limits: Any) -> str | None:
        """Why one more transfer would pass the quotas: the session quotas (max_sessions_per_worker and _per_operator of
        `limits`, master_side.sessions.session_limits.SessionLimits) counting transfers apart from sessions, and
        MAX_TRANSFERS on the master. None when it would not."""
        live = list(self.live.values())
        quota = policy.quota(who, worker, live, limits.per_worker, limits.per_operator)
        if quota is None and len(live) >= MAX_TRANSFERS:
            quota = f"the master already runs {MAX_TRANSFERS} transfers (its limit)"
        return quota.replace("sessions", "transfers") if quota else None

    @deferred
    async def start(self, conn: Any, who: Identity, request: TransferRequest, trail: AuditTrail,
                    operator: PartyEnd, build: dict[str, object]) -> tuple[MasterTransfer, dict[str, object]]:
        """Record, then ask the worker (`conn`: its buildbot PB Connection), as a session opens: its record
        started by `AuditTrail.start_record`, the worker asked by `worker_link.ask_worker`. Fires (transfer,
        {"total", "entries", "recorded"}: what a download will send, and whether it is recorded) or raises
        TransferRefused (the worker's or the recording's refusal, for the operator) or RecordingError. The
        operator's events reach the transfer from its door."""
        transfer_id = new_session_id()
        record: TransferRecord | None = TransferRecord(trail, transfer_id, who, request, self.clock(),
                                                       self.keep_bytes, self.keep_text)
        assert record is not None
        record.build = build
        if not await record.begin():
            record = None
        transfer = MasterTransfer(transfer_id, who, request, record, self._ended, self.clock)
        transfer.parties[OPERATOR] = operator
        reply = await ask_worker(conn, TRANSFER, TransferEnd(transfer, WORKER), request.to_pb(), request.worker,
                                 self.open_timeout)
        if reply.ref is None:
            transfer.parties.clear()
            transfer.end(False, reply.error)
            raise TransferRefused(reply.error)
        ref = reply.ref
        transfer.parties[WORKER] = Party(ref, lean=reply.lean)
        self.live[transfer_id] = transfer
        transfer.undo.append(on_disconnect(ref, lambda: transfer.end(False, f"the worker {request.worker} was "
                                                                            "lost during the transfer")))
        transfer.undo.append(operator.on_disconnect(lambda: transfer.end(
            False, "the operator's connection was lost during the transfer")))
        if request.direction != UP:
            transfer.parties[WORKER].send(Start())
        total, entries = reply.fields.get("total", 0), reply.fields.get("entries", 0)
        return transfer, {
            "total": total if isinstance(total, int) else 0, "entries": entries if isinstance(entries, int) else 0,
            "recorded": record is not None}


# A transfer as the worker opens it (`worker_link.ask_worker`): BotPb's method added by slave_side.install().
TRANSFER = Opening(WORKER_TRANSFER_METHOD, "transfer", (Cancel.call, "too late"),
                   "its slaveshell does not support cp (upgrade slaveshell on the worker)", "starting the transfer")


class TransferRefused(Exception):
    """The worker refused the transfer; the message is for the operator."""
