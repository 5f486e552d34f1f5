"""A user with no rights who repeats a refused request gets the refusal every time, while the audit index and the
log get at most one event per kind of refusal per interval, with a count of the others (found in review: 300
denied opens wrote 300 audit events, which could push real sessions' rows out of the write queue while the
database is away)."""

import os

import pytest_twisted
from twisted.internet import reactor

from slaveshell.vocabulary.framing import Op
from slaveshell.vocabulary.policy import Rule
from slaveshell.vocabulary.protocol import OpenRequest
from tests.framed import connect
from tests.test_service import start, stop


@pytest_twisted.inlineCallbacks
def test_a_flood_of_denied_opens_is_refused_each_time_and_audited_once_per_interval(tmp_path):
    me = os.getuid()
    service = yield start(tmp_path, policy=[Rule(users=[me], workers=["*"], rights=["watch"])])
    events: list[tuple[str, str]] = []
    original = service.trail.store.add_event

    def counting(kind, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append((kind, str(kwargs.get("detail", args[4] if len(args) > 4 else ""))))
        return original(kind, *args, **kwargs)

    service.trail.store.add_event = counting
    try:
        for _ in range(300):  # one connection each: a connection holds one session request
            root = yield connect(reactor, str(tmp_path / "shell.sock"))
            reply = yield root.call(Op.OPEN, request=OpenRequest(worker="w1").to_wire())
            assert not reply["ok"] and reply["error"].startswith("permission denied"), reply
            root.close()
            yield root.lost
        refused = [detail for kind, detail in events if kind == "refused"]
        assert len(refused) == 1, refused
        assert "may not shell on worker w1" in refused[0]
    finally:
        yield stop(service)
