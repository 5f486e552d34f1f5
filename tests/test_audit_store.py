"""The audit index against real databases: SQLite, and the PostgreSQL and MariaDB servers on this machine.
A server that cannot be reached is skipped with the reason (set SLAVESHELL_PG_URL / SLAVESHELL_MYSQL_URL to
point elsewhere)."""

import os
import time

import pytest
import pytest_twisted
import sqlalchemy as sa

from master_side.audit import schema as audit
from master_side.audit.schema import SCHEMA_VERSION, migrate
from master_side.audit.store import AuditStore, utc

PG_URL = os.environ.get("SLAVESHELL_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1/test")
MYSQL_URL = os.environ.get("SLAVESHELL_MYSQL_URL", "mysql+pymysql://root@127.0.0.1/test")


def _reachable(url):
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as e:
        return str(e).splitlines()[0]


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite'}"
        return
    url = PG_URL if request.param == "postgresql" else MYSQL_URL
    problem = _reachable(url)
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} at {url} is unreachable in CI: {problem}")
        pytest.skip(f"{request.param} at {url} is unreachable: {problem}")
    engine = sa.create_engine(url)
    audit.metadata.drop_all(engine)
    engine.dispose()
    yield url
    engine = sa.create_engine(url)
    audit.metadata.drop_all(engine)
    engine.dispose()


def row(session_id="s1", worker="w1", operator="alice", started=None):
    return {"id": session_id, "worker": worker, "operator": operator, "uid": 1000, "master": "m:/srv",
            "command": None, "pty": True, "term": "xterm", "width": 80, "height": 24,
            "started": utc(started or time.time()), "state": "running", "transcript": "/t/s1.cast",
            "bytes_in": 0, "bytes_out": 0}


def test_schema_is_versioned_and_migrations_are_idempotent(db_url):
    engine = sa.create_engine(db_url)
    try:
        assert migrate(engine) == 0
        assert migrate(engine) == SCHEMA_VERSION
        names = set(sa.inspect(engine).get_table_names())
        assert {"slaveshell_schema", "slaveshell_sessions", "slaveshell_events"} <= names
        with engine.begin() as conn:
            conn.execute(audit.schema_table.insert().values(version=SCHEMA_VERSION + 1))
        with pytest.raises(RuntimeError, match="newer than this slaveshell"):
            migrate(engine)
    finally:
        engine.dispose()


def test_masters_sharing_a_database_that_migrate_it_at_once_all_succeed(db_url):
    """The masters of a multi-master site share one audit database and may start together: each migrates it, one
    at a time (without the lock, all but one failed creating the same tables)."""
    import threading

    if db_url.startswith("sqlite"):
        pytest.skip("an SQLite index is one master's file: the masters of a site share a database server")
    for _ in range(3):
        engine = sa.create_engine(db_url)
        audit.metadata.drop_all(engine)
        engine.dispose()
        errors, found = [], []

        def start(errors=errors, found=found):
            engine = sa.create_engine(db_url)
            try:
                found.append(migrate(engine))
            except Exception as e:
                errors.append(e)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=start) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert sorted(found) == [0, SCHEMA_VERSION, SCHEMA_VERSION]
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            versions = [v for (v,) in conn.execute(sa.select(audit.schema_table.c.version))]
        engine.dispose()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))


@pytest_twisted.inlineCallbacks
def test_sessions_and_events_round_trip(db_url):
    store = AuditStore(db_url)
    yield store.start()
    try:
        started = 1_790_000_000.123456
        yield store.open_session(row(started=started))
        store.add_event("open", "s1", "w1", "alice", 1000, "login shell")
        store.update_session("s1", state="ended", ended=utc(started + 2.5), exit_code=None, exit_signal=9,
                             end_reason="signal 9", bytes_in=10, bytes_out=2**40, transcript_sha256="ab" * 32)
        store.add_event("refused", None, "w2", "bob", 1001, "permission denied")
        yield store._drain_d
        rows = yield store.history(worker="w1")
        assert len(rows) == 1
        r = rows[0]
        assert (r["state"], r["exit_signal"], r["bytes_out"], r["pty"]) == ("ended", 9, 2**40, True)
        assert r["started"] == "2026-09-21T14:13:20.123456+00:00"  # microseconds kept on every backend
        assert (yield store.history(operator="bob")) == []
        assert (yield store.history(since=started + 1)) == []
        kinds = [e["kind"] for e in (yield store.events_of())]
        assert kinds == ["open", "refused"]
        refused = yield store.events_of(kind="refused")
        assert refused[0]["session_id"] is None and refused[0]["detail"] == "permission denied"
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_history_finds_sessions_by_their_reason_as_typed(db_url):
    """`history --reason`: a part of the reason, in any case; `%` and `_` are characters, not wildcards."""
    store = AuditStore(db_url)
    yield store.start()
    try:
        yield store.open_session({**row("s1"), "reason": "INC-4711: disk full"})
        yield store.open_session({**row("s2"), "reason": "100% sure_thing"})
        yield store.open_session(row("s3"))
        found = yield store.history(reason="inc-4711")
        assert [r["id"] for r in found] == ["s1"] and found[0]["reason"] == "INC-4711: disk full"
        assert [r["id"] for r in (yield store.history(reason="0% s"))] == ["s2"]
        assert (yield store.history(reason="1_0")) == [] and (yield store.history(reason="%")) != []
        assert (yield store.history(reason="sur_")) == []  # "_" would match the "e" of "sure"
        assert len((yield store.history())) == 3
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_text_that_is_not_valid_unicode_is_stored_escaped_never_dropped(db_url):
    """A name that was not UTF-8 decodes to lone surrogates, which no database takes: written escaped, the row's
    end is not lost."""
    store = AuditStore(db_url)
    yield store.start()
    try:
        yield store.open_session(row())
        store.update_session("s1", state="ended", end_reason="ok: latin\udce9.txt", files="latin\udce9.txt")
        store.add_event("end", "s1", "w1", "alice", 1000, "latin\udce9.txt")
        yield store._drain_d
        (r,) = yield store.history(worker="w1")
        assert (r["state"], r["end_reason"], r["files"]) == ("ended", "ok: latin\\udce9.txt", "latin\\udce9.txt")
        (e,) = yield store.events_of(kind="end")
        assert e["detail"] == "latin\\udce9.txt"
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_writes_wait_while_the_database_is_away_and_land_when_it_is_back(db_url):
    store = AuditStore(db_url)
    store.retry_interval = 0.05
    yield store.start()
    try:
        yield store.open_session(row())
        good = store.engine
        # The database goes away: every connection attempt now fails.
        store.engine = sa.create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
        store.update_session("s1", state="ended", end_reason="exit 0")
        store.add_event("end", "s1", detail="exit 0")
        yield _sleep(0.3)
        assert store.down_since is not None and store.queued == 2
        with pytest.raises(sa.exc.OperationalError):
            yield store.open_session(row("s2"))  # fail-closed: a new session's first row is not queued
        store.engine.dispose()
        store.engine = good
        yield _sleep(0.3)
        assert store.queued == 0 and store.down_since is None
        rows = yield store.history()
        assert [(r["id"], r["state"]) for r in rows] == [("s1", "ended")]
    finally:
        yield store.stop()


def _sleep(seconds):
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


def test_a_version_1_database_is_upgraded_in_place(db_url):
    engine = sa.create_engine(db_url)
    try:
        # Schema 1 as it was released: sessions without the build columns.
        old = sa.MetaData()
        v1_sessions = sa.Table(audit.sessions.name, old, *[c._copy() for c in audit.sessions.columns
                                                           if c.name not in ("build_id", "builder", "build_number")
                                                           and not c.name.startswith("hidden_")
                                                           and c.name != "reason"])
        with engine.begin() as conn:
            audit.schema_table.create(conn)
            v1_sessions.create(conn)
            audit.events.create(conn)
            conn.execute(audit.schema_table.insert().values(version=1))
            conn.execute(v1_sessions.insert().values(**{k: v for k, v in row().items()}))
        assert migrate(engine) == 1
        columns = {c["name"] for c in sa.inspect(engine).get_columns(audit.sessions.name)}
        assert {"build_id", "builder", "build_number"} <= columns
        with engine.connect() as conn:
            assert conn.execute(sa.select(audit.sessions.c.id, audit.sessions.c.build_id)).all() == [("s1", None)]
    finally:
        engine.dispose()


def test_a_version_4_database_gets_the_upload_links(db_url):
    engine = sa.create_engine(db_url)
    try:
        # Schema 4 as it was released: sessions without `files` and `uploads`, with an upload and a session.
        old = sa.MetaData()
        v4_sessions = sa.Table(audit.sessions.name, old, *[c._copy() for c in audit.sessions.columns
                                                           if c.name not in ("files", "uploads", "reason", "run_id")])
        with engine.begin() as conn:
            audit.schema_table.create(conn)
            v4_sessions.create(conn)
            audit.events.create(conn)
            for version in range(1, 5):
                conn.execute(audit.schema_table.insert().values(version=version))
            conn.execute(v4_sessions.insert().values(**row("up1")))
        assert migrate(engine) == 4
        assert migrate(engine) == SCHEMA_VERSION == 7
        s = audit.sessions.c
        with engine.begin() as conn:
            assert conn.execute(sa.select(s.id, s.files, s.uploads)).all() == [("up1", None, None)]
            conn.execute(audit.sessions.update().where(s.id == "up1").values(files="tools/x.sh\nx.sh"))
            assert conn.execute(sa.select(s.files)).scalar() == "tools/x.sh\nx.sh"
    finally:
        engine.dispose()


def test_a_version_2_database_gets_the_hidden_input_counts(db_url):
    engine = sa.create_engine(db_url)
    try:
        # Schema 2 as it was released: sessions without the hidden-input columns, with a session in it.
        old = sa.MetaData()
        v2_sessions = sa.Table(audit.sessions.name, old, *[c._copy() for c in audit.sessions.columns
                                                           if not c.name.startswith("hidden_")
                                                           and c.name not in ("attachment_sha256", "pruned", "files",
                                                                              "uploads", "reason", "run_id")])
        with engine.begin() as conn:
            audit.schema_table.create(conn)
            v2_sessions.create(conn)
            audit.events.create(conn)
            conn.execute(audit.schema_table.insert().values(version=1))
            conn.execute(audit.schema_table.insert().values(version=2))
            conn.execute(v2_sessions.insert().values(**row()))
        assert migrate(engine) == 2
        assert migrate(engine) == SCHEMA_VERSION == 7
        columns = {c["name"] for c in sa.inspect(engine).get_columns(audit.sessions.name)}
        assert {"hidden_bytes", "hidden_spans", "hidden_flag", "attachment_sha256", "pruned"} <= columns
        s = audit.sessions.c
        with engine.begin() as conn:
            # The old row reads as "nothing hidden"; new rows get the same defaults and take counts.
            assert conn.execute(sa.select(s.id, s.hidden_bytes, s.hidden_spans, s.hidden_flag)).all() == [
                ("s1", 0, 0, False)]
            conn.execute(audit.sessions.insert().values(**row("s2")))
            conn.execute(audit.sessions.update().where(s.id == "s2").values(hidden_bytes=130, hidden_spans=5,
                                                                            hidden_flag=True))
            flagged = conn.execute(sa.select(s.id).where(s.hidden_flag == sa.true())).scalars().all()
        assert flagged == ["s2"]
    finally:
        engine.dispose()


def test_a_version_5_database_gets_the_reason(db_url):
    engine = sa.create_engine(db_url)
    try:
        # Schema 5 as it was released: sessions without `reason`, with a session in it.
        old = sa.MetaData()
        v5_sessions = sa.Table(audit.sessions.name, old, *[c._copy() for c in audit.sessions.columns
                                                           if c.name not in ("reason", "run_id")])
        with engine.begin() as conn:
            audit.schema_table.create(conn)
            v5_sessions.create(conn)
            audit.events.create(conn)
            for version in range(1, 6):
                conn.execute(audit.schema_table.insert().values(version=version))
            conn.execute(v5_sessions.insert().values(**row("old")))
        assert migrate(engine) == 5
        assert migrate(engine) == SCHEMA_VERSION == 7
        s = audit.sessions.c
        reason = "INC-4711: disk full on w1 – été " + "x" * 460
        with engine.begin() as conn:
            assert conn.execute(sa.select(s.id, s.reason)).all() == [("old", None)]  # none was asked for then
            conn.execute(audit.sessions.insert().values(**row("new"), reason=reason))
            assert conn.execute(sa.select(s.reason).where(s.id == "new")).scalar() == reason
    finally:
        engine.dispose()


def test_a_version_6_database_gets_fleet_runs_and_facts(db_url):
    engine = sa.create_engine(db_url)
    try:
        # Schema 6 as it was released: sessions without `run_id` and with a session in it; no runs, no facts.
        old = sa.MetaData()
        v6_sessions = sa.Table(audit.sessions.name, old, *[c._copy() for c in audit.sessions.columns
                                                           if c.name != "run_id"])
        with engine.begin() as conn:
            audit.schema_table.create(conn)
            v6_sessions.create(conn)
            audit.events.create(conn)
            for version in range(1, 7):
                conn.execute(audit.schema_table.insert().values(version=version))
            conn.execute(v6_sessions.insert().values(**row("old")))
        assert migrate(engine) == 6
        assert migrate(engine) == SCHEMA_VERSION == 7
        inspector = sa.inspect(engine)
        assert {"slaveshell_runs", "slaveshell_run_workers", "slaveshell_facts"} <= set(inspector.get_table_names())
        assert any(i["column_names"] == ["run_id"] for i in inspector.get_indexes(audit.sessions.name))
        s = audit.sessions.c
        with engine.begin() as conn:
            assert conn.execute(sa.select(s.id, s.run_id)).all() == [("old", None)]
    finally:
        engine.dispose()


def run_row(run_id, targets, started, state="ended"):
    return {"id": run_id, "kind": "run", "operator": "alice", "uid": 1000, "master": "m:/srv", "command": "uname",
            "selection": "*", "targets": targets, "batch": 1, "started": utc(started), "state": state}


@pytest_twisted.inlineCallbacks
def test_a_workers_fleet_runs(db_url):
    """`worker_runs`: the runs that named a worker (a target, or an outcome of it: a pending one), newest first, with
    its outcome and its session; a name is matched whole (`w1` is not `w10`), and `%`/`_` are no wildcards."""
    store = AuditStore(db_url)
    yield store.start()
    try:
        t = 1_790_000_000.0
        yield store.open_run(run_row("r1", "w1 w2", t), [])
        store.end_run("r1", {"state": "ended"}, [
            {"worker": "w1", "state": "ok", "exit_status": 0, "session_id": "s1"},
            {"worker": "w2", "state": "failed", "exit_status": 3, "session_id": "s2"}])
        yield store.open_run(run_row("r2", "w10", t + 1), [])
        yield store.open_run(run_row("r3", "", t + 2), [{"worker": "w1", "state": "pending", "reason": "waits"}])
        yield store.open_run(run_row("r4", "w2 w1", t + 3, state="running"), [])
        yield store.open_session({**row("s4", started=t + 3), "run_id": "r4"})
        yield store._drain_d
        found = yield store.worker_runs("w1")
        assert [(r.run["id"], r.outcome and r.outcome["state"], r.session) for r in found] == [
            ("r4", None, "s4"), ("r3", "pending", None), ("r1", "ok", "s1")]
        assert [r.run["id"] for r in (yield store.worker_runs("w10"))] == ["r2"]
        assert [(r.run["id"], r.outcome and r.outcome["exit_status"]) for r in (yield store.worker_runs("w2"))] == [
            ("r4", None), ("r1", 3)]
        assert (yield store.worker_runs("w%")) == [] and (yield store.worker_runs("w_")) == []
        assert len((yield store.worker_runs("w1", limit=1))) == 1
        # A page at a time: the runs older than the last of the page before (by id among runs of the same start).
        yield store.open_run(run_row("r5", "w1", t + 2), [])
        pages, after = [], None
        while True:
            page = yield store.worker_runs("w1", limit=2, after=after)
            pages.append([r.run["id"] for r in page])
            if len(page) < 2:
                break
            after = page[-1]
        assert pages == [["r4", "r5"], ["r3", "r1"], []]
        # `runs` (slaveshell runs) pages the same way.
        pages, last = [], None
        while True:
            got = yield store.runs(limit=2, after=last)
            pages.append([r["id"] for r in got])
            if len(got) < 2:
                break
            last = got[-1]
        assert pages == [["r4", "r5"], ["r3", "r2"], ["r1"]]
    finally:
        yield store.stop()
