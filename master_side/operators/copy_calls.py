"""`OperatorAPI.copy`: the operator operation of `slaveshell cp` (issue 14), apart from the session operations
(master_side.operators.api mixes `CopyOperations` in; the transfers themselves are master_side.copying.relay's).

Authorization asks the policy for the 'copy' right on the worker; the route is the session's (a connected,
opted-in PB worker; `--build ID` needs the build held now); the quotas are the session quotas counted over
transfers, and MAX_TRANSFERS in all. Every refusal is audited (`OperatorAPI.refuse`) and raised as
`OperatorError`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from master_side.audit.trail import RecordingError
from master_side.copying.relay import PartyEnd, TransferRefused, Transfers
from master_side.glue.buildbot import RouteError
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.policy import Action, Identity

if TYPE_CHECKING:
    from master_side.audit.trail import AuditTrail
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

        @property
        def trail(self) -> AuditTrail: ...
        def refuse(self, who: Identity, worker: str, kind: ErrorKind, message: str) -> OperatorError: ...

    @defer.inlineCallbacks
    def copy(self, who: Identity, request: TransferRequest, operator: PartyEnd) -> Any:
        """Start a transfer for `who`, whose end of it is `operator` (its door's, which applies that
        connection's output bound). Fires (MasterTransfer, {"total", "entries", "recorded"}); raises
        OperatorError."""
        decision = self.policy.may(who, Action.COPY, request.worker)
        if request.reason is None:
            decision = decision.without_reason(request.worker)
        decision = decision.unmoderated(request.worker, "a copy would need a moderator's approval, which it "
                                                        "cannot ask for")
        if not decision.allowed:
            raise self.refuse(who, request.worker, ErrorKind.DENIED, f"permission denied: {decision.reason}")
        try:
            conn, request, build = self.transfers.route(self.glue, self.holds, request)
        except RouteError as e:
            raise self.refuse(who, request.worker, ErrorKind.UNAVAILABLE, str(e)) from None
        quota = self.transfers.quota(self.policy, who, request.worker, self.registry.limits)
        if quota:
            raise self.refuse(who, request.worker, ErrorKind.LIMIT, quota)
        try:
            started = yield self.transfers.start(conn, who, replace(request, operator=who.user), self.trail,
                                                 operator, build)
        except (RecordingError, TransferRefused) as e:
            raise OperatorError(ErrorKind.UNAVAILABLE, str(e)) from None
        return started
