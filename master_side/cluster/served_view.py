"""What this master holds of a session it serves for another master (`ServedView`, master_side.cluster.serve), and
the gate on the input of a fleet run's part routed from another master (`PartInput`): all it may take is what
the open call said (`OpenCall.stdin`): the run's script, which this master's moderators saw and approved on a
four-eyes worker, or nothing for a command (a run closes a command's stdin at once).

`PartInput` stands between the calling master's messages and the session's View: input that goes on with the
expected bytes passes, end of input passes once all of them came, and anything else (other bytes, more bytes, an
end of input too early) ends the session on the worker, recorded with why, and is an audited refusal. The
script runs only after its end of input (slaveshell.fleet.script.SCRIPT_RUNNER: `cat > file && ... && file`), so
the prefix that reached the worker before a difference never runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from slaveshell.vocabulary.protocol import ProtocolError


class ServedView(Protocol):
    """What master_side.cluster.serve holds of a session it opened (the operators' API's View): the calling
    master's messages go to it."""

    @property
    def session_id(self) -> str: ...
    @property
    def input_grant(self) -> int: ...
    @property
    def live(self) -> bool: ...
    @property
    def worker(self) -> str: ...
    @property
    def role(self) -> str: ...  # owner, join, watch
    @property
    def size(self) -> tuple[int, int]: ...
    def input(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def signal(self, signum: int) -> None: ...
    def ack(self, nbytes: int) -> None: ...
    def close(self) -> None: ...
    def detach(self) -> None: ...
    def end(self, why: str) -> None: ...  # the session ends on the worker, recorded with why
    def refused(self, error: ProtocolError) -> object: ...


class PartInput:
    """A `ServedView` that lets through only `expected` as input, then end of input; `refused` is told the line
    when the calling master sends anything else (the session is ended first)."""

    def __init__(self, view: ServedView, expected: bytes, refused: Callable[[str], None]) -> None:
        self.view = view
        self._expected = expected
        self._taken = 0
        self._ended = False
        self._refused = refused

    def _differs(self, why: str) -> None:
        if self._ended:
            return
        self._ended = True
        line = (f"a fleet run's part routed from another master sent input other than {why}: session "
                f"{self.view.session_id} on {self.view.worker} ended")
        self.view.end(line)
        self._refused(line)

    def input(self, data: bytes) -> None:
        if self._ended:
            return
        end = self._taken + len(data)
        if end > len(self._expected) or self._expected[self._taken:end] != data:
            self._differs(self._what())
            return
        self._taken = end
        self.view.input(data)

    def eof(self) -> None:
        if self._ended:
            return
        if self._taken != len(self._expected):
            self._differs(self._what())
            return
        self.view.eof()

    def _what(self) -> str:
        if not self._expected:
            return "none (a command's stdin is closed)"
        return f"its approved script ({len(self._expected)} bytes)"

    # -- the rest as the View's --------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.view.session_id

    @property
    def input_grant(self) -> int:
        return self.view.input_grant

    @property
    def live(self) -> bool:
        return self.view.live

    @property
    def worker(self) -> str:
        return self.view.worker

    @property
    def role(self) -> str:
        return self.view.role

    @property
    def size(self) -> tuple[int, int]:
        return self.view.size

    def resize(self, cols: int, rows: int) -> None:
        self.view.resize(cols, rows)

    def signal(self, signum: int) -> None:
        self.view.signal(signum)

    def ack(self, nbytes: int) -> None:
        self.view.ack(nbytes)

    def close(self) -> None:
        self.view.close()

    def detach(self) -> None:
        self.view.detach()

    def end(self, why: str) -> None:
        self.view.end(why)

    def refused(self, error: ProtocolError) -> object:
        return self.view.refused(error)
