"""Copy in the browser: one `slaveshell cp` transfer on a socket of the web door (master_side.www.terminal_ws),
through the operator API's `copy_anywhere` (master_side.operators.copy_calls) like the framed door's
(master_side.shell_socket.copy_door): the policy's ``copy`` right, the quotas, the worker's allowed_dirs and its
owner's allowed_users, the record written before a byte is served, the relay's checks of every message (order,
declared sizes, the credit window, sha256). The socket was admitted as the terminal's are (Origin, the login and
its shell grant, the socket quotas); Buildbot's authz must grant the ``shell`` action on the worker, as for a
session. On a multi-master site, a worker another master holds is copied through that master, under its policy,
quotas and record (master_side.cluster.copy_relay); the page's bounds below are still checked here.

Why the WebSocket and not an HTTP endpoint: it is the door that already checks the Origin, the login and its grant,
and counts its sockets; its frames carry the relay's credit window both ways, so the master holds at most a window
per transfer whatever the page does. Twisted's web server reads a whole request body (into memory, or a temporary
file past 100 KB) before a resource sees it, so an upload by POST could not be refused or paced as it arrives;
and a download by GET is a navigation, which browsers send without an Origin header, so it would need a token of
its own against other sites' pages.

Messages on a copy socket (the first one makes it one; it carries one transfer, then the master closes it):

- page -> master, text: ``{"type": "copy", "direction": "down", "worker": str, "path": str, "reason": str?}`` (a
  worker's file to the page) or ``{"type": "copy", "direction": "up", "worker": str, "dest": str, "name": str,
  "size": int, "reason": str?}`` (a file of the page into the worker's directory `dest`, under `name`). Worker paths
  are absolute or relative to the worker's base directory. Then the transfer's events (slaveshell.vocabulary.copying)
  as ``{"type": <call>, **fields}``: the sender's ``entry``, ``done_file`` (``sha256``: "" leaves it to the master),
  ``finish``, ``abort`` for an upload; the receiver's ``ack`` (``n``) and ``result`` (``ok``, ``reason``) for a
  download; ``cancel`` (``reason``) either way. Binary: ``data`` (an upload's bytes, at most MAX_CHUNK a frame).
- master -> page, text: ``{"type": "copying", "transfer": str, "total": int, "recorded": bool}`` once the transfer
  has started, then the relay's events as ``{"type": <call>, **fields}`` (a download's ``entry``, ``done_file``
  with the master's sha256, ``finish``; an upload's ``ack``; ``result`` at the end), binary: a download's bytes
  in pieces of at most MAX_CHUNK; ``{"type": "error", "message"}`` for a refusal. Then the master closes.

Bounds: MAX_WEB_DOWNLOAD and MAX_WEB_UPLOAD bytes a file (the page holds a download whole until it is saved, as a
Blob; both are checked here, the download's at its entry, whatever total the worker claimed), one file per
transfer (a directory is refused with a line naming ``slaveshell cp -r``), MAX_COPIES_PER_USER transfers at once
per web user and MAX_COPIES in all (beside the operator API's per-operator, per-worker and master-wide quotas).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

from master_side.copying.relay import OPERATOR, MasterTransfer
from master_side.sessions.worker_link import Undo, subscribe
from slaveshell.vocabulary.copying import (
    DOWN,
    UP,
    Data,
    Entry,
    Result,
    TransferEvent,
    TransferRequest,
    from_fields,
)
from slaveshell.vocabulary.flow import chunks
from slaveshell.vocabulary.protocol import MAX_CHUNK, ProtocolError, check_int, check_str, check_worker_name

if TYPE_CHECKING:
    from master_side.www.lists import Message

# The largest file a page downloads (it holds it whole until it is saved) and uploads, in bytes.
MAX_WEB_DOWNLOAD = 1024 * 1024 * 1024
MAX_WEB_UPLOAD = 1024 * 1024 * 1024
# Transfers from pages at once, per web user and in all.
MAX_COPIES_PER_USER = 2
MAX_COPIES = 16
# Where a download goes, as the index row says it (`cp down: w1:/path -> (browser)`).
BROWSER = "(browser)"
# The worker's refusal of a directory, as slaveshell.files.sender says it to `slaveshell cp`.
_DIRECTORY = "is a directory (use -r)"


class CopySocket(Protocol):
    """What the transfer asks of its socket (master_side.www.terminal_ws.TerminalProtocol)."""

    @property
    def sending(self) -> bool: ...
    @property
    def lost_callbacks(self) -> list[Callable[[], None]]: ...
    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None: ...  # noqa: N802 (autobahn's)
    def send_json(self, message: Message) -> None: ...
    def check_buffer(self) -> None: ...
    def finish(self) -> None: ...


def web_request(message: Message) -> TransferRequest:
    """The transfer a page's ``copy`` message asks for; ProtocolError when it is malformed, `TooLarge` when an
    upload is larger than MAX_WEB_UPLOAD."""
    direction, reason = message.get("direction"), message.get("reason")
    worker = check_worker_name(message.get("worker"))  # first: a refusal for its size names it in the audit index
    if reason == "":
        reason = None
    common = {"worker": worker, "reason": reason, "recursive": False, "preserve": False}
    if direction == DOWN:
        path = check_str(message.get("path"), "path", 4096)
        wire: dict[str, object] = {"direction": DOWN, "sources": [path], "dest": BROWSER, **common}
    elif direction == UP:
        name = check_str(message.get("name"), "name", 255)
        size = check_int(message.get("size"), "size", 0, 2**50)
        if size > MAX_WEB_UPLOAD:
            raise TooLarge(f"{name}: {size} bytes, more than the {MAX_WEB_UPLOAD >> 20} MiB a page uploads "
                           "(slaveshell cp has no such bound)")
        dest = check_str(message.get("dest"), "dest", 4096) or "."
        wire = {"direction": UP, "sources": [name], "dest": dest, **common}
    else:
        raise ProtocolError("copy needs a direction: up or down")
    return TransferRequest.from_wire(wire)


class TooLarge(ProtocolError):
    """A transfer larger than a page's bound; the message is for the page."""


class RoutedTransfer(Protocol):
    """A transfer another master of the site relays (master_side.cluster.copy_relay.RoutedTransfer), as the page's
    socket holds it: what MasterTransfer is for a local one, ended with its reason alone."""

    @property
    def id(self) -> str: ...
    @property
    def undo(self) -> list[Callable[[], None]]: ...
    def arrived(self, side: str, kind: type[TransferEvent], args: tuple[object, ...]) -> None: ...
    def decoded(self, side: str, decode: Callable[[], TransferEvent]) -> None: ...
    def end(self, why: str) -> None: ...


WebTransfer = MasterTransfer | RoutedTransfer


def end_failed(transfer: WebTransfer, why: str) -> None:
    """End `transfer` as failed: the page is told `result(false, ...)`, the worker `cancel`."""
    if isinstance(transfer, MasterTransfer):
        transfer.end(False, why)
    else:
        transfer.end(why)


class WebCopyParty:
    """The page's end of a transfer (master_side.copying.relay.PartyEnd): each event as a JSON message, a
    download's bytes as binary messages of at most MAX_CHUNK; then the connection gate's bound (a page that does
    not read is dropped). A download's entry larger than MAX_WEB_DOWNLOAD ends the transfer instead. Events that
    come before the transfer has started (a routed download's first, which its master sent before its answer, at
    most its credit window) wait until the page is told it started."""

    def __init__(self, socket: CopySocket) -> None:
        self.socket = socket
        self.transfer: WebTransfer | None = None
        self.early: list[TransferEvent] | None = []  # None once the page is told the transfer started

    def started(self, transfer: WebTransfer) -> None:
        """The page is told: what waited goes to it, in order."""
        self.transfer = transfer
        early, self.early = self.early or [], None
        for event in early:
            self.send(event)

    def send(self, event: TransferEvent) -> None:
        socket = self.socket
        if not socket.sending:
            return
        if self.early is not None:
            self.early.append(event)
            return
        if isinstance(event, Data):
            for piece in chunks(event.chunk, MAX_CHUNK) if len(event.chunk) > MAX_CHUNK else [event.chunk]:
                socket.sendMessage(piece, isBinary=True)
            socket.check_buffer()
            return
        if isinstance(event, Entry) and event.size > MAX_WEB_DOWNLOAD and self.transfer is not None:
            end_failed(self.transfer, f"{event.path}: {event.size} bytes, more than the {MAX_WEB_DOWNLOAD >> 20} "
                                      "MiB a page downloads (use slaveshell cp)")
            return
        socket.send_json({"type": event.call, **event.fields()})
        if isinstance(event, Result):
            socket.finish()

    def waiting(self, text: str) -> None:
        """The transfer waits before it starts (a moderator's approval): the page shows the line."""
        if self.socket.sending:
            self.socket.send_json({"type": "waiting", "text": text})

    def on_disconnect(self, callback: Callable[[], None]) -> Undo:
        if not self.socket.sending:
            callback()  # gone while the transfer started
            return lambda: None
        return subscribe(self.socket.lost_callbacks, callback)


class WebCopy:
    """A socket's transfer: `start` asks the operator API, `message` and `data` take the page's events."""

    def __init__(self, socket: CopySocket, request: TransferRequest) -> None:
        self.socket = socket
        self.request = request
        self.party = WebCopyParty(socket)
        self.transfer: WebTransfer | None = None

    def start(self, copy: Callable[[WebCopyParty], Deferred[tuple[WebTransfer, dict[str, object]]]]
              ) -> Deferred[None]:
        """`copy(party)` (the operator API's `copy_anywhere`, bound to who asks and what): fires once the page is
        told, or fails with what `copy` raised."""

        def started(result: tuple[WebTransfer, dict[str, object]]) -> None:
            transfer, sizes = result
            self.transfer = transfer
            transfer.undo.append(self.socket.finish)  # the transfer's end closes the socket (after its result)
            total = sizes.get("total", 0)
            if self.request.direction == DOWN and isinstance(total, int) and total > MAX_WEB_DOWNLOAD:
                self.party.transfer = transfer
                self.party.early = None
                end_failed(transfer, f"{total} bytes, more than the {MAX_WEB_DOWNLOAD >> 20} MiB a page downloads "
                                     "(use slaveshell cp)")
                return
            self.socket.send_json({"type": "copying", "transfer": transfer.id, **sizes})
            self.party.started(transfer)

        return copy(self.party).addCallback(started)

    def message(self, message: Message) -> None:
        """A transfer event from the page (JSON): to the relay, which checks it; an upload's entry larger than
        MAX_WEB_UPLOAD ends the transfer."""
        transfer = self.transfer
        if transfer is None:
            raise ProtocolError("a transfer message before the transfer started")
        kind = message.get("type")

        def decode() -> TransferEvent:
            event = from_fields(kind, lambda name: message.get(name))
            if isinstance(event, Entry) and event.size > MAX_WEB_UPLOAD:
                raise ProtocolError(f"{event.path}: more than the {MAX_WEB_UPLOAD >> 20} MiB a page uploads")
            return event

        transfer.decoded(OPERATOR, decode)

    def data(self, payload: bytes) -> None:
        transfer = self.transfer
        if transfer is None:
            raise ProtocolError("data before the transfer started")
        transfer.arrived(OPERATOR, Data, (payload,))


def refusal_text(reason: str) -> str:
    """The worker's refusal as the page says it: a directory is refused with the way to copy one."""
    if reason.endswith(_DIRECTORY):
        return (reason[: -len(_DIRECTORY)] + "is a directory: the page copies single files "
                "(slaveshell cp -r copies directories)")
    return reason
