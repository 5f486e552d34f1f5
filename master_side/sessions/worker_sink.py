"""What the worker holds for one session over PB (`WorkerSink`): where its output, input_acks and exit go.

Its `remote_*` methods are the security boundary on the worker's link: they take plain values, and the session
logic (master_side.sessions.session) checks every one against the session's state. A worker's bad call becomes a plain
pb.Error for the worker and a report to the service, which decides the session's fate; it never raises into the
broker's connection handling. A late event (`LateEvent`: the session ended while the call was on its way) is
dropped. Calls the other way go through master_side.sessions.worker_link.WorkerPeer.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.spread import pb

from master_side.sessions.model import LateEvent
from master_side.sessions.session import MasterSession
from slaveshell.plumbing.lean_calls import LeanReceiver
from slaveshell.vocabulary.checks import check_bytes
from slaveshell.vocabulary.deflate import inflate
from slaveshell.vocabulary.protocol import ProtocolError


class WorkerSink(LeanReceiver):
    """What the worker holds for the session: where its output goes. Output and input_acks may also come as
    lean calls (slaveshell.plumbing.lean_calls), checked by the same methods."""

    lean_methods = frozenset({"output", "output_z", "input_ack"})

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

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self.on_error(self.session, error)

    def remote_output(self, stream: object, data: object, acks: object = ()) -> None:
        self._call(self.session.worker_output, stream, data, acks)

    def remote_output_z(self, stream: object, data: object, acks: object = ()) -> None:
        """Output deflated (slaveshell.vocabulary.deflate), from a worker the master told it may: inflated within
        the session's largest message, then taken as `remote_output` takes it."""
        self._call(self._output_z, stream, data, acks)

    def _output_z(self, stream: object, data: object, acks: object) -> None:
        session = self.session
        if not session.deflated_output:
            raise ProtocolError("deflated output from a worker that was not told it may send it")
        session.output_room()  # no inflating for an ended session or past the window: a flood costs its bytes only
        limit = session.limits.chunk
        session.worker_output(stream, inflate(check_bytes(data, "deflated output", limit), limit), acks)

    def remote_input_ack(self, nbytes: object, hidden: object = False) -> None:
        self._call(self.session.worker_input_ack, nbytes, hidden)

    def remote_flushed(self) -> None:
        self._call(self.session.worker_flushed)

    def remote_exit(self, code: object, signal: object, reason: object) -> None:
        self._call(self.session.worker_exit, code, signal, reason)
