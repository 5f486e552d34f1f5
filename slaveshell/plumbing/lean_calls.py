"""Lean calls: a session's stream events (input, output and their acknowledgements) on the worker's PB connection,
each sent as one Banana list instead of a PB message.

Why: an answer-less `callRemote` is jelly-serialized, Banana-encoded, then on the other side Banana-decoded,
unjellied and dispatched by PB's broker. For a one-byte keystroke in a hot loop that is ~150 µs of Python on this
kind of machine (sender ~55, receiver ~98) against ~50 µs for the same event as a Banana list dispatched here; at
keystroke spacing between two processes (cold caches, bench/echo_parts.py parts ``pb1-tcp`` and ``lean-tcp``,
over a raw TCP ping-pong) 316-333 µs against 128-162 µs a message. A keystroke's echo is two such events on the
worker's link. A bulk output message is also written without Banana's two copies of its payload
(the header and the bytes to the kernel in one sendmsg when the connection holds nothing unsent, else
``transport.writeSequence``: slaveshell.plumbing.write_now).

The wire (Twisted's Banana, the PB dialect; twisted/spread/banana.py and pb.py ``Broker.expressionReceived``)::

    [b"slaveshell", luid, method, *args]

`luid` is the receiver's id of a `pb.Referenceable` it exported on this very connection (a `RemoteReference`'s
``luid``), `method` one of `CODECS` (ASCII bytes), and `args` Banana's own types as the codec lays them out.
``Broker.expressionReceived`` hands a list whose first item is ``b"slaveshell"`` to the broker's
``proto_slaveshell``, which `accept()` sets on one broker; a broker without it answers ``didNotUnderstand``, so
a lean call is only sent to a peer that said it takes them:

- the worker says ``"lean": True`` in its answer to the master's open (it has called `accept` on that broker);
- the master (which called `accept` before opening) then sends its input and acks leanly and makes one ``lean``
  call on the session, after which the worker sends its output and input_acks leanly.

A transfer (`slaveshell cp`, slave_side.transfer and master_side.copying.relay) negotiates the same way, per transfer:
its stream's entry, data, done_file and ack go leanly both ways once the master's ``lean`` call has told the
worker's transfer object.

Old workers never see a lean call; an old master ignores the reply's key and never asks. Both kinds of message
travel in order on the same connection, so a session's events keep their order across the switch.

Security: the receiving object must be a `LeanReceiver` exported on the receiving broker (PB's table of local
objects is per connection, so a worker reaches only what the master gave that worker), and the method one its
class lists. Arguments are decoded by the method's codec (shapes only) and then checked by the same
``remote_*`` method a PB call would reach. A malformed call goes to the receiver's `lean_refused`; no exception
ever reaches Banana's ``dataReceived``, which would drop the worker's connection and fail its builds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.logger import Logger
from twisted.spread import banana, pb

from slaveshell.plumbing import upstream
from slaveshell.plumbing.remote import RemotePeer
from slaveshell.plumbing.write_now import write_frame, write_now
from slaveshell.vocabulary.copying import Ack, Data, DoneFile, Entry
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.protocol import ProtocolError

log = Logger()

COMMAND = b"slaveshell"
# Payloads at least this long are written after their header rather than copied into it.
WRITE_APART = 4096

Wire = list[object]


@dataclass(frozen=True)
class Codec:
    """How one method's arguments are laid out as Banana items (`encode`) and read back (`decode`, raising
    ProtocolError for a shape no sender of ours makes). A byte-string payload is always the last item."""

    encode: Callable[..., Wire]
    decode: Callable[[Sequence[object]], tuple[object, ...]]


def _one(kind: type, what: str) -> Callable[[Sequence[object]], tuple[object, ...]]:
    def decode(items: Sequence[object]) -> tuple[object, ...]:
        if len(items) != 1 or not isinstance(items[0], kind) or isinstance(items[0], bool):
            raise ProtocolError(f"{what}: expected one {kind.__name__}")
        return (items[0],)

    return decode


def _encode_output(stream: int, data: bytes, acks: Sequence[Sequence[object]] = ()) -> Wire:
    flat: list[object] = []
    for nbytes, hidden in acks:
        flat += [nbytes, 1 if hidden else 0]
    return [stream, flat, data]


def _decode_output(items: Sequence[object]) -> tuple[object, ...]:
    """-> (stream, data, acks) as `remote_output` takes them: acks a list of [nbytes, hidden] or ()."""
    if len(items) != 3 or not isinstance(items[1], list) or len(items[1]) % 2:
        raise ProtocolError("output: expected stream, [nbytes, hidden, ...], data")
    flat = items[1]
    acks: list[list[object]] = []
    for nbytes, hidden in zip(flat[::2], flat[1::2], strict=True):
        if hidden not in (0, 1) or isinstance(hidden, bool):
            raise ProtocolError("output: an ack's hidden flag must be 0 or 1")
        acks.append([nbytes, hidden == 1])
    return (items[0], items[2], acks) if acks else (items[0], items[2])


def _decode_input_ack(items: Sequence[object]) -> tuple[object, ...]:
    if len(items) != 2 or items[1] not in (0, 1) or isinstance(items[1], bool):
        raise ProtocolError("input_ack: expected nbytes, hidden (0 or 1)")
    return (items[0], items[1] == 1)


def _text(item: object, what: str, encoding: str, errors: str = "strict") -> str:
    if not isinstance(item, bytes):
        raise ProtocolError(f"{what}: expected bytes")
    try:
        return item.decode(encoding, errors)
    except UnicodeDecodeError:
        raise ProtocolError(f"{what}: not {encoding}") from None


def _encode_entry(kind: str, path: str, mode: int, size: int, mtime: float) -> Wire:
    # A path that is not UTF-8 (a surrogate-escaped name) travels with its surrogates (surrogatepass); the receiver
    # decodes them back and checks the path (copying.check_relpath: surrogates that stand for bytes only).
    return [kind.encode("ascii"), path.encode("utf-8", "surrogatepass"), mode, size, float(mtime)]


def _decode_entry(items: Sequence[object]) -> tuple[object, ...]:
    """-> (kind, path, mode, size, mtime) as `remote_entry` takes them (it checks the values: copying.Entry)."""
    if len(items) != 5:
        raise ProtocolError("entry: expected kind, path, mode, size, mtime")
    return (_text(items[0], "entry kind", "ascii"), _text(items[1], "entry path", "utf-8", "surrogatepass"), *items[2:])


def _decode_done_file(items: Sequence[object]) -> tuple[object, ...]:
    if len(items) != 1:
        raise ProtocolError("done_file: expected one sha256")
    return (_text(items[0], DoneFile.call, "ascii"),)


def _ints(n: int, what: str) -> Callable[[Sequence[object]], tuple[object, ...]]:
    def decode(items: Sequence[object]) -> tuple[object, ...]:
        if len(items) != n or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ProtocolError(f"{what}: expected {n} integers")
        return tuple(items)

    return decode


def _ints_then_bytes(n: int, what: str) -> Callable[[Sequence[object]], tuple[object, ...]]:
    ints = _ints(n, what)

    def decode(items: Sequence[object]) -> tuple[object, ...]:
        if len(items) != n + 1 or not isinstance(items[-1], bytes):
            raise ProtocolError(f"{what}: expected {n} integers and bytes")
        return (*ints(items[:-1]), items[-1])

    return decode


def _decode_routed_input_ack(items: Sequence[object]) -> tuple[object, ...]:
    """-> (seq, nbytes, hidden, flush), the flags as booleans."""
    seq, nbytes = _ints(2, "routed_input_ack")(items[:2])
    if len(items) != 4 or any(f not in (0, 1) or isinstance(f, bool) for f in items[2:]):
        raise ProtocolError("routed_input_ack: expected seq, nbytes, hidden and flush (0 or 1)")
    return (seq, nbytes, items[2] == 1, items[3] == 1)


#: The methods that may travel leanly, and their layouts. Values are checked by the receiving ``remote_*``.
#: A session's: input, ack, output, input_ack; a transfer's (slaveshell.vocabulary.copying's stream events): entry,
# data,
#: done_file, ack (one credit, laid out as a session's ack).
CODECS: dict[str, Codec] = {
    "input": Codec(lambda data: [data], _one(bytes, "input")),
    "input_z": Codec(lambda data: [data], _one(bytes, "input_z")),  # deflated (slaveshell.vocabulary.deflate)
    "ack": Codec(lambda nbytes: [nbytes], _one(int, "ack")),
    "output": Codec(_encode_output, _decode_output),
    "output_z": Codec(_encode_output, _decode_output),  # the same, its data deflated (slaveshell.vocabulary.deflate)
    "input_ack": Codec(lambda nbytes, hidden: [nbytes, 1 if hidden else 0], _decode_input_ack),
    Entry.call: Codec(_encode_entry, _decode_entry),
    Data.call: Codec(lambda chunk: [chunk], _one(bytes, Data.call)),
    DoneFile.call: Codec(lambda sha256: [sha256.encode("ascii")], _decode_done_file),
    # A routed session's messages on the direct connection between two masters (master_side.cluster.direct): the
    # message's seq first; the values are checked by master_side.cluster.stream where the message is taken.
    "routed_output": Codec(lambda seq, stream, data: [seq, stream, data], _ints_then_bytes(2, "routed_output")),
    "routed_input": Codec(lambda seq, data: [seq, data], _ints_then_bytes(1, "routed_input")),
    "routed_ack": Codec(lambda seq, nbytes: [seq, nbytes], _ints(2, "routed_ack")),
    # A routed transfer's data (master_side.cluster.copy_stream): the seq, then the chunk (copying.Data checks its
    # size where the message is taken); its acknowledgements go as `routed_ack`.
    "routed_data": Codec(lambda seq, chunk: [seq, chunk], _ints_then_bytes(1, "routed_data")),
    "routed_input_ack": Codec(lambda seq, nbytes, hidden, flush: [seq, nbytes, 1 if hidden else 0, 1 if flush else 0],
                              _decode_routed_input_ack),
}
assert Ack.call == "ack"


class LeanReceiver(pb.Referenceable):
    """A `pb.Referenceable` that also takes the lean form of the ``remote_*`` methods named in `lean_methods`."""

    lean_methods: ClassVar[frozenset[str]] = frozenset()

    def lean_refused(self, method: str, error: ProtocolError) -> None:
        """A lean call whose shape was wrong (`error` says how). Receivers report it as they report a bad PB
        call; this default only logs it."""
        log.warn("slaveshell: a malformed lean {method} call was dropped: {e}", method=visible(method),
                 e=visible(error))


def accept(broker: object) -> bool:
    """Let `broker` (one PB connection) receive lean calls. Idempotent. False, and nothing done, when it is not a
    `pb.Broker` (a test's stand-in reference, a connection that is not PB), or when Twisted's broker does not find
    commands by name (slaveshell.plumbing.upstream): then no lean call may be asked for."""
    if not isinstance(broker, pb.Broker) or not upstream.lean_dispatch():
        return False
    if "proto_slaveshell" not in broker.__dict__:
        broker.proto_slaveshell = functools.partial(_received, broker)  # type: ignore[attr-defined]
    return True


def _received(broker: pb.Broker, luid: object = None, method: object = None, *items: object) -> None:
    """``Broker.expressionReceived`` for ``[b"slaveshell", luid, method, *items]``; never raises."""
    target = broker.localObjectForID(luid) if isinstance(luid, int) else None
    name = method.decode("ascii", "replace") if isinstance(method, bytes) else ""
    if not isinstance(target, LeanReceiver):
        # Counted per connection and logged at the 1st, 2nd, 4th, 8th... drop: a peer's flood of them (each
        # ~15 bytes) is a few lines of the log, not one line per call.
        dropped = broker.__dict__.get("slaveshell_lean_dropped", 0) + 1
        broker.slaveshell_lean_dropped = dropped  # type: ignore[attr-defined]
        if dropped & (dropped - 1) == 0:
            log.warn("slaveshell: {n} lean call(s) to an object that takes none dropped on this connection",
                     n=dropped)
        return
    try:
        if name not in target.lean_methods:
            raise ProtocolError("a lean call of a method that has none")
        args = CODECS[name].decode(items)
    except ProtocolError as e:
        target.lean_refused(name, e)
        return
    try:
        getattr(target, "remote_" + name)(*args)
    except pb.Error:
        pass  # the receiver reported it, as it does for the same PB call (and a lean call has no answer)
    except Exception:
        log.failure("slaveshell: a lean {method} call failed", method=name)


class LeanPeer(RemotePeer):
    """A `RemotePeer` whose stream events go leanly once `lean` is set (the peer said it takes them); every
    other method, and every method before then, is an ordinary PB call. Failures reach the same callables: a
    lost connection `on_lost()`, a payload over Banana's SIZE_LIMIT `on_refused(method, message)`."""

    lean = False

    def at_once(self, method: str, args: tuple[object, ...]) -> bool:
        """Whether this lean call goes to the kernel now (slaveshell.plumbing.write_now) rather than at the
        reactor's next turn, joined with the calls written before then (one write for many small ones). Now,
        unless a subclass says otherwise."""
        return True

    def send(self, method: str, *args: object) -> None:
        if self.released:
            return
        codec = CODECS.get(method) if self.lean else None
        if codec is None:
            super().send(method, *args)
            return
        if self.ref.broker.disconnected:
            self.on_lost()
            return
        try:
            send_lean(self.ref, method, *args, at_once=self.at_once(method, args))
        except banana.BananaError as e:
            self.on_refused(method, str(e))

    __call__ = send


def send_lean(ref: pb.RemoteReference, method: str, *args: object, at_once: bool = True) -> None:
    """`method` (one of CODECS) on `ref` as a lean call: the peer must have said it takes them. Raises BananaError
    (an item Banana cannot send, a byte string over its SIZE_LIMIT); nothing is written then. Without `at_once`,
    a call shorter than WRITE_APART waits for the reactor's next turn (`_write`)."""
    _write(ref.broker, [COMMAND, ref.luid, method.encode("ascii"), *CODECS[method].encode(*args)], at_once)


def _write(broker: pb.Broker, items: Wire, at_once: bool = True) -> None:
    """Banana-encode the list `items` (as ``Banana.sendEncoded`` would, but a long last byte string is written
    after its header rather than copied into one buffer with it), to the kernel at once when nothing waits
    before it (slaveshell.plumbing.write_now: a keystroke and its echo a reactor turn sooner on each side). Raises
    BananaError as Banana does."""
    transport: Any = broker.transport  # a TCP transport (ITransport's stubs lack self)
    parts: list[bytes] = []
    banana.int2b128(len(items), parts.append)
    parts.append(banana.LIST)
    last = items[-1]
    if isinstance(last, bytes) and len(last) >= WRITE_APART:
        if len(last) > banana.SIZE_LIMIT:
            raise banana.BananaError(f"byte string is too long to send ({len(last)})")
        for item in items[:-1]:
            broker._encode(item, parts.append)
        banana.int2b128(len(last), parts.append)
        parts.append(banana.STRING)
        write_now(transport, [b"".join(parts), last])  # to the kernel now when nothing waits: no join
        return
    for item in items:
        broker._encode(item, parts.append)
    write_frame(transport, [b"".join(parts)], at_once)
