"""Notices through Buildbot's own reporters: the part every kind of notice shares.

A notice is an mq event under ``('slaveshell', ...)`` that the master side produces (`produce`), and a report
generator in the style of `buildbot.reporters.generators` that turns it into a report for whatever reporter
the user configured it in (MailNotifier, HttpStatusPush, Pushover, ...). A kind of notice is three things: a
frozen event with `to_message` and a checking `from_message` (the message crosses the mq, JSON under ``wamp``:
text and numbers only, no bytes), a `NoticeGenerator` subclass naming its routing key and building the
formatter's context, and a `NoticeFormatter` subclass with its default templates. `master_side.holds.notices`
is the held-build notice; a session waiting for a moderator would be another kind beside it (its event under
``('slaveshell', 'sessions', SESSION, 'moderator_wanted')``, filtered by worker, without a build).

What a message carries is checked again when it arrives (under ``wamp`` any client of the router may publish),
and every text reaches a report escaped for its format: `slaveshell.vocabulary.display.visible` for each value in the
context (no control or format character in a plain text, a subject or a log line), and HTML escaping on top of
it in an html message (the body's template runs with Jinja's autoescape).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jinja2
from buildbot import config
from buildbot.reporters.message import MessageFormatterBase
from buildbot.util import ComparableMixin
from twisted.internet import defer
from twisted.logger import Logger

from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible

log = Logger()

# The first part of every notice's routing key.
TOPIC = "slaveshell"
TYPES = ("plain", "html", "json")


def produce(master: Any, key: tuple[str, ...], message: Mapping[str, object]) -> None:
    """Publish a notice on the master's mq. Never raises: a notice that cannot be sent is a log line, never a
    failed hold (under ``wamp`` the publication fails later, and Buildbot logs that)."""
    try:
        master.mq.produce((TOPIC, *key), dict(message))
    except Exception:
        log.failure("slaveshell: cannot publish the notice {key}", key=".".join((TOPIC, *key)))


def shown(value: object) -> object:
    """`value` with every text in it as `visible` shows it (dicts and lists through), for a formatter's
    context: the one place a notice's untrusted text (build properties, a message from the mq) is made safe."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, Mapping):
        return {shown(k) if isinstance(k, str) else k: shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shown(v) for v in value]
    return value


class NoticeFormatter(MessageFormatterBase):
    """A notice's message from Jinja templates, like Buildbot's `MessageFormatter`: `template` (the body),
    `subject`, `template_type` 'plain' or 'html' (autoescaped). Subclasses give the defaults
    (`default_templates`, `default_subject`)."""

    compare_attrs: ClassVar[Sequence[str]] = ["template", "subject", "template_type"]
    default_templates: ClassVar[dict[str, str]] = {}
    default_subject: ClassVar[str] = ""

    def __init__(self, template: str | None = None, subject: str | None = None, template_type: str = "plain",
                 **kwargs: Any) -> None:
        kwargs.setdefault("want_properties", True)
        super().__init__(**kwargs)
        if template_type not in ("plain", "html"):
            config.error(f"{type(self).__name__}: template_type must be 'plain' or 'html' "
                         "(NoticeFormatterFunction makes json)")
            template_type = "plain"
        self.template_type = template_type
        self.template = template if template is not None else self.default_templates[template_type]
        self.subject = subject if subject is not None else self.default_subject
        try:
            self._body = jinja2.Environment(autoescape=template_type == "html").from_string(self.template)
            self._subject = jinja2.Environment(autoescape=False).from_string(self.subject)
        except jinja2.TemplateSyntaxError as e:
            config.error(f"{type(self).__name__}: a template does not parse: {e}")

    def render_message_body(self, context: dict[str, Any]) -> str:
        return self._body.render(context)

    def render_message_subject(self, context: dict[str, Any]) -> str:
        # One line whatever a custom template makes of it (MailNotifier refuses a subject with a newline).
        return " ".join(self._subject.render(context).split())

    @deferred
    async def format_notice(self, master: Any, context: dict[str, Any]) -> dict[str, Any]:
        """The message for one notice: a dict of body, type, subject and extra_info, as Buildbot's
        formatters make them."""
        message: dict[str, Any] = await self.render_message_dict(master, context)
        return message


class NoticeFormatterFunction(MessageFormatterBase):
    """A notice's message from a function of the formatter's context, like Buildbot's
    `MessageFormatterFunction`: for a chat webhook through HttpStatusPush, e.g.
    ``NoticeFormatterFunction(lambda notice: {'text': notice['text']})``. The context has the kind's fields, and
    ``text`` and ``subject``, the kind's default plain message (every value in them already made visible)."""

    compare_attrs: ClassVar[Sequence[str]] = ["function", "template_type"]

    def __init__(self, function: Callable[[dict[str, Any]], object], template_type: str = "json",
                 **kwargs: Any) -> None:
        kwargs.setdefault("want_properties", True)
        super().__init__(**kwargs)
        if template_type not in TYPES:
            config.error(f"NoticeFormatterFunction: template_type must be one of {TYPES}")
        if not callable(function):
            config.error("NoticeFormatterFunction: function must be callable")
        self.function = function
        self.template_type = template_type

    def render_message_body(self, context: dict[str, Any]) -> object:
        return self.function(context)

    @deferred
    async def format_notice(self, master: Any, context: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = await self.render_message_dict(master, context)
        return message


class NoticeGenerator(ComparableMixin):
    """A report generator (Buildbot's `IReportGenerator`) for one kind of notice. A subclass sets
    `wanted_event_keys` (the kind's routing key, ``None`` for its id) and implements `event` (the message checked
    into the kind's event, None when it is not one), `worker_of`, `builder_of` and `context`."""

    compare_attrs: ClassVar[Sequence[str]] = ["builders", "workers", "formatter"]
    wanted_event_keys: ClassVar[list[tuple[str | None, ...]]] = []

    def __init__(self, builders: list[str] | None = None, workers: list[str] | None = None,
                 message_formatter: NoticeFormatter | NoticeFormatterFunction | None = None) -> None:
        self.builders = builders
        self.workers = workers
        self.formatter = message_formatter if message_formatter is not None else self.default_formatter()

    def default_formatter(self) -> NoticeFormatter:
        raise NotImplementedError

    def check(self) -> None:
        for name, value in (("builders", self.builders), ("workers", self.workers)):
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                config.error(f"{type(self).__name__}: {name} must be a list of names or None")
        if not hasattr(self.formatter, "format_notice"):
            config.error(f"{type(self).__name__}: message_formatter must be a NoticeFormatter or a "
                         "NoticeFormatterFunction")

    def generate_name(self) -> str:
        name = type(self).__name__
        if self.builders is not None:
            name += "_builders_" + "+".join(self.builders)
        if self.workers is not None:
            name += "_workers_" + "+".join(self.workers)
        return name

    # The kind's part.
    def event(self, message: object) -> Any | None:
        raise NotImplementedError

    def worker_of(self, event: Any) -> str | None:
        raise NotImplementedError

    def builder_of(self, event: Any) -> str | None:
        raise NotImplementedError

    def context(self, master: Any, reporter: Any, event: Any) -> defer.Deferred[dict[str, Any]]:
        """The formatter's context (values not yet made visible), and under ``report`` what the report says
        besides the message (builds, buildset, users, results)."""
        raise NotImplementedError

    def wanted(self, event: Any) -> bool:
        if self.workers is not None and self.worker_of(event) not in self.workers:
            return False
        return self.builders is None or self.builder_of(event) in self.builders

    @deferred
    async def generate(self, master: Any, reporter: Any, key: tuple[str, ...], message: object
                       ) -> dict[str, Any] | None:
        event = self.event(message)
        if event is None:
            log.warn("slaveshell: a notice that is not one ({key}) was not reported",
                     key=visible(".".join(str(k) for k in key)))
            return None
        if not self.wanted(event):
            return None
        context = await self.context(master, reporter, event)
        report: dict[str, Any] = context.pop("report", {})
        context = dict(shown(context))  # type: ignore[call-overload]
        if isinstance(self.formatter, NoticeFormatterFunction):
            plain = await self.default_formatter().format_notice(master, dict(context))
            context.update(text=plain["body"], subject=plain["subject"])
        message_dict = await self.formatter.format_notice(master, context)
        return {
            "body": message_dict["body"],
            "subject": message_dict["subject"],
            "type": message_dict["type"],
            "results": report.get("results"),
            "builds": report.get("builds"),
            "buildset": report.get("buildset"),
            "users": report.get("users", []),
            "patches": None,
            "logs": None,
            "extra_info": message_dict.get("extra_info"),
        }
