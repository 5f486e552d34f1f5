"""A fleet run's messages between the master and the operator's client, as plain JSON values: what the operator
asks (`RunAsk` fields), a worker's progress and its outcome. Encoded on one side and decoded, every value
checked, on the other (`ProtocolError` for anything else); output travels as base64 of the bytes the master
kept (slaveshell.fleet.outcome.OUTPUT_LIMIT at most)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from slaveshell.fleet.outcome import LAST_LINE_LIMIT, OUTPUT_LIMIT, Outcome, Output, State
from slaveshell.vocabulary.checks import ProtocolError, check_int, check_str, check_worker_name

_DIGEST = re.compile(r"[0-9a-f]{64}")
_STATES = {s.value: s for s in State}
PHASES = ("starting", "running", "ending", "done")


def outcome_to_wire(o: Outcome) -> dict[str, Any]:
    out = o.output
    return {
        "worker": o.worker, "state": o.state.value, "exit_status": o.exit_status,
        "duration": None if o.duration is None else round(o.duration, 3), "session": o.session,
        "reason": o.reason,
        "output": None if out is None else base64.b64encode(bytes(out.kept)).decode("ascii"),
        "output_bytes": 0 if out is None else out.size,
        "output_sha256": None if out is None else out.digest,
        "last_line": None if out is None else base64.b64encode(out.last_line).decode("ascii"),
    }


def _b64(value: object, what: str, limit: int) -> bytes:
    text = check_str(value, what, (limit + 2) // 3 * 4)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what} is not base64") from None


def outcome_from_wire(fields: object) -> Outcome:
    """An outcome as the master sent it, every value checked."""
    if not isinstance(fields, dict):
        raise ProtocolError("an outcome is a mapping")
    worker = check_worker_name(fields.get("worker"))
    state = _STATES.get(fields.get("state"))  # type: ignore[arg-type]
    if state is None:
        raise ProtocolError("an outcome's state is unknown")
    raw_status = fields.get("exit_status")
    exit_status = None if raw_status is None else check_int(raw_status, "exit status", -(2**31), 2**31 - 1)
    duration = fields.get("duration")
    if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool)
                                 or not 0 <= duration < 1e9):
        raise ProtocolError("an outcome's duration is a number of seconds")
    session = fields.get("session")
    if session is not None:
        check_str(session, "session", 64)
    reason = check_str(fields.get("reason", ""), "reason", 4096)
    output = None
    if fields.get("output") is not None:
        kept = _b64(fields.get("output"), "output", OUTPUT_LIMIT)
        size = check_int(fields.get("output_bytes", 0), "output size", 0, 2**62)
        digest = check_str(fields.get("output_sha256"), "output digest", 64)
        if not _DIGEST.fullmatch(digest):
            raise ProtocolError("an output digest is 64 hexadecimal digits")
        last = _b64(fields.get("last_line") or "", "last line", LAST_LINE_LIMIT)
        output = Output.restored(kept, size, digest, last)
    return Outcome(worker, state, exit_status, None if duration is None else float(duration), output, session,
                   reason)


def progress_from_wire(fields: object) -> tuple[str, str, str | None, float, bytes]:
    """A worker's progress: (worker, phase, session, seconds since it started, last line of output)."""
    if not isinstance(fields, dict):
        raise ProtocolError("a progress message is a mapping")
    worker = check_worker_name(fields.get("worker"))
    phase = fields.get("phase")
    if phase not in PHASES:
        raise ProtocolError("a progress message's phase is unknown")
    session = fields.get("session")
    if session is not None:
        check_str(session, "session", 64)
    elapsed = fields.get("elapsed", 0)
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not 0 <= elapsed < 1e9:
        raise ProtocolError("elapsed is a number of seconds")
    last = _b64(fields.get("last_line") or "", "last line", LAST_LINE_LIMIT)
    return worker, str(phase), session, float(elapsed), last
