"""sha256 of a byte stream off the reactor thread (`BatchedSha256`): the master's hash of a `-T` stream's
attachment (master_side.audit.transcripts) and of each file a transfer relays (master_side.copying.relay).

The hashing runs on one thread (`_HASHING`: in order, one queue), not on the reactor's: hashing cost the master's
main thread more than the writes themselves (py-spy, `-T cat 300 MB`; `slaveshell cp`: a fifth of the master's
samples). hashlib releases the GIL on large updates, so it runs beside the reactor on another core.

What waits to be hashed is held: each stream's batch being gathered (its chunks, the very bytes objects) and its
batches handed over and not yet hashed, at most (MAX_HASH_BATCHES + 1) batches of a stream; a session's
attachment (a `-T` stream's output and piped input, a terminal's output that is not UTF-8) about 6 MiB, a
transfer's file 3 MiB. All streams together hold at most `HashBudget.total` (the process's BUDGET: HELD_TOTAL, or
`ShellService(max_hashing_total=...)`, which the service sets on it at each reconfig): past it, a stream's
update is hashed on the calling thread (after its own batches already handed over, so in order), holding nothing,
as before the hashing thread; so a worker with many sessions cannot make the master hold sessions x 6 MiB. Nothing
is refused or dropped: the transcript and its sha256 are whole; the master's main thread hashes meanwhile (a
warning in the log, at most once a minute).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import time
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

_HASHING = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slaveshell-sha256")
# Chunks go to the hashing thread HASH_BATCH bytes at a time (four of a bulk stream's messages), not one by one:
# handing each chunk over (a submit, a wake-up of the thread, the GIL passed back and forth) cost the main thread
# more than hashing it there saved (an interleaved A/B of `-T cat 200 MB`, 8 rounds: the master's main thread
# 5.7 -> 5.2 CPU s/GB, the whole master 7.0 -> 6.3; hashing on the main thread: 6.5 and 6.6).
HASH_BATCH = 2 * 1024 * 1024
# Batches handed over per stream before an update waits for the oldest: with the batch being gathered, a stream
# holds at most (MAX_HASH_BATCHES + 1) * HASH_BATCH bytes for hashing.
MAX_HASH_BATCHES = 2
# The bytes all streams together may hold for hashing, by default (the module's docstring).
HELD_TOTAL = 64 * 1024 * 1024
# Seconds between two warnings that the bound was reached.
WARN_EVERY = 60.0


class HashBudget:
    """The bytes held for hashing by every BatchedSha256 that shares it (`held`, at most `total`): gathered, or
    handed to the hashing thread and not yet hashed. Counted on the thread that updates the streams (the
    reactor's): a batch handed over is counted out once found done (the one hashing thread runs them in the order
    handed over); a stream dropped with a batch gathered gives it back from its finalizer (`dropped`, a deque:
    its append is atomic, whatever the thread or the moment the collector runs it)."""

    def __init__(self, total: int = HELD_TOTAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.held = 0
        self.peak = 0
        self.hashed_here = 0  # bytes hashed on the calling thread because the bound was reached
        self.clock = clock
        self._warned: float | None = None
        self._handed: collections.deque[tuple[concurrent.futures.Future[None], int]] = collections.deque()
        self.dropped: collections.deque[int] = collections.deque()

    def _reap(self) -> None:
        while self.dropped:
            self.held -= self.dropped.popleft()
        handed = self._handed
        while handed and handed[0][0].done():
            self.held -= handed.popleft()[1]

    def take(self, nbytes: int) -> bool:
        """Count `nbytes` in (True), or False when that would pass the bound: they are hashed here instead."""
        self._reap()
        if self.held + nbytes > self.total:
            self.hashed_here += nbytes
            now = self.clock()
            if self._warned is None or now - self._warned >= WARN_EVERY:
                self._warned = now
                log.warn("slaveshell: the bytes waiting to be hashed reached the master's bound "
                         "(max_hashing_total={total} bytes, all sessions and transfers together): hashed on the main "
                         "thread meanwhile", total=self.total)
            return False
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        return True

    def give(self, nbytes: int) -> None:
        """`nbytes` counted in were hashed on this thread."""
        self.held -= nbytes

    def handed(self, hashing: concurrent.futures.Future[None], nbytes: int) -> None:
        """`nbytes` counted in were handed to the hashing thread: counted out once `hashing` is done."""
        self._handed.append((hashing, nbytes))

    def settled(self) -> int:
        """What is held now, the batches the hashing thread has done counted out."""
        self._reap()
        return self.held


BUDGET = HashBudget()


class BatchedSha256:
    """A sha256 whose `update`s are gathered and hashed on the hashing thread `batch` bytes at a time, at most
    `max_batches` waiting (the bytes objects are kept, unchanged, until hashed). `hexdigest` waits for the thread
    to catch up; a stream that never filled a batch (a small file) is hashed on the calling thread, no hand-over.
    What it holds counts in `budget` (BUDGET: shared by all streams): past its bound, an update is hashed here."""

    def __init__(self, batch: int = HASH_BATCH, max_batches: int = MAX_HASH_BATCHES,
                 budget: HashBudget | None = None) -> None:
        self._sha = hashlib.sha256()
        self._size = batch
        self._max = max_batches
        self._budget = budget if budget is not None else BUDGET
        self._hashing: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self._batch: list[bytes] = []  # not yet handed to the hashing thread
        self._batched = 0

    def __del__(self) -> None:
        if self._batched:
            self._budget.dropped.append(self._batched)

    def update(self, data: bytes) -> None:
        if not self._budget.take(len(data)):
            self._hash_here(data)
            return
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= self._size:
            self._hand_over()

    def _hash_here(self, data: bytes) -> None:
        """Past the budget's bound: this stream's batches handed over are hashed first (waited for), then what it
        gathered and `data`, here."""
        while self._hashing:
            self._hashing.popleft().result()
        batch, gathered = self._batch, self._batched
        self._batch, self._batched = [], 0
        _update(self._sha, batch)
        self._budget.give(gathered)
        self._sha.update(data)

    def _hand_over(self) -> None:
        """Hand the gathered chunks to the hashing thread (after the oldest batch, when `max_batches` wait)."""
        batch, self._batch = self._batch, []
        nbytes, self._batched = self._batched, 0
        if not batch:
            return
        while self._hashing and (self._hashing[0].done() or len(self._hashing) >= self._max):
            self._hashing.popleft().result()
        hashing = _HASHING.submit(_update, self._sha, batch)
        self._hashing.append(hashing)
        self._budget.handed(hashing, nbytes)

    def hexdigest(self) -> str:
        """The sha256 of everything updated so far."""
        if not self._hashing:
            _update(self._sha, self._batch)
            self._budget.give(self._batched)
            self._batch, self._batched = [], 0
            return self._sha.hexdigest()
        self._hand_over()
        self._hashing.clear()  # the one queue runs them in order: the digest comes after all of them
        return _HASHING.submit(self._sha.hexdigest).result()


def _update(sha: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        sha.update(chunk)
