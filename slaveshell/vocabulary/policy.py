"""Who may do what on which workers, without I/O.

The identity comes from the kernel (SO_PEERCRED on the master's UNIX socket), never from what a client claims.
Rules are checked in order; the first rule that matches the operator and the worker decides. No match: denied.
"""

from __future__ import annotations

import enum
import fnmatch
import grp
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

RIGHTS = frozenset({"shell", "watch", "join", "kill", "replay", "copy", "run"})

# Rights that another right grants unless the rule withholds them (`Rule.withhold`): 'run', one
# non-interactive session per worker of a fleet run, is less than 'shell'.
IMPLIED = {"run": "shell"}


class Action(enum.Enum):
    """What an operator asks to do, and the right each needs (`Policy.may`)."""

    SHELL = "shell"  # open a session
    WATCH = "watch"  # watch a session (its own operator always may)
    JOIN = "join"  # type into someone else's session, or resume someone else's detached session
    RESUME = "resume"  # resume a detached session: its own operator with 'shell', anybody else with 'join'
    KILL = "kill"  # end a session (its own operator always may)
    RELEASE = "release"  # release a held build: 'shell' on its worker
    EXTEND = "extend"  # extend a held build's deadline: 'shell' on its worker
    REPLAY = "replay"  # read a session's record and transcript
    COPY = "copy"  # copy files to or from a worker (`slaveshell cp`)
    RUN = "run"  # run a command on a worker as part of a fleet run (what 'shell' implies unless withheld)


class Operator(Protocol):
    """Who asks, as far as the policy looks: a name, a uid and groups. `Identity` (a local user from the
    kernel's credentials) is one; a door with other users (e.g. Buildbot web roles mapped to groups) brings
    its own."""

    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def groups(self) -> frozenset[str]: ...


class SessionView(Protocol):
    """What the quotas count of a live session: its worker and its operator."""

    @property
    def worker(self) -> str: ...
    @property
    def identity(self) -> Operator: ...


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

    @property
    def key(self) -> tuple[str, object]:
        """What tells two operators apart (sessions of one's own, quotas): the uid for a local user."""
        return ("uid", self.uid)

    def __str__(self) -> str:
        return f"{self.user} (uid {self.uid})"


# A web user's name and roles as the policy sees them: `web:<name>` and `web:<role>`. Local user and group
# names cannot contain ':' (it separates the fields of passwd(5) and group(5)), so these never collide.
WEB_PREFIX = "web:"


@dataclass(frozen=True)
class WebIdentity(Identity):
    """A Buildbot web user (from the web UI's session cookie, master_side.www): `user` is ``web:<name>``,
    `groups` are ``web:<role>`` for each of its Buildbot roles; uid, gid and pid are -1 (no local user).
    Policy rules name them as ``Rule(users=["web:alice"], groups=["web:admins"])``; numeric uids and gids in
    rules never match them."""

    @classmethod
    def from_web(cls, name: str, roles: Iterable[str]) -> WebIdentity:
        return cls(uid=-1, gid=-1, pid=-1, user=WEB_PREFIX + name,
                   groups=frozenset(WEB_PREFIX + r for r in roles))

    @property
    def key(self) -> tuple[str, object]:
        return ("web", self.user)

    def __str__(self) -> str:
        return f"{self.user} (web user)"


# An operator of another master of a multi-master site, as that master vouches for them (master_side.cluster):
# `cluster:<master>/<name>`, where <master> is the name the site's router authenticated that master as.
CLUSTER_PREFIX = "cluster:"


@dataclass(frozen=True)
class ClusterIdentity(Identity):
    """An operator of another master of the site, for a session routed here (master_side.cluster.serve): `user` is
    ``cluster:<master>/<name>``, `groups` ``cluster:<master>/<group>`` for each group that master gave, and
    ``cluster:<master>`` itself (any operator it vouches for). <master> is the router's authid of the calling
    master, never a name it claims; uid, gid and pid are -1 (no local user here), so numeric uids and gids in
    rules never match. Policy rules name them as ``Rule(users=["cluster:A/alice"], groups=["cluster:A/ops"])``."""

    @classmethod
    def vouched(cls, master: str, name: str, groups: Iterable[str]) -> ClusterIdentity:
        base = f"{CLUSTER_PREFIX}{master}"
        return cls(uid=-1, gid=-1, pid=-1, user=f"{base}/{name}",
                   groups=frozenset({base, *(f"{base}/{g}" for g in groups)}))

    @property
    def key(self) -> tuple[str, object]:
        return ("cluster", self.user)

    def __str__(self) -> str:
        return f"{self.user} (vouched for by master {vouching_master(self)})"


def vouching_master(who: Operator) -> str | None:
    """The master of the site that vouches for `who` (a `ClusterIdentity`'s router authid), None for an operator
    of this master."""
    if not isinstance(who, ClusterIdentity):
        return None
    return who.user[len(CLUSTER_PREFIX):].split("/", 1)[0]


def same_operator(a: Operator, b: Operator) -> bool:
    """Whether two identities are the same operator: the same uid for local users, the same name for web
    users (who all have uid -1)."""
    return getattr(a, "key", ("uid", a.uid)) == getattr(b, "key", ("uid", b.uid))


@dataclass(frozen=True)
class Rule:
    """Grants `rights` on workers matching any of `workers` (glob patterns) to the listed users and groups.
    Users and groups may be given by name or number; `"*"` in users matches everybody, web users included.
    Web users and their Buildbot roles are named ``"web:<name>"`` in users and ``"web:<role>"`` in groups
    (`WebIdentity`). A right another implies (`IMPLIED`: 'shell' implies 'run') is granted with it unless
    listed in `withhold`. With `require_reason`, what the rule allows (a session, a transfer, a run) is refused
    to a request that gives no reason (`--reason TEXT`). With `moderated_by` (groups, by name or number, and web
    roles as ``"web:<role>"``), a session the rule allows is a four-eyes session: its input is held until a
    moderator watches it (another person, with 'watch' on the worker, in one of these groups or roles:
    `may_moderate`); what would run before anyone watches (a command, the operator's variables, a transfer, a
    run's part) waits for such a moderator's approval (master_side.operators.approvals)."""

    users: tuple[str | int, ...] = ()
    groups: tuple[str | int, ...] = ()
    workers: tuple[str, ...] = ("*",)
    rights: tuple[str, ...] = tuple(sorted(RIGHTS))
    withhold: tuple[str, ...] = ()
    require_reason: bool = False
    moderated_by: tuple[str | int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("users", "groups", "workers", "rights", "withhold", "moderated_by"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        unknown = (set(self.rights) | set(self.withhold)) - RIGHTS
        if unknown:
            raise ValueError(f"unknown rights {sorted(unknown)}; known: {sorted(RIGHTS)}")
        both = set(self.rights) & set(self.withhold)
        if both:
            raise ValueError(f"a rule both grants and withholds {sorted(both)}")
        if not self.users and not self.groups:
            raise ValueError("a rule needs users or groups")
        if not isinstance(self.require_reason, bool):
            raise ValueError("require_reason must be True or False")
        for group in self.moderated_by:
            if isinstance(group, bool) or not isinstance(group, (str, int)) or group in ("", "*", WEB_PREFIX):
                raise ValueError(f"moderated_by: {group!r} is not a group or a web role ('web:<role>')")

    def matches_identity(self, who: Operator) -> bool:
        local = who.uid >= 0  # web users (WebIdentity) have no uid or gid: only their names match them
        for user in self.users:
            if user == "*" or user == who.user or (local and (user == who.uid or str(user) == str(who.uid))):
                return True
        for group in self.groups:
            if group in who.groups or (local and isinstance(group, int) and group == who.gid):
                return True
        return False

    def matches_worker(self, worker: str) -> bool:
        return any(fnmatch.fnmatchcase(worker, pattern) for pattern in self.workers)

    def grants(self, right: str) -> bool:
        """Whether the rule gives `right`: listed, or implied by a listed right and not withheld."""
        if right in self.rights:
            return True
        implied_by = IMPLIED.get(right)
        return implied_by is not None and implied_by in self.rights and right not in self.withhold


def person_name(who: Operator) -> str:
    """The user name under every door's and master's prefix, as four-eyes decisions compare people: ``alice`` for
    local ``alice``, ``web:alice``, ``cluster:A/alice`` and ``cluster:C/web:alice`` alike (prefixes stripped as
    long as there are any, so a name a master makes up cannot hide one), compared without case."""
    name = who.user
    while True:
        if name.startswith(WEB_PREFIX):
            name = name[len(WEB_PREFIX):]
        elif name.startswith(CLUSTER_PREFIX) and "/" in name:
            name = name.split("/", 1)[1]
        else:
            return name.casefold()


def same_person(a: Operator, b: Operator) -> bool:
    """Whether two identities may be one person, as four-eyes decisions (approving a request, moderating a
    session) see it: the same operator, or the same user name under any door's or master's prefix
    (`person_name`: local ``alice``, ``web:alice``, ``cluster:A/alice``). Nobody approves or moderates their own
    work through another door or another master of the site; two people who share a user name across them need
    a third to moderate (docs/multi-master.md)."""
    return same_operator(a, b) or person_name(a) == person_name(b)


def own_work(who: Operator, owner: Operator, line: str) -> str:
    """`line`, the refusal of a four-eyes decision to `who` on work of `owner`, one person (`same_person`), with
    which names were taken as one person when they are not one operator."""
    if same_operator(who, owner):
        return line
    return (f"{line}: {who.user} and {owner.user} share the user name {person_name(who)!r}, taken as one person "
            "(four eyes need another person, whatever door or master each came through)")


def in_moderators(who: Operator, moderated_by: Iterable[str | int]) -> bool:
    """Whether `who` belongs to one of `moderated_by`'s groups or web roles (a gid names a local group only)."""
    local = who.uid >= 0
    for group in moderated_by:
        if isinstance(group, int):
            if local and (group == who.gid or str(group) in who.groups):
                return True
        elif group in who.groups:
            return True
    return False


def moderators_text(moderated_by: Iterable[str | int]) -> str:
    return ", ".join(str(g) for g in moderated_by)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    require_reason: bool = False  # allowed only with the operator's reason for it (`Rule.require_reason`)
    moderated_by: tuple[str | int, ...] = ()  # a four-eyes session: who may moderate it (`Rule.moderated_by`)

    def without_reason(self, worker: str) -> Decision:
        """This decision for a request that gives no reason: refused when the rule requires one."""
        if self.allowed and self.require_reason:
            return Decision(False, f"worker {worker} requires a reason (--reason TEXT)")
        return self


class Policy:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: Sequence[Rule] = tuple(rules)

    @classmethod
    def default(cls, master_uid: int | None = None) -> Policy:
        """Root and the user the master runs as: the people who can already read the master's files."""
        uid = os.getuid() if master_uid is None else master_uid
        return cls([Rule(users=tuple(sorted({0, uid})))])

    def may(self, who: Operator, action: Action, worker: str, owner: Operator | None = None) -> Decision:
        """Whether `who` may do `action` on `worker` (on a session of `owner`, when it is about one). An
        operator may always watch and kill their own sessions; resuming one's own detached session needs
        'shell', anybody else's 'join'; releasing a held build or extending its hold needs 'shell' on its
        worker."""
        mine = owner is not None and same_operator(owner, who)
        if mine and action in (Action.WATCH, Action.KILL):
            return Decision(True, "their own session")
        if action is Action.RESUME:
            return self.check(who, "shell" if mine else "join", worker)
        if action in (Action.RELEASE, Action.EXTEND):
            return self.check(who, "shell", worker)
        return self.check(who, action.value, worker)

    def quota(self, who: Operator, worker: str, live: Iterable[SessionView], per_worker: int | None,
              per_operator: int | None) -> str | None:
        """Why one more session for `who` on `worker` would pass the master's quotas (max_sessions_per_worker,
        max_sessions_per_operator: None for none), given the `live` sessions; None when it would not."""
        sessions = list(live)
        if per_worker is not None and sum(1 for s in sessions if s.worker == worker) >= per_worker:
            return f"worker {worker} already has {per_worker} sessions (the master's limit)"
        if per_operator is not None and sum(1 for s in sessions if same_operator(s.identity, who)) >= per_operator:
            return f"{who.user} already has {per_operator} sessions (the master's limit)"
        return None

    def grants_some_right(self, who: Operator) -> bool:
        """Whether some rule names `who` and grants a right (on some worker): who may be an operator here."""
        return any(rule.matches_identity(who) and rule.rights for rule in self.rules)

    def may_moderate(self, who: Operator, owner: Operator, worker: str, moderated_by: Sequence[str | int]
                     ) -> str | None:
        """Why `who` may not moderate a four-eyes session of `owner` on `worker` (None: they may): another person
        than its operator (`same_person`: not the same user name under another door's or master's prefix), in one
        of `moderated_by`'s groups or web roles, with 'watch' on the worker by a rule (not only as the watcher of
        their own session)."""
        if same_person(who, owner):
            return own_work(who, owner, "the session's own operator cannot moderate it")
        if not in_moderators(who, moderated_by):
            return f"{who.user} is in none of its moderators' groups (moderated_by: {moderators_text(moderated_by)})"
        watch = self.check(who, "watch", worker)
        if not watch.allowed:
            return watch.reason
        return None

    def check(self, who: Operator, right: str, worker: str) -> Decision:
        if right not in RIGHTS:
            raise ValueError(f"unknown right {right!r}")
        for rule in self.rules:
            if rule.matches_identity(who) and rule.matches_worker(worker):
                if rule.grants(right):
                    return Decision(True, "allowed", require_reason=rule.require_reason,
                                    moderated_by=rule.moderated_by)
                return Decision(False, f"{who} may not {right} on worker {worker}")
        return Decision(False, f"{who} may not {right} on worker {worker}: no policy rule allows it")
