"""What the framed door's parts see of each other: `DoorHost`, what a door asks of whoever serves it (the
operators' API and the connection gate: the service passes itself), and `FramedDoor`, what a session's sink
(master_side.shell_socket.viewer_sink) and a transfer's end (master_side.shell_socket.copy_door) use of the
door (master_side.shell_socket.door) they write to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from master_side.fleet.operations import FleetOperations
from master_side.operators.api import OperatorAPI
from master_side.operators.gate import ConnectionGate


class DoorHost(Protocol):
    """Whoever serves the framed door: the operators' API the door's calls go to, and the gate that admits
    and watches its connections."""

    @property
    def api(self) -> OperatorAPI: ...
    @property
    def gate(self) -> ConnectionGate: ...
    @property
    def fleet(self) -> FleetOperations: ...
    @property
    def pass_stdio(self) -> bool: ...  # a `-T` session's passed descriptors served (master_side.shell_socket.passed)


class FramedDoor(Protocol):
    """One operator's framed connection as its sink and its transfer write to it."""

    service: DoorHost
    gate: ConnectionGate
    disconnected: bool
    # Called once when the connection is lost (master_side.sessions.worker_link.subscribe).
    disconnects: list[Callable[[], None]]
    # An open, attach or copy was asked on this connection (one view or transfer per connection).
    viewing: bool

    @property
    def transport(self) -> object: ...
    def write(self, data: bytes) -> None: ...
    def write_frame(self, head: bytes, payload: bytes, at_once: bool = False) -> None: ...
    def answer(self, call_id: int, ok: bool, **fields: object) -> None: ...
