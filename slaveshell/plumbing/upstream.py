"""Where slaveshell changes Twisted's own code, on the master and on the worker alike, each change checked first.

Every change to upstream code is installed from one place per side: this module (Twisted, both sides),
master_side.glue.upstream (Buildbot's) and slave_side.upstream (buildbot-worker's and the worker's process readers).
Before changing anything, each checks that the upstream code still has the shape the change was written for
(`shape`: the function's parameters and the names its code uses); otherwise it changes nothing and logs once.

The Twisted changes shared by both sides:

- ``banana``: `Banana.dataReceived` wrapped by slaveshell.plumbing.banana_buffer (a large string gathered without
  rebuilding Banana's buffer on each read) and slaveshell.plumbing.banana_bounds (what a PB peer may make Banana hold,
  bounded), with `Banana.gotItem` and `Broker.connectionLost`. A security bound: when Twisted's Banana is not the
  shape these were written for, `install` says so and slaveshell stays off in that process (the master serves no
  shell: no socket, no sessions; the worker advertises none), Buildbot's own work going on as without slaveshell.
- ``write buffer``: slaveshell.plumbing.write_now reads a transport's unsent bytes from `FileDescriptor`'s private
buffer
  (``dataBuffer``, ``offset``, ``_tempDataLen``); the master's flood bounds count a connection's unsent bytes
  with it (master_side.operators.gate). Also a bound: refused like ``banana``.
- ``lean dispatch``: slaveshell.plumbing.lean_calls gives one broker a ``proto_slaveshell`` method, which
  `Broker.expressionReceived` finds by name (``"proto_%s"``). When it does not, no lean call is asked for or
  accepted and calls go as plain PB (slower, the same answers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from twisted.logger import Logger

log = Logger()

_logged: set[str] = set()
# The shared changes' outcome in this process: name -> installed (absent: not tried yet).
installed: dict[str, bool] = {}


def shape(func: object, params: Iterable[str], uses: Iterable[str] = ()) -> str | None:
    """None when `func` is a function taking `params` (by name, in order) whose code names everything in `uses`
    (the attributes and globals it reads); else what differs, in words."""
    code = getattr(inspect.unwrap(func), "__code__", None) if callable(func) else None
    if code is None:
        return "not a function"
    try:
        found = tuple(inspect.signature(func).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "no signature"
    if found != tuple(params):
        return f"takes {found!r}, expected {tuple(params)!r}"
    names = set(code.co_names) | set(code.co_varnames) | set(code.co_freevars)
    missing = sorted(set(uses) - names)
    return f"no longer uses {missing!r}" if missing else None


def refused(patch: str, why: str, then: str) -> bool:
    """Log once per process that `patch` is not installed (`why`: what differs, `then`: what that means);
    returns False."""
    if patch not in _logged:
        _logged.add(patch)
        log.critical("slaveshell: {patch} not changed: upstream code is not the shape it was written for "
                     "({why}); {then}", patch=patch, why=why, then=then)
    return False


def attempt(name: str, check: Callable[[], str | None], apply: Callable[[], object], then: str) -> bool:
    """Install the change `name` (`apply`) when `check` finds nothing amiss; its outcome is kept in `installed`
    (one attempt per process)."""
    if name in installed:
        return installed[name]
    why = check()
    if why is None:
        apply()
        installed[name] = True
    else:
        installed[name] = refused(name, why, then)
    return installed[name]


def banana_shape() -> str | None:
    from twisted.spread import banana, pb

    for what, needed in (("SIZE_LIMIT", int), ("STRING", bytes), ("b1282int", object)):
        if not isinstance(getattr(banana, what, None), needed):
            return f"twisted.spread.banana.{what} missing"
    data = getattr(banana.Banana.dataReceived, "slaveshell_original", banana.Banana.dataReceived)
    return (shape(data, ("self", "chunk"), ("buffer", "listStack", "gotItem", "prefixLimit", "SIZE_LIMIT",
                                            "STRING", "b1282int"))
            or shape(getattr(banana.Banana.gotItem, "__wrapped__", banana.Banana.gotItem), ("self", "item"))
            or shape(pb.Broker.connectionLost, ("self", "reason")))


def write_buffer_shape() -> str | None:
    from twisted.internet import abstract

    descriptor = abstract.FileDescriptor
    return (shape(descriptor.writeSequence, ("self", "iovec"), ("_tempDataBuffer", "_tempDataLen"))
            or shape(descriptor.doWrite, ("self",), ("dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer"))
            or (None if isinstance(getattr(descriptor, "dataBuffer", None), bytes)
                and isinstance(getattr(descriptor, "offset", None), int) else "no class-level dataBuffer/offset"))


def lean_dispatch_shape() -> str | None:
    from twisted.spread import pb

    why = shape(pb.Broker.expressionReceived, ("self", "sexp"), ("getattr",))
    if why is None and "proto_" not in inspect.getsource(pb.Broker.expressionReceived):
        why = "commands are no longer found as proto_<command>"
    return why


OFF = "slaveshell stays off in this process"


def install() -> bool:
    """The shared changes, once per process; True when the bounds (``banana``, ``write buffer``) are in place
    (when False, the caller keeps slaveshell off: the module's text)."""
    from slaveshell.plumbing import banana_bounds

    bounds = attempt("banana", banana_shape, banana_bounds.install, OFF)
    writes = attempt("write buffer", write_buffer_shape, lambda: None, OFF)
    attempt("lean dispatch", lean_dispatch_shape, lambda: None, "calls go as plain PB")
    return bounds and writes


def lean_dispatch() -> bool:
    """Whether a broker finds ``proto_slaveshell`` (checked once)."""
    return attempt("lean dispatch", lean_dispatch_shape, lambda: None, "calls go as plain PB")
