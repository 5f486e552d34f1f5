"""Transcript retention (master_side.audit.retention) against a real audit trail on SQLite and real files: old
transcripts and their attachments leave the disk, rows stay marked, each prune is an event, runs are spaced."""

import os
import time

import pytest_twisted

from master_side.audit.retention import DAY, Retention
from master_side.audit.store import utc
from master_side.audit.trail import AuditTrail

NOW = 1_790_000_000.0


def session_row(trail, session_id, ended, state="ended", master="m"):
    path = os.path.join(trail.directory, f"x-{session_id}.cast")
    with open(path, "w") as f:
        f.write('{"version": 2, "width": 80, "height": 24}\n')
    with open(path[: -len(".cast")] + ".bin", "wb") as f:
        f.write(b"z" * 1000)
    return path, {"id": session_id, "worker": "w1", "operator": "alice", "uid": 1000, "master": master,
                  "command": "cat", "pty": False, "term": None, "width": 80, "height": 24,
                  "started": utc(ended - 10), "ended": utc(ended) if state != "running" else None,
                  "state": state, "transcript": path, "bytes_in": 0, "bytes_out": 1000}


@pytest_twisted.inlineCallbacks
def test_old_transcripts_are_pruned_rows_kept_and_each_prune_is_an_event(tmp_path):
    trail = AuditTrail(str(tmp_path), "m")
    yield trail.start()
    try:
        rows = {}
        for sid, ended, state, master in (("old", NOW - 31 * DAY, "ended", "m"),
                                          ("young", NOW - 29 * DAY, "ended", "m"),
                                          ("live", NOW - 40 * DAY, "running", "m"),
                                          ("other", NOW - 40 * DAY, "ended", "another master")):
            path, row = session_row(trail, sid, ended, state, master)
            rows[sid] = path
            yield trail.store.open_session(row)
        retention = Retention(lambda: trail)
        assert retention.tick(NOW) is None  # no setting: nothing is ever pruned
        retention.days = 30
        pruned = yield retention.tick(NOW)
        assert pruned == 1
        assert not os.path.exists(rows["old"]) and not os.path.exists(rows["old"][:-5] + ".bin")
        for sid in ("young", "live", "other"):
            assert os.path.exists(rows[sid]) and os.path.exists(rows[sid][:-5] + ".bin")
        yield trail.store._drain_d
        [old] = yield trail.store.history(session_id="old")
        assert old["pruned"] is not None and old["state"] == "ended" and old["transcript"] == rows["old"]
        [young] = yield trail.store.history(session_id="young")
        assert young["pruned"] is None
        [event] = yield trail.store.events_of(kind="prune")
        assert event["session_id"] == "old" and "after 30 days" in event["detail"]
        assert "(1042 bytes with its attachment)" in event["detail"]
        # Runs are spaced (a tenth of the retention, at most an hour); the next one finds nothing left.
        assert retention.tick(NOW + 1) is None
        assert (yield retention.tick(NOW + 3600)) == 0
    finally:
        yield trail.stop()


@pytest_twisted.inlineCallbacks
def test_a_row_naming_a_file_outside_the_transcript_directory_is_marked_and_the_file_left_alone(tmp_path):
    trail = AuditTrail(str(tmp_path / "master"), "m")
    yield trail.start()
    try:
        outside = tmp_path / "precious.cast"
        outside.write_text("not ours")
        _, row = session_row(trail, "s1", time.time() - 2 * DAY)
        row["transcript"] = str(outside)
        yield trail.store.open_session(row)
        retention = Retention(lambda: trail)
        retention.days = 1
        assert (yield retention.tick(time.time())) == 1
        assert outside.read_text() == "not ours"
        yield trail.store._drain_d
        [event] = yield trail.store.events_of(kind="prune")
        assert "not removed" in event["detail"]
    finally:
        yield trail.stop()


def test_removing_a_transcript_removes_every_file_its_record_owns(tmp_path):
    from master_side.audit.transcripts import owned_files, remove_transcript

    path = str(tmp_path / "20260101-000000-w1-abc.cast")
    owned = owned_files(path)
    assert owned == (path, str(tmp_path / "20260101-000000-w1-abc.bin"), str(tmp_path / "20260101-000000-w1-abc.bytes"))
    for i, name in enumerate(owned):
        with open(name, "w") as f:
            f.write("x" * (i + 1))
    other = tmp_path / "20260101-000000-w1-abd.bytes"
    other.write_text("another record's")
    assert remove_transcript(path) == 6
    assert os.listdir(tmp_path) == [other.name]
