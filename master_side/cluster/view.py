"""Where each worker of a multi-master site is, for an operator on any master: `slaveshell workers` and the
refusal of a shell on a worker held by another master.

The router's live registrations are the truth about which master holds a worker now (master_side.cluster.link); the
shared database's `connected_workers` is read beside it: it names the workers configured on any master, and a
row that names a master no longer on the router (killed with SIGKILL, say: the row stays) is reported as such,
never taken as where the worker is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from master_side.cluster.link import ClusterLink, ClusterUnavailable, Listing
from master_side.cluster.verify import SiteDatabase, disputes_of
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import Action, Identity, Policy

if TYPE_CHECKING:
    from buildbot.master import BuildMaster
    from twisted.internet.defer import Deferred

log = Logger()

# The workers whose last master (as the shared database confirmed it) is remembered for --include-offline.
MAX_SEEN = 10_000
# What a remote master's worker row may carry into this master's answer.
_REMOTE_FIELDS = {"shell": bool, "paused": bool, "system": str, "info": str, "sessions": int}


def local_listing(master: BuildMaster, name: str, workers: list[dict[str, object]]) -> Listing:
    """This master's Listing under its cluster name `name`: `workers` are its worker rows (name, connected,
    shell, paused, system, info, sessions, registered); the connected ones are listed."""
    rows = tuple({k: w.get(k) for k in ("name", "shell", "paused", "system", "info", "sessions", "registered")}
                 for w in workers if w.get("connected"))
    return Listing(name, str(getattr(master, "name", "")), getattr(master, "masterid", None), rows)


@deferred
async def site_workers(link: ClusterLink, policy: Policy, who: Identity, rows: list[dict[str, object]],
                       master: Callable[[], BuildMaster], database: Callable[[], Deferred[SiteDatabase]],
                       include_offline: bool = False, seen: dict[str, tuple[str, float]] | None = None
                       ) -> list[dict[str, object]]:
    """`rows` (this master's workers that `who` has some right on, as OperatorAPI.workers gives them), each with
    the master that holds it ("master": cluster name, "where": host:basedir; "masters" when more than one does),
    the workers held by the other masters on the router as the shared database confirms them, the ones a master
    claims that it does not ("disputed": [{"master", "why"}], never routed), the ones whose only row in the shared
    database names a master not holding them (stale) and, with `include_offline`, every other worker of the shared
    database (offline, with the masters it is configured on: "configured_on", and the last master this one saw
    holding it, as the database confirmed it: "last_master", "last_seen"). `seen` keeps those last masters from
    one call to the next (at most MAX_SEEN workers)."""
    here = master()
    own = str(getattr(here, "name", ""))
    try:
        listings = await link.site()
    except ClusterUnavailable:
        listings = []  # the link's own log says when it leaves and joins the router again
    try:
        known: SiteDatabase | None = await database()
    except Exception as e:
        known = None
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
            if seen is not None:
                seen.pop(name, None)
                seen[name] = (listing.master, time.time())
            if row["master"] is None:
                row.update({k: remote[k] for k, kind in _REMOTE_FIELDS.items() if isinstance(remote.get(k), kind)})
                row.update(connected=True, master=listing.master, where=listing.buildbot, here=False)
        for dispute in listing.disputed:
            row = by_name.get(dispute.worker) or _offline_row(policy, who, dispute.worker)
            if row is None:
                continue
            by_name[dispute.worker] = row
            row.setdefault("disputed", [])
            disputed = row["disputed"]
            assert isinstance(disputed, list)
            disputed.append({"master": dispute.master, "why": dispute.why})
    names = {listing.buildbot: listing.master for listing in listings if listing.trusted}
    names[own] = link.name
    for name, connected_to in (known.connected if known is not None else {}).items():
        stale = sorted({known.master_name(i) for i in connected_to} - held.get(name, set())) if known else []
        row = by_name.get(name)
        if row is None and (stale or include_offline):
            row = _offline_row(policy, who, name)
        if row is None:
            continue
        by_name[name] = row
        # The database's rows that name a master not holding the worker on the router: stale (buildbot#4277).
        row["stale_database_rows"] = stale
        if known is not None and not row.get("connected"):
            row["configured_on"] = sorted({names.get(known.master_name(i), known.master_name(i))
                                           for i in known.configured.get(name, frozenset())})
            last = (seen or {}).get(name)
            if last is not None:
                row["last_master"], row["last_seen"] = last
    while seen is not None and len(seen) > MAX_SEEN:
        del seen[next(iter(seen))]  # the longest unseen
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
        disputes = disputes_of(listings, worker)
        return "; ".join(d.why for d in disputes[:3]) if disputes else why
    if len(holders) > 1:
        where = ", ".join(f"{h.master} ({h.buildbot})" for h in holders)
        return (f"worker {worker} is attached to {len(holders)} masters: {where}; slaveshell does not pick one "
                "(give the workers distinct names)")
    holder = holders[0]
    return (f"{worker} is on master {holder.master} ({holder.buildbot}), not this one, and the session could not "
            f"be opened there through the router: open it on master {holder.master}")

