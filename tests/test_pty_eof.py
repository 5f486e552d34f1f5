"""End of input on a PTY: VEOF once at the start of a line, twice after a partial line (canonical mode), once
in non-canonical mode; checked against the kernel's line discipline, not only against our own rule."""

import os
import select
import termios
import tty

import pytest

from slave_side.pty import eof_bytes, open_pty
from slave_side.server import PbSessionSink
from slave_side.session import WorkerOptions, WorkerSession
from slaveshell.vocabulary.protocol import OpenRequest

from .fakes import ProcessReactor


@pytest.fixture
def pty_session(tmp_path):
    reactor = ProcessReactor()
    request = OpenRequest(worker="w1", pty=True, term="xterm", command="cat")
    session = WorkerSession(reactor, "s1", request, WorkerOptions(shell="/bin/sh"), str(tmp_path),
                            PbSessionSink(lambda *a: None))
    session.start()
    proc = reactor.processes[0]
    master_fd, slave_fd, _ = proc.kw["usePTY"]
    yield session, proc, slave_fd
    session._release_slave()
    os.close(master_fd)
    os.close(slave_fd)


def reads(fd):
    """What successive read(2) calls on the terminal return until one returns b"" (EOF) or nothing is ready."""
    got = []
    while select.select([fd], [], [], 1)[0]:
        data = os.read(fd, 1024)
        got.append(data)
        if not data:
            break
    return got


@pytest.mark.parametrize(("typed", "expected_eof"), [
    (b"", b"\x04"),
    (b"a\n", b"\x04"),
    (b"a\nlast", b"\x04\x04"),
    (b"a\r", b"\x04"),  # ICRNL: CR arrives as NL
    (b"half\x04", b"\x04"),  # the VEOF already delivered the partial line
])
def test_eof_after_a_partial_line_is_two_veofs_in_canonical_mode(pty_session, typed, expected_eof):
    session, proc, _ = pty_session
    if typed:
        session.input(typed)
    session.eof()
    assert proc.written[-1] == expected_eof


def test_eof_uses_the_terminals_own_veof_character(pty_session):
    session, proc, slave_fd = pty_session
    attrs = termios.tcgetattr(slave_fd)
    attrs[6][termios.VEOF] = b"\x01"
    termios.tcsetattr(slave_fd, termios.TCSANOW, attrs)
    session.input(b"no newline")
    session.eof()
    assert proc.written[-1] == b"\x01\x01"


def test_non_canonical_programs_get_one_veof_as_a_key(pty_session):
    session, proc, slave_fd = pty_session
    tty.setraw(slave_fd)
    session.input(b"partial")
    session.eof()
    assert proc.written[-1] == b"\x04"


def test_the_kernel_delivers_the_partial_line_then_end_of_file():
    master_fd, slave_fd, _ = open_pty(80, 24)
    try:
        os.write(master_fd, b"a\nlast" + eof_bytes(master_fd, b"t"))
        assert reads(slave_fd) == [b"a\n", b"last", b""]
        # At the start of a line, one VEOF is the end already.
        os.write(master_fd, b"x\n" + eof_bytes(master_fd, b"\n"))
        assert reads(slave_fd) == [b"x\n", b""]
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def test_the_worker_holds_the_terminal_until_the_process_has_exited(pty_session):
    # Else a process that closes its descriptors before exiting (cat) is hung up while still alive (SIGHUP).
    session, proc, slave_fd = pty_session
    assert session._slave_hold is not None and os.ttyname(session._slave_hold) == os.ttyname(slave_fd)
    proc.proto.processExited(None)
    assert session._slave_hold is None
