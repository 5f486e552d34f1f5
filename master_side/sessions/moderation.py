"""A four-eyes session (`Rule(moderated_by=...)`): its input is held until a moderator watches.

A moderator is a watcher the operator API admitted as one (master_side.operators.api: another person than the
session's operator, in one of the rule's groups or web roles, with 'watch' on the worker:
`Policy.may_moderate`). Input from a viewer reaches the worker only while a moderator who is not that viewer's
person watches (`passes`): the operator's, and a joiner's. Held input (keystrokes, EOF, signals) is dropped:
never sent, never recorded (it may be a password typed blind); its sender gets its credit back at once, so its
client keeps going, and one notice per held span. Output flows and is recorded as ever.

`Moderation` keeps who moderates since when and what was dropped, and says what happened (`Change`s) for the
session to tell its viewers, its transcript and the audit index; it has no I/O of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from master_side.sessions.model import Viewer
from master_side.sessions.notices import NoticeBudget
from slaveshell.vocabulary.policy import moderators_text, same_person

# The audit index's event kinds (docs/audit-schema.md).
HELD = "input-held"  # the session's input is held: at the open, and when the last moderator left
MODERATE_START = "moderate-start"  # a moderator began watching (the event's operator)
MODERATE_END = "moderate-end"  # a moderator's span ended (detail: how long, and why)
DROPPED = "held-input"  # what a viewer sent while its input was held, dropped (detail: bytes and messages)


@dataclass
class Dropped:
    """What one sender's held input came to in the current held span."""

    nbytes: int = 0
    messages: int = 0
    eofs: int = 0
    signals: int = 0

    def text(self) -> str:
        parts = [f"{self.nbytes} bytes in {self.messages} messages"]
        if self.eofs:
            parts.append(f"{self.eofs} EOF")
        if self.signals:
            parts.append(f"{self.signals} signals")
        return ", ".join(parts) + " dropped while input was held"


@dataclass
class Moderation:
    """Who may moderate (`moderated_by`, for the texts), who moderates now and since when, and the input dropped
    since the input was last held, by sender."""

    moderated_by: tuple[str | int, ...]
    clock: Callable[[], float]
    # Told that the session waits for a moderator: why ("opened", "the last moderator (bob) left"): the reporters'
    # notice (master_side.holds.moderator_notices, through the operator API).
    wanted: Callable[[str], None] = lambda why: None
    moderators: dict[Viewer, float] = field(default_factory=dict)
    dropped: dict[Viewer, Dropped] = field(default_factory=dict)
    told: set[Viewer] = field(default_factory=set)
    # Notices of input released or held again, a few a minute (MasterSession._moderation_notice).
    notices: NoticeBudget = field(init=False)

    def __post_init__(self) -> None:
        self.notices = NoticeBudget(self.clock)

    @property
    def groups(self) -> str:
        return moderators_text(self.moderated_by)

    @property
    def held(self) -> bool:
        """Whether nobody moderates now (everybody's input is held)."""
        return not self.moderators

    def held_notice(self) -> str:
        return f"input is held until a moderator watches (moderated_by: {self.groups})"

    def passes(self, sender: Viewer) -> bool:
        """Whether `sender`'s input may reach the worker: a moderator other than its person watches."""
        return any(not same_person(m.identity, sender.identity) for m in self.moderators)

    def drop(self, sender: Viewer, nbytes: int = 0, eof: bool = False, signal: bool = False) -> bool:
        """Count what `sender` sent while held; True when it should be told (once per held span)."""
        counts = self.dropped.setdefault(sender, Dropped())
        counts.nbytes += nbytes
        counts.messages += 1 if nbytes else 0
        counts.eofs += 1 if eof else 0
        counts.signals += 1 if signal else 0
        if sender in self.told:
            return False
        self.told.add(sender)
        return True

    def take_dropped(self) -> list[tuple[Viewer, Dropped]]:
        """What was dropped since the input was held, by sender; forgotten (and the senders to be told again)."""
        dropped, self.dropped = list(self.dropped.items()), {}
        self.told.clear()
        return dropped

    def start(self, moderator: Viewer) -> bool:
        """`moderator` watches from now; True when the input was held until now."""
        was_held = self.held
        self.moderators[moderator] = self.clock()
        return was_held

    def stop(self, moderator: Viewer) -> float | None:
        """`moderator` no longer watches: how long it moderated (None: it was not a moderator)."""
        since = self.moderators.pop(moderator, None)
        return None if since is None else max(0.0, self.clock() - since)
