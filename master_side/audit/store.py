"""The audit index: who opened which session where, how it ended, and every refusal, in SQL that outside
tools can query (SQLite by default; PostgreSQL and MySQL/MariaDB by URL). See docs/audit-schema.md.

SQLAlchemy Core runs in a one-thread pool for writes, so no database call ever blocks the master's reactor and
writes keep their order. Writes after a session has started are queued: while the database is away they wait and
are retried, and they land once it is back. The one write that is not queued is a session's first row: a session
is served only once that row exists (fail-closed).

Its one writer is the audit trail (master_side.audit.trail): the write methods below are called from there
only (tests/test_audit_writer.py).

What operators and auditors ask to read (history, and through `read` the trail's searches and transcript
chunks) runs in a pool of its own (master_side.audit.reads): reads never hold up the writes thread, so a flood
of reads cannot delay the row every session needs before it is served.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import DBAPIConnection
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from master_side.audit.reads import PoolReactor, Reads
from master_side.audit.rows import EventRow, FactRow, RunningRow, RunRow, RunWorkerRow, SessionRow, WorkerRun
from master_side.audit.schema import events, facts, migrate, run_workers, runs, sessions
from master_side.audit.upload_links import UPLOADS_LOOKED_AT, named_uploads
from slaveshell.plumbing.clock import Clock
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible

log = Logger()

T = TypeVar("T")


class StoreReactor(Clock, PoolReactor, Protocol):
    """The reactor's parts the store uses: time and timers (the retry), and what its thread pools use: shutdown
    triggers (IReactorCore) and calls from their threads (IReactorFromThreads). Every Twisted reactor fits; a
    MemoryReactorClock in tests."""


def _storable(values: Mapping[str, object]) -> dict[str, object]:
    """`values` as every database takes them: text that is not valid Unicode (a lone surrogate, as a name that was
    not UTF-8 decodes to) spelled with backslash escapes rather than refused, which would drop the whole write."""
    out = dict(values)
    for key, value in out.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                out[key] = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return out


def utc(timestamp: float) -> dt.datetime:
    """Times are stored as naive UTC (portable across SQLite, PostgreSQL and MySQL)."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(tzinfo=None)


def timestamp(value: dt.datetime) -> float:
    """Back from naive UTC to seconds since the epoch."""
    return value.replace(tzinfo=dt.UTC).timestamp() if value.tzinfo is None else value.timestamp()


def seconds(value: object) -> float:
    """A time as the reads give it (ISO 8601 text in UTC, `_row`; or a naive UTC datetime) in seconds since the
    epoch; 0.0 for anything else."""
    if isinstance(value, str):
        return timestamp(dt.datetime.fromisoformat(value))
    if isinstance(value, dt.datetime):
        return timestamp(value)
    return 0.0


def _older_than(run: RunRow) -> sa.ColumnElement[bool]:
    """The fleet runs after `run` in newest-first order (started, then id): a page's next."""
    started = dt.datetime.fromisoformat(str(run["started"])).astimezone(dt.UTC).replace(tzinfo=None)
    return sa.or_(runs.c.started < started, sa.and_(runs.c.started == started, runs.c.id < run["id"]))


def _row(mapping: sa.RowMapping) -> dict[str, object]:
    """A row as plain values, as the doors send it as JSON: times as ISO 8601 text in UTC, keys as plain str
    (not SQLAlchemy's quoted_name)."""
    out: dict[str, object] = {}
    for key, value in mapping.items():
        if isinstance(value, dt.datetime):
            value = value.replace(tzinfo=dt.UTC).isoformat()
        elif isinstance(value, str):
            value = str(value)
        out[str(key)] = value
    return out


class AuditStore:
    retry_interval = 2.0
    max_queue = 100_000

    def __init__(self, url: str, reactor: StoreReactor | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self.reactor: StoreReactor = reactor
        self.engine: sa.Engine | None = None
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="slaveshell-audit")
        # Writes waiting for the database, in order: each runs in the pool's thread.
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._drain_d: defer.Deferred[None] | None = None
        self.down_since: float | None = None
        self.dropped = 0
        self.reads = Reads(reactor, lambda: self.engine, self._run, away=lambda: self.down_since is not None)

    # -- life ----------------------------------------------------------------------------------

    @deferred
    async def start(self) -> None:
        """Start the thread pool, connect and migrate. Fails when the database cannot be reached or migrated
        (the pool is kept: the service retries when the database comes up)."""
        if not self.pool.started:
            self.pool.start()
            # Its threads are not daemons: an unstopped pool would keep the process from exiting.
            self._shutdown_trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)
        await self._run(self._connect)

    def _connect(self) -> None:
        engine = sa.create_engine(self.url, pool_pre_ping=True)
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        if path and path != ":memory:":
            # SQLite would create it world-readable (umask); the index is as private as the transcripts.
            # Its -wal and -shm files take the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(path, 0o600)
        if engine.dialect.name == "sqlite":
            # WAL: outside tools can read while the master writes; a crash never corrupts committed rows.
            @sa.event.listens_for(engine, "connect")
            def _wal(dbapi_conn: DBAPIConnection, record: object) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()

        migrate(engine)
        self.engine = engine

    @deferred
    async def stop(self) -> None:
        # Let queued writes land if the database is there; if it is away they are lost with the process
        # (the crash recovery at the next start closes the rows they would have closed).
        if self._drain_d is not None and self.down_since is None:
            await self._drain_d
        if self.engine is not None:
            await self._run(self.engine.dispose)
            self.engine = None
        if self.pool.started:
            self.pool.stop()
            self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
        self.reads.stop()

    def _run(self, fn: Callable[[], T]) -> defer.Deferred[T]:
        """`fn()` in the pool's one thread."""
        # Twisted types its reactor parameters with zope interfaces, which mypy cannot match structurally.
        return threads.deferToThreadPool(cast(IReactorFromThreads, self.reactor), self.pool, fn)

    # -- writes --------------------------------------------------------------------------------

    def open_session(self, row: Mapping[str, object]) -> defer.Deferred[None]:
        """The session's first row (column -> value, times as naive UTC datetimes), written now (not queued): it
        fails if the database is away."""
        return self._run(lambda: self._insert(sessions, row))

    def update_session(self, session_id: str, **values: object) -> None:
        """Set columns of a session's row (queued)."""
        self._enqueue(lambda: self._update(session_id, values))

    def add_event(self, kind: str, session_id: str | None = None, worker: str | None = None,
              operator: str | None = None, uid: int | None = None, detail: str | None = None,
              when: float | None = None) -> None:
        """A row of the events table (queued); `when` defaults to now."""
        import time

        row = {
            "session_id": session_id, "time": utc(when if when is not None else time.time()), "kind": kind,
            "worker": worker, "operator": operator, "uid": uid, "detail": detail,
        }
        self._enqueue(lambda: self._insert(events, row))

    def link_uploads(self, session_id: str, worker: str, command: str, before: float) -> None:
        """Queued after the writes before it (an upload's names land first): the session's `uploads`, the
        recent uploads to `worker` started before `before` that `command` names (master_side.audit.upload_links); a
        link found later (at the session's end, with what was typed) replaces one found at its start."""
        def link() -> None:
            assert self.engine is not None
            q = (sa.select(sessions.c.id, sessions.c.files)
                 .where(sessions.c.worker == worker, sessions.c.files.is_not(None), sessions.c.started <= utc(before))
                 .order_by(sessions.c.started.desc()).limit(UPLOADS_LOOKED_AT))
            with self.engine.begin() as conn:
                named = named_uploads(command, [(str(r.id), r.files) for r in conn.execute(q)])
                if named:
                    conn.execute(sessions.update().where(sessions.c.id == session_id).values(uploads=" ".join(named)))

        self._enqueue(link)

    def open_run(self, row: Mapping[str, object], pending: list[Mapping[str, object]]) -> defer.Deferred[None]:
        """A fleet run's row and its pending workers' rows, written now (not queued): a run starts only once they
        exist."""
        def write() -> None:
            assert self.engine is not None
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(**_storable(row)))
                if pending:
                    conn.execute(run_workers.insert(), [_storable({**w, "run_id": row["id"]}) for w in pending])

        return self._run(write)

    def end_run(self, run_id: str, values: Mapping[str, object], workers: list[Mapping[str, object]]) -> None:
        """A fleet run's end (queued): its row's columns `values`, and a row per worker's outcome."""
        def write() -> None:
            assert self.engine is not None
            with self.engine.begin() as conn:
                conn.execute(runs.update().where(runs.c.id == run_id).values(**_storable(values)))
                if workers:
                    conn.execute(run_workers.insert(), [_storable({**w, "run_id": run_id}) for w in workers])

        self._enqueue(write)

    def store_facts(self, taken: Mapping[str, Mapping[str, str]], when: float, run_id: str | None) -> None:
        """Workers' facts as one probe run took them (queued, one transaction for all of them): each worker's
        replace all of its earlier ones."""
        def write() -> None:
            assert self.engine is not None
            with self.engine.begin() as conn:
                for worker, values in taken.items():
                    conn.execute(facts.delete().where(facts.c.worker == worker))
                    if values:
                        conn.execute(facts.insert(), [_storable({"worker": worker, "name": name, "value": value,
                                                                 "taken": utc(when), "run_id": run_id})
                                                      for name, value in values.items()])

        self._enqueue(write)

    def update_run_worker(self, row_id: int, values: Mapping[str, object]) -> None:
        """Columns of a worker's row in a run (a pending part that ran, expired or was cancelled), queued."""
        def write() -> None:
            assert self.engine is not None
            with self.engine.begin() as conn:
                conn.execute(run_workers.update().where(run_workers.c.id == row_id).values(**_storable(values)))

        self._enqueue(write)

    def _insert(self, table: sa.Table, row: Mapping[str, object]) -> None:
        assert self.engine is not None
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**_storable(row)))

    def _update(self, session_id: str, values: Mapping[str, object]) -> None:
        assert self.engine is not None
        with self.engine.begin() as conn:
            conn.execute(sessions.update().where(sessions.c.id == session_id).values(**_storable(values)))

    def _enqueue(self, write: Callable[[], None]) -> None:
        self.reads.write_queued()
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.reads.write_done()
            self.dropped += 1
            log.error("slaveshell audit: write queue full while the database is away; dropped {n} writes",
                      n=self.dropped)
        self._queue.append(write)
        if self._drain_d is None:
            d = self._drain()
            self._drain_d = None if d.called else d

    @deferred
    async def _drain(self) -> None:
        try:
            while self._queue:
                try:
                    await self._run(self._queue[0])
                except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError) as e:
                    if self.down_since is None:
                        self.down_since = self.reactor.seconds()
                        self.reads.database_away()
                        log.critical("slaveshell audit: the database is unreachable; {n} writes wait for it: {e}",
                                     n=len(self._queue), e=visible(str(e).splitlines()[0]))
                    await task.deferLater(cast(IReactorTime, self.reactor), self.retry_interval, lambda: None)
                    continue
                except Exception as e:
                    # The first line only: SQLAlchemy's next lines quote the statement's parameters, which
                    # hold session content (the command), and logs must not.
                    log.error("slaveshell audit: a write was refused and is dropped: {e}",
                              e=visible(str(e).splitlines()[0] if str(e) else repr(e)))
                self._queue.popleft()
                self.reads.write_done()
                if self.down_since is not None:
                    log.warn("slaveshell audit: the database is back; writing the queued rows")
                    self.down_since = None
        finally:
            self._drain_d = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- reads ---------------------------------------------------------------------------------

    def read(self, fn: Callable[[], T]) -> defer.Deferred[T]:
        """`fn()` in the read pool (master_side.audit.reads), once the writes queued before it are done with."""
        return self.reads.run(fn)

    def history(self, worker: str | None = None, operator: str | None = None, since: float | None = None,
                session_id: str | None = None, build_id: int | None = None,
                limit: int = 200, reason: str | None = None,
                run_id: str | None = None) -> defer.Deferred[list[SessionRow]]:
        """Index rows, newest first; `reason`: those whose reason contains it, in any case (as typed: `%` and
        `_` are no wildcards)."""
        def query() -> list[SessionRow]:
            assert self.engine is not None
            q = sa.select(sessions).order_by(sessions.c.started.desc()).limit(limit)
            if worker:
                q = q.where(sessions.c.worker == worker)
            if operator:
                q = q.where(sessions.c.operator == operator)
            if since is not None:
                q = q.where(sessions.c.started >= utc(since))
            if session_id:
                q = q.where(sessions.c.id == session_id)
            if build_id is not None:
                q = q.where(sessions.c.build_id == build_id)
            if run_id:
                q = q.where(sessions.c.run_id == run_id)
            if reason:
                q = q.where(sa.func.lower(sessions.c.reason).contains(reason.lower(), autoescape=True))
            with self.engine.connect() as conn:
                return [cast(SessionRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def runs(self, run_id: str | None = None, limit: int = 50,
             after: RunRow | None = None) -> defer.Deferred[list[RunRow]]:
        """Fleet runs, newest first (then by id; `run_id`: that one). `after`: the next page, the runs older than
        that one (the last of the page before)."""
        def query() -> list[RunRow]:
            assert self.engine is not None
            q = sa.select(runs).order_by(runs.c.started.desc(), runs.c.id.desc()).limit(limit)
            if run_id:
                q = q.where(runs.c.id == run_id)
            if after is not None:
                q = q.where(_older_than(after))
            with self.engine.connect() as conn:
                return [cast(RunRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def run_workers(self, run_id: str) -> defer.Deferred[list[RunWorkerRow]]:
        """A fleet run's per-worker outcomes, in the order they were written."""
        def query() -> list[RunWorkerRow]:
            assert self.engine is not None
            q = sa.select(run_workers).where(run_workers.c.run_id == run_id).order_by(run_workers.c.id)
            with self.engine.connect() as conn:
                return [cast(RunWorkerRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def worker_runs(self, worker: str, limit: int = 50,
                    after: WorkerRun | None = None) -> defer.Deferred[list[WorkerRun]]:
        """The fleet runs that named `worker` (among their targets as resolved, or with an outcome of it: listed,
        pending...), newest first (then by id), each with that worker's outcome row (None while it runs) and the
        id of its session there (from the outcome, or from the sessions table while the run is in progress).
        `after`: the next page, the runs older than that one (the last of the page before)."""
        def query() -> list[WorkerRun]:
            assert self.engine is not None
            spaced = sa.literal(" ") + runs.c.targets + sa.literal(" ")
            named = sa.select(run_workers.c.run_id).where(run_workers.c.worker == worker)
            q = (sa.select(runs).where(sa.or_(runs.c.id.in_(named), spaced.contains(f" {worker} ", autoescape=True)))
                 .order_by(runs.c.started.desc(), runs.c.id.desc()).limit(limit))
            if after is not None:
                q = q.where(_older_than(after.run))
            with self.engine.connect() as conn:
                found = [cast(RunRow, _row(r)) for r in conn.execute(q).mappings()]
                ids = [r["id"] for r in found]
                outcomes: dict[str, RunWorkerRow] = {}
                opened: dict[str, str] = {}
                if ids:
                    for r in conn.execute(sa.select(run_workers).where(run_workers.c.run_id.in_(ids),
                                                                       run_workers.c.worker == worker)
                                          .order_by(run_workers.c.id)).mappings():
                        outcomes[str(r["run_id"])] = cast(RunWorkerRow, _row(r))
                    for r in conn.execute(sa.select(sessions.c.run_id, sessions.c.id).where(
                            sessions.c.run_id.in_(ids), sessions.c.worker == worker)
                            .order_by(sessions.c.started)).mappings():
                        opened[str(r["run_id"])] = str(r["id"])
            out = []
            for row in found:
                outcome = outcomes.get(row["id"])
                session = (outcome["session_id"] if outcome is not None else None) or opened.get(row["id"])
                out.append(WorkerRun(row, outcome, session))
            return out

        return self.read(query)

    def pending_runs(self, worker: str | None = None,
                     run_id: str | None = None) -> defer.Deferred[list[dict[str, object]]]:
        """The workers' pending parts of fleet runs (rows of run_workers, state `pending`), oldest first, each
        with its run's operator, uid and request."""
        def query() -> list[dict[str, object]]:
            assert self.engine is not None
            q = (sa.select(run_workers, runs.c.operator, runs.c.uid, runs.c.request)
                 .join(runs, runs.c.id == run_workers.c.run_id)
                 .where(run_workers.c.state == "pending").order_by(run_workers.c.id))
            if worker:
                q = q.where(run_workers.c.worker == worker)
            if run_id:
                q = q.where(run_workers.c.run_id == run_id)
            with self.engine.connect() as conn:
                return [_row(r) for r in conn.execute(q).mappings()]

        return self.read(query)

    def facts(self) -> defer.Deferred[list[FactRow]]:
        """Every worker's last facts."""
        def query() -> list[FactRow]:
            assert self.engine is not None
            q = sa.select(facts).order_by(facts.c.worker, facts.c.name)
            with self.engine.connect() as conn:
                return [cast(FactRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def events_of(self, session_id: str | None = None,
                  kind: str | None = None) -> defer.Deferred[list[EventRow]]:
        def query() -> list[EventRow]:
            assert self.engine is not None
            q = sa.select(events).order_by(events.c.id)
            if session_id:
                q = q.where(events.c.session_id == session_id)
            if kind:
                q = q.where(events.c.kind == kind)
            with self.engine.connect() as conn:
                return [cast(EventRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def prunable(self, master: str, ended_before: float, limit: int = 100) -> defer.Deferred[list[SessionRow]]:
        """This master's sessions that ended before `ended_before` (seconds since the epoch) and still have
        their transcript on disk (not pruned), oldest first, at most `limit` (master_side.audit.retention)."""
        def query() -> list[SessionRow]:
            assert self.engine is not None
            q = (sa.select(sessions)
                 .where(sessions.c.master == master, sessions.c.state != "running", sessions.c.pruned.is_(None),
                        sessions.c.transcript.is_not(None), sessions.c.ended < utc(ended_before))
                 .order_by(sessions.c.ended).limit(limit))
            with self.engine.connect() as conn:
                return [cast(SessionRow, _row(r)) for r in conn.execute(q).mappings()]

        return self.read(query)

    def running_sessions(self, master: str) -> defer.Deferred[list[RunningRow]]:
        def query() -> list[RunningRow]:
            assert self.engine is not None
            q = sa.select(sessions).where(sessions.c.state == "running", sessions.c.master == master)
            with self.engine.connect() as conn:
                return [cast(RunningRow, dict(r)) for r in conn.execute(q).mappings()]

        return self._run(query)
