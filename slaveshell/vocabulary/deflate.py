"""A session's stream deflated on a slow link, without I/O: `Deflater` (the sender's side: which messages to send
deflated: the worker's output, the master's input to the worker) and `inflate` (the receiver's: a deflated message
back to its bytes, bounded).

On a link of tens of milliseconds and a few MB/s (a donated worker behind a home or office line) the link, not
the CPU, sets a session's speed, and a build log or a compiler's diagnostics deflate to a fifth or less of their
size: what OpenSSH offers as `ssh -C`, here chosen per message. The worker deflates a message when its link is
slow: a round trip of at least `SLOW_RTT`, as the kernel's TCP measures it on the connection
(slaveshell.plumbing.remote.link_rtt: the path's own delay; on loopback or a LAN deflating costs more CPU than it
saves time, and a loaded machine lengthens the round trip the processes see, not the kernel's), or where the
kernel does not say, as the session's output window has measured it (slaveshell.vocabulary.windows.TunedWindow's
minimum), or not yet; the message is at least `MIN_SIZE`, and deflating it at zlib's fastest level gives at most
`WORTH` of its size (tried on its first `SAMPLE` bytes first); a message that does not (random or compressed
bytes) is sent as it is, and the next ones are not tried for a while (1, 2, 4 ... `BACKOFF_MAX` messages), so
incompressible output costs a trial now and then, not each time. A worker whose owner says `ALWAYS`
(`slave_side.install(deflate="always")`: a link whose delay TCP does not see, behind a tunnel or a proxy that
ends TCP near the worker) deflates whatever the round trip, and says so in its open answer, so the master
deflates its input the same way.

The master deflates its input to the worker the same way, by the round trip its input messages take to be
acknowledged (master_side.sessions.session.MasterSession.input_min_rtt): `tar c . | buildbot-shell -T w1 -- tar x`.

Each message is deflated alone (no dictionary shared across messages): every message stands by itself on the
wire, as the receiver checks it. Credit windows count the bytes before deflating, on both sides, so deflating
changes what the link carries, never what the master holds: `inflate` gives at most `limit` bytes (the session's
largest message) and refuses anything else (a message that inflates past it, a truncated or trailing stream).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from slaveshell.vocabulary.protocol import ProtocolError

# A round trip (seconds) from which the link is slow enough for deflating to pay.
SLOW_RTT = 0.010
# The worker owner's setting, and its open answer's `deflate`, for a link to deflate on whatever its round trip
# (True: on a slow link; False: never).
ALWAYS = "always"
# Messages shorter than this go as they are (an echo, a prompt: nothing to gain, a round of zlib to pay).
MIN_SIZE = 2048
# A message is sent deflated only when that is at most this fraction of its size.
WORTH = 0.85
# After a message that did not deflate well, this many at most are sent as they are before the next trial.
BACKOFF_MAX = 64
LEVEL = 1
# What of a larger message is tried first.
SAMPLE = 8192


class Deflater:
    """Which of a stream's messages go deflated: `pack(data)` gives the deflated bytes, or None to send `data` as
    it is. `rtt()`: the link's round trip (slaveshell.plumbing.remote.link_rtt), or None (asked per message:
    the link is slow at `SLOW_RTT` or more, or while it is not known; a constant None: always)."""

    def __init__(self, rtt: Callable[[], float | None]) -> None:
        self.rtt = rtt
        self._skip = 0
        self._backoff = 1
        self.sent = self.packed = 0  # bytes sent deflated, before and after (for the log and bench/)

    def slow(self) -> bool:
        rtt = self.rtt()
        return rtt is None or rtt >= SLOW_RTT

    def report(self) -> str:
        """How much went deflated, for a session's log line ("" when nothing did)."""
        return f"deflated {self.sent // 1024} KiB to {self.packed // 1024} KiB" if self.sent else ""

    def pack(self, data: bytes) -> bytes | None:
        if len(data) < MIN_SIZE or not self.slow():
            return None
        if self._skip:
            self._skip -= 1
            return None
        # A trial on the message's first SAMPLE bytes first: random or compressed bytes cost ~20 us, not a
        # whole message's deflating.
        sample = data[:SAMPLE]
        worth = len(data) <= SAMPLE or len(zlib.compress(sample, LEVEL)) <= WORTH * len(sample)
        packed = zlib.compress(data, LEVEL) if worth else None
        if packed is None or len(packed) > WORTH * len(data):
            self._skip, self._backoff = self._backoff, min(2 * self._backoff, BACKOFF_MAX)
            return None
        self._backoff = 1
        self.sent += len(data)
        self.packed += len(packed)
        return packed


def deflate_setting(value: object) -> bool | str:
    """A worker owner's `deflate` (True, False or `ALWAYS`), checked (ValueError)."""
    if isinstance(value, bool):
        return value
    if value == ALWAYS:
        return ALWAYS
    raise ValueError(f"deflate must be True, False or {ALWAYS!r}")


def inflate(packed: bytes, limit: int, what: str = "output") -> bytes:
    """The bytes of one deflated message (zlib's format), at most `limit` of them. ProtocolError for anything that
    is not exactly one whole zlib stream inflating to at most `limit` bytes (a peer's message bomb stops at
    `limit` + 1 bytes of work). `what`: the stream, for the error (output, input)."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(packed, limit + 1)
    except zlib.error:
        raise ProtocolError(f"deflated {what} that does not inflate") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"deflated {what} inflating past the session's largest message ({limit} bytes)")
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError(f"deflated {what} that is not one whole zlib stream")
    return data
