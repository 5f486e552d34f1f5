"""Untrusted text at display boundaries, and logs without session content, against a real master and a hostile
donated worker: every command runs in a real PTY (pexpect) and the screen is read with pyte.

The worker 'evil' opted in and then lies: its info/host file clears the screen, it reports its system with an
OSC 52 clipboard write, and it ends sessions whose command says 'hostile-exit' with an exit reason that clears
the screen and retitles the terminal. The policy grants everything on 'evil' and nothing elsewhere, so that an
open on any other name is a refusal the master logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pexpect
import pyte
import pytest

from slaveshell.client.sandbox import Sandbox

from .conftest import Terminal, shell_argv, wait_until

pytestmark = pytest.mark.e2e

HOSTILE_WORKER = r'''
# A hostile donated worker for the display tests (see tests/e2e/test_display_e2e.py).
import buildbot_worker.base as _base
from slave_side import session as _session
_info = _base.BotBase.remote_getWorkerInfo
def _hostile_info(self):
    files = _info(self)
    files['system'] = 'posix\x1b]52;c;aGFja2Vk\x07'
    files.pop('os_pretty_name', None)  # so that the host fits the console's INFO column on any machine
    return files
_base.BotBase.remote_getWorkerInfo = _hostile_info
_init = _session.WorkerSession.__init__
def _hostile_init(self, reactor, sid, request, options, basedir, sink, **kw):
    if request.command and 'hostile-exit' in request.command:
        honest = sink.send
        def report(method, *args):
            if method == 'exit':
                args = (None, None, 'worker gone \x1b[2J\x1b[H\x1b]0;PWNED\x07')
            honest(method, *args)
        sink = type(sink)(report)
    _init(self, reactor, sid, request, options, basedir, sink, **kw)
_session.WorkerSession.__init__ = _hostile_init
'''
HOSTILE_HOST = "\x1b[2J\x1b[Hhost-evil"
TITLE = "untouched"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    rights = "['shell', 'watch', 'join', 'kill', 'replay']"
    sb = Sandbox(str(tmp_path_factory.mktemp("display")), workers=["evil"],
                 service_kwargs=f"policy=[{{'users': ['*'], 'workers': ['evil'], 'rights': {rights}}}]")
    sb.create()
    tac = os.path.join(sb.worker_dir("evil"), "buildbot.tac")
    with open(tac) as f:
        text = f.read()
    with open(tac, "w") as f:
        f.write(text.replace("\ns = Worker(", "\n" + HOSTILE_WORKER + "\ns = Worker(", 1))
    with open(os.path.join(sb.worker_dir("evil"), "info", "host"), "w") as f:
        f.write(HOSTILE_HOST + "\n")
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


class Shown:
    """A command's whole output in a real PTY: the raw bytes and the pyte screen they make."""

    def __init__(self, argv: list[str], rows: int = 40, cols: int = 200, send: str = "",
                 expect: str | None = None) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.screen.set_title(TITLE)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        child = pexpect.spawn(argv[0], argv[1:], dimensions=(rows, cols), env=dict(os.environ, TERM="xterm"),
                              timeout=60)
        child.logfile_read = self
        if expect is not None:
            child.expect(expect)
        if send:
            child.send(send)
        child.expect(pexpect.EOF)
        child.close()
        self.status = child.exitstatus

    def write(self, data: bytes) -> None:
        self.raw += data
        self.stream.feed(data)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())


def slaveshell(sb: Sandbox, *args: str) -> list[str]:
    return [sys.executable, "-m", "slaveshell.cli", args[0], "--socket", sb.socket, *args[1:]]


def buildbot_shell(sb: Sandbox, *args: str) -> list[str]:
    return shell_argv() + ["--socket", sb.socket, *args]


def log_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def test_a_hostile_host_file_does_not_blank_the_console_fleet_table(hostile):
    shown = Shown(slaveshell(hostile, "console"), expect="slaveshell>", send="\x04")
    lines = shown.lines()
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKER "))
    assert lines[header].split() == ["WORKER", "STATE", "SHELL", "SESSIONS", "INFO"]
    row = lines[header + 1]
    assert row.split()[0] == "evil" and row.endswith(", \\x1b[2J\\x1b[Hhost-evil"), row
    assert shown.screen.title == TITLE


def test_a_worker_system_does_not_write_the_clipboard_of_who_lists_workers(hostile):
    shown = Shown(slaveshell(hostile, "workers"))
    assert shown.status == 0
    assert b"\x1b]52" not in shown.raw  # OSC 52 would set the clipboard (pyte does not model it)
    lines = shown.lines()
    assert lines[0].split() == ["WORKER", "STATE", "SHELL", "YOU", "SESSIONS", "SYSTEM"]
    assert lines[1].split() == ["evil", "connected", "yes", "may", "0", "posix\\x1b]52;c;aGFja2Vk\\x07"]


def test_an_operators_command_does_not_blank_or_retitle_the_auditors_history(hostile):
    done = subprocess.run(buildbot_shell(hostile, "evil", "--", "true", "#\x1b]0;X\x07\x1b[2J"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = Shown(slaveshell(hostile, "history", "--limit", "5"))
    lines = shown.lines()
    assert lines[0].split()[:2] == ["SESSION", "STARTED"]
    assert shown.screen.title == TITLE
    assert any(line.endswith("true #\\x1b]0;X\\x07\\x1b[2J") for line in lines), shown.text()


def test_a_workers_exit_reason_reaches_neither_the_operator_nor_the_auditor_raw(hostile):
    operator = Terminal(hostile, ["evil", "echo", "hostile-exit"], rows=24, cols=120)
    operator.screen.set_title(TITLE)
    assert operator.wait(timeout=60) == 255
    assert operator.screen.title == TITLE
    assert any("buildbot-shell: worker gone \\x1b[2J\\x1b[H\\x1b]0;PWNED\\x07" in line
               for line in operator.lines()), operator.lines()
    shown = Shown(slaveshell(hostile, "history", "--limit", "5"))
    lines = shown.lines()
    assert lines[0].split()[:2] == ["SESSION", "STARTED"]
    assert shown.screen.title == TITLE
    # END is 14 columns: the reason is cut there, escaped and aligned.
    row = next(line for line in lines if line.endswith("echo hostile-exit"))
    assert "worker gone \\\u2026" in row


def test_eight_bit_controls_in_a_session_do_not_take_over_the_searchers_terminal(hostile):
    done = subprocess.run(buildbot_shell(hostile, "evil", "--",
                                         r"printf 'needle-c1 \302\2332J\302\2350;Owned\007 after\n'"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"\xc2\x9b2J" in done.stdout  # the session's own stream stays raw
    shown = Shown(slaveshell(hostile, "search", "needle-c1"), rows=10)
    assert shown.status == 0
    assert shown.screen.title == TITLE
    (hit,) = [line for line in shown.lines() if "needle-c1" in line]
    assert hit.endswith("output: needle-c1  after")


def test_a_refused_worker_name_is_logged_and_shown_inert(hostile):
    name = "x\x1b]0;T\x07\x1b[2J"
    operator = Terminal(hostile, [name, "true"], cols=200)
    operator.screen.set_title(TITLE)
    assert operator.wait(timeout=60) == 255
    assert operator.screen.title == TITLE
    assert any("may not shell on worker x\\x1b]0;T\\x07\\x1b[2J" in line for line in operator.lines())
    master_log = os.path.join(hostile.master_dir, "twistd.log")
    assert wait_until(lambda: "denied" in log_text(master_log) and "x\\x1b]0;T\\x07" in log_text(master_log),
                      timeout=20), log_text(master_log)[-2000:]
    assert "\x1b]0;T" not in log_text(master_log)


def test_logs_hold_no_command_input_or_output(hostile):
    done = subprocess.run(buildbot_shell(hostile, "evil", "--", "true", "--password=hunter2"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    session = Terminal(hostile, ["evil"]).ready()
    try:
        assert session.run("echo typed-marker-$((6*7))").strip() == "typed-marker-42"
        session.run("printf 'output-%s\\n' marker")
        session.child.sendline("exit")
        assert session.wait() == 0
    finally:
        session.close()
    master_log = os.path.join(hostile.master_dir, "twistd.log")
    worker_log = os.path.join(hostile.worker_dir("evil"), "twistd.log")
    # Both sessions are logged as ended on both sides...
    assert wait_until(lambda: log_text(master_log).count("ended (code 0") >= 2, timeout=20)
    assert wait_until(lambda: log_text(worker_log).count("ended, code 0") >= 2, timeout=20)
    # ... without their content ...
    for path in (master_log, worker_log):
        text = log_text(path)
        for secret in ("hunter2", "typed-marker", "output-marker", "output-%s"):
            assert secret not in text, (path, secret)
    # ... but with who opened what kind of session where.
    assert "root (uid 0) opened a command on evil" in log_text(master_log) or os.getuid() != 0
    assert "opened a login shell on evil" in log_text(master_log)
    assert "(a command) for" in log_text(worker_log) and "(a login shell) for" in log_text(worker_log)
