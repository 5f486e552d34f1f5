"""The shapes of what the audit index and the operator API answer, as typed dicts: rows of the index
(docs/audit-schema.md), search hits and transcript chunks. The doors send them as plain values (strings,
numbers, booleans, None, bytes), so times are ISO 8601 strings in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple, NotRequired, TypedDict


class SessionRow(TypedDict):
    """A row of the sessions table as `history` reads it (see docs/audit-schema.md for each column). Times are
    ISO 8601 strings in UTC (`started`, `ended`)."""

    id: str
    worker: str
    operator: str
    uid: int
    master: str
    command: str | None
    pty: bool
    term: str | None
    width: int | None
    height: int | None
    started: str
    ended: str | None
    state: str  # running, ended, refused, interrupted
    end_reason: str | None
    exit_code: int | None
    exit_signal: int | None
    bytes_in: int
    bytes_out: int
    transcript: str | None  # the asciicast file's absolute path
    transcript_sha256: str | None
    build_id: int | None
    builder: str | None
    build_number: int | None
    hidden_bytes: int
    hidden_spans: int
    hidden_flag: bool
    attachment_sha256: str | None  # the sha256 of the bulk output's raw attachment
    pruned: str | None  # when retention removed the transcript (the row is kept)
    files: str | None  # an upload's file names on the worker, one per line (master_side.audit.upload_links)
    uploads: str | None  # the ids of the uploads the session's command names, space-separated
    reason: str | None  # why it was opened, as its operator gave it (slaveshell.vocabulary.checks.check_reason)
    run_id: str | None  # the fleet run it is part of (RunRow.id)
    # On a multi-master site, the name in the site of the master that recorded it (None: that master is not on
    # the router now); not a column: the operators' API adds it (master_side.operators.api.site_history).
    site_master: NotRequired[str | None]


class RunRow(TypedDict):
    """A row of the runs table (a fleet run); times as ISO 8601 in UTC."""

    id: str
    kind: str  # run, facts
    operator: str
    uid: int
    master: str
    command: str | None
    script_sha256: str | None
    script_bytes: int | None
    selection: str
    targets: str  # space-separated
    batch: int
    timeout: float | None
    reason: str | None
    started: str
    ended: str | None
    state: str  # running, ended, interrupted, lost
    summary: str | None
    exit_status: int | None


class RunWorkerRow(TypedDict):
    """A worker's outcome in a fleet run."""

    id: int
    run_id: str
    worker: str
    state: str  # slaveshell.fleet.outcome.State's values
    exit_status: int | None
    duration: float | None
    session_id: str | None
    output_bytes: int | None
    output_sha256: str | None
    reason: str | None


class WorkerRun(NamedTuple):
    """A fleet run that named one worker (`AuditStore.worker_runs`): the run, that worker's outcome (None while it
    runs), and its session on that worker, if one was opened."""

    run: RunRow
    outcome: RunWorkerRow | None
    session: str | None


class FactRow(TypedDict):
    """A worker's last value of one fact."""

    worker: str
    name: str
    value: str
    taken: str
    run_id: str | None


class EventRow(TypedDict):
    """A row of the events table as `events_of` reads it; `time` as ISO 8601 in UTC."""

    id: int
    session_id: str | None
    time: str
    kind: str  # open, end, join, leave, attach, detach, kill, release, refused, dropped, record-error, ...
    worker: str | None
    operator: str | None
    uid: int | None
    detail: str | None


class RunningRow(TypedDict):
    """The columns crash recovery reads of a session left 'running' (`running_sessions`), as stored."""

    id: str
    worker: str
    operator: str
    uid: int
    started: dt.datetime  # naive UTC
    transcript: str | None


class SearchHit(TypedDict):
    """One place a searched text was found in a transcript (`AuditTrail.search`)."""

    session: str
    worker: str
    operator: str
    started: str  # the session's start, ISO 8601 in UTC
    time: float  # seconds into the session, to the millisecond
    hidden: str  # the session's hidden input, as slaveshell.vocabulary.hidden.summary spells it
    hidden_flag: bool
    stream: str  # "output" or "input"; "file" for a file a transfer kept
    context: str  # the text found, with up to 40 characters either side


class TranscriptChunk(TypedDict):
    """A piece of a transcript file (`OperatorAPI.transcript`): at most MAX_CHUNK bytes; `eof` when it is the
    last."""

    data: bytes
    eof: bool
