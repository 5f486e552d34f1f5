"""The site's records for an operator on any master of a multi-master site: a transcript recorded on another
master's disk (`slaveshell replay`, `export`, `reveal`, the web replay), the text of those transcripts
(`slaveshell search`), and the live sessions each master holds (`slaveshell sessions`).

The index rows are in the shared database, which every master reads; the transcripts are files on the disk of the
master that recorded them, and the live sessions are in its memory. So each master registers, under its own name
(which the router lets no other client register), `slaveshell.master.<name>.transcript`, `.search` and
`.sessions` (master_side.cluster.config.master_record_uri), callable only by slaveshell masters. The master asked
is the authority over what it holds: it answers for the operator the calling master vouches for
(`cluster:<A>/<user>`, <A> the router's authid of the caller, never a name it sends) under its own policy
(`replay` for a transcript and its text, `watch` for a live session), reads at most MAX_CHUNK bytes of a
transcript per call, and audits the first read of each transcript by each master (`routed read` events).

What a calling master can make this one do is bounded: MAX_PER_MASTER calls in progress per calling master and
MAX_CALLS in all, refused past that with a line (and a rate-limited audit event, the gate's). What comes back is
checked where it arrives: a transcript chunk is bytes of at most MAX_CHUNK, a search hit names a session the caller
asked about and is rebuilt from the caller's own index row, a live session's row keeps only known fields of known
types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from master_side.audit.rows import SearchHit, SessionRow
from master_side.cluster.config import master_record_uri
from master_side.cluster.link import ClusterLink, ClusterUnavailable, master_caller
from master_side.cluster.stream import (
    BAD_REQUEST,
    LIMIT,
    MAX_NAME,
    NOT_FOUND,
    UNAVAILABLE,
    Refused,
    check_moderated_by,
    check_name,
    moderated_by_wire,
)
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.checks import MAX_CHUNK
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import ClusterIdentity, Identity
from slaveshell.vocabulary.protocol import ProtocolError

if TYPE_CHECKING:
    from autobahn.wamp.types import CallDetails

log = Logger()

TRANSCRIPT, SEARCH, SESSIONS = "transcript", "search", "sessions"
MAX_PER_MASTER = 4  # record calls in progress for one calling master
MAX_CALLS = 16  # record calls in progress for all other masters
MAX_GROUPS = 256
MAX_ID = 128  # a session id's length
MAX_TEXT = 1024  # a searched text's
MAX_HITS = 500
MAX_CONTEXT = 4 * MAX_TEXT  # a hit's context (the text found and 40 characters either side)
MAX_LIVE = 1000  # live sessions one master may list
MAX_FIELD = 1024  # characters of each text of a live session's row (its command, its reason)
AUDIT_AGAIN = 600.0  # a transcript read by the same master is audited again after this many seconds
AUDITED_KEPT = 4096  # (master, session) pairs remembered for that
NAMES_KEPT = 10.0  # seconds the masters' names are used before they are asked again

# An audit event: kind, session id, worker, who, detail.
Event = Callable[[str, str, str, Identity, str], None]
# An audited refusal (the gate's, rate-limited): who, the line.
Auditor = Callable[[Identity, str], None]

# The fields of a live session's row that one master passes on from another, and their types; besides them, a
# four-eyes session's "moderated_by" (master_side.cluster.stream.check_moderated_by) and "moderators" (the names of
# the viewers who moderate it, at most MAX_MODERATORS): the holder's word about its own policy and viewers, shown.
_LIVE_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "worker": (str,), "operator": (str,), "started": (int, float), "state": (str,),
    "command": (str, type(None)), "reason": (str, type(None)), "held": (bool,), "idle": (int, float),
}
MAX_MODERATORS = 32


class Reader(Protocol):
    """What this module asks of the operators' API."""

    def transcript_for_master(self, who: Identity, session_id: str, offset: int
                              ) -> defer.Deferred[dict[str, object]]: ...
    def search_for_master(self, who: Identity, text: str, filters: dict[str, object]
                          ) -> defer.Deferred[list[SearchHit]]: ...
    def sessions(self, who: Identity) -> list[dict[str, object]]: ...


@dataclass(frozen=True)
class RecordCall:
    """What a calling master sends: the operator it vouches for (a name and groups), and the call's own values."""

    user: str
    groups: tuple[str, ...]
    values: dict[str, object]

    def to_wire(self) -> dict[str, object]:
        return {"user": self.user, "groups": list(self.groups), **self.values}

    @classmethod
    def from_wire(cls, wire: object, keys: tuple[str, ...]) -> RecordCall:
        if not isinstance(wire, dict) or set(wire) != {"user", "groups", *keys}:
            raise Refused(BAD_REQUEST, f"a call must be a dict of user, groups and {', '.join(keys) or 'nothing'}")
        groups = wire["groups"]
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
            raise Refused(BAD_REQUEST, f"groups must be a list of at most {MAX_GROUPS} names")
        try:
            user = check_name(wire["user"], "user")
            checked = tuple(check_name(g, "group") for g in groups)
        except Exception as e:
            raise Refused(BAD_REQUEST, str(e)) from None
        return cls(user, checked, {k: wire[k] for k in keys})


def _session_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID or not value.isprintable():
        raise Refused(BAD_REQUEST, f"a session id must be printable, of 1 to {MAX_ID} characters")
    return value


class ServedRecords:
    """This master's records procedures, for the other masters' operators."""

    def __init__(self, link: ClusterLink, reader: Reader, event: Event, audit: Auditor,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self._reader = reader
        self._event = event
        self._audit = audit
        self._clock = clock
        self._busy: dict[str, int] = {}  # calling master -> calls in progress
        self._audited: dict[tuple[str, str], float] = {}
        link.procedures[TRANSCRIPT] = self.transcript
        link.procedures[SEARCH] = self.search
        link.procedures[SESSIONS] = self.sessions

    @deferred
    async def _serve(self, wire: object, details: CallDetails, keys: tuple[str, ...],
                     answer: Callable[[str, ClusterIdentity, dict[str, object]], Any]) -> dict[str, object]:
        caller = master_caller(details, "read records")
        try:
            call = RecordCall.from_wire(wire, keys)
        except Refused as e:
            return Refused(e.kind, f"bad request from master {caller}: {e.message}").to_wire()
        who = ClusterIdentity.vouched(caller, call.user, call.groups)
        if self._busy.get(caller, 0) >= MAX_PER_MASTER or sum(self._busy.values()) >= MAX_CALLS:
            line = (f"master {self.link.name} is busy with other masters' reads of its records (at most "
                    f"{MAX_PER_MASTER} at a time per master, {MAX_CALLS} in all): try again")
            self._audit(who, line)
            return Refused(LIMIT, line).to_wire()
        self._busy[caller] = self._busy.get(caller, 0) + 1
        try:
            result: dict[str, object] = await defer.maybeDeferred(answer, caller, who, call.values)
            return result
        except Refused as e:
            return e.to_wire()
        except Exception:
            log.failure("slaveshell: a read of this master's records for master {caller} failed",
                        caller=visible(caller))
            return Refused(UNAVAILABLE, f"master {self.link.name} could not answer (see its log)").to_wire()
        finally:
            left = self._busy.pop(caller, 1) - 1
            if left:
                self._busy[caller] = left

    def transcript(self, wire: object, details: CallDetails) -> defer.Deferred[dict[str, object]]:
        return self._serve(wire, details, ("session", "offset"), self._transcript)

    @deferred
    async def _transcript(self, caller: str, who: ClusterIdentity, values: dict[str, object]) -> dict[str, object]:
        session_id, offset = _session_id(values["session"]), values["offset"]
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise Refused(BAD_REQUEST, "an offset must be a whole number of bytes")
        chunk = await self._reader.transcript_for_master(who, session_id, offset)
        data = chunk["data"]
        assert isinstance(data, bytes)
        self._audit_read(caller, who, session_id, str(chunk.get("worker") or ""))
        return {"ok": True, "data": data, "eof": bool(chunk["eof"])}

    def _audit_read(self, caller: str, who: Identity, session_id: str, worker: str) -> None:
        """The first read of a transcript by a master (again after AUDIT_AGAIN): a `routed read` event."""
        now = self._clock()
        key = (caller, session_id)
        if now - self._audited.get(key, now - AUDIT_AGAIN) < AUDIT_AGAIN:
            return
        if len(self._audited) >= AUDITED_KEPT:
            self._audited.clear()
        self._audited[key] = now
        self._event("routed read", session_id, worker, who, f"transcript read through the router by master {caller}")

    def search(self, wire: object, details: CallDetails) -> defer.Deferred[dict[str, object]]:
        return self._serve(wire, details, ("text", "filters"), self._search)

    @deferred
    async def _search(self, caller: str, who: ClusterIdentity, values: dict[str, object]) -> dict[str, object]:
        text, filters = values["text"], values["filters"]
        if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
            raise Refused(BAD_REQUEST, f"search needs a text of 1 to {MAX_TEXT} characters")
        if not isinstance(filters, dict):
            raise Refused(BAD_REQUEST, "search filters must be a dict")
        hits = await self._reader.search_for_master(who, text, filters)
        return {"ok": True, "hits": [{"session": h["session"], "time": h["time"], "stream": h["stream"],
                                      "context": h["context"]} for h in hits[:MAX_HITS]]}

    def sessions(self, wire: object, details: CallDetails) -> defer.Deferred[dict[str, object]]:
        return self._serve(wire, details, (), self._sessions)

    def _sessions(self, caller: str, who: ClusterIdentity, values: dict[str, object]) -> dict[str, object]:
        rows = self._reader.sessions(who)[:MAX_LIVE]
        # Texts cut, so that the answer stays far below the router's message limit whatever the commands' length.
        return {"ok": True, "rows": [{**{k: v[:MAX_FIELD] if isinstance(v, str) else v for k, v in row.items()
                                         if k in _LIVE_FIELDS}, **_moderation(row)} for row in rows]}


class SiteRecords:
    """An operator's reads of the records the other masters hold (the calling side)."""

    def __init__(self, link: ClusterLink, clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self._clock = clock
        self._names: dict[str, str] = {}
        self._names_at: float | None = None

    @staticmethod
    def _call(who: Identity, **values: object) -> dict[str, object]:
        return RecordCall(who.user, tuple(sorted(who.groups)), values).to_wire()

    @deferred
    async def names(self) -> dict[str, str]:
        """Buildbot's name of each master on the router (host:basedir, as the index rows' `master` says) -> its
        name in the site; this master's own included."""
        try:
            listings = await self.link.site()
        except ClusterUnavailable:
            listings = []
        names = {listing.buildbot: listing.master for listing in listings if listing.trusted}
        self._names, self._names_at = dict(names), self._clock()
        return names

    @deferred
    async def site_master(self, row: SessionRow) -> str:
        """The master that recorded `row`, by its name in the site: the masters' names as they were at most
        NAMES_KEPT seconds ago (a transcript is read in many pieces), asked again when it is not among them."""
        recorded_by = str(row.get("master") or "")
        fresh = self._names_at is not None and self._clock() - self._names_at < NAMES_KEPT
        holder = self._names.get(recorded_by) if fresh else None
        if holder is not None:
            return holder
        names = await self.names()
        holder = names.get(recorded_by)
        if holder is None:
            raise Refused(UNAVAILABLE, f"session {visible(row['id'])} was recorded by master "
                                       f"{visible(recorded_by) or '?'}, which is not on the cluster's router now: "
                                       "its transcript is on that master's disk")
        return holder

    @deferred
    async def transcript(self, who: Identity, row: SessionRow, offset: int) -> dict[str, object]:
        """Up to MAX_CHUNK bytes of the transcript of `row` (a session another master recorded) from `offset`,
        read by that master under its policy: {"data": bytes, "eof": bool}. Raises Refused (its refusal)."""
        holder = await self.site_master(row)
        try:
            answer = await self.link.call(master_record_uri(holder, TRANSCRIPT),
                                          self._call(who, session=row["id"], offset=offset))
        except Exception as e:
            raise Refused(UNAVAILABLE, f"master {visible(holder)} did not answer for the transcript of session "
                                       f"{visible(row['id'])}: {visible(str(e) or type(e).__name__)[:200]}") from None
        _refusal(answer)
        data = answer.get("data")
        if not isinstance(data, bytes) or len(data) > MAX_CHUNK or not isinstance(answer.get("eof"), bool):
            raise Refused(UNAVAILABLE, f"master {visible(holder)} sent a malformed transcript chunk")
        return {"data": data, "eof": answer["eof"]}

    @deferred
    async def search(self, who: Identity, text: str, filters: dict[str, object], rows: list[SessionRow]
                     ) -> tuple[list[SearchHit], list[str]]:
        """Hits of `text` in the transcripts of `rows` (sessions other masters recorded), each master asked for
        its own under its policy: the hits (built from `rows`, in their order) and the masters that did not
        answer, with why."""
        names = await self.names()
        by_master: dict[str, dict[str, SessionRow]] = {}
        unanswered: list[str] = []
        for row in rows:
            recorded_by = str(row.get("master") or "")
            holder = names.get(recorded_by)
            if holder is None:
                if f"{recorded_by} (not on the router)" not in unanswered:
                    unanswered.append(f"{recorded_by} (not on the router)")
                continue
            by_master.setdefault(holder, {})[row["id"]] = row
        answers, failed = await self._ask(sorted(by_master), SEARCH, self._call(who, text=text, filters=filters))
        unanswered += failed
        hits: list[SearchHit] = []
        for master, answer in answers:
            listed = answer.get("hits")
            for hit in listed[:MAX_HITS] if isinstance(listed, list) else []:
                made = _hit(hit, by_master[master])
                if made is not None:
                    hits.append(made)
        return hits, unanswered

    @deferred
    async def _ask(self, masters: list[str], what: str, call: dict[str, object]
                   ) -> tuple[list[tuple[str, dict[str, object]]], list[str]]:
        """`call` to each of `masters`' `what` procedure at once: the answers that succeeded, with their master,
        and the masters that did not answer or refused, each with why."""
        results = await defer.DeferredList([self.link.call(master_record_uri(m, what), call) for m in masters],
                                           consumeErrors=True)
        answers: list[tuple[str, dict[str, object]]] = []
        unanswered: list[str] = []
        for master, (ok, answer) in zip(masters, results, strict=True):
            if not ok:
                unanswered.append(f"{master} ({visible(answer.getErrorMessage())[:200]})")
                continue
            try:
                _refusal(answer)
            except Refused as e:
                unanswered.append(f"{master} ({e.message})")
                continue
            answers.append((master, answer))
        return answers, unanswered

    @deferred
    async def sessions(self, who: Identity) -> tuple[list[dict[str, object]], list[str]]:
        """The live sessions the other masters hold that `who` may watch there (each row with its "master"),
        and the masters on the router that did not answer, with why."""
        try:
            listings = await self.link.site()
        except ClusterUnavailable as e:
            return [], [f"the other masters ({e})"]
        # Only the masters the shared database confirms (master_side.cluster.verify): another router client's
        # sessions would be routed to it when watched.
        masters = [listing.master for listing in listings if listing.trusted]
        answers, unanswered = await self._ask(masters, SESSIONS, self._call(who))
        rows: list[dict[str, object]] = []
        for master, answer in answers:
            listed = answer.get("rows")
            for row in listed[:MAX_LIVE] if isinstance(listed, list) else []:
                if (isinstance(row, dict) and all(isinstance(row.get(k), kinds) for k, kinds in _LIVE_FIELDS.items())
                        and all(len(v) <= MAX_FIELD for v in row.values() if isinstance(v, str))):
                    try:
                        moderated_by = check_moderated_by(row.get("moderated_by"))
                        moderators = _moderators(row.get("moderators", []))
                    except ProtocolError:
                        continue  # malformed, as a row with a field of the wrong type
                    rows.append({**{k: row[k] for k in _LIVE_FIELDS}, "uid": -1, "viewers": [],
                                 "moderated_by": None if moderated_by is None else list(moderated_by),
                                 "moderators": moderators, "master": master})
        return rows, unanswered


def _moderation(row: Mapping[str, object]) -> dict[str, object]:
    """A four-eyes session's rule and moderators as a live session's row sends them to another master
    (OperatorAPI.sessions' row: its "moderated_by" and its viewers who moderate), cut to their bounds."""
    given, viewers = row.get("moderated_by"), row.get("viewers")
    moderators = [str(v.get("user"))[:MAX_NAME] for v in viewers if isinstance(v, dict) and v.get("moderator")
                  ] if isinstance(viewers, list) else []
    return {"moderated_by": moderated_by_wire(tuple(str(g) for g in given) if isinstance(given, list) else None),
            "moderators": moderators[:MAX_MODERATORS]}


def _moderators(value: object) -> list[str]:
    """The moderators of a live session another master lists, checked: at most MAX_MODERATORS printable names of
    1 to MAX_NAME characters."""
    if not isinstance(value, list) or len(value) > MAX_MODERATORS or not all(
            isinstance(v, str) and 1 <= len(v) <= MAX_NAME and v.isprintable() for v in value):
        raise ProtocolError(f"moderators must be a list of at most {MAX_MODERATORS} printable names")
    return list(value)


def _refusal(answer: object) -> None:
    """Raises the other master's refusal; returns when its answer is one that succeeded (a dict with ok)."""
    if isinstance(answer, dict) and answer.get("ok") is True:
        return
    error = answer.get("error") if isinstance(answer, dict) else None
    kind = answer.get("kind") if isinstance(answer, dict) else None
    text = visible(error)[:1000] if isinstance(error, str) and error else "the other master refused"
    raise Refused(kind if kind in (BAD_REQUEST, LIMIT, UNAVAILABLE, NOT_FOUND, "permission denied")
                  else UNAVAILABLE, text)


def _hit(hit: object, asked: Mapping[str, SessionRow]) -> SearchHit | None:
    """A hit another master found, rebuilt from the caller's own index row of its session; None when it names a
    session the caller did not ask about, or is malformed."""
    if not isinstance(hit, dict):
        return None
    session, at, stream, context = hit.get("session"), hit.get("time"), hit.get("stream"), hit.get("context")
    row = asked.get(session) if isinstance(session, str) else None
    if (row is None or not isinstance(at, (int, float)) or isinstance(at, bool)
            or stream not in ("output", "input", "file") or not isinstance(context, str)
            or len(context) > MAX_CONTEXT):
        return None
    from slaveshell.vocabulary import hidden as hidden_input

    return {"session": row["id"], "worker": row["worker"], "operator": row["operator"], "started": row["started"],
            "time": round(float(at), 3), "hidden": hidden_input.summary(row),
            "hidden_flag": bool(row.get("hidden_flag")), "stream": str(stream), "context": context}
