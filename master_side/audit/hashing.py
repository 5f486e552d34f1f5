"""sha256 of a byte stream off the reactor thread (`BatchedSha256`): the master's hash of a `-T` stream's
attachment (master_side.audit.transcripts) and of each file a transfer relays (master_side.copying.relay).

The hashing runs on one thread (`_HASHING`: in order, one queue), not on the reactor's: hashing cost the master's
main thread more than the writes themselves (py-spy, `-T cat 300 MB`; `slaveshell cp`: a fifth of the master's
samples). hashlib releases the GIL on large updates, so it runs beside the reactor on another core.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib

_HASHING = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slaveshell-sha256")
# Chunks go to the hashing thread HASH_BATCH bytes at a time (four of a bulk stream's messages), not one by one:
# handing each chunk over (a submit, a wake-up of the thread, the GIL passed back and forth) cost the main thread
# more than hashing it there saved (an interleaved A/B of `-T cat 200 MB`, 8 rounds: the master's main thread
# 5.7 -> 5.2 CPU s/GB, the whole master 7.0 -> 6.3; hashing on the main thread: 6.5 and 6.6).
HASH_BATCH = 2 * 1024 * 1024
# Batches handed over per stream before an update waits for the oldest: with the batch being gathered, a stream
# holds at most (MAX_HASH_BATCHES + 1) * HASH_BATCH bytes for hashing.
MAX_HASH_BATCHES = 2


class BatchedSha256:
    """A sha256 whose `update`s are gathered and hashed on the hashing thread `batch` bytes at a time, at most
    `max_batches` waiting (the bytes objects are kept, unchanged, until hashed). `hexdigest` waits for the thread
    to catch up; a stream that never filled a batch (a small file) is hashed on the calling thread, no hand-over."""

    def __init__(self, batch: int = HASH_BATCH, max_batches: int = MAX_HASH_BATCHES) -> None:
        self._sha = hashlib.sha256()
        self._size = batch
        self._max = max_batches
        self._hashing: collections.deque[concurrent.futures.Future[None]] = collections.deque()
        self._batch: list[bytes] = []  # not yet handed to the hashing thread
        self._batched = 0

    def update(self, data: bytes) -> None:
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= self._size:
            self._hand_over()

    def _hand_over(self) -> None:
        """Hand the gathered chunks to the hashing thread (after the oldest batch, when `max_batches` wait)."""
        batch, self._batch, self._batched = self._batch, [], 0
        if not batch:
            return
        while self._hashing and (self._hashing[0].done() or len(self._hashing) >= self._max):
            self._hashing.popleft().result()
        self._hashing.append(_HASHING.submit(_update, self._sha, batch))

    def hexdigest(self) -> str:
        """The sha256 of everything updated so far."""
        if not self._hashing:
            _update(self._sha, self._batch)
            self._batch, self._batched = [], 0
            return self._sha.hexdigest()
        self._hand_over()
        self._hashing.clear()  # the one queue runs them in order: the digest comes after all of them
        return _HASHING.submit(self._sha.hexdigest).result()


def _update(sha: hashlib._Hash, chunks: list[bytes]) -> None:
    for chunk in chunks:
        sha.update(chunk)
