"""The operators' calls about held builds: list them with their deadlines (`slaveshell holds`), and extend one
(`slaveshell hold extend BUILD DURATION`). An extension needs the 'shell' right on the build's worker
(slaveshell.policy's Action.EXTEND), never goes past the hold's max_hold (master_side.holds.deadline), and is an
audit event (who, which build, the new deadline)."""

from __future__ import annotations

from collections.abc import Callable

from master_side.audit.trail import AuditTrail
from master_side.holds.deadline import ExtendError, clock_time, duration
from master_side.holds.step import Holds
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.policy import Action, Identity, Policy

# The longest extension asked for at once (max_hold bounds it anyway); longer is refused as a bad request.
MAX_EXTEND = 7 * 24 * 3600.0


def list_holds(holds: Holds, policy: Policy, who: Identity, now: float) -> list[dict[str, object]]:
    """The held builds on workers where `who` may step in or watch, oldest first, with their deadlines."""
    rows: list[dict[str, object]] = []
    for hold in sorted(holds.held.values(), key=lambda h: h.build_id):
        if not (policy.may(who, Action.SHELL, hold.worker).allowed
                or policy.may(who, Action.WATCH, hold.worker).allowed):
            continue
        row: dict[str, object] = {"build_id": hold.build_id, "builder": hold.builder,
                                  "build_number": hold.build_number, "worker": hold.worker}
        if hold.times is not None:
            row.update(hold.times.to_row(now))
        rows.append(row)
    return rows


def extend_hold(holds: Holds, policy: Policy, trail: AuditTrail | None, who: Identity, build_id: object,
                seconds: object, now: float,
                refuse: Callable[[Identity, str, ErrorKind, str], OperatorError]) -> dict[str, object]:
    """Extend build `build_id`'s hold to now + `seconds` (at most its max_hold). `refuse` makes the refusal of an
    operator without the right (and audits it, bounded: OperatorAPI.refuse). Raises OperatorError."""
    if not isinstance(build_id, int) or isinstance(build_id, bool):
        raise OperatorError(ErrorKind.BAD_REQUEST, "extend needs a build id")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= MAX_EXTEND:
        raise OperatorError(ErrorKind.BAD_REQUEST, f"extend needs a duration of 1 s to {duration(MAX_EXTEND)}")
    hold = holds.get(build_id)
    if hold is None or hold.times is None:
        raise OperatorError(ErrorKind.NOT_FOUND, f"build {build_id} is not held")
    if not policy.may(who, Action.EXTEND, hold.worker).allowed:
        raise refuse(who, hold.worker, ErrorKind.DENIED,
                     f"permission denied: {who} may not extend holds on worker {hold.worker} (it needs 'shell')")
    try:
        until = hold.times.extend(now, float(seconds), who.user)
    except ExtendError as e:
        raise OperatorError(ErrorKind.LIMIT, f"build {build_id}: {e}") from None
    if trail is not None:
        trail.hold_extended(hold, who, until)
    capped = until < now + float(seconds)
    return {"text": f"build {hold.builder} #{hold.build_number} (id {build_id}) is held until {clock_time(until)}"
                    + (" (its max_hold)" if capped else ""), "deadline": until}
