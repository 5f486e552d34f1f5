"""Who may do what on which workers, without I/O.

The identity comes from the kernel (SO_PEERCRED on the master's UNIX socket), never from what a client claims.
Rules are checked in order; the first rule that matches the operator and the worker decides. No match: denied.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RIGHTS = frozenset({"shell", "watch", "join", "kill", "replay"})


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    pid: int
    user: str
    groups: frozenset[str]

    @classmethod
    def from_credentials(cls, pid: int, uid: int, gid: int) -> Identity:
        try:
            pw = pwd.getpwuid(uid)
            user = pw.pw_name
            gids = set(os.getgrouplist(user, gid))
        except KeyError:
            user = str(uid)
            gids = {gid}
        groups = set()
        for g in gids:
            try:
                groups.add(grp.getgrgid(g).gr_name)
            except KeyError:
                groups.add(str(g))
        return cls(uid=uid, gid=gid, pid=pid, user=user, groups=frozenset(groups))

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})"


@dataclass(frozen=True)
class Rule:
    """Grants `rights` on workers matching any of `workers` (glob patterns) to the listed users and groups.
    Users and groups may be given by name or number; `"*"` in users matches everybody."""

    users: tuple[str | int, ...] = ()
    groups: tuple[str | int, ...] = ()
    workers: tuple[str, ...] = ("*",)
    rights: tuple[str, ...] = tuple(sorted(RIGHTS))

    def __post_init__(self) -> None:
        for name in ("users", "groups", "workers", "rights"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        unknown = set(self.rights) - RIGHTS
        if unknown:
            raise ValueError(f"unknown rights {sorted(unknown)}; known: {sorted(RIGHTS)}")
        if not self.users and not self.groups:
            raise ValueError("a rule needs users or groups")

    def matches_identity(self, who: Identity) -> bool:
        for user in self.users:
            if user == "*" or user == who.user or user == who.uid or str(user) == str(who.uid):
                return True
        for group in self.groups:
            if group in who.groups or (isinstance(group, int) and group == who.gid):
                return True
        return False

    def matches_worker(self, worker: str) -> bool:
        return any(fnmatch.fnmatchcase(worker, pattern) for pattern in self.workers)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Policy:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: Sequence[Rule] = tuple(rules)

    @classmethod
    def default(cls, master_uid: int | None = None) -> Policy:
        """Root and the user the master runs as: the people who can already read the master's files."""
        uid = os.getuid() if master_uid is None else master_uid
        return cls([Rule(users=tuple(sorted({0, uid})))])

    def check(self, who: Identity, right: str, worker: str) -> Decision:
        if right not in RIGHTS:
            raise ValueError(f"unknown right {right!r}")
        for rule in self.rules:
            if rule.matches_identity(who) and rule.matches_worker(worker):
                if right in rule.rights:
                    return Decision(True, "allowed")
                return Decision(False, f"{who} may not {right} on worker {worker}")
        return Decision(False, f"{who} may not {right} on worker {worker}: no policy rule allows it")
