"""The Fleet page's messages at unit level (master_side.www.fleet_page): a run message decoded and bounded at the
door; a run's progress and end as the page gets them (each distinct output's lines once, everything a worker
controls escaped as `slaveshell run` prints it); the socket's Stop and loss reaching the run; a message too long
for its kind refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from master_side.fleet.run import Phase, Progress
from master_side.www import fleet_page
from master_side.www.fleet_page import WebRun, decode, end_message
from slaveshell.fleet.outcome import Outcome, Output, State
from slaveshell.vocabulary.checks import ProtocolError
from tests.test_web_door import Page


def output(data: bytes) -> Output:
    out = Output()
    out.add(data)
    return out


def test_a_run_message_is_decoded_with_every_value_checked():
    ask = decode({"type": "run", "command": "uname -a", "workers": ["f[1-2]", " "], "where": ["os=Linux"],
                  "batch": "50%", "timeout": 30, "reason": "INC-1", "env": {"X": "1"}, "cwd": "/"})
    assert (ask.command, ask.script, ask.workers, ask.where, ask.batch, ask.timeout, ask.reason) == \
        ("uname -a", None, ("f[1-2]",), ("os=Linux",), "50%", 30.0, "INC-1")
    assert ask.env == {"X": "1"} and ask.cwd == "/"  # -e X=1 -C /
    assert decode({"command": "x", "cwd": " ", "env": {}}).cwd is None
    script = decode({"script": "echo hi", "command": ""})
    assert script.script == b"echo hi\n" and script.command is None
    assert decode({"command": "x", "batch": " ", "reason": ""}).batch is None
    offline = decode({"command": "x", "include_offline": True, "until": 86400, "pause": True})
    assert (offline.include_offline, offline.until, offline.pause) == (True, 86400.0, True)


@pytest.mark.parametrize("message", [
    {"command": 3},
    {"command": "x", "workers": "f1"},
    {"command": "x", "workers": ["f"] * (fleet_page.MAX_PATTERNS + 1)},
    {"command": "x", "where": [{"os": "Linux"}]},
    {"command": "x", "timeout": "30"},
    {"command": "x", "timeout": True},
    {"command": "x", "batch": "1" * 17},
    {"command": "x\0y"},
    {"script": "echo \ud800"},
    {"command": "x", "include_offline": "yes"},
    {"command": "x", "pause": 1},
    {"command": "x", "until": "7d"},
    {"command": "x", "env": ["A=1"]},
    {"command": "x", "env": {"A": 1}},
    {"command": "x", "env": {"A" * 300: "1"}},
    {"command": "x", "env": {f"A{i}": "1" for i in range(200)}},
    {"command": "x", "env": {"A": "x" * (16 * 1024 + 1)}},
    {"command": "x", "cwd": "/" + "d" * 5000},
    {"command": "x", "cwd": ["/"]},
])
def test_a_bad_value_is_refused_at_the_doors_edge(message):
    with pytest.raises(ProtocolError):
        decode(message)


def test_progress_sends_each_distinct_outputs_lines_once_escaped():
    sent: list[dict[str, Any]] = []
    run = WebRun(sent.append)
    hostile = b"<b>x</b>\x1b[31m\xe2\x80\xae\xff\n"
    for worker in ("w1", "w2"):
        done = Outcome(worker, State.OK, 0, 0.1, output(hostile), "s-" + worker)
        run.progress(Progress(worker, Phase.DONE, "s-" + worker, 0.1, hostile.rstrip(b"\n"), done))
    first, second = sent
    assert first["outcome"]["lines"] == ["<b>x</b>\\x1b[31m\\u202e\\udcff"]
    assert first["last_line"] == first["outcome"]["lines"][0]
    assert "lines" not in second["outcome"] and second["outcome"]["digest"] == first["outcome"]["digest"]


def test_a_parts_note_reaches_the_page_escaped_and_cut():
    """Why a part waits before it starts (the line of the master that holds a four-eyes worker) is sent as the
    `note` of its progress, as `slaveshell run` prints it: escaped, at most MAX_NOTE characters."""
    sent: list[dict[str, Any]] = []
    run = WebRun(sent.append)
    run.progress(Progress("m1", Phase.STARTING, None, 0.0, b"", None,
                          "worker m1 is moderated: request 3f2a waits for a moderator's approval \x1b[2J\u202e"))
    run.progress(Progress("m1", Phase.STARTING, None, 0.0, b"", None, "x" * (fleet_page.MAX_NOTE + 50)))
    run.progress(Progress("m1", Phase.RUNNING, "s-1", 0.5, b"", None))
    assert sent[0]["note"] == "worker m1 is moderated: request 3f2a waits for a moderator's approval \\x1b[2J\\u202e"
    assert sent[1]["note"] == "x" * fleet_page.MAX_NOTE
    assert "note" not in sent[2]


def test_the_end_gathers_as_slaveshell_run_prints_it():
    outcomes = [Outcome("w1", State.OK, 0, 0.1, output(b"same\n"), "a"),
                Outcome("w2", State.OK, 0, 0.1, output(b"same\n"), "b"),
                Outcome("w3", State.FAILED, 2, 0.1, output(b"other\n"), "c"),
                Outcome("w4", State.REFUSED, reason="web:x (web user) may not run on worker w4\x1b]0;t\x07")]
    end = end_message("r1", "ended", outcomes)
    assert [(g["workers"], g["header"]) for g in end["groups"]] == [(["w1", "w2"], "w[1-2] (2)"), (["w3"], "w3")]
    assert end["exits"] == [{"status": 2, "workers": "w3"}]
    assert end["not_ran"] == [{"state": "refused", "workers": "w4",
                               "reasons": ["web:x (web user) may not run on worker w4\\x1b]0;t\\x07"]}]
    assert end["summary"] == "2 ok, 1 failed (w3), 1 refused" and end["exit_status"] == 1


class FakeRun:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def interrupt(self) -> None:
        self.calls.append("interrupt")

    def leave(self) -> None:
        self.calls.append("leave")


def test_stop_and_a_lost_socket_reach_the_run():
    run = WebRun(lambda m: None)
    fake = FakeRun()
    run.stop()
    assert run.stopped  # before the run started: it is interrupted as it starts
    run.run = fake  # type: ignore[assignment]
    run.stop()
    run.lost()
    assert fake.calls == ["interrupt", "leave"]


@pytest.mark.parametrize("kind", ["open", "stop", "workers"])
def test_only_a_run_message_may_be_longer_than_a_control_message(kind):
    page = Page()
    page.onMessage(json.dumps({"type": kind, "pad": "x" * 2000}).encode(), False)
    assert page.sent == [{"type": "error", "message": "bad message from the page: control message too long"}]
