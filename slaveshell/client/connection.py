"""The operator's end of the framed hop (slaveshell.vocabulary.framing), standard library only: the connection to the
master's socket and the one-thread event loop the client runs on (selectors, timers on one clock, signals through a
wake-up pipe).

Nothing here imports Twisted: `buildbot-shell` starts, connects and sends its first byte in about the time
Python itself takes to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import selectors
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import Protocol

from slaveshell.vocabulary import framing
from slaveshell.vocabulary.flow import BULK_CHUNK
from slaveshell.vocabulary.framing import Control, Frame, FrameType
from slaveshell.vocabulary.protocol import OpenRequest

# Bytes read from the socket at once: two of a bulk stream's frames (framing.MAX_OUTPUT), so that a frame
# seldom spans two reads (its bytes would be gathered in the decoder first: a copy more).
READ_SIZE = 2 * framing.MAX_OUTPUT
# The kernel's send buffer a client asks for when it sends bulk data (a transfer's chunks, what is piped into `-T`):
# its default, about 208 KiB (net.core.wmem_default), is less than one bulk message, which then leaves in pieces,
# the rest copied into the connection's queue.
BULK_SEND_BUFFER = 1024 * 1024
# How long sending the open with its passed descriptors may wait for the socket (seconds).
SEND_FDS_TIMEOUT = 10.0
HEADER_SIZE = framing.HEADER.size


class Cancellable(Protocol):
    """A timer, as `EventLoop.call_later` returns it."""

    def cancel(self) -> None: ...
    def active(self) -> bool: ...


class EventLoop(Protocol):
    """What the client needs of `Loop` (tests give a fake one, with a fake clock)."""

    def seconds(self) -> float: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancellable: ...
    def watch(self, fd: int, event: int, callback: Callable[[], None] | None) -> None: ...
    def stop(self) -> None: ...


class Link(Protocol):
    """What the client needs of `Connection`."""

    def next_id(self) -> int: ...
    def send(self, frame: bytes, payload: bytes = b"") -> None: ...
    def later(self, frame: bytes) -> None: ...
    def control(self, op: framing.Op, **fields: object) -> None: ...
    def send_fds(self, frame: bytes, fds: list[int]) -> None: ...


class PendingCalls:
    """A client's calls in flight on `link`: `call` sends one with a fresh id and keeps its callback,
    `answered` runs it with the master's ANSWER (an answer to no call is ignored), `lost` runs every one left with
    None (the connection is gone)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._waiting: dict[int, Callable[[framing.Control | None], None]] = {}

    def call(self, op: framing.Op, on_answer: Callable[[framing.Control | None], None], **fields: object) -> None:
        self.call_passing(op, on_answer, [], **fields)

    def call_passing(self, op: framing.Op, on_answer: Callable[[framing.Control | None], None], fds: list[int],
                     **fields: object) -> None:
        """A call whose frame carries descriptors `fds` (SCM_RIGHTS: a `-T` open's stdin and stdout)."""
        call_id = self.link.next_id()
        frame = framing.control(op, id=call_id, **fields)
        self._waiting[call_id] = on_answer
        if fds:
            self.link.send_fds(frame, fds)
        else:
            self.link.send(frame)

    def expect(self, call_id: int, on_answer: Callable[[framing.Control | None], None]) -> None:
        """Take the answer to call `call_id`, sent on this link before (`ask_ahead`), with `on_answer`."""
        self._waiting[call_id] = on_answer

    def answered(self, message: framing.Control) -> None:
        callback = self._waiting.pop(message.call_id or 0, None)
        if callback is not None:
            callback(message)

    def lost(self) -> None:
        for callback in list(self._waiting.values()):
            callback(None)
        self._waiting.clear()


# $SLAVESHELL_PASS_STDIO=0: a `-T` session's stdin and stdout stay with the client (`passable`).
PASS_STDIO_ENV = "SLAVESHELL_PASS_STDIO"
# The descriptors of the streams an open may pass.
STDIO_FDS = {"in": 0, "out": 1}


def session_call(request: OpenRequest, attach: tuple[str, str] | None, passing: tuple[str, ...] = ()
                 ) -> tuple[framing.Op, dict[str, object]]:
    """The call that opens a session (`attach` None) or joins a live one (session id, "attach" | "watch"): its op
    and fields, which declare the output frames this client takes and the streams whose descriptors go with an
    open (`passing`: `passable`)."""
    if attach is None:
        fields: dict[str, object] = {"request": request.to_wire(), "max_output": framing.MAX_OUTPUT}
        if passing:
            fields["stdio"] = list(passing)
        return framing.Op.OPEN, fields
    return framing.Op.ATTACH, {"session": attach[0], "mode": attach[1], "max_output": framing.MAX_OUTPUT}


def ask_ahead(link: Link, request: OpenRequest, attach: tuple[str, str] | None,
              passing: tuple[str, ...] = ()) -> int | None:
    """Send the session's call (`session_call`) on `link` now, as soon as the socket is connected, with the
    descriptors of the streams in `passing` (stdin 0, stdout 1): the master opens the session while the client
    loads the rest of itself. The call's id, for `PendingCalls.expect`; None when the call is over
    framing.MAX_CONTROL (then the client's own start refuses it, with the reason)."""
    op, fields = session_call(request, attach, passing)
    call_id = link.next_id()
    try:
        frame = framing.control(op, id=call_id, **fields)
    except ValueError:
        return None
    if passing and attach is None:
        fds = [STDIO_FDS[name] for name in passing]
        for fd in fds:
            widen_pipe(fd, BULK_CHUNK)  # the master reads and writes a bulk message at once
        link.send_fds(frame, fds)
    else:
        link.send(frame)
    return call_id


def widen_pipe(fd: int, size: int) -> None:
    """When `fd` (stdin) is a pipe, let it hold `size` bytes (F_SETPIPE_SZ, Linux; a pipe holds 64 KiB by default),
    so that one read takes a whole bulk input message from a writer that keeps up, rather than 64 KiB at a time.
    Nothing is done where the system refuses it (an unprivileged user over /proc/sys/fs/pipe-max-size or its pipe
    quota) or has no such call: reads are then only smaller."""
    getpipe, setpipe = getattr(fcntl, "F_GETPIPE_SZ", None), getattr(fcntl, "F_SETPIPE_SZ", None)
    if getpipe is None or setpipe is None:
        return
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, getpipe) < size:
            fcntl.fcntl(fd, setpipe, size)


def passable(request: OpenRequest, fds: tuple[int, int] = (0, 1), stderr: int = 2) -> tuple[str, ...]:
    """The streams of a `-T` session whose descriptors the master may read and write itself (passed with the open:
    master_side.shell_socket.passed): stdin and stdout when each is a pipe or a stream socket, never a terminal, a
    file or anything else (those stay with the client). None with a terminal, or when $SLAVESHELL_PASS_STDIO is
    0. Stdout stays with the client too when stderr is the same pipe (`2>&1 | ...`): the client writes both in the
    order they came, where the master would write stdout a hop ahead of stderr (docs/architecture.md)."""
    if request.pty or os.environ.get(PASS_STDIO_ENV, "1") == "0":
        return ()
    names = []
    for name, fd in zip(("in", "out"), fds, strict=True):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if name == "out" and _same_file(st, stderr):
            continue
        if stat.S_ISFIFO(st.st_mode) or (stat.S_ISSOCK(st.st_mode) and not_a_stream(fd) is None):
            names.append(name)
    return tuple(names)


def _same_file(st: os.stat_result, fd: int) -> bool:
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def not_a_stream(fd: int) -> str | None:
    """What socket `fd` is when it cannot carry a session's stdin or stdout, or None (a stream socket, or not a
    socket): a listening socket gives and takes no bytes and never reads as ended (a session on it would wait
    forever); a socket of datagrams or packets drops the rest of a message longer than a read, and refuses a
    write longer than it takes."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        with socket.socket(fileno=os.dup(fd)) as sock:
            kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return None
    if listening:
        return "a listening socket"
    if kind != socket.SOCK_STREAM:
        return "a datagram socket" if kind == socket.SOCK_DGRAM else "a packet socket"
    return None


class HopError(Exception):
    """Could not reach the master, or it broke the hop; the message is for the operator."""


class Interrupted(Exception):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP stopped an operator's command while it waited for the master or copied
    files: the command ends with 130 and one line."""


def os_error_text(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).rstrip(".") or type(error).__name__


def widen_send(sock: socket.socket) -> None:
    """Ask for BULK_SEND_BUFFER bytes of send buffer on `sock`; nothing changes where the kernel refuses (its
    net.core.wmem_max caps the size anyway). What the client sends is still bounded by its credit window."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BULK_SEND_BUFFER)


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    """A connected socket to the master at `path` (blocking, with `timeout` s for the connect), the magic
    already sent. HopError with the operator's line when that fails."""
    if not os.path.exists(path):
        raise HopError(f"no master socket at {path} (is the master running with ShellService? give its basedir "
                       "with --master DIR, or --socket PATH)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(framing.MAGIC)
        sock.setblocking(False)
    except OSError as e:
        # A master that refused the connection (its bounds) wrote one line and closed before our first bytes.
        head = _queued(sock)
        sock.close()
        if head.startswith(framing.REFUSED_PREFIX):
            raise HopError(f"the master refused the connection: {_refusal(head)}") from None
        raise HopError(f"cannot connect to the master at {path}: {os_error_text(e)}") from None
    return sock


def _queued(sock: socket.socket) -> bytes:
    """What the master sent before it closed, as far as the kernel still holds it (b"" when nothing)."""
    try:
        sock.setblocking(False)
        return sock.recv(1024)
    except OSError:
        return b""


class Connection:
    """The framed connection, non-blocking: `send` queues a frame, `flush` writes what the socket takes,
    `receive` reads and returns the frames in (raises HopError when the master refused the connection, closed
    it, or broke the framing)."""

    def __init__(self, sock: socket.socket, read_size: int = READ_SIZE, max_output: int = framing.MAX_CHUNK) -> None:
        self.sock = sock
        # Reads land in this one buffer (recv_into): no allocation of read_size bytes per read, which a PTY
        # session's many small reads paid for; the decoder copies out what it keeps.
        self._inbox = bytearray(read_size)
        self._read_size = read_size
        # receive_views: the bytes of the last read's incomplete frame, in the buffer (moved to its start next).
        self._kept_from = self._kept_to = 0
        self.out = bytearray()
        # `max_output`: the largest STDOUT/STDERR frame taken, as declared to the master (framing.max_output).
        self.decoder = framing.Decoder(refused=frozenset({FrameType.INPUT}), max_control=framing.MAX_ANSWER,
                                       max_output=max_output)
        self.greeted = False
        self.closed = False
        self._head = b""
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        """Queue `frame` (with `payload`: a frame's header, then its payload, unjoined) and write what the socket
        takes. When nothing waits before it, header and payload go to the kernel in one sendmsg(2), and only what
        it does not take is copied into the queue (a file's chunk is not copied in Python)."""
        if self.closed:
            return
        if self.out:
            self.flush()  # what waits goes first
            if self.out:
                self.out += frame
                self.out += payload
                return
        try:
            sent = self.sock.sendmsg([frame, payload]) if payload else self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.closed = True  # receive() reports it
            return
        if sent < len(frame):
            self.out += memoryview(frame)[sent:]
            self.out += payload
        elif sent < len(frame) + len(payload):
            self.out += memoryview(payload)[sent - len(frame):]

    def send_fds(self, frame: bytes, fds: list[int]) -> None:
        """Send `frame` with descriptors `fds` (SCM_RIGHTS), after what waits; the descriptors go with its first
        byte. Sent whole before returning (at most SEND_FDS_TIMEOUT s: it is one small frame, at the open); a
        failure closes the connection (receive() reports it)."""
        if self.closed:
            return
        self.sock.settimeout(SEND_FDS_TIMEOUT)
        try:
            if self.out:
                self.sock.sendall(self.out)
                self.out.clear()
            sent = socket.send_fds(self.sock, [frame], fds)
            if sent < len(frame):
                self.sock.sendall(memoryview(frame)[sent:])
        except OSError:
            self.closed = True
        finally:
            self.sock.setblocking(False)

    def later(self, frame: bytes) -> None:
        """Queue `frame` behind what waits, for the loop's next `flush` (the frames queued until then go in one
        write: a transfer's many small frames)."""
        if not self.closed:
            self.out += frame

    def control(self, op: framing.Op, **fields: object) -> None:
        self.send(framing.control(op, **fields))

    def flush(self) -> None:
        while self.out and not self.closed:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True  # receive() reports it
                return
            del self.out[:sent]

    def _lost(self, error: OSError | None) -> HopError:
        """The connection's end, as a read found it (`error`, or None: it read nothing): closed, and why."""
        self.closed = True
        if self._head.startswith(framing.REFUSED_PREFIX):
            # The master refused the connection and closed it with our first bytes unread: a reset, after the
            # refusal line.
            return HopError(f"the master refused the connection: {_refusal(self._head)}")
        if error is None:
            return HopError("connection to the master lost")
        return HopError(f"connection to the master lost ({os_error_text(error)})")

    def receive(self) -> list[Frame]:
        try:
            got = self.sock.recv_into(self._inbox)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as e:
            raise self._lost(e) from None
        if not got:
            raise self._lost(None)
        data: bytes | memoryview = memoryview(self._inbox)[:got]
        if not self.greeted:
            data = self._greeting(bytes(data))
        try:
            return self.decoder.feed(data)
        except framing.WireError as e:
            self.closed = True
            raise HopError(f"the master broke the protocol: {e}") from None

    def receive_views(self) -> list[Frame | memoryview]:
        """As `receive`, but a DATA frame comes as its payload alone, a view of the read buffer, not a copy (the
        copy client writes it to its file at once): valid until the next call. The bytes of a frame a read did not
        complete are moved to the start of the buffer at the next call, and the next read lands after them; a
        frame larger than the buffer (a large answer, within the decoder's bound) grows it while it is held.
        Not to be mixed with `receive` on one connection."""
        inbox = self._inbox
        kept = self._kept_to - self._kept_from
        size = self._read_size
        if kept >= HEADER_SIZE:
            size = max(size, self._frame_size(inbox, self._kept_from))
        if size != len(inbox):  # grown for a large frame, or back to its size after one
            fresh = bytearray(size)
            fresh[:kept] = memoryview(inbox)[self._kept_from:self._kept_to]
            self._inbox = inbox = fresh
        elif kept and self._kept_from:
            with memoryview(inbox) as moved:
                moved[:kept] = moved[self._kept_from:self._kept_to]  # memmove
        self._kept_from = self._kept_to = 0
        view = memoryview(inbox)
        try:
            got = self.sock.recv_into(view[kept:])
        except (BlockingIOError, InterruptedError):
            self._kept_to = kept
            return []
        except OSError as e:
            raise self._lost(e) from None
        if not got:
            raise self._lost(None)
        end = kept + got
        if not self.greeted:
            rest = self._greeting(bytes(view[:end]))
            end = len(rest)
            inbox[:end] = rest
        try:
            frames, taken = self.decoder.cut(view[:end])
        except framing.WireError as e:
            self.closed = True
            raise HopError(f"the master broke the protocol: {e}") from None
        self._kept_from, self._kept_to = taken, end
        return frames

    def _frame_size(self, buffer: bytearray, pos: int) -> int:
        """The whole size of the frame whose (checked) header is at `pos`."""
        return HEADER_SIZE + int(framing.HEADER.unpack_from(buffer, pos)[1])

    def _greeting(self, data: bytes) -> bytes:
        """The master's first bytes: its MAGIC, then frames (returned); or a refusal line, kept to be shown at
        the close. HopError for anything else."""
        head = self._head + data
        if head.startswith(framing.MAGIC):
            self.greeted, self._head = True, b""
            return head[len(framing.MAGIC):]
        if not (framing.MAGIC.startswith(head) or head.startswith(framing.REFUSED_PREFIX) or
                framing.REFUSED_PREFIX.startswith(head)):
            self.closed = True
            raise HopError("the master did not answer as a slaveshell master (is it older than this client?)")
        self._head = head[:1024]
        return b""

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def parse(frame: Frame) -> Control:
    return framing.parse_control(frame.payload, framing.FROM_MASTER)


def _refusal(head: bytes) -> str:
    line = head[len(framing.REFUSED_PREFIX):].split(b"\n", 1)[0][:500]
    # Shown on the operator's terminal: printable ASCII only.
    return "".join(c if " " <= c <= "~" else "?" for c in line.decode("ascii", "replace"))


class Timer:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def active(self) -> bool:
        return not (self.cancelled or self.fired)


class Loop:
    """One thread's event loop: file descriptors (selectors), timers on `clock` (seconds, monotonic) and
    signals, whose handlers only note the number (the wake-up fd ends the wait); `run` calls `on_signal` for each
    in the loop, then the ready callbacks, until `stop`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # poll(2), not epoll: stdin may be a regular file or /dev/null, which epoll refuses (EPERM).
        self.selector = selectors.PollSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._stopped = False
        self.pending_signals: list[int] = []
        self.on_signal: Callable[[int], None] = lambda signum: None
        # Called before each wait (the connection's pending output decides whether to watch for writing).
        self.before_wait: Callable[[], None] = lambda: None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._watched: dict[int, tuple[int, dict[int, Callable[[], None]]]] = {}

    def seconds(self) -> float:
        return self.clock()

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(self.clock() + delay, fn)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def watch(self, fd: int, event: int, callback: Callable[[], None] | None) -> None:
        """Call `callback` when `fd` is ready for `event` (EVENT_READ or EVENT_WRITE); None stops watching."""
        mask, callbacks = self._watched.get(fd, (0, {}))
        if callbacks.get(event) is callback and (callback is not None) == bool(mask & event):
            return
        if callback is None:
            callbacks.pop(event, None)
            mask &= ~event
        else:
            callbacks[event] = callback
            mask |= event
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(fd)
        if mask:
            self._watched[fd] = (mask, callbacks)
            self.selector.register(fd, mask, None)
        else:
            self._watched.pop(fd, None)

    def note_signal(self, signum: int, frame: object = None) -> None:
        """A signal handler: note it; `run` hands it to `on_signal`."""
        self.pending_signals.append(signum)

    def wakeup_fd(self) -> int:
        return self._wake_w

    def stop(self) -> None:
        self._stopped = True

    def run(self) -> None:
        previous = signal.set_wakeup_fd(self._wake_w)
        try:
            while not self._stopped:
                self._once()
        finally:
            signal.set_wakeup_fd(previous)

    def _once(self) -> None:
        while self.pending_signals:
            self.on_signal(self.pending_signals.pop(0))
            if self._stopped:
                return
        now = self.clock()
        while self._timers and (self._timers[0][2].cancelled or self._timers[0][0] <= now):
            timer = heapq.heappop(self._timers)[2]
            if not timer.cancelled:
                timer.fired = True
                timer.fn()
                if self._stopped:
                    return
        self.before_wait()
        timeout = max(0.0, self._timers[0][0] - now) if self._timers else None
        if self.pending_signals:
            timeout = 0.0
        for key, events in self.selector.select(timeout):
            fd = key.fd
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
                continue
            for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                callback = self._watched.get(fd, (0, {}))[1].get(event)
                if events & event and callback is not None:
                    callback()
                    if self._stopped:
                        return

    def close(self) -> None:
        self.selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
