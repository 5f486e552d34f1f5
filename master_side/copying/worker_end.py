"""A transfer's PB adapters on the master (`slaveshell cp`): the worker's end as the relay sends to it (`Party`:
each slaveshell.vocabulary.copying event as its PB or lean call, with plain values), and the handle the worker calls
(`TransferEnd`: its `remote_*` methods take plain values, decoded into the events by the transfer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.spread import pb

from master_side.sessions.worker_link import Undo, on_disconnect
from slaveshell.plumbing.lean_calls import LeanPeer, LeanReceiver
from slaveshell.vocabulary.copying import (
    JOINED_CALLS,
    STREAM_CALLS,
    Abort,
    Ack,
    Cancel,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferEvent,
)
from slaveshell.vocabulary.protocol import ProtocolError


class Relay(Protocol):
    """What a party's handle calls on its transfer (master_side.copying.relay.MasterTransfer)."""

    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None: ...
    def end(self, ok: bool, reason: str, reported_by: str | None = None) -> None: ...


def _dropped(*_args: object) -> None:
    """A single send's failure: dropped (the disconnect notification ends the transfer; the relay checked the
    values, so Banana refuses none)."""


class _StreamPeer(LeanPeer):
    """A transfer's PB reference: the stream's calls answer-less (copying.STREAM_CALLS)."""

    answerless = STREAM_CALLS

    def at_once(self, method: str, args: tuple[object, ...]) -> bool:
        return method not in JOINED_CALLS  # a large chunk goes at once all the same (lean_calls.WRITE_APART)


class Party:
    """A party's end over PB: each event as its answer-less PB call (or lean call) with plain values, on a remote
    reference; `check()` after each send applies the connection's output bound. With `lean` (the worker's open
    reply said it takes slaveshell.plumbing.lean_calls on this connection), the worker is told so by a `lean` call, and
    the stream's events then go as lean calls; the worker sends its own that way once told."""

    def __init__(self, ref: pb.RemoteReference, check: Callable[[], object] = lambda: None,
                 lean: bool = False) -> None:
        self.ref = ref
        self.peer = _StreamPeer(ref, _dropped, _dropped)
        self.check = check
        if lean:
            self.peer.send("lean")
            self.peer.lean = True

    def send(self, event: TransferEvent) -> None:
        self.peer.send(event.call, *event.to_wire())
        self.check()

    def release(self) -> None:
        """The transfer has ended (after its last call to the worker): the worker's end leaves its PB table."""
        self.peer.release()

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        return on_disconnect(self.ref, callback)


class TransferEnd(LeanReceiver):
    """A party's handle on a transfer (the worker holds one): each `remote_*` method takes plain values and
    hands them to the transfer as its event's arguments, decoded and checked there; a bad call ends the
    transfer, never the connection. The stream's calls may also come as lean calls (STREAM_CALLS), checked the
    same way; a malformed one ends the transfer too."""

    lean_methods = STREAM_CALLS

    def __init__(self, transfer: Relay, side: str) -> None:
        self.transfer = transfer
        self.side = side

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        self.transfer.end(False, f"the {self.side} sent a bad message: {error}")

    def remote_entry(self, *args: object) -> None:
        self.transfer.arrived(self.side, Entry, args)

    def remote_data(self, *args: object) -> None:
        self.transfer.arrived(self.side, Data, args)

    def remote_done_file(self, *args: object) -> None:
        self.transfer.arrived(self.side, DoneFile, args)

    def remote_finish(self) -> None:
        self.transfer.arrived(self.side, Finish, ())

    def remote_abort(self, *args: object) -> None:
        self.transfer.arrived(self.side, Abort, args)

    def remote_ack(self, *args: object) -> None:
        self.transfer.arrived(self.side, Ack, args)

    def remote_result(self, *args: object) -> bool:
        self.transfer.arrived(self.side, Result, args)
        return True

    def remote_cancel(self) -> bool:
        self.transfer.arrived(self.side, Cancel, ())
        return True
