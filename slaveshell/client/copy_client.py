"""The operator's end of one `slaveshell cp` transfer over the framed hop (slaveshell.vocabulary.framing,
slaveshell.client.connection), standard library only but for the bar: the ``copy`` call, then the local `Sender` (an
upload) or `Receiver` (a download) of slaveshell.files.sender driven by the transfer's frames, within the credit window
(slaveshell.vocabulary.copying), and prompt_toolkit's progress bar on a terminal (imported only then).

`run(socket_path, client)` connects, runs the client's loop to its outcome and returns ``(ok, reason)``; it
raises `Interrupted` after SIGINT, SIGTERM or SIGHUP (what was staged is removed first) and `HopError` when the
master cannot be reached.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from slaveshell.client import connection as hop
from slaveshell.client.connection import HopError, Interrupted, Link
from slaveshell.files.receiver import Receiver
from slaveshell.files.sender import Planned, Sender, TransferError
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.copying import (
    DOWN,
    ENTRY_COST,
    MAX_FILE,
    Abort,
    Ack,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferEvent,
    TransferRequest,
    check_sha,
    from_fields,
)
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.framing import Control, FrameType, Op
from slaveshell.vocabulary.protocol import ProtocolError, check_int

# What every error and warning line of `slaveshell cp` starts with, as scp's start with "scp: ".
PREFIX = "slaveshell cp: "
# Seconds the client waits, after a download is in place, for the master to acknowledge its result (the audit
# row learns it before this process goes); the files are in place either way.
RESULT_WAIT = 10.0
# Bytes read from the socket at once: several of the master's DATA frames.
READ_SIZE = 1024 * 1024
# Seconds the last frames (an abort, a failed result) may take to leave at the end.
LAST_WORDS = 2.0
# An upload's DATA frame of at least this many bytes goes to the kernel at once; a smaller one (a small file's),
# like an entry, a done_file and the finish, waits for the loop's next turn, joined with the others queued before
# then (one write for many: a tree of small files). Acks, aborts and results go at once.
AT_ONCE = 4096


class Progress:
    """Bytes done out of `total`: prompt_toolkit's ProgressBar on `stream` (a terminal's standard error), nothing
    without a stream. prompt_toolkit is imported only then, so a copy in a pipe stays standard library only. The
    bar reads its keys from a pipe of its own that never sends any: it never puts the terminal in raw mode, and
    Ctrl-C stays a SIGINT for `run`. Nor does it ask the terminal where its cursor is (a cursor position
    request, ESC[6n): the terminal's reply would go to the terminal's input, which the bar does not read, for
    the next program there (a shell) to read as typed, and the bar would wait for it on every close. `close`
    must be called (the bar draws from a thread of its own): the client's `_finish` does, on every path."""

    def __init__(self, title: str, total: int, stream: TextIO | None) -> None:
        self._stack = contextlib.ExitStack()
        self._bar: Any = None
        self._counter: Any = None
        if stream is None:
            return
        from prompt_toolkit.input import create_pipe_input
        from prompt_toolkit.output import create_output
        from prompt_toolkit.output.vt100 import Vt100_Output
        from prompt_toolkit.shortcuts import ProgressBar

        keys = self._stack.enter_context(create_pipe_input())
        output = create_output(stdout=stream)
        if isinstance(output, Vt100_Output):
            output.enable_cpr = False
        self._bar = self._stack.enter_context(ProgressBar(title=title, output=output, input=keys))
        self._counter = self._bar(label="bytes", total=max(total, 1))

    def add(self, n: int) -> None:
        if self._counter is not None:
            self._counter.items_completed += n
            self._bar.invalidate()

    def close(self, ok: bool) -> None:
        if self._counter is not None:
            if ok:
                self._counter.done = True
            else:
                self._counter.stopped = True
            self._counter = self._bar = None
        self._stack.close()


class CopyClient:
    """One transfer: `start` asks the master, `frame` takes each of its frames, `lost` the connection's end,
    `interrupt` a signal. `outcome` is set once: (ok, reason); then the loop stops."""

    def __init__(self, loop: hop.EventLoop, link: Link, request: TransferRequest, planned: list[Planned] | None,
                 receiver: Receiver | None, make_progress: Callable[[int], Progress],
                 warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
        self.loop = loop
        self.link = link
        self.request = request
        self.plan = planned
        self.receiver = receiver
        self.make_progress = make_progress
        self.warn = warn
        self.progress: Progress | None = None
        self.sender: Sender | None = None
        self.outcome: tuple[bool, str] | None = None
        self.interrupted = False
        self.committed = False
        self._unacked = 0  # credit to return, sent by flush_acks once a read's frames are handled
        self.calls = hop.PendingCalls(link)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.calls.call(Op.COPY, self._started, request=self.request.to_wire())

    def _started(self, reply: Control | None) -> None:
        if reply is None or self.outcome is not None:
            return
        if reply.get("ok") is not True:
            error = reply.get("error")
            self._finish(False, error if isinstance(error, str) else "the master refused the transfer")
            return
        if reply.get("recorded") is False:
            self.warn(f"{PREFIX}WARNING: this transfer is NOT being recorded (the audit trail is unavailable)")
        total = sum(p.entry.size for p in self.plan) if self.plan is not None else 0
        if self.request.direction == DOWN:
            try:
                total = check_int(reply.get("total", 0), "total", 0, MAX_FILE)
            except ProtocolError:
                total = 0
        self.progress = self.make_progress(total)
        if self.plan is not None:
            # A master that says "unclaimed" hashes the files itself and takes done_file without ours
            # (slaveshell.vocabulary.copying).
            self.sender = Sender(self.plan, self.send, on_bytes=self.progress.add,
                                 claim=reply.get("unclaimed") is not True)
            self._guard(self.sender.pump)
        elif self.receiver is not None:
            self.receiver.on_bytes = self.progress.add

    # -- the master's frames -------------------------------------------------------------------

    def frame(self, frame: framing.Frame) -> None:
        """One frame from the master. HopError when it broke the framing (the caller ends the transfer)."""
        if self.outcome is not None:
            return
        if frame.type is FrameType.DATA:
            self._guard(lambda: self._data(Data.from_wire(frame.payload)))
            return
        if frame.type is not FrameType.CONTROL:
            return  # no session on this connection: nothing else is expected
        try:
            message = hop.parse(frame)
        except framing.WireError as e:
            raise HopError(f"the master broke the protocol: {e}") from None
        op = message.op
        if op is Op.ANSWER:
            self.calls.answered(message)
        elif op is Op.ERROR:
            text = message.get("text")
            self._finish(False, text if isinstance(text, str) and text else
                         "the master closed the connection (protocol error)")
        elif op is Op.WAITING:  # the transfer waits before it starts (a moderator's approval)
            text = message.get("text")
            if isinstance(text, str):
                self.warn(f"{PREFIX}{visible(text[:600])}")
        elif op is Op.RESULT:  # the master's word on the outcome, whatever its reason's length
            self._result(Result.told(message.get("ok"), message.get("reason"), "the master ended the transfer"))
        elif op in framing.TRANSFER:
            self._guard(lambda: self._take(from_fields(op.value, message.get)))

    def _take(self, event: TransferEvent) -> None:
        """One of the master's transfer events, decoded: to its handler (`_HANDLERS`)."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise ProtocolError(f"the master sent {event.call} to its operator")
        handler(self, event)

    def _receiving(self) -> Receiver:
        if self.receiver is None:
            raise ProtocolError("the master sent files to an upload")
        return self.receiver

    def _entry(self, entry: Entry) -> None:
        self._receiving().entry(entry)
        self._unacked += ENTRY_COST

    def _data(self, data: Data) -> None:
        self._receiving().data(data.chunk)  # its credit went back when it was read (`read`)

    def _done_file(self, done: DoneFile) -> None:
        self._receiving().done_file(check_sha(done.sha256))
        self._unacked += ENTRY_COST

    def _ack(self, ack: Ack) -> None:
        if self.sender is not None:
            self.sender.ack(ack.credit)

    def _result(self, result: Result) -> None:
        """The master's outcome. A success is its word only once this end is done: a download's files are put in
        place by this client (it tells the master, not the other way round), an upload's by the worker after this
        client's finish; a success before then is a broken master's, and nothing is reported done."""
        done = self.committed if self.receiver is not None else self.sender is not None and self.sender.done
        if result.ok and not done:
            self._finish(False, "the master said the transfer succeeded before it was done here (protocol error)")
            return
        self._finish(result.ok, result.reason)

    def read(self, frames: Sequence[framing.Frame | memoryview]) -> None:
        """The frames of one read: the credit of their data goes back first, then they are taken (the file's
        writes overlap the next bytes' way here; what this process holds stays one read), then the credit of
        their entries. A DATA frame may come as its payload alone, a view of the read buffer
        (`Connection.receive_views`): written to its file before the next read, never kept. HopError when the
        master broke the framing."""
        if self.receiver is not None and self.outcome is None:
            self._unacked += sum(len(f) if isinstance(f, memoryview) else len(f.payload) for f in frames
                                 if isinstance(f, memoryview) or f.type is FrameType.DATA)
            self.flush_acks()
        for frame in frames:
            if isinstance(frame, memoryview):
                self._chunk(frame)
            else:
                self.frame(frame)
        self.flush_acks()

    def _chunk(self, chunk: memoryview) -> None:
        """A DATA frame's payload, as a view (its size was bounded by the framing: at most CHUNK)."""
        if self.outcome is None:
            self._guard(lambda: self._receiving().data(chunk))

    def flush_acks(self) -> None:
        """Return the credit of what was received since the last call (one ack per read, not per chunk)."""
        if self._unacked and self.outcome is None:
            n, self._unacked = self._unacked, 0
            self.send(Ack(n))

    def _commit(self, _finish: Finish | None = None) -> None:
        self.flush_acks()
        self._receiving().commit()
        self.committed = True
        # The files are in place; the audit row learns it before this process goes (the master's answer).
        timer = self.loop.call_later(RESULT_WAIT, lambda: self._finish(True, ""))

        def answered(_reply: Control | None) -> None:
            timer.cancel()
            self._finish(True, "")

        self.calls.call(Op.RESULT, answered, **Result(True, "").fields())

    def lost(self, error: HopError) -> None:
        """The connection ended (or was refused, or broken)."""
        self.calls.lost()
        if self.committed:
            self._finish(True, "")
        elif self.progress is not None:
            self._finish(False, "the connection to the master was lost during the transfer")
        else:
            self._finish(False, str(error))

    # -- our side ------------------------------------------------------------------------------

    def send(self, event: TransferEvent) -> None:
        """One of slaveshell.vocabulary.copying's events to the master (the Sender's, and the acks): a DATA frame for
        data, a control otherwise."""
        if isinstance(event, Data) and len(event.chunk) >= AT_ONCE:
            self.link.send(framing.header(FrameType.DATA, len(event.chunk)), event.chunk)
        elif isinstance(event, Data):
            self.link.later(framing.encode(FrameType.DATA, event.chunk))
        elif isinstance(event, (Entry, DoneFile, Finish)):
            self.link.later(framing.control(Op(event.call), **event.fields()))
        else:
            self.link.control(Op(event.call), **event.fields())

    def _guard(self, fn: Callable[[], None]) -> None:
        if self.outcome is not None:
            return
        try:
            fn()
        except (TransferError, ProtocolError) as e:
            self._local_failure(str(e))

    def _local_failure(self, reason: str) -> None:
        """Our side failed (a write, a read, a bad message): clean up, tell the master, stop."""
        if self.receiver is not None:
            self.receiver.abort()
            self.calls.call(Op.RESULT, lambda _reply: None, **Result(False, reason[:4000]).fields())
        else:
            self.send(Abort(reason[:4000]))
        self._finish(False, reason)

    def interrupt(self) -> None:
        """A signal: what was staged is removed and the loop stops (the master sees the connection close)."""
        if self.outcome is None:
            self.interrupted = True
            self._finish(False, "interrupted")

    def _finish(self, ok: bool, reason: str) -> None:
        if self.outcome is not None:
            return
        if self.receiver is not None and not ok:
            self.receiver.abort()
        if self.sender is not None:
            self.sender.close()
        self.outcome = (ok, reason)
        if self.progress is not None:
            self.progress.close(ok)
        self.loop.stop()



# The master's events to its operator, each with its handler (`CopyClient._take`).
_HANDLERS: dict[type[TransferEvent], Callable[[CopyClient, Any], None]] = {
    Entry: CopyClient._entry, Data: CopyClient._data, DoneFile: CopyClient._done_file, Finish: CopyClient._commit,
    Ack: CopyClient._ack, Result: CopyClient._result}


def run(socket_path: str, make: Callable[[hop.EventLoop, Link], CopyClient]) -> tuple[bool, str]:
    """Connect, run the transfer `make(loop, link)` builds to its outcome. HopError when the master cannot be
    reached; Interrupted after a signal."""
    sock = hop.connect(socket_path)
    connection = hop.Connection(sock, READ_SIZE)
    hop.widen_send(sock)  # whole chunks at once to the kernel (the master widens its side too)
    loop = hop.Loop()
    client = make(loop, connection)
    fd = sock.fileno()

    def readable() -> None:
        try:
            client.read(connection.receive_views())
        except HopError as e:
            client.lost(e)

    def before_wait() -> None:
        loop.watch(fd, selectors.EVENT_WRITE, connection.flush if connection.out and not connection.closed
                   else None)

    loop.watch(fd, selectors.EVENT_READ, readable)
    loop.before_wait = before_wait
    loop.on_signal = lambda _signum: client.interrupt()
    previous = {sig: signal.signal(sig, loop.note_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        client.start()
        loop.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if client.outcome is None:  # an error in our own code: what was staged goes all the same
            client.interrupt()
        if not client.interrupted:
            _last_words(connection)
        connection.close()
        loop.close()
    if client.interrupted:
        raise Interrupted()
    assert client.outcome is not None
    return client.outcome


def _last_words(connection: hop.Connection) -> None:
    """What is still queued for the master (an abort, a result), within LAST_WORDS seconds."""
    if connection.closed or not connection.out:
        return
    with contextlib.suppress(OSError):
        connection.sock.settimeout(LAST_WORDS)
        connection.sock.sendall(connection.out)
        connection.out.clear()
        connection.sock.shutdown(socket.SHUT_WR)


__all__ = ["PREFIX", "CopyClient", "Interrupted", "Progress", "run"]
