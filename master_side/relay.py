"""One session as the master sees it: a relay between an operator and a worker session.

The logic class validates what each side sends and talks to both through injected callables; the PB adapters
(`OperatorHandle`, `WorkerSink`) are thin. Credit passes through: the master acknowledges the worker's output only
when the operator acknowledges it, so the master holds at most one window of a session's output.
"""

from __future__ import annotations

import collections
import enum
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb

from slaveshell.flow import CreditWindow
from slaveshell.policy import Identity
from slaveshell.protocol import (
    INPUT_WINDOW,
    OUTPUT_WINDOW,
    STREAM_ERR,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_int,
    check_signal,
    check_size,
    check_stream,
)

log = Logger()

Send = Callable[..., None]

# A well-behaved peer overshoots its window by at most one read (and, after exit, what the kernel still held).
# Past this much, it is not overshoot but a peer that ignores flow control.
WINDOW_TOLERANCE = 4


class Recorder(Protocol):
    """What the relay tells the audit trail (master_side.recorder implements it)."""

    def output(self, data: bytes) -> None: ...
    def input(self, data: bytes, hidden: bool) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def marker(self, text: str) -> None: ...
    def end(self, session: MasterSession) -> None: ...


class NullRecorder:
    def output(self, data: bytes) -> None:
        pass

    def input(self, data: bytes, hidden: bool) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        pass

    def marker(self, text: str) -> None:
        pass

    def end(self, session: MasterSession) -> None:
        pass


class State(enum.Enum):
    OPENING = "opening"
    RUNNING = "running"
    ENDED = "ended"


def new_session_id() -> str:
    return secrets.token_hex(6)


class MasterSession:
    def __init__(self, request: OpenRequest, identity: Identity, on_end: Callable[[MasterSession], None],
                 session_id: str | None = None) -> None:
        self.id = session_id or new_session_id()
        self.request = request
        self.worker = request.worker
        self.identity = identity
        self.started = time.time()
        self.state = State.OPENING
        self.status: ExitStatus | None = None
        self.to_operator: Send = _nowhere
        self.to_worker: Send = _nowhere
        self.output_window = CreditWindow(OUTPUT_WINDOW)
        self.input_window = CreditWindow(INPUT_WINDOW)
        self.bytes_in = 0
        self.bytes_out = 0
        self._on_end = on_end
        self.recorder: Recorder = NullRecorder()
        # Input sent to the worker and not yet acknowledged: recorded once the worker says whether the
        # terminal was hiding it.
        self._pending_input: collections.deque[bytes] = collections.deque()
        # Bytes the master itself showed the operator (notices): their acks are not the worker's credit.
        self._own_output = 0
        # Set by whoever wires the session to its peers; undoes that wiring at the end.
        self.cleanup: Callable[[], Any] | None = None

    def __repr__(self) -> str:
        return f"<MasterSession {self.id} {self.identity.user}@{self.worker} {self.state.value}>"

    def attach(self, to_operator: Send, to_worker: Send) -> None:
        self.to_operator = to_operator
        self.to_worker = to_worker
        self.state = State.RUNNING

    # -- from the operator ---------------------------------------------------------------------

    def operator_input(self, data: object) -> None:
        data = check_bytes(data, "input")
        if self.state is not State.RUNNING:
            return
        if self.input_window.in_flight > INPUT_WINDOW * WINDOW_TOLERANCE:
            raise ProtocolError("input sent past the flow-control window")
        self.input_window.sent(len(data))
        self.bytes_in += len(data)
        self._pending_input.append(data)
        self.to_worker("input", data)

    def operator_eof(self) -> None:
        if self.state is State.RUNNING:
            self.to_worker("eof")

    def operator_resize(self, cols: object, rows: object) -> None:
        cols, rows = check_size(cols, rows)
        if self.state is State.RUNNING:
            self.recorder.resize(cols, rows)
            self.to_worker("resize", cols, rows)

    def operator_signal(self, name: object) -> None:
        check_signal(name)
        if self.state is State.RUNNING:
            self.recorder.marker(f"signal {name} sent by {self.identity.user}")
            self.to_worker("signal", str(name))

    def operator_ack(self, nbytes: object) -> None:
        nbytes = check_int(nbytes, "ack", 0, 2**40)
        own = min(nbytes, self._own_output)
        self._own_output -= own
        nbytes -= own
        self.output_window.acked(nbytes)
        if self.state is State.RUNNING and nbytes:
            self.to_worker("ack", nbytes)

    def operator_close(self) -> None:
        if self.state is State.RUNNING:
            log.info("session {sid}: closed by {who}", sid=self.id, who=self.identity)
            self.to_worker("close")

    def operator_lost(self) -> None:
        """The operator's client went away: nobody is at the keyboard, so end the session on the worker."""
        if self.state is State.RUNNING:
            log.info("session {sid}: operator connection lost; closing", sid=self.id)
            self.to_worker("close")
            self.to_operator = _nowhere

    # -- from the worker -----------------------------------------------------------------------

    def worker_output(self, stream: object, data: object) -> None:
        stream = check_stream(stream)
        data = check_bytes(data, "output")
        if self.state is not State.RUNNING:
            return
        if self.output_window.in_flight > OUTPUT_WINDOW * WINDOW_TOLERANCE:
            raise ProtocolError("output sent past the flow-control window")
        self.output_window.sent(len(data))
        self.bytes_out += len(data)
        self.recorder.output(data)
        self.to_operator("output", stream, data)

    def worker_input_ack(self, nbytes: object, hidden: object) -> None:
        nbytes = check_int(nbytes, "input ack", 0, 2**40)
        if not isinstance(hidden, bool):
            raise ProtocolError("input ack: hidden must be a boolean")
        if not self._pending_input or len(self._pending_input[0]) != nbytes:
            raise ProtocolError("input ack does not match the input sent")
        self.input_window.acked(nbytes)
        self.recorder.input(self._pending_input.popleft(), hidden)
        self.to_operator("input_ack", nbytes, hidden)

    def notice(self, text: str) -> None:
        """A line from the master itself to the operator's terminal (stderr), outside the worker's credit."""
        data = f"\r\nslaveshell: {text}\r\n".encode()
        self._own_output += len(data)
        self.to_operator("output", STREAM_ERR, data)

    def worker_exit(self, code: object, signal: object, reason: object) -> None:
        self.end(ExitStatus.from_wire(code, signal, reason))

    def abort(self, reason: str) -> None:
        """The session is over without an exit status (worker lost, protocol error, shutdown)."""
        self.end(ExitStatus(reason=reason))

    # -- end -----------------------------------------------------------------------------------

    def end(self, status: ExitStatus) -> None:
        if self.state is State.ENDED:
            return
        self.state = State.ENDED
        self.status = status
        self.recorder.end(self)
        log.info("session {sid}: ended (code {code}, signal {sig}{why})", sid=self.id, code=status.code,
                 sig=status.signal, why=f", {status.reason}" if status.reason else "")
        self.to_operator("exit", status.code, status.signal, status.reason)
        self.to_worker = _nowhere
        self._on_end(self)


def _nowhere(*args: Any) -> None:
    pass


def remote_sender(ref: Any, on_failure: Callable[[Any], None]) -> Send:
    """Fire-and-forget calls on a remote reference. callRemote can raise synchronously (a dead reference, a
    string over Banana's limit): both become a failure handed to `on_failure`, never an exception here."""

    def send(method: str, *args: Any) -> None:
        d = defer.maybeDeferred(ref.callRemote, method, *args)
        d.addErrback(on_failure)

    return send


class _Guarded(pb.Referenceable):
    """A peer's bad call becomes a plain pb.Error for that peer and a report to the service, which decides
    what the session's fate is; it never raises into the broker's connection handling."""

    def __init__(self, session: MasterSession, on_error: Callable[[MasterSession, ProtocolError], None]) -> None:
        self.session = session
        self.on_error = on_error

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except ProtocolError as e:
            self.on_error(self.session, e)
            raise pb.Error(str(e)) from None


class OperatorHandle(_Guarded):
    """What the operator's client holds for its session."""

    def remote_input(self, data: object) -> None:
        self._call(self.session.operator_input, data)

    def remote_eof(self) -> None:
        self._call(self.session.operator_eof)

    def remote_resize(self, cols: object, rows: object) -> None:
        self._call(self.session.operator_resize, cols, rows)

    def remote_signal(self, name: object) -> None:
        self._call(self.session.operator_signal, name)

    def remote_ack(self, nbytes: object) -> None:
        self._call(self.session.operator_ack, nbytes)

    def remote_close(self) -> None:
        self._call(self.session.operator_close)


class WorkerSink(_Guarded):
    """What the worker holds for the session: where its output goes."""

    def remote_output(self, stream: object, data: object) -> None:
        self._call(self.session.worker_output, stream, data)

    def remote_input_ack(self, nbytes: object, hidden: object = False) -> None:
        self._call(self.session.worker_input_ack, nbytes, hidden)

    def remote_exit(self, code: object, signal: object, reason: object) -> None:
        self._call(self.session.worker_exit, code, signal, reason)
