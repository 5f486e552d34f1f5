"""Debian's chromium driven by playwright's sync API, for the browser tests, started so that a driver that dies
fails only the tests that use it.

Two things make that need care here. pytest-twisted runs every test's body in its reactor greenlet, while
fixtures run in the main greenlet; and playwright's sync API runs its own asyncio loop in a greenlet (the
dispatcher) whose parent is the greenlet that started playwright. When the driver (the node process) ends, the
dispatcher ends and hands control to that parent: with playwright started in a fixture, that is the main
greenlet, suspended in pytest-twisted's `blockon` waiting for the test, not the test that made the call. The test
then fails with "illegal switch in blockon", the reactor greenlet stays suspended inside it, and every later test
of the session fails the same way. Started in the reactor greenlet, where the tests' calls are made, the
dispatcher's end resumes the call that waited for it, which raises playwright's "connection closed" in its own
test.

The driver is started again, once, when it ended while starting (the node process gone before it answered):
nothing of it existed yet to lose. When it cannot start, the tests that use it fail with its exit status; its
standard error is the test's (playwright passes its own to node), in the report's captured output."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import greenlet
import pytest
import pytest_twisted
from twisted.internet import defer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox"]

T = TypeVar("T")


def in_greenlet(where: greenlet.greenlet | None, call: Callable[[], T]) -> T:
    """`call()` run in `where` (pytest-twisted's reactor greenlet, from a fixture), its result or its exception;
    run here when `where` is this greenlet, is None, or has ended (the reactor stopped: nothing runs there)."""
    if where is None or where.dead or greenlet.getcurrent() is where:
        return call()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor  # pytest-twisted's: installed by the time a test runs

    done: defer.Deferred[T] = defer.Deferred()

    def run() -> None:
        try:
            result = call()
        except BaseException:
            done.errback()
        else:
            done.callback(result)

    reactor.callLater(0, run)
    return pytest_twisted.blockon(done)  # type: ignore[no-any-return]


def _driver_end(manager: Any) -> str | None:
    """How the driver process of a playwright that failed to start ended ("exit status N", "killed by SIGTERM"),
    or None when it had not ended (or never ran)."""
    proc = getattr(getattr(getattr(manager, "_client", None), "_transport", None), "_proc", None)
    code = getattr(proc, "returncode", None)
    if code is None:
        return None
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _start(sync_api: Any) -> tuple[Any, Any]:
    """Playwright's driver and a chromium launched by it: (its context manager, browser). A driver that ended while
    starting is started again once; the second time, the test fails with how it ended."""
    ended = []
    for _attempt in range(2):
        manager = sync_api.sync_playwright()
        try:
            playwright = manager.start()
        except Exception as e:
            end = _driver_end(manager)
            if end is None:
                raise
            ended.append(f"{end} ({e})")
            continue
        try:
            return manager, playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:
            end = _driver_end(manager)  # before stop(): that ends the driver too
            playwright.stop()
            if end is None:
                raise
            ended.append(f"{end} ({e})")
    pytest.fail("playwright's driver (node) ended while starting, twice: " + "; then ".join(ended)
                + " (its standard error, if it wrote any, is in the captured output)", pytrace=False)


@contextlib.contextmanager
def chromium(where: greenlet.greenlet | None = None) -> Iterator[Any]:
    """A chromium browser (playwright's sync Browser), closed with its driver after. `where`: the greenlet that
    will make the calls, when it is not this one (a fixture passes pytest-twisted's `twisted_greenlet`)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    manager, browser = in_greenlet(where, lambda: _start(sync_api))
    try:
        yield browser
    finally:
        def close() -> None:
            try:
                browser.close()
            except Exception:
                if _driver_end(manager) is None:
                    raise  # the driver runs: a browser that would not close
                # else the driver has gone, and its browser with it (the test that saw it go failed)
            finally:
                manager.__exit__()

        in_greenlet(where, close)
