"""Reads of the audit index (history, events, and the trail's searches and transcript chunks) in a pool of their
own, apart from the store's one writes thread: however many reads wait, a session's own rows (the first one,
which it needs before it is served, and the later updates) never queue behind them.

A read first waits for the writes queued before it was asked (it sees them), never for writes queued after it,
and not at all while the database is away (the writes wait for it to come back; the read fails or succeeds on
its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

from slaveshell.plumbing.deferreds import deferred

if TYPE_CHECKING:
    import sqlalchemy as sa

T = TypeVar("T")

# Threads for reads: two, so that one long search does not hold up every other read. Further reads wait their
# turn (the doors bound how many each connection has in progress: master_side.operators.gate, the web door's
# queries).
READ_THREADS = 2


class PoolReactor(Protocol):
    """The reactor's parts a thread pool of the audit store uses (master_side.audit.store.StoreReactor has them):
    shutdown triggers (IReactorCore), to stop the pool with the reactor, and calls from the pool's threads
    (IReactorFromThreads)."""

    def addSystemEventTrigger(self, phase: str, eventType: str, callable: Callable[[], object]) -> object: ...
    def removeSystemEventTrigger(self, triggerID: object) -> None: ...
    def callFromThread(self, callable: Callable[..., object], *args: object, **kwargs: object) -> None: ...


class InThread(Protocol):
    def __call__(self, fn: Callable[[], T]) -> defer.Deferred[T]: ...


class Reads:
    """The read pool (started at first use) of an audit store whose engine is `engine()`; `in_writes_thread`
    runs a function in the store's writes thread (for an in-memory SQLite database, which only that thread
    sees). The store says when a write is queued and when it is done with (landed or dropped)."""

    def __init__(self, reactor: PoolReactor, engine: Callable[[], sa.Engine | None],
                 in_writes_thread: InThread, away: Callable[[], bool]) -> None:
        self.reactor = reactor
        self.engine = engine
        self.in_writes_thread = in_writes_thread
        self.away = away
        self.pool: ThreadPool | None = None
        # Writes queued so far, and writes done with: a read waits for those queued before it.
        self._queued = 0
        self._done = 0
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []

    def write_queued(self) -> None:
        self._queued += 1

    def write_done(self) -> None:
        self._done += 1
        ready = [d for target, d in self._waiting if target <= self._done]
        self._waiting = [(t, d) for t, d in self._waiting if t > self._done]
        for d in ready:
            d.callback(None)

    def database_away(self) -> None:
        """The writes wait for the database: the reads waiting for them go on without."""
        ready, self._waiting = self._waiting, []
        for _, d in ready:
            d.callback(None)

    @deferred
    async def run(self, fn: Callable[[], T]) -> T:
        if self._done < self._queued and not self.away():
            d: defer.Deferred[None] = defer.Deferred()
            self._waiting.append((self._queued, d))
            await d
        engine = self.engine()
        if engine is not None and engine.url.database in (None, "", ":memory:"):
            # An in-memory SQLite database is one connection per thread: only the writes thread sees it.
            return await self.in_writes_thread(fn)
        if self.pool is None:
            self.pool = ThreadPool(minthreads=0, maxthreads=READ_THREADS, name="slaveshell-reads")
            self.pool.start()
            # Its threads are not daemons: an unstopped pool would keep the process from exiting.
            self._trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)
        return await threads.deferToThreadPool(cast(IReactorFromThreads, self.reactor), self.pool, fn)

    def stop(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.stop()
            self.reactor.removeSystemEventTrigger(self._trigger)
