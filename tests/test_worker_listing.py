"""`slaveshell workers` shows an operator only the workers they have some right on, through the real socket and
the framed door (the master's worker registry is the stand-in of tests/test_service.py)."""

import os

import pytest_twisted
from twisted.internet import reactor

from slaveshell.vocabulary.framing import Op
from slaveshell.vocabulary.policy import Rule

from .framed import connect
from .test_service import NeverConnected, start, stop


@pytest_twisted.inlineCallbacks
def test_workers_lists_only_those_the_operator_has_a_right_on(tmp_path):
    me = os.getuid()
    policy = [
        Rule(users=[me], workers=["watched-*"], rights=["watch"]),
        Rule(users=[me], workers=["replayed"], rights=["replay"]),
        Rule(users=[me], workers=["nothing"], rights=[]),  # matches first, grants nothing
        Rule(users=["*"], workers=["nothing", "secret-*"], rights=["shell"]),
    ]
    service = yield start(tmp_path, policy=policy)
    try:
        service.master.workers.registrations = dict.fromkeys(
            ["watched-1", "replayed", "nothing", "secret-1", "other"], object())
        service.master.workers.getWorkerByName = lambda name: NeverConnected()
        root = yield connect(reactor, str(tmp_path / "shell.sock"))
        listed = (yield root.call(Op.WORKERS))["rows"]
        # 'other' matches no rule and 'nothing' a rule that grants nothing: not listed. secret-1 is: none of our
        # own rules matches it, and the '*' rule grants shell on it to everybody.
        assert [w["name"] for w in listed] == ["replayed", "secret-1", "watched-1"]
        assert [w["allowed"] for w in listed] == [False, True, False]
        root.close()
    finally:
        service.master.workers.registrations = {}
        yield stop(service)
