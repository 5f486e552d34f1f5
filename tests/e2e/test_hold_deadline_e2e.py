"""A hold that waits for the operator, not the clock, against a real master and worker: `wait_for_operator`
(nobody stepped in: held until then, released after), `idle_after_attach` (stepped in and typing keeps it; idle
ends it), `slaveshell holds`, and `slaveshell hold extend` (audited, bounded by max_hold, refused without the
'shell' right for another local user)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import PROMPT, Terminal, wait_until
from .test_hold_e2e import FAILURE, hold_log, result_of, step_summary

pytestmark = pytest.mark.e2e

WAIT = 10
IDLE = 8
MAX_HOLD = 300
OTHER = "slaveshell-other"
GROUP = "slaveshell-holds"


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]],
                          capture_output=True, text=True, timeout=60)


def extend(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slaveshell.cli", "hold", "extend", "--socket", sb.socket, *args],
                          capture_output=True, text=True, timeout=60)


def holds(sb: Sandbox) -> list[dict[str, object]]:
    done = cli(sb, "holds", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    if os.getuid() == 0:
        if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", GROUP], check=True)
        try:
            pwd.getpwnam(OTHER)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True)
    # Another user must reach the socket's directory: not under pytest's 0700 temporary tree.
    root = tempfile.mkdtemp(prefix="slaveshell-holds-")
    os.chmod(root, 0o755)
    group = f"group={GROUP!r}, " if os.getuid() == 0 else ""
    # /bin/sh: a login shell that reads no pyenv or other start-up of the machine's own (quick, on any machine).
    sandbox = Sandbox(root, workers=["hx"], hold_timeout=MAX_HOLD, opt_in_args="shell='/bin/sh'",
                      hold_args=f"wait_for_operator={WAIT}, idle_after_attach={IDLE}",
                      service_kwargs=f"{group}policy=[dict(users=[0, {os.getuid()}]), "
                                     f"dict(groups=[{GROUP!r}], rights=['watch'])]")
    sandbox.create()
    os.chmod(sandbox.master_dir, 0o755)
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def new_hold(sb: Sandbox) -> tuple[int, dict[str, object]]:
    """Start a holder build; its id and its row in `slaveshell holds` once it is held."""
    before = {r[0] for r in sb.build_rows("holder")}
    sb.send_change("hold")
    build_id = wait_until(lambda: next((r[0] for r in sb.build_rows("holder") if r[0] not in before), None), 60)
    assert build_id, sb.log_tail()
    row = wait_until(lambda: next((h for h in holds(sb) if h["build_id"] == build_id), None), 60)
    assert row, sb.log_tail()
    return build_id, row


def test_nobody_steps_in_held_until_the_wait_deadline_then_released(sb: Sandbox) -> None:
    build_id, row = new_hold(sb)
    assert row["limit"] == "wait_for_operator" and row["worker"] == "hx" and row["attached"] is False
    started = float(row["started"])  # type: ignore[arg-type]
    assert float(row["deadline"]) == pytest.approx(started + WAIT)  # type: ignore[arg-type]
    assert float(row["max_end"]) == pytest.approx(started + MAX_HOLD)  # type: ignore[arg-type]
    table = cli(sb, "holds")
    assert table.returncode == 0 and "nobody steps in" in table.stdout and str(build_id) in table.stdout
    assert wait_until(lambda: any("unless someone steps in" in s for s in step_summary(sb, build_id)), 10), \
        step_summary(sb, build_id)
    text = hold_log(sb, build_id)
    assert "wait_for_operator: 10 s" in text and "idle_after_attach" in text and "max_hold: 5 min" in text
    assert f"slaveshell hold extend {build_id} 2h" in text
    # Not released while nobody stepped in and the wait deadline is ahead...
    while time.time() < started + WAIT - 1.5:
        assert result_of(sb, build_id) is None
        time.sleep(0.5)
    # ... released once it passed.
    assert wait_until(lambda: result_of(sb, build_id) == FAILURE, 30)
    assert time.time() >= started + WAIT
    summary = step_summary(sb, build_id)
    assert any(f"nobody stepped in within {WAIT} s" in s for s in summary), summary
    assert not any(h["build_id"] == build_id for h in holds(sb))


def test_stepping_in_and_typing_keep_the_hold_then_idle_ends_it(sb: Sandbox) -> None:
    build_id, row = new_hold(sb)
    started = float(row["started"])  # type: ignore[arg-type]
    t = Terminal(sb, ["--build", str(build_id), "hx"])
    # Terminal.ready, with room for a login shell on a loaded machine.
    t.expect(r"[#$] ", timeout=60)
    t.child.sendline(f"bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='{PROMPT}'")
    t.expect("\n(\x1b\\[\\?2004[hl]|\r)*" + PROMPT, timeout=60)
    try:
        # Stepping in tells when the hold ends and how to extend it.
        told = bytes(t.printed).decode("utf-8", "replace")
        assert "is held until" in told and f"({IDLE} s idle)" in told and f"hold extend {build_id} 2h" in told
        attached = next(h for h in holds(sb) if h["build_id"] == build_id)
        assert attached["limit"] == "idle_after_attach" and attached["attached"] is True
        # Typing past the wait deadline keeps it held.
        while time.time() < started + WAIT + 3:
            assert t.run("echo typing", timeout=60).strip() == "typing"
            assert result_of(sb, build_id) is None
            time.sleep(0.5)
        typed = time.time()
        # Connected, typing nothing: idle ends it.
        assert wait_until(lambda: result_of(sb, build_id) == FAILURE, 30)
        assert time.time() >= typed + IDLE - 1
        assert any(f"idle for {IDLE} s" in s for s in step_summary(sb, build_id)), step_summary(sb, build_id)
        t.child.sendline("exit")
        t.wait()
    finally:
        t.close()


def _extend_as(uid: int, gid: int, groups: list[int], socket_path: str, build_id: int, seconds: float) -> str:
    """In a forked child running as another user: ask the master to extend a hold, over the framed hop by hand
    (that user cannot read this interpreter's files to start a client)."""
    from slaveshell.vocabulary import framing

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        answer = "?"
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(socket_path)
            sock.settimeout(10)
            sock.sendall(framing.MAGIC + framing.control(framing.Op.EXTEND, id=1, build=build_id, seconds=seconds))
            data, decoder = b"", framing.Decoder(max_control=framing.MAX_ANSWER)
            while framing.MAGIC not in data:
                data += sock.recv(65536)
            pending = data[data.index(framing.MAGIC) + len(framing.MAGIC):]
            while answer == "?":
                for frame in decoder.feed(pending):
                    message = framing.parse_control(frame.payload) if frame.type is framing.FrameType.CONTROL \
                        else None
                    if message is not None and message.op is framing.Op.ANSWER:
                        answer = str(message.get("error") or message.get("text"))
                if answer == "?":
                    pending = sock.recv(65536)
                    if not pending:
                        break
        except BaseException as e:
            answer = f"error: {e!r}"
        finally:
            os.write(write_fd, answer.encode()[:4000])
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as f:
        return f.read().decode()


def events(sb: Sandbox, kind: str) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(os.path.join(sb.master_dir, "slaveshell.sqlite"), timeout=10)
    try:
        return db.execute("SELECT operator, worker, detail FROM slaveshell_events WHERE kind = ?", (kind,)).fetchall()
    finally:
        db.close()


def test_extend_audited_bounded_and_refused_without_the_right(sb: Sandbox) -> None:
    build_id, row = new_hold(sb)
    started = float(row["started"])  # type: ignore[arg-type]
    me = pwd.getpwuid(os.getuid()).pw_name
    done = extend(sb, str(build_id), "30s")
    assert done.returncode == 0, done.stderr
    assert f"(id {build_id}) is held until" in done.stdout
    extended = next(h for h in holds(sb) if h["build_id"] == build_id)
    assert extended["limit"] == "extended" and extended["extended_by"] == me
    assert float(extended["deadline"]) > started + WAIT + 20  # type: ignore[arg-type]
    assert wait_until(lambda: [e for e in events(sb, "hold extended") if f"(id {build_id})" in e[2]], 15)
    operator, worker, detail = [e for e in events(sb, "hold extended") if f"(id {build_id})" in e[2]][-1]
    assert operator == me and worker == "hx" and "held until" in detail
    # Past the wait deadline: the extension keeps it.
    time.sleep(max(0.0, started + WAIT + 1 - time.time()))
    assert result_of(sb, build_id) is None
    # Bounded: never past max_hold.
    capped = extend(sb, str(build_id), "2h")
    assert capped.returncode == 0 and "(its max_hold)" in capped.stdout
    row = next(h for h in holds(sb) if h["build_id"] == build_id)
    assert float(row["deadline"]) == pytest.approx(started + MAX_HOLD)  # type: ignore[arg-type]
    again = extend(sb, str(build_id), "2h")
    assert again.returncode == 255 and "cannot be extended past max_hold" in again.stderr
    bad = extend(sb, str(build_id), "soon")
    assert bad.returncode == 255 and "not a duration" in bad.stderr
    if os.getuid() == 0:
        other = pwd.getpwnam(OTHER)
        gid = grp.getgrnam(GROUP).gr_gid
        refused = _extend_as(other.pw_uid, other.pw_gid, [gid], sb.socket, build_id, 3600)
        assert refused.startswith(f"permission denied: {OTHER} (uid {other.pw_uid}) may not extend holds on "
                                  "worker hx"), refused
        assert wait_until(lambda: any(e[0] == OTHER for e in events(sb, "refused")), 15)
    assert cli(sb, "release", str(build_id)).returncode == 0
    assert wait_until(lambda: result_of(sb, build_id) == FAILURE, 30)
