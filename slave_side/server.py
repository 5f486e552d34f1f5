"""PB adapters on the worker: the open call the master makes, and the per-session handle it then drives.

`remote_*` methods are the security boundary: they take plain values only, check every one, and answer a bad
call with a plain error (a `pb.Error` with a message, or an `{"ok": False}` reply), never by dropping the worker's
connection to its master, which would fail that worker's builds.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.logger import Logger
from twisted.spread import pb

from slaveshell.display import visible
from slaveshell.protocol import (
    OpenRequest,
    ProtocolError,
    check_bytes,
    check_int,
    check_signal,
    check_size,
)
from slaveshell.remote import RemotePeer, set_nodelay

from .session import WorkerOptions, WorkerSession

log = Logger()


class SessionHandle(pb.Referenceable):
    """What the master holds for one session."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ProtocolError as e:
            log.warn("slaveshell session {sid}: refused {what} from master: {e}", sid=self.session.id,
                     what=what, e=visible(e))
            raise pb.Error(str(e)) from None

    def remote_input(self, data: object) -> None:
        self._guard("input", lambda: self.session.input(check_bytes(data, "input")))

    def remote_eof(self) -> None:
        self.session.eof()

    def remote_resize(self, cols: object, rows: object) -> None:
        self._guard("resize", lambda: self.session.resize(*check_size(cols, rows)))

    def remote_signal(self, name: object) -> None:
        self._guard("signal", lambda: self.session.signal(check_signal(name)))

    def remote_ack(self, nbytes: object) -> None:
        self._guard("ack", lambda: self.session.ack(check_int(nbytes, "ack", 0, 2**40)))

    def remote_close(self) -> None:
        self.session.close("closed by the master")

    def remote_ping(self) -> bool:
        """The master's heartbeat: answering it is the point."""
        return not self.session.ended


class ShellServer:
    """The worker's half of slaveshell: opens sessions for its master within the owner's limits."""

    def __init__(self, options: WorkerOptions, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.options = options
        self.reactor = reactor
        self.sessions: dict[str, WorkerSession] = {}
        self._ids = itertools.count(1)

    def open(self, basedir: str, sink: Any, params: object) -> dict[str, Any]:
        try:
            request = OpenRequest.from_wire(params)
        except ProtocolError as e:
            return {"ok": False, "error": f"bad request: {e}"}
        if not isinstance(sink, pb.RemoteReference):
            return {"ok": False, "error": "bad request: the sink must be a remote reference"}
        allowed = self.options.allowed_users
        if allowed is not None and request.operator not in allowed:
            return {"ok": False, "error": f"this worker's owner does not allow {request.operator or 'anonymous'} "
                                          "to open shells here"}
        if len(self.sessions) >= self.options.max_sessions:
            return {"ok": False, "error": f"the worker allows at most {self.options.max_sessions} "
                                          "shell sessions at once"}
        session_id = f"w{next(self._ids)}"

        def refused(method: str, message: str) -> None:
            log.warn("slaveshell session {sid}: master refused {method}: {err}", sid=session_id, method=method,
                     err=visible(message))

        # The master refused or went away: never let this surface as an unhandled error in the worker.
        peer = RemotePeer(sink, on_lost=lambda: session.close("the master connection was lost"), on_refused=refused)
        session = WorkerSession(self.reactor, session_id, request, self.options, basedir, peer.send,
                                on_closed=self._closed)
        try:
            pid = session.start()
        except ProtocolError as e:
            return {"ok": False, "error": str(e)}
        self.sessions[session_id] = session
        set_nodelay(sink)
        # The master is gone: nobody can see or end this session any more, so end it here.
        sink.notifyOnDisconnect(lambda _ref: session.close("the master connection was lost"))
        return {"ok": True, "session": SessionHandle(session), "pid": pid, "id": session_id}

    def _closed(self, session: WorkerSession) -> None:
        self.sessions.pop(session.id, None)

