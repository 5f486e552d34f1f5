"""The display-safety rule where the master speaks: notices on viewers' terminals and log lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from master_side.sessions.session import MasterSession, Role
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset())
# A user name is whatever the passwd database says: nothing stops an administrator (or an LDAP entry) from
# putting control characters in one.
ROGUE = Identity(1001, 1001, 2, "ev\x1b]0;T\x07\x1b[2J\u202eil", frozenset())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if text:
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_notices_name_users_inertly():
    session = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None)
    to_owner: list[tuple[Any, ...]] = []
    session.start(ToViewer(lambda *a: to_owner.append(a)), ToWorker())
    session.add_viewer(ROGUE, Role.WATCH, ToViewer())
    (notice,) = [a[2] for a in to_owner if a[0] == "output"]
    assert notice == b"\r\nslaveshell: ev\\x1b]0;T\\x07\\x1b[2J\\u202eil is now watching this session\r\n"


def test_an_exit_reason_from_the_worker_is_logged_inertly(logged):
    session = MasterSession(OpenRequest(worker="w1", command="deploy --password=hunter2"), ALICE,
                            lambda s: None)
    session.start(ToViewer(), ToWorker())
    session.worker_exit(None, None, "gone \x1b[2J\x1b]0;T\x07\u009b2J")
    (line,) = [text for text in logged if "ended" in text]
    # The reason, escaped; the session's windows follow it (slaveshell.vocabulary.windows).
    assert "ended (code None, signal None, gone \\x1b[2J\\x1b]0;T\\x07\\x9b2J); windows: " in line
    assert "hunter2" not in "".join(logged)


def test_search_strips_8_bit_sequences_as_well_as_7_bit_ones():
    from slaveshell.vocabulary.transcript import strip_ansi

    assert strip_ansi("a\u009b2Jb\u009d0;T\u0007c\u009d0;U\u009cd\x1b[1me\x1b]0;V\x07f\u0085g") == "abcdefg"
