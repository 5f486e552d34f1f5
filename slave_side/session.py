"""One shell session on the worker: a process in a PTY (or on pipes) and its byte streams.

The session receives the master's messages as a `slaveshell.vocabulary.protocol.SessionControl` (values already checked
by `slave_side.server`, the PB adapter), reports through an injected `SessionSink`, and never touches PB.
"""

from __future__ import annotations

import enum
import os
import signal
import termios
from collections.abc import Callable

from twisted.internet import error, protocol
from twisted.internet import process as twisted_process
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from slave_side import pty as ptyutil
from slave_side.echo import HiddenInputJudge, Keystrokes, local_modes, terminal_modes
from slave_side.host import ProcessReactor, ProcessTransport, WorkerOptions, resolve_cwd, session_environment
from slave_side.pty import TermModes
from slave_side.reading import read_in_larger_pieces, widen_stdin
from slave_side.spawn import spawn
from slaveshell.plumbing.clock import DelayedCall
from slaveshell.plumbing.write_now import write_now
from slaveshell.vocabulary.deflate import Deflater
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import Pacer, chunks, output_limits, worker_input_limits
from slaveshell.vocabulary.protocol import (
    MAX_CHUNK,
    OUTPUT_WINDOW,
    STREAM_ERR,
    STREAM_OUT,
    ExitStatus,
    LocalProtocolError,
    OpenRequest,
    SessionSink,
)
from slaveshell.vocabulary.windows import TunedWindow

__all__ = ["WorkerSession", "Phase", "WorkerOptions", "resolve_cwd", "session_environment"]

log = Logger()

# After the main process exits, how long output may still drain before the PTY/pipes are closed anyway
# (a background job can keep the terminal open forever).
DRAIN_GRACE = 1.0
# close(): HUP first (what a hangup does), TERM and KILL for what ignores it.
TERM_AFTER = 2.0
KILL_AFTER = 5.0

# Output coalescing: a flush of at least BULK_BYTES less than BULK_GAP ago means output is streaming, and the
# next message may wait COALESCE_DELAY to grow towards the session's largest message (slaveshell.vocabulary.flow: 64 KiB
# with a terminal, 512 KiB for a bulk stream without one).
BULK_BYTES = 4096
BULK_GAP = 0.01
COALESCE_DELAY = 0.002

# A keystroke's input_ack on a terminal that echoes it (ECHO set, or a program's own echo seen) waits for the
# echo's output message and rides in it (one message on the worker's link instead of two, the acknowledgement
# no longer ahead of the echo); if no output comes within ACK_DELAY seconds it goes alone. Acks of hidden input
# and of pipes (no echo to wait for) go at once, as do held ones once HELD_ACKS_MAX bytes are waiting.
ACK_DELAY = 0.01
HELD_ACKS_MAX = MAX_CHUNK

# After an interrupt that flushed the terminal, what follows it (the prompt) may go this far past the output window.
INTERRUPT_ALLOWANCE = MAX_CHUNK

# The burst a session's output may send at once while a build step runs, before WorkerOptions.busy_rate paces it:
# a screenful, a prompt, an echo are never held.
BUSY_BURST = 1024 * 1024

class Phase(enum.Enum):
    """Where a worker session is in its life. Transitions only as in `_NEXT`; anything else is our own bug
    (LocalProtocolError), while a message that arrives too late for the phase (input after the exit) is ignored."""

    NEW = "new"  # built, no process yet
    RUNNING = "running"  # the process runs: input, signals and resizes reach it
    EXITED = "exited"  # the main process exited; its output drains for up to DRAIN_GRACE
    ENDED = "ended"  # the exit was reported: nothing more is sent or done


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.RUNNING}),
    Phase.RUNNING: frozenset({Phase.EXITED, Phase.ENDED}),
    Phase.EXITED: frozenset({Phase.ENDED}),
    Phase.ENDED: frozenset(),
}


class _ProcessProtocol(protocol.ProcessProtocol):
    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.session._output(STREAM_ERR if childFD == 2 else STREAM_OUT, data)

    def processExited(self, reason: Failure) -> None:
        self.session._process_exited()

    def processEnded(self, reason: Failure) -> None:
        self.session._process_ended(reason)


@implementer(IPushProducer)
class _InputProducer:
    """Registered on the process's stdin: Twisted pauses it when the child does not read, and we then hold the
    input credit back, so the operator's side stops sending."""

    def __init__(self, session: WorkerSession) -> None:
        self.session = session

    def pauseProducing(self) -> None:
        self.session._input_paused = True

    def resumeProducing(self) -> None:
        self.session._input_paused = False
        self.session._release_input_credit()

    def stopProducing(self) -> None:
        self.session._input_paused = False


class WorkerSession:
    def __init__(
        self,
        reactor: ProcessReactor,
        session_id: str,
        request: OpenRequest,
        options: WorkerOptions,
        basedir: str,
        sink: SessionSink,
        on_closed: Callable[[WorkerSession], None] = lambda s: None,
        build_running: Callable[[], bool] = lambda: False,
    ) -> None:
        self.reactor = reactor
        self.id = session_id
        self.request = request
        self.options = options
        self.basedir = basedir
        self.sink = sink
        self.on_closed = on_closed
        # Whether a build step runs on this worker now: then output is paced (WorkerOptions.busy_rate).
        self.build_running = build_running
        self._pacer = Pacer(options.busy_rate, BUSY_BURST) if options.busy_rate > 0 else None
        self._paced: DelayedCall | None = None
        # A terminal keeps the owner's window; a bulk stream's window scales with it (slaveshell.vocabulary.flow).
        # That is its base: it grows with the link's bandwidth-delay product as far as the master grants (`grant`)
        # and the owner allows (WorkerOptions.max_window); slaveshell.vocabulary.windows.
        self.limits = output_limits(request.pty)
        base = (options.output_window if request.pty else
                max(1, self.limits.window * options.output_window // OUTPUT_WINDOW))
        self.window = TunedWindow(base, base, reactor.seconds)
        # What of the output goes deflated, once the master said it takes that (server.SessionHandle.remote_deflate).
        self.deflater: Deflater | None = None
        # The largest input message taken (and announced in the open reply, slave_side.server): a terminal's stays
        # small, a bulk stream's may be up to BULK_CHUNK (slaveshell.vocabulary.flow).
        self.input_limits = worker_input_limits(request.pty)
        # The master takes `flushed` (it said so with its grant): a Ctrl-C that flushes the terminal is told.
        self._tell_flushes = False
        self.transport: ProcessTransport | None = None
        self.pid: int | None = None
        self.cwd: str | None = None  # where the process started, once it has
        self.phase = Phase.NEW
        self._buffers = {STREAM_OUT: bytearray(), STREAM_ERR: bytearray()}
        self._flush_call: DelayedCall | None = None
        self._last_flush_size = 0
        self._last_flush_at = 0.0
        self._reading_paused = False
        self._timers: list[DelayedCall] = []
        self._input_paused = False
        # Input messages not yet acknowledged, in order; on a PTY, each waits for the hidden-input decision.
        self._held_input: list[Keystrokes] = []
        # Decided input_acks (nbytes, hidden) waiting to ride on the next output message (ACK_DELAY at most).
        self._ready_acks: list[tuple[int, bool]] = []
        self._ack_call: DelayedCall | None = None
        self._pty_fd: int | None = None
        self._judge = HiddenInputJudge(reactor, self._input_decided)
        # The last byte written to the PTY: whether a line is pending in the line discipline at EOF.
        self._last_input: bytes | None = None
        # The command's stdin pipe was widened for bulk input (`input`: slave_side.reading.widen_stdin).
        self._stdin_widened = False
        # Our own descriptor of the PTY's slave side, held until the process has exited (see start()).
        self._slave_hold: int | None = None
        # An interrupt flushed the terminal: `flushed` goes with the next acks released (the interrupt's).
        self._pending_flush = False
        # Output may go past the window until this much was sent in all (after an interrupt: `_flushed`).
        self._allowance_until = 0
        # The master said stdout's reader went away (`stdout_closed`): the command's stdout pipe is closed.
        self._stdout_closed = False

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Spawn the process (slave_side.spawn). Raises ProtocolError with an operator-facing message when it
        cannot."""
        proto = _ProcessProtocol(self)
        spawned = spawn(self.reactor, proto, self.request, self.options, self.basedir)
        self.transport, self._pty_fd, self._slave_hold = spawned.transport, spawned.pty_fd, spawned.slave_hold
        req, cwd = self.request, spawned.cwd
        self.cwd = cwd
        self._to(Phase.RUNNING)
        # Up to one message's worth of output per wake-up instead of Twisted's 8 KiB (slave_side.reading).
        read_in_larger_pieces(self.transport, lambda data: proto.childDataReceived(1, data), self.limits.chunk)
        self.transport.registerProducer(_InputProducer(self), True)
        self.pid = self.transport.pid
        # Never the command (logs are world-readable; it may hold a password) nor the directory (an operator's
        # `-C DIR` is a path they typed): the master's audit record has both.
        log.info("slaveshell session {sid}: started pid {pid} ({what}) for {who}", sid=self.id,
                 pid=self.pid, what="a command" if req.command else "a login shell",
                 who=visible(req.operator or "?"))
        return self.pid or 0

    # -- control from the master -----------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """The exit was reported (the master's heartbeat asks this)."""
        return self.phase is Phase.ENDED

    @property
    def running(self) -> bool:
        """The main process still runs, so input and EOF still mean something."""
        return self.phase is Phase.RUNNING

    def _to(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise LocalProtocolError(f"worker session {self.id}: no transition from {self.phase.value} to "
                                     f"{phase.value}")
        self.phase = phase

    def _running_process(self) -> ProcessTransport:
        if self.transport is None:
            raise LocalProtocolError(f"worker session {self.id} has no process in phase {self.phase.value}")
        return self.transport

    def input(self, data: bytes) -> None:
        if not self.running:
            return
        # Decided here, where the terminal's modes and the program's echo are seen (slave_side.echo): what a
        # prompt does not display is hidden, and the transcript keeps only its length.
        flushed = False
        if self._pty_fd is not None:
            modes = terminal_modes(self._pty_fd)
            self._write_to_pty(data)
            item = self._judge.delivered(data, modes)
            flushed = self._interrupts(data, modes) and item.hidden is not None and not self._input_paused
        else:
            transport = self._running_process()
            if len(data) > MAX_CHUNK and not self._stdin_widened:
                self._stdin_widened = True
                widen_stdin(transport)
            transport.write(data)
            item = Keystrokes(len(data), hidden=False)
        if data:
            self._last_input = data[-1:]
        self._held_input.append(item)
        if flushed:
            self._flushed()
        if not self._input_paused:
            self._release_input_credit()

    def _interrupts(self, data: bytes, modes: TermModes | None) -> bool:
        """Whether `data`, written with the terminal in `modes`, interrupts and flushes its output as the line
        discipline does (ISIG set, NOFLSH clear, the VINTR or VQUIT character in it): only told to a master that
        takes it."""
        if not self._tell_flushes or modes is None:
            return False
        lflag, cc = local_modes(modes), modes[6]
        if not lflag & termios.ISIG or lflag & termios.NOFLSH or not isinstance(cc, list):
            return False
        keys = {c for c in (cc[termios.VINTR], cc[termios.VQUIT]) if isinstance(c, bytes) and c != b"\0"}
        return any(key in data for key in keys)

    def _flushed(self) -> None:
        """The terminal flushed its output at an interrupt: so does this session with what it had not sent yet,
        and it tells the master at once, ahead of the interrupt's input_ack (sent right after, before any output
        that follows the interrupt), so that the operator's client can discard what was in flight before it, as a
        terminal would."""
        for buf in self._buffers.values():
            buf.clear()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._last_flush_size = 0  # what follows (the prompt) goes at once, not coalesced as the flood was
        self._send_acks()  # acks of input before the interrupt: they precede the mark
        self._pending_flush = True
        # The flood filled the window, and the client acknowledges what it discards only once the interrupt's ack
        # reached it: what follows the interrupt (the prompt) may go past the window by INTERRUPT_ALLOWANCE, within
        # the overshoot the master tolerates, instead of waiting a round trip for that credit.
        self._allowance_until = self.window.total_sent + INTERRUPT_ALLOWANCE
        self._resume_reading()

    def _write_to_pty(self, data: bytes) -> None:
        """Into the PTY in this reactor turn when nothing waits before it (slaveshell.plumbing.write_now: the keystroke
        reaches the program a reactor turn sooner); through Twisted's buffer otherwise, and for a test's
        stand-in transport."""
        transport = self._running_process()
        if isinstance(transport, twisted_process.PTYProcess):
            write_now(transport, [data], fd=self._pty_fd)
        else:
            transport.write(data)

    def _input_decided(self) -> None:
        if not self._input_paused:
            self._release_input_credit()

    def eof(self) -> None:
        if not self.running:
            return
        if self._pty_fd is not None:
            # A PTY has no half-close: end of input is VEOF, twice after a partial line (see eof_bytes).
            self._running_process().write(ptyutil.eof_bytes(self._pty_fd, self._last_input))
            self._last_input = None
        else:
            # Twisted gotcha: a writer whose producer is paused resumes the producer instead of closing once
            # its buffer drains, so stdin would never close. No more input can come: drop the producer first.
            self._running_process().unregisterProducer()
            self._input_paused = False
            self._release_input_credit()
            self._running_process().closeStdin()

    def stdout_closed(self) -> None:
        """Whoever read stdout went away (the operator's `| head -1`): our end of the command's stdout pipe is
        closed, so its next write meets EPIPE or SIGPIPE, as through OpenSSH (eow@openssh.com); what of it waited
        to be sent is dropped. stderr goes on. A terminal has no half-close: ignored there (the master closes
        such a session instead)."""
        if not self.running or self._pty_fd is not None or self.transport is None:
            return
        self._buffers[STREAM_OUT].clear()
        self._stdout_closed = True
        self.transport.closeChildFD(1)

    def resize(self, cols: int, rows: int) -> None:
        if self._pty_fd is not None and not self.ended:
            try:
                ptyutil.set_window_size(self._pty_fd, cols, rows)
            except OSError as e:
                log.warn("slaveshell session {sid}: resize failed: {e}", sid=self.id, e=e)

    def signal(self, signum: int) -> None:
        if self.ended or self.pid is None:
            return
        # On a PTY, as a keyboard signal would: to the foreground job; otherwise to the command's group.
        group = ptyutil.foreground_group(self._pty_fd) if self._pty_fd is not None else None
        self._kill_groups(signum, [group or self.pid])

    def ack(self, nbytes: int) -> None:
        self.window.acked(nbytes)
        if self.window.is_open and self._reading_paused:
            self._resume_reading()

    def grant(self, nbytes: int) -> None:
        """The master lets this session's output window grow to `nbytes` (within the owner's max_window), and
        takes `flushed`."""
        self.window.grant(min(nbytes, self.options.max_window))
        self._tell_flushes = True
        if self.window.is_open and self._reading_paused:
            self._resume_reading()

    def window_report(self) -> str:
        """The output window's story, for the log: its base, cap, peak, the sizes it chose and the round trip."""
        w = self.window
        rtt = f"{w.min_rtt * 1000:.1f} ms" if w.min_rtt is not None else "-"
        sizes = ",".join(str(n // 1024) for n in w.history)
        deflated = self.deflater.report() if self.deflater is not None else ""
        packed = f"; {deflated}" if deflated else ""
        return (f"base {w.base // 1024} KiB, cap {w.cap // 1024} KiB, peak {w.peak // 1024} KiB, min rtt {rtt}, "
                f"sizes (KiB) [{sizes}]{packed}")

    def close(self, why: str = "closed by the master") -> None:
        """End the session: HUP, then TERM, then KILL to its process groups."""
        if self.ended or self.pid is None:
            return
        log.info("slaveshell session {sid}: closing ({why})", sid=self.id, why=why)
        self._kill_groups(signal.SIGHUP)
        self._timers.append(self.reactor.callLater(TERM_AFTER, self._kill_groups, signal.SIGTERM))
        self._timers.append(self.reactor.callLater(KILL_AFTER, self._kill_groups, signal.SIGKILL))
        # Make sure EOF can be seen, whatever the credit or the pacing says.
        self._stop_pacing()
        self._resume_reading()

    # -- process events ----------------------------------------------------------------------------

    def _output(self, stream: int, data: bytes) -> None:
        if stream == STREAM_OUT and self._stdout_closed:
            return  # read before the close took effect: nobody reads it
        if self._pty_fd is not None:
            self._judge.output(data)
        buf = self._buffers[stream]
        buf += data
        if len(buf) >= self.limits.chunk:
            self._flush()
        elif self._flush_call is None:
            # One PB call per 8 KiB read costs CPU all along the chain: coalesce. Interactive output (an echo,
            # a prompt) goes at once; a stream that is flowing in bulk waits a moment to fill a larger message.
            now = self.reactor.seconds()
            if self._last_flush_size >= BULK_BYTES and now - self._last_flush_at < BULK_GAP:
                self._flush_call = self.reactor.callLater(COALESCE_DELAY, self._flush)
            else:
                self._flush()

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._last_flush_size = sum(len(b) for b in self._buffers.values())
        self._last_flush_at = self.reactor.seconds()
        for stream, buf in self._buffers.items():
            if not buf:
                continue
            data = bytes(buf)
            buf.clear()
            for piece in chunks(data, self.limits.chunk):
                self.window.sent(len(piece))
                self.sink.output(stream, piece, self._take_acks())
        self._send_acks()  # no output to ride on (an empty flush at the end)
        if not self.window.is_open and self.running and self.window.total_sent >= self._allowance_until:
            self._pause_reading()
        self._pace(self._last_flush_size)

    def _pace(self, nbytes: int) -> None:
        """While a build step runs here, hold reading once the burst is spent, until the rate allows more."""
        if self._pacer is None or not nbytes or not self.running or not self.build_running():
            return
        wait = self._pacer.spend(nbytes, self.reactor.seconds())
        if wait > 0 and self._paced is None:
            self._pause_reading()
            self._paced = self.reactor.callLater(wait, self._pace_over)

    def _stop_pacing(self) -> None:
        paced, self._paced = self._paced, None
        if paced is not None and paced.active():
            paced.cancel()

    def _pace_over(self) -> None:
        self._paced = None
        if self.window.is_open:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._paced is not None and self.running:
            return  # _pace_over resumes it
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _release_input_credit(self) -> None:
        if self.ended:
            return
        # In order, up to the first message whose hidden-input decision is still pending.
        at_once = self._pty_fd is None
        while self._held_input and self._held_input[0].hidden is not None:
            item = self._held_input.pop(0)
            self._ready_acks.append((item.nbytes, item.hidden is True))
            # Hidden input has no echo to wait for.
            at_once = at_once or item.hidden is True
        if not self._ready_acks:
            return
        if self._pending_flush:  # the interrupt's ack: right behind the mark, ahead of any later output
            self._pending_flush = False
            self.sink.flushed()
            at_once = True
        if at_once or sum(n for n, _ in self._ready_acks) >= HELD_ACKS_MAX:
            self._send_acks()
        elif self._ack_call is None:
            self._ack_call = self.reactor.callLater(ACK_DELAY, self._send_acks)

    def _take_acks(self) -> list[tuple[int, bool]]:
        """The decided input_acks, taken to ride on an output message."""
        acks, self._ready_acks = self._ready_acks, []
        if self._ack_call is not None:
            if self._ack_call.active():
                self._ack_call.cancel()
            self._ack_call = None
        return acks

    def _send_acks(self) -> None:
        """The decided input_acks, each as its own message (no output came to carry them)."""
        for nbytes, hidden in self._take_acks():
            self.sink.input_ack(nbytes, hidden)

    def _release_slave(self) -> None:
        hold, self._slave_hold = self._slave_hold, None
        if hold is not None:
            os.close(hold)

    def _process_exited(self) -> None:
        if self.phase is not Phase.RUNNING:
            return  # processEnded came first (a test double, or a process that was never seen exiting)
        self._to(Phase.EXITED)
        # Now the master may see the end of the terminal (once background jobs let go of it too).
        self._release_slave()
        # Pitfall: a paused PTY reader never sees EOF, and processEnded waits for it.
        self._resume_reading()
        self._timers.append(self.reactor.callLater(DRAIN_GRACE, self._force_close_streams))

    def _force_close_streams(self) -> None:
        if not self.ended and self.transport is not None:
            log.info("slaveshell session {sid}: output still open after exit; closing it", sid=self.id)
            self._kill_groups(signal.SIGHUP)
            self.transport.loseConnection()

    def _process_ended(self, reason: Failure) -> None:
        self._release_slave()
        if self.ended:
            return
        self._flush()
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        if isinstance(value, error.ProcessDone):
            code, sig = 0, None
        if sig is not None:
            code = None
        self._to(Phase.ENDED)
        self._judge.close()
        self._take_acks()
        self._stop_pacing()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        log.info("slaveshell session {sid}: ended, code {code} signal {sig}; output window: {window}", sid=self.id,
                 code=code, sig=sig, window=self.window_report())
        self.sink.exit(ExitStatus(code, sig, ""))
        self.on_closed(self)

    def _kill_groups(self, signum: int, groups: list[int] | None = None) -> None:
        """Signal the given process groups; by default the foreground job's and the session leader's
        (pgid == pid after setsid)."""
        if self.ended or self.pid is None:
            return
        if groups is None:
            fg = ptyutil.foreground_group(self._pty_fd) if self._pty_fd is not None else None
            groups = [g for g in (fg, self.pid) if g]
        for group in dict.fromkeys(groups):
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                if group == self.pid:
                    # Just started, the process has not yet made its own group (setsid runs in the child after
                    # the fork): the group does not exist, so the process itself is signalled (never the
                    # worker's group, which it is still in).
                    self._kill_process(signum)
            except PermissionError:
                pass

    def _kill_process(self, signum: int) -> None:
        assert self.pid is not None
        try:
            os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

