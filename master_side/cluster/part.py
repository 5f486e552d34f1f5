"""`ClusterPart`: what `ShellService(cluster=...)` adds to a master of a multi-master site: slaveshell's link to
the router (master_side.cluster.link) kept in line with the attached workers, the site-wide answers
(master_side.cluster.view) for the doors, and sessions routed between masters: the ones this master serves for
another's operators (master_side.cluster.serve) and the ones its operators open on another's workers
(master_side.cluster.relay); transfers (`cp`) likewise (master_side.cluster.copy_serve, .copy_relay)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger

from master_side.cluster.config import ClusterConfig
from master_side.cluster.copy_relay import OperatorParty, RoutedTransfer, RoutedTransfers
from master_side.cluster.copy_serve import Copier, ServedTransfers
from master_side.cluster.direct import DirectDoor, PBPort
from master_side.cluster.kills import Killer, RoutedKills, ServedKills
from master_side.cluster.link import ClusterLink, Listing
from master_side.cluster.offers import parse_address, pb_address
from master_side.cluster.records import Event, Reader, ServedRecords, SiteRecords
from master_side.cluster.relay import Leaving, OperatorEnd, Relays, RoutedRecord, RoutedView
from master_side.cluster.serve import Attacher, Auditor, Opener, ServedSessions
from master_side.cluster.verify import SiteDatabase, checked, read_site_database
from master_side.cluster.view import elsewhere, local_listing, site_workers
from master_side.glue.buildbot import BuildbotGlue
from master_side.sessions.registry import SessionRegistry
from slaveshell.plumbing.deferreds import deferred
from slaveshell.vocabulary.copying import TransferRequest
from slaveshell.vocabulary.display import visible
from slaveshell.vocabulary.policy import CLUSTER_PREFIX, ClusterIdentity, Identity, Policy
from slaveshell.vocabulary.protocol import OpenRequest

if TYPE_CHECKING:
    from buildbot.master import BuildMaster

log = Logger()

# The disputed workers one audit event of a master's listing names (the others are counted).
DISPUTES_NAMED = 10


class ClusterPart:
    def __init__(self, config: ClusterConfig, master: Callable[[], BuildMaster], glue: BuildbotGlue,
                 registry: SessionRegistry, policy: Callable[[], Policy], reactor: object, opener: Opener,
                 attacher: Attacher, audit: Auditor, open_timeout: Callable[[], float],
                 reader: Reader | None = None, event: Event | None = None, copier: Copier | None = None,
                 routed: RoutedRecord | None = None, killer: Killer | None = None) -> None:
        """`opener` opens a session for another master's operator (the operators' API's open_for_master),
        `copier` starts a transfer for one (copy_for_master),
        `attacher` attaches them to one (attach_for_master), `audit` audits a refusal, `open_timeout` is how long
        a worker may take to open a session; `reader` answers the other masters' reads of this one's records
        (transcripts, their text, live sessions) and `event` audits them; `routed` audits here what this
        master's operators ask of another master (AuditTrail.routed); `killer` ends a session here for another
        master's operator (kill_for_master)."""
        self.config = config
        self._master = master
        self._glue = glue
        self._registry = registry
        self._policy = policy
        self.link = ClusterLink(config, self._listing, reactor)
        self.link.check = self._checked
        self._audit = audit
        # The shared database as the last check of the listings read it (None: not read yet, or it failed), and
        # the disputed workers of each master already audited.
        self.database: SiteDatabase | None = None
        self._disputed: dict[str, frozenset[str]] = {}  # in the last check
        self._audited: dict[str, frozenset[str]] = {}  # of those, the ones audited
        self._seen: dict[str, tuple[str, float]] = {}  # worker -> the last master seen holding it, when
        clock = registry.clock
        # What a router client can make this master hold is bounded there (master_side.cluster.serve).
        self.served = ServedSessions(self.link, opener, attacher, audit, clock)
        self.relays = Relays(self.link, clock, lambda: open_timeout() + 10.0)
        # The site's records: this master's for the others (`reader`: the operators' API), and theirs for its
        # operators (master_side.cluster.records).
        self.records = SiteRecords(self.link)
        if reader is not None and event is not None:
            ServedRecords(self.link, reader, event, lambda who, line: audit(who, "", line))
            self.served.path_event = lambda session_id, worker, who, detail: event("routed path", session_id,
                                                                                   worker, who, detail)
        self._reactor = reactor
        self.served_transfers = None if copier is None else ServedTransfers(self.link, copier, audit, clock)
        if self.served_transfers is not None:
            # The routed sessions' door on the PB port serves transfers too (ClusterConfig.direct).
            self.served_transfers.door = lambda: self.served.door
            self.served.other_expired = self.served_transfers.expired
            if event is not None:
                self.served_transfers.path_event = lambda transfer_id, worker, who, detail: event(
                    "routed path", transfer_id, worker, who, detail)
        self.transfers = RoutedTransfers(self.link, self.relays, clock, lambda: open_timeout() + 10.0)
        # Kills of sessions another master holds, and of this master's for the others (master_side.cluster.kills).
        self.kills = RoutedKills(self.link)
        if killer is not None:
            ServedKills(self.link, killer, audit, clock)
        if routed is not None:
            self.relays.record = self.transfers.record = self.kills.record = routed

    def start(self) -> None:
        if self.config.direct:
            self.served.door = self._door()
        self.link.start(str(self._master().basedir))

    def stop(self) -> defer.Deferred[None]:
        door, self.served.door = self.served.door, None
        if door is not None:
            door.close()
        return self.link.stop()

    def _door(self) -> DirectDoor:
        """The direct streams' door on this master's Buildbot PB port (the one its workers attach to)."""
        log.info("slaveshell: routed sessions served here are offered a direct connection to this master's PB port")
        return DirectDoor(lambda: self._master().pbmanager, self._pb_port, self._reactor, self._registry.clock)

    def _pb_port(self) -> PBPort | str:
        """This master's PB port as master.cfg has it now, and its address for the other masters; or why none."""
        portstr = (getattr(self._master().config, "protocols", None) or {}).get("pb", {}).get("port")
        if self.config.direct_address is not None:
            address: tuple[str, int] | None = parse_address(self.config.direct_address)
        else:
            address = pb_address(portstr, socket.getfqdn)
        if portstr is None or address is None:
            return "this master has no TCP PB port"
        return portstr, address

    def tick(self, now: float) -> None:
        """Register the attached, opted-in workers on the router; unregister the others. The routed sessions'
        messages that say a master is still there; those whose other master is silent end."""
        self.link.sync((facts.name for facts in self._glue.workers() if facts.shell), now)
        clock = self._registry.clock()
        self.served.tick(clock)
        self.relays.tick(clock)
        if self.served_transfers is not None:
            self.served_transfers.tick(clock)
        self.transfers.tick(clock)

    def attach(self, who: Identity, sink: OperatorEnd, session_id: str, mode: str, holder: str | None = None
               ) -> defer.Deferred[RoutedView | None]:
        """Watch or join a session another master on the router holds (`holder`, when known): None when none
        does."""
        return self.relays.attach(who, session_id, mode, sink, holder)

    def attached_here(self, worker: str) -> bool:
        return worker in self._master().workers.connections

    def open(self, who: Identity, request: OpenRequest, sink: OperatorEnd, run: str | None = None,
             script: bytes | None = None, withdrawn: Leaving | None = None) -> defer.Deferred[RoutedView | None]:
        """A session on `request`'s worker (a part of fleet run `run`, with its script), opened by the master on the
        router that holds it: None when none does (master_side.cluster.relay)."""
        return self.relays.open(who, request, sink, run, script, withdrawn)

    def copy(self, who: Identity, request: TransferRequest, party: OperatorParty,
             waiting: Callable[[str], None] = lambda text: None
             ) -> defer.Deferred[tuple[RoutedTransfer, dict[str, object]] | None]:
        """A transfer to or from `request`'s worker, relayed by the master on the router that holds it: None when
        none does (master_side.cluster.copy_relay); `waiting` tells the operator what it waits for there."""
        return self.transfers.copy(who, request, party, waiting)

    def _listing(self) -> Listing:
        sessions = list(self._registry)
        rows = []
        for facts in self._glue.workers():
            row: dict[str, object] = {k: v for k, v in asdict(facts).items() if k != "pb_references"}
            row["sessions"] = sum(1 for s in sessions if s.worker == facts.name)
            row["registered"] = self.link.registered(facts.name)
            rows.append(row)
        return local_listing(self._master(), self.config.master, rows)

    def workers(self, who: Identity, rows: list[dict[str, object]], include_offline: bool = False
                ) -> defer.Deferred[list[dict[str, object]]]:
        """`rows` (OperatorAPI.workers: this master's) with the site's: which master holds each worker; with
        `include_offline`, the other masters' offline workers too (from the shared database)."""
        return site_workers(self.link, self._policy(), who, rows, self._master, self.site_database,
                            include_offline, self._seen)

    @deferred
    async def site_database(self) -> SiteDatabase:
        """The shared database's view of the site: as the last check of the listings read it, or read now."""
        if self.database is not None:
            return self.database
        return await read_site_database(self._master())

    @deferred
    async def _checked(self, listings: list[Listing]) -> list[Listing]:
        """The other masters' listings checked against the shared database (master_side.cluster.verify), read
        once for them all; a master's workers disputed in two checks running are audited once while they stay
        disputed (one event per master and check, DISPUTES_NAMED named)."""
        here = self._master()
        unreadable = None
        try:
            database: SiteDatabase | None = await read_site_database(here)
        except Exception as e:
            database, unreadable = None, str(e) or type(e).__name__
            log.warn("slaveshell: the shared database could not be read to check the other masters' workers: "
                     "{why}", why=visible(unreadable[:200]))
        self.database = database
        out = checked(listings, database, getattr(here, "masterid", None), unreadable)
        disputed = {listing.master: frozenset(d.worker for d in listing.disputed) for listing in out
                    if listing.disputed}
        audited: dict[str, frozenset[str]] = {}
        for listing in out:
            names = disputed.get(listing.master, frozenset())
            # Audited once it is disputed in two checks running: a worker attaching or leaving is listed by its
            # master a moment before or after the database has it there.
            lasting = names & self._disputed.get(listing.master, frozenset())
            done = self._audited.get(listing.master, frozenset()) & names
            new = lasting - done
            audited[listing.master] = done | new
            if not new:
                continue
            first = next(d for d in listing.disputed if d.worker in new)
            named = ", ".join(visible(n) for n in sorted(new)[:DISPUTES_NAMED])
            more = f" and {len(new) - DISPUTES_NAMED} more" if len(new) > DISPUTES_NAMED else ""
            who = ClusterIdentity(uid=-1, gid=-1, pid=-1, user=f"{CLUSTER_PREFIX}{listing.master}",
                                  groups=frozenset({f"{CLUSTER_PREFIX}{listing.master}"}))
            self._audit(who, first.worker if len(new) == 1 else "", f"disputed listing: {named}{more}; {first.why}")
        self._disputed, self._audited = disputed, audited
        return out

    @deferred
    async def refusal(self, worker: str, why: str) -> str:
        """The refusal of a shell on `worker` that this master cannot route to (`why`): where the worker is, when
        it is not attached here and another master holds it."""
        if self.attached_here(worker):
            return why
        return await elsewhere(self.link, worker, why)
