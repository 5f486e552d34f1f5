"""Ending a session another master of the site holds (`slaveshell kill ID` and the web page's *End session* on
master A for a session master B serves, docs/multi-master.md).

Each master registers `slaveshell.master.<name>.kill` (master_side.cluster.config.master_record_uri), callable only
by slaveshell masters. The master asked (B) is the authority: it ends the session for the operator the calling
master (A) vouches for (`cluster:<A>/<user>`, <A> the router's authid of the caller, never a name it sends), under
its own policy, with the right a kill there needs (the session's owner, a moderator of a four-eyes session, or the
`kill` right: `Killer`, OperatorAPI.kill_for_master), and records it in its audit index (a `kill` event naming the
operator and master A). B answers "not found" for a session it does not hold (not audited: A asks each master in
turn), and refuses, audited, a calling master past KILL_BURST calls at once and KILL_RATE a second (and all
masters together past TOTAL_BURST, TOTAL_RATE).

A (`RoutedKills.kill`) asks the master the session is known to be on (the one its page watches it through), or
each master on the router that the shared database confirms until one holds it, writes its own `routed` event
with B's outcome, then answers the operator with B's line (escaped, at most MAX_TEXT characters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.logger import Logger

from master_side.cluster.config import master_record_uri
from master_side.cluster.link import ClusterLink, ClusterUnavailable, master_caller
from master_side.cluster.records import MAX_ID, RecordCall
from master_side.cluster.relay import RoutedRecord, outcome_of
from master_side.cluster.stream import BAD_REQUEST, LIMIT, NOT_FOUND, UNAVAILABLE, Refused, check_name
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import Pacer
from slaveshell.vocabulary.policy import CLUSTER_PREFIX, ClusterIdentity, Identity
from slaveshell.vocabulary.protocol import ProtocolError

if TYPE_CHECKING:
    from autobahn.wamp.types import CallDetails

log = Logger()

KILL = "kill"
KILL_BURST = 16  # kill calls one calling master may make at once
KILL_RATE = 4.0  # then this many a second
TOTAL_BURST = 64  # the same for all calling masters together
TOTAL_RATE = 16.0
MAX_PACED = 256  # calling masters whose pace is remembered (the router's principals are far fewer)
MAX_TEXT = 1000  # characters of B's answer shown to A's operator


class Killer(Protocol):
    """The operators' API's kill for another master's operator (OperatorAPI.kill_for_master): B's line; raises
    Refused (its kind and line)."""

    def __call__(self, who: Identity, session_id: str) -> tuple[str, str]: ...  # (the line, the session's worker)


# An audited refusal (the gate's, rate-limited): who, the worker, the line.
Auditor = Callable[[Identity, str, str], None]


class ServedKills:
    """This master's `kill` procedure, for the other masters' operators."""

    def __init__(self, link: ClusterLink, killer: Killer, audit: Auditor, clock: Callable[[], float]) -> None:
        self.link = link
        self._killer = killer
        self._audit = audit
        self._clock = clock
        self._paces: dict[str, Pacer] = {}
        self._total = Pacer(TOTAL_RATE, TOTAL_BURST)
        link.procedures[KILL] = self.kill

    def _paced(self, caller: str) -> bool:
        """Whether one more call of `caller` is within its pace and the total's (taken when it is)."""
        now = self._clock()
        pace = self._paces.get(caller)
        if pace is None:
            if len(self._paces) >= MAX_PACED:
                self._paces.clear()  # only ever full of masters that stopped calling: each starts afresh
            pace = self._paces[caller] = Pacer(KILL_RATE, KILL_BURST)
        for bucket in (pace, self._total):
            bucket.spend(0, now)  # refilled to now
        if pace.tokens < 1 or self._total.tokens < 1:
            return False
        pace.spend(1, now)
        self._total.spend(1, now)
        return True

    def kill(self, wire: object, details: CallDetails) -> dict[str, object]:
        """B's answer: {"ok": True, "text", "session", "worker"} or a refusal ({"ok": False, "error", "kind"})."""
        caller = master_caller(details, "end sessions")
        if not self._paced(caller):
            line = (f"master {self.link.name} takes at most {KILL_BURST} kill calls at once from master {caller}, "
                    f"then {KILL_RATE:g} a second ({TOTAL_BURST} and {TOTAL_RATE:g} from all masters): try again")
            master = ClusterIdentity(uid=-1, gid=-1, pid=-1, user=f"{CLUSTER_PREFIX}{caller}",
                                     groups=frozenset({f"{CLUSTER_PREFIX}{caller}"}))
            self._audit(master, "", f"routed kill refused: {line}")
            return Refused(LIMIT, line).to_wire()
        try:
            call = RecordCall.from_wire(wire, ("session",))
        except Refused as e:
            return Refused(e.kind, f"bad request from master {caller}: {e.message}").to_wire()
        session_id = call.values["session"]
        if not isinstance(session_id, str) or not session_id or len(session_id) > MAX_ID \
                or not session_id.isprintable():
            return Refused(BAD_REQUEST, f"bad request from master {caller}: a session id must be printable, of 1 "
                                        f"to {MAX_ID} characters").to_wire()
        who = ClusterIdentity.vouched(caller, call.user, call.groups)
        try:
            text, worker = self._killer(who, session_id)
        except Refused as e:
            if e.kind != NOT_FOUND:  # the others: audited (a session not held here is another master's)
                self._audit(who, "", f"routed kill refused: {e.message} (session {visible(session_id)})")
            return e.to_wire()
        except Exception:
            log.failure("slaveshell: a kill for master {caller} failed", caller=visible(caller))
            return Refused(UNAVAILABLE, f"master {self.link.name} could not end the session (see its log)").to_wire()
        log.info("slaveshell session {sid}: killed for {who} of master {caller}", sid=visible(session_id),
                 who=visible(who.user), caller=visible(caller))
        return {"ok": True, "text": text, "session": session_id, "worker": worker}


class RoutedKills:
    """This master's operators' kills of sessions another master holds (the calling side)."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link
        self.record: RoutedRecord = lambda who, worker, record_id, detail: None

    @deferred
    async def kill(self, who: Identity, session_id: str, holder: str | None = None) -> str | None:
        """End `session_id` on the master that holds it (`holder`, when known: the master a page watches it
        through; else each master on the router the shared database confirms, in turn, until one holds it): that
        master's line, or None when none holds it. Raises Refused: its refusal (or that it did not answer). The
        outcome is this master's `routed` audit event, written before the operator is answered."""
        if holder is not None:
            masters = [holder]
        else:
            try:
                listings = await self.link.site(fresh=True)
            except ClusterUnavailable:
                return None
            masters = [listing.master for listing in listings if listing.trusted]
        unanswered: list[str] = []
        for master in masters:
            what = f"kill of session {visible(session_id)} routed to master {master}"
            try:
                answer = await self.link.call(master_record_uri(master, KILL),
                                              RecordCall(who.user, tuple(sorted(who.groups)),
                                                         {"session": session_id}).to_wire())
                text, worker = _answer(answer)
            except Refused as e:
                if e.kind == NOT_FOUND:
                    continue
                self.record(who, "", None, f"{what}: {outcome_of(e)}")
                raise
            except Exception as e:
                # It may have ended the session and its answer been lost: recorded as not answered.
                self.record(who, "", None, f"{what}: {outcome_of(e)}")
                unanswered.append(f"{visible(master)} ({visible(str(e) or type(e).__name__)[:200]})")
                continue  # another master may hold the session
            self.record(who, worker, session_id, f"{what}: killed there")
            self.link.changed()  # its listing's count of the worker's sessions
            return text
        if unanswered:
            raise Refused(UNAVAILABLE, f"session {visible(session_id)} is not live on the masters that answered; "
                                       f"not answered: {', '.join(unanswered)}")
        return None


def _answer(answer: object) -> tuple[str, str]:
    """B's answer to a kill, checked: its line (escaped, cut) and the session's worker; raises Refused (B's
    refusal, as B wrote it, escaped)."""
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else None
        kind = answer.get("kind") if isinstance(answer, dict) else None
        why = visible(error)[:MAX_TEXT] if isinstance(error, str) and error else "the other master refused"
        raise Refused(kind if kind in (BAD_REQUEST, LIMIT, UNAVAILABLE, NOT_FOUND, "permission denied")
                      else UNAVAILABLE, why)
    text = answer.get("text")
    try:
        worker = check_name(answer.get("worker"), "worker")
    except ProtocolError as e:
        raise Refused(UNAVAILABLE, f"the other master sent a malformed answer: {e}") from None
    if not isinstance(text, str) or not text:
        raise Refused(UNAVAILABLE, "the other master sent a malformed answer: no text")
    return visible(text)[:MAX_TEXT], worker
