"""The worker's session logic, driven with a fake reactor and process transport."""

import os
import signal
import subprocess

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from slave_side.server import PbSessionSink
from slave_side.session import (
    ACK_DELAY,
    COALESCE_DELAY,
    DRAIN_GRACE,
    KILL_AFTER,
    TERM_AFTER,
    WorkerOptions,
    WorkerSession,
    resolve_cwd,
)
from slaveshell.vocabulary.flow import BULK, BULK_CHUNK, BULK_WINDOW, INTERACTIVE, StreamLimits, output_limits
from slaveshell.vocabulary.protocol import MAX_CHUNK, OUTPUT_WINDOW, OpenRequest, ProtocolError

from .fakes import FAKE_PID, ProcessReactor


@pytest.fixture
def kills(monkeypatch):
    sent = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    return sent


def make(tmp_path, window=4 * MAX_CHUNK, **req):
    reactor = ProcessReactor()
    reports = []
    closed = []
    request = OpenRequest(worker="w1", pty=False, **req)
    session = WorkerSession(reactor, "w1", request, WorkerOptions(output_window=window, shell="/bin/sh"),
                            str(tmp_path), PbSessionSink(lambda *a: reports.append(a)), closed.append)
    session.start()
    return session, reactor, reactor.processes[0], reports, closed


def outputs(reports):
    return [r for r in reports if r[0] == "output"]


def test_command_runs_through_the_shell_in_its_own_process_group(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path, command="echo hi")
    assert proc.args[-3:] == ["/bin/sh", "-c", "echo hi"]
    assert "setsid" in proc.executable or "os.setsid()" in " ".join(proc.args)
    assert proc.path == os.path.realpath(tmp_path)
    assert proc.kw["childFDs"] == {0: "w", 1: "r", 2: "r"}
    assert "TERM" not in proc.env  # no PTY, no terminal type


def test_interactive_output_goes_at_once_and_bulk_output_is_coalesced(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path, window=10 * MAX_CHUNK)
    proc.proto.childDataReceived(1, b"$ ")
    assert outputs(reports) == [("output", 1, b"$ ")]  # an echo or a prompt is not held back
    proc.proto.childDataReceived(1, b"x" * 8192)  # a full read: output is streaming now
    reactor.advance(0.001)
    proc.proto.childDataReceived(1, b"a" * 8192)
    proc.proto.childDataReceived(1, b"b" * 8192)
    proc.proto.childDataReceived(2, b"oops")
    assert len(outputs(reports)) == 2
    reactor.advance(COALESCE_DELAY)
    assert outputs(reports)[2:] == [("output", 1, b"a" * 8192 + b"b" * 8192), ("output", 2, b"oops")]


def test_large_output_is_sent_at_once_in_bounded_chunks(tmp_path):
    # Without a terminal the stream is bulk: messages of BULK_CHUNK (512 KiB, within Banana's 640 KiB).
    session, reactor, proc, reports, _ = make(tmp_path, window=10 * MAX_CHUNK)
    proc.proto.childDataReceived(1, b"x" * (2 * BULK_CHUNK + 5))
    sizes = [len(r[2]) for r in outputs(reports)]
    assert sizes == [BULK_CHUNK, BULK_CHUNK, 5]


def test_a_bulk_stream_has_a_bulk_window_scaled_by_the_owners_setting(tmp_path):
    session, *_ = make(tmp_path)
    assert (session.limits, session.window.size) == (BULK, BULK_WINDOW)
    session, *_ = make(tmp_path, window=2 * MAX_CHUNK)  # the owner halved the window: so is the bulk one
    assert session.window.size == BULK_WINDOW // 2
    assert output_limits(True) == INTERACTIVE == StreamLimits(MAX_CHUNK, OUTPUT_WINDOW)


def test_reader_pauses_when_the_window_is_full_and_resumes_on_ack(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path, window=2 * MAX_CHUNK)
    half = session.window.size // 2
    proc.proto.childDataReceived(1, b"x" * half)
    assert not proc.paused
    proc.proto.childDataReceived(1, b"x" * half)
    assert proc.paused
    session.ack(half)
    assert not proc.paused


def test_acknowledging_more_than_was_sent_is_refused(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path)
    proc.proto.childDataReceived(1, b"abc")
    reactor.advance(0)
    with pytest.raises(ProtocolError):
        session.ack(4)


def test_exit_while_paused_resumes_reading_so_eof_can_arrive(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path, window=MAX_CHUNK)
    proc.proto.childDataReceived(1, b"x" * session.window.size)
    assert proc.paused
    proc.proto.processExited(Failure(error.ProcessDone(0)))
    assert not proc.paused


def test_output_still_open_after_exit_is_closed_after_a_grace(tmp_path, kills):
    session, reactor, proc, reports, _ = make(tmp_path)
    proc.proto.processExited(Failure(error.ProcessDone(0)))
    reactor.advance(DRAIN_GRACE)
    assert proc.lost
    assert (FAKE_PID, signal.SIGHUP) in kills


@pytest.mark.parametrize(
    "reason, expected",
    [
        (error.ProcessDone(0), ("exit", 0, None, "")),
        (error.ProcessTerminated(exitCode=7), ("exit", 7, None, "")),
        (error.ProcessTerminated(signal=9), ("exit", None, 9, "")),
    ],
)
def test_exit_code_and_signal_are_reported_separately_after_the_output(tmp_path, reason, expected):
    session, reactor, proc, reports, closed = make(tmp_path)
    proc.proto.childDataReceived(1, b"last words")
    proc.proto.processEnded(Failure(reason))
    assert reports[-2:] == [("output", 1, b"last words"), expected]
    assert closed == [session]


def test_close_reaches_a_process_that_has_not_yet_made_its_own_group(tmp_path):
    # Just after the fork, before the child's setsid: no process group has the child's pid yet, so HUP goes to
    # the process itself (a real child of this test, still in the test's own group, which is not signalled).
    session, reactor, proc, reports, _ = make(tmp_path)
    child = subprocess.Popen(["sleep", "30"])
    try:
        session.pid = child.pid
        session.close("test")
        assert child.wait(timeout=10) == -signal.SIGHUP
    finally:
        child.kill()
        child.wait()


def test_close_escalates_hup_term_kill_until_the_process_ends(tmp_path, kills):
    session, reactor, proc, reports, _ = make(tmp_path)
    session.close("test")
    assert kills == [(FAKE_PID, signal.SIGHUP)]
    reactor.advance(TERM_AFTER)
    assert kills[-1] == (FAKE_PID, signal.SIGTERM)
    reactor.advance(KILL_AFTER - TERM_AFTER)
    assert kills[-1] == (FAKE_PID, signal.SIGKILL)
    proc.proto.processEnded(Failure(error.ProcessTerminated(signal=9)))
    assert not reactor.getDelayedCalls()


def test_input_credit_is_held_while_the_process_does_not_read(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path)
    session.input(b"abc")
    assert reports[-1] == ("input_ack", 3, False)
    proc.producer.pauseProducing()
    session.input(b"defg")
    assert reports[-1] == ("input_ack", 3, False)
    proc.producer.resumeProducing()
    assert reports[-1] == ("input_ack", 4, False)
    assert proc.written == [b"abc", b"defg"]


def test_eof_closes_stdin_without_a_pty(tmp_path):
    session, reactor, proc, reports, _ = make(tmp_path)
    session.eof()
    assert proc.stdin_closed


def test_eof_while_the_child_is_not_reading_still_closes_stdin(tmp_path):
    # A paused producer on the stdin writer would keep it from ever closing (Twisted resumes the producer
    # instead): the session must drop it and release the credit it held.
    session, reactor, proc, reports, _ = make(tmp_path)
    proc.producer.pauseProducing()
    session.input(b"abc")
    session.eof()
    assert proc.producer is None and proc.stdin_closed
    assert reports[-1] == ("input_ack", 3, False)


def test_pty_session_gets_a_login_shell_with_term_and_size_before_exec(tmp_path):
    import fcntl
    import struct
    import termios

    reactor = ProcessReactor()
    request = OpenRequest(worker="w1", pty=True, term="xterm", cols=132, rows=43)
    session = WorkerSession(reactor, "w1", request, WorkerOptions(shell="/bin/bash"), str(tmp_path),
                            PbSessionSink(lambda *a: None))
    session.start()
    proc = reactor.processes[0]
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        assert proc.args == ["-bash"]
        assert proc.env["TERM"] == "xterm"
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(slave_fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (cols, rows) == (132, 43)
        session.resize(100, 30)
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(slave_fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (cols, rows) == (100, 30)
        session.eof()
        assert proc.written == [b"\x04"]
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_working_directory_rules(tmp_path):
    (tmp_path / "build").mkdir()
    options = WorkerOptions(allowed_dirs=(str(tmp_path / "build"),))
    build = str(tmp_path / "build")
    assert resolve_cwd(OpenRequest(worker="w", cwd="build"), options, str(tmp_path)) == build
    with pytest.raises(ProtocolError, match="outside the directories"):
        resolve_cwd(OpenRequest(worker="w", cwd="/etc"), options, str(tmp_path))
    with pytest.raises(ProtocolError, match="no such directory"):
        resolve_cwd(OpenRequest(worker="w", cwd="nope"), WorkerOptions(), str(tmp_path))


def test_on_a_terminal_a_keystrokes_ack_rides_on_its_echo_or_goes_alone_after_a_moment(tmp_path):
    reactor = ProcessReactor()
    reports: list[tuple] = []
    request = OpenRequest(worker="w1", pty=True, term="xterm")
    session = WorkerSession(reactor, "w1", request, WorkerOptions(shell="/bin/bash"), str(tmp_path),
                            PbSessionSink(lambda *a: reports.append(a)))
    session.start()
    proc = reactor.processes[0]
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        session.input(b"a")  # the terminal echoes (ECHO set): the ack waits for the echo
        assert reports == []
        proc.proto.childDataReceived(1, b"a")
        assert reports == [("output", 1, b"a", [[1, False]])]
        session.input(b"b")  # no output follows: the ack goes alone
        reactor.advance(ACK_DELAY)
        assert reports[-1] == ("input_ack", 1, False)
        proc.proto.childDataReceived(1, b"b")
        assert reports[-1] == ("output", 1, b"b")
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_while_a_build_step_runs_output_past_a_burst_is_paced_and_otherwise_not(tmp_path):
    from slave_side.session import BUSY_BURST
    from slaveshell.vocabulary.flow import Pacer

    building = [True]
    reactor = ProcessReactor()
    reports: list[tuple] = []
    options = WorkerOptions(shell="/bin/sh", busy_rate=1024 * 1024)
    session = WorkerSession(reactor, "w1", OpenRequest(worker="w1", pty=False), options, str(tmp_path),
                            PbSessionSink(lambda *a: reports.append(a)), build_running=lambda: building[0])
    session.start()
    proc = reactor.processes[0]
    piece = b"y" * BULK_CHUNK
    sent = 0
    while not proc.paused:  # the burst (1 MiB) goes at once, then reading stops
        proc.proto.childDataReceived(1, piece)
        reactor.advance(COALESCE_DELAY)
        sent += len(piece)
        session.ack(len(piece))
    assert sent == BUSY_BURST + BULK_CHUNK and not session.window.in_flight
    reactor.advance(0.4)
    assert proc.paused  # 512 KiB over the burst at 1 MiB/s: half a second
    reactor.advance(0.11)
    assert not proc.paused
    # No build: the same stream is never held by the pacing (only by the credit window).
    building[0] = False
    for _ in range(8):
        proc.proto.childDataReceived(1, piece)
        reactor.advance(COALESCE_DELAY)
        session.ack(len(piece))
        assert not proc.paused
    # The bucket itself: a burst, then the rate.
    pacer = Pacer(rate=100, burst=50)
    assert pacer.spend(50, 0.0) == 0.0 and pacer.spend(20, 0.0) == 0.2 and pacer.spend(0, 0.5) == 0.0
    # The wall clock stepped back an hour (reactor.seconds() is time.time()): the wait is the rate's, not an hour.
    pacer = Pacer(rate=100, burst=50)
    assert pacer.spend(50, 3600.0) == 0.0 and pacer.spend(10, 0.0) == 0.1


@pytest.mark.parametrize("pty", [False, True])
@pytest.mark.parametrize(("configured", "expected"), [(WorkerOptions.umask, 0o022), (0o027, 0o027), (None, 0o077)])
def test_the_process_starts_with_the_owners_umask_and_the_daemons_comes_back(tmp_path, pty, configured, expected):
    """A login's mask (022) by default, the owner's when set, the daemon's own with None; the daemon's mask is
    in force again once the process is started."""
    reactor = ProcessReactor()
    seen = []
    spawn = reactor.spawnProcess

    def spawn_noting_the_mask(*args, **kw):
        mask = os.umask(0)
        os.umask(mask)
        seen.append(mask)
        return spawn(*args, **kw)

    reactor.spawnProcess = spawn_noting_the_mask
    daemon = os.umask(0o077)
    try:
        request = OpenRequest(worker="w1", pty=pty, command=None if pty else "true")
        session = WorkerSession(reactor, "w1", request, WorkerOptions(shell="/bin/sh", umask=configured),
                                str(tmp_path), PbSessionSink(lambda *a: None), lambda *a: None)
        session.start()
        after = os.umask(0o077)
    finally:
        os.umask(daemon)
    assert seen == [expected]
    assert after == 0o077


def _pty_session(tmp_path, **options):
    reactor = ProcessReactor()
    reports: list[tuple] = []
    request = OpenRequest(worker="w1", pty=True, term="xterm")
    session = WorkerSession(reactor, "w1", request, WorkerOptions(shell="/bin/bash", **options), str(tmp_path),
                            PbSessionSink(lambda *a: reports.append(a)))
    session.start()
    return session, reactor, reactor.processes[0], reports


def test_ctrl_c_on_a_terminal_that_flushes_drops_unsent_output_and_says_so_ahead_of_its_ack(tmp_path):
    session, reactor, proc, reports = _pty_session(tmp_path)
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        session.grant(2 * 1024 * 1024)
        proc.proto.childDataReceived(1, b"y\n" * 4096)  # a flood: the next read waits to be coalesced
        proc.proto.childDataReceived(1, b"pending")
        sent = len(reports)
        session.input(b"\x03")  # ISIG is set on a fresh PTY, VINTR is ^C
        assert reports[sent:] == [("flushed",), ("input_ack", 1, False)]
        reactor.advance(COALESCE_DELAY)
        proc.proto.childDataReceived(1, b"^C\r\n$ ")
        assert reports[-1] == ("output", 1, b"^C\r\n$ ")
        assert not any(r[0] == "output" and b"pending" in r[2] for r in reports)  # flushed, as the tty did
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_ctrl_c_is_not_a_flush_for_an_old_master_nor_a_terminal_without_isig(tmp_path):
    import termios
    session, reactor, proc, reports = _pty_session(tmp_path)
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        session.input(b"\x03")  # no grant: a master that does not take `flushed`
        reactor.advance(ACK_DELAY)
        assert ("flushed",) not in reports
        session.grant(1024 * 1024)
        attrs = termios.tcgetattr(slave_fd)
        attrs[3] &= ~termios.ISIG  # raw mode: ^C is a key (vim, emacs)
        termios.tcsetattr(slave_fd, termios.TCSANOW, attrs)
        session.input(b"\x03")
        reactor.advance(ACK_DELAY)
        assert ("flushed",) not in reports
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_the_output_window_grows_only_within_the_grant_and_the_owners_max(tmp_path):
    session, reactor, proc, reports = _pty_session(tmp_path, max_window=1024 * 1024)
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        assert session.window.cap == session.window.base == OUTPUT_WINDOW  # nothing granted: as before
        session.grant(16 * 1024 * 1024)
        assert session.window.cap == 1024 * 1024
        assert "cap 1024 KiB" in session.window_report()
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_after_a_flushing_ctrl_c_the_prompt_may_pass_a_full_window_by_the_allowance_only(tmp_path):
    from slave_side.session import INTERRUPT_ALLOWANCE
    session, reactor, proc, reports = _pty_session(tmp_path)
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    try:
        session.grant(2 * 1024 * 1024)
        while session.window.is_open:  # the flood fills the window: reading pauses
            proc.proto.childDataReceived(1, b"y" * MAX_CHUNK)
        assert proc.paused
        session.input(b"\x03")
        assert not proc.paused  # the prompt need not wait a round trip for credit
        full = session.window.in_flight
        proc.proto.childDataReceived(1, b"^C\r\n$ ")
        assert not proc.paused and reports[-1] == ("output", 1, b"^C\r\n$ ")
        for _ in range(INTERRUPT_ALLOWANCE // MAX_CHUNK + 1):  # more output: the allowance is spent, then paused
            proc.proto.childDataReceived(1, b"y" * MAX_CHUNK)
        assert proc.paused
        assert session.window.in_flight <= full + INTERRUPT_ALLOWANCE + MAX_CHUNK + len(b"^C\r\n$ ")
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_stdout_closed_closes_the_commands_stdout_and_drops_what_waited_for_it(tmp_path):
    """The operator's `| head -1` went away: the command's stdout pipe is closed (its next write meets SIGPIPE, as
    through OpenSSH), what of it was read and not yet sent is dropped, stderr still goes; on a terminal (no
    half-close) nothing is done here."""
    session, reactor, proc, reports, _ = make(tmp_path, window=10 * MAX_CHUNK)
    proc.proto.childDataReceived(1, b"x" * 8192)  # streaming: the next read waits to be coalesced
    reactor.advance(0.001)
    proc.proto.childDataReceived(1, b"waits")
    session.stdout_closed()
    assert proc.closed_fds == [1]
    proc.proto.childDataReceived(1, b"read before the close took effect")
    proc.proto.childDataReceived(2, b"still here")
    reactor.advance(COALESCE_DELAY)
    assert outputs(reports) == [("output", 1, b"x" * 8192), ("output", 2, b"still here")]
    proc.proto.processEnded(Failure(error.ProcessTerminated(signal=signal.SIGPIPE)))
    assert [r for r in reports if r[0] == "exit"] == [("exit", None, signal.SIGPIPE, "")]
    on_terminal, _, terminal_proc, _, _ = make(tmp_path)
    on_terminal._pty_fd = 99  # as a PTY session holds its terminal
    on_terminal.stdout_closed()
    assert terminal_proc.closed_fds == []
