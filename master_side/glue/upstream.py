"""Every change slaveshell makes to upstream code on the master, installed from here, each checked first.

- Twisted's (shared with the worker: slaveshell.plumbing.upstream): Banana's receiving and its bounds, the transports'
  write buffer read by slaveshell.plumbing.write_now and the flood bounds, the broker's ``proto_slaveshell``. When the
  bounds cannot be installed, `install` returns False and the shell service stays off (no socket, no sessions:
  master_side.service), Buildbot serving builds and pages as without slaveshell.
- Buildbot's session cookie (master_side.www.session_hook: the web shell grants), checked by the hook itself.
- Buildbot's REST writer (master_side.glue.rest_write_fix): ``V2RootResource._write_json_data``, which
  ``renderRest`` runs in a thread. When Buildbot's code is not the shape it was written for, Buildbot's own
  writer stays (logged once).

Tested against the versions pyproject.toml bounds (upper bounds: the versions these checks and tests were run
on); `.ci/upstream-suites` runs upstream's own test suites with these changes installed, before any upgrade.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from master_side.glue import rest_write_fix
from slaveshell.plumbing import upstream
from slaveshell.plumbing.upstream import attempt, shape


def rest_writer_shape() -> str | None:
    """None when Buildbot's REST root renders through ``threads.deferToThread(V2RootResource._write_json_data,
    request, encoder, data)`` and has the request-finished check the fix uses."""
    try:
        from buildbot.www import rest
    except ImportError:
        return "no buildbot.www.rest"
    root = getattr(rest, "V2RootResource", None)
    if root is None or not callable(getattr(rest, "_is_request_finished", None)):
        return "no V2RootResource or _is_request_finished"
    writer = root.__dict__.get("_write_json_data")
    if not isinstance(writer, staticmethod):
        return "_write_json_data is not a static method"
    if getattr(writer.__func__, "_slaveshell_fix", False):
        return None
    why = shape(writer.__func__, ("request", "encoder", "data"), ("iterencode", "write", "_is_request_finished"))
    if why is None and "threads.deferToThread(V2RootResource._write_json_data," not in inspect.getsource(rest):
        why = "renderRest no longer writes through threads.deferToThread"
    return why


def install_web(session_hook: Callable[[], bool]) -> bool:
    """The changes Buildbot's web server needs (the www plugin installs them): the REST writer, and the hook on
    Buildbot's session cookie that mints and revokes the web shell grants, installed by `session_hook`
    (master_side.www.session_hook.install, which checks ``BuildbotSession.updateSession``'s shape itself and
    fails closed: without the hook no grant is minted, so web shells are refused)."""
    rest = attempt("Buildbot's REST writer", rest_writer_shape, rest_write_fix.install,
                   "Buildbot's own writer stays (answers written from a thread)")
    hook = session_hook()
    return rest and hook


def install(session_hook: Callable[[], bool]) -> bool:
    """Every change of the master's side, once per process (`session_hook` as for `install_web`); True when the
    bounds are in place (the service serves shells only then)."""
    install_web(session_hook)
    return upstream.install()
