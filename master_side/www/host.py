"""`WebHost`: what the web terminal and its lists ask of the master's ShellService, which they find among the
master's services (the Buildbot plugin's pages are built by Buildbot's www, not by the service)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from master_side.fleet.operations import FleetOperations
from master_side.glue.buildbot import BuildbotGlue
from master_side.glue.services import master_services
from master_side.holds.step import Holds
from master_side.operators.api import OperatorAPI
from master_side.operators.gate import ConnectionGate
from master_side.sessions.registry import SessionRegistry
from slaveshell.vocabulary.policy import Policy


@runtime_checkable
class WebHost(Protocol):
    """The operators' API, the gate watching the sockets, the live sessions, the policy, the held builds,
    Buildbot's workers and the fleet's runs and facts, as the web pages use them."""

    @property
    def api(self) -> OperatorAPI: ...
    @property
    def gate(self) -> ConnectionGate: ...
    @property
    def registry(self) -> SessionRegistry: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def holds(self) -> Holds: ...
    @property
    def glue(self) -> BuildbotGlue: ...
    @property
    def fleet(self) -> FleetOperations: ...


def web_host(master: object) -> WebHost | None:
    """The master's ShellService as the web pages see it, or None when the master runs none."""
    for service in master_services(master):
        if isinstance(service, WebHost):
            return service
    return None
