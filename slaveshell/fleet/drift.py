"""Facts across the fleet, grouped by value so that drift shows at a glance::

    gcc     12.2.0  41 workers  |  11.4.0  9 workers: w3 w8 ...  |  (missing)  2 workers: w1 w2

with each report's age: facts older than the master's limit are flagged (the run path refreshes them first
when asked). Values and names are worker-controlled: shown through `slaveshell.vocabulary.display`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slaveshell.fleet.nodeset import natural_key
from slaveshell.fleet.probe import BUILTIN
from slaveshell.vocabulary.display import visible

MISSING = "(missing)"
NAMES_SHOWN = 8  # names shown per group, then "..."
GROUPS_SHOWN = 6  # values shown per fact, then how many more
STALE_AFTER = 24 * 3600.0
_SIZES = {"memory", "disk_free"}


@dataclass(frozen=True)
class Report:
    """A worker's last facts and when they were taken (seconds since the epoch)."""

    worker: str
    values: Mapping[str, str]
    taken: float


def age(seconds: float) -> str:
    """A report's age for people: ``40 s``, ``5 min``, ``3 h``, ``2 days``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h"
    days = seconds // 86400
    return f"{days:.0f} day" + ("s" if days != 1 else "")


def aged(ages: Mapping[str, float]) -> str:
    """Workers with the age of their facts, oldest first: ``w3 (3 days), w9 (2 h)`` (``never`` for facts
    never taken), at most NAMES_SHOWN of them. For the reports `render` flags, and for the workers a run's
    ``--where`` decided on by old facts (`slaveshell.fleet.targets.Resolution.stale`)."""
    oldest = sorted(ages.items(), key=lambda item: (-item[1], natural_key(item[0])))
    shown = ", ".join(f"{visible(name)} ({'never' if seconds == float('inf') else age(seconds)})"
                      for name, seconds in oldest[:NAMES_SHOWN])
    return shown + (", ..." if len(oldest) > NAMES_SHOWN else "")


def shown_value(fact: str, value: str) -> str:
    """A value as grouped and shown: sizes in whole GiB (machines of one kind differ by a few pages), the rest
    as reported."""
    if fact in _SIZES and value.isascii() and value.isdigit():
        return f"{round(int(value) / 2**30)} GiB"
    return value


def fact_names(reports: Iterable[Report], probes: Iterable[str] = ()) -> list[str]:
    """The facts to show: the built-in ones, then the configured probes and any other reported, by name."""
    extra = set(probes)
    for report in reports:
        extra.update(report.values)
    return list(BUILTIN) + sorted(extra - set(BUILTIN))


def groups(fact: str, reports: Sequence[Report]) -> list[tuple[str, list[str]]]:
    """`fact`'s values with the workers reporting each, largest group first; workers without it last, as
    `MISSING`."""
    by_value: dict[str, list[str]] = {}
    missing: list[str] = []
    for report in sorted(reports, key=lambda r: natural_key(r.worker)):
        value = report.values.get(fact)
        if value is None:
            missing.append(report.worker)
        else:
            by_value.setdefault(shown_value(fact, value), []).append(report.worker)
    ordered = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
    return ordered + ([(MISSING, missing)] if missing else [])


def _workers(names: list[str], named: bool) -> str:
    counted = f"{len(names)} worker" + ("s" if len(names) != 1 else "")
    if not named:
        return counted
    shown = " ".join(visible(n) for n in names[:NAMES_SHOWN])
    return f"{counted}: {shown}" + (" ..." if len(names) > NAMES_SHOWN else "")


def line(fact: str, reports: Sequence[Report]) -> str:
    """One fact's groups on one line; the largest group counted, the others with their workers named."""
    found = groups(fact, reports)
    parts = []
    for i, (value, names) in enumerate(found[:GROUPS_SHOWN]):
        shown = value if value == MISSING else visible(value)
        parts.append(f"{shown}  {_workers(names, named=i > 0 or value == MISSING)}")
    if len(found) > GROUPS_SHOWN:
        parts.append(f"{len(found) - GROUPS_SHOWN} more values")
    return "  |  ".join(parts)


def as_json(reports: Sequence[Report], now: float, stale_after: float = STALE_AFTER) -> list[dict[str, Any]]:
    """The ``--json`` answer of the facts: per worker its facts (exact: json escapes them), when they were
    taken (seconds since the epoch), their age in seconds and whether they are older than `stale_after`."""
    return [{"worker": r.worker, "facts": dict(sorted(r.values.items())), "taken": r.taken,
             "age": round(max(0.0, now - r.taken), 3), "stale": now - r.taken > stale_after}
            for r in sorted(reports, key=lambda r: natural_key(r.worker))]


def render(reports: Sequence[Report], probes: Iterable[str] = (), now: float = 0.0,
           stale_after: float = STALE_AFTER, without: Iterable[str] = ()) -> str:
    """The fleet's facts: one line per fact (names aligned), then the reports older than `stale_after` with
    their age, and the workers (`without`) that never reported facts."""
    names = fact_names(reports, probes)
    column = max(len(visible(n)) for n in names) + 2  # fact names are ASCII (FACT_NAME), so are escapes
    lines = [visible(name).ljust(column) + line(name, reports) for name in names] if reports else []
    stale = {r.worker: now - r.taken for r in reports if now - r.taken > stale_after}
    if stale:
        lines.append(f"older than {age(stale_after)}: {aged(stale)}")
    never = sorted(without, key=natural_key)
    if never:
        lines.append("no facts yet: " + " ".join(visible(n) for n in never[:NAMES_SHOWN]) +
                     (" ..." if len(never) > NAMES_SHOWN else ""))
    return "\n".join(lines) + "\n" if lines else "no facts yet\n"
