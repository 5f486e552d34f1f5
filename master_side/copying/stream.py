"""A transfer's stream as a relay holds both of its parties to it (wire vocabulary: slaveshell.vocabulary.copying):
the sender's entries, data, done_file and finish to the stream's order (StreamOrder), to what the request asked
for (Asked) and to the credit window (Credit); the receiver's acknowledgements to the credit it was sent, and its
success to the stream's end. This master's relay holds the operator and the worker so
(master_side.copying.relay.MasterTransfer); the operator's master holds the worker's master so in a routed
transfer (master_side.cluster.copy_relay), either way. Every breach raises ProtocolError, the peer's fault.
"""

from __future__ import annotations

from slaveshell.vocabulary.copying import (
    ENTRY_COST,
    WINDOW,
    Asked,
    Credit,
    Data,
    DoneFile,
    Entry,
    Finish,
    StreamOrder,
    TransferEvent,
)
from slaveshell.vocabulary.protocol import ProtocolError


def cost(event: TransferEvent) -> int:
    """The credit a sender's event spends: its bytes for data, ENTRY_COST for an entry or a done_file."""
    if isinstance(event, Data):
        return len(event.chunk)
    return ENTRY_COST if isinstance(event, (Entry, DoneFile)) else 0


class HeldStream:
    """One transfer's stream as a relay holds its sender (`entry`, `data`, `done_file`, `finish`, or `sent` for
    any of them) and its receiver (`acked`, `result`) to it. `asked`: the request's entries (None: not checked
    here)."""

    def __init__(self, asked: Asked | None = None, window: int = WINDOW) -> None:
        self.order = StreamOrder()
        self.asked = asked
        self.credit = Credit(window)

    def entry(self, entry: Entry) -> None:
        self.order.entry(entry)
        if self.asked is not None:
            self.asked.entry(entry)
        self.credit.spend(ENTRY_COST)

    def data(self, chunk: bytes) -> Entry:
        """The file the chunk belongs to."""
        current = self.order.data(chunk)
        self.credit.spend(len(chunk))
        return current

    def done_file(self) -> Entry:
        """The file that is complete."""
        done = self.order.done_file()
        self.credit.spend(ENTRY_COST)
        return done

    def finish(self) -> None:
        self.order.finish()

    def sent(self, event: TransferEvent) -> None:
        """One of the sender's stream events (slaveshell.vocabulary.copying: entry, data, done_file, finish)."""
        if isinstance(event, Entry):
            self.entry(event)
        elif isinstance(event, Data):
            self.data(event.chunk)
        elif isinstance(event, DoneFile):
            self.done_file()
        elif isinstance(event, Finish):
            self.finish()

    def forwarded(self, event: TransferEvent) -> None:
        """One of the sender's events that another relay holds to the stream (a routed upload: the worker's master
        holds the operator's client to it, and to its window): counted here for the receiver's acknowledgements and
        its result, never refused."""
        self.credit.outstanding += cost(event)
        if isinstance(event, Finish):
            self.order.finished = True

    def acked(self, credit: object) -> int:
        """The receiver's acknowledgement: the credit it returns (not more than was sent and not acknowledged)."""
        return self.credit.ack(credit)

    def result(self, ok: bool) -> None:
        """The receiver's outcome: a success only once the stream finished."""
        if ok and not self.order.finished:
            raise ProtocolError("a transfer succeeded before it finished")
