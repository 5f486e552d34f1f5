"""Calls to the master over one framed connection (slaveshell.vocabulary.framing), blocking, standard library only: what
the console asks between sessions (workers, sessions, history, kill) without a process or a connection per
question.

`MasterCalls(path).call(Op.WORKERS)` sends the call and waits for its answer: the answer's fields, or
CallError with the master's one-line refusal; a lost connection is made again once, at the next call.
One-shot commands (slaveshell.client.cli and its subcommands) use `call_master`, `transcript_chunks` and
`failed`.
"""

from __future__ import annotations

import base64
import contextlib
import selectors
import sys
import time
from collections.abc import Generator, Iterator

from slaveshell.client import connection as hop
from slaveshell.client.connection import Interrupted
from slaveshell.vocabulary.display import visible
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


@contextlib.contextmanager
def master_calls(socket_path: str) -> Iterator[MasterCalls]:
    """A connection to the master over the framed hop (MasterCalls) for one command's calls, closed after;
    Ctrl-C while it waits becomes Interrupted."""
    calls = MasterCalls(socket_path)
    try:
        yield calls
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        calls.close()


def call_master(socket_path: str, op: Op, **fields: object) -> dict[str, object]:
    """One call to the master, for one-shot commands: the answer's fields. CallError with the master's line;
    Interrupted on Ctrl-C."""
    with master_calls(socket_path) as calls:
        return calls.call(op, **fields)


def transcript_chunks(socket_path: str, session_id: str) -> Generator[bytes, None, None]:
    """A session's transcript as the master serves it, chunk by chunk from an offset over one connection: memory
    is one chunk whatever the transcript's size. CallError, Interrupted (while waiting for the master)."""
    offset = 0
    with master_calls(socket_path) as calls:
        while True:
            chunk = calls.call(Op.TRANSCRIPT, session=session_id, offset=offset)
            encoded = chunk.get("data")
            if not isinstance(encoded, str):
                raise CallError("the master's transcript answer has no data")
            data = base64.b64decode(encoded)
            offset += len(data)
            yield data
            if chunk.get("eof") is not False:
                return


def fetch_transcript(socket_path: str, session_id: str) -> bytes:
    """A session's whole transcript at once (for what needs all of it). CallError, Interrupted."""
    return b"".join(transcript_chunks(socket_path, session_id))


def failed(error: Exception) -> int:
    """A one-shot command's end after a failed call: the error's line on stderr (escaped), and the exit status
    (130 for Ctrl-C, 255 otherwise)."""
    if isinstance(error, Interrupted):
        print("slaveshell: interrupted", file=sys.stderr)
        return 130
    print(f"slaveshell: {visible(str(error))}", file=sys.stderr)
    return 255


__all__ = ["CallError", "MasterCalls", "call_master", "failed", "fetch_transcript", "master_calls", "rows",
           "transcript_chunks"]
