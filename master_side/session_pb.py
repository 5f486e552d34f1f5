"""The PB adapters of one session: what an operator's client holds for its view (`ViewerHandle`) and what the
worker holds for the session's output (`WorkerSink`). Each turns a peer's bad call into a plain pb.Error for
that peer and a report to the service, and drops a late event (`LateEvent`); the session logic
(master_side.relay) validates every value it is handed. Calls the other way go through
slaveshell.remote.RemotePeer.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.spread import pb

from slaveshell.lean_calls import LeanReceiver
from slaveshell.protocol import ProtocolError

from .relay import MasterSession
from .session_model import LateEvent, ReadOnly, Viewer


class _Guarded(pb.Referenceable):
    """A peer's bad call becomes a plain pb.Error for that peer and a report to the service, which decides
    what the session's fate is; it never raises into the broker's connection handling."""

    def __init__(self, session: MasterSession, on_error: Callable[[MasterSession, ProtocolError], None]) -> None:
        self.session = session
        self.on_error = on_error

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except LateEvent:
            return  # the session ended while this call was on its way: nothing to do, nobody to blame
        except ProtocolError as e:
            self.on_error(self.session, e)
            raise pb.Error(str(e)) from None


class ViewerHandle(_Guarded):
    """What an operator's client holds for its view of a session."""

    def __init__(self, session: MasterSession, viewer: Viewer,
                 on_error: Callable[[MasterSession, ProtocolError], None]) -> None:
        super().__init__(session, on_error)
        self.viewer = viewer

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(self.viewer, *args)
        except LateEvent:
            return  # the session, or this view, ended while the call was on its way
        except ProtocolError as e:
            # A misbehaving owner costs its session; anyone else is refused (a watcher trying to type) or, for
            # a real protocol error, only loses its own view.
            if self.viewer is self.session.owner:
                self.on_error(self.session, e)
            elif not isinstance(e, ReadOnly):
                self.session.remove_viewer(self.viewer, f"protocol error: {e}")
            raise pb.Error(str(e)) from None

    def remote_input(self, data: object) -> None:
        self._call(self.session.viewer_input, data)

    def remote_eof(self) -> None:
        self._call(self.session.viewer_eof)

    def remote_resize(self, cols: object, rows: object) -> None:
        self._call(self.session.viewer_resize, cols, rows)

    def remote_signal(self, name: object) -> None:
        self._call(self.session.viewer_signal, name)

    def remote_ack(self, nbytes: object) -> None:
        self._call(self.session.viewer_ack, nbytes)

    def remote_close(self) -> None:
        self._call(self.session.viewer_close)

    def remote_detach(self) -> None:
        self._call(self.session.viewer_detach)


class WorkerSink(_Guarded, LeanReceiver):
    """What the worker holds for the session: where its output goes. Output and input_acks may also come as
    lean calls (slaveshell.lean_calls), checked by the same methods."""

    lean_methods = frozenset({"output", "input_ack"})

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self.on_error(self.session, error)

    def remote_output(self, stream: object, data: object, acks: object = ()) -> None:
        self._call(self.session.worker_output, stream, data, acks)

    def remote_input_ack(self, nbytes: object, hidden: object = False) -> None:
        self._call(self.session.worker_input_ack, nbytes, hidden)

    def remote_exit(self, code: object, signal: object, reason: object) -> None:
        self._call(self.session.worker_exit, code, signal, reason)
