"""The held-build notice without a master: the mq message (text and numbers only, checked when it arrives, as it
comes through wamp's JSON), the command with and without --socket, and the report a HoldNoticeGenerator makes of
a forged message (escaped for plain text and for html); the mq subscription as Buildbot's reporters make it."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from buildbot.util import toJson
from buildbot.util.tuplematch import matchTuple
from twisted.internet import defer

from master_side import HoldNoticeFormatter, HoldNoticeGenerator, NoticeFormatterFunction
from master_side.holds.deadline import HoldTimes
from master_side.holds.notices import HeldBuild, announce, socket_of
from master_side.holds.step import Hold
from master_side.service import ShellService

EVENT = HeldBuild(7, "holder", 3, "w1", 1_800_000_000.0, 3600.0, 600.0, None, None, "http://ci/#/slaveshell/build/7")


def through_wamp(message: object) -> Any:
    """What a consumer gets under c['mq'] = {'type': 'wamp'} (buildbot/mq/wamp.py)."""
    return json.loads(json.dumps(message, default=toJson))


def test_the_message_is_text_and_numbers_and_comes_back_whole_through_json() -> None:
    message = EVENT.to_message()
    assert all(isinstance(v, (str, int, float, type(None))) for v in message.values())
    assert HeldBuild.from_message(through_wamp(message)) == EVENT


@pytest.mark.parametrize("change", [
    {"build_id": True}, {"build_id": "7"}, {"number": 3.0}, {"worker": ""}, {"worker": None}, {"builder": 5},
    {"max_hold": 0}, {"started": float("inf")}, {"wait_for_operator": -1}, {"idle_after_attach": "60"},
    {"socket": b"/s"}, {"web_url": 1}, {"extra": "x"},
])
def test_a_message_that_is_not_a_held_build_is_refused(change: dict[str, object]) -> None:
    assert HeldBuild.from_message({**EVENT.to_message(), **change}) is None


def test_a_message_missing_a_field_or_not_a_dict_is_refused() -> None:
    message = EVENT.to_message()
    del message["socket"]
    assert HeldBuild.from_message(message) is None
    assert HeldBuild.from_message([EVENT.to_message()]) is None


def test_the_command_names_the_socket_only_when_it_is_not_the_default() -> None:
    assert EVENT.command == "buildbot-shell --build 7 w1"
    moved = replace(EVENT, socket="/srv/my master/ops.sock")
    assert moved.command == "buildbot-shell --build 7 w1 --socket '/srv/my master/ops.sock'"


def master_with(socket_path: str | None, basedir: str = "/srv/master") -> Any:
    service = ShellService.__new__(ShellService)
    service.socket_path = socket_path
    produced: list[tuple[tuple[str, ...], dict[str, object]]] = []
    return SimpleNamespace(basedir=basedir, service_manager=SimpleNamespace(namedServices={"shell": service}),
                           mq=SimpleNamespace(produce=lambda key, msg: produced.append((key, msg))),
                           produced=produced)


def test_socket_of_is_none_for_the_default_socket_in_the_basedir() -> None:
    assert socket_of(master_with("/srv/master/shell.sock")) is None
    assert socket_of(master_with("/srv/ops.sock")) == "/srv/ops.sock"
    assert socket_of(SimpleNamespace(basedir="/srv/master")) is None  # no ShellService


def test_announce_publishes_one_event_under_the_generators_key() -> None:
    master = master_with("/srv/ops.sock")
    hold = Hold(7, "holder", 3, "w1", "build")
    hold.times = HoldTimes(1_800_000_000.0, 3600.0, 600.0)
    announce(master, hold, None)
    (key, message), = master.produced
    assert key == ("slaveshell", "holds", "7", "held")
    assert all(isinstance(part, str) for part in key)  # wamp joins the parts with dots
    assert any(matchTuple(key, wanted) for wanted in HoldNoticeGenerator.wanted_event_keys)
    event = HeldBuild.from_message(message)
    assert event is not None and event.socket == "/srv/ops.sock" and event.wait_for_operator == 600.0


def test_announce_never_raises() -> None:
    master = SimpleNamespace(mq=None)  # no basedir, an mq that cannot produce
    hold = Hold(7, "holder", 3, "w1", "build")
    hold.times = HoldTimes(1_800_000_000.0, 3600.0)
    announce(master, hold, None)


def report(generator: HoldNoticeGenerator, message: object) -> Any:
    master = SimpleNamespace(data=SimpleNamespace(get=lambda path: defer.succeed(None)),
                             config=SimpleNamespace(title="CI", buildbotURL="http://ci/"))
    reporter = SimpleNamespace(getResponsibleUsersForBuild=lambda m, bid: defer.succeed([]))
    done: list[object] = []
    generator.generate(master, reporter, ("slaveshell", "holds", "7", "held"), message).addBoth(done.append)
    (result,) = done
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()  # type: ignore[union-attr]
    return result


# A worker name no config would have: as a forged message under wamp could carry it.
FORGED = replace(EVENT, worker="w1<script>\x1b[2J\n").to_message()


def test_a_plain_report_has_the_command_the_deadlines_and_the_link_with_untrusted_text_made_visible() -> None:
    r = report(HoldNoticeGenerator(), FORGED)
    assert r["type"] == "plain" and r["users"] == [] and r["builds"] is None
    body = r["body"]
    assert "buildbot-shell --build 7 w1<script>\\x1b[2J\\n" in body and "\x1b" not in body
    assert "(wait_for_operator: 10 min)" in body and "(max_hold: 1 h)" in body
    assert "http://ci/#/slaveshell/build/7" in body
    assert "\n" not in r["subject"] and r["subject"].startswith("Buildbot (CI): build 3 of holder held on w1<")


def test_an_html_report_escapes_markup() -> None:
    r = report(HoldNoticeGenerator(message_formatter=HoldNoticeFormatter(template_type="html")), FORGED)
    assert r["type"] == "html"
    assert "<pre>buildbot-shell --build 7 w1&lt;script&gt;\\x1b[2J\\n</pre>" in r["body"]
    assert "<script>" not in r["body"] and "\x1b" not in r["body"]
    # The subject is not html: no entities, one line.
    assert "w1<script>\\x1b[2J\\n" in r["subject"]


def test_a_function_formatter_gets_the_plain_text_and_the_fields() -> None:
    formatter = NoticeFormatterFunction(lambda n: {"text": n["text"], "command": n["command"]})
    r = report(HoldNoticeGenerator(message_formatter=formatter), EVENT.to_message())
    assert r["type"] == "json"
    assert r["body"]["command"] == "buildbot-shell --build 7 w1"
    assert r["body"]["text"].startswith("Build 3 of holder is held on worker w1 for you.\n")


def test_filters_and_forged_messages_make_no_report() -> None:
    assert report(HoldNoticeGenerator(workers=["w2"]), EVENT.to_message()) is None
    assert report(HoldNoticeGenerator(builders=["other"]), EVENT.to_message()) is None
    assert report(HoldNoticeGenerator(builders=["holder"], workers=["w1"]), EVENT.to_message()) is not None
    assert report(HoldNoticeGenerator(), {"build_id": 7}) is None


def test_a_template_that_does_not_parse_is_a_config_error() -> None:
    from buildbot.config.errors import ConfigErrors, capture_config_errors

    with pytest.raises(ConfigErrors), capture_config_errors(raise_on_error=True):
        HoldNoticeFormatter(template="{% for %}")
    with pytest.raises(ConfigErrors), capture_config_errors(raise_on_error=True):
        HoldNoticeFormatter(template_type="json")


def test_the_step_and_the_notice_tell_one_command():
    from master_side.holds.notices import step_in_command

    assert step_in_command(3, "w1", None) == "buildbot-shell --build 3 w1"
    assert step_in_command(3, "w1", "/srv/a b/shell.sock") == \
        "buildbot-shell --build 3 w1 --socket '/srv/a b/shell.sock'"
