"""The operator's end of a session: connects to the master's socket, opens a session and relays the local
standard streams to it, with flow control both ways."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, process
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from . import escape as esc
from .clock import DelayedCall
from .display import visible
from .flow import CreditWindow, chunks
from .protocol import (
    INPUT_WINDOW,
    MAX_CHUNK,
    REFUSED_PREFIX,
    STREAM_ERR,
    ExitStatus,
    OpenRequest,
    ProtocolError,
    Role,
    WireControl,
    check_bytes,
    check_int,
    check_stream,
)
from .remote import RemotePeer
from .terminal import window_size

log = Logger()

# A second SIGINT/SIGTERM/SIGHUP this soon after the first (seconds) gives up on the remote command at once.
GIVE_UP_WITHIN = 1.0
# The same signal again this soon (seconds) is the same request delivered twice, not a second one: timeout(1)
# signals its child and then the child's process group.
DUPLICATE_WITHIN = 0.1
# After forwarding SIGTERM or SIGHUP, how long the remote command has to end (seconds) before the client closes
# the session and exits anyway: whoever sent the signal wants this process gone, not waiting forever.
SIGNAL_GRACE = 5.0
_FORWARDED: dict[int, str] = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}
_ROLES = frozenset(role.value for role in Role)
_NOT_SAVED = object()


class ClientError(Exception):
    """Could not reach the master or open the session; the message is for the operator."""


@defer.inlineCallbacks
def connect(reactor: Any, socket_path: str) -> Any:
    """The master's root object over its UNIX socket."""
    if not os.path.exists(socket_path):
        raise ClientError(f"no master socket at {socket_path} (is the master running with ShellService? "
                          "give its basedir with --master DIR, or --socket PATH)")
    factory = _ClientFactory()
    # reactor.connectUNIX rather than an endpoint: twisted.internet.endpoints imports TLS and asyncio, a
    # third of the client's start-up, for nothing on a local socket.
    reactor.connectUNIX(socket_path, factory, timeout=10)
    try:
        root = yield factory.getRootObject()
    except Exception as e:
        if factory.refusal is not None:
            raise ClientError(f"the master refused the connection: {factory.refusal}") from None
        reason = getattr(e, "osError", None) or e
        raise ClientError(f"cannot connect to the master at {socket_path}: {_oserror_text(reason)}") from None
    return root


class _RefusalAwareBroker(pb.Broker):
    """A client broker that recognises the master's refusal line (REFUSED_PREFIX) in place of PB."""

    _head: bytes | None = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            super().dataReceived(data)
            return
        head = self._head + data
        if not (head.startswith(REFUSED_PREFIX) or REFUSED_PREFIX.startswith(head)):
            self._head = None
            super().dataReceived(head)
            return
        self._head = head[:1024]
        if b"\n" in head or len(head) >= 1024:
            line = head[len(REFUSED_PREFIX):].split(b"\n", 1)[0][:500]
            # Shown on the operator's terminal: printable ASCII only.
            refusal = "".join(c if " " <= c <= "~" else "?" for c in line.decode("ascii", "replace"))
            if isinstance(self.factory, _ClientFactory):
                self.factory.refusal = refusal
            transport: Any = self.transport
            transport.loseConnection()


class _ClientFactory(pb.PBClientFactory):
    protocol = _RefusalAwareBroker
    refusal: str | None = None


def _oserror_text(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, int):
        return os.strerror(error)
    text = str(error)
    return text.rstrip(".") or type(error).__name__


class ClientSink(pb.Referenceable):
    """What the master calls with the session's output and end."""

    def __init__(self, client: ShellClient) -> None:
        self.client = client

    def remote_output(self, stream: object, data: object) -> None:
        self.client.output(check_stream(stream), check_bytes(data, "output"))

    def remote_input_ack(self, nbytes: object, hidden: object = False) -> None:
        self.client.input_ack(check_int(nbytes, "input ack", 0, 2**40))

    def remote_exit(self, code: object, signal: object, reason: object) -> None:
        self.client.exit(ExitStatus.from_wire(code, signal, reason))

    def remote_waiting(self, text: object) -> None:
        if not isinstance(text, str):
            raise ProtocolError("waiting: the text must be a string")
        # One line from the master, shown outside the session's stream: printable characters only.
        self.client.waiting("".join(c for c in text[:300] if c.isprintable()))


@implementer(IPushProducer)
class _StdoutProducer:
    """Registered on our stdout writer: while the terminal or pipe behind stdout cannot keep up, output
    credit is held back, so the worker pauses the PTY instead of our memory growing."""

    def __init__(self, client: ShellClient) -> None:
        self.client = client

    def pauseProducing(self) -> None:
        self.client._stdout_paused = True

    def resumeProducing(self) -> None:
        self.client._stdout_paused = False
        self.client._send_ack()

    def stopProducing(self) -> None:
        pass


class ShellClient:
    """One session, driven from the operator's standard streams.

    `interactive` means a PTY session on a local terminal: escapes are active, stdin EOF is a hangup, and
    window changes are forwarded. Otherwise stdin EOF reaches the remote command as EOF.
    """

    def __init__(
        self,
        reactor: Any,
        request: OpenRequest,
        interactive: bool,
        escape_char: bytes | None = b"~",
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
        attach: tuple[str, str] | None = None,
        suspend: Callable[[], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.request = request
        self.interactive = interactive
        # (session id, "attach" | "watch") to join a live session instead of opening one.
        self.attach = attach
        self.worker = request.worker
        self.role = Role.OWNER
        # What to tell the operator at the end instead of the usual line (detached, left).
        self.farewell: str | None = None
        # Stops this process with the local terminal restored; returns once continued (RawTerminal.suspend).
        self.suspend = suspend
        self.escapes = esc.EscapeParser(escape_char if interactive else None, detach=True,
                                        release=request.build is not None,
                                        suspend=self.program if suspend is not None else None)
        self.root: pb.RemoteReference | None = None
        self.fds = {"in": stdin_fd, "out": stdout_fd, "err": stderr_fd}
        self.done: defer.Deferred[ExitStatus] = defer.Deferred()
        self.status: ExitStatus | None = None
        self.session: pb.RemoteReference | None = None
        self._remote: RemotePeer | None = None
        # The session's messages towards the master, as typed calls (slaveshell.protocol.OperatorControl).
        self.control = WireControl(self._call)
        self.session_id = ""
        self.input_window = CreditWindow(INPUT_WINDOW)
        self._unacked = 0
        self._stdout_paused = False
        self._stdin: process.ProcessReader | None = None
        self._writers: dict[str, Any] = {}
        self._size = (request.cols, request.rows)
        self._old_winch: Any = None
        self._signalled_at: float | None = None
        self._last_signal: int | None = None
        self._signal_timer: DelayedCall | None = None
        # Typed while the master waits before opening (a build not held yet): sent once the session is open.
        self._typed_ahead: bytes = b""
        self._opening: defer.Deferred[Any] | None = None
        self._old_sigint: Any = _NOT_SAVED

    @property
    def program(self) -> str:
        return "slaveshell" if self.attach else "buildbot-shell"

    # -- start ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def run(self, socket_path: str) -> Any:
        """Open the session and relay until it ends; fires with its ExitStatus (never fails)."""
        # Writers first: output may follow the open reply at once.
        for name in ("out", "err"):
            self._writers[name] = process.ProcessWriter(self.reactor, self, name, self.fds[name])
        self._writers["out"].registerProducer(_StdoutProducer(self), True)
        try:
            root = yield connect(self.reactor, socket_path)
            self.root = root
            if self.attach is None:
                self._opening = root.callRemote("open", ClientSink(self), self.request.to_wire())
                reply = yield self._opening
            else:
                reply = yield root.callRemote("attach", ClientSink(self), *self.attach)
        except ClientError as e:
            reply = {"ok": False, "error": str(e)}
        except pb.Error as e:
            reply = {"ok": False, "error": f"the master refused: {e}"}
        except Exception as e:
            reply = {"ok": False, "error": f"lost the master while opening: {_oserror_text(e)}"}
        if not isinstance(reply, dict) or not reply.get("ok") or not isinstance(
                reply.get("session"), pb.RemoteReference) or reply.get("role", "owner") not in _ROLES:
            error = reply.get("error") if isinstance(reply, dict) else None
            self.finish(ExitStatus(reason=str(error or "the master sent a malformed reply")))
        else:
            self.session = reply["session"]
            self.session_id = str(reply.get("id", ""))
            self.worker = str(reply.get("worker", self.worker))
            self.role = Role.from_wire(reply.get("role", "owner"))
            size = reply.get("size")
            if isinstance(size, list) and len(size) == 2:
                self._size = (int(size[0]), int(size[1]))
            root.notifyOnDisconnect(
                lambda _ref: self.finish(ExitStatus(reason="connection to the master lost")))
            self._start_input()
        status = yield self.done
        return status

    def _start_input(self) -> None:
        self._restore_sigint()
        if self.status is not None:  # ended before we got here
            return
        if self._stdin is None:
            self._stdin = process.ProcessReader(self.reactor, self, "in", self.fds["in"])
        if self._typed_ahead:
            typed, self._typed_ahead = self._typed_ahead, b""
            self.childDataReceived("in", typed)
            if self.input_window.is_open and self._stdin is not None:
                self._stdin.startReading()
        if self.interactive:
            self._old_winch = signal.signal(signal.SIGWINCH, self._on_winch)
            # The size may have changed between measuring it and the session being open.
            self._window_changed()

    # -- events from the local side (the Process-like interface ProcessReader/Writer expect) ----------

    def childDataReceived(self, name: str, data: bytes) -> None:
        if self.session is None:
            self._typed_while_waiting(data)
            return
        for action in self.escapes.feed(data):
            if isinstance(action, esc.Send):
                # A watcher's keystrokes go nowhere (the master would refuse them anyway).
                if self.role is not Role.WATCH:
                    self._send_input(action.data)
            elif isinstance(action, esc.Help):
                self.write_err(action.text.encode())
            elif isinstance(action, esc.Terminate):
                if self.role is Role.OWNER:
                    # As ssh: `~.` ends the session, says so, and exits 255.
                    self.farewell = f"Connection to {self.worker} closed."
                    self._last_call("close", ExitStatus(reason="ended with ~."))
                else:
                    self.farewell = f"Left session {self.session_id} on {self.worker}."
                    self._last_call("close", ExitStatus(code=0))
                return
            elif isinstance(action, esc.Release):
                self._release_build()
            elif isinstance(action, esc.Suspend) and self.suspend is not None:
                # Written at once (not through the writer): the process stops before the reactor runs again.
                with contextlib.suppress(OSError):
                    os.write(self.fds["err"], (self.escapes.escape or b"") +
                             f"^Z [suspend {self.program}]\r\n".encode())
                self.suspend()
                self.resumed()
            elif isinstance(action, esc.Detach):
                self.farewell = (f"Detached from session {self.session_id} on {self.worker}; resume it with: "
                                 f"slaveshell attach {self.session_id}" if self.role is Role.OWNER else
                                 f"Left session {self.session_id} on {self.worker}.")
                self._last_call("detach", ExitStatus(code=0))
                return

    def childConnectionLost(self, name: str, reason: object) -> None:
        if self.status is not None:
            self._writers.pop(name, None)
            self._maybe_done()
            return
        if name == "in" and self.session is None:
            self._stdin = None
            self._stop_opening(ExitStatus(reason="the terminal went away while waiting for the session to open"))
            return
        if name == "in":
            self._stdin = None
            if self.interactive:
                self.control.close()  # the terminal went away: a hangup, not an EOF
            else:
                self.control.eof()
        elif name == "out":
            # Whoever read our stdout is gone (a closed pipe): nobody will see more output.
            self._writers.pop(name, None)
            self.control.close()

    def resumed(self) -> None:
        """Continued after a stop (SIGCONT): the window may have changed meanwhile, and SIGWINCH is not
        delivered to a stopped process, so the size is sent again whatever we last sent."""
        if self.interactive:
            self._window_changed(force=True)

    def signalled(self, signum: int) -> None:
        """SIGINT, SIGTERM or SIGHUP reached this process (called in the reactor thread).

        Command mode, and SIGINT in any mode: forwarded to the remote command (on a PTY, its foreground job, as
        Ctrl-C there would), and the client then ends with the remote status; after SIGTERM or SIGHUP the
        remote side has SIGNAL_GRACE seconds. With the local terminal in raw mode (the signal came from
        kill(1), not the keyboard), as ssh exits there: SIGTERM ends the session (the remote terminal hangs
        up, as sshd does when ssh goes) and SIGHUP detaches it (the operator's terminal is gone; the session
        waits for `slaveshell attach` for the master's detach grace). A second signal within GIVE_UP_WITHIN
        seconds closes the session and exits at once. Never raises.
        """
        name = _FORWARDED.get(signum, str(signum))
        now = self.reactor.seconds()
        since = now - self._signalled_at if self._signalled_at is not None else None
        if since is not None and since < DUPLICATE_WITHIN and signum == self._last_signal:
            return
        again = since is not None and since < GIVE_UP_WITHIN
        self._signalled_at, self._last_signal = now, signum
        if self.status is not None:
            if again:  # still flushing output nobody reads: stop waiting
                self._writers.clear()
                self._maybe_done()
            return
        if self.session is None:
            self._stop_opening(ExitStatus(reason=f"interrupted by SIG{name} before the session opened"))
            return
        if again:
            self._give_up(f"second SIG{name}: closed the session without waiting for the remote command")
            return
        if self.interactive and signum == signal.SIGTERM and self.role is Role.OWNER:
            self.farewell = f"Connection to {self.worker} closed (SIGTERM)."
            self._last_call("close", ExitStatus(reason="ended by SIGTERM"))
        elif self.interactive and signum != signal.SIGINT:
            self.farewell = (f"Detached from session {self.session_id} on {self.worker} (SIG{name}); resume it "
                             f"with: slaveshell attach {self.session_id}" if self.role is Role.OWNER else
                             f"Left session {self.session_id} on {self.worker} (SIG{name}).")
            self._last_call("detach", ExitStatus(reason=f"detached by SIG{name}"))
        elif self.role is not Role.OWNER:
            # A watcher's or co-operator's signal is its own business: it leaves, the session goes on.
            self.farewell = f"Left session {self.session_id} on {self.worker}."
            self._last_call("close", ExitStatus(code=128 + signum))
        else:
            self.control.signal(signum)
            if signum != signal.SIGINT and self._signal_timer is None:
                self._signal_timer = self.reactor.callLater(
                    SIGNAL_GRACE, self._give_up,
                    f"the remote command did not end within {SIGNAL_GRACE:g} s of SIG{name}; session closed")

    def _give_up(self, why: str) -> None:
        """Close the session without waiting for the remote command, and end with 255 and `why`."""
        self._signal_timer = None
        if self.status is not None:
            return
        self._last_call("close", ExitStatus(reason=why), timeout=1)

    # -- events from the master ----------------------------------------------------------------

    def output(self, stream: int, data: bytes) -> None:
        writer = self._writers.get("err" if stream == STREAM_ERR else "out")
        if writer is not None:
            writer.write(data)
        self._unacked += len(data)
        if not self._stdout_paused:
            self._send_ack()

    def waiting(self, text: str) -> None:
        """The master waits before it opens the session (`--build` on a build not held yet) and says why: show
        the line; in a raw terminal, read the keyboard meanwhile, so Ctrl-C (a byte there) stops waiting.
        Elsewhere Ctrl-C is SIGINT, which stops the client."""
        if self.session is not None or self.status is not None:
            return
        self.write_err((text + ("\r\n" if self.interactive else "\n")).encode())
        if self.interactive and self._stdin is None:
            self._stdin = process.ProcessReader(self.reactor, self, "in", self.fds["in"])
        elif not self.interactive and self._old_sigint is _NOT_SAVED:
            self._old_sigint = signal.signal(
                signal.SIGINT, lambda signum, frame: self.reactor.callFromThread(self._stop_waiting))

    def _stop_waiting(self) -> None:
        what = f"build {self.request.build} to be held" if self.request.build is not None else "the session"
        self._stop_opening(ExitStatus(reason=f"stopped waiting for {what}"))

    def _restore_sigint(self) -> None:
        if self._old_sigint is not _NOT_SAVED:
            # None: a handler not set from Python, which cannot be put back; the default is the nearest.
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._old_sigint is None else self._old_sigint)
            self._old_sigint = _NOT_SAVED

    def _typed_while_waiting(self, data: bytes) -> None:
        if b"\x03" in data:
            self._stop_waiting()
            return
        self._typed_ahead += data
        if len(self._typed_ahead) >= INPUT_WINDOW and self._stdin is not None:
            self._stdin.stopReading()  # the rest waits in the terminal's own buffer

    def _stop_opening(self, status: ExitStatus) -> None:
        """Stop waiting for the open reply: the master sees the connection go and forgets the request."""
        self._restore_sigint()
        self.finish(status)
        if self._opening is not None and not self._opening.called:
            self._opening.cancel()

    def input_ack(self, nbytes: int, hidden: bool = False) -> None:
        try:
            self.input_window.acked(nbytes)
        except ProtocolError as e:
            log.warn("master sent a bad input ack: {e}", e=visible(e))
            return
        if self.input_window.is_open and self._stdin is not None:
            self._stdin.startReading()

    def exit(self, status: ExitStatus) -> None:
        """The master's last message (slaveshell.protocol.SessionSink.exit)."""
        self.finish(status)

    def finish(self, status: ExitStatus) -> None:
        """The session is over: flush what we have to write, then fire `done`."""
        if self.status is not None:
            return
        self.status = status
        if self._signal_timer is not None and self._signal_timer.active():
            self._signal_timer.cancel()
        self._signal_timer = None
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
        if self._stdin is not None:
            self._stdin.stopReading()
        for writer in list(self._writers.values()):
            writer.unregisterProducer()
            writer.loseConnection()  # flushes first; childConnectionLost follows
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.status is not None and not self._writers and not self.done.called:
            self.done.callback(self.status)

    # -- helpers -------------------------------------------------------------------------------

    def write_err(self, data: bytes) -> None:
        writer = self._writers.get("err")
        if writer is not None:
            writer.write(data)

    def _send_input(self, data: bytes) -> None:
        for piece in chunks(data, MAX_CHUNK):
            self.input_window.sent(len(piece))
            self.control.input(piece)
        if not self.input_window.is_open and self._stdin is not None:
            self._stdin.stopReading()

    def _send_ack(self) -> None:
        if self._unacked and self.status is None:
            n, self._unacked = self._unacked, 0
            self.control.ack(n)

    def _on_winch(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes: hand the work to the reactor.
        self.reactor.callFromThread(self._window_changed)

    def _window_changed(self, force: bool = False) -> None:
        size = window_size(self.fds["in"]) or window_size(self.fds["out"])
        if size is not None and (force or size != self._size) and self.status is None and self.role is Role.OWNER:
            self._size = size
            self.control.resize(*size)

    def _release_build(self) -> None:
        if self.root is None or self.request.build is None:
            return

        def told(result: object) -> None:
            text = result if isinstance(result, str) else f"release failed: {getattr(result, 'value', result)}"
            self.write_err(f"\r\n[{visible(text)}]\r\n".encode())

        d = RemotePeer(self.root, on_lost=self._master_lost, on_refused=self._call_refused).call(
            "release", self.request.build)
        d.addBoth(told)

    def _last_call(self, method: str, status: ExitStatus, timeout: float = 5) -> None:
        """Make a call that must reach the master (it decides the session's fate), then finish. Without the
        wait, the process could exit with the call still in a buffer, and the master would see only a lost
        connection (a detach) instead of, say, `~.`."""
        if self._stdin is not None:
            self._stdin.stopReading()
        if self.session is None or self.status is not None:
            self.finish(status)
            return
        d = self._peer(self.session).call(method)
        d.addTimeout(timeout, self.reactor)
        d.addBoth(lambda _: self.finish(status))

    def _call(self, method: str, *args: object) -> None:
        if self.session is None or self.status is not None:
            return
        self._peer(self.session).send(method, *args)

    def _peer(self, ref: pb.RemoteReference) -> RemotePeer:
        if self._remote is None or self._remote.ref is not ref:
            self._remote = RemotePeer(ref, on_lost=self._master_lost, on_refused=self._call_refused)
        return self._remote

    def _master_lost(self) -> None:
        self.finish(ExitStatus(reason="connection to the master lost"))

    def _call_refused(self, method: str, message: str) -> None:
        log.warn("the master refused {method}: {e}", method=method, e=visible(message))
