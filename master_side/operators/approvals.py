"""Approvals: what a four-eyes worker (`Rule(moderated_by=...)`) runs before anyone could watch it waits for a
moderator's approval: a copy (`slaveshell cp`, the web page's), a session's command (`buildbot-shell W -- CMD`),
a login shell with the operator's `-e` variables, and a fleet run's part on that worker.

`Approvals` owns the pending requests: `ask` makes one (an `ApprovalRequest`, frozen: who asks, on which worker,
what, why) and fires once a moderator approves it (an `Approved`), or fails with `OperatorError`: denied (with the
moderator's reason), expired (no moderator within `ApprovalLimits.wait`), withdrawn (the operator left: Ctrl-C,
a closed connection, an interrupted run). A moderator is who may moderate the worker's sessions
(`Policy.may_moderate`: another person than the request's operator, not even the same user name under another
door's or master's prefix (`same_person`), in one of the rule's groups or web roles, with 'watch' on the worker);
`listing` lists what `who` may approve (and their own requests), `approve` and `deny` decide. Every step is an
audit event (`APPROVAL_EVENTS`, through the `ApprovalRecord`: who asked, which moderator approved or denied which
request, what expired or was withdrawn, what was approved and never used); a refused decision and every refused
request (the bounds per operator, per calling master and in total) are audited refusals, rate-limited as every
refusal is. A fleet run's part past those bounds waits for a free place instead (`queued`, bounded too, listed
marked so), and is asked as soon as one is free; it waits for one as long as a request waits for a moderator, then
expires (EXPIRED: never asked). Asked, it waits for a moderator only what remains of that time: the operator waits
`ApprovalLimits.wait` in all, for a place and then for a moderator.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from twisted.internet import defer

from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.worker_link import Undo
from slaveshell.plumbing.clock import Clock, DelayedCall
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import (
    Identity,
    Policy,
    moderators_text,
    own_work,
    same_operator,
    same_person,
    vouching_master,
)

# The audit index's event kinds (docs/audit-schema.md).
ASKED = "approval-asked"  # the operator's request waits (operator: who asks)
APPROVED = "approved"  # operator: the moderator who approved
DENIED = "denied"  # operator: the moderator who denied (detail: their reason)
EXPIRED = "approval-expired"  # no moderator decided in time (operator: who asked)
WITHDRAWN = "approval-withdrawn"  # the operator stopped waiting (operator: who asked)
USED = "approval"  # on the session or transfer an approval started: which request, approved by whom
UNUSED = "approval-unused"  # approved, but what it approved never started (operator: who asked; detail: why)
APPROVAL_EVENTS = (ASKED, APPROVED, DENIED, EXPIRED, WITHDRAWN, USED, UNUSED)

MAX_WHAT = 1024 * 1024  # characters of a request's description: more is refused (a command is at most 64 KiB)
LISTED_WHAT = 2000  # characters of it in a listing of all requests (one request's shows all of it)
MAX_DENIAL = 500  # characters of a moderator's reason for a denial


@dataclass(frozen=True)
class ApprovalLimits:
    """Requests waiting for approval per operator, per calling master of a multi-master site (all the operators
    it vouches for: a master names as many as it likes) and in total, and how long one waits (seconds)."""

    per_operator: int = 4
    total: int = 32
    wait: float = 900.0
    per_master: int = 8  # requests of the operators another master of the site vouches for (cluster:<master>/...)
    # Fleet runs' parts waiting for a free place to be asked (`Approvals.ask(place=True)`), per operator, per
    # calling master and in total: a run asks at most 4 at once, an operator has at most 4 runs in progress.
    queued_per_operator: int = 16
    queued_per_master: int = 16
    queued: int = 64


class Kind(enum.Enum):
    """What a request would start."""

    COPY = "copy"
    COMMAND = "command"
    RUN = "run"


# What did not happen when an approved request is refused before it starts (`Approvals.refused_after`).
NOT_STARTED = {Kind.COPY: "the transfer did not start", Kind.COMMAND: "the session did not open",
               Kind.RUN: "the session did not open"}


@dataclass(frozen=True)
class ApprovalRequest:
    """One request waiting for a moderator (or for a free place to be asked): its id, who asks, on which worker,
    what it would start (`what`: plain text, the command or the copy's direction and paths, escaped wherever it is
    shown), the operator's reason, the groups that may approve it, when it was asked (or began to wait for a place)
    and when it expires (seconds since the epoch), and the fleet run it is a part of."""

    id: str
    who: Identity
    worker: str
    kind: Kind
    what: str
    reason: str | None
    moderated_by: tuple[str | int, ...]
    asked: float
    expires: float
    run_id: str | None = None

    @property
    def moderators(self) -> str:
        return moderators_text(self.moderated_by)

    @property
    def label(self) -> str:
        return f"request {self.id} of {self.who.user} on {self.worker}, {self.kind.value}"

    def detail(self) -> str:
        """The request as the audit index keeps it when it is asked: all of what it would do."""
        why = f" (reason: {self.reason})" if self.reason else ""
        return f"{self.label}: {self.what}{why}"

    def row(self, mine: bool, may_approve: bool, whole: bool = False, waits_for_place: bool = False
            ) -> dict[str, object]:
        """The request as `slaveshell approvals` lists it (plain values: the client escapes them): in a listing
        of all, `what` is cut at LISTED_WHAT characters (`what_chars` says how many it has); `whole`: all of it.
        `waits_for_place`: a fleet run's part not asked yet, waiting for a free place (`may_approve`: once it
        is asked)."""
        return {"id": self.id, "operator": self.who.user, "uid": self.who.uid, "worker": self.worker,
                "kind": self.kind.value, "what": self.what if whole else self.what[:LISTED_WHAT],
                "what_chars": len(self.what), "reason": self.reason,
                "moderated_by": [str(g) for g in self.moderated_by], "asked": self.asked, "expires": self.expires,
                "run": self.run_id, "mine": mine, "may_approve": may_approve, "waits_for_place": waits_for_place}


@dataclass(frozen=True)
class Approved:
    """An approved request, and the moderator who approved it."""

    request: ApprovalRequest
    moderator: Identity


class ApprovalRecord(Protocol):
    """Where approvals are written: the audit trail (master_side.audit.trail.AuditTrail.approval)."""

    def approval(self, kind: str, worker: str, who: Identity, detail: str, record_id: str | None = None) -> None: ...


# Subscribes a callback to the operator's leaving (a sink's on_disconnect); returns its undo.
Leaving = Callable[[Callable[[], None]], Undo]


@dataclass(eq=False)
class _Asking:
    """One operator's request, from `ask` to its end: waiting for a free place to be asked (`Approvals.queued`,
    until `request.expires`), then for a moderator (`Approvals.pending`, with a fresh `request.asked` and
    `expires`). `timer`: its expiry; `undo`: its subscriptions to the operator's leaving."""

    request: ApprovalRequest
    waiting: Callable[[str], None]
    waiter: defer.Deferred[Approved] = field(default_factory=defer.Deferred)
    timer: DelayedCall | None = None
    undo: list[Undo] = field(default_factory=list)
    placed_after: float | None = None  # seconds it waited for a free place before it was asked


class Approvals:
    """The pending requests, by id, and the fleet runs' parts waiting for a free place to be asked."""

    def __init__(self, policy: Callable[[], Policy], clock: Callable[[], Clock],
                 record: Callable[[], ApprovalRecord | None],
                 refuse: Callable[[Identity, str, ErrorKind, str], OperatorError]) -> None:
        self._policy = policy
        self._clock = clock
        self._record = record
        self._refuse = refuse  # an audited, rate-limited refusal (OperatorAPI.refuse)
        self.limits = ApprovalLimits()
        self.pending: dict[str, _Asking] = {}  # asked: waiting for a moderator
        self.queued: list[_Asking] = []  # fleet runs' parts waiting for a free place, oldest first
        self._stopping = False
        # Told that a request waits for a moderator: the reporters' notice (the operator API sets it).
        self.wanted: Callable[[ApprovalRequest], None] = lambda request: None

    def _write(self, kind: str, request: ApprovalRequest, who: Identity, detail: str) -> None:
        record = self._record()
        if record is not None:
            record.approval(kind, request.worker, who, detail)

    # -- the operator's side -----------------------------------------------------------------------

    def ask(self, who: Identity, worker: str, kind: Kind, what: str, reason: str | None,
            moderated_by: Sequence[str | int], waiting: Callable[[str], None], leaving: Sequence[Leaving],
            run_id: str | None = None, place: bool = False) -> defer.Deferred[Approved]:
        """A request for `who`, within the bounds (else an audited refusal, raised): fires `Approved` once a
        moderator approves it; fails with OperatorError when denied (DENIED), expired (LIMIT) or withdrawn because
        the operator left (STOPPED: any of `leaving` fired). `waiting` tells the operator what they wait for.

        `place` (a fleet run's part): past the bounds per operator, per calling master or in total, the request
        waits for a free place instead (the operator is told; listed, marked so), and is asked once one of the
        requests that hold the places is approved, denied, withdrawn or expires; only past the bounds of those
        waiting (`queued...`) is it refused. It waits for a place at most `limits.wait` seconds, as a request
        waits for a moderator: then it expires (EXPIRED, LIMIT), never asked."""
        groups = moderators_text(moderated_by)
        if len(what) > MAX_WHAT:  # never cut: a moderator approves all of what runs, or nothing
            raise self._refuse(who, worker, ErrorKind.LIMIT, f"approvals refused: what it would do is longer than "
                               f"{MAX_WHAT} characters, more than a moderator is shown")
        full = self._full(who)
        if full is not None and not place:
            raise self._refuse(who, worker, ErrorKind.LIMIT, f"approvals refused: {full}; worker {worker} is "
                               f"moderated (moderated_by: {groups})")
        if full is not None:
            crowded = self._crowded(who)
            if crowded is not None:
                raise self._refuse(who, worker, ErrorKind.LIMIT, f"approvals refused: {full}, and {crowded}; "
                                   f"worker {worker} is moderated (moderated_by: {groups})")
        clock = self._clock()
        now = clock.seconds()
        request = ApprovalRequest(self._new_id(), who, worker, kind, what, reason, tuple(moderated_by), now,
                                  now + self.limits.wait, run_id)
        asking = _Asking(request, waiting)
        asking.waiter = defer.Deferred(lambda d: self._stop(asking))  # a caller's cancel: the operator's master's
        if full is None:
            self._asked(asking)
        else:
            self.queued.append(asking)
            asking.timer = clock.callLater(self.limits.wait, self._expired, asking)
            waiting(f"worker {worker} is moderated: its approval request waits for a free place ({full}); it is "
                    f"asked as soon as one of those is approved, denied, withdrawn or expires; at most "
                    f"{_duration(self.limits.wait)}; Ctrl-C or a cancel withdraws it")
        for subscribe in leaving:
            asking.undo.append(subscribe(lambda: self._stop(asking)))
        if self._is_pending(asking):
            self.wanted(asking.request)
        elif asking not in self.queued:  # withdrawn already (an operator gone while it was asked)
            for undo in asking.undo:
                undo()
        return asking.waiter

    def _new_id(self) -> str:
        """An id no request pending or waiting for a place has: 48 random bits, that cannot be guessed by probing
        approve."""
        while True:
            request_id = secrets.token_hex(6)
            if request_id not in self.pending and all(a.request.id != request_id for a in self.queued):
                return request_id

    def _full(self, who: Identity) -> str | None:
        """Why no request of `who` may wait for a moderator now (the bounds), or None."""
        limits = self.limits
        reached = _reached(who, [p.request.who for p in self.pending.values()], limits.per_operator,
                           limits.per_master, limits.total)
        if reached is None:
            return None
        bound, n = reached
        return {_OPERATOR: f"{who.user} already waits for {n} approvals (the master's limit per operator)",
                _MASTER: f"the operators of master {vouching_master(who)} already wait for {n} approvals (this "
                        "master's limit per calling master)",
                _TOTAL: f"{n} requests already wait for a moderator's approval (the master's limit)"}[bound]

    def _crowded(self, who: Identity) -> str | None:
        """Why no more request of `who` may wait for a free place (their bounds), or None."""
        limits = self.limits
        reached = _reached(who, [a.request.who for a in self.queued], limits.queued_per_operator,
                           limits.queued_per_master, limits.queued)
        if reached is None:
            return None
        bound, n = reached
        return {_OPERATOR: f"{n} more wait for a free place (the master's limit per operator)",
                _MASTER: f"{n} of master {vouching_master(who)}'s operators wait for a free place (the limit per "
                        "calling master)",
                _TOTAL: f"{n} requests wait for a free place (the master's limit)"}[bound]

    def _asked(self, asking: _Asking) -> None:
        """`asking`'s request, pending from now: recorded, then the operator told what it waits for. It expires
        `limits.wait` seconds after it was made: a request that waited for a place gets what remains of that
        (the operator waits at most `limits.wait` in all, as they were told when it began to wait)."""
        clock = self._clock()
        now = clock.seconds()
        if asking.timer is not None and asking.timer.active():
            asking.timer.cancel()  # its wait for a place
            asking.placed_after = now - asking.request.asked
            expires = asking.request.expires
        else:
            expires = now + self.limits.wait
        request = asking.request = replace(asking.request, asked=now, expires=expires)
        self.pending[request.id] = asking
        asking.timer = clock.callLater(max(0.0, expires - now), self._expired, asking)
        self._write(ASKED, request, request.who, request.detail())
        left = _duration(round(max(0.0, expires - now)))
        if asking.placed_after is not None:
            left += f" (what remains of {_duration(self.limits.wait)}{_placed(asking)})"
        asking.waiting(f"worker {request.worker} is moderated: request {request.id} waits for a moderator's "
                       f"approval (moderated_by: {request.moderators}, with the watch right, not you: slaveshell "
                       f"approve {request.id}); at most {left}; Ctrl-C or a cancel withdraws it")

    def _is_pending(self, asking: _Asking) -> bool:
        return self.pending.get(asking.request.id) is asking

    def _stop(self, asking: _Asking) -> None:
        """The operator stopped waiting: their request withdrawn, or their wait for a place ended."""
        if self._is_pending(asking):
            self._withdrawn(asking.request.id)
            return
        if asking not in self.queued:
            return
        self._unqueue(asking)
        asking.waiter.errback(OperatorError(ErrorKind.STOPPED, "stopped waiting for a free place to ask a "
                                                               "moderator's approval"))

    def _unqueue(self, asking: _Asking) -> None:
        """Forget a request waiting for a place that will not be asked (its timer, its subscriptions)."""
        self.queued.remove(asking)
        if asking.timer is not None and asking.timer.active():
            asking.timer.cancel()
        for undo in asking.undo:
            undo()

    def _next(self) -> None:
        """A place may be free: the oldest requests waiting for one that fit now are asked (each operator's in
        the order they came)."""
        now = self._clock().seconds()
        for asking in list(self.queued):
            if asking.request.expires <= now:
                continue  # no time left to ask it: its own timer expires it now, never asked
            if asking in self.queued and self._full(asking.request.who) is None:
                self.queued.remove(asking)
                self._asked(asking)
                if self._is_pending(asking):
                    self.wanted(asking.request)

    def _end(self, request_id: str) -> _Asking | None:
        """Forget a pending request (its timer, its subscriptions): the one that was pending, or None."""
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        for undo in pending.undo:
            undo()
        return pending

    def _expired(self, asking: _Asking) -> None:
        """`asking` waited `limits.wait` seconds: for a moderator, or for a free place to be asked. It ends,
        audited (EXPIRED), its operator told why."""
        request = asking.request
        where = f"worker {request.worker} is moderated (moderated_by: {request.moderators})"
        if self._is_pending(asking):
            self._end(request.id)
            text = (f"request {request.id}: no moderator approved it within {self.limits.wait:g} s (the master's "
                    f"limit{_placed(asking)}); {where}")
            label = request.label
        elif asking in self.queued:
            self._unqueue(asking)
            full = self._full(request.who)
            text = (f"request {request.id}: no place came free within {self.limits.wait:g} s (the master's limit) "
                    f"to ask a moderator's approval{': ' + full if full else ''}; {where}")
            label = request.label + (f" (fleet run {request.run_id})" if request.run_id else "") + ", never asked"
        else:
            return
        self._write(EXPIRED, request, request.who, f"{label}: {text}")
        asking.waiter.errback(OperatorError(ErrorKind.LIMIT, text))
        self._next()

    def _withdrawn(self, request_id: str) -> None:
        pending = self._end(request_id)
        if pending is None:
            return
        request = pending.request
        self._write(WITHDRAWN, request, request.who, f"{request.label}: the operator stopped waiting")
        pending.waiter.errback(OperatorError(ErrorKind.STOPPED, f"request {request.id} withdrawn: stopped waiting "
                                                                "for a moderator's approval"))
        if not self._stopping:
            self._next()

    def unused(self, approved: Approved, why: str) -> None:
        """An approval given that will not be used: what it approved did not start (`why`: the run was
        interrupted first). Audited (UNUSED), as the requests that expire or are withdrawn are."""
        request = approved.request
        self._write(UNUSED, request, request.who, f"{request.label}: approved by {approved.moderator.user}, "
                                                  f"not used: {why}")

    def refused_after(self, approved: Approved | None, error: Exception) -> None:
        """What `approved` approved was refused after the approval was given, before it started (the policy
        changed while it waited, the worker, its build or the route gone, a quota full, the recording or the
        worker refused it, the operator left): `unused`, with the refusal (`error`: an OperatorError's line; any
        other failure is the master's, said without its text). The one rule for a session's open and a copy's
        start: every approval ends used (USED, written where it starts) or not (UNUSED). Nothing without one."""
        if approved is None:
            return
        why = error.message if isinstance(error, OperatorError) else "the master failed (see its log)"
        self.unused(approved, f"{NOT_STARTED[approved.request.kind]}: {why}")

    # -- the moderators' side ----------------------------------------------------------------------

    def why_not(self, who: Identity, request: ApprovalRequest) -> str | None:
        """Why `who` may not approve or deny `request` (None: they may)."""
        if same_person(who, request.who):
            return own_work(who, request.who, "the request's own operator cannot approve or deny it")
        return self._policy().may_moderate(who, request.who, request.worker, request.moderated_by)

    def listing(self, who: Identity, request_id: object = None) -> list[dict[str, object]]:
        """The requests `who` may decide, and their own: those pending, oldest first, then those waiting for a
        free place to be asked, in the order they will be; with `request_id`, that one (if they may see it) with
        all of what it would do."""
        if request_id is not None and (not isinstance(request_id, str) or not 1 <= len(request_id) <= 64):
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: a request's id")
        pending = sorted(self.pending.values(), key=lambda p: p.request.asked)
        out = []
        for asking in [*pending, *self.queued]:
            request = asking.request
            if request_id is not None and request.id != request_id:
                continue
            mine = same_operator(who, request.who)
            may = self.why_not(who, request) is None
            if mine or may:
                out.append(request.row(mine, may, whole=request_id is not None,
                                       waits_for_place=not self._is_pending(asking)))
        if request_id is not None and not out:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no pending approval request {visible(request_id)} that you "
                                                     "may see")
        return out

    def _decided(self, who: Identity, request_id: object, verb: str) -> _Asking:
        """The pending request `who` may decide, or OperatorError (a refusal audited: not a moderator)."""
        if not isinstance(request_id, str) or not 1 <= len(request_id) <= 64:
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {verb} needs a request's id")
        pending = self.pending.get(request_id)
        if pending is None:
            if any(a.request.id == request_id for a in self.queued):
                raise OperatorError(ErrorKind.NOT_FOUND, f"request {request_id} is not asked yet: it waits for a "
                                                         "free place; a moderator decides it once it is asked")
            raise OperatorError(ErrorKind.NOT_FOUND, f"no pending approval request {visible(request_id)}")
        why = self.why_not(who, pending.request)
        if why is not None:
            raise self._refuse(who, pending.request.worker, ErrorKind.DENIED,
                               f"not a moderator: {verb} {request_id}: {why}")
        return pending

    def approve(self, who: Identity, request_id: object) -> str:
        """`who` approves a request: it starts now. Text for the moderator; OperatorError otherwise."""
        pending = self._decided(who, request_id, "approve")
        request = pending.request
        self._end(request.id)
        self._write(APPROVED, request, who, request.label)
        pending.waiter.callback(Approved(request, who))
        self._next()
        return f"request {request.id} of {request.who.user} on {request.worker} approved: it starts now"

    def deny(self, who: Identity, request_id: object, reason: object) -> str:
        """`who` denies a request (with their reason): the operator is told. Text for the moderator."""
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_DENIAL):
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: a denial's reason is a text of at most "
                                                       f"{MAX_DENIAL} characters")
        pending = self._decided(who, request_id, "deny")
        request = pending.request
        self._end(request.id)
        because = f": {reason}" if reason else ""
        self._write(DENIED, request, who, f"{request.label}; denied{because}")
        pending.waiter.errback(OperatorError(ErrorKind.DENIED, f"request {request.id} denied by moderator "
                                                               f"{who.user}{because}"))
        self._next()
        return f"request {request.id} of {request.who.user} on {request.worker} denied"

    def stop(self) -> None:
        """The service stops: every request waiting for a place, and every pending request, is withdrawn."""
        self._stopping = True
        try:
            for asking in list(self.queued):
                self._stop(asking)
            for request_id in list(self.pending):
                self._withdrawn(request_id)
        finally:
            self._stopping = False


_OPERATOR, _MASTER, _TOTAL = "operator", "master", "total"  # the bounds on requests (`_reached`)


def _reached(who: Identity, waiting: list[Identity], per_operator: int, per_master: int, total: int
             ) -> tuple[str, int] | None:
    """The first bound a new request of `who` would pass, among the requests of `waiting` (their operators): of
    `who` (_OPERATOR), of the master that vouches for them (_MASTER) or in all (_TOTAL), and how many it counts."""
    mine = sum(1 for other in waiting if same_operator(other, who))
    if mine >= per_operator:
        return _OPERATOR, mine
    master = vouching_master(who)
    theirs = 0 if master is None else sum(1 for other in waiting if vouching_master(other) == master)
    if theirs >= per_master:
        return _MASTER, theirs
    return (_TOTAL, len(waiting)) if len(waiting) >= total else None


def _placed(asking: _Asking) -> str:
    """What a request that waited for a free place says of that wait (its time counts in the approval wait)."""
    if asking.placed_after is None:
        return ""
    return f", {_duration(round(asking.placed_after))} of it spent waiting for a free place to be asked"


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60:
        return f"{int(seconds // 60)} min {seconds % 60:g} s"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
