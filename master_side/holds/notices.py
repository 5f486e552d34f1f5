"""The held-build notice: "build N of BUILDER is held on worker W for you", through Buildbot's reporters.

`HoldForShell` publishes a `HeldBuild` on the master's mq once when it holds a build (`announce`); a
`HoldNoticeGenerator` in any reporter's ``generators`` turns it into that reporter's message: the command to
step in (``buildbot-shell --build N W``, with ``--socket`` when the service's socket is not the default one),
the web terminal's page when the www plugin is on, and when the hold ends by itself. In master.cfg::

    from buildbot.plugins import reporters
    from master_side import HoldNoticeGenerator
    c['services'].append(reporters.MailNotifier(fromaddr='buildbot@example.org',
        extraRecipients=['oncall@example.org'], generators=[HoldNoticeGenerator()]))

`HoldNoticeFormatter` (Jinja templates, plain or html) and `notice_reports.NoticeFormatterFunction` (a
function of the context: json for a chat webhook) make the message; their context is described in
`HoldNoticeGenerator.context`.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from buildbot import interfaces
from buildbot.reporters import utils
from zope.interface import implementer

from master_side.glue.services import master_services
from master_side.holds.deadline import HoldTimes, clock_time
from master_side.holds.notice_reports import NoticeFormatter, NoticeGenerator, produce
from slaveshell.plumbing.deferreds import deferred

# The held-build notice's routing key on the mq: ('slaveshell', 'holds', BUILDID, 'held').
KIND = ("holds", "held")


@dataclass(frozen=True)
class HeldBuild:
    """A build held for a shell, as the mq carries it: text and numbers only."""

    build_id: int
    builder: str
    number: int
    worker: str
    started: float  # the hold's start, seconds since the epoch
    max_hold: float
    wait_for_operator: float | None = None
    idle_after_attach: float | None = None
    socket: str | None = None  # the service's socket when it is not the default one (--socket)
    web_url: str | None = None  # the web terminal's page for the build, when the www plugin is on

    def to_message(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: object) -> HeldBuild | None:
        """The event a message carries, checked field by field; None when it is not one."""
        if not isinstance(message, dict):
            return None
        ints = ("build_id", "number")
        texts = ("builder", "worker")
        numbers = ("started", "max_hold")
        optional_numbers = ("wait_for_operator", "idle_after_attach")
        optional_texts = ("socket", "web_url")
        if set(message) != set(ints + texts + numbers + optional_numbers + optional_texts):
            return None
        if not all(type(message[k]) is int for k in ints):
            return None
        if not all(isinstance(message[k], str) and message[k] for k in texts):
            return None
        if not all(_seconds(message[k]) for k in numbers):
            return None
        if not all(message[k] is None or _seconds(message[k]) for k in optional_numbers):
            return None
        if not all(message[k] is None or isinstance(message[k], str) for k in optional_texts):
            return None
        m = message

        def seconds(key: str) -> float | None:
            return None if m[key] is None else float(m[key])

        return cls(m["build_id"], m["builder"], m["number"], m["worker"], float(m["started"]),
                   float(m["max_hold"]), seconds("wait_for_operator"), seconds("idle_after_attach"), m["socket"],
                   m["web_url"])

    @property
    def times(self) -> HoldTimes:
        """The hold's deadlines as they were when it began."""
        return HoldTimes(self.started, self.max_hold, self.wait_for_operator, self.idle_after_attach)

    @property
    def reach(self) -> str:
        return reach(self.socket)

    @property
    def command(self) -> str:
        return step_in_command(self.build_id, self.worker, self.socket)


def reach(socket: str | None) -> str:
    """What a command needs to reach the master's socket (`socket_of`): nothing, or `` --socket PATH``."""
    return f" --socket {shlex.quote(socket)}" if socket else ""


def step_in_command(build_id: int, worker: str, socket: str | None) -> str:
    """The command that steps into a held build, as the step's text and the notice both tell it."""
    return f"buildbot-shell --build {build_id} {worker}{reach(socket)}"


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


@runtime_checkable
class SocketHost(Protocol):
    """What the notice asks of the master's ShellService, found among the master's services."""

    def command_socket(self, basedir: str) -> str | None:
        """The socket a command must name with ``--socket`` to reach the service: None when it listens on none,
        or on the default one in the master's `basedir`."""


class HeldFacts(Protocol):
    """What the notice tells of a held build (master_side.holds.step.Hold)."""

    @property
    def build_id(self) -> int: ...
    @property
    def builder(self) -> str: ...
    @property
    def build_number(self) -> int: ...
    @property
    def worker(self) -> str: ...
    @property
    def times(self) -> HoldTimes | None: ...


def socket_of(master: Any) -> str | None:
    """The service's socket when a command needs ``--socket`` for it: not the default one in the master's
    basedir (where `buildbot-shell` run in that directory finds it)."""
    for service in master_services(master):
        if isinstance(service, SocketHost):
            return service.command_socket(master.basedir)
    return None


def announce(master: Any, hold: HeldFacts, web_url: str | None) -> None:
    """Tell the reporters that `hold` began (HoldForShell calls it once per hold). Never raises."""
    times = hold.times
    if times is None:
        return
    try:
        event = HeldBuild(hold.build_id, hold.builder, hold.build_number, hold.worker, times.started,
                          times.max_hold, times.wait_for_operator, times.idle_after_attach, socket_of(master),
                          web_url)
    except Exception:  # a master without a basedir, a service that went away: no notice rather than no hold
        from master_side.holds.notice_reports import log

        log.failure("build {bid}: cannot make the held-build notice", bid=hold.build_id)
        return
    produce(master, (KIND[0], str(hold.build_id), KIND[1]), event.to_message())


DEFAULT_PLAIN = """\
Build {{ number }} of {{ buildername }} is held on worker {{ workername }} for you.

Step in from the master host:

    {{ command }}
{% if web_url %}
or in the browser (a terminal in this build, and a release button):

    {{ web_url }}
{% endif %}
It is held {{ deadline }}. It is released by itself
{% for line in deadlines %}  - {{ line }},
{% endfor %}  - or when the build is stopped.

Release it with `{{ release_command }}` (or ~r in the shell); extend it with `{{ extend_command }}` (up to \
max_hold).

The build: {{ build_url }}
"""

DEFAULT_HTML = """\
<p>Build {{ number }} of <a href="{{ build_url }}">{{ buildername }}</a> is held on worker {{ workername }} \
for you.</p>
<p>Step in from the master host:</p>
<pre>{{ command }}</pre>
{% if web_url %}<p>or <a href="{{ web_url }}">in the browser</a> (a terminal in this build, and a release \
button).</p>
{% endif %}<p>It is held {{ deadline }}. It is released by itself</p>
<ul>
{% for line in deadlines %}  <li>{{ line }},</li>
{% endfor %}  <li>or when the build is stopped.</li>
</ul>
<p>Release it with <code>{{ release_command }}</code> (or ~r in the shell); extend it with \
<code>{{ extend_command }}</code> (up to max_hold).</p>
"""

DEFAULT_SUBJECT = ("Buildbot ({{ buildbot_title }}): build {{ number }} of {{ buildername }} held on "
                   "{{ workername }} for a shell")


class HoldNoticeFormatter(NoticeFormatter):
    """The held-build notice from Jinja templates (`template`, `subject`, `template_type` 'plain' or 'html'),
    with the context of `HoldNoticeGenerator.context`."""

    default_templates: ClassVar[dict[str, str]] = {"plain": DEFAULT_PLAIN, "html": DEFAULT_HTML}
    default_subject: ClassVar[str] = DEFAULT_SUBJECT


@implementer(interfaces.IReportGenerator)
class HoldNoticeGenerator(NoticeGenerator):
    """Reports each build HoldForShell holds, once, when it is held. `builders`, `workers`: only those (None:
    all); `message_formatter`: a `HoldNoticeFormatter` (the default, plain) or a `NoticeFormatterFunction`."""

    wanted_event_keys: ClassVar[list[tuple[str | None, ...]]] = [("slaveshell", KIND[0], None, KIND[1])]

    def default_formatter(self) -> NoticeFormatter:
        return HoldNoticeFormatter()

    def event(self, message: object) -> HeldBuild | None:
        return HeldBuild.from_message(message)

    def worker_of(self, event: HeldBuild) -> str:
        return event.worker

    def builder_of(self, event: HeldBuild) -> str:
        return event.builder

    @deferred
    async def context(self, master: Any, reporter: Any, event: HeldBuild) -> dict[str, Any]:
        """The formatter's context:

        buildid, number, buildername, workername; command (to step in), socket (None: the default), web_url
        (None without the www plugin), build_url (Buildbot's page of the build); deadline (the hold's deadline
        in a few words, as the step's text says it when the hold begins), deadline_at (that time, UTC),
        deadlines (how the hold ends by itself, a line per limit), max_end (the hard end, UTC),
        wait_for_operator, idle_after_attach, max_hold (seconds, None when not set); release_command,
        extend_command; blamelist (the build's responsible users); build (the build as Buildbot's
        reporters get it, with its properties when the formatter wants them); buildbot_title, buildbot_url.
        """
        formatter = self.formatter
        build = await master.data.get(("builds", event.build_id))
        users: list[str] = []
        report: dict[str, Any] = {"users": users}
        if build is not None:
            await utils.getDetailsForBuild(master, build, want_properties=formatter.want_properties,
                                           want_steps=formatter.want_steps, want_logs=formatter.want_logs,
                                           want_logs_content=formatter.want_logs_content)
            users = list(await reporter.getResponsibleUsersForBuild(master, event.build_id))
            report = {"users": users, "builds": [build], "buildset": build.get("buildset"),
                      "results": build.get("results")}
            build_url = utils.getURLForBuild(master, build["builderid"], build["number"])
        else:
            build_url = master.config.buildbotURL
        times = event.times
        deadline, _ = times.deadline()
        return {
            "kind": "held",
            "buildid": event.build_id,
            "number": event.number,
            "buildername": event.builder,
            "workername": event.worker,
            "command": event.command,
            "socket": event.socket,
            "web_url": event.web_url,
            "build_url": build_url,
            "deadline": times.summary(),
            "deadline_at": clock_time(deadline),
            "deadlines": times.explained(),
            "max_end": clock_time(times.hard_end),
            "wait_for_operator": event.wait_for_operator,
            "idle_after_attach": event.idle_after_attach,
            "max_hold": event.max_hold,
            "release_command": f"slaveshell release {event.build_id}{event.reach}",
            "extend_command": f"slaveshell hold extend {event.build_id} 2h{event.reach}",
            "blamelist": users,
            "build": build,
            "buildbot_title": master.config.title,
            "buildbot_url": master.config.buildbotURL,
            "report": report,
        }
