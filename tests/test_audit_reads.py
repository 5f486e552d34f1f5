"""The audit index's reads run apart from its writes (master_side.audit.reads): however many reads wait, a
session's first row and its later writes land at once; a read sees the writes queued before it."""

import threading
import time

import pytest_twisted
from twisted.internet import defer, reactor, task

from master_side.audit import reads as audit_reads
from master_side.audit.store import AuditStore, utc


def row(session_id: str) -> dict[str, object]:
    return {"id": session_id, "worker": "w1", "operator": "alice", "uid": 1000, "master": "m:/srv", "command": None,
            "pty": True, "term": "xterm", "width": 80, "height": 24, "started": utc(time.time()),
            "state": "running", "transcript": None, "bytes_in": 0, "bytes_out": 0}


@pytest_twisted.inlineCallbacks
def test_a_sessions_rows_never_wait_behind_reads(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield store.start()
    release = threading.Event()
    started: list[int] = []

    def slow_read() -> int:
        started.append(1)
        release.wait(30)
        return 1

    # Every read thread busy, and many more reads waiting their turn (a flood of history calls).
    reads = [store.read(slow_read) for _ in range(audit_reads.READ_THREADS + 200)]
    try:
        for _ in range(400):
            if len(started) >= audit_reads.READ_THREADS:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        began = time.monotonic()
        yield store.open_session(row("s1"))  # what a session needs before it is served
        store.update_session("s1", state="ended")
        yield store._drain_d
        assert time.monotonic() - began < 5
        assert not any(d.called for d in reads)
    finally:
        release.set()
        yield defer.gatherResults(reads)
    rows = yield store.history(session_id="s1")
    assert rows[0]["state"] == "ended"
    yield store.stop()


@pytest_twisted.inlineCallbacks
def test_a_read_sees_the_writes_queued_before_it(tmp_path):
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield store.start()
    try:
        yield store.open_session(row("s1"))
        for i in range(50):
            store.add_event("note", "s1", detail=str(i))
            store.update_session("s1", bytes_in=i)
            events = yield store.events_of(session_id="s1")
            assert [e["detail"] for e in events] == [str(n) for n in range(i + 1)]
            assert (yield store.history(session_id="s1"))[0]["bytes_in"] == i
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_a_read_does_not_wait_for_writes_while_the_database_is_away(tmp_path):
    """While queued writes wait for the database, a read goes on without them: it fails (or succeeds) at once,
    as the operator's `slaveshell history` must say the database is unavailable rather than hang."""
    import sqlalchemy as sa

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield store.start()
    store.retry_interval = 0.05
    failing = [True]

    def away() -> None:
        if failing[0]:
            raise sa.exc.OperationalError("INSERT", {}, Exception("the database is away"))

    try:
        store._enqueue(away)  # a write that waits for the database
        for _ in range(200):
            if store.down_since is not None:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert store.down_since is not None
        rows = yield store.history()
        assert rows == []
    finally:
        failing[0] = False
        for _ in range(200):
            if store.down_since is None:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield store.stop()
