"""Every change slaveshell makes to upstream code on the worker, installed from here, each checked first.

- Twisted's (shared with the master: slaveshell.plumbing.upstream): Banana's receiving and its bounds, the transports'
  write buffer read by slaveshell.plumbing.write_now, the broker's ``proto_slaveshell``.
- buildbot-worker's ``BotPb`` (the object the master holds for this worker): two ``remote_*`` methods added
  (``slave_side.install``), the command registry's entry that tells the master this worker opted in, and a
  builder's ``protocol_command`` read to know whether a build step runs.
- Twisted's process readers (``ProcessReader``, ``PTYProcess``): one session's reader gets its own ``doRead``
  (slave_side.reading). When their shape differs, sessions read as Twisted does (8 KiB per wake-up), logged once.

When the bounds or ``BotPb`` are not the shape they were written for, `install` returns False and
`slave_side.install` leaves the worker without shells (nothing advertised, nothing reachable), its builds as
without slaveshell. Tested against the versions pyproject.toml bounds; `.ci/upstream-suites` runs upstream's own
test suites with these changes installed, before any upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from slaveshell.plumbing import upstream
from slaveshell.plumbing.upstream import OFF, attempt, shape


def bot_shape() -> str | None:
    """None when buildbot-worker's BotPb is a PB referenceable with the basedir and builders slaveshell reads, and
    its command registry is a dict."""
    from buildbot_worker import base, pb
    from buildbot_worker.commands import registry
    from twisted.spread import pb as twisted_pb

    if not issubclass(pb.BotPb, twisted_pb.Referenceable) or not issubclass(pb.BotPb, base.BotBase):
        return "BotPb is not a BotBase and pb.Referenceable"
    if not isinstance(getattr(registry, "commandRegistry", None), dict):
        return "no commandRegistry dict"
    return (shape(base.BotBase.__init__, ("self", "basedir", "unicode_encoding", "delete_leftover_dirs"),
                  ("basedir", "builders"))
            or shape(pb.WorkerForBuilderPbLike.__init__,
                     ("self", "name", "unicode_encoding", "buffer_size", "buffer_timeout", "max_line_length",
                      "newline_re"), ("protocol_command",)))


def readers_shape() -> str | None:
    """None when Twisted's process readers read in their ``doRead`` (the method slave_side.reading replaces per
    reader) and a pipe's reader hands its bytes to ``dataReceived``."""
    from twisted.internet import process

    return (shape(process.ProcessReader.doRead, ("self",), ("readFromFD", "dataReceived"))
            or shape(process.PTYProcess.doRead, ("self",), ("readFromFD",))
            or shape(process.ProcessReader.dataReceived, ("self", "data")))


def readers() -> bool:
    """Whether a session's process readers may be given slave_side.reading's ``doRead`` (checked once)."""
    return attempt("process readers", readers_shape, lambda: None, "sessions read 8 KiB per wake-up, as Twisted")


def install() -> bool:
    """Every check and change of the worker's side, once per process; True when shells may be served."""
    readers()
    bot = attempt("buildbot-worker's BotPb", bot_shape, lambda: None, OFF)
    return upstream.install() and bot


def add_bot_methods(methods: dict[str, Callable[..., object]]) -> None:
    """Add ``remote_<name>`` methods to buildbot-worker's BotPb (after `install` returned True)."""
    from buildbot_worker.pb import BotPb

    for name, method in methods.items():
        setattr(BotPb, "remote_" + name, method)


def remove_bot_methods(names: Iterable[str]) -> None:
    """Remove the ``remote_<name>`` methods `add_bot_methods` added."""
    from buildbot_worker.pb import BotPb

    for name in names:
        if hasattr(BotPb, "remote_" + name):
            delattr(BotPb, "remote_" + name)
