"""The web door's session messages at unit level (master_side.www.terminal_ws): the page's JSON and binary
frames decoded once, at the door, into typed calls on its `View`; a refused one closes the socket with its reason,
after its cost to the session; a message the door itself cannot read is the page's bad message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from master_side.operators.terms import View
from master_side.sessions.session import MasterSession, Role
from master_side.www.terminal_ws import TerminalProtocol, WebViewerSink
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest
from tests.recorded import ToViewer, ToWorker

ALICE = Identity(1000, 1000, 1, "alice", frozenset())


class Page(TerminalProtocol):
    """An open socket whose sent messages are kept (text as JSON, binary as bytes) and whose close is noted."""

    def __init__(self) -> None:
        super().__init__()
        self.state = self.STATE_OPEN
        self.sent: list[Any] = []
        self.closed_with: int | None = None

    def sendMessage(self, payload: bytes, isBinary: bool = False, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.sent.append(payload if isBinary else json.loads(payload))

    def sendClose(self, code: int | None = None, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.closed_with = code
        self.state = self.STATE_CLOSING

    def check_buffer(self) -> None:
        pass


def viewing(role: Role) -> tuple[Page, MasterSession, list[Any], list[str]]:
    page = Page()
    to_worker: list[Any] = []
    errors: list[str] = []
    session = MasterSession(OpenRequest(worker="w1"), ALICE, lambda s: None)
    sink = WebViewerSink(page)
    owner = session.start(sink if role is Role.OWNER else ToViewer(), ToWorker(lambda *a: to_worker.append(a)))
    viewer = owner if role is Role.OWNER else session.add_viewer(ALICE, role, sink)
    page.view = View(session, viewer, lambda s, e: errors.append(str(e)))
    return page, session, to_worker, errors


def test_the_pages_messages_reach_the_worker_typed():
    page, session, to_worker, errors = viewing(Role.OWNER)
    page.onMessage(b"ls\r", True)
    page.onMessage(json.dumps({"type": "resize", "cols": 100, "rows": 30}).encode(), False)
    session.worker_output(1, b"ls")
    page.onMessage(json.dumps({"type": "ack", "bytes": 2}).encode(), False)
    page.onMessage(json.dumps({"type": "close"}).encode(), False)
    assert to_worker == [("input", b"ls\r"), ("resize", 100, 30), ("ack", 2), ("close",)]
    assert page.sent == [b"ls"] and page.closed_with is None and errors == []


@pytest.mark.parametrize(("message", "error"), [
    ({"type": "resize", "cols": 0, "rows": 24}, "cols must be between 1 and 10000, not 0"),
    ({"type": "resize", "cols": 80}, "rows must be an integer, not NoneType"),
    ({"type": "ack", "bytes": "5"}, "ack must be an integer, not str"),
    ({"type": "ack", "bytes": 1}, "ack of 1 bytes but only 0 are unacknowledged"),  # the session's own check
])
def test_a_bad_value_is_refused_at_the_doors_edge_after_its_cost(message, error):
    """The owner's costs its session (the error reported), a joiner's its view; either way the socket closes
    with the reason, as the session's own refusals do."""
    page, session, to_worker, errors = viewing(Role.OWNER)
    page.onMessage(json.dumps(message).encode(), False)
    [refusal] = page.sent
    assert refusal == {"type": "error", "message": refusal["message"]} and error in refusal["message"]
    assert not refusal["message"].startswith("bad message") and page.closed_with == 1000
    assert errors == [refusal["message"]] and to_worker == []
    page, session, to_worker, errors = viewing(Role.JOIN)
    page.onMessage(json.dumps(message).encode(), False)
    assert [m["type"] for m in page.sent] == ["error"] and page.closed_with == 1000
    assert errors == [] and [v.role for v in session.viewers] == [Role.OWNER]


def test_a_watchers_typing_is_refused_and_an_unreadable_message_costs_nothing_but_the_socket():
    page, session, to_worker, errors = viewing(Role.WATCH)
    page.onMessage(b"rm -rf /\r", True)
    assert page.sent == [{"type": "error", "message": "watchers cannot type: this view is read-only"}]
    assert to_worker == [] and len(session.viewers) == 2
    page, session, to_worker, errors = viewing(Role.OWNER)
    page.onMessage(json.dumps({"type": "rm"}).encode(), False)
    assert page.sent == [{"type": "error", "message": "bad message from the page: unknown message type 'rm'"}]
    assert errors == [] and session.owner is not None and to_worker == []


def test_a_held_owners_typing_in_a_four_eyes_session_is_dropped_with_its_credit_and_the_page_stays():
    """Moderated (Rule(moderated_by=...)): the page's keystrokes never reach the worker, its credit comes back at
    once and one notice says why; the socket stays open. A web moderator (another person) lets them through."""
    from slaveshell.vocabulary.policy import WebIdentity

    page, session, to_worker, errors = viewing(Role.OWNER)
    session.hold_input(("web:leads",))
    page.sent.clear()
    for _ in range(3):
        page.onMessage(b"rm -rf /\r", True)
    assert to_worker == [] and errors == [] and page.closed_with is None
    assert page.sent.count({"type": "input_ack", "bytes": 9}) == 3
    notices = [m for m in page.sent if isinstance(m, bytes)]
    assert len(notices) == 1 and b"input is held until a moderator watches (moderated_by: web:leads)" in notices[0]
    session.add_viewer(WebIdentity.from_web("bob", ["leads"]), Role.WATCH, ToViewer(), moderator=True)
    page.onMessage(b"ls\r", True)
    assert to_worker == [("input", b"ls\r")]
