"""A session another master of the site serves (master_side.cluster.relay.RoutedView) as the operators' doors hold
it: a `Handle` whose refusals are `OperatorError`s, and the cluster's refusals (`Refused`) as the operators' API's."""

from __future__ import annotations

from dataclasses import dataclass

from master_side.cluster.relay import RoutedView
from master_side.cluster.stream import MAX_INPUT, Refused
from master_side.operators.terms import ErrorKind, OperatorError
from slaveshell.vocabulary.protocol import ProtocolError


def operator_error(refused: Refused) -> OperatorError:
    """A refusal of the cluster (another master's, or the router's) as the operators' API's."""
    try:
        kind = ErrorKind(refused.kind)
    except ValueError:
        kind = ErrorKind.UNAVAILABLE
    return OperatorError(kind, refused.message)


@dataclass(frozen=True)
class RoutedHandle:
    """The door's handle on a routed session."""

    routed: RoutedView

    @property
    def session_id(self) -> str:
        return self.routed.session_id

    @property
    def input_grant(self) -> int:
        return self.routed.input_grant

    @property
    def max_input(self) -> int:
        """The cluster's stream carries input in messages of at most its own bound (master_side.cluster.stream)."""
        return MAX_INPUT

    def input(self, data: bytes) -> None:
        self.routed.input(data)

    def eof(self) -> None:
        self.routed.eof()

    def stdout_closed(self) -> None:
        self.routed.stdout_closed()

    def resize(self, cols: int, rows: int) -> None:
        self.routed.resize(cols, rows)

    def signal(self, signum: int) -> None:
        self.routed.signal(signum)

    def ack(self, nbytes: int) -> None:
        self.routed.ack(nbytes)

    def close(self) -> None:
        self.routed.close()

    def detach(self) -> None:
        self.routed.detach()

    def refused(self, error: ProtocolError) -> OperatorError | None:
        line = self.routed.refused(error)
        return None if line is None else OperatorError(ErrorKind.BAD_REQUEST, line)


@dataclass(frozen=True)
class RoutedPart:
    """A fleet run's part on a worker another master holds (master_side.fleet.run.PartView): the routed session,
    which is its own `session` (its id, and close)."""

    routed: RoutedView

    @property
    def session(self) -> RoutedPart:
        return self

    @property
    def id(self) -> str:
        return self.routed.session_id

    def close(self, reason: str) -> None:
        if not self.routed.ended:
            self.routed.close()

    def input(self, data: bytes) -> None:
        self.routed.input(data)

    def eof(self) -> None:
        self.routed.eof()

    def ack(self, nbytes: int) -> None:
        self.routed.ack(nbytes)
