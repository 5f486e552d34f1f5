"""A session's peers for tests of the master: each typed message (slaveshell.vocabulary.protocol's `SessionControl`
towards the worker, `OperatorSink` towards a viewer) handed to `send` as the tuple of its wire call, ``(method,
*args)``, so that a test lists what each peer was told."""

from __future__ import annotations

from collections.abc import Callable

from slaveshell.vocabulary.protocol import SIGNAL_NAMES, ExitStatus


def _nothing(*message: object) -> None:
    pass


class ToWorker:
    """The worker's session: a `SessionControl`."""

    def __init__(self, send: Callable[..., object] = _nothing) -> None:
        self.send = send

    def input(self, data: bytes) -> None:
        self.send("input", data)

    def eof(self) -> None:
        self.send("eof")

    def stdout_closed(self) -> None:
        self.send("stdout_closed")

    def resize(self, cols: int, rows: int) -> None:
        self.send("resize", cols, rows)

    def signal(self, signum: int) -> None:
        self.send("signal", SIGNAL_NAMES[signum])

    def ack(self, nbytes: int) -> None:
        self.send("ack", nbytes)

    def close(self) -> None:
        self.send("close")


class ToViewer:
    """A viewer's end of a session: an `OperatorSink`."""

    def __init__(self, send: Callable[..., object] = _nothing) -> None:
        self.send = send

    def output(self, stream: int, data: bytes) -> None:
        self.send("output", stream, data)

    def input_ack(self, nbytes: int, hidden: bool) -> None:
        self.send("input_ack", nbytes, hidden)

    def exit(self, status: ExitStatus) -> None:
        self.send("exit", status.code, status.signal, status.reason)

    def waiting(self, text: str) -> None:
        self.send("waiting", text)
