"""What the master sends an operator's client on the framed door (master_side.shell_socket.door): a session's
messages as frames (`WireViewerSink`); a frame's header and payload are written without joining them
(slaveshell.plumbing.write_now.write_frame).

A session without a terminal sends 512 KiB messages (slaveshell.vocabulary.flow.BULK_CHUNK); a client that declared it
takes them (``max_output`` in its open or attach, slaveshell.vocabulary.framing) gets each one as one frame, any other
client in pieces of MAX_CHUNK. Output frames go to the kernel at once, header and payload in one sendmsg(2), when the
connection holds nothing unsent (slaveshell.plumbing.write_now): no copy of the payload in Python, no wait for the
reactor's next turn, and a keystroke's echo leaves before its input_ack is even encoded (echo median 0.80 ->
0.72 ms in an alternated A/B, bench/pty_ab.py --echo; PTY `cat` no slower for it).
What the kernel does not take waits in Twisted's buffer, which the connection gate bounds
(master_side.operators.gate). Control frames wait for the reactor's turn. (Before the client read into one buffer,
terminal frames sent one by one cost a terminal's stream a fifth of its throughput: de3be7e.)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from master_side.sessions.worker_link import Undo, subscribe
from master_side.shell_socket.framed import FramedDoor
from master_side.shell_socket.passed import PassedStdio
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.flow import BULK_CHUNK, chunks
from slaveshell.vocabulary.framing import FrameType, Op
from slaveshell.vocabulary.protocol import MAX_CHUNK, STREAM_ERR, ExitStatus

# The kernel's send buffer asked for a connection that carries a bulk stream (Linux doubles it for its own
# accounting; the default, net.core.wmem_default, is about 208 KiB): two of the worker's bulk messages.
SEND_BUFFER = 2 * BULK_CHUNK


def widen(transport: object, size: int = SEND_BUFFER) -> None:
    """Let the kernel hold `size` bytes of the connection's output (SO_SNDBUF; SEND_BUFFER for a bulk stream):
    each of its messages then goes to the kernel whole, at once (write_frame), while the client reads the one
    before. The credit windows still bound what the master sends (slaveshell.vocabulary.flow,
    slaveshell.vocabulary.copying). Nothing happens when the transport has no socket, or the kernel refuses (its
    net.core.wmem_max caps the size anyway)."""
    sock = getattr(transport, "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


class WireViewerSink:
    """A `ViewerSink` over a `WireDoor`: the session's output as STDOUT/STDERR frames of at most `max_output`
    bytes (what the client declared: framing.max_output), the rest as control frames. With `passed` (a `-T`
    session's stdin and/or stdout on descriptors the client passed: master_side.shell_socket.passed), stdout goes
    to its descriptor, stdin's input_acks to its reader, and the exit status once both are closed."""

    def __init__(self, door: FramedDoor, max_output: int = MAX_CHUNK, passed: PassedStdio | None = None) -> None:
        self.door = door
        self.passed = passed
        self.connection: object = door
        self.max_output = max_output
        self._widened = False

    @property
    def gone(self) -> bool:
        return self.door.disconnected

    def output(self, stream: int, data: bytes) -> None:
        door = self.door
        if door.disconnected:
            return
        ftype = FrameType.STDERR if stream == STREAM_ERR else FrameType.STDOUT
        passed = self.passed
        if passed is not None and ftype is FrameType.STDOUT and passed.takes_output and passed.write(data):
            return
        if len(data) > MAX_CHUNK and not self._widened:  # a bulk stream's message: the first one
            self._widened = True
            widen(door.transport)
        most = self.max_output
        for piece in chunks(data, most) if len(data) > most else [data]:
            door.write_frame(framing.header(ftype, len(piece), most), piece, at_once=True)
        # A peer that does not read is dropped once its buffered output passes the bound.
        door.gate.check(door)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        if self.passed is not None and self.passed.takes_input:
            self.passed.input_acked(nbytes)
            return
        # Right behind the echo it follows (MasterSession.worker_output), in the same reactor turn: to the kernel
        # now, not after the turn's two epoll_ctl calls and a loop pass.
        self._control(framing.control(Op.INPUT_ACK, n=nbytes, hidden=hidden), at_once=True)

    def flushed_input_ack(self, nbytes: int, hidden: bool) -> None:
        """The input flushed the terminal (an interrupt): the client discards the output before this frame that it
        held since sending the input (a client that does not know `flush` ignores it)."""
        if self.passed is not None and self.passed.takes_input:
            self.passed.input_acked(nbytes)
            return
        self._control(framing.control(Op.INPUT_ACK, n=nbytes, hidden=hidden, flush=True), at_once=True)

    def exit(self, status: ExitStatus) -> None:
        # To the kernel now, behind the output before it: the client ends its process at this frame, and the
        # reactor's turn after a session's end holds its record's closing and index work.
        frame = framing.control(Op.EXIT, code=status.code, signal=status.signal, reason=status.reason)
        if self.passed is not None:
            # Only once the last byte is written to the passed stdout and the master closed its descriptors.
            self.passed.finish(lambda: self._control(frame, at_once=True))
            return
        self._control(frame, at_once=True)

    def _control(self, frame: bytes, at_once: bool = False) -> None:
        door = self.door
        if not door.disconnected:
            if at_once:
                door.write_frame(frame, b"", at_once=True)
            else:
                door.write(frame)
            door.gate.check(door)

    def waiting(self, text: str) -> None:
        if not self.door.disconnected:
            self.door.write(framing.control(Op.WAITING, text=text))

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return subscribe(self.door.disconnects, callback)

    def on_failure(self, callback: Callable[[str | None], None]) -> None:
        # Writes on a local socket do not fail one by one: a lost connection is on_disconnect's.
        pass
