"""Calls to the master over one framed connection (slaveshell.vocabulary.framing), blocking, standard library only: what
the console asks between sessions (workers, sessions, history, kill) without a process or a connection per
question.

`MasterCalls(path).call(Op.WORKERS)` sends the call and waits for its answer: the answer's fields, or
CallError with the master's one-line refusal; a lost connection is made again once, at the next call.
"""

from __future__ import annotations

import selectors
import time

from slaveshell.client import connection as hop
from slaveshell.vocabulary.framing import FrameType, Op

# How long a call may wait for its answer (seconds).
CALL_TIMEOUT = 60.0


class CallError(Exception):
    """The master refused the call or could not be reached; the message is for the operator."""


class MasterCalls:
    def __init__(self, socket_path: str, timeout: float = CALL_TIMEOUT) -> None:
        self.path = socket_path
        self.timeout = timeout
        self.connection: hop.Connection | None = None

    def _connected(self) -> hop.Connection:
        if self.connection is None or self.connection.closed:
            try:
                self.connection = hop.Connection(hop.connect(self.path))
            except hop.HopError as e:
                raise CallError(str(e)) from None
        return self.connection

    def call(self, op: Op, **fields: object) -> dict[str, object]:
        """The answer's fields (without id and ok). CallError on a refusal, a lost master or a timeout."""
        for attempt in (1, 2):
            connection = self._connected()
            try:
                return self._ask(connection, op, fields)
            except hop.HopError as e:
                connection.close()
                self.connection = None
                if attempt == 2 or connection.greeted is False:
                    raise CallError(str(e)) from None
        raise AssertionError("unreachable")

    def _ask(self, connection: hop.Connection, op: Op, fields: dict[str, object]) -> dict[str, object]:
        call_id = connection.next_id()
        connection.control(op, id=call_id, **fields)
        deadline = time.monotonic() + self.timeout
        with selectors.DefaultSelector() as selector:
            selector.register(connection.sock, selectors.EVENT_READ)
            while True:
                if connection.out:
                    connection.flush()
                left = deadline - time.monotonic()
                if left <= 0:
                    connection.close()
                    self.connection = None
                    raise CallError(f"the master did not answer within {self.timeout:g} s")
                if not selector.select(min(left, 1.0)):
                    continue
                for frame in connection.receive():
                    if frame.type is not FrameType.CONTROL:
                        continue  # no session on this connection: nothing else is expected
                    answer = hop.parse(frame)
                    if answer.op is not Op.ANSWER or answer.call_id != call_id:
                        continue
                    if answer.get("ok") is not True:
                        raise CallError(str(answer.get("error") or "the master refused"))
                    return {k: v for k, v in answer.fields.items() if k not in ("id", "ok")}

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def rows(answer: dict[str, object]) -> list[dict[str, object]]:
    """The rows of a WORKERS, SESSIONS or HISTORY answer. CallError when the master sent something else."""
    value = answer.get("rows")
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise CallError("the master's answer has no rows")
    return value


__all__ = ["CallError", "MasterCalls", "rows"]
