"""A transfer's record starts as a session's does (`AuditTrail.start_record`): its transcript made off the
reactor thread, and the audit database connected when it was away at the master's start."""

from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted

from master_side.audit.trail import AuditTrail, RecordingError
from master_side.copying.record import TransferRecord
from slaveshell.vocabulary.copying import UP, TransferRequest
from slaveshell.vocabulary.policy import Identity

ROOT = Identity(0, 0, 1, "root", frozenset({"root"}))


@pytest_twisted.inlineCallbacks
def test_a_transfer_is_recorded_once_the_database_away_at_the_start_is_back(tmp_path):
    later = tmp_path / "later"
    trail = AuditTrail(str(tmp_path), "m", db_url=f"sqlite:///{later / 'audit.sqlite'}")
    yield trail.start()  # the database's directory does not exist yet: the trail starts without it
    try:
        request = TransferRequest(UP, "w1", ("f",), "/d", operator="root")
        refused = TransferRecord(trail, "t1", ROOT, request, 0.0, keep_bytes=False)
        with pytest.raises(RecordingError, match="transfer not started: it cannot be recorded"):
            yield refused.begin()
        assert not os.path.exists(refused.path)  # no orphan transcript
        later.mkdir()
        record = TransferRecord(trail, "t2", ROOT, request, 0.0, keep_bytes=True)
        made_in: list[threading.Thread] = []
        create = record._create

        def create_and_note() -> None:
            made_in.append(threading.current_thread())
            create()

        record._create = create_and_note  # type: ignore[method-assign]
        assert (yield record.begin()) is True
        assert made_in and made_in[0] is not threading.main_thread()  # the disk work is off the reactor thread
        assert os.path.getsize(record.path) > 0
        rows = yield trail.store.history(session_id="t2")
        assert rows[0]["term"] == "transfer" and rows[0]["state"] == "running"
        record.end(True, "", 0, 0)
    finally:
        yield trail.stop()

