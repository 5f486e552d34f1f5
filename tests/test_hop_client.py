"""What buildbot-shell (slaveshell.client.shell_session, the framed hop's client) does with SIGINT, SIGTERM and SIGHUP
of its own, with `~^Z`, with the credit windows and with what the master sends: driven with a fake link and a fake
clock (the cases the PB client had in tests/test_client_signals.py, and more)."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slaveshell.client import connection as hop
from slaveshell.client.connection import HopError, parse
from slaveshell.client.shell_session import (
    ACK_DELAY,
    DUPLICATE_WITHIN,
    GIVE_UP_WITHIN,
    SIGNAL_GRACE,
    STDOUT_HIGH,
    HopShell,
)
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.protocol import INPUT_WINDOW, ExitStatus, OpenRequest, Role

from .fakes import FramedLink


class FakeTimer:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled, self.fired = when, fn, False, False

    def cancel(self) -> None:
        self.cancelled = True

    def active(self) -> bool:
        return not (self.cancelled or self.fired)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []
        self.watched: dict[tuple[int, int], Any] = {}
        self.stopped = False

    def seconds(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, fn)
        self.timers.append(timer)
        return timer

    def advance(self, delay: float) -> None:
        self.now += delay
        for timer in list(self.timers):
            if timer.active() and timer.when <= self.now:
                timer.fired = True
                timer.fn()

    def watch(self, fd: int, event: int, callback: Any) -> None:
        if callback is None:
            self.watched.pop((fd, event), None)
        else:
            self.watched[(fd, event)] = callback

    def stop(self) -> None:
        self.stopped = True


class FakeLink(FramedLink):
    """Records what the client sends as (method, *args); answers calls at once, as a master would."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.client: HopShell | None = None
        self.answer_calls = True

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        decoder = framing.Decoder()
        decoder.take_input(framing.MAX_INPUT)  # the client's own bound is tested, not the master's
        [f] = decoder.feed(frame + payload)
        if f.type is FrameType.INPUT:
            self.calls.append(("input", f.payload))
            return
        message = framing.parse_control(f.payload)
        args = {Op.RESIZE: ("cols", "rows"), Op.SIGNAL: ("name",), Op.ACK: ("n",)}.get(message.op, ())
        if message.op not in (Op.OPEN, Op.ATTACH):
            self.calls.append((message.op.value, *(message.get(a) for a in args)))
        if message.op in framing.CALLS and self.answer_calls and self.client is not None:
            self.client.frame(framing.Decoder().feed(framing.control(Op.ANSWER, id=message.call_id, ok=True))[0])


def make(interactive: bool = False, role: str = "owner", suspend: Any = None,
         fds: tuple[int, int, int] = (0, 1, 2)) -> HopShell:
    link = FakeLink()
    client = HopShell(FakeLoop(), link, OpenRequest(worker="w1", pty=interactive), interactive=interactive,
                      suspend=suspend, fds=fds)
    link.client = client
    client.session_open = True
    client.session_id = "s1"
    client.role = Role(role)
    return client


def calls(client: HopShell) -> list[tuple[Any, ...]]:
    link: Any = client.link
    return link.calls  # type: ignore[no-any-return]


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGINT, "INT"), (signal.SIGTERM, "TERM"),
                                              (signal.SIGHUP, "HUP")])
def test_command_mode_forwards_the_signal_and_waits_for_the_remote_status(signum, name):
    client = make()
    client.signalled(signum)
    assert calls(client) == [("signal", name)]
    assert client.status is None
    client.finish(ExitStatus(signal=signum))
    assert client.status.cli_status() == 128 + signum
    client.loop.advance(SIGNAL_GRACE * 2)  # type: ignore[attr-defined]
    assert calls(client) == [("signal", name)]


def test_a_second_signal_within_a_second_gives_up_at_once():
    client = make()
    client.signalled(signal.SIGINT)
    client.loop.advance(GIVE_UP_WITHIN / 2)  # type: ignore[attr-defined]
    client.signalled(signal.SIGINT)
    assert calls(client) == [("signal", "INT"), ("close",)]
    assert client.done
    assert client.status is not None and client.status.cli_status() == 255
    assert client.status.reason == "second SIGINT: closed the session without waiting for the remote command"


def test_the_same_signal_delivered_twice_at_once_counts_once():
    client = make()
    client.signalled(signal.SIGTERM)
    client.loop.advance(DUPLICATE_WITHIN / 10)  # type: ignore[attr-defined]
    client.signalled(signal.SIGTERM)
    assert calls(client) == [("signal", "TERM")]
    assert client.status is None


def test_a_later_second_sigint_is_forwarded_again():
    client = make()
    client.signalled(signal.SIGINT)
    client.loop.advance(GIVE_UP_WITHIN * 2)  # type: ignore[attr-defined]
    client.signalled(signal.SIGINT)
    assert calls(client) == [("signal", "INT"), ("signal", "INT")]
    assert client.status is None


def test_sigterm_ignored_remotely_closes_the_session_after_the_grace():
    client = make()
    client.signalled(signal.SIGTERM)
    client.loop.advance(SIGNAL_GRACE + 0.1)  # type: ignore[attr-defined]
    assert calls(client) == [("signal", "TERM"), ("close",)]
    assert client.status is not None and client.status.cli_status() == 255
    assert "within 5 s of SIGTERM" in client.status.reason


def test_pty_mode_sigterm_ends_the_session_and_sighup_detaches_it():
    term = make(interactive=True)
    term.signalled(signal.SIGTERM)
    assert calls(term) == [("close",)]
    assert term.farewell == "Connection to w1 closed (SIGTERM)."
    hup = make(interactive=True)
    hup.signalled(signal.SIGHUP)
    assert calls(hup) == [("detach",)]
    assert hup.farewell is not None and "slaveshell attach s1" in hup.farewell
    intr = make(interactive=True)
    intr.signalled(signal.SIGINT)
    assert calls(intr) == [("signal", "INT")]


def test_a_last_call_the_master_does_not_answer_ends_the_client_after_its_timeout():
    client = make(interactive=True)
    client.link.answer_calls = False  # type: ignore[attr-defined]
    client.signalled(signal.SIGHUP)
    assert calls(client) == [("detach",)] and client.status is None
    client.loop.advance(5.1)  # type: ignore[attr-defined]
    assert client.status is not None and client.status.reason == "detached by SIGHUP"


def test_a_watcher_leaves_instead_of_signalling_someone_elses_session():
    client = make(role="watch")
    client.signalled(signal.SIGINT)
    assert calls(client) == [("close",)]
    assert client.farewell == "Left session s1 on w1." and client.status is not None
    assert client.status.cli_status() == 130


def test_a_signal_before_the_session_is_open_ends_the_client():
    client = make()
    client.session_open = False
    client.signalled(signal.SIGTERM)
    assert client.status is not None and client.status.cli_status() == 255
    assert "before the session opened" in client.status.reason


def test_tilde_ctrl_z_suspends_then_sends_the_window_size_again(monkeypatch):
    stops = []
    client = make(interactive=True, suspend=lambda: stops.append("stopped"), fds=(0, 1, os.open(os.devnull,
                                                                                                os.O_WRONLY)))
    monkeypatch.setattr("slaveshell.client.shell_session.window_size", lambda fd: (100, 30))
    client._size = (100, 30)  # unchanged: sent anyway, the remote may have missed a change while we were stopped
    client.typed(b"\r~\x1a")
    assert stops == ["stopped"]
    assert calls(client) == [("input", b"\r"), ("resize", 100, 30)]


def test_input_stops_being_read_while_the_window_is_full_and_resumes_on_the_ack():
    client = make()
    client._update_reading()
    assert (0, 1) in client.loop.watched  # type: ignore[attr-defined]
    client.typed(b"x" * INPUT_WINDOW)
    assert (0, 1) not in client.loop.watched  # type: ignore[attr-defined]
    client.frame(framing.Decoder().feed(framing.control(Op.INPUT_ACK, n=INPUT_WINDOW, hidden=False))[0])
    assert (0, 1) in client.loop.watched  # type: ignore[attr-defined]


def test_output_credit_is_held_back_while_stdout_does_not_keep_up():
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        client = make(fds=(0, w, w))
        big = b"y" * 65536
        for _ in range(4):  # more than the pipe takes
            client.frame(framing.Decoder().feed(framing.encode(FrameType.STDOUT, big))[0])
        acked = sum(c[1] for c in calls(client) if c[0] == "ack")
        assert acked < 4 * len(big)
        while os.read(r, 1 << 20):  # the reader catches up
            client.outputs.flush("out")
            if not client.outputs.pending("out"):
                break
        client.outputs.flush("out")
        assert client.outputs.pending("out") <= STDOUT_HIGH
        assert sum(c[1] for c in calls(client) if c[0] == "ack") == 4 * len(big)
    finally:
        os.close(r)
        os.close(w)


def test_a_malformed_exit_or_answer_from_the_master_ends_the_client_with_one_line():
    client = make()
    client.frame(framing.Decoder().feed(framing.control(Op.EXIT, code="zero", signal=None, reason=""))[0])
    assert client.status == ExitStatus(reason="the master sent a malformed exit")
    opening = make()
    opening.session_open = False
    opening._opened(framing.Control(Op.ANSWER, {"id": 1, "ok": True, "role": "king"}))
    assert opening.status == ExitStatus(reason="the master sent a malformed reply")


def test_the_waiting_line_is_checked_and_shown_once_without_controls_and_ctrl_c_stops_waiting():
    r, w = os.pipe()
    try:
        link = FakeLink()
        client = HopShell(FakeLoop(), link, OpenRequest(worker="w1", pty=True, build=3), interactive=True,
                          fds=(0, w, w))
        for bad in (None, 3, ["x"]):
            client.frame(framing.Decoder().feed(framing.control(Op.WAITING, text=bad))[0])
        client.frame(framing.Decoder().feed(framing.control(Op.WAITING, text="build 3 is still running\x1b[2J\x07; "
                                                                        "waiting"))[0])
        assert os.read(r, 1000) == b"build 3 is still running[2J; waiting\r\n"
        assert (0, 1) in client.loop.watched  # type: ignore[attr-defined]  # the keyboard is read meanwhile
        client.typed(b"ls\x03")  # Ctrl-C in a raw terminal: stop waiting
        assert client.status == ExitStatus(reason="stopped waiting for build 3 to be held")
        assert client.status.cli_status() == 255
    finally:
        os.close(r)
        os.close(w)


_plain = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20),
                   st.lists(st.integers(), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.builds(lambda op, f: ("control", op, f), st.sampled_from(sorted(framing.FROM_MASTER, key=lambda o: o.value)),
              st.dictionaries(st.sampled_from(["id", "ok", "n", "hidden", "code", "signal", "reason", "text",
                                               "error", "session", "role", "size"]), _plain)),
    st.builds(lambda t, b: ("data", t, b), st.sampled_from([FrameType.STDOUT, FrameType.STDERR]),
              st.binary(max_size=30))), max_size=10))
def test_a_rogue_master_cannot_crash_the_operators_client(frames):
    """Any sequence of the master's messages with any values: the client never raises (a broken frame, such as
    an answer whose id is not an integer, ends the hop with one line), and a well-formed exit
    is still understood (unless an end came first): it ends exactly once."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        client = make(fds=(0, null, null))
        client.session_open = False
        client.start()
        for kind, what, value in frames:
            payload = framing.control(what, **value) if kind == "control" else framing.encode(what, value)
            try:
                client.frame(framing.Decoder().feed(payload)[0])
            except framing.WireError as e:  # as the loop does (slaveshell.shell_cli._session): the hop is over
                ended = client.status
                client.lost(HopError(f"the master broke the protocol: {e}"))
                assert client.status == (ended or ExitStatus(reason=f"the master broke the protocol: {e}"))
                break
            assert client.status is None or client.status.reason or not client.status.lost
        ended_before = client.status
        client.frame(framing.Decoder().feed(framing.control(Op.EXIT, code=7, signal=None, reason=""))[0])
        assert client.done
        assert client.status == ended_before if ended_before is not None else client.status.cli_status() == 7
    finally:
        os.close(null)


def test_output_that_comes_before_the_attach_answer_is_shown_and_acknowledged_once_attached():
    r, w = os.pipe()
    try:
        client = make(fds=(0, w, w))
        client.session_open = False
        client.attach = ("s1", "attach")
        client.link.answer_calls = False  # type: ignore[attr-defined]
        client.start()
        client.frame(framing.Decoder().feed(framing.encode(FrameType.STDOUT, b"recent output"))[0])
        assert os.read(r, 100) == b"recent output" and calls(client) == []
        client._opened(framing.Control(Op.ANSWER, {"id": 1, "ok": True, "session": "s1", "role": "owner"}))
        assert calls(client) == [("ack", len(b"recent output"))]
    finally:
        os.close(r)
        os.close(w)


def test_the_frames_of_one_read_are_acknowledged_together_at_the_end_of_the_loops_turn():
    r, w = os.pipe()
    try:
        client = make(fds=(0, w, w))
        pieces = [b"a" * 6000, b"b" * 6000, b"c" * 6000]  # ACK_PROMPTLY (16 KiB) passed by the third
        for piece in pieces:
            client.frame(framing.Decoder().feed(framing.encode(FrameType.STDOUT, piece))[0])
        assert [c for c in calls(client) if c[0] == "ack"] == []
        client.loop.advance(0)  # type: ignore[attr-defined]
        assert [c for c in calls(client) if c[0] == "ack"] == [("ack", 18000)]
        assert os.read(r, 20000) == b"".join(pieces)
    finally:
        os.close(r)
        os.close(w)


def test_a_typists_echoes_are_acknowledged_together_after_a_moment():
    r, w = os.pipe()
    try:
        client = make(fds=(0, w, w))
        for key in b"ls -l":
            client.frame(framing.Decoder().feed(framing.encode(FrameType.STDOUT, bytes([key])))[0])
            client.loop.advance(0.005)  # type: ignore[attr-defined]
        assert [c for c in calls(client) if c[0] == "ack"] == []
        client.loop.advance(ACK_DELAY)  # type: ignore[attr-defined]
        assert [c for c in calls(client) if c[0] == "ack"] == [("ack", 5)]
        assert os.read(r, 100) == b"ls -l"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("views", [False, True])  # a shell's reads, and a copy's (receive_views)
def test_the_master_answers_with_its_magic_or_one_refusal_line_and_anything_else_is_not_this_master(views):
    def client_and_master() -> tuple[hop.Connection, socket.socket]:
        ours, master = socket.socketpair()
        ours.setblocking(False)
        return hop.Connection(ours), master

    def receive(connection: hop.Connection) -> list[framing.Frame | memoryview]:
        return list(connection.receive_views()) if views else list(connection.receive())

    connection, master = client_and_master()
    for piece in (framing.MAGIC[:4], framing.MAGIC[4:] + framing.control(Op.WAITING, text="w")[:3]):
        master.sendall(piece)
        assert receive(connection) == []
    master.sendall(framing.control(Op.WAITING, text="w")[3:])
    frames = [f for f in receive(connection) if isinstance(f, framing.Frame)]
    assert [parse(f) for f in frames] == [framing.Control(Op.WAITING, {"text": "w"})]
    master.close()

    connection, master = client_and_master()
    master.sendall(framing.REFUSED_PREFIX + b"alice already has 2 connections\x1b[2J\n")
    assert receive(connection) == [] and not connection.greeted
    master.close()
    with pytest.raises(HopError, match=r"^the master refused the connection: alice already has 2 connections\?\[2J$"):
        receive(connection)

    connection, master = client_and_master()
    master.sendall(b"\x04\x82none")  # a PB server's first bytes: Banana's dialect list
    with pytest.raises(HopError, match="did not answer as a slaveshell master"):
        receive(connection)
    assert connection.closed
    master.close()


def _frame(payload: bytes, ftype: FrameType = FrameType.STDOUT) -> framing.Frame:
    return framing.Decoder().feed(framing.encode(ftype, payload))[0]


def _ack(n: int, **extra: Any) -> framing.Frame:
    return framing.Decoder().feed(framing.control(Op.INPUT_ACK, n=n, hidden=False, **extra))[0]


def _pipe_client(interactive: bool = True) -> tuple[HopShell, int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return make(interactive=interactive, fds=(0, w, w)), r, w


def _drain(r: int) -> bytes:
    try:
        return os.read(r, 1 << 20)
    except BlockingIOError:
        return b""


def test_ctrl_c_holds_output_until_its_ack_and_a_flush_discards_what_was_in_flight():
    client, r, w = _pipe_client()
    try:
        client.output(FrameType.STDOUT, b"before ")
        client.typed(b"\x03")
        for _ in range(3):  # the flood in flight when ^C went out
            client.frame(_frame(b"y\r\n" * 1000))
        assert _drain(r) == b"before "
        client.frame(_ack(1, flush=True))  # the worker's terminal flushed at the interrupt
        client.frame(_frame(b"^C\r\n$ "))
        assert _drain(r) == b"^C\r\n$ "
        assert client.discarded == 3 * 3000
        client.loop.advance(0)  # type: ignore[attr-defined]
        # The discarded output's credit went back all the same: the worker is not left waiting for it.
        assert sum(c[1] for c in calls(client) if c[0] == "ack") == len(b"before ") + 3 * 3000 + len(b"^C\r\n$ ")
    finally:
        os.close(r)
        os.close(w)


def test_ctrl_c_that_did_not_flush_shows_what_was_held_in_order():
    """A program that reads ^C as a key (vim: ISIG off) flushes nothing: the held output is shown, in order."""
    client, r, w = _pipe_client()
    try:
        client.typed(b"\x03")
        client.frame(_frame(b"one "))
        client.frame(_frame(b"err ", FrameType.STDERR))
        assert _drain(r) == b""
        client.frame(_ack(1))
        client.frame(_frame(b"two"))
        assert _drain(r) == b"one err two"
        assert client.discarded == 0
    finally:
        os.close(r)
        os.close(w)


def test_held_output_is_shown_when_no_ack_comes_in_time_or_the_session_ends():
    from slaveshell.client.shell_session import INTERRUPT_HOLD
    client, r, w = _pipe_client()
    try:
        client.typed(b"\x03")
        client.frame(_frame(b"late"))
        client.loop.advance(INTERRUPT_HOLD)  # type: ignore[attr-defined]
        assert _drain(r) == b"late"
        client.typed(b"\x03")
        client.frame(_frame(b"last"))
        client.frame(framing.Decoder().feed(framing.control(Op.EXIT, code=130, signal=None, reason=""))[0])
        assert _drain(r) == b"last"
    finally:
        os.close(r)
        os.close(w)


def test_only_a_terminal_holds_output_at_ctrl_c():
    client, r, w = _pipe_client(interactive=False)
    try:
        client.typed(b"\x03")
        client.frame(_frame(b"data"))
        assert _drain(r) == b"data"
    finally:
        os.close(r)
        os.close(w)


def test_the_input_window_grows_within_the_masters_grant_only():
    from slaveshell.vocabulary.windows import WINDOW_MAX
    client = make()
    assert client.input_window.cap == INPUT_WINDOW  # nothing granted: the base window, as before
    client.session_open = False
    client._opened({"ok": True, "session": "s1", "input_window": 2 * 1024 * 1024})
    assert client.input_window.cap == 2 * 1024 * 1024
    client._opened({"ok": True, "session": "s1", "input_window": 1 << 40})
    assert client.input_window.cap == WINDOW_MAX
    watcher = make(role="watch")
    watcher.session_open = False
    watcher._opened({"ok": True, "session": "s1", "role": "watch", "input_window": 2 * 1024 * 1024})
    assert watcher.input_window.cap == INPUT_WINDOW


def test_a_flush_also_drops_what_still_waited_for_stdout_and_nothing_after_it():
    client, r, w = _pipe_client()
    os.set_blocking(w, False)
    try:
        big = b"y" * 65536
        for _ in range(8):  # more than the pipe takes: the rest waits in the client
            client.frame(_frame(big))
        assert client.outputs.pending("out") > 0
        client.typed(b"\x03")
        client.frame(_ack(1, flush=True))
        assert client.outputs.pending("out") == 0
        assert client.discarded > 0
        while _drain(r):
            pass
        client.frame(_frame(b"$ "))
        assert _drain(r) == b"$ "
    finally:
        os.close(r)
        os.close(w)


class ControlsSent(FakeLink):
    """A FakeLink that also keeps every control the client sends, calls included."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[framing.Control] = []

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        self.sent.append(framing.parse_control(framing.Decoder().feed(frame)[0].payload))
        super().send(frame, payload)


def test_a_session_asked_for_ahead_is_served_by_the_client_built_after_it():
    """buildbot-shell sends its open as soon as the socket is connected (hop.ask_ahead), before the rest of the
    client is loaded: the client built afterwards takes that call's answer, and sends no second open."""
    link = ControlsSent()
    sent = link.sent
    request = OpenRequest(worker="w1", pty=True)
    asked = hop.ask_ahead(link, request, None)
    assert asked is not None and [m.op for m in sent] == [Op.OPEN]
    assert sent[0].get("request") == request.to_wire() and sent[0].call_id == asked
    client = HopShell(FakeLoop(), link, request, interactive=False)
    link.client = client
    client.start(asked)
    assert [m.op for m in sent] == [Op.OPEN] and not client.session_open
    client.frame(framing.Decoder().feed(framing.control(Op.ANSWER, id=asked, ok=True, session="s9",
                                                        role="owner"))[0])
    assert client.session_open and client.session_id == "s9"


def test_a_request_too_large_to_ask_ahead_is_refused_with_the_reason():
    link = FakeLink()
    request = OpenRequest(worker="w1", env={f"V{i}": "x" * 4000 for i in range(100)})
    assert hop.ask_ahead(link, request, None) is None
    client = HopShell(FakeLoop(), link, request, interactive=False)
    client.start(None)
    assert client.done and client.status is not None
    assert client.status.reason == f"the request is too large (at most {framing.MAX_CONTROL} bytes)"


def test_a_client_that_fails_after_asking_ahead_closes_the_session_it_asked_for(monkeypatch):
    """The open went out before the rest of the client loaded: if that fails, the session is closed as soon as
    it has opened (a close while it opens), not left detached on the worker for its grace."""
    from slaveshell.client import shell_cli

    ours, master = socket.socketpair()
    ours.setblocking(False)

    def broken(*args: Any) -> HopShell:
        raise ImportError("a broken install")

    monkeypatch.setattr(hop, "connect", lambda path: ours)
    monkeypatch.setattr(shell_cli, "_session", broken)
    try:
        with pytest.raises(ImportError):
            shell_cli.run("/nowhere", OpenRequest(worker="w1", command="true"), interactive=False, escape_char=None)
        master.settimeout(5)
        got = b""
        while chunk := master.recv(65536):
            got += chunk
        frames = [framing.parse_control(f.payload) for f in framing.Decoder().feed(got)]
        assert [(m.op, m.call_id) for m in frames] == [(Op.OPEN, 1), (Op.CLOSE, 2)]
    finally:
        master.close()


@pytest.mark.parametrize("master_takes_it", [True, False])
def test_when_stdouts_reader_goes_away_the_remote_stdout_is_closed_and_its_status_is_the_clients(master_takes_it):
    """`buildbot-shell -T w1 -- yes | head -1`: as OpenSSH (eow@openssh.com), the client tells the master that its
    stdout's reader went away, nothing more; the remote command then meets SIGPIPE and the client exits with its
    status, 141, writing no line. A master that did not say it takes that gets the close, as before."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    client = make(fds=(0, out_w, err_w))
    client.stdout_closes = master_takes_it
    try:
        os.close(out_r)  # `head -1` read its line and left
        client.frame(_frame(b"y\n" * 1000))
        client.frame(_frame(b"stderr goes on\n", FrameType.STDERR))
        sent = [c[0] for c in calls(client)]
        assert sent == (["stdout_closed"] if master_takes_it else ["close"])
        assert client.status is None  # the session goes on until the worker says how it ended
        client.frame(framing.Decoder().feed(framing.control(Op.EXIT, code=None, signal=signal.SIGPIPE,
                                                            reason=""))[0])
        assert client.status is not None and client.status.cli_status() == 141 and client.done
        assert client.farewell is None and os.read(err_r, 1000) == b"stderr goes on\n"
    finally:
        for fd in (out_w, err_r, err_w):
            os.close(fd)


def test_on_a_terminal_session_whose_stdout_reader_went_away_the_output_is_no_longer_acknowledged():
    """`buildbot-shell w1 | head -1` (a terminal session, stdin the keyboard): as through OpenSSH the session goes
    on, its output is no longer acknowledged (the worker stops reading the terminal and the program blocks), what
    is typed still goes, stderr is still shown and acknowledged, and the remote status is the client's. A watcher
    whose stdout went away leaves."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    client = make(interactive=True, fds=(0, out_w, err_w))
    client.stdout_closes = True
    try:
        os.close(out_r)
        client.frame(_frame(b"y\r\n" * 1000))
        client.frame(_frame(b"more\r\n" * 1000))
        client.frame(_frame(b"notice\r\n", FrameType.STDERR))
        client.loop.advance(1)  # type: ignore[attr-defined]
        assert calls(client) == [("ack", len(b"notice\r\n"))]  # stdout's credit held back, stderr's returned
        assert client.status is None and os.read(err_r, 100) == b"notice\r\n"
        client.typed(b"\x03")
        assert calls(client)[-1] == ("input", b"\x03")
        client.frame(framing.Decoder().feed(framing.control(Op.EXIT, code=None, signal=signal.SIGINT,
                                                            reason=""))[0])
        assert client.status is not None and client.status.cli_status() == 130
    finally:
        for fd in (out_w, err_r, err_w):
            os.close(fd)
    watch_r, watch_w = os.pipe()
    watcher = make(role="watch", fds=(0, watch_w, 2))
    watcher.stdout_closes = True
    try:
        os.close(watch_r)
        watcher.frame(_frame(b"y\n"))
        assert calls(watcher) == [("close",)]
    finally:
        os.close(watch_w)
