"""The hidden-input rule on the worker (slave_side.echo), driven through WorkerSession with a fake reactor and
process, on a real PTY whose modes each test sets as the program named would (termios(3))."""

from __future__ import annotations

import os
import termios

import pytest

from slave_side.echo import ECHO_WINDOW, HiddenInputJudge, printable_text
from slave_side.server import PbSessionSink
from slave_side.session import WorkerOptions, WorkerSession
from slaveshell.vocabulary.protocol import OpenRequest

from .fakes import ProcessReactor


class Pty:
    def __init__(self, tmp_path) -> None:
        self.reactor = ProcessReactor()
        self.reports: list[tuple] = []
        request = OpenRequest(worker="w1", pty=True, term="xterm")
        self.session = WorkerSession(self.reactor, "w1", request, WorkerOptions(shell="/bin/bash"), str(tmp_path),
                                     PbSessionSink(lambda *a: self.reports.append(a)))
        self.session.start()
        self.proc = self.reactor.processes[0]
        self.master_fd, self.slave_fd, _ = self.proc.kw["usePTY"]
        self.cooked = termios.tcgetattr(self.slave_fd)

    def modes(self, program: str) -> None:
        """The PTY's modes as `program` sets them (from its source: readline's rltty.c, bash's shtty.c)."""
        attrs = [list(a) if isinstance(a, list) else a for a in self.cooked]
        iflag, lflag = attrs[0], attrs[3]
        if program == "cooked":  # a plain shell, cat: canonical, echo on
            pass
        elif program == "getpass":  # getpass, sudo, ssh, read -s, stty -echo: canonical, echo off
            lflag &= ~termios.ECHO
        elif program == "readline":  # bash's command line: -icanon -echo, -icrnl, and it echoes itself
            lflag &= ~(termios.ICANON | termios.ECHO)
            iflag &= ~(termios.ICRNL | termios.INLCR)
        elif program == "read -s -n":  # bash's read -s -n N: cbreak with echo off, icrnl kept
            lflag &= ~(termios.ICANON | termios.ECHO | termios.ECHOK | termios.ECHONL)
        elif program == "vim":  # raw
            lflag &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
            iflag &= ~(termios.ICRNL | termios.IXON)
        attrs[0], attrs[3] = iflag, lflag
        termios.tcsetattr(self.slave_fd, termios.TCSANOW, attrs)

    def type(self, data: bytes) -> None:
        self.session.input(data)

    def show(self, data: bytes) -> None:
        self.proc.proto.childDataReceived(1, data)

    def acks(self) -> list[tuple[int, bool]]:
        """The input_acks sent so far: alone, or riding on an output message (its optional last argument)."""
        found: list[tuple[int, bool]] = []
        for r in self.reports:
            if r[0] == "input_ack":
                found.append((r[1], r[2]))
            elif r[0] == "output" and len(r) > 3:
                found.extend((n, hidden) for n, hidden in r[3])
        return found

    def close(self) -> None:
        os.close(self.master_fd)
        os.close(self.slave_fd)


@pytest.fixture
def pty(tmp_path):
    p = Pty(tmp_path)
    yield p
    p.close()


def test_echo_on_is_visible_and_canonical_echo_off_is_hidden_at_once(pty):
    pty.modes("cooked")
    pty.type(b"ls\r")
    pty.modes("getpass")
    pty.type(b"hunter2\r")
    assert pty.acks() == [(3, False), (8, True)]


def test_readline_input_is_visible_once_the_shell_echoes_it(pty):
    pty.modes("readline")
    pty.type(b"l")
    assert pty.acks() == []  # waiting for the echo, not for the window
    pty.show(b"l")
    pty.type(b"s -la")
    pty.show(b"s")
    pty.show(b" -la")  # an echo may come in pieces
    pty.type(b"\r")  # no printable text: follows the stretch, visible
    pty.type(b"\x1b[A")  # an arrow key
    pty.type(b"\x1b[200~echo pasted\x1b[201~")  # bracketed paste, echoed highlighted
    pty.show(b"\x1b[7mecho pasted\x1b[27m")
    assert pty.acks() == [(1, False), (5, False), (1, False), (3, False), (23, False)]


def test_keystrokes_typed_ahead_are_matched_to_their_echoes_in_order(pty):
    pty.modes("readline")
    pty.type(b"e")
    pty.type(b"c")
    pty.type(b"ho")
    assert pty.acks() == []
    pty.show(b"echo")
    assert pty.acks() == [(1, False), (1, False), (2, False)]


def test_a_password_read_with_read_s_n_is_hidden_to_its_last_character(pty):
    pty.modes("read -s -n")
    pty.type(b"Z")
    assert pty.acks() == []
    pty.reactor.advance(ECHO_WINDOW)
    assert pty.acks() == [(1, True)]
    for ch in b"q7g":
        pty.type(bytes([ch]))
    # The program's next output begins with the last character typed: still hidden, the stretch is hidden.
    pty.show(b"got 4\r\n")
    assert pty.acks() == [(1, True)] * 4
    assert not pty.reactor.getDelayedCalls()  # no timer left waiting for an echo


def test_the_hidden_stretch_ends_when_the_modes_change_or_a_line_ends(pty):
    pty.modes("read -s -n")
    pty.type(b"x")
    pty.reactor.advance(ECHO_WINDOW)
    pty.modes("readline")  # read returned; bash's readline reads the next command
    pty.type(b"e")
    pty.show(b"e")
    assert pty.acks() == [(1, True), (1, False)]
    pty.modes("vim")
    pty.type(b"j")  # a command: vim moves the cursor, it prints no 'j'
    pty.show(b"\x1b[2;1H")
    pty.reactor.advance(ECHO_WINDOW)
    pty.type(b"\r")  # ends the stretch (and is part of it)
    pty.type(b":")
    pty.show(b"\x1b[24;1H:")
    assert pty.acks()[2:] == [(1, True), (1, True), (1, False)]


def test_an_echo_cut_inside_a_character_or_a_control_sequence_still_counts(pty):
    pty.modes("readline")
    pty.type("é".encode())
    pty.show("é".encode()[:1])
    pty.show("é".encode()[1:])
    pty.type(b"x")
    pty.show(b"\x1b]0;ti")  # a window title cut in two reads, then the echo
    pty.show(b"tle\x07x")
    assert pty.acks() == [(2, False), (1, False)]


def test_output_that_is_not_the_echo_hides_at_once(pty):
    pty.modes("vim")
    pty.type(b"dd")
    pty.show(b"\x1b[3;1Hthe next line")
    assert pty.acks() == [(2, True)]


def test_no_echo_in_time_hides_and_a_late_echo_does_not_reveal(pty):
    pty.modes("readline")
    pty.type(b"k")
    pty.reactor.advance(ECHO_WINDOW)
    pty.show(b"k")
    pty.type(b"x")  # the same stretch: hidden without waiting
    assert pty.acks() == [(1, True), (1, True)]


def test_decisions_wait_for_the_child_to_read_before_the_credit_returns(pty):
    pty.modes("getpass")
    pty.proc.producer.pauseProducing()
    pty.type(b"abc")
    assert pty.acks() == []
    pty.proc.producer.resumeProducing()
    assert pty.acks() == [(3, True)]


def test_unreadable_modes_hide():
    decided: list[int] = []
    judge = HiddenInputJudge(ProcessReactor(), lambda: decided.append(1))
    item = judge.delivered(b"secret", None)
    assert item.hidden is True and decided


def test_printable_text_drops_every_control_sequence():
    assert printable_text(b"\x1b[?2004h\x1b]0;title\x07a\x1bOAb\r\n\x07\xc2\x9b31mc\x1b[1;31md") == "abcd"


# -- properties over the whole class -----------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_COOKED = [termios.ICRNL, termios.OPOST, 0, termios.ICANON | termios.ECHO | termios.ISIG, 0, 0, [b"\0"] * 32]
READ_S_N = _COOKED[:3] + [termios.ISIG] + _COOKED[4:]
READLINE = [0] + _COOKED[1:3] + [termios.ISIG] + _COOKED[4:]
keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=4)
controls = st.sampled_from(["", "\x1b[K", "\x1b[?25l", "\x1b]0;t\x07", "\r", "\x1b[7m", "\x07", "\x1b[2;5H"])


@given(first=keys, rest=st.lists(st.tuples(keys, st.text(max_size=12)), max_size=12))
def test_once_a_stretch_is_hidden_nothing_more_typed_in_it_is_recorded(first, rest):
    reactor = ProcessReactor()
    judge = HiddenInputJudge(reactor, lambda: None)
    items = [judge.delivered(first.encode(), READ_S_N)]
    reactor.advance(ECHO_WINDOW)  # the prompt did not echo the first key
    for typed, shown in rest:
        items.append(judge.delivered(typed.encode(), READ_S_N))
        judge.output(shown.encode())  # whatever the program prints, even the very key typed
        judge.output(typed.encode())
    reactor.advance(ECHO_WINDOW)
    assert [i.hidden for i in items] == [True] * len(items)


@given(typed=st.lists(st.tuples(keys, controls, controls, st.integers(0, 4)), min_size=1, max_size=10))
def test_what_the_program_echoes_is_recorded_however_its_echo_is_cut_or_decorated(typed):
    reactor = ProcessReactor()
    judge = HiddenInputJudge(reactor, lambda: None)
    items = []
    for text, before, after, cut in typed:
        items.append(judge.delivered(text.encode(), READLINE))
        echo = (before + text + after).encode()
        judge.output(echo[:cut])
        judge.output(echo[cut:])
    assert [i.hidden for i in items] == [False] * len(items)
    assert not reactor.getDelayedCalls()
