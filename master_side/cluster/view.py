"""Where each worker of a multi-master site is, for an operator on any master: `slaveshell workers` and the
refusal of a shell on a worker held by another master.

The router's live registrations are the truth about which master holds a worker now (master_side.cluster.link); the
shared database's `connected_workers` is read beside it: it names the workers configured on any master, and a
row that names a master no longer on the router (killed with SIGKILL, say: the row stays) is reported as such,
never taken as where the worker is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from master_side.cluster.link import ClusterLink, ClusterUnavailable, Listing
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Action, Identity, Policy

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

log = Logger()

# What a remote master's worker row may carry into this master's answer.
_REMOTE_FIELDS = {"shell": bool, "paused": bool, "system": str, "info": str, "sessions": int}


def local_listing(master: BuildMaster, name: str, workers: list[dict[str, object]]) -> Listing:
    """This master's Listing under its cluster name `name`: `workers` are its worker rows (name, connected,
    shell, paused, system, info, sessions, registered); the connected ones are listed."""
    rows = tuple({k: w.get(k) for k in ("name", "shell", "paused", "system", "info", "sessions", "registered")}
                 for w in workers if w.get("connected"))
    return Listing(name, str(getattr(master, "name", "")), getattr(master, "masterid", None), rows)


@deferred
async def database_view(master: BuildMaster) -> dict[str, set[str]]:
    """Each worker of the site the shared database knows (configured on any master), with the Buildbot names of
    the masters its `connected_workers` rows name (perhaps stale: a killed master's row stays)."""
    masters = {m["masterid"]: str(m["name"]) for m in await master.data.get(("masters",))}
    out: dict[str, set[str]] = {}
    for w in await master.data.get(("workers",)):
        out[str(w["name"])] = {masters.get(c["masterid"], "?") for c in w.get("connected_to") or []}
    return out


@deferred
async def site_workers(link: ClusterLink, policy: Policy, who: Identity, rows: list[dict[str, object]],
                       master: Callable[[], BuildMaster]) -> list[dict[str, object]]:
    """`rows` (this master's workers that `who` has some right on, as OperatorAPI.workers gives them), each with
    the master that holds it ("master": cluster name, "where": host:basedir; "masters" when more than one does),
    and the workers held by the other masters on the router, or only in the shared database."""
    here = master()
    own = str(getattr(here, "name", ""))
    try:
        listings = await link.site()
    except ClusterUnavailable:
        listings = []  # the link's own log says when it leaves and joins the router again
    try:
        database = await database_view(here)
    except Exception as e:
        database = {}
        log.warn("slaveshell: the shared database did not list the site's workers: {why}", why=visible(str(e)[:200]))
    by_name: dict[str, dict[str, object]] = {}
    held: dict[str, set[str]] = {}  # the Buildbot names of the masters holding each worker on the router
    for given in rows:
        mine = dict(given)
        if mine.get("connected"):
            mine.update(master=link.name, where=own, here=True, masters=[link.name])
            held[str(mine["name"])] = {own}
        else:
            mine.update(master=None, where=None, here=False, masters=[])
        by_name[str(mine["name"])] = mine
    for listing in listings:
        for remote in listing.workers:
            name = str(remote["name"])
            row = by_name.get(name) or _offline_row(policy, who, name)
            if row is None:
                continue
            by_name[name] = row
            masters = row["masters"]
            assert isinstance(masters, list)
            masters.append(listing.master)
            held.setdefault(name, set()).add(listing.buildbot)
            if row["master"] is None:
                row.update({k: remote[k] for k, kind in _REMOTE_FIELDS.items() if isinstance(remote.get(k), kind)})
                row.update(connected=True, master=listing.master, where=listing.buildbot, here=False)
    for name, connected_to in database.items():
        row = by_name.get(name) or _offline_row(policy, who, name)
        if row is None:
            continue
        by_name[name] = row
        # The database's rows that name a master not holding the worker on the router: stale (buildbot#4277).
        row["stale_database_rows"] = sorted(connected_to - held.get(name, set()))
    return [by_name[name] for name in sorted(by_name)]


def _offline_row(policy: Policy, who: Identity, name: str) -> dict[str, object] | None:
    """A row for a worker not configured on this master, or None when `who` has no right on it."""
    if not any(policy.may(who, action, name).allowed for action in Action):
        return None
    return {"name": name, "connected": False, "shell": False, "paused": False, "system": "", "info": "",
            "allowed": policy.may(who, Action.SHELL, name).allowed, "sessions": 0, "pb_references": None,
            "master": None, "where": None, "here": False, "masters": []}


@deferred
async def elsewhere(link: ClusterLink | None, worker: str, why: str) -> str:
    """The refusal for `worker`, not attached here (`why`, the local reason): where it is, when another master on
    the router holds it; `why` when none does (or the router cannot be asked)."""
    if link is None:
        return why
    try:
        listings = await link.site()
    except ClusterUnavailable as e:
        return f"{why} (the other masters could not be asked: {e})"
    holders = [listing for listing in listings if any(w.get("name") == worker for w in listing.workers)]
    if not holders:
        return why
    if len(holders) > 1:
        where = ", ".join(f"{h.master} ({h.buildbot})" for h in holders)
        return (f"worker {worker} is attached to {len(holders)} masters: {where}; slaveshell does not pick one "
                "(give the workers distinct names)")
    holder = holders[0]
    return (f"{worker} is on master {holder.master} ({holder.buildbot}), not this one, and the session could not "
            f"be opened there through the router: open it on master {holder.master}")

