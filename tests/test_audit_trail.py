"""Fail-closed recording: a session that cannot be recorded is refused, or served with a warning when the
master is configured to allow it; a transcript that fails mid-session ends it (or warns)."""

import hashlib
import os
import threading

import pytest
import pytest_twisted
from twisted.internet import defer

from master_side.audit.trail import AuditTrail, RecordingError
from master_side.service import ShellService
from master_side.sessions.session import MasterSession
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.protocol import OpenRequest
from tests.recorded import ToViewer, ToWorker

ROOT = Identity(0, 0, 1, "root", frozenset({"root"}))
DEAD_DB = "postgresql+psycopg2://nobody@127.0.0.1:1/none"


def session():
    return MasterSession(OpenRequest(worker="w1"), ROOT, on_end=lambda s: None)


@pytest_twisted.inlineCallbacks
def test_no_database_means_no_session(tmp_path):
    trail = AuditTrail(str(tmp_path), "m", db_url=DEAD_DB)
    yield trail.start()
    try:
        with pytest.raises(RecordingError, match="cannot write the audit index"):
            yield trail.begin(session())
        assert os.listdir(tmp_path / "transcripts") == []  # no orphan transcript either
    finally:
        yield trail.stop()


@pytest_twisted.inlineCallbacks
def test_unwritable_transcript_directory_means_no_session(tmp_path):
    (tmp_path / "transcripts").write_text("a file where the directory should be")
    trail = AuditTrail(str(tmp_path), "m")
    trail.directory = str(tmp_path / "transcripts" / "sub")
    yield trail._ensure_store()
    try:
        with pytest.raises(RecordingError, match="cannot create the transcript"):
            yield trail.begin(session())
    finally:
        yield trail.stop()


@pytest_twisted.inlineCallbacks
def test_degraded_mode_serves_unrecorded_when_allowed(tmp_path):
    trail = AuditTrail(str(tmp_path), "m", db_url=DEAD_DB, require_recording=False)
    yield trail.start()
    try:
        assert (yield trail.begin(session())) is None
    finally:
        yield trail.stop()


@pytest_twisted.inlineCallbacks
def test_a_recorded_session_has_its_file_and_row_before_it_is_served(tmp_path):
    trail = AuditTrail(str(tmp_path), "m")
    yield trail.start()
    try:
        s = session()
        recorder = yield trail.begin(s)
        assert os.path.getsize(recorder.path) > 0  # the header is on disk already
        rows = yield trail.store.history(session_id=s.id)
        assert rows[0]["state"] == "running"
    finally:
        yield trail.stop()


@pytest.mark.parametrize("mode", ["end", "continue"])
def test_transcript_failure_mid_session_ends_it_or_warns(mode):
    service = ShellService()
    service.trail = AuditTrail("/tmp", "m", on_record_error=mode)
    s = session()
    to_op, to_w = [], []
    owner = s.start(ToViewer(lambda *a: to_op.append(a)), ToWorker(lambda *a: to_w.append(a)))
    service.registry.recording_failed(s, OSError(28, "No space left on device"))
    if mode == "end":
        assert to_w == [("close",)]
        assert to_op[-1][0] == "exit" and "No space left on device" in to_op[-1][3]
    else:
        assert to_w == []
        assert b"continues UNRECORDED" in to_op[-1][2]
        # The warning's bytes are the master's own: their ack must not be passed to the worker.
        s.viewer_ack(owner, len(to_op[-1][2]))
        assert to_w == []


@pytest_twisted.inlineCallbacks
def test_a_session_the_worker_refuses_after_recording_began_is_closed_as_refused(tmp_path):
    trail = AuditTrail(str(tmp_path), "m")
    yield trail.start()
    try:
        s = session()
        recorder = yield trail.begin(s)
        trail.not_opened(s, "worker w1: has not enabled slaveshell")
        yield defer.DeferredList(list(trail._closing))
        if trail.store._drain_d is not None:
            yield trail.store._drain_d
        with open(recorder.path, "rb") as f:
            data = f.read()
        assert b"refused: worker w1: has not enabled slaveshell" in data.splitlines()[-1]
        row = (yield trail.store.history(session_id=s.id))[0]
        assert (row["state"], row["end_reason"]) == ("refused", "worker w1: has not enabled slaveshell")
        assert row["ended"] is not None and row["transcript_sha256"] == hashlib.sha256(data).hexdigest()
        events = yield trail.store.events_of(session_id=s.id)
        assert [(e["kind"], e["detail"]) for e in events] == [("refused", "worker w1: has not enabled slaveshell")]
    finally:
        yield trail.stop()


@pytest_twisted.inlineCallbacks
def test_searches_that_take_long_leave_the_masters_shared_threads_free(tmp_path, monkeypatch):
    """Auditors' searches run in the trail's own pool: while more of them than it has threads are in progress,
    the reactor's shared pool (Buildbot's REST answers, our transcripts' fsyncs) still answers at once, and the
    searches all finish, in turn, once they can."""
    from twisted.internet import reactor, task, threads

    from master_side.audit import reads as audit_reads
    from master_side.audit import trail as audit_trail
    release = threading.Event()
    started = []

    def slow_search(paths, text, limit):
        started.append(text)
        release.wait(30)
        return [text]

    monkeypatch.setattr(audit_trail.transcript_search, "search", slow_search)
    trail = AuditTrail(str(tmp_path), "m")
    searches = [trail.search([], f"q{i}", 10) for i in range(audit_reads.READ_THREADS + 3)]
    try:
        for _ in range(400):  # the read threads pick their first searches up
            if len(started) >= audit_reads.READ_THREADS:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        shared = yield threads.deferToThread(lambda: "shared pool answers")
        assert shared == "shared pool answers"
        assert len(started) == audit_reads.READ_THREADS  # the others wait for a read thread
        assert not any(d.called for d in searches)
    finally:
        release.set()
        results = yield defer.gatherResults(searches)
        yield trail.stop()
    assert results == [[f"q{i}"] for i in range(audit_reads.READ_THREADS + 3)]
    assert reactor.getThreadPool().started


@pytest_twisted.inlineCallbacks
def test_a_sessions_viewers_reach_the_index_through_the_trail(tmp_path):
    """The session holds the trail as its viewer events: a join, a leave, the owner's detach and attach are
    events of the session, under the viewer's name."""
    from master_side.sessions.session import Role

    trail = AuditTrail(str(tmp_path), "m")
    yield trail.start()
    try:
        s = session()
        s.viewer_events = trail
        s.start(to_owner=ToViewer(), to_worker=ToWorker())
        bob = Identity(1001, 1001, 1001, "bob", frozenset())
        watcher = s.add_viewer(bob, Role.WATCH, ToViewer())
        s.remove_viewer(watcher, "connection lost")
        assert s.owner is not None
        s.remove_viewer(s.owner, "the operator detached")
        s.add_viewer(ROOT, Role.OWNER, ToViewer())
        if trail.store._drain_d is not None:
            yield trail.store._drain_d
        events = yield trail.store.events_of(session_id=s.id)
        assert [(e["kind"], e["operator"], e["detail"]) for e in events] == [
            ("join", "bob", "watch"), ("leave", "bob", "connection lost"),
            ("detach", "root", "the operator detached"), ("attach", "root", "")]
    finally:
        yield trail.stop()
