"""The operator's door to the master (slaveshell.vocabulary.framing): what `buildbot-shell` and every `slaveshell` tool
speak, without PB.

One socket (shell.sock). A connection is first a `Sniffer` (master_side.shell_socket.listener): admitted by the
connection gate as it is made (master_side.operators.gate), handed to a `WireDoor` once its first bytes are
`framing.MAGIC`, refused with one line otherwise (a PB client of an older slaveshell, anything else). A `WireDoor` is a
thin adapter over `OperatorAPI` (as the web door, master_side.www, is): the identity comes from the kernel (SO_PEERCRED,
master_side.shell_socket.peer.peer_identity, through the gate); it is admitted by the same gate (connections per uid and
in total, calls in progress for every kind of call, buffered output, answers included, and write stall: the door has the
`transport`, `disconnected` and `written` the gate reads, master_side.operators.gate.Gated); the client's end of a view
is a `master_side.shell_socket.viewer_sink.WireViewerSink`; a session's messages are decoded here, their values checked
(types, input within the view's `max_input`, sizes, signal names), into typed calls on the `View` that open or attach
returned (which applies
the session's own checks: the credit window, read-only watchers; a refused message costs the owner its session, anyone
else its view, a watcher's typing only the refusal), a transfer's go through master_side.shell_socket.copy_door, and
`OperatorError` becomes an answer with the operator's line.

Bounds of the framing: a frame holds at most MAX_CONTROL (JSON) or MAX_CHUNK (bytes; MAX_DATA for a transfer; an
INPUT frame up to the view's `max_input` once the answer to its open or attach said so, on this connection only: a
session without a terminal whose worker takes bulk input, slaveshell.vocabulary.flow.input_limits),
one view or transfer per connection; a frame the door cannot take (unknown type, oversized, wrong direction, not
JSON, unknown op) costs the connection: an ``error`` frame, the close, and a ``dropped`` audit event.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
from collections.abc import Callable
from typing import cast

from twisted.internet import defer
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from master_side.operators.api import ErrorKind, Handle, OperatorError
from master_side.operators.gate import ConnectionGate, Transport
from master_side.shell_socket.copy_door import TRANSFER_READ_SIZE, CopyDoor, set_read_size
from master_side.shell_socket.framed import DoorHost
from master_side.shell_socket.passed import (
    MAX_PASSED,
    STREAMS,
    FdReactor,
    PassedStdio,
    check_passed,
    close_all,
    nowait_supported,
    probe_input,
)
from master_side.shell_socket.run_door import RunDoor, fact_answer, runs_answer
from master_side.shell_socket.viewer_sink import WireViewerSink
from slaveshell.plumbing.write_now import buffered_bytes, write_frame
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import Control, FrameType, Op, WireError
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest, ProtocolError, check_bytes, check_int, check_signal, check_size

log = Logger()


@implementer(IFileDescriptorReceiver)
class WireDoor(Protocol):
    """One operator connection speaking slaveshell.vocabulary.framing. Descriptors its client passes
    (SCM_RIGHTS) are taken only with the open that announces them (master_side.shell_socket.passed)."""

    def __init__(self, service: DoorHost) -> None:
        self.service = service
        self.gate: ConnectionGate = service.gate
        self.decoder = framing.Decoder(refused=frozenset({FrameType.STDOUT, FrameType.STDERR}))
        self.admitted = False
        self.disconnected = False
        # Bytes written to the transport so far (the gate compares it with what is still buffered).
        self.written = 0
        self.disconnects: list[Callable[[], None]] = []
        self.view: Handle | None = None
        # An open, attach or copy was asked on this connection (one view or transfer per connection).
        self.viewing = False
        self.copying = CopyDoor(self)
        self.running = RunDoor(self)  # a fleet run on this connection (master_side.shell_socket.run_door)
        self._leaving = False  # the operator closed while its open was in progress
        # Frames read and not yet served, and whether reading is paused for them (`_serve`).
        self._held: collections.deque[framing.Frame] = collections.deque()
        self._serving = self._paused = False
        self._identity: Identity | None = None
        # Descriptors the client passed, not yet taken by the open that announces them (at most MAX_PASSED), and
        # the streams the master serves on them once taken.
        self._fds: list[int] = []
        self._received = 0  # descriptors passed on this connection, kept or not
        self._declined = False  # past the gate's bounds: the ones passed were closed, the client serves its streams
        self.passed: PassedStdio | None = None

    # -- the connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = cast(Transport, self.transport)
        reason = self.gate.admit(self, transport)
        if reason is not None:
            line = " ".join(reason.split())[:500]
            transport.write(framing.REFUSED_PREFIX + line.encode("ascii", "replace") + b"\n")
            transport.loseConnection()
            return
        self.admitted = True
        self.write(framing.MAGIC)

    def identity(self) -> Identity:
        if self._identity is None:
            # The gate's identify is peer_identity (SO_PEERCRED) in the service.
            self._identity = self.gate.identify(cast(Transport, self.transport))
        return self._identity

    def write(self, data: bytes) -> None:
        transport = cast(Transport, self.transport)
        before = buffered_bytes(transport)
        transport.write(data)
        self.written += max(buffered_bytes(transport) - before, 0)

    def write_frame(self, head: bytes, payload: bytes, at_once: bool = False) -> None:
        """A frame's header and payload, unjoined. `at_once` (an output frame): to the kernel now
        when nothing waits before it (viewer_sink.write_frame); else it waits for the reactor's turn, which sends what
        was written in it together."""
        write_frame(self.transport, (head, payload), at_once)
        self.written += len(head) + len(payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        self._close_fds()
        if self.passed is not None:
            self.passed.close()
        if self.admitted:
            self.gate.release(self)
        callbacks, self.disconnects = self.disconnects, []
        for callback in callbacks:
            callback()

    # -- passed descriptors ----------------------------------------------------------------------

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """A descriptor the client passed (SCM_RIGHTS), before the bytes it came with. Kept for the open that
        announces it; any other (after an open, past MAX_PASSED, from a user without a right, on a connection that
        is going) is closed at once, and the connection dropped, audited. Past the gate's bounds on descriptors
        held, the master declines them: closed, audited, and the open served as if none were passed (the client
        then serves those streams itself)."""
        with contextlib.suppress(OSError):
            os.set_inheritable(descriptor, False)
        if not self.admitted or self.disconnected or self.decoder.broken:
            close_all([descriptor])
            return
        self._received += 1
        why = None
        if self.viewing or self._received > MAX_PASSED:
            why = (f"file descriptors it did not announce (at most {MAX_PASSED}, with the open of a session "
                   "without a terminal)")
        else:
            why = self.gate.fds_refused(self)
        if why is not None:
            close_all([descriptor])
            self._close_fds()
            self._broken(why)
            return
        over = None if self._declined else self.gate.hold_fds(self, 1)
        if self._declined or over is not None:
            close_all([descriptor])
            self._close_fds()
            if over is not None:
                self._declined = True
                self.gate.audit(self.identity(), "refused", f"passed descriptors declined: {over}; the client "
                                "serves its streams itself")
            return
        self._fds.append(descriptor)

    def _close_fds(self) -> None:
        if self._fds:
            self.gate.release_fds(self, len(self._fds))
            close_all(self._fds)

    def _fd_closed(self) -> None:
        self.gate.release_fds(self, 1)

    def _take_passed(self, who: Identity, stdio: object, request: OpenRequest) -> PassedStdio | None:
        """The descriptors the open announced (`stdio`: their streams, in order), checked: a `PassedStdio` on
        them; None when none were announced, or when the master declines them (its `pass_stdio` off, a kernel
        without RWF_NOWAIT on pipes: closed, and the client serves those streams itself). OperatorError, the
        descriptors closed and the refusal audited, when they are not what the open announced."""
        fds, self._fds = self._fds, []
        if stdio is None and not fds:
            return None
        if self._declined:
            return None
        why = None
        if (not isinstance(stdio, list) or not stdio or len(stdio) > MAX_PASSED or len(set(map(str, stdio))) !=
                len(stdio) or any(name not in STREAMS for name in stdio)):
            why = f"stdio must name at most {MAX_PASSED} of the streams {', '.join(STREAMS)}, each once"
        elif len(fds) != len(stdio):
            why = f"the open announced {len(stdio)} file descriptors and passed {len(fds)}"
        elif request.pty:
            why = "file descriptors are taken only for a session without a terminal (-T)"
        else:
            why = next((r for r in (check_passed(fd, name) for name, fd in zip(stdio, fds, strict=True)) if r), None)
        if why is not None or not self.service.pass_stdio or not nowait_supported():
            self.gate.release_fds(self, len(fds))
            close_all(fds)
            if why is None:
                return None
            self.gate.audit(who, "refused", f"open refused: {why}")
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {why}")
        streams = dict(zip(cast(list[str], stdio), fds, strict=True))
        first = None
        if "in" in streams:
            takes, first = probe_input(streams["in"])
            if not takes:  # not readable without blocking (a FIFO opened by its name): the client reads it
                self.gate.release_fds(self, 1)
                close_all([streams.pop("in")])
                if not streams:
                    return None
        reactor = getattr(self.transport, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor
        return PassedStdio(cast(FdReactor, reactor), streams, self._refused, on_close=self._fd_closed,
                           first_input=first)

    def dataReceived(self, data: bytes) -> None:
        if not self.admitted or self.disconnected or self.decoder.broken:
            return
        try:
            self._held.extend(self.decoder.feed(data))
        except WireError as e:
            self._broken(str(e))
            return
        self._serve()

    def _serve(self) -> None:
        """Serve the frames read, in order. A call past max_calls_in_progress waits, with the frames after it,
        and the connection is not read meanwhile (at most one read's frames held): pipelined calls are served
        as earlier ones are answered, costing the master no more than that."""
        if self._serving:
            return
        self._serving = True
        try:
            while self._held and not self.disconnected and not self.decoder.broken:
                if self.gate.busy(self) and _limited_call(self._held[0]):
                    if not self._paused:
                        self._paused = True
                        cast(Transport, self.transport).pauseProducing()
                    return
                self._frame(self._held.popleft())
            if self._paused and not self.disconnected:
                self._paused = False
                cast(Transport, self.transport).resumeProducing()
        except WireError as e:
            self._broken(str(e))
        finally:
            self._serving = False

    def _broken(self, why: str) -> None:
        """The framing is broken: say so, close, and audit the drop (the gate keeps counting the connection,
        and dropping it if it stops reading, until it is gone)."""
        self.decoder.broken = True
        self.gate.audit(self.identity(), "dropped", f"connection dropped: protocol error: {why}")
        self.write(framing.control(Op.ERROR, text=f"protocol error: {why}"))
        cast(Transport, self.transport).loseConnection()

    # -- frames --------------------------------------------------------------------------------

    def _frame(self, frame: framing.Frame) -> None:
        if self._fds and not _announces(frame):
            self._close_fds()
            raise WireError("file descriptors passed with a frame that did not announce them")
        if frame.type is FrameType.INPUT:
            self._input(frame.payload)
            return
        if frame.type is FrameType.DATA:
            if not self.copying.frame(frame):
                self.write(framing.control(Op.REFUSED, method="data", error="no transfer on this connection"))
            return
        message = framing.parse_control(frame.payload, framing.FROM_CLIENT)
        op = message.op
        if op in framing.TRANSFER or op is Op.ABORT:
            if self.copying.frame(message):
                return
            if op is not Op.ACK:
                self.write(framing.control(Op.REFUSED, method=op.value, error="no transfer on this connection"))
                return
        if op in framing.CALLS:
            call_id = message.call_id
            if call_id is None:
                raise WireError(f"{op.value}: a call needs an id")
            self._call(call_id, message)
        else:  # Op.ACK, Op.RESIZE, Op.SIGNAL, Op.EOF, Op.STDOUT_CLOSED
            self._session(op, message)

    def _input(self, data: bytes) -> None:
        """An INPUT frame: the bytes the operator typed, for the session."""
        view = self.view
        if view is None:
            self._refuse("input", "no session on this connection")
            return
        try:
            view.input(check_bytes(data, "input", view.max_input))
        except ProtocolError as e:
            self._refused(view, "input", e)

    def _session(self, op: Op, message: Control) -> bool:
        """A session message (`op`, and the control that carries its values), decoded and given to the view.
        False when refused."""
        view = self.view
        if view is None:
            self._refuse(op.value, "no session on this connection")
            return False
        try:
            if op is Op.ACK:
                view.ack(check_int(message.get("n"), "ack", 0, 2**40))
            elif op is Op.RESIZE:
                view.resize(*check_size(message.get("cols"), message.get("rows")))
            elif op is Op.SIGNAL:
                view.signal(check_signal(message.get("name")))
            elif op is Op.EOF:
                view.eof()
            elif op is Op.STDOUT_CLOSED:
                view.stdout_closed()
            elif op is Op.CLOSE:
                view.close()
            else:  # Op.DETACH
                view.detach()
        except ProtocolError as e:
            return self._refused(view, op.value, e)
        return True

    def _refused(self, view: Handle, method: str, error: ProtocolError) -> bool:
        """A session message refused (by its values here, or by the session): its cost (View.refused), and the
        refusal to the client. True for a late event (nothing refused)."""
        refusal = view.refused(error)
        if refusal is None:
            return True
        self._refuse(method, refusal.message)
        return False

    def _refuse(self, method: str, error: str) -> None:
        if not self.disconnected:
            self.write(framing.control(Op.REFUSED, method=method, error=error))

    def answer(self, call_id: int, ok: bool, **fields: object) -> None:
        if self.disconnected:
            return
        try:
            frame = framing.answer(id=call_id, ok=ok, **fields)
        except (TypeError, ValueError) as e:  # a value JSON cannot hold, or over MAX_ANSWER
            log.warn("slaveshell: an answer does not fit the framed hop: {e}", e=str(e)[:200])
            frame = framing.control(Op.ANSWER, id=call_id, ok=False, error="the answer is too large for this client")
        self.write(frame)
        # An answer counts against the buffered bound like a session's output: a peer that asks and does not
        # read is dropped once it passes it.
        self.gate.check(self)

    def _call(self, call_id: int, message: Control) -> None:
        op = message.op
        if op is Op.CLOSE and self.running.interrupt():
            self.answer(call_id, True)  # the operator's Ctrl-C: the run starts no more, ends what runs
            return
        if op is Op.CLOSE and self.view is None and self.viewing and not self._leaving:
            # The operator gave up (Ctrl-C) while its session opens: it ends as soon as it has opened, rather
            # than waiting out its detach grace for an operator who is gone.
            self._leaving = True
            self.answer(call_id, True)
            return
        if op in (Op.CLOSE, Op.DETACH):
            ok = self._session(op, message)
            self.answer(call_id, ok, **({} if ok else {"error": f"{op.value} refused"}))
            return
        try:
            result = self.gate.limited(self, self._work, op, self.identity(), message)
        except OperatorError as e:  # the API's refusals, and the gate's (calls in progress, a dropped connection)
            self.answer(call_id, False, error=e.message, kind=e.kind.value)
            return
        d = result if isinstance(result, defer.Deferred) else defer.succeed(result)
        d.addCallbacks(lambda fields: None if fields is None else self.answer(call_id, True, **fields),
                       lambda failure: self._failed(call_id, failure))
        d.addBoth(lambda _: self._serve())  # the calls waiting for this one's place

    def _work(self, op: Op, who: Identity, message: Control) -> object:
        """What call `op` does (through the gate, `_call`): its answer's fields, or a Deferred of them."""
        api = self.service.api
        if op is Op.OPEN:
            return self._open(who, message.get("request"), message.get("max_output"), message.get("stdio"))
        if op is Op.ATTACH:
            return self._attach(who, message.get("session"), message.get("mode"), message.get("max_output"))
        if op is Op.COPY:
            return self.copying.call(who, message.get("request"))
        if op is Op.RUN:
            return self.running.call(who, message.get("request"))
        if op is Op.RUNS:
            return runs_answer(self.service.fleet, who, message.get("run"), message.get("cancel", False))
        if op is Op.FACTS:
            return fact_answer(self.service.fleet, who, message.get("workers"), message.get("refresh"))
        if op is Op.RELEASE:
            return {"text": api.release(who, message.get("build"))}
        if op is Op.HOLDS:
            return {"rows": api.held(who)}
        if op is Op.EXTEND:
            return api.extend(who, message.get("build"), message.get("seconds"))
        if op is Op.KILL:
            # A session another master of the site holds is ended there (master_side.cluster.kills).
            return api.kill_anywhere(who, message.get("session")).addCallback(lambda text: {"text": text})
        if op is Op.APPROVALS:
            return {"rows": api.pending_approvals(who, message.get("request"))}
        if op is Op.APPROVE:
            return {"text": api.approve(who, message.get("request"))}
        if op is Op.DENY:
            return {"text": api.deny(who, message.get("request"), message.get("reason"))}
        if op is Op.WORKERS:
            include_offline = message.get("include_offline", False)
            if not isinstance(include_offline, bool):
                raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: include_offline is true or false")
            if api.cluster is not None:  # a multi-master site: where each worker is (master_side.cluster.view)
                return api.cluster.workers(who, api.workers(who), include_offline).addCallback(
                    lambda rows: {"rows": rows})
            return {"rows": api.workers(who)}
        if op is Op.HISTORY:
            return api.site_history(who, message.get("filters")).addCallback(lambda rows: {"rows": rows})
        if op is Op.SEARCH:
            return api.site_search(who, message.get("text"), message.get("filters"))
        if op is Op.TRANSCRIPT:
            return api.transcript(who, message.get("session"), message.get("offset")).addCallback(
                lambda chunk: {"data": base64.b64encode(chunk["data"]).decode("ascii"), "eof": chunk["eof"]})
        return api.site_sessions(who)  # Op.SESSIONS

    def _failed(self, call_id: int, failure: Failure) -> None:
        if isinstance(failure.value, OperatorError):
            self.answer(call_id, False, error=failure.value.message, kind=failure.value.kind.value)
        else:
            log.failure("slaveshell: a call on the framed door failed", failure)
            self.answer(call_id, False, error="the master could not serve the call (see its log)")

    def _open(self, who: Identity, params: object, most: object, stdio: object = None
              ) -> defer.Deferred[dict[str, object] | None]:
        if self.viewing:
            self._close_fds()
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: this connection already has a session")
        try:
            request = OpenRequest.from_wire(params)
            max_output = framing.max_output(most)
        except ProtocolError as e:
            self._close_fds()
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
        passed = self._take_passed(who, stdio, request)
        self.passed = passed
        self.viewing = True

        def answer(view: Handle | None) -> dict[str, object] | None:
            if view is None:
                if passed is not None:
                    passed.close()
                return None
            if self._leaving:
                if passed is not None:
                    passed.close()
                view.close()  # the owner closes: the session ends
                return None
            self._take_view(view)
            fields: dict[str, object] = {"session": view.session_id, "input_window": view.input_grant,
                                         "max_input": view.max_input, "stdout_closed": True}
            if passed is not None:
                passed.start(view)
                fields["stdio"] = passed.streams
            return fields

        def failed(failure: Failure) -> Failure:
            if passed is not None:
                passed.close()
            return failure

        # On a multi-master site, a worker another master holds is opened there (master_side.cluster.relay).
        d = defer.maybeDeferred(self.service.api.open_anywhere, who, request,
                                WireViewerSink(self, max_output, passed))
        return d.addCallbacks(answer, failed)

    def _attach(self, who: Identity, session_id: object, mode: object, most: object
                ) -> defer.Deferred[dict[str, object]]:
        if self.viewing:
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: this connection already has a session")
        try:
            max_output = framing.max_output(most)
        except ProtocolError as e:
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
        self.viewing = True

        def attached(found: tuple[Handle, dict[str, object]]) -> dict[str, object]:
            self._take_view(found[0])
            return {**found[1], "max_input": found[0].max_input, "stdout_closed": True}

        def refused(failure: Failure) -> Failure:
            self.viewing = False
            return failure

        # On a multi-master site, a session another master holds is watched or joined there.
        d = defer.maybeDeferred(self.service.api.attach_anywhere, who, WireViewerSink(self, max_output), session_id,
                                mode)
        return d.addCallbacks(attached, refused)

    def _take_view(self, view: Handle) -> None:
        """The connection's view, and the INPUT frames it takes from now on (before the answer that tells the
        client, so that none of its larger frames can come first), read in larger pieces when they are a bulk
        stream's."""
        self.view = view
        self.decoder.take_input(view.max_input)
        if view.max_input > framing.MAX_CHUNK:
            # A bulk stream's input (a pipe into `-T`): its INPUT frames are read whole, several at once, as a
            # transfer's DATA frames are (copy_door), rather than 64 KiB per read with a copy into the decoder's
            # buffer for each piece of a frame.
            set_read_size(self.transport, TRANSFER_READ_SIZE)


def _announces(frame: framing.Frame) -> bool:
    """Whether `frame` is an open that announces passed descriptors (``stdio``)."""
    if frame.type is not FrameType.CONTROL:
        return False
    message = framing.parse_control(frame.payload, framing.FROM_CLIENT)
    return message.op is Op.OPEN and message.get("stdio") is not None


def _limited_call(frame: framing.Frame) -> bool:
    """A call max_calls_in_progress bounds: all but a session's close and detach."""
    return (frame.type is FrameType.CONTROL and framing.parse_control(frame.payload, framing.FROM_CLIENT).op
            in framing.CALLS - {Op.CLOSE, Op.DETACH})
