"""The operator's end of a session over the framed hop (slaveshell.vocabulary.framing, slaveshell.client.connection),
standard library only: opens (or attaches to) a session and relays the local standard streams to it, with flow control
both ways: escapes (slaveshell.client.escape), the input credit window (slaveshell.vocabulary.flow), output credit held
back while stdout cannot keep up, signals as ssh treats them (`signalled`), detach, and the exit status of
slaveshell.vocabulary.protocol.ExitStatus.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import termios
from collections.abc import Callable

from slaveshell.client import escape as esc
from slaveshell.client.connection import (
    Cancellable,
    EventLoop,
    HopError,
    Link,
    PendingCalls,
    parse,
    session_call,
    widen_pipe,
)
from slaveshell.client.outputs import Outputs
from slaveshell.client.terminal import window_size
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import BULK_CHUNK, BULK_WINDOW, chunks
from slaveshell.vocabulary.framing import Ack, Eof, FrameType, Op, Resize, SessionMessage, Signal, StdoutClosed
from slaveshell.vocabulary.protocol import (
    INPUT_WINDOW,
    MAX_CHUNK,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    Role,
    check_int,
)
from slaveshell.vocabulary.windows import WINDOW_MAX, TunedWindow

# A second SIGINT/SIGTERM/SIGHUP this soon after the first (seconds) gives up on the remote command at once.
GIVE_UP_WITHIN = 1.0
# The same signal again this soon (seconds) is the same request delivered twice, not a second one: timeout(1)
# signals its child and then the child's process group.
DUPLICATE_WITHIN = 0.1
# After forwarding SIGTERM or SIGHUP, how long the remote command has to end (seconds) before the client closes
# the session and exits anyway.
SIGNAL_GRACE = 5.0
# Output waiting for stdout beyond this many bytes holds the output credit back (the worker then pauses).
STDOUT_HIGH = 64 * 1024
# Output acknowledged at once when this much is unacknowledged; less waits for the end of the loop's turn.
ACK_BATCH = 4 * MAX_CHUNK
# Less than this unacknowledged (a keystroke's echo, a prompt) waits up to ACK_DELAY seconds for more to gather: a
# typist's keystrokes cost no ack each on the master's socket and the worker's link (as OpenSSH's window adjust
# waits for half its window). It is 1/16 of a terminal's base output window (OUTPUT_WINDOW): the worker never waits
# on this credit.
ACK_PROMPTLY = 16 * 1024
ACK_DELAY = 0.05
# Ctrl-C typed on a terminal: output is held from then until the master acknowledges that input; if the worker's
# terminal flushed its output at the interrupt, what was held (in flight at the interrupt) is discarded, as a
# terminal discards its queue; otherwise it is shown. Shown anyway after this many seconds, or past this many bytes.
INTERRUPT_HOLD = 3.0
INTERRUPT_HOLD_BYTES = WINDOW_MAX + 1024 * 1024
INTERRUPT = b"\x03"
# 0: a `-T` session's pipes are never passed to the master (the client copies them, framed).
_FORWARDED: dict[int, str] = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}


class HopShell:
    """One session, driven from the operator's standard streams. `interactive`: a PTY session on a local
    terminal (escapes active, stdin EOF a hangup, window changes forwarded); otherwise stdin EOF reaches the
    remote command as EOF. `attach`: (session id, "attach" | "watch") to join a live session."""

    def __init__(self, loop: EventLoop, link: Link, request: OpenRequest, interactive: bool,
                 escape_char: bytes | None = b"~", fds: tuple[int, int, int] = (0, 1, 2),
                 attach: tuple[str, str] | None = None, suspend: Callable[[], None] | None = None,
                 passing: tuple[str, ...] = ()) -> None:
        self.loop = loop
        self.link = link
        self.request = request
        self.interactive = interactive
        self.attach = attach
        self.worker = request.worker
        self.role = Role.OWNER
        self.farewell: str | None = None
        # The options a resume command needs to reach this master (shell_cli.socket_words): " --socket PATH".
        self.reach = ""
        self.suspend = suspend
        self.escapes = esc.EscapeParser(escape_char if interactive else None, detach=True,
                                        release=request.build is not None,
                                        suspend=self.program if suspend is not None else None)
        self.fds = {"in": fds[0], "out": fds[1], "err": fds[2]}
        # The streams whose descriptors go to the master with the open (a `-T` session's pipes and sockets:
        # `passable`), and those it took: it reads and writes them itself (master_side.shell_socket.passed).
        self.passing = passing if attach is None else ()
        self.passed: frozenset[str] = frozenset()
        # The master takes STDOUT_CLOSED (its answer said so); an older one is sent a close instead.
        self.stdout_closes = False
        # Whoever read stdout went away on a terminal session: its output is no longer acknowledged (`_consumed`).
        self._terminal_unread = False
        self.status: ExitStatus | None = None
        self.done = False
        self.session_open = False
        self.session_id = ""
        # The base window until the master grants more (its open or attach answer's input_window); it follows the
        # bandwidth-delay product within that (slaveshell.vocabulary.windows).
        self.input_window = TunedWindow(INPUT_WINDOW, INPUT_WINDOW, loop.seconds)
        # The largest input message the master takes on this session (its answer's max_input): MAX_CHUNK, or a bulk
        # stream's when the session has no terminal and its worker takes them (slaveshell.vocabulary.flow); stdin is
        # read in pieces of that size.
        self.max_input = MAX_CHUNK
        # Ctrl-C typed: output held until the input up to the interrupt (this many bytes sent) is acknowledged.
        self._interrupt_at: int | None = None
        self._held: list[tuple[FrameType, bytes]] = []
        self._held_bytes = 0
        self._hold_timer: Cancellable | None = None
        self.discarded = 0  # output discarded at interrupts, in bytes
        self._unacked = 0
        self._ack_timer: Cancellable | None = None
        self._ack_delayed = False  # _ack_timer waits ACK_DELAY (not the end of the loop's turn)
        self.outputs = Outputs(loop, {"out": fds[1], "err": fds[2]}, self._output_gone, self._written)
        self._reading = False
        self._stdin_open = True
        self._size = (request.cols, request.rows)
        self._signalled_at: float | None = None
        self._last_signal: int | None = None
        self._signal_timer: Cancellable | None = None
        self._typed_ahead = b""
        self._waiting = False
        self._told_read_only = False
        self.calls = PendingCalls(link)

    @property
    def program(self) -> str:
        return "slaveshell" if self.attach else "buildbot-shell"

    # -- start ---------------------------------------------------------------------------------

    def start(self, asked: int | None = None) -> None:
        """Ask for the session (the answer comes through `frame`), declaring the output frames this client takes;
        `asked`: the id of that call, already sent on the link (slaveshell.client.connection.ask_ahead)."""
        if asked is not None:
            self.calls.expect(asked, self._opened)
            return
        op, fields = session_call(self.request, self.attach, self.passing)
        try:
            if self.passing:
                fds = [self.fds[name] for name in self.passing]
                for fd in fds:
                    widen_pipe(fd, BULK_CHUNK)  # the master reads and writes a bulk message at once
                self.calls.call_passing(op, self._opened, fds, **fields)
            else:
                self.calls.call(op, self._opened, **fields)
        except ValueError:  # over framing.MAX_CONTROL
            self.finish(ExitStatus(reason=f"the request is too large (at most {framing.MAX_CONTROL} bytes)"))

    def _opened(self, reply: framing.Control | None) -> None:
        if reply is None or self.status is not None:
            return
        if not reply.get("ok"):
            self.finish(ExitStatus(reason=str(reply.get("error") or "the master sent a malformed reply")))
            return
        try:
            self.session_id = str(reply.get("session", ""))
            self.worker = str(reply.get("worker", self.worker))
            self.role = Role.from_wire(reply.get("role", "owner"))
            size = reply.get("size")
            if isinstance(size, list) and len(size) == 2:
                self._size = (check_int(size[0], "cols", 0, 10_000), check_int(size[1], "rows", 0, 10_000))
            self.max_input = framing.max_input(reply.get("max_input"))
            taken = reply.get("stdio", [])
            if not isinstance(taken, list) or any(name not in self.passing for name in taken):
                raise ProtocolError("stdio")
            self.passed = frozenset(taken)
            self.stdout_closes = reply.get("stdout_closed") is True
        except ProtocolError:
            self.finish(ExitStatus(reason="the master sent a malformed reply"))
            return
        self.session_open = True
        self._waiting = False
        granted = reply.get("input_window")
        if isinstance(granted, int) and not isinstance(granted, bool) and self.role is Role.OWNER:
            granted = min(granted, WINDOW_MAX)
            if self.max_input > MAX_CHUNK and granted > 0:
                # A bulk stream's input: the window starts at four of its messages (as a bulk stream's output
                # does), within the grant, and follows the link from there.
                self.input_window = TunedWindow(min(granted, BULK_WINDOW), granted, self.loop.seconds)
            else:
                self.input_window.grant(granted)
        if "in" in self.passed:
            self._stdin_open = False  # the master reads it, and sends its EOF
        elif self.max_input > MAX_CHUNK and not self.interactive:
            widen_pipe(self.fds["in"], self.max_input)
        self.escapes.leave_only = self.role is not Role.OWNER
        self._send_ack()  # output that came with the view (a session's recent output, on attach)
        if self._typed_ahead:
            typed, self._typed_ahead = self._typed_ahead, b""
            self.typed(typed)
        self._update_reading()
        if self.interactive:
            self.window_changed()  # the size may have changed while the session opened

    # -- the master's frames -------------------------------------------------------------------

    def frame(self, frame: framing.Frame) -> None:
        if frame.type is not FrameType.CONTROL:
            self.output(frame.type, frame.payload)
            return
        message = parse(frame)
        op = message.op
        if op is Op.ANSWER:
            self.calls.answered(message)
        elif op is Op.INPUT_ACK:
            self.input_ack(message.get("n"), message.get("flush") is True)
        elif op is Op.EXIT:
            try:
                status = ExitStatus.from_wire(message.get("code"), message.get("signal"), message.get("reason"))
            except ProtocolError:
                status = ExitStatus(reason="the master sent a malformed exit")
            if status.lost and not status.reason:  # neither a code nor a signal: the reason must say why
                status = ExitStatus(reason="the master ended the session without saying why")
            self.finish(status)
        elif op is Op.WAITING:
            text = message.get("text")
            if isinstance(text, str):
                # One line from the master, shown outside the session's stream: printable characters only.
                self.waiting("".join(c for c in text[:300] if c.isprintable()))
        elif op is Op.ERROR:
            text = message.get("text")
            self.finish(ExitStatus(reason=visible(text)[:500] if isinstance(text, str) and text else
                                   "the master closed the connection (protocol error)"))
        # Op.REFUSED: the master refused a session message (and acts on it); nothing to show.

    def lost(self, error: HopError) -> None:
        """The connection is gone (or was refused, or broken)."""
        self.calls.lost()
        self.finish(ExitStatus(reason=str(error)))

    def output(self, ftype: FrameType, data: bytes) -> None:
        if self._interrupt_at is not None:
            self._held.append((ftype, data))
            self._held_bytes += len(data)
            if self._held_bytes > INTERRUPT_HOLD_BYTES:
                self._release_held(discard=False)
            return
        name = "err" if ftype is FrameType.STDERR else "out"
        self.outputs.write(name, data)
        self._consumed(ftype, len(data))
        self._ack_soon()

    def _hold_output(self) -> None:
        """Ctrl-C went out: hold output until its input_ack says whether the terminal flushed."""
        self._interrupt_at = self.input_window.total_sent
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = self.loop.call_later(INTERRUPT_HOLD, lambda: self._release_held(discard=False))

    def _release_held(self, discard: bool) -> None:
        """The held output: discarded (the terminal flushed it) or shown; its credit goes back either way. A flush
        also drops what still waited for stdout, and what the local terminal had not shown yet (tcflush), as the
        worker's terminal dropped its own queue: all of it came before the interrupt."""
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None
        self._interrupt_at = None
        held, self._held, self._held_bytes = self._held, [], 0
        if discard:
            self.discarded += self.outputs.discard("out")
            with contextlib.suppress(OSError, termios.error):
                if os.isatty(self.fds["out"]):
                    termios.tcflush(self.fds["out"], termios.TCOFLUSH)
        for ftype, data in held:
            if discard:
                self.discarded += len(data)
            else:
                self.outputs.write("err" if ftype is FrameType.STDERR else "out", data)
            self._consumed(ftype, len(data))
        if held:
            self._ack_soon(promptly=True)  # a flood's credit, which the worker may be waiting for

    def _consumed(self, ftype: FrameType, nbytes: int) -> None:
        """`nbytes` of output shown (or discarded at an interrupt): to acknowledge. Not once stdout's reader went
        away on a terminal session (`_output_gone`): its output is then never acknowledged, so the worker stops
        reading the terminal and the program blocks at its next write, as through OpenSSH."""
        if not (self._terminal_unread and ftype is FrameType.STDOUT):
            self._unacked += nbytes

    def _ack_soon(self, promptly: bool = False) -> None:
        """Acknowledge output at the end of the loop's turn: one ack for all the frames of one read (four to a
        read in a bulk stream), not one each; at once past ACK_BATCH; below ACK_PROMPTLY, after ACK_DELAY unless
        `promptly`."""
        if self._unacked >= ACK_BATCH:
            self._send_ack()
            return
        if not self._unacked:
            return
        delayed = self._unacked < ACK_PROMPTLY and not promptly
        timer = self._ack_timer
        if timer is not None and timer.active():
            if delayed or not self._ack_delayed:
                return
            timer.cancel()  # enough gathered: at the end of this turn, not after ACK_DELAY
        self._ack_delayed = delayed
        self._ack_timer = self.loop.call_later(ACK_DELAY if delayed else 0, self._send_ack)

    def input_ack(self, nbytes: object, flush: bool = False) -> None:
        try:
            self.input_window.acked(nbytes)  # type: ignore[arg-type]
        except ProtocolError:
            return  # a bad ack from the master: ignored
        if self._interrupt_at is not None and self.input_window.total_acked >= self._interrupt_at:
            self._release_held(discard=flush)
        self._update_reading()

    def waiting(self, text: str) -> None:
        """The master waits before it opens the session (`--build` on a build not held yet): show the line; in
        a raw terminal, read the keyboard meanwhile, so Ctrl-C (a byte there) stops waiting."""
        if self.session_open or self.status is not None:
            return
        self._waiting = True
        self.write_err((text + ("\r\n" if self.interactive else "\n")).encode())
        self._update_reading()

    # -- the local side ------------------------------------------------------------------------

    def stdin_readable(self) -> None:
        try:
            data = os.read(self.fds["in"], self.max_input)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.typed(data)
            return
        self._stdin_open = False
        self._update_reading()
        if self.status is not None:
            return
        if not self.session_open:
            self.finish(ExitStatus(reason="the terminal went away while waiting for the session to open"))
        elif self.interactive:
            self._close()  # the terminal went away: a hangup, not an EOF
        else:
            self._send(Eof())

    def typed(self, data: bytes) -> None:
        if not self.session_open:
            if b"\x03" in data:
                self._stop_waiting()
                return
            self._typed_ahead += data
            self._update_reading()
            return
        for action in self.escapes.feed(data):
            if isinstance(action, esc.Send):
                if self.role is not Role.WATCH:
                    self._send_input(action.data)
                elif not self._told_read_only:  # a watcher's keystrokes go nowhere: said once
                    self._told_read_only = True
                    self.write_err(f"\r\n[watching {visible(self.session_id)} read-only: what you type is not sent; "
                                   f"{self._leave_keys()}]\r\n".encode())
            elif isinstance(action, esc.Help):
                self.write_err(action.text.encode())
            elif isinstance(action, esc.Terminate):
                if self.role is Role.OWNER:
                    self.farewell = f"Connection to {self.worker} closed."
                    self._last_call(Op.CLOSE, ExitStatus(reason="ended with ~."))
                else:
                    self.farewell = f"Left session {self.session_id} on {self.worker}."
                    self._last_call(Op.CLOSE, ExitStatus(code=0))
                return
            elif isinstance(action, esc.Release):
                self._release_build()
            elif isinstance(action, esc.Suspend) and self.suspend is not None:
                with contextlib.suppress(OSError):
                    os.write(self.fds["err"], (self.escapes.escape or b"") +
                             f"^Z [suspend {self.program}]\r\n".encode())
                self.suspend()
                self.resumed()
            elif isinstance(action, esc.Detach):
                self.farewell = (f"Detached from session {self.session_id} on {self.worker}; resume it with: "
                                 f"slaveshell attach {self.session_id}{self.reach}" if self.role is Role.OWNER else
                                 f"Left session {self.session_id} on {self.worker}.")
                self._last_call(Op.DETACH, ExitStatus(code=0))
                return

    def _leave_keys(self) -> str:
        """How a watcher leaves, for the read-only notice."""
        if not self.interactive:
            return "Ctrl-C leaves"
        c = self.escapes.escape
        return f"{c.decode('latin-1')}. leaves" if c is not None else "escapes are off: SIGTERM or SIGHUP leaves"

    def resumed(self) -> None:
        """Continued after a stop: SIGWINCH is not delivered to a stopped process, so the size goes again."""
        if self.interactive:
            self.window_changed(force=True)

    def window_changed(self, force: bool = False) -> None:
        size = window_size(self.fds["in"]) or window_size(self.fds["out"])
        if (size is not None and (force or size != self._size) and self.status is None and self.session_open
                and self.role is Role.OWNER):
            self._size = size
            self._send(Resize(*size))

    def signalled(self, signum: int) -> None:
        """SIGINT, SIGTERM or SIGHUP reached this process (called from the loop, never from the handler).

        As ssh does: in command mode, and SIGINT in any mode,
        forwarded to the remote command, then the client ends with the remote status (SIGNAL_GRACE s after
        SIGTERM or SIGHUP). In raw mode (kill(1), not the keyboard) SIGTERM ends the session and SIGHUP detaches
        it. A second signal within GIVE_UP_WITHIN s closes the session and exits at once."""
        name = _FORWARDED.get(signum, str(signum))
        now = self.loop.seconds()
        since = now - self._signalled_at if self._signalled_at is not None else None
        if since is not None and since < DUPLICATE_WITHIN and signum == self._last_signal:
            return
        again = since is not None and since < GIVE_UP_WITHIN
        self._signalled_at, self._last_signal = now, signum
        if self.status is not None:
            if again:  # still flushing output nobody reads: stop waiting
                self.outputs.drop("out")
                self.outputs.drop("err")
                self._maybe_done()
            return
        if not self.session_open:
            if self._waiting and signum == signal.SIGINT:
                self._stop_waiting()
            else:
                # The master may be starting the session: it ends it once started (master_side.shell_socket.door).
                self.calls.call(Op.CLOSE, lambda reply: None)
                self.finish(ExitStatus(reason=f"interrupted by SIG{name} before the session opened"))
            return
        if again:
            self._give_up(f"second SIG{name}: closed the session without waiting for the remote command")
            return
        if self.interactive and signum == signal.SIGTERM and self.role is Role.OWNER:
            self.farewell = f"Connection to {self.worker} closed (SIGTERM)."
            self._last_call(Op.CLOSE, ExitStatus(reason="ended by SIGTERM"))
        elif self.interactive and signum != signal.SIGINT:
            self.farewell = (f"Detached from session {self.session_id} on {self.worker} (SIG{name}); resume it "
                             f"with: slaveshell attach {self.session_id}{self.reach}" if self.role is Role.OWNER else
                             f"Left session {self.session_id} on {self.worker} (SIG{name}).")
            self._last_call(Op.DETACH, ExitStatus(reason=f"detached by SIG{name}"))
        elif self.role is not Role.OWNER:
            self.farewell = f"Left session {self.session_id} on {self.worker}."
            self._last_call(Op.CLOSE, ExitStatus(code=128 + signum))
        else:
            self._send(Signal(signum))
            if signum != signal.SIGINT and self._signal_timer is None:
                self._signal_timer = self.loop.call_later(SIGNAL_GRACE, lambda: self._give_up(
                    f"the remote command did not end within {SIGNAL_GRACE:g} s of SIG{name}; session closed"))

    def _give_up(self, why: str) -> None:
        self._signal_timer = None
        if self.status is None:
            self._last_call(Op.CLOSE, ExitStatus(reason=why), timeout=1)

    def _stop_waiting(self) -> None:
        what = f"build {self.request.build} to be held" if self.request.build is not None else "the session"
        self.finish(ExitStatus(reason=f"stopped waiting for {what}"))

    # -- the end -------------------------------------------------------------------------------

    def finish(self, status: ExitStatus) -> None:
        """The session is over: flush what is left for stdout and stderr, then stop the loop."""
        if self.status is not None:
            return
        self.status = status
        if self._signal_timer is not None and self._signal_timer.active():
            self._signal_timer.cancel()
        self._signal_timer = None
        self._release_held(discard=False)  # no answer will come for the interrupt: show what was held
        self._update_reading()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.status is not None and self.outputs.empty and not self.done:
            self.done = True
            self.loop.stop()

    # -- helpers -------------------------------------------------------------------------------

    def write_err(self, data: bytes) -> None:
        self.outputs.write("err", data)

    def _written(self, name: str) -> None:
        if name == "out":
            self._ack_soon()
        self._maybe_done()

    def _output_gone(self, name: str) -> None:
        if name == "out" and self.status is None:
            # Whoever read our stdout is gone (a closed pipe: `| head -1`): nobody will see more output. As OpenSSH
            # does (eow@openssh.com), the remote command's stdout is closed: it meets EPIPE or SIGPIPE at its next
            # write and ends as it would in a local pipeline, its exit status ours (141 for SIGPIPE); stderr and
            # stdin go on meanwhile.
            # On a terminal (no half-close), as OpenSSH does there, the session goes on: its output is no longer
            # acknowledged (the program blocks at its next write), what is typed still reaches it, and it ends as
            # the operator ends it (Ctrl-C, exit, ~.). A watcher or joiner leaves.
            if self.role is not Role.OWNER or not self.session_open:
                self._close()
            elif self.request.pty:
                self._terminal_unread = True
            elif self.stdout_closes:
                self._send(StdoutClosed())
            else:
                self._close()
        self._maybe_done()

    def _update_reading(self) -> None:
        want = self._stdin_open and self.status is None and (
            (self.session_open and self.input_window.is_open) or
            (self._waiting and self.interactive and len(self._typed_ahead) < INPUT_WINDOW))
        if want != self._reading:
            self._reading = want
            self.loop.watch(self.fds["in"], selectors.EVENT_READ, self.stdin_readable if want else None)

    def _send_input(self, data: bytes) -> None:
        for piece in chunks(data, self.max_input) if len(data) > self.max_input else [data]:
            self.input_window.sent(len(piece))
            if self.session_open and self.status is None:  # header and bytes unjoined: a bulk piece is not copied
                self.link.send(framing.header(FrameType.INPUT, len(piece), self.max_input), piece)
        if self.interactive and INTERRUPT in data and self.session_open and self.status is None:
            self._hold_output()
        self._update_reading()

    def _send_ack(self) -> None:
        if self._unacked and self.session_open and self.status is None and self.outputs.pending("out") <= STDOUT_HIGH:
            n, self._unacked = self._unacked, 0
            self._send(Ack(n))

    def _send(self, message: SessionMessage) -> None:
        """A session message, while the session is open."""
        if self.session_open and self.status is None:
            self.link.send(framing.session_frame(message))

    def _close(self) -> None:
        """End the session without waiting for the answer (nobody is left to tell)."""
        if self.session_open and self.status is None:
            self.calls.call(Op.CLOSE, lambda reply: None)

    def _release_build(self) -> None:
        if self.request.build is None:
            return

        def told(reply: framing.Control | None) -> None:
            if reply is None:
                return
            text = reply.get("text") if reply.get("ok") else f"release failed: {reply.get('error')}"
            self.write_err(f"\r\n[{visible(str(text))}]\r\n".encode())

        self.calls.call(Op.RELEASE, told, build=self.request.build)

    def _last_call(self, op: Op, status: ExitStatus, timeout: float = 5) -> None:
        """A call that must reach the master (it decides the session's fate), then the end: without the wait,
        the process could exit with it still in a buffer, and the master would see only a lost connection."""
        self._stdin_open = False  # nothing more is read: the session's fate is decided
        self._update_reading()
        if not self.session_open or self.status is not None:
            self.finish(status)
            return
        timer = self.loop.call_later(timeout, lambda: self.finish(status))

        def answered(reply: framing.Control | None) -> None:
            timer.cancel()
            self.finish(status)

        self.calls.call(op, answered)
