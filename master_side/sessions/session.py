"""One session as the master sees it: a relay between a worker session and the operators viewing it.

The session talks to its peers through slaveshell.vocabulary.protocol's typed vocabulary: the worker's session is a
`SessionControl` (master_side.sessions.worker_link.WorkerPeer: PB and lean calls underneath), each viewer's end an
`OperatorSink` (a door's: master_side.shell_socket.viewer_sink, master_side.www.terminal_ws). It imports nothing from
twisted.spread. What it is told comes checked by whoever read it off a wire: the doors decode an operator's
messages into typed calls on its `View` (master_side.operators.terms); the worker's calls reach `worker_*` through
`WorkerSink` (master_side.sessions.worker_sink), and the values the worker sends are checked here, against the session's
state (its windows, the input it waits to hear about). What it tells the audit trail is typed here, beside it:
`Recorder` (the transcript: master_side.audit.recorder) and `ViewerEvents` (the index's viewer events).

Viewers: the *owner* (who opened the session, or reattached it) drives flow control and the window size;
*joiners* may type too; *watchers* only see. Output credit passes through from the owner: the master
acknowledges the worker's output only as the owner acknowledges it, so the master holds at most one window of
it. Other viewers get a bounded buffer each and are dropped with a notice when they fall behind: a slow viewer
never slows the session. With no owner (detached) the master acknowledges at once and keeps a short buffer of
recent output, which every new viewer sees first.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from twisted.logger import Logger

from master_side.sessions.clocks import WINDOW_TOLERANCE, SessionTimers
from master_side.sessions.model import (
    NOWHERE,
    TRANSITIONS,
    IllegalTransition,
    LateEvent,
    ReadOnly,
    Role,
    State,
    Viewer,
    new_session_id,
)
from master_side.sessions.moderation import DROPPED, HELD, MODERATE_END, MODERATE_START, Moderation
from master_side.sessions.notices import NoticeBudget
from slaveshell.vocabulary.deflate import Deflater
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.flow import CreditWindow, input_limits, output_limits
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import (
    INPUT_WINDOW,
    MAX_CHUNK,
    SIGNAL_NAMES,
    STREAM_ERR,
    STREAM_OUT,
    ExitStatus,
    OpenRequest,
    OperatorSink,
    ProtocolError,
    SessionControl,
    check_bytes,
    check_int,
    check_stream,
    notice_bytes,
)
from slaveshell.vocabulary.windows import WindowBudget, allowed


@runtime_checkable
class FlushingSink(Protocol):
    """A viewer's end that can say an input_ack's input flushed the terminal (the framed door's): its client then
    discards the output that was in flight before it, as a terminal does at an interrupt."""

    def flushed_input_ack(self, nbytes: int, hidden: bool) -> None: ...


# Role and State are the session's vocabulary too (tests and the service import them from here).
__all__ = ["MasterSession", "Role", "State", "Viewer", "new_session_id"]

log = Logger()

# What a viewer other than the owner may have unacknowledged before it is dropped as too slow (at least twice
# the session's output window, so that a watcher as fast as the owner keeps up with a bulk stream).
VIEWER_BUFFER = 2 * 1024 * 1024
# Recent output kept for viewers who join or reattach: enough to redraw a screen or two.
RECENT_BYTES = 64 * 1024
# Input messages that may wait for the worker's input_ack, per session. The window counts bytes, and each message
# costs the master about 150 bytes besides its own (its entry here, its call to the worker): a client sending its
# window (2.75 MiB with the default grant) as 1-byte messages would make it hold ~400 MB. A typist whose remote
# stopped reading needs hours to type this many keystrokes; a paste, a pipe, a script go in large reads.
MAX_PENDING_INPUT = 16 * 1024


class Recorder(Protocol):
    """What the relay tells the audit trail (master_side.audit.recorder implements it)."""

    # `recorded`, when given, is called once the output is recorded: at once, or later (a bulk stream's chunk
    # written off the reactor's thread); the relay serves the output only then.
    def output(self, data: bytes, stream: int = STREAM_OUT, recorded: Callable[[], None] | None = None) -> None: ...
    # flush False: the caller records an output right after, which writes this input's event with its own (one
    # write for a keystroke and its echo), still before anything is relayed. `recorded`, when given, is called
    # once the input is recorded: at once, or later (a bulk stream's input written off the reactor's thread).
    def input(self, data: bytes, hidden: bool, flush: bool = True,
              recorded: Callable[[], None] | None = None) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    def marker(self, text: str) -> None: ...
    def flush(self) -> None: ...
    def end(self, session: MasterSession) -> None: ...


class NullRecorder:
    def flush(self) -> None:
        pass

    def output(self, data: bytes, stream: int = STREAM_OUT, recorded: Callable[[], None] | None = None) -> None:
        if recorded is not None:
            recorded()

    def input(self, data: bytes, hidden: bool, flush: bool = True,
              recorded: Callable[[], None] | None = None) -> None:
        if recorded is not None:
            recorded()

    def resize(self, cols: int, rows: int) -> None:
        pass

    def marker(self, text: str) -> None:
        pass

    def end(self, session: MasterSession) -> None:
        pass


class ViewerEvents(Protocol):
    """What the relay tells the audit index of a session's viewers (master_side.audit.trail.AuditTrail)."""

    def viewer_joined(self, session: MasterSession, viewer: Viewer) -> None: ...
    def viewer_left(self, session: MasterSession, viewer: Viewer, why: str) -> None: ...
    def viewer_attached(self, session: MasterSession, viewer: Viewer) -> None: ...
    def viewer_detached(self, session: MasterSession, viewer: Viewer, why: str) -> None: ...
    # A four-eyes session's events (master_side.sessions.moderation's kinds), `who` the event's operator.
    def moderation(self, session: MasterSession, kind: str, who: Identity, detail: str) -> None: ...


class NoViewerEvents:
    """A session nobody audits (a session made outside `OperatorAPI.open`)."""

    def viewer_joined(self, session: MasterSession, viewer: Viewer) -> None:
        pass

    def viewer_left(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        pass

    def viewer_attached(self, session: MasterSession, viewer: Viewer) -> None:
        pass

    def viewer_detached(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        pass

    def moderation(self, session: MasterSession, kind: str, who: Identity, detail: str) -> None:
        pass


class MasterSession(SessionTimers):
    def __init__(self, request: OpenRequest, identity: Identity, on_end: Callable[[MasterSession], None],
                 session_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.id = session_id or new_session_id()
        self.request = request
        self.worker = request.worker
        self.identity = identity
        self.clock = clock
        self.started = clock()
        self.last_activity = self.started
        # When the worker last said anything about this session (output, acks, a heartbeat answer).
        self.worker_seen = self.started
        self.state = State.OPENING
        self.status: ExitStatus | None = None
        self.to_worker: SessionControl = NOWHERE
        self.viewers: list[Viewer] = []
        self.owner: Viewer | None = None
        # The worker's largest message and window (slaveshell.vocabulary.flow): larger for a bulk stream (no terminal).
        self.limits = output_limits(request.pty)
        self.viewer_buffer = max(VIEWER_BUFFER, 2 * self.limits.window)
        self.output_window = CreditWindow(self.limits.window)  # the worker's output the master has not acked
        # The worker was told it may send output deflated (master_side.sessions.worker_link.WorkerPeer).
        self.deflated_output = False
        # The worker's session takes stdout_closed (its open answer said so: master_side.sessions.worker_link); and
        # whether it was told (once: the owner's repeats go nowhere).
        self.stdout_closes = False
        self.stdout_closed_told = False
        # The owner whose stdout_closed waits for a moderator (four eyes: it reaches the worker only when input
        # does, at the release; `_stdout_close_released`), None when none waits.
        self._stdout_close_held: Viewer | None = None
        # The largest input message the operators may send (slaveshell.vocabulary.flow.input_limits): a terminal's
        # stays small; a bulk stream's is larger once the worker said it takes that (`grant_windows`).
        self.input_limits = input_limits(request.pty)
        # The windows granted (slaveshell.vocabulary.windows): the worker's output may grow to output_grant, the
        # owner's input to input_grant; the base windows until grant_windows, and for peers that do not tune.
        self.output_grant = self.limits.window
        self.input_grant = INPUT_WINDOW
        self._budget: WindowBudget | None = None
        self.output_peak = 0  # the most output the worker had unacknowledged (for the log)
        self.input_peak = 0  # the most input a viewer had unacknowledged (for the log)
        self.input_largest = 0  # the largest input message relayed (for the log)
        # The worker said its next input_ack's input flushed the terminal (`worker_flushed`).
        self._flush_next = False
        self._owed = 0  # credit the owner returned that the master has not yet passed to the worker
        self.bytes_in = 0
        self.bytes_out = 0
        self.recent = bytearray()
        self.size = (request.cols, request.rows)
        self.detached_at: float | None = None
        # Why the master is ending the session (timeouts, kill): kept for the audit trail.
        self.close_reason: str | None = None
        # When the master first asked the worker to end the session (close_overdue's clock).
        self.closing_since: float | None = None
        # Notices about viewers joining, bounded per minute (a flood of watchers must not flood the owner).
        self.join_notices = NoticeBudget(clock)
        # For each limit ("idle", "running"), the start of the period already warned about.
        self._warned: dict[str, float] = {}
        # The build this session stepped into (HoldForShell): {"build_id", "builder", "build_number"}.
        self.build: dict[str, object] | None = None
        self.run_id: str | None = None  # the fleet run this session is part of (master_side.fleet)
        self._on_end = on_end
        self.recorder: Recorder = NullRecorder()
        # Joins, leaves, attaches and detaches, for the audit index (OperatorAPI.open: the trail).
        self.viewer_events: ViewerEvents = NoViewerEvents()
        # Input sent to the worker and not yet acknowledged, with who sent it: recorded once the worker says
        # whether the terminal was hiding it, and acknowledged to its sender.
        self._pending_input: collections.deque[tuple[Viewer, bytes]] = collections.deque()
        # When each pending input message was sent, and the shortest time one took to be acknowledged: the worker
        # link's round trip as input sees it (WorkerPeer deflates input on a slow link: slaveshell.vocabulary.deflate).
        self._input_sent_at: collections.deque[float] = collections.deque()
        self.input_min_rtt: float | None = None
        self.input_deflater: Deflater | None = None  # which input messages go deflated, once the worker takes them
        # A four-eyes session's moderators and held input (`hold_input`); None for any other session.
        self.moderation: Moderation | None = None

    def __repr__(self) -> str:
        return f"<MasterSession {self.id} {self.identity.user}@{self.worker} {self.state.value}>"

    def _enter(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"session {self.id}: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def live(self) -> bool:
        return self.state in (State.ATTACHED, State.DETACHED)

    def grant_windows(self, budget: WindowBudget, worker_tunes: bool, worker_input: int = MAX_CHUNK) -> None:
        """Take this session's windows from the master's budget (given back at its end): the worker's output
        window when the worker tunes it (its open reply said so), and the owner's input window; and the input
        messages the operators may send, from the largest the worker said it takes (`worker_input`, its open
        reply's max_input: slaveshell.vocabulary.flow.announced_input)."""
        if self._budget is not None:
            return
        self._budget = budget
        self.input_limits = input_limits(self.request.pty, worker_input)
        if worker_tunes:
            self.output_grant = budget.take(self.limits.window)
        self.input_grant = budget.take(INPUT_WINDOW)

    def start(self, to_owner: OperatorSink, to_worker: SessionControl) -> Viewer:
        self.to_worker = to_worker
        owner = Viewer(self.identity, Role.OWNER, to_owner)
        owner.input_grant = self.input_grant
        self.viewers.append(owner)
        self.owner = owner
        self._enter(State.ATTACHED)
        return owner

    # -- four eyes -----------------------------------------------------------------------------

    def hold_input(self, moderated_by: tuple[str | int, ...],
                   wanted: Callable[[str], None] = lambda why: None) -> None:
        """Make this a four-eyes session (master_side.sessions.moderation): input held until a moderator
        watches; `wanted` is told each time it waits for one, why. Called once it has started, before anyone
        else can view it."""
        moderation = self.moderation = Moderation(moderated_by, self.clock, wanted)
        self.recorder.marker(f"moderated: {moderation.held_notice()}")
        self.viewer_events.moderation(self, HELD, self.identity, f"no moderator watches (moderated_by: "
                                                                  f"{moderation.groups})")
        self.notice(f"this session is moderated: {moderation.held_notice()}; output flows meanwhile")
        moderation.wanted("opened")

    def _held(self, viewer: Viewer, nbytes: int = 0, eof: bool = False, signal: bool = False) -> bool:
        """Whether `viewer`'s input is held now (counted, and its sender told once per held span)."""
        moderation = self.moderation
        if moderation is None or moderation.passes(viewer):
            return False
        if moderation.drop(viewer, nbytes, eof, signal):
            self.notice(f"{moderation.held_notice()}: what you type is not sent", viewer)
        return True

    def _report_dropped(self) -> None:
        """What was dropped since the input was last held: a marker and an event per sender."""
        if self.moderation is None:
            return
        for sender, dropped in self.moderation.take_dropped():
            self.recorder.marker(f"held: {sender.identity.user}: {dropped.text()}")
            self.viewer_events.moderation(self, DROPPED, sender.identity, dropped.text())

    def _moderator_joined(self, viewer: Viewer) -> None:
        moderation = self.moderation
        assert moderation is not None
        others = len(moderation.moderators)
        was_held = moderation.start(viewer)
        self._report_dropped()
        self.recorder.marker(f"moderator: {viewer.identity.user}" + (" (input released)" if was_held else ""))
        self.viewer_events.moderation(self, MODERATE_START, viewer.identity,
                                      "input released" if was_held else f"beside {others} other moderators")
        if was_held:
            self._moderation_notice(f"{viewer.identity.user} moderates this session: input reaches the worker")
        self._stdout_close_released()

    def _moderator_left(self, viewer: Viewer, why: str) -> None:
        moderation = self.moderation
        if moderation is None:
            return
        spent = moderation.stop(viewer)
        if spent is None:
            return
        self._report_dropped()
        self.viewer_events.moderation(self, MODERATE_END, viewer.identity, f"moderated {spent:.1f} s ({why})")
        if moderation.held and self.live:
            self.recorder.marker(f"moderated: {viewer.identity.user} left ({why}): {moderation.held_notice()}")
            self.viewer_events.moderation(self, HELD, self.identity,
                                          f"the last moderator ({viewer.identity.user}) left")
            self._moderation_notice(f"the last moderator ({viewer.identity.user}) left: "
                                    f"{moderation.held_notice()}")
            moderation.wanted(f"the last moderator ({viewer.identity.user}) left")

    def _moderation_notice(self, text: str) -> None:
        """Input released or held again, told to every viewer: a few a minute (a moderator coming and going must
        not flood the operator's terminal; a held keystroke is told anyway, once per held span)."""
        assert self.moderation is not None
        may, left_out = self.moderation.notices.take()
        if may:
            self._notice_all(text + (f" ({left_out} more changes not shown)" if left_out else ""))

    # -- viewers -------------------------------------------------------------------------------

    def add_viewer(self, identity: Identity, role: Role, sink: OperatorSink, moderator: bool = False) -> Viewer:
        """A new viewer: it first sees the recent output (the current screen, as far as it goes), then the
        live stream. An OWNER can only attach to a detached session. `moderator`: a watcher the operator API
        admitted as a moderator of this four-eyes session."""
        if not self.live:
            raise ProtocolError(f"session {self.id} has ended")
        if role is Role.OWNER and self.owner is not None:
            raise ProtocolError(f"session {self.id} is attached by {self.owner.identity.user}; "
                                "join or watch it instead")
        viewer = Viewer(identity, role, sink)
        self.viewers.append(viewer)
        if role is Role.OWNER:
            self.owner = viewer
            viewer.input_grant = self.input_grant
            self._enter(State.ATTACHED)
            self.detached_at = None
            self.recorder.marker(f"attach: {identity.user}")
            self.viewer_events.viewer_attached(self, viewer)
        else:
            self.recorder.marker(f"join: {identity.user} ({role.value})")
            self.viewer_events.viewer_joined(self, viewer)
            may, left_out = self.join_notices.take()
            if may:
                self._notice_all(f"{identity.user} is now {'watching' if role is Role.WATCH else 'sharing'} "
                                 "this session" + (f" ({left_out} more joins not shown)" if left_out else ""),
                                 but=viewer)
        if self.recent:
            self._send_own(viewer, 1, bytes(self.recent))
        if moderator and role is Role.WATCH and self.moderation is not None:
            self._moderator_joined(viewer)
        return viewer

    def remove_viewer(self, viewer: Viewer, why: str) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.remove(viewer)
        if viewer is self.owner:
            self._detach(why)
        elif self.live:
            self.recorder.marker(f"leave: {viewer.identity.user} ({why})")
            self.viewer_events.viewer_left(self, viewer, why)
            self._moderator_left(viewer, why)

    def _detach(self, why: str) -> None:
        owner = self.owner
        assert owner is not None
        self.owner = None
        if self._stdout_close_held is owner:
            self._stdout_close_held = None  # the reader that went away was that client's: a new one may read
        # Nobody will acknowledge what the owner had in flight: return that credit to the worker now.
        if owner.window.in_flight and self.live:
            self._ack_worker(owner.window.in_flight)
        if self.live:
            self._enter(State.DETACHED)
            self.detached_at = self.clock()
            self.recorder.marker(f"detach: {owner.identity.user} ({why})")
            self.viewer_events.viewer_detached(self, owner, why)
            log.info("session {sid}: detached ({why})", sid=self.id, why=visible(why))

    # -- from a viewer (values checked by its door) ---------------------------------------------

    def _writer(self, viewer: Viewer, what: str) -> None:
        if viewer.role is Role.WATCH:
            raise ReadOnly(f"watchers cannot {what}: this view is read-only")

    def viewer_input(self, viewer: Viewer, data: bytes) -> None:
        self._writer(viewer, "type")
        check_bytes(data, "input", self.input_limits.chunk)
        if not self.live or viewer not in self.viewers:
            raise LateEvent(f"input for session {self.id} after the view ended")
        if viewer.input_window.in_flight > allowed(viewer.input_grant, INPUT_WINDOW, WINDOW_TOLERANCE):
            raise ProtocolError("input sent past the flow-control window")
        if len(self._pending_input) >= MAX_PENDING_INPUT:
            raise ProtocolError(f"input sent in too many small messages ({MAX_PENDING_INPUT} wait for the worker)")
        if self._held(viewer, nbytes=len(data)):
            viewer.sink.input_ack(len(data), False)  # its credit back at once: dropped, never sent or recorded
            return
        viewer.input_window.sent(len(data))
        self.input_peak = max(self.input_peak, viewer.input_window.in_flight)
        self.input_largest = max(self.input_largest, len(data))
        self.bytes_in += len(data)
        self.last_activity = self.clock()
        self._pending_input.append((viewer, data))
        self._input_sent_at.append(self.last_activity)
        self.to_worker.input(data)

    def viewer_eof(self, viewer: Viewer) -> None:
        self._writer(viewer, "send EOF")
        if not self.live:
            raise LateEvent(f"EOF for session {self.id} after it ended")
        if self._held(viewer, eof=True):
            return
        self.to_worker.eof()

    def viewer_stdout_closed(self, viewer: Viewer) -> None:
        """Whoever read the viewer's stdout went away (`buildbot-shell -T w1 -- yes | head -1`). The owner's: the
        worker closes the command's stdout, which meets EPIPE or SIGPIPE at its next write, as through OpenSSH
        (its eow@openssh.com); a worker that cannot, or a session on a terminal, is closed as before (the operator
        may always end their own session). Anyone else leaves (nobody sees its output).

        In a four-eyes session whose input is held, the close waits for a moderator, as the owner's input does: it
        is a message of the client's stream into the session (OpenSSH's eow is a channel request, in order with the
        channel's data, EOF and signals), and what it does on the worker (the command's next write fails, most
        programs end) is what a signal does, which is held. It is not dropped as a keystroke is (nothing was typed
        blind: the reader stays gone, and the session could only stall once its output is no longer read): it
        reaches the worker at the release, before anything sent after it, unless the session ends or its owner
        detaches (the reader was that client's) first."""
        if not self.live:
            raise LateEvent(f"stdout closed for session {self.id} after it ended")
        if viewer is not self.owner:
            self.remove_viewer(viewer, "left (its output's reader went away)")
            return
        if self.stdout_closed_told or self._stdout_close_held is viewer:
            return
        if self.request.pty or not self.stdout_closes:
            self.stdout_closed_told = True
            self.viewer_close(viewer)
            return
        moderation = self.moderation
        if moderation is not None and not moderation.passes(viewer):
            self._stdout_close_held = viewer
            self.recorder.marker(f"stdout closed: {viewer.identity.user}'s reader of it went away (held: it "
                                 "reaches the worker once a moderator watches)")
            self.notice(f"{moderation.held_notice()}: the close of your output reaches the worker once one does",
                        viewer)
            return
        self._close_stdout(viewer)

    def _close_stdout(self, viewer: Viewer) -> None:
        self.stdout_closed_told = True
        self.recorder.marker(f"stdout closed: {viewer.identity.user}'s reader of it went away")
        self.to_worker.stdout_closed()

    def _stdout_close_released(self) -> None:
        """A moderator watches: a stdout_closed that waited for one reaches the worker (its owner still attached)."""
        viewer = self._stdout_close_held
        if viewer is None or self.moderation is None or not self.moderation.passes(viewer):
            return
        self._stdout_close_held = None
        if viewer is self.owner and self.live and not self.stdout_closed_told:
            self._close_stdout(viewer)

    def viewer_resize(self, viewer: Viewer, cols: int, rows: int) -> None:
        # The owner's terminal sets the size; the others see it as it is.
        if self.live and viewer is self.owner and (cols, rows) != self.size:
            self.size = (cols, rows)
            self.recorder.resize(cols, rows)
            self.to_worker.resize(cols, rows)

    def viewer_signal(self, viewer: Viewer, signum: int) -> None:
        self._writer(viewer, "send signals")
        if not self.live:
            raise LateEvent(f"signal for session {self.id} after it ended")
        if self._held(viewer, signal=True):
            return
        self.recorder.marker(f"signal {SIGNAL_NAMES[signum]} sent by {viewer.identity.user}")
        self.to_worker.signal(signum)

    def viewer_ack(self, viewer: Viewer, nbytes: int) -> None:
        own = min(nbytes, viewer.own)
        viewer.own -= own
        nbytes -= own
        viewer.window.acked(nbytes)
        if viewer is self.owner and nbytes and self.live:
            self._ack_worker(nbytes, held=True)

    def viewer_close(self, viewer: Viewer) -> None:
        """`~.`: the owner ends the session (as ssh does); anyone else leaves it."""
        if viewer is self.owner and self.live:
            log.info("session {sid}: closed by {who}", sid=self.id, who=visible(viewer.identity))
            self.close(f"closed by {viewer.identity.user}")
        else:
            self.remove_viewer(viewer, "left")

    def viewer_detach(self, viewer: Viewer) -> None:
        if viewer is not self.owner:
            self.remove_viewer(viewer, "left")
            return
        self.remove_viewer(viewer, "detached by the operator")

    def viewer_lost(self, viewer: Viewer) -> None:
        """A viewer's connection went away (terminal closed, SSH to the master host dropped)."""
        self.remove_viewer(viewer, "connection lost")

    def close(self, reason: str) -> None:
        """End the session on the worker (HUP, then TERM, then KILL); its exit follows from there."""
        if not self.live:
            return
        if self.close_reason is None:
            self.close_reason = reason
        if self.closing_since is None:
            self.closing_since = self.clock()
        self.to_worker.close()

    # -- from the worker -----------------------------------------------------------------------

    def worker_output(self, stream: object, data: object, acks: object = ()) -> None:
        """The worker's output, with the input_acks (`acks`: [nbytes, hidden] pairs) that precede it: they are
        handled first (their input recorded before this output), and acknowledged to the viewers after it, so
        that a keystroke's echo reaches the operator first."""
        stream = check_stream(stream)
        data = check_bytes(data, "output", self.limits.chunk)
        checked = self._check_acks(acks)
        self.output_room()
        # The keystrokes' events go into the file with the output's, in one write (Recorder.input's flush).
        typed = [self._input_acked(nbytes, hidden, flush=False) for nbytes, hidden in checked]
        self.output_window.sent(len(data))
        self.output_peak = max(self.output_peak, self.output_window.in_flight)
        self.bytes_out += len(data)
        self.last_activity = self.worker_seen = self.clock()

        def recorded() -> None:
            self._serve_output(stream, data, typed)

        # In the file before anyone sees it: served here, or once a bulk stream's chunk written off the reactor's
        # thread is (its worker's credit comes back only then, so the window bounds what is being written).
        self.recorder.output(data, stream, recorded=recorded)

    def _serve_output(self, stream: int, data: bytes, typed: list[tuple[Viewer, int, bool, bool]]) -> None:
        """Recorded output to the viewers, then the input_acks that rode on it."""
        self.recent += data[-RECENT_BYTES:]
        if len(self.recent) > RECENT_BYTES:
            del self.recent[: len(self.recent) - RECENT_BYTES]
        # Whole, as the worker sent it: each viewer's sink cuts it to what its client takes (a framed client
        # that declared max_output takes a bulk message as one frame).
        for viewer in list(self.viewers):
            if viewer is not self.owner and viewer.window.in_flight + viewer.own + len(data) > self.viewer_buffer:
                self._drop_slow(viewer)
                continue
            viewer.window.sent(len(data))
            viewer.sink.output(stream, data)
        if self.owner is None:
            self._ack_worker(len(data))
        for viewer, nbytes, hidden, flushed in typed:
            self._tell_input_ack(viewer, nbytes, hidden, flushed)

    def output_room(self) -> None:
        """That the worker may send output now: LateEvent after the session ended, ProtocolError past the window
        (checked before a deflated message is inflated, too: master_side.sessions.worker_sink)."""
        if not self.live:
            raise LateEvent(f"output for session {self.id} after it ended")
        if self.output_window.in_flight > allowed(self.output_grant, self.limits.window, WINDOW_TOLERANCE):
            raise ProtocolError("output sent past the flow-control window")

    def worker_input_ack(self, nbytes: object, hidden: object) -> None:
        """The worker delivered the oldest pending input message (with no output to carry its ack): recorded, and
        its credit returned to its sender once recorded (a bulk stream's may be written off the reactor's thread
        meanwhile: Recorder.input's `recorded`)."""
        nbytes = check_int(nbytes, "input ack", 0, 2**40)
        if not isinstance(hidden, bool):
            raise ProtocolError("input ack: hidden must be a boolean")
        viewer, data = self._take_pending(nbytes)
        flushed, self._flush_next = self._flush_next, False

        def recorded() -> None:
            viewer.input_window.acked(nbytes)
            self._tell_input_ack(viewer, nbytes, hidden, flushed)

        self.recorder.input(data, hidden, recorded=recorded)

    def worker_flushed(self) -> None:
        """The next input_ack's input interrupted the worker's terminal, which flushed its output."""
        if not self.live:
            raise LateEvent(f"flushed for session {self.id} after it ended")
        if not self._pending_input:
            raise ProtocolError("flushed: no input is waiting for its ack")
        self._flush_next = True

    def _tell_input_ack(self, viewer: Viewer, nbytes: int, hidden: bool, flushed: bool) -> None:
        """Acknowledge input to its sender; the one that flushed the terminal (`flushed`: `worker_flushed` said so
        before its ack) as such, where its end can say so."""
        if viewer not in self.viewers:
            return
        sink = viewer.sink
        if flushed and isinstance(sink, FlushingSink):
            sink.flushed_input_ack(nbytes, hidden)
        else:
            sink.input_ack(nbytes, hidden)

    def _check_acks(self, acks: object) -> list[tuple[int, bool]]:
        """The input_acks carried by an output message, checked (at most one per input message pending)."""
        if acks == ():
            return []
        if not isinstance(acks, list) or len(acks) > len(self._pending_input):
            raise ProtocolError("output: acks must be a list of [nbytes, hidden], one per input message sent")
        checked = []
        for ack in acks:
            if not isinstance(ack, list) or len(ack) != 2 or not isinstance(ack[1], bool):
                raise ProtocolError("output: each ack must be [nbytes, hidden]")
            checked.append((check_int(ack[0], "input ack", 0, 2**40), ack[1]))
        return checked

    def _take_pending(self, nbytes: int) -> tuple[Viewer, bytes]:
        """The oldest pending input message, which the worker says it delivered (`nbytes` checked against it)."""
        if not self._pending_input or len(self._pending_input[0][1]) != nbytes:
            raise ProtocolError("input ack does not match the input sent")
        self.worker_seen = now = self.clock()
        if self._input_sent_at:
            rtt = now - self._input_sent_at.popleft()
            self.input_min_rtt = rtt if self.input_min_rtt is None else min(self.input_min_rtt, rtt)
        return self._pending_input.popleft()

    def _input_acked(self, nbytes: int, hidden: bool, flush: bool = True) -> tuple[Viewer, int, bool, bool]:
        """The worker delivered the oldest pending input message: record it (redacted when hidden; `flush` as
        Recorder.input's) and return its sender's credit; the caller acknowledges it to that viewer."""
        viewer, data = self._take_pending(nbytes)
        flushed, self._flush_next = self._flush_next, False
        self.recorder.input(data, hidden, flush)
        viewer.input_window.acked(nbytes)
        return viewer, nbytes, hidden, flushed

    def worker_exit(self, code: object, signal: object, reason: object) -> None:
        self.end(ExitStatus.from_wire(code, signal, reason))

    def abort(self, reason: str) -> None:
        """The session is over without an exit status (worker lost, protocol error, shutdown)."""
        self.end(ExitStatus(reason=reason))

    # -- end -----------------------------------------------------------------------------------

    def end(self, status: ExitStatus) -> None:
        if self.state is State.ENDED:
            return  # ending is idempotent: a close, a stall and the worker's exit may all end it
        self._enter(State.ENDED)
        self.status = status
        if self.moderation is not None:
            for moderator in list(self.moderation.moderators):
                self._moderator_left(moderator, "the session ended")
            self._report_dropped()
        self.recorder.end(self)
        log.info("session {sid}: ended (code {code}, signal {sig}{why}); windows: output {out}", sid=self.id,
                 code=status.code, sig=status.signal, why=f", {visible(status.reason)}" if status.reason else "",
                 out=self.window_report())
        if self._budget is not None:
            self._budget.give(self.output_grant, self.limits.window)
            self._budget.give(self.input_grant, INPUT_WINDOW)
            self._budget = None
        for viewer in self.viewers:
            viewer.sink.exit(status)
        self.viewers.clear()
        self.owner = None
        self.to_worker = NOWHERE
        self._on_end(self)

    def window_report(self) -> str:
        """The windows granted and the most used of each, and the input messages taken and relayed, in KiB (for
        the log, and bench/)."""
        deflated = self.input_deflater.report() if self.input_deflater is not None else ""
        packed = f", {deflated}" if deflated else ""
        return (f"granted {self.output_grant // 1024} KiB, peak {self.output_peak // 1024} KiB in flight; input "
                f"granted {self.input_grant // 1024} KiB, peak {self.input_peak // 1024} KiB in flight, messages "
                f"up to {self.input_limits.chunk // 1024} KiB, largest {self.input_largest // 1024} KiB{packed}")

    @property
    def end_reason(self) -> str:
        status = self.status
        if status is None:
            return "unknown"
        if status.signal is not None:
            text = f"signal {status.signal}"
        elif status.code is not None:
            text = f"exit {status.code}"
        else:
            return status.reason or "lost"
        return f"{self.close_reason} ({text})" if self.close_reason else text

    # -- helpers -------------------------------------------------------------------------------

    def _ack_worker(self, nbytes: int, held: bool = False) -> None:
        """Return `nbytes` of output credit to the worker. `held` (the owner's acknowledgements): gathered until
        they make one of the worker's largest messages, or until the owner has caught up with everything it was
        sent, so a bulk stream costs one `ack` per message on the worker's link rather than one per piece the
        client acknowledges (the credit stays within the worker's window either way: nothing can wait on it)."""
        self._owed = min(self._owed + nbytes, self.output_window.in_flight)
        owner = self.owner
        if held and owner is not None and self._owed < self.limits.chunk and owner.window.in_flight:
            return
        nbytes, self._owed = self._owed, 0
        if nbytes:
            self.output_window.acked(nbytes)
            self.to_worker.ack(nbytes)

    def _send_own(self, viewer: Viewer, stream: int, data: bytes) -> None:
        viewer.own += len(data)
        viewer.sink.output(stream, data)

    def notice(self, text: str, viewer: Viewer | None = None) -> None:
        """A line from the master itself on the viewers' terminals (stderr), outside the worker's credit."""
        data = notice_bytes(text)  # shown through `visible`: notices name users and workers and quote peers
        for v in [viewer] if viewer is not None else list(self.viewers):
            self._send_own(v, STREAM_ERR, data)

    def _notice_all(self, text: str, but: Viewer | None = None) -> None:
        for viewer in list(self.viewers):
            if viewer is not but:
                self.notice(text, viewer)

    def _drop_slow(self, viewer: Viewer) -> None:
        self.notice("you fell too far behind this session and were dropped from it", viewer)
        viewer.sink.exit(ExitStatus(reason=f"dropped from session {self.id}: too slow to follow it"))
        self.remove_viewer(viewer, "too slow")

