"""Which workers a fleet run reaches: ``--workers GLOB`` (repeatable, any of them) and ``--where FACT=VALUE``
/ ``FACT!=VALUE`` (repeatable, all of them; VALUE may be a glob, as Salt matches grains), resolved against
the fleet as the master knows it. Every worker the expression names is accounted for: the resolved targets,
and the ones listed as not connected, not opted in, refused or missing a fact; none is silently skipped.
Bad expressions are one clear line (`TargetError`), before anything starts."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from slaveshell.fleet.nodeset import natural_key
from slaveshell.fleet.outcome import Outcome, State
from slaveshell.vocabulary.display import visible

FACT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_EXPRESSION = 1024  # characters of one --workers or --where


class TargetError(ValueError):
    """An expression that cannot be used (malformed, an unknown fact) or that names no worker: one line,
    untrusted parts escaped, for the operator (the command exits 2 and nothing starts)."""


@dataclass(frozen=True)
class Where:
    """One ``--where``: a fact, whether it must match or must not, and the value (a glob)."""

    fact: str
    value: str
    negated: bool = False

    def matches(self, value: str) -> bool:
        return fnmatch.fnmatchcase(value, self.value) != self.negated

    def __str__(self) -> str:
        return f"{self.fact}{'!=' if self.negated else '='}{self.value}"


def parse_glob(text: str) -> str:
    """A ``--workers`` pattern (fnmatch, as the policy's worker patterns)."""
    if not text or len(text) > MAX_EXPRESSION:
        raise TargetError(f"--workers needs a pattern of 1 to {MAX_EXPRESSION} characters")
    if not text.isprintable():
        raise TargetError(f"--workers {visible(text)!s}: the pattern has control characters")
    return text


def parse_where(text: str) -> Where:
    """``FACT=VALUE`` or ``FACT!=VALUE``; FACT a fact's name, VALUE a non-empty glob."""
    if len(text) > MAX_EXPRESSION:
        raise TargetError(f"--where is longer than {MAX_EXPRESSION} characters")
    fact, sep, value = text.partition("=")
    negated = fact.endswith("!")
    if negated:
        fact = fact[:-1]
    if not sep:
        raise TargetError(f"--where {visible(text)}: expected FACT=VALUE or FACT!=VALUE")
    if not FACT_NAME.fullmatch(fact):
        raise TargetError(f"--where {visible(text)}: {visible(fact) or 'the fact'} is not a fact's name "
                          "(a letter or _, then letters, digits, _ . -)")
    if not value:
        raise TargetError(f"--where {visible(text)}: the value is empty (use '*' for any value)")
    if value.startswith("="):
        raise TargetError(f"--where {visible(text)}: expected FACT=VALUE or FACT!=VALUE, not ==")
    if not value.isprintable():
        raise TargetError(f"--where {visible(text)}: the value has control characters")
    return Where(fact, value, negated)


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: worker patterns (none: every worker) and fact conditions."""

    workers: tuple[str, ...] = ()
    where: tuple[Where, ...] = ()

    @classmethod
    def parse(cls, workers: Iterable[str] = (), where: Iterable[str] = ()) -> Selection:
        return cls(tuple(parse_glob(w) for w in workers), tuple(parse_where(w) for w in where))

    def named(self, worker: str) -> bool:
        return not self.workers or any(fnmatch.fnmatchcase(worker, p) for p in self.workers)

    def __str__(self) -> str:
        parts = [f"--workers {p}" for p in self.workers] + [f"--where {w}" for w in self.where]
        return " ".join(parts) or "every worker"


@dataclass(frozen=True)
class Worker:
    """A worker as the master knows it: whether it is connected, whether its owner opted in to shells,
    whether the operator may run on it (the policy's `run` right and the owner's allowed_users, with the
    reason when not), its last facts (None when it never reported any) and when they were taken (seconds
    since the epoch)."""

    name: str
    connected: bool
    opted_in: bool = True
    allowed: bool = True
    refusal: str = ""
    facts: Mapping[str, str] | None = None
    facts_taken: float | None = None


@dataclass
class Resolution:
    """The targets (names, in order), every other worker the expression named, with its state and why, and
    the workers a --where chose or left out by facts older than the caller's limit, with their age in seconds
    (to refresh first, or to flag)."""

    targets: list[str] = field(default_factory=list)
    listed: dict[str, tuple[State, str]] = field(default_factory=dict)
    stale: dict[str, float] = field(default_factory=dict)

    def of(self, state: State) -> list[str]:
        return [name for name, (s, _) in self.listed.items() if s is state]

    def outcomes(self) -> list[Outcome]:
        """The listed workers as a run's outcomes (they did not run), to report with the targets'."""
        return [Outcome(name, state, reason=reason) for name, (state, reason) in self.listed.items()]


def known_facts(fleet: Iterable[Worker], names: Iterable[str] = ()) -> set[str]:
    """The facts a --where may name: `names` (the probe's and the configured ones) and any a worker reported."""
    known = set(names)
    for worker in fleet:
        known.update(worker.facts or ())
    return known


def resolve(selection: Selection, fleet: Sequence[Worker], fact_names: Iterable[str] = (), now: float = 0.0,
            stale_after: float | None = None) -> Resolution:
    """`selection` against `fleet`. A worker the patterns name is left out only when its facts do not match;
    one that lacks a fact a --where names is listed as missing it (its value is unknown), then the others as
    not connected, not opted in or refused, in that order; the rest are the targets. Raises `TargetError` for
    a fact no worker has and no probe gives, and when the selection names no worker. With `stale_after`,
    the workers a --where chose or left out by facts taken more than that many seconds before `now` are in
    `stale`."""
    known = known_facts(fleet, fact_names)
    for where in selection.where:
        if where.fact not in known:
            shown = ", ".join(sorted(known)) or "none yet (run slaveshell facts --refresh)"
            raise TargetError(f"--where {visible(where)}: unknown fact {where.fact}; known facts: {visible(shown)}")
    result = Resolution()
    for worker in sorted(fleet, key=lambda w: natural_key(w.name)):
        if not selection.named(worker.name):
            continue
        facts = worker.facts or {}
        missing = [w.fact for w in selection.where if w.fact not in facts]
        if missing:
            result.listed[worker.name] = (State.MISSING_FACT, "no " + ", ".join(sorted(set(missing))))
            continue
        taken = worker.facts_taken
        if selection.where and stale_after is not None and (taken is None or now - taken > stale_after):
            result.stale[worker.name] = now - taken if taken is not None else float("inf")
        if not all(w.matches(facts[w.fact]) for w in selection.where):
            continue
        if not worker.connected:
            result.listed[worker.name] = (State.NOT_CONNECTED, "")
        elif not worker.opted_in:
            result.listed[worker.name] = (State.NOT_OPTED_IN, "")
        elif not worker.allowed:
            result.listed[worker.name] = (State.REFUSED, worker.refusal)
        else:
            result.targets.append(worker.name)
    if not result.targets and not result.listed:
        if not selection.workers and not selection.where:
            raise TargetError("the master has no workers")
        raise TargetError(f"no worker matches {visible(selection)}")
    return result
