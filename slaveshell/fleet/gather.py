"""A fleet run's result as the operator reads it: identical outputs gathered as ``clush -b`` / ``dshbak -c``
gather them (each distinct output once, headed by the workers that produced it in ClusterShell's compact
form), the workers that did not run listed by state, one summary line, the exit status, and the ``--json``
shape.

Everything a worker controls (its name, its output, a peer's reason) is shown through
`slaveshell.vocabulary.display.visible`, line by line: this is text after the sessions, not a terminal stream. Tabs are
expanded to spaces first (they move the cursor only). ``--json`` is exact instead (JSON escapes every
control character); its output is UTF-8 with undecodable bytes replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from slaveshell.fleet.nodeset import count, fold, natural_key
from slaveshell.fleet.outcome import Outcome, State
from slaveshell.vocabulary.display import visible

SEPARATOR = "-" * 15  # clush's
SUMMARY_NAMES = 8  # names shown per state in the summary line, then "..."
NOT_RAN = (State.NOT_STARTED, State.PENDING, State.NOT_CONNECTED, State.NOT_OPTED_IN, State.REFUSED, State.MISSING_FACT,
           State.ERROR)


def shown_lines(data: bytes) -> list[str]:
    """`data` as lines safe to print: decoded as UTF-8 (bytes that are not are escaped), tabs expanded, one
    "\\r" at a line's end dropped, everything else a terminal could act on escaped."""
    text = data.decode("utf-8", "surrogateescape")
    if text.endswith("\n"):
        text = text[:-1]
    return [visible(line.removesuffix("\r").expandtabs()) for line in text.split("\n")]


def groups(outcomes: Iterable[Outcome]) -> list[tuple[list[str], Outcome]]:
    """The workers that ran, gathered by identical output (all of it, compared by digest, even past what is
    kept): each group's workers and one of its outcomes, largest group first, then by first worker."""
    by_output: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.output is not None:
            by_output.setdefault(outcome.output.digest, []).append(outcome)
    gathered = [(sorted((o.worker for o in same), key=natural_key), same[0]) for same in by_output.values()]
    return sorted(gathered, key=lambda g: (-len(g[0]), natural_key(g[0][0])))


def render(outcomes: Sequence[Outcome]) -> str:
    """The gathered outputs, each headed as clush -b heads them, then non-zero exits and the workers that did
    not run, by state; ends with the summary line."""
    lines: list[str] = []
    for workers, outcome in groups(outcomes):
        output = outcome.output
        assert output is not None
        lines += [SEPARATOR, visible(count(workers)), SEPARATOR]
        lines += shown_lines(bytes(output.kept)) if output.size else ["[no output]"]
        if output.cut:
            lines.append(f"[output cut: {len(output.kept)} of {output.size} bytes shown; the transcripts hold all]")
    for status, workers in _by_exit(outcomes):
        lines.append(f"exit status {status}: {visible(fold(workers))}")
    for state in (State.TIMED_OUT, State.INTERRUPTED, *NOT_RAN):
        names = [o.worker for o in outcomes if o.state is state]
        if names:
            lines.append(f"{state.value}: {visible(fold(names))}")
            reasons = sorted({o.reason for o in outcomes if o.state is state and o.reason})
            lines += [f"  {visible(r)}" for r in reasons[:SUMMARY_NAMES]]
    lines.append(summary(outcomes))
    return "\n".join(lines) + "\n"


def ended_line(outcome: Outcome) -> str:
    """One plain line as a worker ends (for a pipe, where there is no live table): its name, state, exit
    status and duration when it ran, and its output's last line or the reason."""
    parts = [f"{visible(outcome.worker)}: {outcome.state.value}"]
    if outcome.exit_status is not None and outcome.state is not State.OK:
        parts.append(f"exit status {outcome.exit_status}")
    if outcome.duration is not None:
        parts.append(f"{outcome.duration:.1f} s")
    text = ", ".join(parts)
    last = outcome.output.last_line if outcome.output is not None else b""
    if last:
        text += ": " + shown_lines(last)[0]
    elif outcome.reason:
        text += ": " + visible(outcome.reason)
    return text


def _by_exit(outcomes: Iterable[Outcome]) -> list[tuple[int, list[str]]]:
    statuses: dict[int, list[str]] = {}
    for o in outcomes:
        if o.state is State.FAILED and o.exit_status is not None:
            statuses.setdefault(o.exit_status, []).append(o.worker)
    return sorted(statuses.items())


def _names(names: list[str]) -> str:
    shown = ", ".join(visible(n) for n in names[:SUMMARY_NAMES])
    return shown + (", ..." if len(names) > SUMMARY_NAMES else "")


def summary(outcomes: Sequence[Outcome]) -> str:
    """One line: ``38 ok, 2 failed (w7, w9), 3 not connected, 1 not opted in``. Workers that ran and did not
    return 0 are named; the other states are counted (`render` lists them)."""
    parts = []
    for state in State:
        names = sorted((o.worker for o in outcomes if o.state is state), key=natural_key)
        if not names:
            continue
        named = state in (State.FAILED, State.TIMED_OUT, State.INTERRUPTED, State.ERROR)
        parts.append(f"{len(names)} {state.value}" + (f" ({_names(names)})" if named else ""))
    return ", ".join(parts) or "no workers"


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """0 only when there were targets and every one ran and returned 0; 1 otherwise (2, bad usage, is the
    command line's: `slaveshell.fleet.targets.TargetError`, `slaveshell.fleet.batch.BatchError`)."""
    return 0 if outcomes and all(o.state is State.OK for o in outcomes) else 1


def as_json(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The ``--json`` answer: per worker its state, exit status, duration (seconds), output (kept part, UTF-8
    with bad bytes replaced), whether it was cut, its size in bytes, session id and reason; the summary line
    and the exit status. Keys are fixed; values a worker controls are exact (json escapes them)."""
    workers = []
    for o in sorted(outcomes, key=lambda o: natural_key(o.worker)):
        output = o.output
        workers.append({
            "worker": o.worker,
            "state": o.state.value,
            "exit_status": o.exit_status,
            "duration": None if o.duration is None else round(o.duration, 3),
            "output": None if output is None else bytes(output.kept).decode("utf-8", "replace"),
            "output_cut": bool(output and output.cut),
            "output_bytes": 0 if output is None else output.size,
            "session": o.session,
            "reason": o.reason or None,
        })
    return {"workers": workers, "summary": summary(outcomes), "exit_status": exit_status(outcomes)}
