"""Where Buildbot's own pages for a worker and a build are, for the links of slaveshell's pages:
``#/workers/<workerid>`` and ``#/builders/<builderid>/builds/<number>`` in Buildbot's web UI.

The audit index keeps a worker's name and a build's id (docs/audit-schema.md); their Buildbot ids come from
Buildbot's data API, one query for all the workers of an answer and one for all its builds. A worker or a build that
Buildbot does not know (any more) has no page, and so has no entry: the page then shows the name without a link. A
failing query leaves the answer without links (logged: the exception's kind only); the lists do not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from buildbot.data import resultspec
from twisted.logger import Logger

from slaveshell.plumbing.deferreds import deferred

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

log = Logger()


@deferred
async def worker_ids(master: BuildMaster, names: Iterable[str]) -> dict[str, int]:
    """Buildbot's worker id of each of `names` that Buildbot knows."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    try:
        workers = await master.data.get(("workers",), filters=[resultspec.Filter("name", "eq", wanted)])
    except Exception as e:
        log.warn("slaveshell: Buildbot's data API did not answer with the workers' ids ({kind})", kind=type(e).__name__)
        return {}
    return {str(w["name"]): int(w["workerid"]) for w in workers
            if isinstance(w.get("workerid"), int) and w.get("name") in wanted}


@deferred
async def build_pages(master: BuildMaster, build_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """``(builderid, number)`` of each of `build_ids` that Buildbot knows."""
    wanted = sorted({b for b in build_ids if isinstance(b, int) and not isinstance(b, bool)})
    if not wanted:
        return {}
    try:
        builds = await master.data.get(("builds",), filters=[resultspec.Filter("buildid", "eq", wanted)])
    except Exception as e:
        log.warn("slaveshell: Buildbot's data API did not answer with the builds' builders ({kind})",
                 kind=type(e).__name__)
        return {}
    out = {}
    for b in builds:
        build_id, builder_id, number = b.get("buildid"), b.get("builderid"), b.get("number")
        if isinstance(build_id, int) and isinstance(builder_id, int) and isinstance(number, int) \
                and build_id in wanted:
            out[build_id] = (builder_id, number)
    return out
