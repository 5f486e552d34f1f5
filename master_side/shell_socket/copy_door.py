"""`slaveshell cp` on the framed door (master_side.shell_socket.door): the operator's end of a transfer as the relay
sees it (`WireParty`) and the door's part of it (`CopyDoor`: the ``copy`` call, then the transfer's frames).

One transfer per connection, and not beside a session. The client's messages are slaveshell.vocabulary.copying's events,
spelled as framing controls (the event's `call` as the op, its `fields()`) and `DATA` frames; each is decoded
into its event at this edge and checked by the relay as the worker's are (types, order, sizes, window,
sha256): a bad one ends the transfer, never the connection. The client's ``result`` (a
download's outcome) is a call: answered once the master has closed the record, so the client exits after the
audit row knows. A transfer message on a connection without a transfer is refused (a ``refused`` control).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet import defer

from master_side.copying.relay import OPERATOR
from master_side.operators.terms import ErrorKind, OperatorError
from master_side.sessions.worker_link import Undo, subscribe
from master_side.shell_socket.framed import FramedDoor
from master_side.shell_socket.viewer_sink import widen
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.copying import WINDOW, Data, TransferEvent, TransferRequest, from_fields
from slaveshell.vocabulary.framing import Control, FrameType, Op
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import ProtocolError

# What the door reads at once while it carries a transfer (Twisted reads 64 KiB by default): several DATA frames,
# which slaveshell.vocabulary.framing.Decoder cuts in one pass. (A logged-in PB peer is read 512 KiB at a
# time: slaveshell.plumbing.banana_buffer.)
TRANSFER_READ_SIZE = 1024 * 1024


class _Buffered(Protocol):
    bufferSize: int  # Twisted's FileDescriptor: what its TCP and UNIX transports read at once


def set_read_size(transport: object, size: int) -> int | None:
    """Make a Twisted transport read up to `size` bytes at once; returns the previous size, or None (and
    nothing changes) when the transport has no `bufferSize` (a test's)."""
    previous = getattr(transport, "bufferSize", None)
    if not isinstance(previous, int) or isinstance(previous, bool):
        return None
    cast(_Buffered, transport).bufferSize = size
    return previous


class DoorTransfer(Protocol):
    """A transfer as the door holds it: master_side.copying.relay.MasterTransfer, or one another master of the
    site relays (master_side.cluster.copy_relay.RoutedTransfer)."""

    @property
    def id(self) -> str: ...
    @property
    def undo(self) -> list[Callable[[], None]]: ...
    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None: ...
    def decoded(self, side: str, decode: Callable[[], TransferEvent]) -> None: ...


# The kernel's send buffer asked for a transfer's connection (Linux doubles it for its own accounting; its
# net.core.wmem_max caps the request): a whole credit window, so that all the master may send before the client's
# next ack fits in the kernel. What the master sends is bounded by the window either way.
TRANSFER_SEND_BUFFER = WINDOW

# A DATA frame of at least this many bytes goes to the kernel at once; a smaller one (a small file's), like every
# control frame, at the reactor's next turn, joined with the frames written before then (one write for many).
AT_ONCE = 4096


class WireParty:
    """The operator's end of a transfer over a `WireDoor` (`master_side.copying.relay.PartyEnd`): each call as a frame,
    then the connection's output bound (master_side.operators.gate.ConnectionGate.check)."""

    def __init__(self, door: FramedDoor) -> None:
        self.door = door
        self._widened = False

    def send(self, event: TransferEvent) -> None:
        door = self.door
        if door.disconnected:
            return
        if isinstance(event, Data):
            # A chunk's header and bytes unjoined, to the kernel at once in one sendmsg when nothing waits before
            # them (no copy of the chunk in Twisted's buffer); the socket's buffer widened once to take a whole
            # window (TRANSFER_SEND_BUFFER), so that a client that reads late leaves nothing in Twisted's buffer,
            # where each chunk would be copied on its way out.
            if not self._widened:
                widen(door.transport, TRANSFER_SEND_BUFFER)
                self._widened = True
            door.write_frame(framing.header(FrameType.DATA, len(event.chunk)), event.chunk,
                             at_once=len(event.chunk) >= AT_ONCE)
        else:
            op = Op(event.call)
            if op not in framing.TRANSFER:
                raise ValueError(f"no such transfer message to an operator: {event.call}")
            door.write(framing.control(op, **event.fields()))
        door.gate.check(door)

    def waiting(self, text: str) -> None:
        """The transfer waits before it starts (a moderator's approval): one line for the operator."""
        door = self.door
        if not door.disconnected:
            door.write(framing.control(Op.WAITING, text=text))
            door.gate.check(door)

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        if self.door.disconnected:
            callback()  # gone while the transfer started
            return lambda: None
        return subscribe(self.door.disconnects, callback)


class CopyDoor:
    """A `WireDoor`'s transfer: `call` starts it (the ``copy`` call), `frame` takes its messages."""

    def __init__(self, door: FramedDoor) -> None:
        self.door = door
        self.transfer: DoorTransfer | None = None

    def call(self, who: Identity, params: object) -> defer.Deferred[dict[str, object]]:
        """The ``copy`` call: fires the answer's fields, or fails with OperatorError."""
        door = self.door
        if door.viewing:
            raise OperatorError(ErrorKind.BAD_REQUEST, "bad request: this connection already has a session or a "
                                                       "transfer")
        try:
            request = TransferRequest.from_wire(params)
        except ProtocolError as e:
            raise OperatorError(ErrorKind.BAD_REQUEST, f"bad request: {e}") from None
        door.viewing = True

        def started(result: tuple[DoorTransfer, dict[str, object]]) -> dict[str, object]:
            transfer, sizes = result
            self.transfer = transfer
            transport = door.transport
            previous = set_read_size(transport, TRANSFER_READ_SIZE)
            if previous is not None:

                def restore() -> None:
                    set_read_size(transport, previous)

                transfer.undo.append(restore)
            # unclaimed: the client's done_file may come without its sha256 (copying.NO_CLAIM); the relay hashes.
            return {"transfer": transfer.id, "unclaimed": True, **sizes}

        party = WireParty(door)
        d = defer.maybeDeferred(door.service.api.copy_anywhere, who, request, party, party.waiting)
        return d.addCallback(started)

    def frame(self, frame: framing.Frame | Control) -> bool:
        """A DATA frame or a transfer control: to the transfer. False when this connection has none."""
        transfer = self.transfer
        if transfer is None:
            return False
        if isinstance(frame, framing.Frame):
            transfer.arrived(OPERATOR, Data, (frame.payload,))
            return True
        transfer.decoded(OPERATOR, lambda: from_fields(frame.op.value, frame.get))
        if frame.op is Op.RESULT:
            call_id = frame.call_id
            if call_id is not None:
                self.door.answer(call_id, True)
        return True
