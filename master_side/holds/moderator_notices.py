"""The four-eyes notice: "session S on worker W waits for a second person", through Buildbot's reporters.

A session that a rule with `moderated_by` allows opens with its input held until a moderator watches
(master_side.sessions.moderation). The master publishes a `ModeratorWanted` on its mq when such a session opens,
and when its last moderator left (at most once in `REPEAT_AFTER` seconds per session, and `PER_MINUTE` a minute in
all: an operator opening and closing sessions, or a moderator coming and going, cannot flood the reporters); a
`ModeratorNoticeGenerator` in any reporter's ``generators`` turns it into that reporter's message: who waits,
why (their `--reason`), who may moderate, and the commands that watch (and so moderate) or end it. In master.cfg::

    from buildbot.plugins import reporters
    from master_side import ModeratorNoticeGenerator
    c['services'].append(reporters.MailNotifier(fromaddr='buildbot@example.org',
        extraRecipients=['ops-leads@example.org'], generators=[ModeratorNoticeGenerator()]))

The same notice asks for a moderator's approval of a request on such a worker (master_side.operators.approvals: a
copy, a command, a fleet run's part): `asks` names its kind, the id is the request's, and the commands are
`slaveshell approvals`, `slaveshell approve ID` and `slaveshell deny ID`. Those notices have a pace of their own
(`APPROVALS_PER_MINUTE`): a burst of sessions' notices does not hold back a request's, nor the other way round.

The notice never names the session's command (as logs never do: it belongs in the audit store only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from buildbot import interfaces
from zope.interface import implementer

from master_side.holds.deadline import clock_time
from master_side.holds.notice_reports import NoticeFormatter, NoticeGenerator, produce
from master_side.holds.notices import reach, socket_of
from slaveshell.plumbing.deferreds import deferred

# The notice's routing key on the mq: ('slaveshell', 'sessions', SESSION, 'moderator_wanted').
KIND = ("sessions", "moderator_wanted")
# A session's notice again (its last moderator left) at most this often, and all sessions' at most PER_MINUTE.
REPEAT_AFTER = 600.0
PER_MINUTE = 20
APPROVALS_PER_MINUTE = 20  # the approval requests' notices, a pace of their own
OPENED = "opened"
APPROVAL = "approval"  # `why` of a request that waits for a moderator's approval


@dataclass(frozen=True)
class ModeratorWanted:
    """A four-eyes session waiting for a moderator, as the mq carries it: text and numbers only."""

    session_id: str
    worker: str
    operator: str
    moderated_by: str  # the groups and web roles that moderate it, comma-separated
    started: float  # the session's start, seconds since the epoch
    why: str  # OPENED, or what made it wait again ("the last moderator (bob) left")
    reason: str | None = None  # the operator's --reason
    socket: str | None = None  # the service's socket when it is not the default one (--socket)
    web_url: str | None = None  # the web terminal's watch page, when the www plugin is on
    asks: str | None = None  # a request waiting for approval: its kind ("copy", "command", "run"); None: a session

    def to_message(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: object) -> ModeratorWanted | None:
        """The event a message carries, checked field by field; None when it is not one."""
        if not isinstance(message, dict):
            return None
        texts = ("session_id", "worker", "operator", "moderated_by", "why")
        optional_texts = ("reason", "socket", "web_url", "asks")
        if set(message) != set(texts + optional_texts + ("started",)):
            return None
        if not all(isinstance(message[k], str) and message[k] for k in texts):
            return None
        if not all(message[k] is None or isinstance(message[k], str) for k in optional_texts):
            return None
        started = message["started"]
        if not isinstance(started, (int, float)) or isinstance(started, bool) or not 0 < started < float("inf"):
            return None
        m = message
        return cls(m["session_id"], m["worker"], m["operator"], m["moderated_by"], float(started), m["why"],
                   m["reason"], m["socket"], m["web_url"], m["asks"])

    @property
    def reach(self) -> str:
        return reach(self.socket)


class NoticePace:
    """Which notices may go: a session's (or a request's) first, then at most one per `REPEAT_AFTER` s;
    `per_minute` in all."""

    def __init__(self, clock: Callable[[], float] = time.time, per_minute: int = PER_MINUTE) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self._last: dict[str, float] = {}
        self._sent: list[float] = []

    def take(self, session_id: str, first: bool) -> bool:
        now = self.clock()
        self._sent = [t for t in self._sent if now - t < 60.0]
        if len(self._last) > 4 * self.per_minute:  # bounded: what is older than REPEAT_AFTER no longer counts
            self._last = {k: t for k, t in self._last.items() if now - t < REPEAT_AFTER}
        last = self._last.get(session_id)
        if (not first and last is not None and now - last < REPEAT_AFTER) or len(self._sent) >= self.per_minute:
            return False
        self._sent.append(now)
        self._last[session_id] = now
        return True


def web_page(master: Any, session_id: str) -> str | None:
    """The web terminal's watch page of the session, when the master serves that plugin."""
    www = getattr(master.config, "www", None) or {}
    if "slaveshell" not in (www.get("plugins") or {}):
        return None
    return f"{master.config.buildbotURL}#/slaveshell/session/{session_id}/watch"


def announce(master: Any, session_id: str, worker: str, operator: str, moderated_by: str, started: float, why: str,
             reason: str | None, asks: str | None = None) -> None:
    """Tell the reporters that a session waits for a moderator (with `asks`: that a request of that kind waits
    for a moderator's approval; `session_id` is then the request's id). Never raises."""
    try:
        event = ModeratorWanted(session_id, worker, operator, moderated_by, started, why, reason,
                                socket_of(master), None if asks else web_page(master, session_id), asks)
    except Exception:  # a master without a basedir or a config: no notice rather than no session
        from master_side.holds.notice_reports import log

        log.failure("session {sid}: cannot make the moderator notice", sid=session_id)
        return
    produce(master, (KIND[0], session_id, KIND[1]), event.to_message())


DEFAULT_PLAIN = """\
{% if asks %}Request {{ session }} on worker {{ workername }} waits for a second person.

{{ operator }} asked at {{ started_at }}{% if reason %} ({{ reason }}){% endif %} for a {{ asks }} on \
{{ workername }}, which starts only once a moderator approves it.
Moderators: {{ moderated_by }}, with the watch right on {{ workername }}, not {{ operator }}.

See what it would do, and approve or deny it, from the master host:

    {{ list_command }}
    {{ approve_command }}
    {{ deny_command }}
{% else %}Session {{ session }} on worker {{ workername }} waits for a second person.

{{ operator }} opened it at {{ started_at }}{% if reason %} ({{ reason }}){% endif %}; \
its input is held until a moderator watches{% if why != "opened" %} again: {{ why }}{% endif %}.
Moderators: {{ moderated_by }}, with the watch right on {{ workername }}, not {{ operator }}.

Watch it, and so moderate it, from the master host:

    {{ watch_command }}
{% if web_url %}
or in the browser:

    {{ web_url }}
{% endif %}
End it with `{{ kill_command }}`.
{% endif %}"""

DEFAULT_HTML = """\
{% if asks %}<p>Request {{ session }} on worker {{ workername }} waits for a second person.</p>
<p>{{ operator }} asked at {{ started_at }}{% if reason %} ({{ reason }}){% endif %} for a {{ asks }} on \
{{ workername }}, which starts only once a moderator approves it.
Moderators: {{ moderated_by }}, with the watch right on {{ workername }}, not {{ operator }}.</p>
<p>See what it would do, and approve or deny it, from the master host:</p>
<pre>{{ list_command }}
{{ approve_command }}
{{ deny_command }}</pre>
{% else %}<p>Session {{ session }} on worker {{ workername }} waits for a second person.</p>
<p>{{ operator }} opened it at {{ started_at }}{% if reason %} ({{ reason }}){% endif %}; its input is held \
until a moderator watches{% if why != "opened" %} again: {{ why }}{% endif %}.
Moderators: {{ moderated_by }}, with the watch right on {{ workername }}, not {{ operator }}.</p>
<p>Watch it, and so moderate it, from the master host:</p>
<pre>{{ watch_command }}</pre>
{% if web_url %}<p>or <a href="{{ web_url }}">in the browser</a>.</p>
{% endif %}<p>End it with <code>{{ kill_command }}</code>.</p>
{% endif %}"""

DEFAULT_SUBJECT = ("Buildbot ({{ buildbot_title }}): {% if asks %}request{% else %}session{% endif %} {{ session }} "
                   "on {{ workername }} waits for a second person")


class ModeratorNoticeFormatter(NoticeFormatter):
    """The four-eyes notice from Jinja templates (`template`, `subject`, `template_type` 'plain' or 'html'), with
    the context of `ModeratorNoticeGenerator.context`."""

    default_templates: ClassVar[dict[str, str]] = {"plain": DEFAULT_PLAIN, "html": DEFAULT_HTML}
    default_subject: ClassVar[str] = DEFAULT_SUBJECT


@implementer(interfaces.IReportGenerator)
class ModeratorNoticeGenerator(NoticeGenerator):
    """Reports each four-eyes session that waits for a moderator. `workers`: only those (None: all); `builders`:
    such a session has no builder, so a generator limited to builders never reports one; `message_formatter`: a
    `ModeratorNoticeFormatter` (the default, plain) or a `NoticeFormatterFunction`."""

    wanted_event_keys: ClassVar[list[tuple[str | None, ...]]] = [("slaveshell", KIND[0], None, KIND[1])]

    def default_formatter(self) -> NoticeFormatter:
        return ModeratorNoticeFormatter()

    def event(self, message: object) -> ModeratorWanted | None:
        return ModeratorWanted.from_message(message)

    def worker_of(self, event: ModeratorWanted) -> str:
        return event.worker

    def builder_of(self, event: ModeratorWanted) -> str | None:
        return None

    @deferred
    async def context(self, master: Any, reporter: Any, event: ModeratorWanted) -> dict[str, Any]:
        """The formatter's context:

        kind ("moderator_wanted"), session (a request's id with `asks`), workername, operator, moderated_by
        (groups and web roles, comma-separated), why ("opened", or what made it wait again; "approval" for a
        request), reason (the operator's, or None), started, started_at (UTC), watch_command, kill_command, socket
        (None: the default), web_url (None without the www plugin, and for a request), buildbot_title,
        buildbot_url; asks (a request waiting for approval: "copy", "command" or "run"; None for a session),
        list_command, approve_command, deny_command.
        """
        return {
            "kind": "moderator_wanted",
            "session": event.session_id,
            "workername": event.worker,
            "operator": event.operator,
            "moderated_by": event.moderated_by,
            "why": event.why,
            "reason": event.reason,
            "started": event.started,
            "started_at": clock_time(event.started),
            "watch_command": f"slaveshell watch {event.session_id}{event.reach}",
            "kill_command": f"slaveshell kill {event.session_id}{event.reach}",
            "asks": event.asks,
            "list_command": f"slaveshell approvals{event.reach}",
            "approve_command": f"slaveshell approve {event.session_id}{event.reach}",
            "deny_command": f"slaveshell deny {event.session_id}{event.reach} --reason TEXT",
            "socket": event.socket,
            "web_url": event.web_url,
            "buildbot_title": master.config.title,
            "buildbot_url": master.config.buildbotURL,
            "report": {"users": []},
        }
