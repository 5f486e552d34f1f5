"""`OperatorAPI.copy`: the operator operation of `slaveshell cp` (issue 14), apart from the session operations
(master_side.operators.api mixes `CopyOperations` in; the transfers themselves are master_side.copying.relay's).

Authorization asks the policy for the 'copy' right on the worker; the route is the session's (a connected,
opted-in PB worker; `--build ID` needs the build held now); the quotas are the session quotas counted over
transfers, and MAX_TRANSFERS in all. On a four-eyes worker (`Rule(moderated_by=...)`) the transfer then waits for
a moderator's approval (master_side.operators.approvals), and is routed and counted again once approved. Every
refusal is audited (`OperatorAPI.refuse`) and raised as `OperatorError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from master_side.audit.trail import RecordingError
from master_side.cluster.stream import Refused
from master_side.copying.record import describe
from master_side.copying.relay import PartyEnd, TransferRefused, Transfers
from master_side.glue.buildbot import RouteError
from master_side.operators.approvals import USED, Approvals, Approved, Kind
from master_side.operators.routed import operator_error
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.policy import Action, Identity

if TYPE_CHECKING:
    from master_side.audit.trail import AuditTrail
    from master_side.cluster.part import ClusterPart
    from master_side.glue.buildbot import BuildbotGlue
    from master_side.holds.step import Holds
    from master_side.sessions.registry import SessionRegistry
    from slaveshell.vocabulary.copying import TransferRequest
    from slaveshell.vocabulary.policy import Policy

__all__ = ["CopyOperations", "Transfers"]


class CopyOperations:
    if TYPE_CHECKING:  # what OperatorAPI provides
        policy: Policy
        glue: BuildbotGlue
        holds: Holds
        registry: SessionRegistry
        transfers: Transfers
        approvals: Approvals
        cluster: ClusterPart | None

        @property
        def trail(self) -> AuditTrail: ...
        def refuse(self, who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError: ...

    @defer.inlineCallbacks
    def copy(self, who: Identity, request: TransferRequest, operator: PartyEnd,
             waiting: Callable[[str], None] = lambda text: None) -> Any:
        """Start a transfer for `who`, whose end of it is `operator` (its door's, which applies that
        connection's output bound); `waiting` tells the operator that it waits for a moderator's approval.
        Fires (MasterTransfer, {"total", "entries", "recorded"}); raises OperatorError."""
        decision = self.policy.may(who, Action.COPY, request.worker)
        if request.reason is None:
            decision = decision.without_reason(request.worker)
        if not decision.allowed:
            raise self.refuse(who, request.worker, ErrorKind.DENIED, f"permission denied: {decision.reason}")
        conn, routed, build = self._routed(who, request)
        approved: Approved | None = None
        if decision.moderated_by:
            approved = yield self.approvals.ask(who, request.worker, Kind.COPY, describe(routed), request.reason,
                                                decision.moderated_by, waiting, [operator.on_disconnect])
        try:
            if approved is not None:
                again = self.policy.may(who, Action.COPY, request.worker)  # the policy may have changed meanwhile
                if not again.allowed:
                    raise self.refuse(who, request.worker, ErrorKind.DENIED, f"permission denied: {again.reason}")
                conn, routed, build = self._routed(who, request)  # again: the worker or the build may be gone
            try:
                started = yield self.transfers.start(conn, who, replace(routed, operator=who.user), self.trail,
                                                     operator, build)
            except (RecordingError, TransferRefused) as e:
                raise OperatorError(ErrorKind.UNAVAILABLE, str(e)) from None
        except Exception as e:
            self.approvals.refused_after(approved, e)  # approved, and the transfer it approved does not start
            raise
        if approved is not None:
            self.trail.approval(USED, request.worker, approved.moderator, f"request {approved.request.id} approved "
                                f"by {approved.moderator.user}", started[0].id)
        return started

    @defer.inlineCallbacks
    def copy_anywhere(self, who: Identity, request: TransferRequest, operator: PartyEnd,
                      waiting: Callable[[str], None] = lambda text: None) -> Any:
        """`copy`, or on a multi-master site, for a worker not attached here that another master holds: the
        transfer that master relays for `who`, under its own policy (master_side.cluster.copy_relay)."""
        cluster = self.cluster
        if cluster is not None and not cluster.attached_here(request.worker):
            try:
                routed = yield cluster.copy(who, request, operator, waiting)
            except Refused as e:
                raise operator_error(e) from None
            if routed is not None:
                return routed
        started = yield self.copy(who, request, operator, waiting)
        return started

    @defer.inlineCallbacks
    def copy_for_master(self, who: Identity, request: TransferRequest, operator: PartyEnd) -> Any:
        """`copy` for the operator of another master of the site, as that master vouches for them
        (master_side.cluster.copy_serve): its refusals as the cluster's. On a four-eyes worker the transfer waits
        for this master's moderators' approval as a local one does; `operator.waiting` tells that master's operator
        (master_side.cluster.copy_serve.RouterParty)."""
        try:
            started = yield self.copy(who, request, operator, getattr(operator, "waiting", lambda text: None))
        except OperatorError as e:
            raise Refused(e.kind.value, e.message) from None
        return started

    def _routed(self, who: Identity, request: TransferRequest) -> tuple[Any, TransferRequest, dict[str, object]]:
        """The route and the quotas (master_side.copying.relay.Transfers): refusals audited and raised."""
        try:
            conn, routed, build = self.transfers.route(self.glue, self.holds, request)
        except RouteError as e:
            raise self.refuse(who, request.worker, ErrorKind.UNAVAILABLE, str(e)) from None
        quota = self.transfers.quota(self.policy, who, request.worker, self.registry.limits)
        if quota:
            raise self.refuse(who, request.worker, ErrorKind.LIMIT, quota)
        return conn, routed, build
