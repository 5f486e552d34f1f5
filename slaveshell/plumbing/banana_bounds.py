"""What a PB peer may make Twisted's Banana hold, bounded: before it has logged in, and per connection after.

Banana (PB's encoding, twisted/spread/banana.py) keeps every item of a list until the list's last item has come:
a peer that sends the header of a long list, then items and never the rest, makes the receiver hold whatever it
sends (Twisted bounds one string, or one list's length, to ``SIZE_LIMIT``, 640 KiB, and nothing else: a list of
600,000 small items, or of 400 strings of 512 KiB, are each one expression it accepts). On the master's PB port,
which every worker reaches, anyone can do that before logging in. `install()` counts, per connection, what Banana
holds for the expression it has not finished (the bytes read since the read in which its last expression ended, and
the items it made of them) and closes the connection once either passes the connection's bound, with one log line
(who, and which bound: never what was sent):

- before login (`PRE_LOGIN`): a PB login is a few small messages (the root object, ``login``, ``respond`` with
  the worker's mind), well under 1 KiB and 20 items each; 64 KiB and 2,048 items leave room for any user name.
  What all connections not logged in hold together is bounded too (`PRE_LOGIN_TOTAL`, counting each item as
  `ITEM_COST` bytes): past it, the connection whose read passes it is closed.
- after login (`LOGGED_IN`, and on a connection this process opened itself: a worker's to its master): Buildbot's
  own largest messages are far below it. A worker's ``update`` carries at most about 64 KiB of log text
  (buildbot_worker's BufferManager flushes at ``buffer_size``, 64 KiB) with one newline position and one time
  per line: 64 KiB of empty lines is ~130,000 items, ~1 MiB. A file upload's ``write`` carries one block
  (``blocksize``: 16 KiB for FileUpload and DirectoryUpload by default, 256 KiB for some; Banana refuses more than
  640 KiB anyway); the worker's info dict (its environment, its command list) is a few hundred items. A build
  step's arguments (a command line is at most the kernel's ARG_MAX, 2 MiB) are the largest thing a master sends.
  16 MiB and 1,000,000 items are several times each.

An item costs Banana at most about `ITEM_COST` bytes of memory (a nested list header: a tuple, a list, its slot),
so a connection holds at most about ``bytes + items * ITEM_COST`` for its unfinished expression: ~330 KiB before
login, ~140 MB after (a hostile worker; it also needs a worker's password).

Installed with slaveshell.plumbing.banana_buffer (which it wraps: the strings that one gathers are counted as they
come).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from twisted.spread import banana

from slaveshell.plumbing import banana_buffer

log = Logger()

# About what one item costs Banana at most (a list header: its (length, []) tuple and list, and its slot).
ITEM_COST = 128


@dataclass(frozen=True)
class Bound:
    """What one connection's unfinished expression may hold: bytes read for it, items made of them."""

    bytes: int
    items: int


PRE_LOGIN = Bound(64 * 1024, 2048)
LOGGED_IN = Bound(16 * 1024 * 1024, 1_000_000)
# What every connection not logged in holds together, counting each item as ITEM_COST bytes.
PRE_LOGIN_TOTAL = 32 * 1024 * 1024


class _Refused(Exception):
    """One of the connection's bounds is passed (raised out of Banana's loop, caught by `dataReceived`)."""


class _Held:
    """One connection's count: bytes and items of its unfinished expression, and its share of the total."""

    __slots__ = ("bytes", "items", "counted", "ended")

    def __init__(self) -> None:
        self.bytes = 0
        self.items = 0
        self.counted = 0  # what this connection adds to `_pre_login` now
        self.ended = False  # an expression ended during the read being handled


_pre_login = 0  # what connections not logged in hold together (bytes + items * ITEM_COST)


def pre_login_held() -> int:
    """What connections not logged in hold together now (bytes, with each item as ITEM_COST): for tests."""
    return _pre_login


def logged_in(protocol: Any) -> bool:
    """Whether `protocol`'s peer has logged in: PB's portal keeps the avatar's logout in the broker's
    ``_localCleanup`` once the login succeeded (twisted.spread.pb._JellyableAvatarMixin._cbLogin). A connection
    this process opened (a client broker: a worker's to its master) counts as logged in: it chose its peer."""
    return bool(getattr(protocol, "isClient", True)) or bool(getattr(protocol, "_localCleanup", None))


def _held(protocol: Any) -> _Held:
    held: _Held | None = protocol.__dict__.get("_slaveshell_held")
    if held is None:
        held = protocol.__dict__["_slaveshell_held"] = _Held()
    return held


def _holds_nothing(protocol: Any) -> bool:
    return not protocol.listStack and not protocol.buffer and not protocol.__dict__.get(banana_buffer.GATHERING)


def _count(protocol: Any, held: _Held, pre_login: bool) -> None:
    """Bring this connection's share of the pre-login total up to date; _Refused past a bound."""
    global _pre_login
    items = held.items + len(protocol.listStack)  # the lists begun and not ended hold themselves
    share = held.bytes + items * ITEM_COST if pre_login else 0
    _pre_login += share - held.counted
    held.counted = share
    bound = PRE_LOGIN if pre_login else LOGGED_IN
    if held.bytes > bound.bytes or items > bound.items or (pre_login and share and _pre_login > PRE_LOGIN_TOTAL):
        raise _Refused


def _forget(protocol: Any) -> None:
    global _pre_login
    held = protocol.__dict__.get("_slaveshell_held")
    if held is not None:
        _pre_login -= held.counted
        held.counted = held.bytes = held.items = 0


def _refuse(protocol: Any, pre_login: bool) -> None:
    """Close the connection now and let go of what Banana held for it; one log line (no content)."""
    held = _held(protocol)
    bound = PRE_LOGIN if pre_login else LOGGED_IN
    which = ("items" if held.items + len(protocol.listStack) > bound.items else "bytes" if held.bytes > bound.bytes
             else "total before login")
    protocol.__dict__["_slaveshell_refused"] = True
    _forget(protocol)
    protocol.listStack = []
    protocol.buffer = b""
    protocol.__dict__[banana_buffer.GATHERING] = None
    transport = getattr(protocol, "transport", None)
    peer: Any = getattr(transport, "getPeer", lambda: None)()
    where = f"{peer.host}:{peer.port}" if hasattr(peer, "host") and hasattr(peer, "port") else "a peer"
    log.warn("slaveshell: closed the PB connection from {where}: it sent more than Banana may hold for one "
             "message {when} ({which}: at most {nbytes} bytes, {items} items)", where=where,
             when="after login" if not pre_login else "before logging in", which=which, nbytes=bound.bytes,
             items=bound.items)
    abort = getattr(transport, "abortConnection", None) or getattr(transport, "loseConnection", None)
    if abort is not None:
        abort()


def install() -> bool:
    """Wrap Banana's receiving (`dataReceived`, `gotItem`, and PB's `connectionLost`) once per process, with
    slaveshell.plumbing.banana_buffer under it; True when it is (or was already) in place."""
    banana_buffer.install()
    inner: Callable[[banana.Banana, bytes], None] = banana.Banana.dataReceived
    if getattr(inner, "slaveshell_bounded", False):
        return True
    got_item: Callable[[banana.Banana, object], None] = banana.Banana.gotItem

    def dataReceived(self: banana.Banana, chunk: bytes) -> None:
        if self.__dict__.get("_slaveshell_refused"):
            return
        pre_login = not logged_in(self)
        self.__dict__[banana_buffer.FIT_READS] = not pre_login  # a peer not logged in is read 64 KiB at a time
        held = _held(self)
        held.ended = False
        try:
            inner(self, chunk)
            if _holds_nothing(self):
                held.bytes = held.items = 0
            elif held.ended:
                # An expression ended in this read: what it and those before took is no longer held, so the
                # unfinished one holds at most this read (a busy connection's reads seldom end where a message
                # does: counting from the last empty moment would add up a stream of finished messages).
                held.bytes = len(chunk)
            else:
                held.bytes += len(chunk)
            _count(self, held, pre_login)
        except _Refused:
            _refuse(self, pre_login)

    def gotItem(self: banana.Banana, item: object) -> None:
        if self.listStack:  # one more item held until its expression ends
            held = self.__dict__.get("_slaveshell_held") or _held(self)
            held.items += 1
            if held.items > LOGGED_IN.items or (held.items > PRE_LOGIN.items and not logged_in(self)):
                raise _Refused
            got_item(self, item)
            return
        held = self.__dict__.get("_slaveshell_held")
        if held is not None:
            held.items = 0  # a whole expression: Banana holds none of its items any more
            held.ended = True
        got_item(self, item)

    dataReceived.slaveshell_bounded = True  # type: ignore[attr-defined]
    dataReceived.slaveshell_gathers = True  # type: ignore[attr-defined]  # (banana_buffer's, underneath)
    dataReceived.slaveshell_original = getattr(inner, "slaveshell_original", inner)  # type: ignore[attr-defined]
    banana.Banana.dataReceived = dataReceived  # type: ignore[method-assign]
    if not getattr(got_item, "slaveshell_counts", False):
        gotItem.slaveshell_counts = True  # type: ignore[attr-defined]
        banana.Banana.gotItem = gotItem  # type: ignore[method-assign]
    _forget_on_close()
    return True


def _forget_on_close() -> None:
    """A closed connection's share of the pre-login total goes with it."""
    from twisted.spread import pb

    lost: Callable[[pb.Broker, object], None] = pb.Broker.connectionLost
    if getattr(lost, "slaveshell_forgets", False):
        return

    def connectionLost(self: pb.Broker, reason: object) -> None:
        _forget(self)
        lost(self, reason)

    connectionLost.slaveshell_forgets = True  # type: ignore[attr-defined]
    pb.Broker.connectionLost = connectionLost  # type: ignore[method-assign]
