"""The operator's master (A, master_side.cluster.copy_relay) holds the worker's master (B) of a routed transfer to
the protocol both ways, as its own relay holds a worker (master_side.copying.stream), whichever path B's messages
take (the router, as B calls A's `out` procedure, or the direct connection, as B's calls reach A's end of it): a
hostile B that acknowledges more than the operator sent, sends the sender's events in an upload, claims success
before the operator finished, acknowledges a download or says it succeeded, or sends out of order, ends the
transfer on A before anything of it reaches the operator's client. The client shows A's line naming B and exits
non-zero; A's audit has a `routed` event naming the message (never its content); B is told `cancel`; A stays up
and its other transfers go on. A router client that is not B is not heard; a B that floods A with messages that
carry nothing gets nothing through."""

from __future__ import annotations

import argparse
import collections
from typing import Any

import pytest
from twisted.internet import defer

from master_side.cluster.config import session_uri
from master_side.cluster.copy_relay import RoutedTransfer
from master_side.cluster.direct import COPY_LEAN, DirectLink, Sender, _CopyMind
from master_side.cluster.relay import MAX_WAITING_LINES
from master_side.cluster.serve import DEAD
from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer
from slaveshell.client import copy_cli
from slaveshell.vocabulary import framing
from slaveshell.vocabulary.copying import (
    DOWN,
    ENTRY_COST,
    Ack,
    Cancel,
    Data,
    DoneFile,
    Entry,
    Finish,
    Result,
    TransferEvent,
    TransferRequest,
    from_fields,
)
from slaveshell.vocabulary.framing import FrameType, Op

from .direct_fakes import Connector, Perspective
from .fakes import FramedLink
from .test_cluster_copy import Party, Site
from .test_cluster_routed import ALICE
from .test_hop_client import FakeLoop

PATHS = ["router", "direct"]
LINE = "the transfer with b1 ended: master B broke the protocol: "


class HostileB:
    """B's messages to A's transfer by one path, in sequence: through the router, called by a router client
    authenticated as B (A's `out` procedure takes B's calls only), or over the direct connection as B's calls
    reach A's end of it (lean calls for data and acknowledgements, `m` for the rest: master_side.cluster.direct).
    `told` is what A sent B once the path is chosen."""

    def __init__(self, site: Site, transfer: RoutedTransfer, path: str, b: int = 0) -> None:
        self.seq = 0
        self.path = path
        self.b = site.transfers[b]  # B's relay of it (the test's fake: what A's messages did to it)
        if path == "router":
            session = site.router.session(authid="B")
            out = session_uri(transfer.token, "out")
            self.call = lambda wire: session.call(out, wire)
            return
        self.perspective = Perspective()
        transfer.use_direct(DirectLink(self.perspective, Connector(), Sender(self.perspective, COPY_LEAN)))
        mind = _CopyMind(transfer.take, transfer.malformed)

        def call(wire: list[object]) -> None:
            if wire[1] == "data":
                mind.remote_routed_data(wire[0], wire[2])  # type: ignore[arg-type]
            elif wire[1] == "ack":
                mind.remote_routed_ack(wire[0], wire[2])  # type: ignore[arg-type]
            else:
                mind.remote_m(wire)

        self.call = call

    def send(self, call: str, *args: object) -> None:
        wire = [self.seq, call, *args]
        self.seq += 1
        self.call(wire)

    def told(self) -> list[object]:
        """What A sent B since the path was chosen (B's relay's events, or the direct connection's messages)."""
        if self.path == "router":
            return [e.call for e in self.b.got if isinstance(e, TransferEvent)]
        return [wire[1] for wire in self.perspective.got]  # type: ignore[index]


def upload(site: Site, party: Party | None = None) -> RoutedTransfer:
    """An upload on b1 through A: the operator's client sent a file of five bytes (2053 of credit)."""
    transfer, _ = site.copy(party or Party())
    transfer.decoded("operator", lambda: Entry("file", "f", 0o644, 5, 0.0))
    transfer.arrived("operator", Data, (b"hello",))
    transfer.decoded("operator", lambda: DoneFile(""))
    return transfer


SENT = 2 * ENTRY_COST + 5


def recorded(site: Site) -> list[tuple[str | None, str]]:
    records: list[tuple[str | None, str]] = []
    site.routed.record = lambda who, worker, record_id, detail: records.append((record_id, detail))
    return records


def assert_ended_on_a(site: Site, transfer: RoutedTransfer, party: Party, b: HostileB, why: str) -> None:
    """A ended the transfer with its line naming B (the last thing the operator got), and told B."""
    last = party.got[-1]
    assert isinstance(last, Result) and not last.ok and last.reason == LINE + why, party.got
    assert transfer.ended and transfer.token not in site.routed.live
    assert session_uri(transfer.token, "out") not in site.router.procedures  # A's procedure is gone
    assert b.told()[-1] == Cancel.call


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("acks", [[SENT + 1], [1024, 1029, 1], [SENT, 1]])
def test_b_acknowledging_more_than_the_operator_sent_ends_the_upload_on_a(path: str, acks: list[int]) -> None:
    site = Site()
    records = recorded(site)
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    for credit in acks:
        b.send("ack", credit)
    passed = [e for e in party.got if isinstance(e, Ack)]
    assert sum(e.credit for e in passed) <= SENT and len(passed) == len(acks) - 1
    assert_ended_on_a(site, transfer, party, b, "acknowledged more than was sent")
    breach = len(acks) - 1
    assert records[-1] == ("t1", "cp up routed to master B: transfer t1 ended here: master B broke the protocol "
                                 f"(its message {breach}: ack)")


WRONG_WAY = [
    (["entry", "file", ".bashrc", 0o644, 5, 0.0], "entry comes from the sender (the operator, in an upload)"),
    (["data", b"x"], "data comes from the sender (the operator, in an upload)"),
    (["done_file", ""], "done_file comes from the sender (the operator, in an upload)"),
    (["finish"], "finish comes from the sender (the operator, in an upload)"),
    (["abort", "no"], "abort comes from the sender (the operator, in an upload)"),
    (["start"], "start is never sent to the operator"),
    (["cancel", "x"], "cancel is never sent to the operator"),
    (["result", True, ""], "a transfer succeeded before it finished"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("message,why", WRONG_WAY)
def test_b_sending_the_senders_events_in_an_upload_or_success_before_the_finish_ends_it_on_a(
        path: str, message: list[object], why: str) -> None:
    site = Site()
    records = recorded(site)
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    b.send("ack", 1024)  # an honest acknowledgement first
    b.send(*message)  # type: ignore[arg-type]
    assert party.got[:-1] == [Ack(1024)]  # nothing of it reached the operator
    assert_ended_on_a(site, transfer, party, b, why)
    assert records[-1] == ("t1", "cp up routed to master B: transfer t1 ended here: master B broke the protocol "
                                 f"(its message 1: {message[0]})")


@pytest.mark.parametrize("path", PATHS)
def test_b_out_of_order_or_with_an_unknown_call_ends_the_upload_on_a_and_the_audit_names_no_content(
        path: str) -> None:
    site = Site()
    records = recorded(site)
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    b.seq = 3
    b.send("ack", 1)
    assert_ended_on_a(site, transfer, party, b, "message 3 where 0 was expected")
    site = Site()
    records = recorded(site)
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    b.send("\x1b]0;/etc/shadow\x07", "x")
    assert transfer.ended and "master B broke the protocol: unknown transfer call" in party.got[-1].reason
    assert records[-1] == ("t1", "cp up routed to master B: transfer t1 ended here: master B broke the protocol "
                                 "(its message 0: an unknown call)")


@pytest.mark.parametrize("path", PATHS)
def test_an_honest_b_acknowledging_all_the_operator_sent_and_succeeding_after_the_finish_passes(path: str) -> None:
    site = Site()
    records = recorded(site)
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    b.send("ack", ENTRY_COST)
    b.send("ack", SENT - ENTRY_COST)
    transfer.decoded("operator", lambda: Finish())
    b.send("result", True, "")
    assert party.got == [Ack(ENTRY_COST), Ack(SENT - ENTRY_COST), Result(True, "")]
    assert transfer.ended and not [r for r in records if "broke" in r[1]]


@pytest.mark.parametrize("path", PATHS)
def test_a_stays_up_and_its_other_transfers_go_on(path: str) -> None:
    site = Site()
    hostile_party, other_party = Party(), Party()
    hostile = upload(site, hostile_party)
    other = upload(site, other_party)
    b = HostileB(site, hostile, path)
    b.send("ack", SENT + 1)
    assert hostile.ended and not other.ended and list(site.routed.live.values()) == [other]
    honest = site.transfers[1]
    honest.party.send(Ack(SENT))
    other.decoded("operator", lambda: Finish())
    honest.end(True, "")
    site.clock.advance(0)
    assert other_party.got == [Ack(SENT), Result(True, "")] and not site.routed.live
    assert [e.call for e in honest.got] == ["entry", "data", "done_file", "finish"]  # no cancel: untouched
    third = upload(site)  # and A starts more
    assert not third.ended


DOWNLOAD = TransferRequest(direction=DOWN, worker="b1", sources=("/tmp/f",), dest="f")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("messages,why", [
    ([["ack", 1024]], "ack comes from the receiver (the operator, in a download)"),
    ([["entry", "file", "f", 0o644, 0, 0.0], ["done_file", ""], ["finish"], ["result", True, ""]],
     "a download's success comes from the operator's client"),
    ([["entry", "file", ".bashrc", 0o644, 0, 0.0]], ".bashrc: not asked for"),
    ([["abort", "x"]], "abort is never sent to the operator"),
])
def test_b_acknowledging_a_download_claiming_its_success_or_sending_what_was_not_asked_ends_it_on_a(
        path: str, messages: list[list[object]], why: str) -> None:
    site = Site()
    records = recorded(site)
    party = Party()
    transfer, _ = site.routed.copy(ALICE, DOWNLOAD, party).result
    b = HostileB(site, transfer, path)
    for message in messages:
        b.send(*message)  # type: ignore[arg-type]
    assert_ended_on_a(site, transfer, party, b, why)
    assert not any(isinstance(e, Result) and e.ok for e in party.got)
    assert records[-1][1].startswith("cp down routed to master B: transfer t1 ended here: master B broke the "
                                     "protocol (its message ")


@pytest.mark.parametrize("path", PATHS)
def test_a_b_flooding_a_with_messages_that_carry_nothing_gets_nothing_through_and_is_ended_at_its_breach(
        path: str) -> None:
    site = Site()
    party = Party()
    transfer = upload(site, party)
    b = HostileB(site, transfer, path)
    for _ in range(20_000):
        b.send("alive")
    for _ in range(100):
        b.send("waiting", "x" * 4096)  # after the answer: not shown
    assert party.got == [] and not transfer.ended
    for _ in range(1000):
        b.send("ack", SENT)  # the second passes the credit: ended there, the rest not heard
    assert [e for e in party.got if isinstance(e, Ack)] == [Ack(SENT)]
    assert party.got[-1] == Result(False, LINE + "acknowledged more than was sent") and len(party.got) == 2


def test_a_router_client_that_is_not_b_is_not_heard() -> None:
    site = Site()
    party = Party()
    transfer = upload(site, party)
    c = site.router.session(authid="C")
    for seq in range(3):
        c.call(session_uri(transfer.token, "out"), [seq, "ack", 1024])
        c.call(session_uri(transfer.token, "out"), [seq, "result", False, "forged"])
    assert party.got == [] and not transfer.ended
    HostileB(site, transfer, "router").send("ack", 1024)  # B's own sequence is untouched by C's calls
    assert party.got == [Ack(1024)]


# -- what the operator sees: the real client, on A's door -------------------------------------------------------


class ClientOnA(FramedLink):
    """The operator's cp client (slaveshell.client.copy_client) on A's door, in process: its frames decoded into A's
    routed transfer (the `copy` call started by RoutedTransfers.copy, each event to `decoded`), and A's events to
    it as the door writes them (master_side.shell_socket.copy_door.WireParty's frames), each in its own read."""

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.site = site
        self.decoder = framing.Decoder()
        self.client: Any = None
        self.transfer: RoutedTransfer | None = None
        self.to_client: collections.deque[bytes] = collections.deque()
        self.party = Party()
        self.party.send = self._event  # type: ignore[method-assign]

    def _event(self, event: object) -> None:
        if isinstance(event, Data):
            self.to_client.append(framing.encode(FrameType.DATA, event.chunk))
        else:
            assert isinstance(event, TransferEvent)
            self.to_client.append(framing.control(Op(event.call), **event.fields()))

    def send(self, frame: bytes, payload: bytes = b"") -> None:
        for f in self.decoder.feed(frame + payload):
            if f.type is FrameType.DATA:
                assert self.transfer is not None
                self.transfer.arrived("operator", Data, (f.payload,))
                continue
            message = framing.parse_control(f.payload)
            if message.op is Op.COPY:
                request = TransferRequest.from_wire(message.fields["request"])
                self.transfer, sizes = self.site.routed.copy(ALICE, request, self.party).result
                self.to_client.append(framing.answer(id=message.fields["id"], ok=True, transfer=self.transfer.id,
                                                     **sizes))
            else:
                assert self.transfer is not None
                self.transfer.decoded("operator", lambda m=message: from_fields(m.op.value, m.get))

    def pump(self) -> None:
        while self.to_client:
            self.client.read(framing.Decoder(max_control=framing.MAX_ANSWER).feed(self.to_client.popleft()))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("hostile,why", [
    (["ack", 1024], "acknowledged more than was sent"),
    (["entry", "file", ".bashrc", 0o644, 5, 0.0], "entry comes from the sender (the operator, in an upload)"),
    (["data", b"pwned"], "data comes from the sender (the operator, in an upload)"),
])
def test_the_operators_client_shows_as_line_and_exits_non_zero(path: str, hostile: list[object], why: str,
                                                                tmp_path: Any, monkeypatch: Any,
                                                                capsys: Any) -> None:
    """`slaveshell cp FILE b1:/tmp/f` on A, b1 on a hostile B: B acknowledges what the client sent, then more (or
    sends files to the upload); the client prints A's line and exits 1, no client protocol error."""
    site = Site()
    records = recorded(site)
    source = tmp_path / "f"
    source.write_bytes(b"x" * 5000)
    sent = 2 * ENTRY_COST + 5000

    def run(socket_path: str, make: Any) -> tuple[bool, str]:
        link = ClientOnA(site)
        link.client = make(FakeLoop(), link)
        link.client.start()
        link.pump()
        assert link.transfer is not None
        b = HostileB(site, link.transfer, path)
        b.send("ack", sent)  # all the client sent (its entry, data and done_file; then its finish)
        link.pump()
        assert link.client.outcome is None
        b.send(*hostile)  # type: ignore[arg-type]
        link.pump()
        assert b.told()[-1] == Cancel.call
        return link.client.outcome  # type: ignore[no-any-return]

    monkeypatch.setattr(copy_cli, "run", run)
    args = argparse.Namespace(paths=[str(source), "b1:/tmp/f"], recursive=False, preserve=False, build=None,
                              quiet=True, reason=None)
    assert copy_cli.cmd_cp(args, "/nonexistent/socket") == 1
    assert capsys.readouterr().err == f"slaveshell cp: {LINE}{why}\n"
    assert records[-1][1].startswith("cp up routed to master B: transfer t1 ended here: master B broke the "
                                     "protocol (its message 1: ")
    assert not site.routed.live


@pytest.mark.parametrize("path", ["router"])
def test_a_b_flooding_the_operator_with_waiting_lines_before_its_answer_is_cut_off_and_audited(path: str) -> None:
    """Before B's answer each of its lines of what the copy waits for reaches the operator: MAX_WAITING_LINES of
    them, then the transfer ends on A with its line naming B, and A's audit says how."""
    site = Site()
    records = recorded(site)
    party = Party()
    transfer, _ = site.copy(party)
    shown: list[str] = []
    transfer.waiting = shown.append
    transfer.answered = False  # as while B's answer waits (its moderators' approval): its lines are shown
    b = HostileB(site, transfer, path)
    for _ in range(MAX_WAITING_LINES + 10):
        b.send("waiting", "waiting for approval \x1b[2J")
    assert len(shown) == MAX_WAITING_LINES and transfer.ended
    assert records[-1][1].endswith("master B broke the protocol (too many waiting lines)")


# -- what B records of A's end --------------------------------------------------------------------------------------


class BRecord:
    """B's audit record of the transfer (master_side.copying.record.TransferRecord): its outcome."""

    def __init__(self) -> None:
        self.ended: tuple[bool, str] | None = None

    def entry(self, entry: Entry) -> None: ...
    def data(self, chunk: bytes) -> None: ...
    def file_done(self, entry: Entry, sha256: str) -> None: ...

    def end(self, ok: bool, reason: str, nbytes: int, files: int) -> None:
        self.ended = (ok, reason)


class BWorker:
    """B's worker's end of the transfer: what B's relay tells it."""

    def __init__(self) -> None:
        self.got: list[TransferEvent] = []

    def send(self, event: TransferEvent) -> None:
        self.got.append(event)

    def on_disconnect(self, callback: Any) -> Any:
        return lambda: None


class RecordingSite(Site):
    """The site with B's real relay (master_side.copying.relay.MasterTransfer) and its record."""

    def __init__(self) -> None:
        self.records: list[BRecord] = []
        self.workers: list[BWorker] = []
        super().__init__()

    def copier(self, who: Any, request: TransferRequest, party: Any) -> Any:
        record, worker = BRecord(), BWorker()
        self.records.append(record)
        self.workers.append(worker)
        transfer = MasterTransfer(f"t{len(self.records)}", who, request, record,  # type: ignore[arg-type]
                                  lambda transfer: None, self.clock.seconds)
        transfer.parties.update({OPERATOR: party, WORKER: worker})
        self.transfers.append(transfer)  # type: ignore[arg-type]
        return defer.succeed((transfer, {"total": 0, "entries": 0, "recorded": True}))


def b_took_what_a_sent_directly(site: RecordingSite, b: HostileB) -> None:
    """A's messages over the direct connection, taken by B's end of it (master_side.cluster.copy_serve)."""
    served = next(iter(site.served.served.values()))
    for wire in b.perspective.got:
        site.served.take(served, wire)


@pytest.mark.parametrize("path", PATHS)
def test_b_records_as_a_breach_found_by_a_not_as_the_operators_stop(path: str) -> None:
    """A ends the upload because B acknowledged more than was sent: B's record and its worker say master A ended it,
    finding that B broke the protocol; not "stopped by the operator", and none of A's line (B's own text)."""
    site = RecordingSite()
    transfer = upload(site)
    b = HostileB(site, transfer, path)
    b.send("ack", SENT + 1)
    assert transfer.ended
    if path == "direct":
        b_took_what_a_sent_directly(site, b)
    why = "ended by master A: it says master B broke the protocol"
    assert site.records[0].ended == (False, why)
    assert site.workers[0].got[-1] == Cancel(why)


@pytest.mark.parametrize("path", PATHS)
def test_b_records_what_a_said_of_its_operator_and_of_b_never_as_text(path: str) -> None:
    cases: list[tuple[Any, str]] = [
        # The operator's own stop on A (the web page's Cancel, with its own text): B hears the kind alone.
        (lambda t: t.decoded("operator", lambda: Cancel("\x1b]0;pwned\x07 typed on the page")),
         "ended by master A: its operator stopped it"),
        (lambda t: [callback() for callback in t.party.disconnects],
         "ended by master A: its operator's connection was lost"),
        (lambda t: t.arrived("operator", Data, (b"x" * (2 * 1024 * 1024 * 4),)),
         "ended by master A: its operator's client broke the protocol"),
    ]
    for act, why in cases:
        site = RecordingSite()
        party = Party()
        transfer = upload(site, party)
        b = HostileB(site, transfer, path)
        act(transfer)
        if path == "direct":
            b_took_what_a_sent_directly(site, b)
        assert site.records[0].ended == (False, why), why
        assert site.workers[0].got[-1] == Cancel(why)


def test_b_records_a_silent_b_found_by_a_and_never_a_hostile_as_text() -> None:
    site = RecordingSite()
    transfer = upload(site)
    site.clock.advance(DEAD + 1)
    site.routed.tick(site.clock.seconds())
    assert transfer.ended
    assert site.records[0].ended == (False, "ended by master A: it says master B stopped answering")
    # A hostile A (or one of an older slaveshell) cancels with text of its own: B records that A ended it, no more.
    for reason in ("\x1b]0;pwned\x07stopped by the operator", "master B broke the protocol: x", 7, "", None):
        site = RecordingSite()
        transfer = upload(site)
        assert transfer.calls is not None
        args = [] if reason is None else [reason]
        site.a.call(transfer.calls.uri, [3, "cancel", *args])
        assert site.records[0].ended == (False, "ended by master A"), reason
        assert site.workers[0].got[-1] == Cancel("ended by master A")
