"""The gate on the input of a fleet run's part routed from another master (master_side.cluster.serve): all it may
take is what the open call said (`OpenCall.stdin`): the run's script, which this master's moderators saw and
approved on a four-eyes worker, or nothing for a command (a run closes a command's stdin at once).

`PartInput` stands between the calling master's input messages and the session's View: input that goes on with
the expected bytes passes, end of input passes once all of them came, and anything else (other bytes, more bytes,
an end of input too early) ends the session on the worker, recorded with why, and is an audited refusal. The
script runs only after its end of input (slaveshell.fleet.script.SCRIPT_RUNNER: `cat > file && ... && file`), so
the prefix that reached the worker before a difference never runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class PartView(Protocol):
    """What the gate uses of the session's View."""

    @property
    def session_id(self) -> str: ...
    @property
    def worker(self) -> str: ...
    def input(self, data: bytes) -> None: ...
    def eof(self) -> None: ...
    def end(self, why: str) -> None: ...  # the session ends on the worker, recorded with why


class PartInput:
    """Lets through to a view only `expected` as input, then end of input; `refused` is told the line when the
    calling master sends anything else (the session is ended first, and nothing more passes)."""

    def __init__(self, expected: bytes, refused: Callable[[str], None]) -> None:
        self._expected = expected
        self._taken = 0
        self._ended = False
        self._refused = refused

    def input(self, view: PartView, data: bytes) -> None:
        if self._ended:
            return
        end = self._taken + len(data)
        if end > len(self._expected) or self._expected[self._taken:end] != data:
            self._differs(view)
            return
        self._taken = end
        view.input(data)

    def eof(self, view: PartView) -> None:
        if self._ended:
            return
        if self._taken != len(self._expected):
            self._differs(view)
            return
        view.eof()

    def _differs(self, view: PartView) -> None:
        what = ("none (a command's stdin is closed)" if not self._expected else
                f"its approved script ({len(self._expected)} bytes)")
        self._end(view, f"a fleet run's part routed from another master sent input other than {what}: session "
                        f"{view.session_id} on {view.worker} ended")

    def refuse(self, view: PartView, what: str) -> None:
        """The calling master asked what a run's part never does (`what`: "was detached"): the session ends."""
        if not self._ended:
            self._end(view, f"a fleet run's part routed from another master {what}: session {view.session_id} on "
                            f"{view.worker} ended")

    def _end(self, view: PartView, line: str) -> None:
        self._ended = True
        view.end(line)
        self._refused(line)
