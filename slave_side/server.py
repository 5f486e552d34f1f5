"""PB adapters on the worker: the open call the master makes, and the per-session handle it then drives. The
only slave_side module that knows PB: the session (slave_side.session) and the owner's limits (slave_side.host)
take checked, typed values (slaveshell.vocabulary.protocol's vocabulary) and report through a `PbSessionSink` over a
`slaveshell.plumbing.lean_calls.LeanPeer`.

`remote_*` methods are the security boundary: they take plain values only, check every one, and answer a bad
call with a plain error (a `pb.Error` with a message, or an `{"ok": False}` reply), never by dropping the worker's
connection to its master, which would fail that worker's builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

from twisted.logger import Logger
from twisted.spread import pb

from slave_side.host import Admission, ProcessReactor, WorkerOptions
from slave_side.owner_log import OwnerLog, RecordingSink
from slave_side.session import WorkerSession
from slaveshell.plumbing.lean_calls import LeanPeer, LeanReceiver, accept
from slaveshell.plumbing.remote import (
    Undo,
    deflate_known,
    exported,
    link_rtt,
    on_disconnect,
    opening,
    set_nodelay,
)
from slaveshell.vocabulary.deflate import ALWAYS, Deflater, inflate
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import (
    ExitStatus,
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_int,
    check_signal,
    check_size,
)

log = Logger()


class PbSend(Protocol):
    """One call on the master's end of a session (master_side.sessions.worker_sink.WorkerSink): its method's name and
    its plain arguments (`LeanPeer.send`)."""

    def __call__(self, method: str, *args: object) -> None: ...


class PbSessionSink:
    """A `slaveshell.vocabulary.protocol.SessionSink` on the worker's PB link: each message one call on the master's
    end."""

    def __init__(self, send: PbSend) -> None:
        self.send = send
        # Set once the master said it takes output deflated (`SessionHandle.remote_deflate`).
        self.deflater: Deflater | None = None

    def output(self, stream: int, data: bytes, acks: Sequence[tuple[int, bool]] = ()) -> None:
        packed = self.deflater.pack(data) if self.deflater is not None else None
        method, body = ("output", data) if packed is None else ("output_z", packed)
        if acks:
            self.send(method, stream, body, [[nbytes, hidden] for nbytes, hidden in acks])
        else:
            self.send(method, stream, body)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.send("input_ack", nbytes, hidden)

    def flushed(self) -> None:
        self.send("flushed")

    def exit(self, status: ExitStatus) -> None:
        self.send("exit", status.code, status.signal, status.reason)


class SessionHandle(LeanReceiver):
    """What the master holds for one session. Its input and acks may also come as lean calls
    (slaveshell.plumbing.lean_calls), checked here the same way."""

    lean_methods = frozenset({"input", "input_z", "ack"})

    def __init__(self, session: WorkerSession, peer: LeanPeer, sink: PbSessionSink | None = None) -> None:
        self.session = session
        self.peer = peer
        self.sink = sink

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        log.warn("slaveshell session {sid}: refused a lean {method} from master: {e}", sid=self.session.id,
                 method=visible(method), e=visible(error))

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ProtocolError as e:
            log.warn("slaveshell session {sid}: refused {what} from master: {e}", sid=self.session.id,
                     what=what, e=visible(e))
            raise pb.Error(str(e)) from None

    def remote_input(self, data: object) -> None:
        """Bytes for the process: at most the session's largest input message (the open reply's max_input)."""
        self._guard("input", lambda: self.session.input(check_bytes(data, "input", self.session.input_limits.chunk)))

    def remote_input_z(self, data: object) -> None:
        """Input deflated (slaveshell.vocabulary.deflate), from a master this worker's open answer said it takes it
        from: inflated within the session's largest input message, then taken as `remote_input` takes it."""
        limit = self.session.input_limits.chunk

        def take() -> None:
            if not self.session.options.deflate:
                raise ProtocolError("deflated input, which this worker did not offer to take")
            self.session.input(inflate(check_bytes(data, "deflated input", limit), limit, "input"))

        self._guard("input", take)

    def remote_eof(self) -> None:
        self.session.eof()

    def remote_stdout_closed(self) -> None:
        """Whoever read the session's stdout went away (the open answer's `stdout_closed` said it is taken)."""
        self.session.stdout_closed()

    def remote_resize(self, cols: object, rows: object) -> None:
        self._guard("resize", lambda: self.session.resize(*check_size(cols, rows)))

    def remote_signal(self, name: object) -> None:
        self._guard("signal", lambda: self.session.signal(check_signal(name)))

    def remote_ack(self, nbytes: object) -> None:
        self._guard("ack", lambda: self.session.ack(check_int(nbytes, "ack", 0, 2**40)))

    def remote_close(self) -> None:
        self.session.close("closed by the master")

    def remote_window(self, nbytes: object) -> None:
        """The master grants this session's output window up to `nbytes` (slaveshell.vocabulary.windows), and takes
        `flushed`."""
        self._guard("window", lambda: self.session.grant(check_int(nbytes, "window", 1, 2**40)))

    def remote_deflate(self) -> None:
        """The master takes this session's output deflated (slaveshell.vocabulary.deflate), and the later
        sessions' on this connection from their start: sent so while the link is slow (or always, as the owner
        says: WorkerOptions.deflate)."""
        deflate_known(getattr(self.peer.ref, "broker", None), known=True)
        self.deflate()

    def deflate(self) -> None:
        session, window = self.session, self.session.window
        # Not a terminal's output: what a Ctrl-C under a flood leaves on the screen is what sits between the
        # master and the client, and a deflated flood on a slow link fills that (578 KB after ^C beside two
        # CPU-bound processes at 100 ms, against the test's 192 KiB).
        if (self.sink is not None and session.deflater is None and session.options.deflate
                and not session.request.pty):
            broker = getattr(self.peer.ref, "broker", None)
            session.deflater = Deflater((lambda: None) if session.options.deflate == ALWAYS
                                        else lambda: link_rtt(broker, window.min_rtt))
            self.sink.deflater = session.deflater

    def remote_lean(self) -> None:
        """The master takes lean calls on this connection: the session's output and input_acks go that way."""
        self.peer.lean = True

    def remote_ping(self) -> bool:
        """The master's heartbeat: answering it is the point."""
        return not self.session.ended


class ShellServer:
    """The worker's half of slaveshell: opens sessions for its master within the owner's limits."""

    def __init__(self, options: WorkerOptions, reactor: ProcessReactor | None = None,
                 owner_log: OwnerLog | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = cast(ProcessReactor, default_reactor)
        self.options = options
        self.reactor: ProcessReactor = reactor
        self.sessions: dict[str, WorkerSession] = {}
        self.admission = Admission(options)
        # Each live session's disconnect notification (its undoing) and peer, to give back when it ends.
        self._links: dict[str, tuple[Undo, LeanPeer]] = {}
        # The owner's own record (slave_side.owner_log), when install() was given local_log.
        self.owner_log = owner_log

    def open(self, basedir: str, sink: object, params: object,
             build_running: Callable[[], bool] = lambda: False) -> dict[str, object]:
        """`BotPb.remote_slaveshell_open`: the master's open request (`OpenRequest.to_wire()`) and its sink.
        Answers ``{"ok": True, "session": SessionHandle, "pid", "id", "lean": True, "window": True, "deflate": bool,
        "max_input": n, "stdout_closed": True, "exported": n}`` (lean: this connection takes
        slaveshell.plumbing.lean_calls; stdout_closed: the session takes `SessionHandle.remote_stdout_closed`;
        window: the session's output window follows the link and takes the master's grant,
        `SessionHandle.remote_window`; deflate: it may send output deflated once told, `SessionHandle.remote_deflate`;
        max_input: the largest input message the session takes, slaveshell.vocabulary.flow.worker_input_limits;
        exported: how many objects this connection's broker exported before this answer, for the master's `workers`
        listing) or ``{"ok": False, "error": text}``.
        `build_running()` tells whether a build step runs on this worker now (its output is then paced:
        WorkerOptions.busy_rate)."""
        opened = opening(OpenRequest.from_wire, params, sink)
        if isinstance(opened, str):
            return {"ok": False, "error": opened}
        request, ref = opened
        try:
            session_id = self.admission.admit(request, len(self.sessions))
        except ProtocolError as e:
            if self.owner_log is not None:
                self.owner_log.session_refused(request, str(e))
            return {"ok": False, "error": str(e)}

        def refused(method: str, message: str) -> None:
            log.warn("slaveshell session {sid}: master refused {method}: {err}", sid=session_id, method=method,
                     err=visible(message))

        # The master refused or went away: never let this surface as an unhandled error in the worker.
        peer = LeanPeer(ref, on_lost=lambda: session.close("the master connection was lost"), on_refused=refused)
        sink = PbSessionSink(peer.send)
        recording: RecordingSink | None = None
        if self.owner_log is not None:
            recording = RecordingSink(sink, self.owner_log, session_id, request,
                                      self.owner_log.open_cast(session_id, request))
        session = WorkerSession(self.reactor, session_id, request, self.options, basedir, recording or sink,
                                on_closed=self._closed, build_running=build_running)
        try:
            pid = session.start()
        except ProtocolError as e:
            peer.release()
            if recording is not None and self.owner_log is not None:
                if recording.cast is not None:
                    recording.cast.discard()
                self.owner_log.session_refused(request, str(e))
            return {"ok": False, "error": str(e)}
        if recording is not None and self.owner_log is not None:
            self.owner_log.session_started(session_id, request, session.cwd or "?",
                                           recording.cast.path if recording.cast is not None else None)
        self.sessions[session_id] = session
        set_nodelay(ref)
        broker = getattr(ref, "broker", None)
        lean = accept(broker)
        # The master is gone: nobody can see or end this session any more, so end it here. Undone, and the
        # master's sink given back, when the session ends (`_closed`).
        self._links[session_id] = (on_disconnect(ref, lambda: session.close("the master connection was lost")),
                                   peer)
        handle = SessionHandle(session, peer, sink)
        if deflate_known(broker):  # this master took deflated output before: from the first message on
            handle.deflate()
        return {"ok": True, "session": handle, "pid": pid, "id": session_id, "lean": lean, "window": True,
                "deflate": self.options.deflate, "max_input": session.input_limits.chunk, "stdout_closed": True,
                "exported": exported(broker)}

    def _closed(self, session: WorkerSession) -> None:
        """The session ended (its exit is sent): drop it, and the master's sink it held."""
        self.sessions.pop(session.id, None)
        undo, peer = self._links.pop(session.id, (None, None))
        if undo is not None and peer is not None:
            undo()
            peer.release()

