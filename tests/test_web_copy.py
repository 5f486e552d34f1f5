"""Copy in the browser at unit level (master_side.www.copy_ws): a page's copy message as a transfer request, the
page's bounds (an upload's declared and streamed size, a download's entry whatever the worker claimed), the
relay's events to the page, and a directory's refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from master_side.copying.relay import OPERATOR, WORKER, MasterTransfer
from master_side.www.copy_ws import (
    BROWSER,
    MAX_WEB_DOWNLOAD,
    MAX_WEB_UPLOAD,
    TooLarge,
    WebCopy,
    refusal_text,
    web_request,
)
from slaveshell.vocabulary.copying import DOWN, UP, Data, Entry, TransferEvent, TransferRequest
from slaveshell.vocabulary.policy import WebIdentity
from slaveshell.vocabulary.protocol import MAX_CHUNK, ProtocolError

ALICE = WebIdentity.from_web("alice", ())


class Socket:
    """A copy socket's sends, kept (text as JSON, binary as bytes); `finish` noted."""

    def __init__(self) -> None:
        self.sending = True
        self.lost_callbacks: list[Callable[[], None]] = []
        self.sent: list[Any] = []
        self.finished = 0

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:  # noqa: N802
        self.sent.append(payload if isBinary else json.loads(payload))

    def send_json(self, message: dict[str, object]) -> None:
        self.sendMessage(json.dumps(message).encode(), False)

    def check_buffer(self) -> None:
        pass

    def finish(self) -> None:
        self.finished += 1


class Worker:
    def __init__(self) -> None:
        self.got: list[TransferEvent] = []

    def send(self, event: TransferEvent) -> None:
        self.got.append(event)

    def on_disconnect(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None


def started(request: TransferRequest, total: int = 0) -> tuple[WebCopy, Socket, Worker, MasterTransfer]:
    socket, worker = Socket(), Worker()
    copy = WebCopy(socket, request)
    transfer = MasterTransfer("t1", ALICE, request, None, lambda t: None)

    def api_copy(party: Any) -> Any:
        from twisted.internet import defer

        transfer.parties[OPERATOR], transfer.parties[WORKER] = party, worker
        return defer.succeed((transfer, {"total": total, "entries": 1, "recorded": True}))

    copy.start(api_copy)
    return copy, socket, worker, transfer


def test_a_download_request_names_one_worker_path_and_the_browser():
    request = web_request({"type": "copy", "direction": "down", "worker": "w1", "path": "/data/a.log", "reason": ""})
    assert (request.direction, request.sources, request.dest, request.recursive, request.reason) == (
        DOWN, ("/data/a.log",), BROWSER, False, None)


def test_an_upload_request_is_one_file_into_a_directory_and_bounded():
    request = web_request({"type": "copy", "direction": "up", "worker": "w1", "dest": "", "name": "a.txt",
                           "size": 5, "reason": "INC-1"})
    assert (request.direction, request.sources, request.dest, request.reason) == (UP, ("a.txt",), ".", "INC-1")
    with pytest.raises(TooLarge, match="more than the 1024 MiB a page uploads"):
        web_request({"type": "copy", "direction": "up", "worker": "w1", "dest": ".", "name": "a",
                     "size": MAX_WEB_UPLOAD + 1})
    for bad in ({"direction": "sideways", "worker": "w1", "path": "a"},
                {"direction": "down", "worker": "w1", "path": 3},
                {"direction": "down", "worker": "", "path": "a"},
                {"direction": "up", "worker": "w1", "dest": ".", "name": "a", "size": -1},
                {"direction": "up", "worker": "w1", "dest": ".", "name": "a\0b", "size": 1}):
        with pytest.raises(ProtocolError):
            web_request({"type": "copy", **bad})


def test_a_download_reaches_the_page_as_events_and_pieces_and_its_result_closes():
    _copy, socket, worker, transfer = started(TransferRequest(DOWN, "w1", ("a.bin",), BROWSER), total=300_000)
    assert socket.sent[0] == {"type": "copying", "transfer": "t1", "total": 300_000, "entries": 1, "recorded": True}
    transfer.arrived(WORKER, Entry, ("file", "a.bin", 0o644, 100_000, 0.0))
    transfer.arrived(WORKER, Data, (b"x" * 100_000,))
    assert socket.sent[1]["type"] == "entry" and socket.sent[1]["path"] == "a.bin"
    pieces = socket.sent[2:]
    assert all(isinstance(p, bytes) and len(p) <= MAX_CHUNK for p in pieces) and b"".join(pieces) == b"x" * 100_000


def test_a_download_larger_than_a_page_takes_ends_whatever_the_worker_claimed():
    # The worker's total claims too much: ended before a byte.
    _copy, socket, worker, transfer = started(TransferRequest(DOWN, "w1", ("a.bin",), BROWSER),
                                              total=MAX_WEB_DOWNLOAD + 1)
    assert transfer.ended and "more than the 1024 MiB a page downloads" in transfer.outcome[1]  # type: ignore[index]
    assert socket.sent[-1]["type"] == "result" and socket.sent[-1]["ok"] is False and socket.finished
    # A total that says little, and an entry that says more: ended at the entry, which the page never sees.
    _copy, socket, worker, transfer = started(TransferRequest(DOWN, "w1", ("a.bin",), BROWSER), total=10)
    transfer.arrived(WORKER, Entry, ("file", "a.bin", 0o644, MAX_WEB_DOWNLOAD + 1, 0.0))
    assert transfer.ended and not any(m.get("type") == "entry" for m in socket.sent if isinstance(m, dict))


def test_an_uploads_entry_larger_than_a_page_sends_ends_it():
    copy, socket, worker, transfer = started(TransferRequest(UP, "w1", ("a.bin",), "."))
    copy.message({"type": "entry", "kind": "file", "path": "a.bin", "mode": 0o644, "size": MAX_WEB_UPLOAD + 1,
                  "mtime": 0})
    assert transfer.ended and "more than the 1024 MiB a page uploads" in transfer.outcome[1]  # type: ignore[index]
    assert not any(isinstance(e, Entry) for e in worker.got)


def test_the_pages_events_are_the_relays_to_check():
    copy, socket, worker, transfer = started(TransferRequest(UP, "w1", ("a.bin",), "."))
    copy.message({"type": "entry", "kind": "file", "path": "a.bin", "mode": 0o644, "size": 3, "mtime": 0})
    copy.data(b"abc")
    copy.data(b"d")  # past the declared size
    assert transfer.ended and "more bytes than its declared size" in transfer.outcome[1]  # type: ignore[index]


def test_messages_before_the_transfer_started_are_the_pages_fault():
    copy = WebCopy(Socket(), TransferRequest(UP, "w1", ("a.bin",), "."))
    with pytest.raises(ProtocolError):
        copy.message({"type": "finish"})
    with pytest.raises(ProtocolError):
        copy.data(b"x")


def test_a_directory_is_refused_with_the_way_to_copy_one():
    assert refusal_text("worker w1: /srv/tree: is a directory (use -r)") == (
        "worker w1: /srv/tree: is a directory: the page copies single files (slaveshell cp -r copies directories)")
    assert refusal_text("permission denied") == "permission denied"


class Routed:
    """A transfer another master relays (master_side.cluster.copy_relay.RoutedTransfer), as the socket sees it:
    what it was sent, and its end."""

    def __init__(self) -> None:
        self.id = "r1"
        self.undo: list[Callable[[], None]] = []
        self.got: list[TransferEvent] = []
        self.ended: str | None = None

    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None:
        self.got.append(kind.from_wire(*args))  # type: ignore[arg-type]

    def decoded(self, side: str, decode: Callable[[], TransferEvent]) -> None:
        self.got.append(decode())

    def end(self, why: str) -> None:
        self.ended = why
        for undo in self.undo:
            undo()


def routed(first: list[TransferEvent], total: int = 100) -> tuple[WebCopy, Socket, Routed]:
    """A routed download whose master sent `first` before its answer (copy_relay delivers them as it starts)."""
    from twisted.internet import defer

    socket, transfer = Socket(), Routed()
    copy = WebCopy(socket, TransferRequest(DOWN, "b1", ("a.bin",), BROWSER))

    def api_copy(party: Any) -> Any:
        for event in first:
            party.send(event)
        return defer.succeed((transfer, {"total": total, "entries": 1, "recorded": True}))

    copy.start(api_copy)
    return copy, socket, transfer


def test_a_routed_downloads_first_events_reach_the_page_after_it_is_told_it_started():
    copy, socket, transfer = routed([Entry("file", "a.bin", 0o644, 3, 0.0), Data(b"abc")])
    assert [m["type"] if isinstance(m, dict) else m for m in socket.sent] == ["copying", "entry", b"abc"]
    copy.message({"type": "ack", "n": 3})
    assert transfer.got and transfer.got[0].call == "ack"


def test_a_routed_downloads_entry_larger_than_a_page_takes_ends_it_before_the_page_sees_it():
    _copy, socket, transfer = routed([Entry("file", "a.bin", 0o644, MAX_WEB_DOWNLOAD + 1, 0.0)])
    assert transfer.ended is not None and "more than the 1024 MiB a page downloads" in transfer.ended
    assert not any(isinstance(m, dict) and m.get("type") == "entry" for m in socket.sent)
    _copy, socket, transfer = routed([], total=MAX_WEB_DOWNLOAD + 1)
    assert transfer.ended is not None and socket.finished and socket.sent == []
