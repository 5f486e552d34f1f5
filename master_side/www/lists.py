"""What the web pages read besides a session: the fleet, the live sessions, the audit index and transcripts.

Each answer goes through the master's `OperatorAPI` (the policy filters what a web user sees, as for a local
operator) and, per worker, through Buildbot's authz (`access.check_authz_shell`, failing closed): a worker the
web user has no ``shell`` action on is left out of every list. A held build is shown only to whom the policy
gives the ``shell`` right on its worker (who may open a shell in it or release it).

`answer(kind, message, ...)` gives a Deferred of ``(json_message, binary_or_None)``; the binary part (a
transcript chunk) is sent first. Messages (JSON, page -> master; the answer has the same ``type``):

- ``{"type": "workers", "include_offline": bool?}`` -> ``{"workers": [{"name", "connected", "shell", "paused",
  "allowed", "sessions", "workerid", "copy", "master", "here", "masters", "site"}]}`` (``workerid``: Buildbot's id
  of the worker, for its page ``#/workers/<workerid>``, or null; ``copy``: whether the policy gives this web user
  the ``copy`` right there, and the worker is attached to a master of the site (another master's policy decides
  there too, when the copy starts); on a multi-master site, the workers the other masters hold too, with where each
  is: `where`; ``allowed`` is this master's policy, the holder's decides when a session opens; with
  ``include_offline``, as ``slaveshell workers --include-offline``, also the site's workers no master holds now,
  from the shared database: with the masters they are configured on and the last that held them. A site of one
  master lists every worker configured on it, attached or not, either way);
- ``{"type": "sessions"}`` -> ``{"sessions": [{"id", "worker", "operator", "state", "command", "reason",
  "started", "own", "may_type", "viewers", "moderated_by", "held", "moderators"}]}`` (``viewers``: their names;
  for a four-eyes session, ``moderated_by``: the groups and web roles of its rule, else null; ``held``: whether
  its operator's input waits for a moderator; ``moderators``: the viewers who moderate it, as `OperatorAPI.sessions`
  and ``slaveshell sessions`` give them; on a multi-master site each with the ``master`` that holds it, the
  other masters' sessions `who` may watch there included, at most MAX_SITE_SESSIONS of them);
- ``{"type": "history", "worker": str?, "user": str?, "session": str?, "reason": str?, "limit": int?}`` ->
  ``{"sessions":
  [row, ...], "may_replay": bool}`` (rows of the audit index, docs/audit-schema.md, newest first, each with
  Buildbot's ``workerid`` and, for a session in a build, the ``builderid`` of the build's page
  ``#/builders/<builderid>/builds/<build_number>``, or null: master_side.www.buildbot_pages; ``may_replay``:
  whether the policy gives this web user the ``replay`` right on any worker it knows, so that the page can say
  why the list is empty);
- ``{"type": "transcript", "id": str, "offset": int}`` -> a binary frame of up to MAX_CHUNK bytes of the
  transcript (asciicast v2) from `offset`, then ``{"offset": int, "eof": bool}``. A page reads at most
  MAX_REPLAY bytes of one transcript; past it the answer is an error (``slaveshell replay`` has no bound);
- ``{"type": "worker_runs", "worker": str}`` -> a worker's recent fleet runs, for its view
  (master_side.www.fleet_page);
- ``{"type": "hold", "build": int}`` -> ``{"hold": {"build", "builder", "number", "worker", "workdir"} | null}``
  (a build held by HoldForShell, if the web user has the ``shell`` right on its worker);
- ``{"type": "release", "build": int}`` -> ``{"message": str}`` (`OperatorAPI.release`: policy and audit);
- ``{"type": "fleet", "refresh": bool?}`` -> the workers with their facts, ``{"type": "cancel_run", "run": str}``
  -> what a fleet run has pending cancelled (master_side.www.fleet_page);
- ``{"type": "approvals", "id": str?}`` -> ``{"approvals": [{"id", "operator", "worker", "kind", "what",
  "what_chars", "reason", "moderated_by", "asked", "expires", "run", "mine", "may_approve", "waits_for_place"}]}``
  (the requests on four-eyes workers waiting for a moderator's approval that this web user may decide, and their
  own, then the fleet runs' parts among them still waiting for a free place to be asked (``waits_for_place``):
  `OperatorAPI.pending_approvals`, as ``slaveshell approvals`` lists them: ``what`` cut in a listing of all,
  whole with ``id``); ``{"type": "approve", "id": str}`` and ``{"type": "deny", "id": str,
  "reason": str?}`` -> ``{"message": str}`` (master_side.operators.approvals: a moderator of the worker, not the
  request's operator; refusals audited).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from master_side.operators.api import ErrorKind, OperatorError
from master_side.www import access, buildbot_pages, fleet_page
from master_side.www.access import UserInfo
from master_side.www.host import WebHost
from master_side.www.site import site_workers, where
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.policy import Action, WebIdentity
from slaveshell.vocabulary.protocol import ProtocolError

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

QUERIES = ("workers", "sessions", "history", "transcript", "hold", "release", "fleet", "cancel_run", "approvals",
           "approve", "deny", "worker_runs")
# The largest transcript a page replays (bytes): the page holds it whole.
MAX_REPLAY = 64 * 1024 * 1024
# The most live sessions of the other masters a page is sent.
MAX_SITE_SESSIONS = 1000
# History rows' fields shown to the page.
HISTORY_FIELDS = ("id", "worker", "operator", "command", "pty", "started", "ended", "state", "end_reason",
                  "exit_code", "exit_signal", "bytes_in", "bytes_out", "build_id", "builder", "build_number",
                  "hidden_spans", "hidden_flag", "reason", "site_master")

# A JSON message for the page, and the binary frame sent before it (a transcript chunk) or None.
Message = dict[str, object]
Answer = tuple[Message, bytes | None]


@deferred
async def _site_sessions(service: WebHost, master: BuildMaster, who: WebIdentity, info: UserInfo,
                         shown: list[dict[str, object]]) -> list[dict[str, object]]:
    """This master's live sessions (`shown`, each then named with this master) and those the other masters of the
    site hold that `who` may watch there (their policy decides, for the identity this master vouches for:
    master_side.cluster.records), on workers Buildbot's authz here gives `who` the shell action on; each with the
    master that holds it, and for a four-eyes one its rule's groups and its moderators as that master says them
    (shown as text, so that a held one reads `held` as on its own master's page). Watching one is routed to that
    master (master_side.www.terminal_ws); typing in one is asked there too, so none says may_type here."""
    cluster = service.api.cluster
    assert cluster is not None
    for s in shown:
        s["master"] = cluster.link.name
    remote, _unanswered = await cluster.records.sessions(who)
    remote = remote[:MAX_SITE_SESSIONS]
    allowed = await access.shell_allowed(master, info, {str(s["worker"]) for s in remote})
    shown = shown + [{"id": s["id"], "worker": s["worker"], "operator": s["operator"], "state": s["state"],
                      "command": s["command"], "reason": s["reason"], "started": s["started"], "own": False,
                      "may_type": False, "viewers": [], "moderated_by": s["moderated_by"], "held": s["held"],
                      "moderators": s["moderators"], "master": s["master"]}
                     for s in remote if s["worker"] in allowed]
    return sorted(shown, key=lambda s: float(s["started"]))  # type: ignore[arg-type]


def _opt_str(message: Message, key: str) -> str | None:
    value = message.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise ProtocolError(f"{key} must be a string")
    return value


def _builder_of(builds: dict[int, tuple[int, int]], row: Mapping[str, object]) -> int | None:
    """The builderid of the row's build page, when Buildbot knows the build under the number the index recorded."""
    build_id = row.get("build_id")
    page = builds.get(build_id) if isinstance(build_id, int) else None
    return page[0] if page is not None and page[1] == row.get("build_number") else None


@deferred
async def answer(kind: str, message: Message, service: WebHost, master: BuildMaster, who: WebIdentity,
                 info: UserInfo) -> Answer:
    api = service.api
    if kind == "workers":
        include_offline = message.get("include_offline", False)
        if not isinstance(include_offline, bool):
            raise ProtocolError("include_offline is true or false")
        workers = await site_workers(service, who, include_offline)
        gate = await access.shell_allowed(master, info, {str(w["name"]) for w in workers})
        ids = await buildbot_pages.worker_ids(master, gate)
        return {"type": "workers", "workers": [
            {**{k: w[k] for k in ("name", "connected", "shell", "paused", "sessions", "allowed")},
             "workerid": ids.get(str(w["name"])), **where(w),
             # On a worker another master holds, that master's policy decides too, when the copy starts.
             "copy": w.get("master", True) is not None and service.policy.may(who, Action.COPY,
                                                                               str(w["name"])).allowed}
            for w in workers if w["name"] in gate]}, None
    if kind == "sessions":
        sessions = api.sessions(who)
        allowed = await access.shell_allowed(master, info, {str(s["worker"]) for s in sessions})
        shown = []
        for s in sessions:
            live = service.registry.get(str(s["id"]))
            if live is None or s["worker"] not in allowed:
                continue
            own = live.identity.key == who.key
            action = Action.RESUME if live.owner is None else Action.JOIN
            may_type = (not own or live.owner is None) and service.policy.may(
                who, action, live.worker, owner=live.identity).allowed
            shown.append({
                "id": s["id"], "worker": s["worker"], "operator": s["operator"], "state": s["state"],
                "command": s["command"], "reason": s["reason"], "started": s["started"], "own": own,
                "may_type": may_type,
                "viewers": [v.identity.user for v in live.viewers],
                "moderated_by": s["moderated_by"], "held": s["held"],
                "moderators": [v.identity.user for v in live.viewers
                               if live.moderation is not None and v in live.moderation.moderators]})
        if service.api.cluster is not None:
            shown = await _site_sessions(service, master, who, info, shown)
        return {"type": "sessions", "sessions": shown}, None
    if kind == "history":
        limit = message.get("limit", 200)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise ProtocolError("limit must be between 1 and 1000")
        rows = await api.site_history(who, {"worker": _opt_str(message, "worker"), "user": _opt_str(message, "user"),
                                       "session": _opt_str(message, "session"),
                                       "reason": _opt_str(message, "reason"), "limit": limit})
        allowed = await access.shell_allowed(master, info, {r["worker"] for r in rows})
        may_replay = any(service.policy.may(who, Action.REPLAY, str(w["name"])).allowed for w in api.workers(who))
        readable = [r for r in rows if r["worker"] in allowed]
        ids = await buildbot_pages.worker_ids(master, {r["worker"] for r in readable})
        builds = await buildbot_pages.build_pages(master, {b for r in readable if (b := r["build_id"]) is not None})
        return {"type": "history", "may_replay": may_replay, "sessions": [
            {**{k: r.get(k) for k in HISTORY_FIELDS}, "workerid": ids.get(r["worker"]),
             "builderid": _builder_of(builds, r)} for r in readable]}, None
    if kind == "transcript":
        session_id, offset = message.get("id"), message.get("offset", 0)
        if not isinstance(session_id, str) or len(session_id) > 256:
            raise ProtocolError("transcript needs a session id")
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_REPLAY:
            raise ProtocolError("transcript needs an offset")
        rows = await api.history(who, {"session": session_id, "limit": 1})
        allowed = await access.shell_allowed(master, info, {r["worker"] for r in rows})
        if not rows or rows[0]["worker"] not in allowed:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no session {session_id} that you may replay")
        chunk = await api.transcript(who, session_id, offset)
        data = bytes(chunk["data"])
        if offset + len(data) >= MAX_REPLAY and not chunk["eof"]:
            raise OperatorError(ErrorKind.LIMIT, f"this transcript is larger than {MAX_REPLAY >> 20} MiB: "
                                "replay it with `slaveshell replay` on the master")
        return {"type": "transcript", "offset": offset + len(data), "eof": bool(chunk["eof"])}, data
    if kind == "approvals":
        requests = api.pending_approvals(who, message.get("id"))
        allowed = await access.shell_allowed(master, info, {str(r["worker"]) for r in requests})
        return {"type": "approvals", "approvals": [r for r in requests if r["worker"] in allowed]}, None
    if kind in ("approve", "deny"):
        request_id = message.get("id")
        if not isinstance(request_id, str) or not 1 <= len(request_id) <= 64:
            raise ProtocolError(f"{kind} needs a request's id")
        pending = api.approvals.pending.get(request_id)
        allowed = await access.shell_allowed(master, info, {pending.request.worker} if pending else set())
        if pending is None or pending.request.worker not in allowed:
            raise OperatorError(ErrorKind.NOT_FOUND, f"no pending approval request {request_id}")
        text = (api.approve(who, request_id) if kind == "approve"
                else api.deny(who, request_id, _opt_str(message, "reason")))
        return {"type": kind, "message": text}, None
    if kind == "fleet":
        return await fleet_page.fleet_answer(message, service, master, who, info), None
    if kind == "cancel_run":
        return await fleet_page.cancel_answer(message, service, who), None
    if kind == "worker_runs":
        return await fleet_page.worker_runs_answer(message, service, master, who, info), None
    if kind in ("hold", "release"):
        build_id = message.get("build")
        if not isinstance(build_id, int) or isinstance(build_id, bool):
            raise ProtocolError(f"{kind} needs a build id")
        hold = service.holds.get(build_id)
        allowed = await access.shell_allowed(master, info, {hold.worker} if hold is not None else set())
        if hold is None or hold.worker not in allowed or not service.policy.may(who, Action.SHELL,
                                                                                hold.worker).allowed:
            if kind == "hold":
                return {"type": "hold", "hold": None}, None
            raise OperatorError(ErrorKind.NOT_FOUND, f"build {build_id} is not held")
        if kind == "hold":
            return {"type": "hold", "hold": {"build": hold.build_id, "builder": hold.builder,
                                             "number": hold.build_number, "worker": hold.worker,
                                             "workdir": hold.workdir}}, None
        return {"type": "release", "message": api.release(who, build_id)}, None
    raise ProtocolError(f"unknown query {kind!r}")
