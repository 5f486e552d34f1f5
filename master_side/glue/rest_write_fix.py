"""Buildbot 4.3's REST answers written from the reactor thread, as Twisted requires.

Buildbot 4.3 encodes each REST answer in a thread (``buildbot/www/rest.py``, ``V2RootResource.renderRest`` calls
``threads.deferToThread(V2RootResource._write_json_data, ...)``, since buildbot PR #8224) and that thread also
calls ``request.write``. Twisted's transports are not thread-safe: when a browser drops a connection while its
answer is being written (a tab closed, a page left), the thread's write can register the closed descriptor in
the reactor's epoll writer set. From then on every connection the master accepts on that descriptor number fails
in ``epoll.modify`` (ENOENT): web pages, workers' PB attaches and slaveshell's own socket alike. Reproduced here
with 120 clients resetting their REST requests as the answer began: every later request to the master failed.

`install()` replaces ``_write_json_data`` with one that still encodes in the thread (upstream's reason for the
thread: a large answer must not block the reactor) and hands the encoded body to the reactor thread with
``reactor.callFromThread``, which runs before the thread's result is delivered (both go through the reactor's
one FIFO queue of thread calls), so the request is finished after its body is written, as before. The reactor is
the request's own (its site's master's, or its site's), the global one only when the request names none; when
the encoding did not run in a thread at all (a test's thread pool that runs calls at once, as Buildbot's own
test reactor does), the body is written at once, on the thread that asked for it.

The shape of Buildbot's code is checked before this is installed (master_side.glue.upstream).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from twisted.logger import Logger

log = Logger()

# Encoding stops early when the client has gone (upstream checks at every chunk; this, every so many chunks).
_CHECK_EVERY = 256


def _answer(request: Any, body: bytes, finished: Any) -> None:
    """On the reactor thread: the content length and the body, unless the client has gone."""
    if finished(request):
        return
    request.setHeader(b"content-length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)


def _reactor_of(request: Any) -> Any:
    """The reactor serving `request`: its site's master's (Buildbot's site has ``master``), its site's (Twisted's
    ``Site.reactor``), else the global one."""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads

    site = getattr(request, "site", None)
    for owner in (getattr(site, "master", None), site):
        candidate = getattr(owner, "reactor", None)
        if IReactorFromThreads.providedBy(candidate):
            return candidate
    return reactor


def _on_calling_thread() -> bool:
    """Whether this runs on a reactor's own thread (a thread pool that runs calls at once) rather than in a pool
    thread."""
    from twisted.python import threadable

    in_io_thread = bool(threadable.isInIOThread())  # type: ignore[no-untyped-call]
    return in_io_thread or threading.current_thread() is threading.main_thread()


def install() -> bool:
    """Patch Buildbot's REST writer once per process; True when it is (or was already) patched, False when this
    Buildbot's rest module does not have the shape this fix was written for (then nothing is changed)."""
    try:
        from buildbot.www import rest
    except ImportError:
        return False
    root = getattr(rest, "V2RootResource", None)
    finished = getattr(rest, "_is_request_finished", None)
    if root is None or finished is None or not hasattr(root, "_write_json_data"):
        return False
    if getattr(root._write_json_data, "_slaveshell_fix", False):
        return True

    def _write_json_data(request: Any, encoder: json.JSONEncoder, data: Any) -> None:
        chunks: list[bytes] = []
        for i, chunk in enumerate(encoder.iterencode(data)):
            if i % _CHECK_EVERY == 0 and finished(request):
                return
            chunks.append(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        if _on_calling_thread():
            _answer(request, b"".join(chunks), finished)
        else:
            _reactor_of(request).callFromThread(_answer, request, b"".join(chunks), finished)

    _write_json_data._slaveshell_fix = True  # type: ignore[attr-defined]
    root._write_json_data = staticmethod(_write_json_data)
    log.info("slaveshell: Buildbot's REST answers are written from the reactor thread "
             "(master_side.glue.rest_write_fix)")
    return True
