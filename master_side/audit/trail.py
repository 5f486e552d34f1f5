"""The service's audit trail: transcripts on disk plus the SQL index, kept together.

Fail-closed by default: a session is served only once its transcript file (with header) and its index row
exist. `require_recording=False` serves anyway, with a loud warning to the log and to the operator.

The index's one writer: every row and event written to the audit store goes through a typed method of
`AuditTrail` (a session's life, its viewers, refusals and drops, transfers, holds, prunes) or through a
recording's `IndexWriter`, both here (tests/test_audit_writer.py checks that nothing else calls a write
method of `master_side.audit.store.AuditStore`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import orjson
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from master_side.audit import search as transcript_search
from master_side.audit.export import exports
from master_side.audit.recorder import HiddenCounts, SessionRecorder, header_for, session_row
from master_side.audit.rows import SearchHit, SessionRow
from master_side.audit.store import AuditStore, StoreReactor, timestamp, utc
from master_side.audit.transcripts import recover, transcript_dir, transcript_name
from master_side.holds.deadline import clock_time
from master_side.holds.step import Hold
from master_side.sessions.model import Viewer
from master_side.sessions.session import MasterSession
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary import hidden as hidden_input
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Identity
from slaveshell.vocabulary.transcript import CastEncoder, Redactor

log = Logger()

ON_RECORD_ERROR = ("end", "continue")


class RecordingError(Exception):
    """The session cannot be recorded; the message is for the operator."""


class IndexWriter:
    """One recording's writes to the audit index (the recorder's `RecordIndex`): hidden-input counts as they
    change, a transcript that cannot be written, and the session's end: as ended, or as refused once
    `refuse` was called (the worker refused the session after recording began)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.refusal: str | None = None

    def refuse(self, reason: str) -> None:
        """The session was not opened: its end closes the row as refused, for `reason`."""
        self.refusal = reason

    def hidden_input(self, session_id: str, counts: HiddenCounts) -> None:
        self.store.update_session(session_id, hidden_bytes=counts["hidden_bytes"],
                                  hidden_spans=counts["hidden_spans"], hidden_flag=counts["hidden_flag"])

    def record_error(self, session_id: str, error: OSError) -> None:
        self.store.add_event("record-error", session_id, detail=f"transcript: {error}")

    def recorded(self, session: MasterSession, ended: float, sha256: str | None, hidden: HiddenCounts,
                 attachment_sha256: str | None = None) -> None:
        if self.refusal is not None:
            self.store.update_session(session.id, state="refused", ended=utc(ended), end_reason=self.refusal,
                                      transcript_sha256=sha256, attachment_sha256=attachment_sha256)
            return
        status = session.status
        self.store.update_session(
            session.id,
            state="ended",
            ended=utc(ended),
            end_reason=session.end_reason,
            exit_code=status.code if status else None,
            exit_signal=status.signal if status else None,
            bytes_in=session.bytes_in,
            bytes_out=session.bytes_out,
            transcript_sha256=sha256,
            attachment_sha256=attachment_sha256,  # the sha256 of the bulk output's raw attachment
            hidden_bytes=hidden["hidden_bytes"],
            hidden_spans=hidden["hidden_spans"],
            hidden_flag=hidden["hidden_flag"],
        )
        self.store.add_event("end", session.id, session.worker, session.identity.user, session.identity.uid,
                         detail=session.end_reason, when=ended)


@dataclass(frozen=True)
class TransferOutcome:
    """How a transfer ended, as its row keeps it: `text` is its end reason ("ok: N files, M bytes" or "failed:
    ..."); bytes to the worker (`bytes_in`) and from it (`bytes_out`); the transcript's and the kept copy's
    sha256; an upload's file names (`files`, master_side.audit.upload_links)."""

    ok: bool
    text: str
    bytes_in: int
    bytes_out: int
    sha256: str | None
    attachment_sha256: str | None
    files: str | None


@dataclass(frozen=True)
class Recording:
    """A session's recording as the trail keeps it: its transcript's recorder and its index writer."""

    recorder: SessionRecorder
    index: IndexWriter


T = TypeVar("T")


def transfer_row(transfer_id: str, who: Identity, worker: str, master: str, description: str, started: float,
                 transcript: str | None, build: Mapping[str, object], reason: str | None) -> dict[str, object]:
    """A transfer's row in the sessions table: ``term`` "transfer", ``command`` its `description`, the `build`'s
    columns with ``--build``, the operator's `reason`."""
    return {"id": transfer_id, "worker": worker, "operator": who.user, "uid": who.uid, "master": master,
            "command": description, "pty": False, "term": "transfer", "width": 80, "height": 24,
            "started": utc(started), "state": "running", "transcript": transcript, "bytes_in": 0, "bytes_out": 0,
            "reason": reason, **build}


class AuditTrail:
    def __init__(
        self,
        basedir: str,
        master_name: str,
        transcripts: str = "transcripts",
        db_url: str | None = None,
        record_input: bool = True,
        redact: Sequence[str] = (),
        require_recording: bool = True,
        on_record_error: str = "end",
        seal_to: str | Sequence[str] | None = None,
        reactor: StoreReactor | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if on_record_error not in ON_RECORD_ERROR:
            raise ValueError(f"on_record_error must be one of {ON_RECORD_ERROR}")
        self.reactor: StoreReactor = reactor
        self.master_name = master_name
        self.directory = os.path.abspath(os.path.join(basedir, transcripts))
        self.db_url = db_url or f"sqlite:///{os.path.join(os.path.abspath(basedir), 'slaveshell.sqlite')}"
        self.record_input = record_input
        self.redact = Redactor([re.compile(p) for p in redact])
        self.require_recording = require_recording
        self.on_record_error = on_record_error
        # Hidden keystrokes are sealed to these age recipients (auditors' public keys); None: lengths only.
        self.seal_recipients = hidden_input.load_recipients(seal_to) if seal_to else None
        self.store = AuditStore(self.db_url, reactor)
        self.recordings: dict[str, Recording] = {}  # by session id, until the session ends
        self._started = False
        self._closing: set[defer.Deferred[None]] = set()

    # -- life ----------------------------------------------------------------------------------

    @deferred
    async def start(self) -> None:
        transcript_dir(self.directory)
        await self._ensure_store()

    @deferred
    async def _ensure_store(self) -> bool:
        """Connect (and migrate) if not yet done; the database may come up after the master."""
        if self._started:
            return True
        try:
            await self.store.start()
        except Exception as e:
            log.critical("slaveshell audit: cannot open the audit database {url}: {e}",
                         url=_safe_url(self.db_url), e=visible(str(e).splitlines()[0] if str(e) else repr(e)))
            return False
        self._started = True
        await self.recover()
        return True

    @deferred
    async def stop(self) -> None:
        # Transcripts still being fsynced and closed: they finish before the trail stops.
        await defer.DeferredList(list(self._closing))
        self.store.reads.stop()
        if self._started:
            await self.store.stop()
            self._started = False

    def _read(self, fn: Callable[[], T]) -> defer.Deferred[T]:
        """`fn()` in the store's read pool (master_side.audit.reads), neither in the reactor's shared one nor in
        the store's writes thread: what auditors ask to read (search, export chunks) takes time in proportion to
        the transcripts read, and a user's few connections could otherwise hold every shared thread, delaying
        Buildbot's own threaded work (its REST answers), our transcripts' creation and fsyncs, and the row every
        session needs before it is served. Further reads wait their turn (the doors bound how many)."""
        return self.store.read(fn)

    def _in_thread(self, work: Callable[[], None]) -> None:
        """Run blocking file work (a transcript's fsync and close) in a thread; an error is logged."""
        d: defer.Deferred[None] = threads.deferToThread(work)
        self._closing.add(d)

        def done(result: object) -> None:
            self._closing.discard(d)
            if isinstance(result, Failure):
                log.failure("slaveshell: a transcript could not be synced to disk", result)

        d.addBoth(done)

    # -- crash recovery ------------------------------------------------------------------------

    @deferred
    async def recover(self) -> None:
        """Sessions this master left 'running' (it was killed): repair their transcripts, close their rows."""
        rows = await self.store.running_sessions(self.master_name)
        for row in rows:
            path = row.get("transcript")
            reason = "interrupted: the master stopped while the session was running"
            last, sha = 0.0, None
            if path and os.path.exists(path):
                try:
                    last, sha = await threads.deferToThread(recover, path, reason)
                except Exception as e:
                    log.error("slaveshell: cannot repair transcript {path}: {e}", path=visible(path), e=visible(e))
            started = timestamp(row["started"])
            self.store.update_session(row["id"], state="interrupted", ended=utc(started + last),
                                      end_reason=reason, transcript_sha256=sha)
            self.store.add_event("interrupted", row["id"], row["worker"], row["operator"], row["uid"], detail=reason,
                             when=started + last)
            log.warn("slaveshell: session {sid} was interrupted by a master stop; marked and repaired",
                     sid=row["id"])

    # -- sessions ------------------------------------------------------------------------------

    def refused(self, who: Identity, worker: str | None, reason: str) -> None:
        """A request refused before any session (policy, routing, quotas, bounds): an event of kind "refused"."""
        self.store.add_event("refused", None, worker, who.user, who.uid, detail=reason)

    def dropped(self, who: Identity, worker: str | None, reason: str) -> None:
        """A connection the bounds or a broken protocol cost: an event of kind "dropped"."""
        self.store.add_event("dropped", None, worker, who.user, who.uid, detail=reason)

    def viewer_joined(self, session: MasterSession, viewer: Viewer) -> None:
        """A viewer joined or watches `session` (its detail: the viewer's role)."""
        self._viewer_event(session, "join", viewer, viewer.role.value)

    def viewer_left(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        self._viewer_event(session, "leave", viewer, why)

    def viewer_attached(self, session: MasterSession, viewer: Viewer) -> None:
        """The owner attached to `session`, detached until now."""
        self._viewer_event(session, "attach", viewer, "")

    def viewer_detached(self, session: MasterSession, viewer: Viewer, why: str) -> None:
        """The owner detached from `session` (it goes on running)."""
        self._viewer_event(session, "detach", viewer, why)

    def _viewer_event(self, session: MasterSession, kind: str, viewer: Viewer, detail: str) -> None:
        self.store.add_event(kind, session.id, session.worker, viewer.identity.user, viewer.identity.uid, detail)

    def moderation(self, session: MasterSession, kind: str, who: Identity, detail: str) -> None:
        """A four-eyes session's event (master_side.sessions.moderation: input held, a moderator's span, input
        dropped while held); `who` is the moderator, or the operator whose input it is about."""
        self.store.add_event(kind, session.id, session.worker, who.user, who.uid, detail)

    def approval(self, kind: str, worker: str, who: Identity, detail: str, record_id: str | None = None) -> None:
        """A request's approval step (master_side.operators.approvals: asked, approved, denied, expired, withdrawn;
        with `record_id`, the session or transfer an approval started); `who` is the moderator who decided, or
        the operator who asked."""
        self.store.add_event(kind, record_id, worker, who.user, who.uid, detail)

    def routed(self, who: Identity, worker: str, record_id: str | None, detail: str) -> None:
        """Work this master's operator asked of another master of the site (master_side.cluster.relay,
        .copy_relay): what, on which worker, routed to which master, and the outcome (`detail`, without content
        or paths); `record_id` is that master's session or transfer when it started one."""
        self.store.add_event("routed", record_id, worker, who.user, who.uid, detail)

    def record_read(self, kind: str, session_id: str, worker: str, who: Identity, detail: str) -> None:
        """Another master's read of this master's records for `who` (master_side.cluster.records: a transcript
        read through the router)."""
        self.store.add_event(kind, session_id, worker, who.user, who.uid, detail)

    def killed(self, session: MasterSession, who: Identity, detail: str = "") -> None:
        self.store.add_event("kill", session.id, session.worker, who.user, who.uid, detail)

    def released(self, hold: Hold, who: Identity) -> None:
        self.store.add_event("release", None, hold.worker, who.user, who.uid,
                         f"build {hold.builder} #{hold.build_number} (id {hold.build_id})")

    def hold_extended(self, hold: Hold, who: Identity, until: float) -> None:
        self.store.add_event("hold extended", None, hold.worker, who.user, who.uid,
                         f"build {hold.builder} #{hold.build_number} (id {hold.build_id}) held until "
                         f"{clock_time(until)}")

    @deferred
    async def begin(self, session: MasterSession) -> SessionRecorder | None:
        """Create the transcript and the index row. Raises RecordingError when fail-closed and either fails;
        returns the recorder (None when serving unrecorded in degraded mode)."""
        path = os.path.join(self.directory, transcript_name(session.worker, session.id, session.started))
        # orjson: JSON's escapes in C, byte for byte the standard library's (tests/test_transcript_bytes_path.py),
        # about half the master's CPU on a terminal's output that is not UTF-8.
        encoder = CastEncoder(self.redact, record_input=self.record_input, encode=orjson.dumps)
        recipients = self.seal_recipients
        index = IndexWriter(self.store)
        recorder = SessionRecorder(session.id, path, encoder, index, session.started,
                                   clock=self.reactor.seconds,
                                   seal=(lambda data: hidden_input.seal(data, recipients)) if recipients else None,
                                   bulk=not session.request.pty)
        recorder.run_blocking = self._in_thread
        # A bulk stream's piped input is written to its attachment off the reactor's thread (SessionRecorder):
        # with a real reactor, which can be called back from the writing thread.
        recorder.call_in_reactor = getattr(self.reactor, "callFromThread", None)
        header = header_for(session, self.master_name)

        def discard() -> None:
            if recorder.file is not None:
                recorder.file.abandon()
                recorder.file = None
                with contextlib.suppress(OSError):
                    os.unlink(path)

        who = session.identity
        if not await self.start_record("session", session.id, session.worker, who, lambda: recorder.create(header),
                                       lambda: session_row(session, self.master_name, path), discard):
            return None
        self.recordings[session.id] = Recording(recorder, index)
        return recorder

    @deferred
    async def start_record(self, what: str, record_id: str, worker: str, who: Identity, create: Callable[[], None],
                           row: Callable[[], Mapping[str, object]], discard: Callable[[], None]) -> bool:
        """The start of a record, a session's or a transfer's (`what`), before the worker is asked: `create()`
        (its transcript) in a thread, the transcripts directory made first (a slow disk must not stall the
        reactor); then the index row `row()`, the database connected first when it was away (at the master's
        start, say). True once both exist. Otherwise `discard()` removes what was created, the problem is logged
        and written as a "record-error" event, and RecordingError is raised (fail-closed), or False returned
        when serving unrecorded."""
        problem = None

        def make() -> None:
            transcript_dir(self.directory)
            create()

        try:
            await threads.deferToThread(make)
        except OSError as e:
            problem = f"cannot create the transcript: {e.strerror or e}"
        if problem is None:
            ok = await self._ensure_store()
            try:
                if not ok:
                    raise RuntimeError("the audit database is unreachable")
                await self.store.open_session(row())
            except Exception as e:
                problem = f"cannot write the audit index: {str(e).splitlines()[0] if str(e) else e!r}"
        if problem is None:
            return True
        discard()
        log.critical("slaveshell {what} {sid}: {problem}", what=what, sid=record_id, problem=visible(problem))
        self.not_recorded(record_id, worker, who, problem)
        if self.require_recording:
            raise RecordingError(f"{what} not started: it cannot be recorded ({problem})")
        return False

    def not_recorded(self, record_id: str, worker: str, who: Identity, problem: str) -> None:
        """A session's or a transfer's record could not be begun (its transcript or its row): a "record-error"
        event."""
        self.store.add_event("record-error", record_id, worker, who.user, who.uid, detail=problem)

    def opened(self, session: MasterSession) -> None:
        self.store.add_event("open", session.id, session.worker, session.identity.user, session.identity.uid,
                         detail=session.request.command or "login shell")
        if session.request.command:
            self.store.link_uploads(session.id, session.worker, session.request.command, session.started)

    def not_opened(self, session: MasterSession, reason: str) -> None:
        """The worker refused after recording began: the transcript gets a refusal marker and is closed, and
        its row is closed as refused (through the recording's index writer); the refusal is an event."""
        recording = self.recordings.pop(session.id, None)
        if recording is not None:
            recording.index.refuse(reason)
            # The session was never served: a transcript that fails to close now ends nothing but is logged.
            recording.recorder.on_error = lambda error: None
            recording.recorder.marker(f"refused: {reason}")
            recording.recorder.end(session)
        self.store.add_event("refused", session.id, session.worker, session.identity.user, session.identity.uid,
                         detail=reason)

    def ended(self, session: MasterSession) -> None:
        recording = self.recordings.pop(session.id, None)
        typed = recording.recorder.typed if recording is not None else None
        if typed is not None and typed.text():
            # What was typed or piped may name uploads too, some made while the session ran.
            command = f"{session.request.command or ''} {typed.text()}"
            self.store.link_uploads(session.id, session.worker, command, self.reactor.seconds())

    # -- transfers (`slaveshell cp`: master_side.copying.record) -------------------------------

    def transfer_opened(self, transfer_id: str, who: Identity, worker: str, description: str) -> None:
        """A transfer's record has begun (its row written by `start_record`, from `transfer_row`): its
        "transfer" event."""
        self.store.add_event("transfer", transfer_id, worker, who.user, who.uid, detail=description)

    def transfer_ended(self, transfer_id: str, who: Identity, worker: str, outcome: TransferOutcome) -> None:
        """A transfer's row closed with its `outcome`, and its "end" event."""
        self.store.update_session(transfer_id, state="ended" if outcome.ok else "failed",
                                  ended=utc(self.reactor.seconds()), end_reason=outcome.text,
                                  bytes_in=outcome.bytes_in, bytes_out=outcome.bytes_out,
                                  transcript_sha256=outcome.sha256, attachment_sha256=outcome.attachment_sha256,
                                  files=outcome.files)
        self.store.add_event("end", transfer_id, worker, who.user, who.uid, detail=outcome.text)

    # -- fleet runs (`slaveshell run`, `slaveshell facts --refresh`: master_side.fleet) ----------------

    @deferred
    async def run_started(self, row: Mapping[str, object], pending: list[Mapping[str, object]]) -> None:
        """A fleet run's row, the rows of its workers left pending, and its "run" event, before any of its sessions
        is asked for: raises RecordingError when the database cannot take it (a run is never served unrecorded:
        each of its sessions would be)."""
        if not await self._ensure_store():
            raise RecordingError("run not started: the audit database is unreachable")
        try:
            await self.store.open_run(row, pending)
        except Exception as e:
            raise RecordingError("run not started: cannot write the audit index: "
                                 f"{str(e).splitlines()[0] if str(e) else e!r}") from None
        self.store.add_event("run", None, None, str(row["operator"]), int(cast(int, row["uid"])),
                             detail=f"run {row['id']} on {len(str(row['targets']).split())} workers")

    def run_ended(self, run_id: str, who: Identity, values: Mapping[str, object],
                  workers: list[Mapping[str, object]]) -> None:
        """A fleet run's end: its row, a row per worker, and its "run-end" event."""
        self.store.end_run(run_id, {**values, "ended": utc(self.reactor.seconds())}, workers)
        self.store.add_event("run-end", None, None, who.user, who.uid, detail=f"run {run_id}: {values.get('summary')}")

    def run_cancelled(self, run_id: str, who: Identity, count: int) -> None:
        """What a fleet run still had pending was cancelled (`count` workers): a "run-cancel" event."""
        self.store.add_event("run-cancel", None, None, who.user, who.uid, detail=f"run {run_id}: {count} pending")

    def pending_changed(self, row_id: int, values: Mapping[str, object]) -> None:
        """A worker's pending part of a run ran, expired or was cancelled: its row's new values."""
        self.store.update_run_worker(row_id, {**values, "updated": utc(self.reactor.seconds())})

    def facts_taken(self, taken: Mapping[str, Mapping[str, str]], when: float, run_id: str | None) -> None:
        """Workers' facts, as their probes in run `run_id` took them: each worker's replace its earlier ones (one
        write for the whole run: a read after it waits for one transaction, not one per worker)."""
        self.store.store_facts(taken, when, run_id)

    # -- retention (master_side.audit.retention) -----------------------------------------------------

    def pruned(self, row: SessionRow, when: float, detail: str) -> None:
        """The transcript of `row`'s session was removed from disk at `when` (or left, as `detail` says): the
        row is marked pruned, and a "prune" event says what was done."""
        self.store.update_session(row["id"], pruned=utc(when))
        self.store.add_event("prune", row["id"], row["worker"], row["operator"], row["uid"], detail=detail, when=when)

    # -- reading -------------------------------------------------------------------------------

    def transcript_path(self, row: SessionRow) -> str | None:
        path = row.get("transcript")
        if not path:
            return None
        real = os.path.realpath(path)
        # Only files in our directory: a row edited by someone else must not become a way to read any file.
        if os.path.dirname(real) != os.path.realpath(self.directory):
            return None
        return real

    def read_chunk(self, path: str, offset: int, size: int) -> defer.Deferred[bytes]:
        # The self-contained transcript: attached bulk output expanded (master_side.audit.export).
        return self._read(lambda: exports.read(path, offset, size))

    def search(self, rows: list[SessionRow], text: str, limit: int) -> defer.Deferred[list[SearchHit]]:
        paths = [(row, self.transcript_path(row)) for row in rows]
        return self._read(lambda: transcript_search.search(paths, text, limit))


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
