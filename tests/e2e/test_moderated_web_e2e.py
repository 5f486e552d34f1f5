"""Four-eyes sessions through the web terminal's door, against a real master with its web server (RFC 6455 by
hand, tests/e2e/test_web_bounds_e2e.RawSocket): a Buildbot web user with the moderators' role watching releases
a local operator's held input, and holds it again by leaving; the web user of the operator's own name, and a web
user without the role, watch without moderating."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, wait_until
from .test_moderated_e2e import cli, typed_reaches_the_worker
from .test_web_bounds_e2e import RawSocket, cookie
from .test_web_e2e import plugin_on_path

pytestmark = pytest.mark.e2e

# lead has the moderators' role; a web user named like the local operator (root) has it too; mallory has not.
WWW_CONFIG = """\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {}
c['www']['auth'] = _util.UserPasswordAuth({'lead': 'lead-pw', 'root': 'root-pw', 'mallory': 'mallory-pw'})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['lead', 'root', 'mallory']),
                  _util.RolesFromUsername(roles=['leads'], usernames=['lead', 'root'])])
"""
SERVICE_KWARGS = (f"policy=[dict(users=[{os.getuid()}], workers=['m1'], moderated_by=['web:leads']), "
                  "dict(groups=['web:shellers'], rights=['watch'])]")
HELD = "input is held until a moderator watches (moderated_by: web:leads)"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("moderatedweb"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["m1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


def watch(site: Sandbox, user: str, session_id: str) -> tuple[RawSocket, str]:
    """`user` watches the session from the web door: the socket, and what it showed until it had opened and a
    moment after (the recent output and the master's notices come as binary frames)."""
    ws = RawSocket(site, cookie(site, user))
    assert ws.status == "101", ws.status
    ws.send_json({"type": "attach", "id": session_id, "mode": "watch"})
    shown, opened = b"", None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            opcode, payload = ws.receive(timeout=2 if opened else 30)
        except TimeoutError:
            break
        if opcode == 2:
            shown += payload
        elif opcode == 1:
            message = json.loads(payload)
            assert message.get("type") != "error", message
            opened = opened or message.get("type") == "opened"
    assert opened, shown
    return ws, shown.decode("utf-8", "replace")


def moderation_events(site: Sandbox, session_id: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, operator, detail FROM slaveshell_events WHERE session_id = ? AND "
                               "kind IN ('moderate-start', 'moderate-end', 'input-held') ORDER BY id",
                               (session_id,)))
    finally:
        db.close()


def test_a_web_moderator_releases_the_input_and_the_operators_web_namesake_does_not(site: Sandbox) -> None:
    t = Terminal(site, ["m1"])
    marker = f"/tmp/moderated-web-{os.getpid()}"
    sockets: list[RawSocket] = []
    try:
        t.expect(HELD.replace("(", "\\(").replace(")", "\\)"))
        t.expect(r"[#$] ")
        rows = json.loads(cli(site, "sessions", "--json").stdout)
        (sid,) = [str(s["id"]) for s in rows if s["worker"] == "m1"]
        # The web user named like the operator, and one without the role: watching, not moderating.
        namesake, shown = watch(site, "root", sid)
        sockets.append(namesake)
        assert "you watch without moderating: the session's own operator cannot moderate it" in shown, shown
        outsider, shown = watch(site, "mallory", sid)
        sockets.append(outsider)
        assert "web:mallory is in none of its moderators' groups (moderated_by: web:leads)" in shown, shown
        assert not typed_reaches_the_worker(t, marker, 2)
        # The moderator.
        lead, shown = watch(site, "lead", sid)
        sockets.append(lead)
        t.expect("web:lead moderates this session: input reaches the worker")
        assert typed_reaches_the_worker(t, marker, 15)
        lead.send_json({"type": "close"})  # a watcher's close: it leaves
        t.expect("the last moderator \\(web:lead\\) left")
        assert not typed_reaches_the_worker(t, marker, 2)
        t.child.send("\r~.")
        t.wait()
    finally:
        for ws in sockets:
            ws.close()
        t.close()
    kinds = wait_until(lambda: (lambda e: e if len(e) >= 4 else None)(moderation_events(site, sid)), 20)
    assert kinds, moderation_events(site, sid)
    assert [(k, who) for k, who, _ in kinds] == [("input-held", "root"), ("moderate-start", "web:lead"),
                                                 ("moderate-end", "web:lead"), ("input-held", "root")], kinds


def refusal(ws: RawSocket) -> dict[str, object]:
    """The error the master sends on `ws` (then it closes it)."""
    for message in ws.messages(30):
        if isinstance(message, dict) and message.get("type") == "error":
            return message
    raise AssertionError("the socket closed without an error")


def kill_events(site: Sandbox, session_id: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT kind, operator, detail FROM slaveshell_events WHERE (session_id = ? AND "
                               "kind = 'kill') OR (kind = 'refused' AND detail LIKE 'web kill refused%')",
                               (session_id,)))
    finally:
        db.close()


def other_origin_status(site: Sandbox, session: str) -> str:
    """The HTTP status of the socket's handshake from a page of another origin, with the user's cookie."""
    import base64
    import socket

    with socket.create_connection(("127.0.0.1", site.www_port), timeout=30) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(("\r\n".join([
            "GET /plugins/slaveshell/ws HTTP/1.1", f"Host: 127.0.0.1:{site.www_port}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
            "Origin: http://evil.example", f"Cookie: {session}"]) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"


def test_only_a_web_moderator_ends_the_session_on_the_socket(site: Sandbox) -> None:
    """The page's End session is ``{"type": "kill"}`` on the moderator's watch socket: `OperatorAPI.kill`, audited
    as the moderator's kill; anyone else sending it by hand (a watcher without the role, the operator's web
    namesake, a socket with no session) is refused and audited, and the session goes on."""
    t = Terminal(site, ["m1"])
    sockets: list[RawSocket] = []
    try:
        t.expect(HELD.replace("(", "\\(").replace(")", "\\)"))
        t.expect(r"[#$] ")
        rows = json.loads(cli(site, "sessions", "--json").stdout)
        (sid,) = [str(s["id"]) for s in rows if s["worker"] == "m1"]
        for user in ("mallory", "root"):
            ws, _ = watch(site, user, sid)
            sockets.append(ws)
            ws.send_json({"type": "kill"})
            message = refusal(ws)
            assert message["message"] == "only a moderator watching this four-eyes session may end it here", message
        lone = RawSocket(site, cookie(site, "lead"))
        sockets.append(lone)
        lone.send_json({"type": "kill"})
        assert "'kill' before the session is open" in str(refusal(lone)["message"])
        refused = wait_until(lambda: (lambda e: e if len(e) >= 2 else None)(
            [who for kind, who, _ in kill_events(site, sid) if kind == "refused"]), 20)
        assert refused and sorted(refused) == ["web:mallory", "web:root"], kill_events(site, sid)
        assert str(sid) in cli(site, "sessions").stdout  # still live
        # A page of another site carrying the moderator's cookie: no socket at all (the handshake is refused).
        assert other_origin_status(site, cookie(site, "lead")) == "403"
        lead, _ = watch(site, "lead", sid)
        sockets.append(lead)
        t.expect("web:lead moderates this session")
        lead.send_json({"type": "kill"})
        t.expect("session killed by web:lead \\(moderator\\)")
        assert any(isinstance(m, dict) and m.get("type") == "exit" for m in lead.messages(30))
        t.wait()
    finally:
        for ws in sockets:
            ws.close()
        t.close()
    kills = wait_until(lambda: [e for e in kill_events(site, sid) if e[0] == "kill"] or None, 20)
    assert kills == [("kill", "web:lead", "as moderator")], kill_events(site, sid)
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        (reason,) = db.execute("SELECT end_reason FROM slaveshell_sessions WHERE id = ?", (sid,)).fetchone()
    finally:
        db.close()
    assert reason == "killed by web:lead (moderator) (signal 1)", reason
