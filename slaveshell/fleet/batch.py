"""How many workers of a fleet run run at once (``--batch N|P%``, Salt's ``-b``), and the run's scheduler: a
sans-I/O state machine. Events go in (a worker's approval given, a session started, ended with its exit status
and output, timed out, the operator's Ctrl-C, the clock); decisions come out (`Ask` a moderator's approval for
these workers, `Start` those, `End` those sessions). The caller asks the approvals, opens and ends the sessions
(HUP, TERM, KILL, as a session's Ctrl-C does) and keeps the timers."""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from slaveshell.fleet.outcome import Outcome, Output, State
from slaveshell.vocabulary.display import visible

_BATCH = re.compile(r"([0-9]{1,9})(%?)")


class BatchError(ValueError):
    """A malformed ``--batch``: one line for the operator (exit 2, nothing starts)."""


@dataclass(frozen=True)
class Batch:
    """``--batch``: a number of workers, or a percentage of the targets."""

    value: int
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> Batch:
        match = _BATCH.fullmatch(text.strip())
        if not match or int(match.group(1)) == 0 or (match.group(2) and int(match.group(1)) > 100):
            raise BatchError(f"--batch {visible(text)}: expected a number of workers (at least 1) "
                             "or a percentage of the targets (1% to 100%)")
        return cls(int(match.group(1)), bool(match.group(2)))

    def size(self, targets: int) -> int:
        """Workers at once for `targets` targets: a percentage is rounded down as Salt does (in exact integers:
        29% of 100 is 29), and is at least 1."""
        if not self.percent:
            return self.value
        return max(1, self.value * targets // 100)

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


class Reason(enum.Enum):
    """Why the scheduler ends a session."""

    TIMEOUT = "timed out"
    INTERRUPT = "interrupted"


@dataclass(frozen=True)
class Start:
    worker: str


@dataclass(frozen=True)
class End:
    worker: str
    reason: Reason


@dataclass(frozen=True)
class Ask:
    """Ask the moderator's approval the worker needs before it starts (a four-eyes worker): it waits without a
    place in the batch."""

    worker: str


Decision = Start | End | Ask


class _Phase(enum.Enum):
    WAITING = "waiting"
    ASKING = "asking"  # Ask decided, the approval not yet given
    APPROVED = "approved"  # approved, waiting for a place in the batch
    STARTING = "starting"  # Start decided, the session not yet open
    RUNNING = "running"
    ENDING = "ending"  # End decided, the session not yet ended
    DONE = "done"


class Scheduler:
    """One fleet run's order of work. `begin()` gives the first batch; each event method returns what to do
    next. At most `batch` sessions are starting or running at once; a worker whose session runs for
    `timeout` seconds is ended (`expired`, or `timed_out` from the caller's timer); after `interrupted`
    (Ctrl-C) nothing more starts, the running sessions are ended, and `outcomes` says which ran.

    The workers of `approvals` need a moderator's approval first: it is asked (`Ask`, at most `asking` at
    once) before they take a place in the batch, so that the others run while it waits; once `approved`, such
    a worker starts at the next free place, before the workers still waiting."""

    def __init__(self, targets: Iterable[str], batch: int, timeout: float | None = None,
                 approvals: Iterable[str] = (), asking: int = 4) -> None:
        if batch < 1:
            raise ValueError("a batch is at least 1")
        if asking < 1:
            raise ValueError("approvals asked at once are at least 1")
        if timeout is not None and timeout <= 0:
            raise ValueError("a timeout is positive")
        self.order = list(dict.fromkeys(targets))
        self.batch = batch
        self.timeout = timeout
        self.asking = asking
        self.stopping = False
        gated = set(approvals)
        self._phase = {w: _Phase.WAITING for w in self.order}
        self._started: dict[str, float] = {}
        self._ending: dict[str, Reason] = {}
        self._sessions: dict[str, str] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._active: set[str] = set()  # starting, running or ending
        self._plain = [w for w in self.order if w not in gated]  # started in this order
        self._next = 0
        self._gated = [w for w in self.order if w in gated]  # asked in this order
        self._next_asked = 0
        self._asked: set[str] = set()  # asking
        self._approved: collections.deque[str] = collections.deque()  # approved, waiting for a place

    # Events in.

    def begin(self) -> list[Decision]:
        return self._fill()

    def approved(self, worker: str) -> list[Decision]:
        """The worker's approval was given: it starts at the next free place."""
        if self._phase.get(worker) is not _Phase.ASKING:
            return []
        self._asked.discard(worker)
        self._phase[worker] = _Phase.APPROVED
        self._approved.append(worker)
        return self._fill()

    def started(self, worker: str, now: float, session: str = "") -> list[Decision]:
        """The worker's session is open and its command runs."""
        if self._phase.get(worker) is not _Phase.STARTING:
            return []
        self._started[worker] = now
        self._sessions[worker] = session
        if self.stopping:
            return self._end(worker, Reason.INTERRUPT)
        self._phase[worker] = _Phase.RUNNING
        return []

    def ended(self, worker: str, exit_status: int | None, output: Output, now: float) -> list[Decision]:
        """The worker's session ended: its command's exit status (None when the session ended without one)."""
        phase = self._phase.get(worker)
        if phase not in (_Phase.STARTING, _Phase.RUNNING, _Phase.ENDING):
            return []
        self._started.setdefault(worker, now)
        reason = self._ending.get(worker)
        if reason is Reason.TIMEOUT:
            state = State.TIMED_OUT
        elif reason is Reason.INTERRUPT:
            state = State.INTERRUPTED
        else:
            state = State.OK if exit_status == 0 else State.FAILED
        self._finish(Outcome(worker, state, exit_status, max(0.0, now - self._started[worker]), output,
                             self._sessions.get(worker) or None, "" if exit_status is not None else "no exit status"))
        return self._fill()

    def failed(self, worker: str, state: State, reason: str, session: str = "") -> list[Decision]:
        """The worker's session could not be opened (the worker went away, refused, an error), its approval was
        not given (denied, expired, withdrawn), or it was lost before an exit status: `state` is how it is
        listed."""
        phase = self._phase.get(worker)
        if phase is _Phase.ASKING:
            self._asked.discard(worker)
        elif phase is _Phase.APPROVED:
            self._approved.remove(worker)
        elif phase not in (_Phase.STARTING, _Phase.RUNNING, _Phase.ENDING):
            return []
        self._finish(Outcome(worker, state, None, None, None, session or self._sessions.get(worker) or None,
                             reason))
        return self._fill()

    def timed_out(self, worker: str) -> list[Decision]:
        """The caller's timer for `worker` fired."""
        if self._phase.get(worker) is not _Phase.RUNNING:
            return []
        return self._end(worker, Reason.TIMEOUT)

    def expired(self, now: float) -> list[Decision]:
        """The sessions running for `timeout` seconds or more at `now`, ended."""
        if self.timeout is None:
            return []
        late = [w for w in self.order if self._phase[w] is _Phase.RUNNING and now - self._started[w] >= self.timeout]
        return [d for w in late for d in self._end(w, Reason.TIMEOUT)]

    def interrupted(self) -> list[Decision]:
        """Ctrl-C: start nothing more, end what runs (a session still opening is ended once it has started).
        Again: nothing more (the caller escalates the ending sessions' signals as a session's Ctrl-C does)."""
        self.stopping = True
        running = [w for w in self.order if self._phase[w] is _Phase.RUNNING]
        return [d for w in running for d in self._end(w, Reason.INTERRUPT)]

    # State out.

    def deadline(self, worker: str) -> float | None:
        """When `worker`'s session times out (None: no timeout, or not running)."""
        if self.timeout is None or self._phase.get(worker) is not _Phase.RUNNING:
            return None
        return self._started[worker] + self.timeout

    def ending(self, worker: str) -> bool:
        """Whether the run decided to end `worker`'s session (its timeout, or Ctrl-C)."""
        return worker in self._ending

    @property
    def running(self) -> list[str]:
        return [w for w in self.order if w in self._active]

    @property
    def done(self) -> bool:
        """Nothing runs, no approval is asked, and nothing more will start."""
        if self._active or self._asked:
            return False
        return self.stopping or (self._next >= len(self._plain) and self._next_asked >= len(self._gated)
                                 and not self._approved)

    @property
    def asked(self) -> list[str]:
        """The workers whose approval is asked and not yet given."""
        return [w for w in self.order if w in self._asked]

    def outcomes(self) -> list[Outcome]:
        """Each target's outcome once the run is `done`, in the targets' order; those that never started are
        listed as not started."""
        reason = "the run was interrupted first" if self.stopping else ""
        return [self._outcomes.get(w) or Outcome(w, State.NOT_STARTED, reason=reason) for w in self.order]

    # Inside.

    def _end(self, worker: str, reason: Reason) -> list[Decision]:
        self._phase[worker] = _Phase.ENDING
        self._ending[worker] = reason
        return [End(worker, reason)]

    def _finish(self, outcome: Outcome) -> None:
        self._phase[outcome.worker] = _Phase.DONE
        self._active.discard(outcome.worker)
        self._outcomes[outcome.worker] = outcome

    def _fill(self) -> list[Decision]:
        decisions: list[Decision] = []
        if self.stopping:
            return decisions
        while self._next_asked < len(self._gated) and len(self._asked) < self.asking:
            worker = self._gated[self._next_asked]
            self._next_asked += 1
            self._phase[worker] = _Phase.ASKING
            self._asked.add(worker)
            decisions.append(Ask(worker))
        while len(self._active) < self.batch:
            if self._approved:
                worker = self._approved.popleft()
            elif self._next < len(self._plain):
                worker = self._plain[self._next]
                self._next += 1
            else:
                break
            self._phase[worker] = _Phase.STARTING
            self._active.add(worker)
            decisions.append(Start(worker))
        return decisions
