"""Floods on the web terminal's door, against a real master with its web server, over raw sockets (RFC 6455 by
hand, as an attacker's script would speak it): sockets held by users without a right do not take the places of
operators with one, and a page that asks and does not read is dropped, the master's memory bounded."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import shell_argv, wait_until
from .test_web_e2e import plugin_on_path

pytestmark = pytest.mark.e2e

NO_RIGHT = [f"u{i}" for i in range(8)]
# alice has the role Buildbot's authz gives the shell action to, and slaveshell's policy rights for it; u0..u7
# are logged-in users with no role and no policy rule.
WWW_CONFIG = f"""\
from buildbot.plugins import util as _util
from master_side.www.access import ShellEndpointMatcher
c['www']['plugins']['slaveshell'] = {{}}
c['www']['auth'] = _util.UserPasswordAuth({{'alice': 'alice-pw', {", ".join(f"'{u}': '{u}-pw'" for u in NO_RIGHT)}}})
c['www']['authz'] = _util.Authz(
    allowRules=[ShellEndpointMatcher(role='shellers')],
    roleMatchers=[_util.RolesFromUsername(roles=['shellers'], usernames=['alice'])])
"""
SERVICE_KWARGS = (f"policy=[dict(groups=['web:shellers'], rights=['shell', 'watch', 'replay']), "
                  f"dict(users=[{os.getuid()}])], max_connection_buffer=512 * 1024, write_stall_timeout=5")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = str(tmp_path_factory.mktemp("webbounds"))
    with plugin_on_path(root):
        sb = Sandbox(root, workers=["w1"], www=True, www_config=WWW_CONFIG, service_kwargs=SERVICE_KWARGS)
        try:
            sb.create()
            sb.start()
            yield sb
        finally:
            sb.stop()


def cookie(site: Sandbox, user: str) -> str:
    """The cookies a browser keeps from `user`'s login (its /auth/login with HTTP basic auth): Buildbot's
    session and slaveshell's shell grant, as a Cookie header's value."""
    conn = http.client.HTTPConnection("127.0.0.1", site.www_port, timeout=30)
    try:
        auth = base64.b64encode(f"{user}:{user}-pw".encode()).decode()
        conn.request("GET", "/auth/login", headers={"Authorization": f"Basic {auth}"})
        answer = conn.getresponse()
        answer.read()
        # The last of each: the session as it is once logged in, and the grant minted with it.
        found = dict(value.split(";", 1)[0].split("=", 1) for name, value in answer.getheaders()
                     if name.lower() == "set-cookie")
    finally:
        conn.close()
    assert "TWISTED_SESSION" in found and "SLAVESHELL_GRANT" in found, f"no session or grant for {user}: {found}"
    return "; ".join(f"{name}={found[name]}" for name in ("TWISTED_SESSION", "SLAVESHELL_GRANT"))


class RawSocket:
    """A WebSocket client over a plain socket: the handshake, masked frames out, frames in."""

    def __init__(self, site: Sandbox, session: str | None, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:  # a small one: the kernel holds little of what the master sends
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", site.www_port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /plugins/slaveshell/ws HTTP/1.1", f"Host: 127.0.0.1:{site.www_port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 f"Origin: http://127.0.0.1:{site.www_port}"]
        if session is not None:
            lines.append(f"Cookie: {session}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        self.status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
        self.buffer = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""

    def send(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack("!H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, message: dict[str, object]) -> None:
        self.send(json.dumps(message).encode())

    def _need(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self, timeout: float = 30) -> tuple[int, bytes]:
        """The next frame: (opcode, payload); EOFError when the connection is closed."""
        self.sock.settimeout(timeout)
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def messages(self, timeout: float = 30) -> Iterator[dict[str, object] | bytes]:
        """Text frames as JSON, binary frames as bytes, until the close."""
        while True:
            try:
                opcode, payload = self.receive(timeout)
            except (EOFError, ConnectionResetError):
                return
            if opcode == 8:
                return
            if opcode == 1:
                yield json.loads(payload)
            elif opcode == 2:
                yield payload

    def close(self) -> None:
        self.sock.close()


def first_json(ws: RawSocket, timeout: float = 30) -> dict[str, object] | None:
    for message in ws.messages(timeout):
        if isinstance(message, dict):
            return message
    return None


def events(site: Sandbox, kind: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(os.path.join(site.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return list(db.execute("SELECT operator, detail FROM slaveshell_events WHERE kind = ? ORDER BY id",
                               (kind,)))
    finally:
        db.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_terminal(site: Sandbox, session: str) -> str:
    """alice opens a web terminal on w1 and types a line into it: what the page shows (at least the line, echoed
    by the worker's terminal; its result too when the login shell is ready in time: a login shell on this machine
    can take a minute to start, waiting for a lock of its profile's)."""
    ws = RawSocket(site, session)
    try:
        assert ws.status == "101", ws.status
        ws.send_json({"type": "open", "worker": "w1", "cols": 80, "rows": 24})
        opened = first_json(ws)
        assert opened is not None and opened.get("type") == "opened", opened
        ws.send(b"echo web-$((6*7))\r", opcode=2)
        seen = b""
        deadline = time.monotonic() + 30
        while b"web-" not in seen and time.monotonic() < deadline:
            opcode, payload = ws.receive()
            if opcode == 2:
                seen += payload
        ws.send_json({"type": "close"})
        return seen.decode("utf-8", "replace")
    finally:
        ws.close()


def test_sockets_of_users_without_a_right_do_not_lock_an_operator_out(site: Sandbox) -> None:
    """8 logged-in users with no role and no policy rule hold 8 idle sockets each: they get the few places kept
    for users without a right (the others a refusal with the reason, audited), and alice, who has the role,
    still gets a terminal."""
    sessions = {user: cookie(site, user) for user in NO_RIGHT + ["alice"]}
    held: list[RawSocket] = []
    try:
        for user in NO_RIGHT:
            for _ in range(8):
                held.append(RawSocket(site, sessions[user]))
        time.sleep(1.0)  # their answers are there
        outcomes = [outcome(ws) for ws in held]
        admitted = [o for o in outcomes if o == "open"]
        refusals = [o for o in outcomes if o not in ("open", "503", "closed")]
        assert len(admitted) <= 8, outcomes
        assert len(admitted) + len(refusals) + outcomes.count("503") + outcomes.count("closed") == 64
        assert all("you have no right on any worker here" in r or "users without a right on any worker" in r
                   for r in refusals), set(refusals)
        assert refusals and len(admitted) >= 1, outcomes
        # alice is served while they are all held.
        assert "web-" in open_terminal(site, sessions["alice"])
        audited = wait_until(lambda: [d for op, d in events(site, "refused") if "no right on any worker" in d],
                             timeout=15)
        assert audited, events(site, "refused")
    finally:
        for ws in held:
            ws.close()


def outcome(ws: RawSocket) -> str:
    """What became of a socket: "503" (its handshake refused), "open" (admitted: no message, still open),
    "closed" (closed without a message), or the refusal's text."""
    if ws.status != "101":
        return ws.status
    try:
        opcode, payload = ws.receive(timeout=0.3)
    except TimeoutError:
        return "open"
    except (EOFError, ConnectionResetError):
        return "closed"
    if opcode == 1:
        message = json.loads(payload)
        assert message.get("type") == "error", message
        return str(message["message"])
    return "closed"


def test_pages_that_ask_for_transcript_chunks_and_never_read_are_dropped(site: Sandbox) -> None:
    """8 sockets of alice ask for transcript chunks, one every 0.25 s each (well within the 4 questions a socket may
    have in progress, even when a loaded master takes a second to answer one), and never read: each is dropped once
    what waits for it passes max_connection_buffer (audited), the master's memory stays bounded, and alice's places
    are hers again afterwards."""
    done = subprocess.run(shell_argv() + ["--socket", site.socket, "w1", "head -c 1500000 /dev/urandom | base64"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    history = subprocess.run([sys.executable, "-m", "slaveshell.cli", "history", "--json",
                              "--socket", site.socket], capture_output=True, text=True, timeout=60)
    sid = json.loads(history.stdout)[0]["id"]
    session = cookie(site, "alice")
    probe = RawSocket(site, session)
    try:  # what each question gets: a full chunk of the transcript, then its JSON
        probe.send_json({"type": "transcript", "id": sid, "offset": 0})
        answer = [next(probe.messages()), next(probe.messages())]
        assert isinstance(answer[0], bytes) and len(answer[0]) == 65536, answer[0][:200]
        assert isinstance(answer[1], dict) and answer[1]["offset"] == 65536, answer[1]
    finally:
        probe.close()
    pid = site.master_pid()
    before = rss_kib(pid)
    sockets = []
    for _ in range(8):
        ws = RawSocket(site, session, receive_buffer=64 * 1024)
        assert ws.status == "101", ws.status
        sockets.append(ws)
    dropped: set[int] = set()
    peak = before
    deadline = time.monotonic() + 60
    offset = 0
    while time.monotonic() < deadline and len(dropped) < len(sockets):
        for i, ws in enumerate(sockets):
            if i in dropped:
                continue
            try:
                ws.send_json({"type": "transcript", "id": sid, "offset": offset % 16 * 65536})
            except OSError:
                dropped.add(i)  # the master closed it
        offset += 1
        peak = max(peak, rss_kib(pid))
        time.sleep(0.25)
    growth_mib = (peak - before) / 1024
    try:
        assert len(dropped) == len(sockets), (len(dropped), growth_mib)
        assert growth_mib < 48, growth_mib
        audited = wait_until(lambda: [d for op, d in events(site, "dropped")
                                      if op == "web:alice" and "of output it did not read" in d], timeout=15)
        assert audited, (events(site, "dropped"), events(site, "refused"))
    finally:
        for ws in sockets:
            ws.close()
    # Her places are free again: she gets a terminal.
    assert "web-" in open_terminal(site, session)


def test_sockets_without_a_login_are_refused_within_their_own_bound(site: Sandbox) -> None:
    """40 sockets without a login (and 40 with a session cookie that is not valid), opened at once and never
    answering the close: each gets the refusal or, past the bound of refused sockets held at once, a 503 to its
    handshake; the master's descriptors stay bounded and alice still gets a terminal."""
    pid = site.master_pid()
    before = len(os.listdir(f"/proc/{pid}/fd"))
    held = ([RawSocket(site, None) for _ in range(40)]
            + [RawSocket(site, "TWISTED_SESSION=not-a-session") for _ in range(40)])
    try:
        time.sleep(1.0)
        outcomes = [outcome(ws) for ws in held]
        assert "open" not in outcomes, outcomes
        texts = {o for o in outcomes if o not in ("503", "closed")}
        assert texts <= {"log in to Buildbot first: anonymous visitors get no shell",
                         "your web session is not valid (expired or from another master): log in again"}, texts
        assert outcomes.count("503") >= 80 - 2 * 16, outcomes
        assert len(os.listdir(f"/proc/{pid}/fd")) - before <= 80  # their TCP connections; none kept past the close
        assert "web-" in open_terminal(site, cookie(site, "alice"))
    finally:
        for ws in held:
            ws.close()
    assert wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) - before <= 8, timeout=30)


def test_questions_past_the_bound_per_socket_close_it_with_the_reason_and_are_audited(site: Sandbox) -> None:
    ws = RawSocket(site, cookie(site, "alice"))
    try:
        for _ in range(12):
            ws.send_json({"type": "history", "limit": 1000})
        errors = [m for m in ws.messages() if isinstance(m, dict) and m.get("type") == "error"]
        assert errors and "more than 4 questions in progress on one socket" in str(errors[0]["message"]), errors
    finally:
        ws.close()
    audited = wait_until(lambda: [d for op, d in events(site, "refused")
                                  if op == "web:alice" and "web question refused" in d], timeout=15)
    assert audited, events(site, "refused")
