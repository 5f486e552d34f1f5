"""End-to-end tier: one real Buildbot master with real workers on 127.0.0.1 for the whole test session, and
`buildbot-shell` driven in a real PTY (pexpect) with the screen read by pyte."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pexpect
import pyte
import pytest

from slaveshell.client.sandbox import Sandbox

from .cluster_fixtures import SharedSite, Site

PROMPT = "PROMPT> "


def shell_argv() -> list[str]:
    """buildbot-shell as installed beside this interpreter (slaveshell.client.sandbox's tools: not a version
    manager's shim, ~20 processes more per client), else PATH's, else the module."""
    beside = os.path.join(os.path.dirname(sys.executable), "buildbot-shell")
    path = beside if os.access(beside, os.X_OK) else shutil.which("buildbot-shell")
    return [path] if path else [sys.executable, "-m", "slaveshell.shell_cli"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each phase's report on the test item (item.rep_setup, item.rep_call), for fixtures that add
    diagnostics to a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture(autouse=True)
def reactor_running(twisted_greenlet: Any) -> None:
    """pytest-twisted runs every test's body in its reactor's greenlet; once the reactor has stopped (Twisted stops
    it on SIGTERM to this process), every later test would fail with "twisted reactor has stopped". The session
    ends at the first of them instead, saying why."""
    if twisted_greenlet is None or not twisted_greenlet.dead:
        return
    from twisted.internet import reactor

    number = getattr(reactor, "_exitSignal", None)
    try:
        why = f"this process received {signal.Signals(number).name}" if number else "it was stopped"
    except ValueError:
        why = f"this process received signal {number}"
    pytest.exit(f"pytest-twisted's reactor has stopped ({why}): no later test can run", returncode=3)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # w1 runs the builds, w2 may be stopped by a test, w3 never opted in, w4 speaks msgpack.
    sb = Sandbox(str(tmp_path_factory.mktemp("sandbox")), workers=["w1", "w2", "w3", "w4"],
                 opt_in=["w1", "w2", "w4"], msgpack=["w4"], service_kwargs="redact=[r'SECRET-\\w+'], detach_grace=4")
    sb.create()
    try:
        sb.start()
        yield sb
    finally:
        sb.stop()


_SHARED_SITE = SharedSite()


@pytest.fixture(scope="session")
def shared_site() -> Iterator[SharedSite]:
    """The multi-master site the cluster modules that leave its processes running share (tests/e2e/
    cluster_fixtures.py: shared_site), for their module-scoped fixture to `get()`: started for the first test that
    asks for it, stopped after the last one (pytest_runtest_teardown below) and in any case when the session
    ends."""
    try:
        yield _SHARED_SITE
    finally:
        _SHARED_SITE.stop()


@pytest.fixture(scope="module")
def cluster(shared_site: SharedSite) -> Site:
    """The shared multi-master site, for a module's tests (test_cluster_loss_e2e.py has its own)."""
    return shared_site.get()


def _uses_shared_site(item: pytest.Item) -> bool:
    return "shared_site" in getattr(item, "fixturenames", ())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """The shared site is stopped after the last test of the session that asks for it (the modules between that do
    not ask for it leave it running): its processes do not idle through the rest of the session (nor through the
    database outage test)."""
    yield
    if _SHARED_SITE.running and _uses_shared_site(item):
        items = item.session.items
        later = items[items.index(item) + 1:] if item in items else []
        if not any(_uses_shared_site(i) for i in later):
            _SHARED_SITE.stop()


class Terminal:
    """buildbot-shell in a real PTY, with a pyte screen fed from everything it prints."""

    def __init__(self, sandbox: Sandbox, args: list[str], rows: int = 24, cols: int = 80) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        argv = shell_argv() + ["--socket", sandbox.socket] + args
        env = dict(os.environ, TERM="xterm")
        self.child = pexpect.spawn(argv[0], argv[1:], dimensions=(rows, cols), env=env, timeout=15)
        self.child.logfile_read = self
        # Everything the child printed, for assert_no_traceback.
        self.printed = bytearray()

    # pexpect's logfile interface
    def write(self, data: bytes) -> None:
        # (setdefault: subclasses with their own __init__ get it too)
        self.__dict__.setdefault("printed", bytearray()).extend(data)
        self.stream.feed(data)

    def flush(self) -> None:
        pass

    def expect(self, pattern: str, timeout: float = 15) -> re.Match[bytes]:
        self.child.expect(pattern, timeout=timeout)
        return self.child.match

    def ready(self) -> Terminal:
        """Wait for the login shell, then give it a prompt we can recognise."""
        self.expect(r"[#$] ")
        # Bracketed paste would wrap every prompt in escape sequences.
        self.child.sendline(f"bind 'set enable-bracketed-paste off' 2>/dev/null; PS1='{PROMPT}'")
        self.expect("\n(\x1b\\[\\?2004[hl]|\r)*" + PROMPT)
        return self

    def run(self, command: str, timeout: float = 15) -> str:
        """Type a command, return what it printed before the next prompt."""
        self.child.sendline(command)
        self.expect(re.escape(command) + "\r\n", timeout)
        self.expect(PROMPT, timeout)
        return self.child.before.decode("utf-8", "replace")

    def wait(self, timeout: float = 15) -> int:
        """Wait for the client to exit; its exit status (128+N for a signal). Asserts that it printed no Python
        traceback on the way: no path may show one to a user."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        assert_no_traceback(self.__dict__.get("printed"))
        return self.child.exitstatus if self.child.exitstatus is not None else 128 + self.child.signalstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]


def assert_no_traceback(output: bytes | str | None) -> None:
    """No Python traceback reached the user (standard error, or a terminal)."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes | bytearray) else output or ""
    assert "Traceback (most recent call last)" not in text, f"a traceback reached the user:\n{text[-3000:]}"


def _ours(argv: object) -> bool:
    words = [argv] if isinstance(argv, str) else list(argv) if isinstance(argv, list | tuple) else []
    return any("slaveshell" in str(w) or "buildbot-shell" in str(w) for w in words[:4])


@pytest.fixture(autouse=True, scope="session")
def no_stale_rehash_lock() -> Iterator[None]:
    """The workers' login shells are root's, whose .bashrc on this kind of machine runs `pyenv init -`: its
    rehash takes a lock file and waits up to 60 s for it, and a login shell that a test ends while it starts can
    leave the file behind, so every later shell (in that test too) would wait a minute before its prompt. While
    the tier runs, a lock older than any rehash takes is removed, checked every second."""
    lock = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "shims", ".pyenv-shim")
    done = threading.Event()

    def sweep() -> None:
        while not done.wait(1.0):
            try:
                stale = time.time() - os.stat(lock).st_mtime > 3  # a rehash holds it well under a second
            except OSError:
                continue
            if stale:
                with contextlib.suppress(OSError):
                    os.unlink(lock)

    sweeper = threading.Thread(target=sweep, name="rehash-lock-sweeper", daemon=True)
    sweeper.start()
    yield
    done.set()
    sweeper.join()


@pytest.fixture(autouse=True)
def no_traceback_from_our_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `subprocess.run` of buildbot-shell or the slaveshell CLI in this tier whose standard error is captured
    asserts that no traceback is in it, success or failure (a test that wants one can look at the process
    itself: Popen is left alone)."""
    real_run = subprocess.run

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        done = real_run(*args, **kwargs)
        if _ours(args[0] if args else kwargs.get("args")):
            assert_no_traceback(done.stderr)
        return done

    monkeypatch.setattr(subprocess, "run", run)


@pytest.fixture
def terminal(sandbox: Sandbox) -> Iterator:
    opened: list[Terminal] = []

    def open_terminal(*args: str, rows: int = 24, cols: int = 80) -> Terminal:
        t = Terminal(sandbox, list(args), rows=rows, cols=cols)
        opened.append(t)
        return t

    yield open_terminal
    for t in opened:
        t.close()
    for t in opened:
        assert_no_traceback(t.__dict__.get("printed"))


def wait_until(predicate, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def run_as(user: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`slaveshell ARGV...` as local user `user` (with their groups): a forked child of this process that drops
    to the user's ids, then runs slaveshell.cli's main (no interpreter to exec: the user may not read this one's
    directory). Its exit status, stdout and stderr."""
    import grp
    import pwd
    import tempfile

    pw = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            code = 255
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                # Everything the command imports, imported while this process may still read the interpreter's
                # library (the user may not).
                import shlex  # noqa: F401  (slaveshell run joins a command's words with it)

                from slaveshell.cli import main
                from slaveshell.client.cli import build_parser

                build_parser()
                os.setgroups(groups)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                code = main(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:
                import traceback

                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"slaveshell {argv[0]} as {user} did not end within {timeout} s")
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), out.read().decode(),
                                           err.read().decode())
