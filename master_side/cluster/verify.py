"""Another master's listing checked against the shared database before it is routed to or shown as reachable.

A master on the router says which workers it holds (master_side.cluster.link.Listing); any authenticated master
could say anything. Buildbot's own tables say it too: `masters` (id, `host:basedir` name, active) and
`connected_workers` (which master each worker is connected to, written when the worker attaches). A listed worker
is taken only when the database has it connected to that master's row, and that row is the master the listing says
it is (its id and name match, and it is active, and no other master on the router claims the same row). Every other
claim is disputed: kept apart with why (master_side.cluster.view shows it, the relay refuses it with that line),
never routed.

The database is read once per refresh of the listings, in one transaction (`read_site_database`), whatever the
number of workers.

A row of `connected_workers` can outlive its master (kill -9: buildbot#4277): it never makes a claim true by
itself, since the claim must come from the master that row names, live on the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from master_side.cluster.link import Dispute, Listing
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.display import visible

if TYPE_CHECKING:
    from buildbot.master import BuildMaster


@dataclass(frozen=True)
class SiteDatabase:
    """What the shared database says of the site: each master's row (id -> Buildbot name, active), the masters
    each worker is connected to (worker name -> master ids), and the masters each is configured on (the same)."""

    masters: Mapping[int, tuple[str, bool]] = field(default_factory=dict)
    connected: Mapping[str, frozenset[int]] = field(default_factory=dict)
    configured: Mapping[str, frozenset[int]] = field(default_factory=dict)

    def master_name(self, masterid: int) -> str:
        row = self.masters.get(masterid)
        return row[0] if row is not None else f"#{masterid}"


@deferred
async def read_site_database(master: BuildMaster) -> SiteDatabase:
    """The site as the shared database says it is now: one transaction of three SELECTs on Buildbot's tables."""
    import sqlalchemy as sa

    model = master.db.model

    def read(conn: Any) -> SiteDatabase:
        masters = {int(i): (str(name), bool(active)) for i, name, active in conn.execute(
            sa.select(model.masters.c.id, model.masters.c.name, model.masters.c.active))}
        connected: dict[str, set[int]] = {}
        for name, masterid in conn.execute(
                sa.select(model.workers.c.name, model.connected_workers.c.masterid).select_from(
                    model.workers.outerjoin(model.connected_workers,
                                            model.connected_workers.c.workerid == model.workers.c.id))):
            ids = connected.setdefault(str(name), set())
            if masterid is not None:
                ids.add(int(masterid))
        configured: dict[str, set[int]] = {}
        for name, masterid in conn.execute(
                sa.select(model.workers.c.name, model.builder_masters.c.masterid).select_from(
                    model.workers.join(model.configured_workers,
                                       model.configured_workers.c.workerid == model.workers.c.id)
                    .join(model.builder_masters,
                          model.builder_masters.c.id == model.configured_workers.c.buildermasterid))):
            configured.setdefault(str(name), set()).add(int(masterid))
        return SiteDatabase(masters, {k: frozenset(v) for k, v in connected.items()},
                            {k: frozenset(v) for k, v in configured.items()})

    database: SiteDatabase = await master.db.pool.do(read)
    return database


def checked(listings: list[Listing], database: SiteDatabase | None, own_masterid: int | None,
            unreadable: str | None = None) -> list[Listing]:
    """`listings` as the database confirms them: each with only the workers it is shown holding there
    (`workers`), the others in `disputed` with why, and `trusted` False when the master is not the active Buildbot
    master it says it is. `database` None: it could not be read (`unreadable` says why): nothing is confirmed."""
    claims: dict[int, int] = {}
    for listing in listings:
        if listing.masterid is not None:
            claims[listing.masterid] = claims.get(listing.masterid, 0) + 1
    out = []
    for listing in listings:
        if database is None:
            out.append(_untrusted(listing, f"the shared database could not be read to confirm it "
                                           f"({visible(unreadable or '?')[:200]})"))
            continue
        why = _not_itself(listing, database, claims, own_masterid)
        if why is not None:
            out.append(_untrusted(listing, why))
            continue
        assert listing.masterid is not None
        kept, disputed = [], []
        for row in listing.workers:
            name = str(row["name"])
            on = database.connected.get(name)
            if on is not None and listing.masterid in on:
                kept.append(row)
            elif on:
                where = ", ".join(sorted(visible(database.master_name(i)) for i in on))
                disputed.append(Dispute(name, listing.master, f"master {visible(listing.master)} says it holds "
                                        f"{visible(name)}, but the shared database has {visible(name)} connected "
                                        f"to {where}: not routed"))
            else:
                disputed.append(Dispute(name, listing.master, f"master {visible(listing.master)} says it holds "
                                        f"{visible(name)}, but the shared database has {visible(name)} connected "
                                        "to no master: not routed"))
        out.append(replace(listing, workers=tuple(kept), disputed=tuple(disputed)))
    return out


def _not_itself(listing: Listing, database: SiteDatabase, claims: Mapping[int, int],
                own_masterid: int | None) -> str | None:
    """Why `listing` is not from the Buildbot master it names, or None when the database agrees that it is."""
    who = f"master {visible(listing.master)}"
    if listing.masterid is None or listing.masterid not in database.masters:
        return f"{who} is not a Buildbot master of the shared database"
    name, active = database.masters[listing.masterid]
    if name != listing.buildbot:
        return (f"{who} says it is {visible(listing.buildbot)}, but the shared database's master "
                f"#{listing.masterid} is {visible(name)}")
    if not active:
        return f"{who} ({visible(name)}) is inactive in the shared database"
    if listing.masterid == own_masterid or claims.get(listing.masterid, 0) > 1:
        return f"{who} claims the Buildbot master {visible(name)}, which another master on the router claims too"
    return None


def _untrusted(listing: Listing, why: str) -> Listing:
    return replace(listing, workers=(), trusted=False, disputed=tuple(
        Dispute(str(w["name"]), listing.master, f"{why}: its workers are not routed") for w in listing.workers))


def disputes_of(listings: list[Listing], worker: str) -> list[Dispute]:
    """The disputed claims of `worker` among `listings`."""
    return [d for listing in listings for d in listing.disputed if d.worker == worker]
