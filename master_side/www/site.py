"""Where each worker of a multi-master site is, for the web pages of one of its masters: the workers a web user has
some right on here, with those the other masters on the router hold (master_side.cluster.view, as `slaveshell
workers` lists them), and where each is, as the pages show it."""

from __future__ import annotations

from collections.abc import Mapping

from master_side.www.host import WebHost
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.policy import WebIdentity

# The most workers of a site a page is sent, and the longest name (the page's own bound on a worker's).
MAX_SITE_WORKERS = 10_000
MAX_WORKER_NAME = 256

Message = dict[str, object]


@deferred
async def site_workers(service: WebHost, who: WebIdentity, include_offline: bool = False
                       ) -> list[dict[str, object]]:
    """The workers `who` has some right on in this master's policy (OperatorAPI.workers: every worker configured
    here, attached or not); on a multi-master site also those the other masters on the router hold, each with the
    master that holds it, and with `include_offline` every other worker of the shared database, offline
    (master_side.cluster.view.site_workers, as `slaveshell workers [--include-offline]` lists them): at most
    MAX_SITE_WORKERS, and only names a worker may have here (another master's listing is not trusted to be
    sane)."""
    api = service.api
    rows = api.workers(who)
    cluster = api.cluster
    if cluster is None:
        return rows
    site = await cluster.workers(who, rows, include_offline)
    return [w for w in site if worker_name(w.get("name"))][:MAX_SITE_WORKERS]


def worker_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= MAX_WORKER_NAME and name.isprintable()


def where(row: Mapping[str, object]) -> Message:
    """Where a worker is, for the page: ``master`` (the site's name of the master that holds it, or null: here
    on a site of one master, or nowhere), ``here`` (this master holds it), ``masters`` (every master that says it
    holds it: more than one is a name attached twice, never routed), ``disputed`` (the masters that list it but
    the shared database does not confirm, with why: never routed), ``configured_on`` (for an offline worker, the
    masters it is configured on, and ``last_master``: the last master this one saw holding it, or null),
    ``stale`` (the shared database names a master that does not hold it) and ``site`` (the master is one of a
    multi-master site). The page shows them as text, as `slaveshell workers` does (slaveshell.client.labels)."""
    if "master" not in row:
        return {"master": None, "here": True, "masters": [], "site": False}
    masters, disputed, configured = row.get("masters"), row.get("disputed"), row.get("configured_on")
    return {"master": row.get("master") if isinstance(row.get("master"), str) else None,
            "here": row.get("here") is True,
            "masters": [m for m in masters if isinstance(m, str)] if isinstance(masters, list) else [],
            "disputed": [{"master": str(d.get("master")), "why": str(d.get("why"))} for d in disputed
                         if isinstance(d, dict)] if isinstance(disputed, list) else [],
            "configured_on": [m for m in configured if isinstance(m, str)] if isinstance(configured, list) else [],
            "last_master": row.get("last_master") if isinstance(row.get("last_master"), str) else None,
            "stale": bool(row.get("stale_database_rows")),
            "site": True}
