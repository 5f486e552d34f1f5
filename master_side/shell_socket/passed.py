"""A `-T` session's standard streams served by the master itself: the operator's client passed its stdin and/or
stdout (pipes or sockets only) with its open request (SCM_RIGHTS), as OpenSSH's ControlMaster does, and the master
reads the session's input from one and writes its output to the other, without the client copying the bytes.

What the door accepts (master_side.shell_socket.door): at most MAX_PASSED descriptors, only with the open that
announces them (``stdio``: the stream names, in the order of the descriptors), each a pipe or a socket
(`check_passed`: fstat S_ISFIFO or S_ISSOCK, opened for reading for ``in``, for writing for ``out``; never a
terminal, a regular file, a directory or a device, so the reactor never waits on a disk or a terminal; a socket
only of SOCK_STREAM and not listening: a listening socket never reads as ended, and a datagram socket drops what
a read does not take). Anything else is closed at once and the request refused, audited. The client refuses to
start on such a socket itself (slaveshell.client.shell_cli.run), so only a hostile or broken client passes one.

The non-blocking rule: the master never changes a passed descriptor's flags. O_NONBLOCK belongs to the open file
description, which the client and whoever else holds that pipe end share (the shell's other commands in a
pipeline, say), and a client could clear it again behind the master's back. So every read and write here is
preadv2/pwritev2 with RWF_NOWAIT (Linux: a pipe made by pipe(2), a socket), which never blocks whatever the flags
say; readiness comes from the reactor (epoll). A descriptor the kernel does not read or write that way
(EOPNOTSUPP: a FIFO opened by its name or through /dev/fd, an older kernel) is not served here: stdin is probed
as it is taken (`probe_input`; the byte read is the input's first) and declined, the client then reading it
itself; stdout is found out at its first write, and the session's output then goes to the client in frames, as
before.

Flow control is the framed path's: stdin is read only while the session's input credit window is open
(`TunedWindow`, as the client's own; an input_ack opens it again), and stdout's bytes are acknowledged to the
session only once the kernel took them, so a pipe nobody reads stops the worker's credit as an unread frame
does; what waits for the pipe is at most the session's output window. The transcript records both ways exactly as
for frames: the session records output before it reaches `write` here, and input when the worker acknowledges it.
After the session's end (`finish`) stdin is closed at once and stdout once its last byte is written; the exit
status goes to the client only then. A lost connection closes both at once (`close`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from master_side.operators.terms import Handle
from slaveshell.plumbing.clock import DelayedCall
from slaveshell.vocabulary.flow import BULK_WINDOW
from slaveshell.vocabulary.protocol import INPUT_WINDOW, MAX_CHUNK, ProtocolError
from slaveshell.vocabulary.windows import WINDOW_MAX, TunedWindow

# At most this many descriptors with one open: stdin and stdout (stderr stays framed).
MAX_PASSED = 2
STREAMS = ("in", "out")
# Output acknowledged at once when this much has been written unacknowledged; less at the end of the reactor's turn.
ACK_BATCH = 4 * MAX_CHUNK
# Buffers handed to one pwritev2.
WRITE_VECTORS = 64


class FdReactor(Protocol):
    """What the passed streams use of the reactor (IReactorFDSet, IReactorTime)."""

    def addReader(self, reader: object) -> None: ...
    def removeReader(self, reader: object) -> None: ...
    def addWriter(self, writer: object) -> None: ...
    def removeWriter(self, writer: object) -> None: ...
    def callLater(self, delay: float, fn: Callable[[], None]) -> DelayedCall: ...
    def seconds(self) -> float: ...


def nowait_supported() -> bool:
    """Whether Python has preadv2/pwritev2 with RWF_NOWAIT here (Linux); each descriptor is probed besides
    (`probe_input`, and the first write: `PassedStdio.write`)."""
    return getattr(os, "RWF_NOWAIT", None) is not None and hasattr(os, "preadv") and hasattr(os, "pwritev")


def probe_input(fd: int) -> tuple[bool, bytes | None]:
    """Whether the kernel reads `fd` with RWF_NOWAIT (a pipe made by pipe(2) or a socket does; a FIFO opened by
    its name, or /dev/fd/N, or an older kernel's pipe does not: EOPNOTSUPP), and what the probe read: one byte,
    b"" at the end of the input, None when nothing waits. Nothing read is lost: it is the input's first byte."""
    buf = bytearray(1)
    try:
        got = os.preadv(fd, [buf], -1, os.RWF_NOWAIT)
    except (BlockingIOError, InterruptedError):
        return True, None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False, None
        return True, b""  # a reset socket, an error: the end of the input
    return True, bytes(buf[:got])


def check_passed(fd: int, stream: str) -> str | None:
    """Why descriptor `fd` may not serve stream `stream` ("in" or "out"), or None: a pipe or a socket only,
    opened the way the stream needs."""
    try:
        mode = os.fstat(fd).st_mode
        flags = _flags(fd)
    except OSError as e:
        return f"its {stream} descriptor cannot be examined ({e.strerror})"
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        kind = ("a terminal or device" if stat.S_ISCHR(mode) else "a regular file" if stat.S_ISREG(mode) else
                "a directory" if stat.S_ISDIR(mode) else "not a pipe or socket")
        return f"its {stream} descriptor is {kind}: only pipes and sockets are taken"
    not_stream = _not_a_stream(fd) if stat.S_ISSOCK(mode) else None
    if not_stream is not None:
        return f"its {stream} descriptor is {not_stream}: only pipes and stream sockets are taken"
    access = flags & os.O_ACCMODE
    if stream == "in" and access not in (os.O_RDONLY, os.O_RDWR):
        return "its in descriptor is not open for reading"
    if stream == "out" and access not in (os.O_WRONLY, os.O_RDWR):
        return "its out descriptor is not open for writing"
    return None


def _not_a_stream(fd: int) -> str | None:
    """What socket `fd` is when it is no stream of bytes (slaveshell.client.connection.not_a_stream, which keeps such
    a socket from being passed): a listening socket (never readable, never at its end: a session on it would wait
    forever), or one of datagrams or packets (a read shorter than a message drops its rest)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return "a socket that cannot be examined"
    if listening:
        return "a listening socket"
    if kind != socket.SOCK_STREAM:
        return "a datagram socket" if kind == socket.SOCK_DGRAM else "a packet socket"
    return None


def _flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


@implementer(IReadDescriptor, IWriteDescriptor)
class _Descriptor:
    """A passed descriptor in the reactor, as a reader (stdin) or a writer (stdout): `ready` is called when it can
    be read or written, `lost` when the reactor finds it hung up."""

    def __init__(self, fd: int, ready: Callable[[], None], lost: Callable[[], None], name: str) -> None:
        self.fd = fd
        self._ready, self._lost, self._name = ready, lost, name

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self._ready()

    def doWrite(self) -> None:
        self._ready()

    def connectionLost(self, reason: Failure) -> None:
        self._lost()

    def logPrefix(self) -> str:
        return self._name


class Refuser(Protocol):
    """How a refused session message is handled (the door's: master_side.shell_socket.door.WireDoor._refused)."""

    def __call__(self, view: Handle, method: str, error: ProtocolError) -> bool: ...


class PassedStdio:
    """The session's stdin and/or stdout on descriptors the client passed (`fds`: stream name -> descriptor,
    owned from now on: closed here, always)."""

    def __init__(self, reactor: FdReactor, fds: dict[str, int], refused: Refuser,
                 on_close: Callable[[], None] = lambda: None, first_input: bytes | None = None) -> None:
        self.reactor = reactor
        self.fds = dict(fds)
        # The streams served here, for the session's life (the client serves the others).
        self.streams = [name for name in STREAMS if name in fds]
        self._on_close = on_close  # called as each descriptor is closed
        self.refused = refused
        self.view: Handle | None = None
        self.window = TunedWindow(INPUT_WINDOW, INPUT_WINDOW, reactor.seconds)
        self.max_input = MAX_CHUNK
        self._buf = bytearray()  # stdin is read into it (preadv2)
        self._reader = _Descriptor(fds["in"], self._read, self._read_lost, "slaveshell-stdin") if "in" in fds else None
        self._writer = (_Descriptor(fds["out"], self._write, self._write_lost, "slaveshell-stdout") if "out" in fds
                        else None)
        self._reading = self._writing = False
        self._queue: deque[memoryview] = deque()
        self.queued = 0  # bytes waiting for stdout
        self._unacked = 0
        self._ack_call: DelayedCall | None = None
        self._finished: Callable[[], None] | None = None
        self.closed = False
        self.read_bytes = self.written_bytes = 0
        self._first_input = first_input  # what probe_input read (b"": the end of the input)
        self.out_framed = False  # stdout's descriptor did not take RWF_NOWAIT: its output goes in frames

    @property
    def takes_input(self) -> bool:
        return "in" in self.streams

    @property
    def takes_output(self) -> bool:
        return "out" in self.streams and not self.out_framed

    # -- the view --------------------------------------------------------------------------------

    def start(self, view: Handle) -> None:
        """The session is open: `view` takes what stdin gives, within its input window (as a client's would:
        slaveshell.client.shell_session.HopShell._opened)."""
        if self.closed:
            return
        self.view = view
        self.max_input = view.max_input
        granted = min(view.input_grant, WINDOW_MAX)
        if self.max_input > MAX_CHUNK and granted > 0:
            self.window = TunedWindow(min(granted, BULK_WINDOW), granted, self.reactor.seconds)
        else:
            self.window.grant(granted)
        first, self._first_input = self._first_input, None
        if first is not None:
            self._took_input(view, first)
            if not first:
                return
        self._update_reading()
        if self._unacked:
            self._ack_soon()

    # -- stdin -----------------------------------------------------------------------------------

    def input_acked(self, nbytes: int) -> None:
        with contextlib.suppress(ProtocolError):
            self.window.acked(nbytes)
        self._update_reading()

    def _update_reading(self) -> None:
        reader = self._reader
        if reader is None:
            return
        want = self.view is not None and not self.closed and self._finished is None and self.window.is_open
        if want != self._reading:
            self._reading = want
            (self.reactor.addReader if want else self.reactor.removeReader)(reader)

    def _read(self) -> None:
        reader, view = self._reader, self.view
        if reader is None or view is None or not self._reading:
            return
        if len(self._buf) != self.max_input:
            self._buf = bytearray(self.max_input)
        buf = self._buf
        try:
            got = os.preadv(reader.fd, [buf], -1, os.RWF_NOWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0  # a reset socket, an error: the end of the input
        self._took_input(view, bytes(memoryview(buf)[:got]))
        if got:
            self._update_reading()

    def _took_input(self, view: Handle, data: bytes) -> None:
        """What stdin gave, for the session: bytes, or b"" at its end (the session's EOF)."""
        if not data:
            self._end_input()
            try:
                view.eof()
            except ProtocolError as e:
                self.refused(view, "eof", e)
            return
        self.read_bytes += len(data)
        self.window.sent(len(data))
        try:
            view.input(data)
        except ProtocolError as e:
            self.refused(view, "input", e)

    def _read_lost(self) -> None:
        """The reactor found stdin hung up with nothing more to read: its end."""
        view = self.view
        self._reading = False
        self._end_input()
        if view is not None:
            try:
                view.eof()
            except ProtocolError as e:
                self.refused(view, "eof", e)

    def _end_input(self) -> None:
        reader = self._reader
        if reader is None:
            return
        if self._reading:
            self._reading = False
            self.reactor.removeReader(reader)
        self._reader = None
        with contextlib.suppress(OSError):
            os.close(reader.fd)
        self.fds.pop("in", None)
        self._on_close()

    # -- stdout ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """The session's stdout bytes (recorded already): to the passed descriptor, now as far as it takes them.
        False when the descriptor does not take RWF_NOWAIT (found at the first write, nothing written): these
        bytes and all after them go to the client in frames (`out_framed`)."""
        if self.out_framed:
            return False
        if self._writer is None or self.closed:
            if not self.closed:  # its reader is gone: the credit comes back all the same
                self._unacked += len(data)
                self._ack_soon()
            return True
        self._queue.append(memoryview(data))
        self.queued += len(data)
        if not self._writing:
            self._write()
        return not self.out_framed

    def _write(self) -> None:
        writer = self._writer
        if writer is None:
            return
        while self._queue:
            vectors = list(self._queue)[:WRITE_VECTORS]
            try:
                sent = os.pwritev(writer.fd, vectors, -1, os.RWF_NOWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL) and not self.written_bytes:
                    self.out_framed = True
                    self._queue.clear()
                    self.queued = 0
                    self._end_output()
                    return
                self._out_gone(e.errno)
                return
            self._took(sent)
        self._set_writing(bool(self._queue))
        if not self._queue and self._finished is not None:
            self._end_output()
            self._maybe_finished()

    def _took(self, sent: int) -> None:
        self.written_bytes += sent
        self.queued -= sent
        self._unacked += sent
        while sent:
            head = self._queue[0]
            if len(head) <= sent:
                sent -= len(head)
                self._queue.popleft()
            else:
                self._queue[0] = head[sent:]
                sent = 0
        self._ack_soon()

    def _set_writing(self, want: bool) -> None:
        writer = self._writer
        if writer is not None and want != self._writing:
            self._writing = want
            (self.reactor.addWriter if want else self.reactor.removeWriter)(writer)

    def _write_lost(self) -> None:
        self._writing = False
        self._out_gone(errno.EPIPE)

    def _out_gone(self, code: int | None) -> None:
        """Whoever read stdout is gone (EPIPE) or it failed: what waits is dropped, its credit returned, and, the
        session still running, it is told (View.stdout_closed: the command's stdout is closed on the worker, as
        the client tells it when its own stdout goes; nobody would see more output)."""
        self._unacked += self.queued
        self._queue.clear()
        self.queued = 0
        self._end_output()
        self._ack_soon()
        view = self.view
        if self._finished is None and view is not None:
            try:
                view.stdout_closed()
            except ProtocolError as e:
                self.refused(view, "stdout_closed", e)
        self._maybe_finished()

    def _end_output(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._set_writing(False)
        self._writer = None
        with contextlib.suppress(OSError):
            os.close(writer.fd)
        self.fds.pop("out", None)
        self._on_close()

    def _ack_soon(self) -> None:
        if self.view is None or not self._unacked:
            return
        if self._unacked >= ACK_BATCH:
            self._send_ack()
        elif self._ack_call is None or not self._ack_call.active():
            self._ack_call = self.reactor.callLater(0, self._send_ack)

    def _send_ack(self) -> None:
        view = self.view
        if view is None or not self._unacked or self.closed:
            return
        n, self._unacked = self._unacked, 0
        try:
            view.ack(n)
        except ProtocolError as e:
            self.refused(view, "ack", e)

    # -- the end ---------------------------------------------------------------------------------

    def finish(self, then: Callable[[], None]) -> None:
        """The session ended: stdin is closed now, stdout once its last byte is written (or its reader is gone);
        then `then` (the exit status to the client), after the master closed its copies."""
        if self.closed:
            return
        self._finished = then
        self._end_input()
        if not self._queue:
            self._end_output()
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        then = self._finished
        if then is not None and self._reader is None and self._writer is None and not self.closed:
            self._send_ack()
            self.closed = True
            self._finished = None
            then()

    def close(self) -> None:
        """The connection is gone (or the open failed): both closed at once, nothing more read or written."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self.queued = 0
        self._end_input()
        self._end_output()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._finished = None
