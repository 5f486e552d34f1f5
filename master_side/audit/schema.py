"""The audit index's schema: its tables, in SQLAlchemy Core, and the steps that bring a database of any earlier
version to this one (docs/audit-schema.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

SCHEMA_VERSION = 7
PREFIX = "slaveshell_"

# MySQL's DATETIME drops fractions of a second unless asked.
_Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = sa.MetaData()

schema_table = sa.Table(
    PREFIX + "schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

sessions = sa.Table(
    PREFIX + "sessions", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("worker", sa.String(255), nullable=False, index=True),
    sa.Column("operator", sa.String(255), nullable=False, index=True),
    sa.Column("uid", sa.Integer, nullable=False),
    sa.Column("master", sa.String(1024), nullable=False),
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("pty", sa.Boolean, nullable=False),
    sa.Column("term", sa.String(64), nullable=True),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("started", _Time, nullable=False, index=True),
    sa.Column("ended", _Time, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("end_reason", sa.Text, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("exit_signal", sa.Integer, nullable=True),
    sa.Column("bytes_in", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_out", sa.BigInteger, nullable=False, default=0),
    sa.Column("transcript", sa.Text, nullable=True),
    sa.Column("transcript_sha256", sa.String(64), nullable=True),
    # Schema 2: sessions opened into a build held by HoldForShell.
    sa.Column("build_id", sa.Integer, nullable=True, index=True),
    sa.Column("builder", sa.String(255), nullable=True),
    sa.Column("build_number", sa.Integer, nullable=True),
    # Schema 3: input the remote terminal did not display (slaveshell.vocabulary.hidden): bytes, spans, and whether it
    # was more than a password.
    sa.Column("hidden_bytes", sa.BigInteger, nullable=False, default=0, server_default=sa.text("0")),
    sa.Column("hidden_spans", sa.Integer, nullable=False, default=0, server_default=sa.text("0")),
    sa.Column("hidden_flag", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # Schema 4: the sha256 of the transcript's attachment (bulk output kept raw,
    # docs/audit-schema.md), and when the retention setting removed the transcript's files from disk.
    sa.Column("attachment_sha256", sa.String(64), nullable=True),
    sa.Column("pruned", _Time, nullable=True),
    # Schema 5: an upload's file names on the worker, one per line, and the uploads a session's command names
    # (their ids, space-separated): master_side.audit.upload_links.
    sa.Column("files", sa.Text, nullable=True),
    sa.Column("uploads", sa.Text, nullable=True),
    # Schema 6: why the session or transfer was opened, as its operator gave it
    # (slaveshell.vocabulary.checks.check_reason).
    sa.Column("reason", sa.String(500), nullable=True),
    # Schema 7: the fleet run this session is part of (runs.id), NULL for any other session.
    sa.Column("run_id", sa.String(32), nullable=True, index=True),
)

# Schema 7: fleet runs (`slaveshell run`, `slaveshell facts --refresh`): one row per run, who asked for what.
runs = sa.Table(
    PREFIX + "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # run, facts
    sa.Column("operator", sa.String(255), nullable=False, index=True),
    sa.Column("uid", sa.Integer, nullable=False),
    # The operator's group ids, space-separated: a pending run's sessions are opened later for this identity.
    sa.Column("groups", sa.Text, nullable=True),
    sa.Column("master", sa.String(1024), nullable=False),
    sa.Column("command", sa.Text, nullable=True),  # the command line, or None for a script
    sa.Column("script_sha256", sa.String(64), nullable=True),
    sa.Column("script_bytes", sa.Integer, nullable=True),
    sa.Column("selection", sa.Text, nullable=False),  # the targets as asked (--workers, --where)
    sa.Column("targets", sa.Text, nullable=False),  # as resolved: the workers it starts on, space-separated
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("timeout", sa.Float, nullable=True),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("started", _Time, nullable=False, index=True),
    sa.Column("ended", _Time, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # running, ended, interrupted, lost
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("exit_status", sa.Integer, nullable=True),
    # What each worker runs (JSON: command or script, env, cwd, timeout): kept while workers are pending.
    sa.Column("request", sa.Text, nullable=True),
)

# Schema 7: each worker's outcome in a run, listed ones (not connected, refused, ...) included.
run_workers = sa.Table(
    PREFIX + "run_workers", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), nullable=False, index=True),
    sa.Column("worker", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),  # slaveshell.fleet.outcome.State's values
    sa.Column("exit_status", sa.Integer, nullable=True),
    sa.Column("duration", sa.Float, nullable=True),
    sa.Column("session_id", sa.String(32), nullable=True),
    sa.Column("output_bytes", sa.BigInteger, nullable=True),
    sa.Column("output_sha256", sa.String(64), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    # A worker not connected when an --include-offline run was asked for: pending until it attaches (then it
    # runs, paused in Buildbot first with `pause`) or `until` passes; `updated` is its last change.
    sa.Column("until", _Time, nullable=True),
    sa.Column("pause", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("updated", _Time, nullable=True),
)

# Schema 7: what each worker is (`slaveshell facts`): its last value of each fact, and when it was taken.
facts = sa.Table(
    PREFIX + "facts", metadata,
    sa.Column("worker", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(1024), nullable=False),
    sa.Column("taken", _Time, nullable=False),
    sa.Column("run_id", sa.String(32), nullable=True),
)

events = sa.Table(
    PREFIX + "events", metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(32), nullable=True, index=True),
    sa.Column("time", _Time, nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("worker", sa.String(255), nullable=True),
    sa.Column("operator", sa.String(255), nullable=True),
    sa.Column("uid", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)


def _migrate_1(conn: sa.Connection) -> None:
    for table in (sessions, events):
        table.create(conn, checkfirst=True)


def _migrate_2(conn: sa.Connection) -> None:
    # A database made at version 1 lacks the build columns; one made since has them from _migrate_1.
    present = {c["name"] for c in sa.inspect(conn).get_columns(sessions.name)}
    for name in ("build_id", "builder", "build_number"):
        if name not in present:
            column = sessions.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {sessions.name} ADD COLUMN {name} {kind}"))
    _add_indexes(conn)


def _add_indexes(conn: sa.Connection) -> None:
    """The sessions table's indexes the database lacks, of the columns it has (a later step adds the others)."""
    inspector = sa.inspect(conn)
    present = {c["name"] for c in inspector.get_columns(sessions.name)}
    indexes = {i["name"] for i in inspector.get_indexes(sessions.name)}
    for index in sessions.indexes:
        if index.name not in indexes and all(c.name in present for c in index.columns):
            index.create(conn)


def _add_columns(conn: sa.Connection, names: Iterable[str]) -> None:
    """The sessions table's columns `names`, as this version defines them, where the database lacks them."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(sessions.name)}
    for name in names:
        if name not in present:
            ddl = sa.schema.CreateColumn(sessions.c[name]).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {sessions.name} ADD COLUMN {ddl}"))


def _migrate_3(conn: sa.Connection) -> None:
    # The hidden-input counts; rows of earlier sessions get 0 and false (nothing was counted then).
    _add_columns(conn, ("hidden_bytes", "hidden_spans", "hidden_flag"))


def _migrate_4(conn: sa.Connection) -> None:
    # The attachment's sha256 and the prune time; earlier rows get NULL (none, not pruned).
    _add_columns(conn, ("attachment_sha256", "pruned"))


def _migrate_5(conn: sa.Connection) -> None:
    # Links from sessions to uploads; earlier rows get NULL (no names kept, no link).
    _add_columns(conn, ("files", "uploads"))


def _migrate_6(conn: sa.Connection) -> None:
    # The operator's reason; earlier rows get NULL (none was asked for).
    _add_columns(conn, ("reason",))


def _migrate_7(conn: sa.Connection) -> None:
    # Fleet runs, their workers' outcomes, the workers' facts; a session's run (earlier rows: NULL, none).
    _add_columns(conn, ("run_id",))
    _add_indexes(conn)
    for table in (runs, run_workers, facts):
        table.create(conn, checkfirst=True)


# version -> step that brings the schema from version-1 to version. Never edit a released step: add one.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3,
                                                          4: _migrate_4, 5: _migrate_5, 6: _migrate_6,
                                                          7: _migrate_7}


# The lock the masters of a multi-master site sharing one audit database take while they migrate it
# (PostgreSQL's advisory lock key, MySQL/MariaDB's lock name), and how long a master waits for it on MySQL/MariaDB.
MIGRATION_LOCK_KEY = 0x736C736873636D61
MIGRATION_LOCK_NAME = "slaveshell_audit_schema"
MIGRATION_LOCK_WAIT = 120


@contextlib.contextmanager
def _one_migrating(engine: sa.Engine) -> Iterator[None]:
    """Held while one process migrates: masters sharing a database that start together would otherwise create the
    same tables at once, and all but one fail. SQLite (one master's file) needs none."""
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        else:
            got = conn.execute(sa.text("SELECT GET_LOCK(:name, :wait)"),
                               {"name": MIGRATION_LOCK_NAME, "wait": MIGRATION_LOCK_WAIT}).scalar()
            if got != 1:
                raise RuntimeError(f"another master has held the audit database's migration lock for "
                                   f"{MIGRATION_LOCK_WAIT} s")
        conn.commit()  # the lock is the connection's, not the transaction's
        try:
            yield
        finally:
            try:
                if dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                else:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": MIGRATION_LOCK_NAME})
                conn.commit()
            except Exception:
                conn.invalidate()  # never back to the pool with the lock: closing the connection releases it


def migrate(engine: sa.Engine) -> int:
    """Bring the schema to SCHEMA_VERSION, one step per transaction, one process at a time. Returns the version
    found before."""
    with _one_migrating(engine):
        return _migrate(engine)


def _migrate(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        schema_table.create(conn, checkfirst=True)
        found = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar() or 0
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"the audit database has schema version {found}, newer than this slaveshell "
                           f"({SCHEMA_VERSION}): upgrade slaveshell")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        with engine.begin() as conn:
            MIGRATIONS[version](conn)
            conn.execute(schema_table.insert().values(version=version))
    return found
